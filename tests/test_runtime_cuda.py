"""CUDA kernels of AddressConv and PerforatedConv against the CPU kernels, the ONNX-function
fallbacks and numpy / onnxruntime-Conv references, at batch 1 and 32.

The GPU tests need a library built with ``ONNXOPT_CUDA=1`` (``onnxopt.runtime.cuda_enabled()``)
and an onnxruntime with ``CUDAExecutionProvider`` (onnxruntime-gpu) on a machine with a GPU;
they skip otherwise.  The load test needs only the CUDA build: it checks that such a library
still loads into a CPU-only onnxruntime and runs its CPU kernels.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.ir import fit_ir_version
from onnxopt.runtime import cuda_enabled, library_path, ops, ops_info, session_options
from onnxopt.runtime import functions as fallbacks
from onnxopt.runtime.functions import address_conv_model
from onnxopt.runtime.profiling import parse_events
from onnxopt.runtime.reference import address_conv_ref

LIB = library_path()
CUDA_BUILD = LIB is not None and cuda_enabled()
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
# fp32 parity: onnxruntime's own CUDA convs (in the whole-net test) use TF32 unless told not to
CUDA = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
CPU = ["CPUExecutionProvider"]

needs_cuda_build = pytest.mark.skipif(
    not CUDA_BUILD, reason="library not built with CUDA kernels (build with ONNXOPT_CUDA=1)")
needs_gpu = pytest.mark.skipif(
    not (CUDA_BUILD and HAS_CUDA_EP),
    reason="needs the CUDA build of the library and onnxruntime's CUDAExecutionProvider "
           f"(cuda build: {CUDA_BUILD}; providers: {ort.get_available_providers()})")


def make_session(model, providers, custom_ops=True, profile_prefix=None):
    so = session_options(custom_ops=custom_ops, profile_prefix=profile_prefix)
    return ort.InferenceSession(fit_ir_version(model).SerializeToString(), sess_options=so, providers=providers)


def run(model, feeds, providers, custom_ops=True):
    return make_session(model, providers, custom_ops).run(None, feeds)[0]


def rel_err(a, ref):
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-12))


def providers_of(model, feeds, op_type, tmp_path):
    """The execution providers the profiler reports for the nodes of type ``op_type``."""
    sess = make_session(model, CUDA, profile_prefix=str(tmp_path / "prof"))
    sess.run(None, feeds)
    with open(sess.end_profiling()) as f:
        profile = parse_events(json.load(f))
    return {n.provider for n in profile.nodes if n.op == op_type}


def test_ops_info_reports_cuda():
    if LIB is None:
        pytest.skip("native library not built")
    assert ops_info()["cuda"] in ("on", "off")


# ---------------------------------------------------------------------------------------- AddressConv

# (Csrc, Cin, Cout, H, W, group, stride, bias)
ADDRESS_CASES = [
    (16, 8, 24, 7, 9, 1, 1, True),
    (64, 64, 128, 28, 28, 1, 1, True),
    (32, 48, 64, 15, 17, 4, 2, False),
    (130, 130, 14, 6, 5, 2, 1, True),
    (256, 256, 256, 14, 14, 1, 1, False),
    (96, 96, 96, 8, 8, 96, 1, True),  # depthwise-like: one channel per group
]


def address_case(rng, n, csrc, cin, cout, h, w, group, bias, max_d=2):
    address = np.stack([rng.integers(0, csrc, cin), rng.integers(-max_d, max_d + 1, cin),
                        rng.integers(-max_d, max_d + 1, cin)], axis=1).astype(np.int32)
    weight = rng.standard_normal((cout, cin // group, 1, 1)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    x = rng.standard_normal((n, csrc, h, w)).astype(np.float32)
    return x, weight, b, address


@needs_gpu
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("case", ADDRESS_CASES, ids=lambda c: "c{}-{}-{}_{}x{}_g{}_s{}_b{:d}".format(*c))
def test_address_conv_cuda_matches_cpu_function_and_reference(case, batch):
    csrc, cin, cout, h, w, group, stride, bias = case
    rng = np.random.default_rng(abs(hash((case, batch))) % 2**32)
    x, weight, b, address = address_case(rng, batch, csrc, cin, cout, h, w, group, bias)
    model = address_conv_model(x.shape, weight, b, address, group, (stride, stride))
    feeds = {"X": x}
    gpu = run(model, feeds, CUDA)
    ref = address_conv_ref(x, weight, b, address, group, (stride, stride))
    assert gpu.shape == ref.shape
    assert rel_err(gpu, ref) < 1e-4
    assert rel_err(gpu, run(model, feeds, CPU)) < 1e-4
    assert rel_err(gpu, run(model, feeds, CPU, custom_ops=False)) < 1e-4


# (clip, residual, identity address): the shift pass fuses a residual Add and a Relu / Clip into
# AddressConv, and keeps plain 1x1 convs of a chain as AddressConv with an identity table.
EPILOGUES = [((0.0, np.inf), False, False), (None, True, False), ((0.0, 6.0), True, False),
             ((0.0, np.inf), True, True), (None, False, True), ((-1.0, 0.5), False, False)]


@needs_gpu
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: "clip{}_res{:d}_identity{:d}".format(*e))
def test_address_conv_cuda_epilogue_and_identity_table(epilogue, batch):
    clip, with_residual, identity = epilogue
    rng = np.random.default_rng(7 + batch)
    cin, cout, h, w, group = 48, 32, 9, 7, 2
    # X has more channels than the table reads: the identity path must read the first Cin of each image
    x, weight, b, address = address_case(rng, batch, cin + 8, cin, cout, h, w, group, True)
    if identity:
        address = np.stack([np.arange(cin), np.zeros(cin), np.zeros(cin)], axis=1).astype(np.int32)
    model = address_conv_model(x.shape, weight, b, address, group, residual=with_residual, clip=clip)
    feeds = {"X": x}
    r = None
    if with_residual:
        r = feeds["R"] = rng.standard_normal((batch, cout, h, w)).astype(np.float32)
    lo, hi = clip or (-np.inf, np.inf)
    ref = address_conv_ref(x, weight, b, address, group, residual=r, clip_min=lo, clip_max=hi)
    gpu = make_session(model, CUDA).run(None, feeds)[0]
    assert rel_err(gpu, ref) < 1e-4
    assert rel_err(gpu, make_session(model, CPU).run(None, feeds)[0]) < 1e-4
    assert rel_err(gpu, make_session(model, CPU, custom_ops=False).run(None, feeds)[0]) < 1e-4


@needs_gpu
@pytest.mark.parametrize("clip", [None, (0.0, np.inf)], ids=["plain", "relu"])
def test_cuda_clamps_keep_nan_like_the_cpu_kernels(clip):
    """A NaN input gives NaN outputs on both providers, clamped or not (fminf/fmaxf would not)."""
    rng = np.random.default_rng(10)
    x, weight, b, _ = address_case(rng, 2, 8, 8, 16, 6, 6, 1, True)
    address = np.array([[k, k % 3 - 1, 0] for k in range(8)], np.int32)  # channel 3 read one row up
    x[1, 3, 2, 4] = np.nan
    model = address_conv_model(x.shape, weight, b, address, clip=clip)
    gpu, cpu = run(model, {"X": x}, CUDA), run(model, {"X": x}, CPU)
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
    assert np.isnan(gpu).sum() == 16 and rel_err(np.nan_to_num(gpu), np.nan_to_num(cpu)) < 1e-4
    positions, fill = mask(rng, 6, 6, 0.5)
    model = fallbacks.perforated_conv_model(x.shape, np.ones((4, 8, 3, 3), np.float32), None, positions, fill,
                                            pads=(1, 1, 1, 1), clip=clip)
    gpu, cpu = run(model, {"X": x}, CUDA), run(model, {"X": x}, CPU)
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
    assert np.isnan(gpu).any() and rel_err(np.nan_to_num(gpu), np.nan_to_num(cpu)) < 1e-4


@needs_gpu
def test_address_conv_cuda_residual_of_the_wrong_shape_is_a_clear_error():
    rng = np.random.default_rng(8)
    x, weight, b, address = address_case(rng, 1, 8, 8, 16, 6, 6, 1, True)
    model = address_conv_model(x.shape, weight, b, address, residual=True, with_functions=False)
    model.graph.input[1].type.tensor_type.shape.dim[3].dim_value = 5
    with pytest.raises(Exception, match=r"AddressConv \(CUDA\): residual must have the output's shape"):
        make_session(model, CUDA).run(None, {"X": x, "R": np.zeros((1, 16, 6, 5), np.float32)})


@needs_gpu
def test_address_conv_runs_on_the_cuda_provider(tmp_path):
    rng = np.random.default_rng(1)
    x, weight, b, address = address_case(rng, 2, 8, 8, 16, 6, 6, 1, True)
    model = address_conv_model(x.shape, weight, b, address)
    assert providers_of(model, {"X": x}, ops.ADDRESS_CONV, tmp_path) == {"CUDAExecutionProvider"}


@needs_gpu
def test_address_conv_cuda_address_as_graph_input_and_dynamic_size():
    """address not an initializer: copied to the device on every run; H, W change between runs."""
    rng = np.random.default_rng(2)
    _, weight, b, address = address_case(rng, 1, 24, 32, 40, 9, 9, 2, True)
    model = address_conv_model((3, 24, 9, 9), weight, b, address, 2, (1, 1), dynamic_hw=True)
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "address"))
    model.graph.input.append(helper.make_tensor_value_info("address", TensorProto.INT32, [32, 3]))
    sess = make_session(model, CUDA)
    for h, w in [(9, 9), (13, 5), (1, 1)]:
        x = rng.standard_normal((3, 24, h, w)).astype(np.float32)
        addr = address_case(rng, 1, 24, 32, 40, h, w, 2, False)[3]
        y = sess.run(None, {"X": x, "address": addr})[0]
        assert rel_err(y, address_conv_ref(x, weight, b, addr, 2)) < 1e-4


@needs_gpu
def test_address_conv_cuda_bad_address_is_a_clear_error():
    model = address_conv_model((1, 3, 4, 4), np.ones((4, 2, 1, 1), np.float32), None,
                               np.array([[0, 0, 0], [9, 0, 0]], np.int32), with_functions=False)
    with pytest.raises(Exception, match=r"AddressConv \(CUDA\): .*address\[1, 0\] = 9 is not a channel of X"):
        run(model, {"X": np.zeros((1, 3, 4, 4), np.float32)}, CUDA)


# ------------------------------------------------------------------------------------- PerforatedConv

# (Cin, Cout, H, W, k, stride, pad, dilation, group, kept fraction, bias)
PERFORATED_CASES = [
    (16, 32, 14, 14, 3, 1, 1, 1, 1, 0.5, True),
    (32, 64, 28, 28, 3, 2, 1, 1, 2, 0.3, False),
    (8, 8, 9, 11, 5, 1, 2, 2, 1, 0.7, True),
    (64, 64, 7, 7, 1, 1, 0, 1, 1, 0.5, True),
    (12, 24, 16, 16, 3, 1, 1, 1, 3, 1.0, True),
    (128, 128, 14, 14, 3, 1, 1, 1, 1, 0.25, False),
]


def out_size(size, k, stride, pad, dilation):
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def mask(rng, ho, wo, fraction):
    """positions: a random sorted subset of the output plane; fill: each position's nearest kept one."""
    plane = ho * wo
    kept = np.sort(rng.choice(plane, max(1, int(round(fraction * plane))), replace=False)).astype(np.int32)
    q = np.arange(plane)
    d2 = (q[:, None] // wo - kept[None] // wo) ** 2 + (q[:, None] % wo - kept[None] % wo) ** 2
    return kept, np.argmin(d2, axis=1).astype(np.int32)


def perforated_model(x_shape, weight, bias, positions, fill, group, stride, pad, dilation, tables_as_inputs=False):
    n, c, h, w = x_shape
    cout, _, kh, kw = weight.shape
    ho, wo = out_size(h, kh, stride, pad, dilation), out_size(w, kw, stride, pad, dilation)
    inits = [numpy_helper.from_array(weight, "W")]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n, c, h, w])]
    if tables_as_inputs:
        inputs += [helper.make_tensor_value_info("positions", TensorProto.INT32, [len(positions)]),
                   helper.make_tensor_value_info("fill", TensorProto.INT32, [len(fill)])]
    else:
        inits += [numpy_helper.from_array(positions, "positions"), numpy_helper.from_array(fill, "fill")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "B"))
    node = helper.make_node(ops.PERFORATED_CONV, ["X", "W", "B" if bias is not None else "", "positions", "fill"],
                            ["Y"], domain=ops.DOMAIN, group=group, kernel_shape=[kh, kw], strides=[stride] * 2,
                            pads=[pad] * 4, dilations=[dilation] * 2)
    graph = helper.make_graph([node], "perforated_conv", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, cout, ho, wo])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION)])
    model.ir_version = 10
    if ops.PERFORATED_CONV in fallbacks.FUNCTION_BUILDERS:
        fallbacks.add_functions(model)
    return model


def dense_conv_then_fill(x, weight, bias, positions, fill, group, stride, pad, dilation):
    """The reference: onnxruntime's own dense Conv on the CPU, each output position then replaced by
    the value at its kept position (a perforated conv is exact at the kept positions)."""
    kh, kw = weight.shape[2:]
    node = helper.make_node("Conv", ["X", "W"] + (["B"] if bias is not None else []), ["Y"], group=group,
                            kernel_shape=[kh, kw], strides=[stride] * 2, pads=[pad] * 4, dilations=[dilation] * 2)
    inits = [numpy_helper.from_array(weight, "W")] + ([numpy_helper.from_array(bias, "B")] if bias is not None else [])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    dense = run(model, {"X": x}, CPU, custom_ops=False)
    n, cout, ho, wo = dense.shape
    flat = dense.reshape(n, cout, ho * wo)
    return flat[:, :, positions[fill]].reshape(dense.shape)


def perforated_case(rng, batch, case):
    cin, cout, h, w, k, stride, pad, dilation, group, fraction, bias = case
    x = rng.standard_normal((batch, cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    positions, fill = mask(rng, out_size(h, k, stride, pad, dilation), out_size(w, k, stride, pad, dilation),
                           fraction)
    return x, weight, b, positions, fill, group, stride, pad, dilation


@needs_gpu
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("case", PERFORATED_CASES,
                         ids=lambda c: "c{}-{}_{}x{}_k{}_s{}_p{}_d{}_g{}_keep{}_b{:d}".format(*c))
def test_perforated_conv_cuda_matches_conv_cpu_and_function(case, batch):
    rng = np.random.default_rng(abs(hash((case, batch))) % 2**32)
    x, weight, b, positions, fill, group, stride, pad, dilation = perforated_case(rng, batch, case)
    model = perforated_model(x.shape, weight, b, positions, fill, group, stride, pad, dilation)
    feeds = {"X": x}
    gpu = run(model, feeds, CUDA)
    ref = dense_conv_then_fill(x, weight, b, positions, fill, group, stride, pad, dilation)
    assert gpu.shape == ref.shape
    assert rel_err(gpu, ref) < 1e-4
    # the CPU kernel and the function fallback come with the PerforatedConv CPU work (ops.py,
    # functions.py); compared whenever they are there
    if ops.PERFORATED_CONV in ops.NATIVE_OPS:
        assert rel_err(gpu, run(model, feeds, CPU)) < 1e-4
    if ops.PERFORATED_CONV in fallbacks.FUNCTION_BUILDERS:
        assert rel_err(gpu, run(model, feeds, CPU, custom_ops=False)) < 1e-4


@needs_gpu
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("clip", [(0.0, np.inf), (-0.5, 0.75)], ids=["relu", "clip"])
def test_perforated_conv_cuda_fused_activation(clip, batch):
    """clip_min / clip_max (the Relu / Clip the perforate pass fuses), applied by the fill kernel."""
    rng = np.random.default_rng(9 + batch)
    x, weight, b, positions, fill, group, stride, pad, dilation = perforated_case(rng, batch, PERFORATED_CASES[0])
    model = fallbacks.perforated_conv_model(x.shape, weight, b, positions, fill, group, (stride, stride), (pad,) * 4,
                                            (dilation, dilation), clip=clip)
    unclipped = dense_conv_then_fill(x, weight, b, positions, fill, group, stride, pad, dilation)
    ref, tol = np.clip(unclipped, *clip), 1e-4 * np.abs(unclipped).max()
    feeds = {"X": x}
    gpu = run(model, feeds, CUDA)
    assert np.abs(gpu - ref).max() <= tol
    assert np.abs(gpu - run(model, feeds, CPU)).max() <= tol
    assert np.abs(gpu - run(model, feeds, CPU, custom_ops=False)).max() <= tol


@needs_gpu
def test_perforated_conv_runs_on_the_cuda_provider(tmp_path):
    rng = np.random.default_rng(4)
    x, weight, b, positions, fill, group, stride, pad, dilation = perforated_case(rng, 2, PERFORATED_CASES[0])
    model = perforated_model(x.shape, weight, b, positions, fill, group, stride, pad, dilation)
    assert providers_of(model, {"X": x}, ops.PERFORATED_CONV, tmp_path) == {"CUDAExecutionProvider"}


@needs_gpu
def test_perforated_conv_cuda_tables_as_graph_inputs():
    """positions and fill not initializers: copied to the device on every run, masks change."""
    rng = np.random.default_rng(5)
    case = PERFORATED_CASES[0]
    x, weight, b, positions, fill, group, stride, pad, dilation = perforated_case(rng, 4, case)
    model = perforated_model(x.shape, weight, b, positions, fill, group, stride, pad, dilation, tables_as_inputs=True)
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "P"
    sess = make_session(model, CUDA)
    for fraction in (0.2, 0.9):
        positions, fill = mask(rng, 14, 14, fraction)
        y = sess.run(None, {"X": x, "positions": positions, "fill": fill})[0]
        assert rel_err(y, dense_conv_then_fill(x, weight, b, positions, fill, group, stride, pad, dilation)) < 1e-4


@needs_gpu
@pytest.mark.parametrize("positions, fill, message", [
    (np.array([0, 1], np.int32), np.zeros(15, np.int32), r"fill has that many entries"),
    (np.array([0, 16], np.int32), np.zeros(16, np.int32), r"positions\[1\] = 16 is outside \[0, 16\)"),
    (np.array([0, 1], np.int32), np.full(16, 2, np.int32), r"fill\[0\] = 2 is outside \[0, 2\)"),
])
def test_perforated_conv_cuda_bad_mask_is_a_clear_error(positions, fill, message):
    weight = np.ones((2, 3, 3, 3), np.float32)
    model = perforated_model((1, 3, 4, 4), weight, None, positions, fill, 1, 1, 1, 1)
    del model.functions[:]
    with pytest.raises(Exception, match=r"PerforatedConv \(CUDA\): .*" + message):
        run(model, {"X": np.zeros((1, 3, 4, 4), np.float32)}, CUDA)


# ---------------------------------------------------------------------------------------- no GPU needed

@needs_cuda_build
def test_cuda_build_loads_into_cpu_onnxruntime_and_runs_cpu_kernels():
    """cudart is linked statically and cuBLAS is opened only when a CUDA kernel is created, so the
    CUDA build loads anywhere; on the CPU provider its CPU kernel runs."""
    rng = np.random.default_rng(6)
    x, weight, b, address = address_case(rng, 2, 8, 8, 16, 6, 6, 1, True)
    model = address_conv_model(x.shape, weight, b, address)
    y = run(model, {"X": x}, CPU)
    assert rel_err(y, address_conv_ref(x, weight, b, address)) < 1e-5


@needs_gpu
@pytest.mark.parametrize("batch", [1, 4])
def test_shiftnet_applied_for_cuda_runs_its_address_convs_on_the_gpu(batch, tmp_path):
    """The whole flow: export, apply --target cuda (no CPU-only blocked ops; residual and Relu fused
    into AddressConv), then the optimised net on the CUDA provider against the original on the CPU."""
    torch = pytest.importorskip("torch")
    import onnxopt
    from onnxopt.models import export_onnx, shiftnet

    x = torch.randn(batch, 3, 16, 16)
    original = export_onnx(shiftnet(width=8, blocks=(1, 1, 1)), x)
    applied, report = onnxopt.apply(original, target="cuda")
    shift = next(r for r in report.passes if r.name == "shift")
    assert shift.details["address_convs"] > 0 and shift.details["blocked_convs"] == 0
    assert shift.details["residuals_fused"] > 0 and shift.details["activations_fused"] > 0
    feeds = {"input": x.numpy()}
    ref = run(original, feeds, CPU, custom_ops=False)
    assert rel_err(run(applied, feeds, CUDA), ref) < 1e-4
    assert providers_of(applied, feeds, ops.ADDRESS_CONV, tmp_path) == {"CUDAExecutionProvider"}
