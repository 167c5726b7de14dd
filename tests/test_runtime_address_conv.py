"""AddressConv: the native kernel against the numpy reference and the ONNX-function fallback."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxopt.ir import fit_ir_version
from onnxopt.runtime import library_path, ops, session
from onnxopt.runtime.functions import add_functions, address_conv_model
from onnxopt.runtime.reference import address_conv_ref

LIB = library_path()
needs_lib = pytest.mark.skipif(LIB is None, reason="native library not built (onnxopt.runtime.library_path() is None)")


def random_case(rng, n, csrc, cin, cout, h, w, group, stride, max_d=2, bias=True):
    address = np.stack([rng.integers(0, csrc, cin), rng.integers(-max_d, max_d + 1, cin),
                        rng.integers(-max_d, max_d + 1, cin)], axis=1).astype(np.int32)
    weight = rng.standard_normal((cout, cin // group, 1, 1)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    x = rng.standard_normal((n, csrc, h, w)).astype(np.float32)
    return x, weight, b, address


def run(model, x, **opts):
    return session(fit_ir_version(model), **opts).run(None, {"X": x})[0]


def rel_err(a, ref):
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-12))


# (N, Csrc, Cin, Cout, H, W, group, stride): odd sizes, Cin != Csrc (duplicated / dropped
# channels), groups 1/2/4, strides 1/2, positions not a multiple of the kernel's panel width.
CASES = [
    (1, 8, 8, 16, 7, 9, 1, 1),
    (3, 6, 8, 12, 9, 8, 2, 2),
    (1, 16, 32, 40, 5, 5, 4, 1),
    (3, 20, 12, 36, 11, 13, 2, 1),
    (1, 24, 16, 16, 15, 17, 1, 2),
    (3, 5, 4, 8, 1, 1, 1, 1),
    (1, 32, 48, 52, 3, 31, 4, 2),
    (1, 64, 64, 100, 28, 28, 1, 1),
    (3, 40, 24, 30, 2, 7, 2, 2),
    (1, 130, 130, 14, 6, 5, 2, 1),
    # column tails of the AVX-512 kernel: 49 = 32 + 16 + 1, 196 = 6 * 32 + 4, 56 = 32 + 16 + 8,
    # 21 = 16 + 5 with 5 rows; row tails 30 = 12 + 12 + 6
    (1, 64, 64, 30, 7, 7, 1, 1),
    (2, 32, 48, 20, 14, 14, 2, 1),
    (1, 40, 40, 24, 13, 15, 1, 2),
    (1, 16, 16, 5, 3, 7, 1, 1),
    (1, 300, 300, 36, 9, 9, 1, 1),
    (2, 24, 24, 16, 17, 10, 1, 3),
    # few positions (< 64, not whole panels): channel-vectorised tiles on AVX-512, channel tails
    (2, 32, 32, 40, 7, 7, 1, 1),
    (1, 48, 48, 64, 5, 5, 2, 1),
    (1, 64, 64, 100, 13, 13, 1, 2),
    (1, 16, 24, 17, 1, 1, 1, 1),
    (1, 40, 40, 80, 6, 10, 1, 1),
    # stride 1, positions a multiple of 16: AVX-512 tiles gather B from X themselves (bitmaps)
    (1, 96, 96, 32, 32, 32, 1, 1),
    (2, 48, 48, 64, 16, 16, 2, 1),
    (1, 32, 40, 24, 8, 8, 1, 1),
    (1, 40, 40, 30, 10, 8, 1, 1),
    (2, 20, 36, 28, 4, 28, 4, 1),
]


@needs_lib
def test_library_registers_the_names_of_ops_py():
    info = ctypes.CDLL(str(LIB)).onnxopt_ops_info
    info.restype = ctypes.c_char_p
    fields = dict(kv.split("=", 1) for kv in info().decode().split(";"))
    assert fields["domain"] == ops.DOMAIN
    assert fields["version"] == str(ops.OP_VERSION)
    assert fields["ops"].split(",") == list(ops.NATIVE_OPS)


@needs_lib
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}_c{}-{}-{}_{}x{}_g{}_s{}".format(*c))
def test_kernel_matches_reference_and_function(case):
    n, csrc, cin, cout, h, w, group, stride = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, weight, bias, address = random_case(rng, n, csrc, cin, cout, h, w, group, stride, bias=cin % 3 != 0)
    model = address_conv_model(x.shape, weight, bias, address, group, (stride, stride))
    ref = address_conv_ref(x, weight, bias, address, group, (stride, stride))
    native = run(model, x, threads=1)
    fallback = run(model, x, threads=1, custom_ops=False)
    assert native.shape == ref.shape == (n, cout, -(-h // stride), -(-w // stride))
    assert rel_err(native, ref) < 1e-5
    assert rel_err(native, fallback) < 1e-5


@needs_lib
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (1, 2), (2, 1), (3, 2), (2, 3)])
@pytest.mark.parametrize("hw", [(9, 70), (13, 1), (6, 33), (21, 17), (8, 48), (3, 16)])
def test_strides_and_large_displacements(strides, hw):
    """Width strides 1/2/3 take different packing paths; displacements reach past the borders."""
    rng = np.random.default_rng(hash((strides, hw)) % 2**32)
    x, weight, bias, address = random_case(rng, 2, 12, 20, 24, *hw, 1, strides[0], max_d=5)
    model = address_conv_model(x.shape, weight, bias, address, 1, strides)
    ref = address_conv_ref(x, weight, bias, address, 1, strides)
    assert rel_err(run(model, x, threads=1), ref) < 1e-5


@needs_lib
def test_dynamic_spatial_size_and_threads():
    rng = np.random.default_rng(7)
    x, weight, bias, address = random_case(rng, 3, 48, 64, 96, 21, 19, 2, 1)
    model = address_conv_model(x.shape, weight, bias, address, 2, (1, 1), dynamic_hw=True)
    s1 = session(fit_ir_version(model), threads=1)
    s2 = session(fit_ir_version(model), threads=2)
    for h, w in [(21, 19), (8, 33), (1, 2)]:
        xi = rng.standard_normal((3, 48, h, w)).astype(np.float32)
        y1 = s1.run(None, {"X": xi})[0]
        y2 = s2.run(None, {"X": xi})[0]
        assert np.array_equal(y1, y2), "1 and 2 threads must give bit-identical results"
        assert rel_err(y1, address_conv_ref(xi, weight, bias, address, 2)) < 1e-5


@needs_lib
@pytest.mark.parametrize("shape", [(1, 64, 200, 7, 7, 1), (1, 96, 130, 9, 11, 2), (1, 32, 256, 3, 3, 1),
                                   (1, 64, 200, 10, 10, 1), (1, 48, 150, 27, 25, 2)])
def test_single_block_split_over_output_channels(shape):
    """One image, one group, one block: packed once, output channels split between threads."""
    n, cin, cout, h, w, stride = shape
    rng = np.random.default_rng(5)
    x, weight, bias, address = random_case(rng, n, cin, cin, cout, h, w, 1, stride)
    model = address_conv_model(x.shape, weight, bias, address, 1, (stride, stride))
    y1 = run(model, x, threads=1)
    y2 = run(model, x, threads=2)
    assert np.array_equal(y1, y2), "1 and 2 threads must give bit-identical results"
    assert rel_err(y1, address_conv_ref(x, weight, bias, address, 1, (stride, stride))) < 1e-5


# Epilogues: none, Relu (clip_min = 0), Clip; each with and without a residual input.
EPILOGUES = [(None, False), ((0.0, np.inf), False), ((-0.5, 0.7), False), (None, True), ((0.0, np.inf), True),
             ((-1.0, 0.25), True)]


def run_fused(model, x, r, **opts):
    feeds = {"X": x} if r is None else {"X": x, "R": r}
    return session(fit_ir_version(model), **opts).run(None, feeds)[0]


@needs_lib
@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: f"clip{e[0]}_res{int(e[1])}")
@pytest.mark.parametrize("case", CASES[::2] + CASES[10:12] + CASES[16:], ids=lambda c: "n{}_c{}-{}-{}_{}x{}_g{}_s{}".format(*c))
def test_fused_epilogue_matches_reference_and_function(case, epilogue):
    """Y = clip(conv + B + residual): every tile kind (full, narrow tails, channel tiles) applies it."""
    n, csrc, cin, cout, h, w, group, stride = case
    clip, with_residual = epilogue
    rng = np.random.default_rng(abs(hash((case, epilogue))) % 2**32)
    x, weight, bias, address = random_case(rng, n, csrc, cin, cout, h, w, group, stride, bias=cin % 3 != 0)
    r = rng.standard_normal((n, cout, -(-h // stride), -(-w // stride))).astype(np.float32) if with_residual else None
    model = address_conv_model(x.shape, weight, bias, address, group, (stride, stride), residual=with_residual,
                               clip=clip)
    lo, hi = clip or (-np.inf, np.inf)
    unclipped = address_conv_ref(x, weight, bias, address, group, (stride, stride), residual=r)
    ref = np.clip(unclipped, lo, hi)
    tol = 1e-5 * max(np.abs(unclipped).max(), 1e-12)
    native = run_fused(model, x, r, threads=1)
    fallback = run_fused(model, x, r, threads=1, custom_ops=False)
    assert native.shape == ref.shape
    assert np.abs(native - ref).max() <= tol and np.abs(fallback - ref).max() <= tol
    assert native.min() >= lo and native.max() <= hi
    assert np.array_equal(native, run_fused(model, x, r, threads=2)), "1 and 2 threads must give bit-identical results"


@needs_lib
@pytest.mark.parametrize("epilogue", [(None, False), ((0.0, np.inf), True)], ids=["plain", "relu_residual"])
@pytest.mark.parametrize("case", [(1, 32, 96, 32, 32, 1), (2, 48, 20, 14, 14, 2), (1, 64, 200, 7, 7, 1),
                                  (1, 16, 17, 1, 1, 1), (3, 24, 36, 5, 13, 2), (1, 96, 32, 9, 9, 1),
                                  (1, 130, 140, 11, 11, 1), (1, 40, 24, 6, 10, 1)],
                         ids=lambda c: "n{}_c{}-{}_{}x{}_g{}".format(*c))
def test_identity_table_reads_x_unpacked(case, epilogue):
    """An identity table with stride 1 is a plain 1x1 conv: the tiles read X's planes directly
    (row stride H*W, masked column tails), no packing; same results as the reference."""
    n, cin, cout, h, w, group = case
    clip, with_residual = epilogue
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, cin // group, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    address = np.stack([np.arange(cin), np.zeros(cin), np.zeros(cin)], axis=1).astype(np.int32)
    r = rng.standard_normal((n, cout, h, w)).astype(np.float32) if with_residual else None
    model = address_conv_model(x.shape, weight, bias, address, group, residual=with_residual, clip=clip)
    lo, hi = clip or (-np.inf, np.inf)
    ref = address_conv_ref(x, weight, bias, address, group, residual=r, clip_min=lo, clip_max=hi)
    y1 = run_fused(model, x, r, threads=1)
    assert rel_err(y1, ref) < 1e-5
    assert np.array_equal(y1, run_fused(model, x, r, threads=2)), "1 and 2 threads must give bit-identical results"


@needs_lib
@pytest.mark.parametrize("shape", [(1, 64, 200, 7, 7, 1), (1, 96, 130, 9, 11, 2), (1, 48, 150, 27, 25, 2)])
def test_fused_epilogue_single_block_split_is_thread_independent(shape):
    n, cin, cout, h, w, stride = shape
    rng = np.random.default_rng(6)
    x, weight, bias, address = random_case(rng, n, cin, cin, cout, h, w, 1, stride)
    r = rng.standard_normal((n, cout, -(-h // stride), -(-w // stride))).astype(np.float32)
    model = address_conv_model(x.shape, weight, bias, address, 1, (stride, stride), residual=True, clip=(0, np.inf))
    y1, y2 = run_fused(model, x, r, threads=1), run_fused(model, x, r, threads=2)
    assert np.array_equal(y1, y2), "1 and 2 threads must give bit-identical results"
    ref = address_conv_ref(x, weight, bias, address, 1, (stride, stride), residual=r, clip_min=0)
    assert rel_err(y1, ref) < 1e-5


def test_fused_epilogue_keeps_nan_and_infinities():
    """A NaN sum stays NaN through the clamp (as onnxruntime's Relu/Clip); +-inf are clamped."""
    if LIB is None:
        pytest.skip("native library not built")
    x = np.zeros((1, 4, 3, 5), np.float32)
    weight = np.ones((20, 4, 1, 1), np.float32)
    address = np.array([[k, 0, 0] for k in range(4)], np.int32)
    r = np.zeros((1, 20, 3, 5), np.float32)
    r[0, :, 0, 0] = np.nan
    r[0, :, 1, 1] = np.inf
    r[0, :, 2, 2] = -np.inf
    model = address_conv_model(x.shape, weight, None, address, residual=True, clip=(0.0, 6.0))
    for opts in ({}, {"custom_ops": False}):
        y = run_fused(model, x, r, threads=1, **opts)
        assert np.isnan(y[0, :, 0, 0]).all() and (y[0, :, 1, 1] == 6).all() and (y[0, :, 2, 2] == 0).all()


@needs_lib
def test_residual_of_the_wrong_shape_is_a_clear_error():
    model = address_conv_model((1, 4, 5, 5), np.ones((6, 4, 1, 1), np.float32), None, np.zeros((4, 3), np.int32),
                               residual=True, with_functions=False)
    model.graph.input[1].type.tensor_type.ClearField("shape")
    with pytest.raises(Exception, match=r"AddressConv: residual must have the output's shape \[1, 6, 5, 5\]"):
        run_fused(model, np.zeros((1, 4, 5, 5), np.float32), np.zeros((1, 6, 5, 4), np.float32), threads=1)


@needs_lib
@pytest.mark.parametrize("address, message", [
    (np.array([[0, 0, 0], [9, 0, 0]], np.int32), "address[1, 0] = 9 is not a channel of X"),
    (np.array([[0, 0, 0], [-1, 1, 1]], np.int32), "address[1, 0] = -1 is not a channel of X"),
    (np.array([[0, 0], [1, 0]], np.int32), "address must have shape [Cin, 3]"),
])
def test_bad_address_is_a_clear_error(address, message):
    weight = np.ones((4, 2, 1, 1), np.float32)
    node = onnx.helper.make_node(ops.ADDRESS_CONV, ["X", "W", "", "address"], ["Y"], domain=ops.DOMAIN)
    graph = onnx.helper.make_graph(
        [node], "bad", [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(weight, "W"), onnx.numpy_helper.from_array(address, "address")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid(ops.DOMAIN, 1)])
    with pytest.raises(Exception, match=r"AddressConv: .*" + message.replace("[", r"\[").replace("]", r"\]")):
        run(model, np.zeros((1, 3, 4, 4), np.float32), threads=1)


@needs_lib
def test_group_must_divide_cin():
    model = address_conv_model((1, 3, 4, 4), np.ones((4, 1, 1, 1), np.float32), None, np.zeros((3, 3), np.int32),
                               group=2, with_functions=False)
    with pytest.raises(Exception, match=r"Cin = 3 \(rows of address\) is not divisible by group = 2"):
        run(model, np.zeros((1, 3, 4, 4), np.float32), threads=1)


@needs_lib
@pytest.mark.skipif(bool(os.environ.get("ONNXOPT_GEMM_ISA")), reason="already running under a forced ISA")
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_forced_lesser_isa_passes_the_kernel_tests(isa):
    """The AVX2 and portable micro-kernels (ONNXOPT_GEMM_ISA, read once per process) run this
    file's kernel tests in a subprocess, so they are covered wherever the best ISA is AVX-512."""
    info = subprocess.run([sys.executable, "-c", "import ctypes, sys; f = ctypes.CDLL(sys.argv[1]).onnxopt_ops_info; "
                           "f.restype = ctypes.c_char_p; print(f().decode())", str(LIB)],
                          env={**os.environ, "ONNXOPT_GEMM_ISA": isa}, capture_output=True, text=True, check=True)
    chosen = dict(kv.split("=", 1) for kv in info.stdout.strip().split(";"))["gemm"]
    if isa == "avx2" and chosen != "avx2":
        assert chosen == "generic"
        pytest.skip("this CPU has no AVX2+FMA")
    assert chosen == isa
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "kernel_matches or dynamic_spatial or single_block or strides_and or fused_epilogue or identity_table"],
                          env={**os.environ, "ONNXOPT_GEMM_ISA": isa}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def profiled_op_types(model, tmp_path, **opts):
    sess = session(fit_ir_version(model), threads=1, profile_prefix=str(tmp_path / "prof"), **opts)
    sess.run(None, {"X": np.ones((1, 8, 6, 6), np.float32)})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


def test_profiler_shows_which_path_ran(tmp_path):
    rng = np.random.default_rng(3)
    x, weight, bias, address = random_case(rng, 1, 8, 8, 8, 6, 6, 1, 1)
    model = address_conv_model(x.shape, weight, bias, address)
    fallback_ops = profiled_op_types(model, tmp_path, custom_ops=False)
    assert ops.ADDRESS_CONV not in fallback_ops and {"Gather", "Conv"} <= fallback_ops
    if LIB is None:
        pytest.skip("native library not built: only the fallback path checked")
    assert profiled_op_types(model, tmp_path) == {ops.ADDRESS_CONV}


def test_profiler_shows_which_path_ran_with_a_residual(tmp_path):
    """The residual form is a function overload; the native kernel still runs it when registered."""
    rng = np.random.default_rng(4)
    x, weight, bias, address = random_case(rng, 1, 8, 8, 8, 6, 6, 1, 1)
    model = address_conv_model(x.shape, weight, bias, address, residual=True, clip=(0, np.inf))
    assert [(f.name, f.overload) for f in model.functions] == [(ops.ADDRESS_CONV, "residual")]
    assert model.graph.node[0].overload == "residual"

    def op_types(**opts):
        sess = session(fit_ir_version(model), threads=1, profile_prefix=str(tmp_path / "prof"), **opts)
        sess.run(None, {"X": x, "R": np.ones((1, 8, 6, 6), np.float32)})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
        return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}

    assert {"Gather", "Conv", "Add", "Clip"} <= op_types(custom_ops=False)
    if LIB is None:
        pytest.skip("native library not built: only the fallback path checked")
    assert op_types() == {ops.ADDRESS_CONV}


def test_fallback_matches_reference_without_library():
    rng = np.random.default_rng(11)
    x, weight, bias, address = random_case(rng, 2, 6, 10, 4, 7, 6, 2, 2)
    model = address_conv_model(x.shape, weight, None, address, 2, (2, 2))
    y = run(model, x, threads=1, custom_ops=False)
    assert rel_err(y, address_conv_ref(x, weight, None, address, 2, (2, 2))) < 1e-5


def test_add_functions_embeds_one_function_and_the_opset():
    model = address_conv_model((1, 4, 5, 5), np.ones((4, 4, 1, 1)), None, np.zeros((4, 3), np.int32),
                               with_functions=False)
    del model.opset_import[1]
    add_functions(model)
    add_functions(model)
    assert [(f.domain, f.name) for f in model.functions] == [(ops.DOMAIN, ops.ADDRESS_CONV)]
    assert [(o.domain, o.version) for o in model.opset_import if o.domain == ops.DOMAIN] == [(ops.DOMAIN, 1)]
    onnx.checker.check_model(model)
