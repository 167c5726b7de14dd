"""The blocked layout (ToBlocked, BlockedAddressConv, FromBlocked): the native kernels against the
numpy reference and the ONNX-function fallbacks, and the layout's invariants (zero border and
padding channels) on the raw blocked tensors."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxopt.ir import fit_ir_version
from onnxopt.runtime import library_path, ops, session
from onnxopt.runtime.functions import add_functions
from onnxopt.runtime.reference import address_conv_ref

LIB = library_path()
needs_lib = pytest.mark.skipif(LIB is None, reason="native library not built (onnxopt.runtime.library_path() is None)")


def blocked(x: np.ndarray) -> np.ndarray:
    """numpy ToBlocked: [N, C, H, W] -> [N, ceil(C/16), H + 2, W + 2, 16], zero border and padding."""
    n, c, h, w = x.shape
    cb = -(-c // 16)
    xp = np.zeros((n, cb * 16, h + 2, w + 2), x.dtype)
    xp[:, :c, 1:-1, 1:-1] = x
    return xp.reshape(n, cb, 16, h + 2, w + 2).transpose(0, 1, 3, 4, 2)


def chain_model(x_shape, weight, bias, address, strides=(1, 1), residual=False, clip=None, raw=False, entry=False):
    """X -> ToBlocked -> BlockedAddressConv (-> FromBlocked unless raw) with W, B, address initializers;
    R (NCHW, the output's shape) -> ToBlocked -> the residual when ``residual``.  ``entry``: one
    BlockedEntryConv on X instead of the ToBlocked and the BlockedAddressConv."""
    n, c, h, w = x_shape
    cout = len(weight)
    ho, wo = -(-h // strides[0]), -(-w // strides[1])
    inits = [onnx.numpy_helper.from_array(weight, "W"), onnx.numpy_helper.from_array(address, "address")]
    inputs = ["Xb", "W", "", "address"]
    if bias is not None:
        inits.append(onnx.numpy_helper.from_array(bias, "B"))
        inputs[2] = "B"
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))]
    nodes = [helper.make_node(ops.TO_BLOCKED, ["X"], ["Xb"], domain=ops.DOMAIN)]
    if residual:
        graph_inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, [n, cout, ho, wo]))
        nodes.append(helper.make_node(ops.TO_BLOCKED, ["R"], ["Rb"], domain=ops.DOMAIN))
        inputs.append("Rb")
    attrs = {"strides": list(strides)}
    if clip is not None:
        attrs.update(clip_min=float(clip[0]), clip_max=float(clip[1]))
    if entry:
        nodes, inputs[0] = [], "X"
    nodes.append(helper.make_node(ops.BLOCKED_ENTRY_CONV if entry else ops.BLOCKED_ADDRESS_CONV, inputs,
                                  ["Yb" if not raw else "Y"], domain=ops.DOMAIN, **attrs))
    if not raw:
        nodes.append(helper.make_node(ops.FROM_BLOCKED, ["Yb"], ["Y"], domain=ops.DOMAIN, channels=cout))
    graph = helper.make_graph(nodes, "blocked", graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION)])
    model.ir_version = 10
    return add_functions(model)


def run(model, feeds, custom_ops=True, threads=1):
    return session(fit_ir_version(model), custom_ops=custom_ops, threads=threads).run(None, feeds)[0]


def case(rng, n, csrc, cin, cout, h, w, bias=True):
    address = np.stack([rng.integers(0, csrc, cin), rng.integers(-1, 2, cin), rng.integers(-1, 2, cin)],
                       axis=1).astype(np.int32)
    weight = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    return rng.standard_normal((n, csrc, h, w)).astype(np.float32), weight, b, address


# (N, Csrc, Cin, Cout, H, W, stride): channel counts on and off multiples of 16 (padding lanes),
# rows of 1..33 positions (every tile width and tail), strides 1..3, H != W, batch > 1.  The last
# three have more than 64 KiB of weights: they run group by group over bands of rows (at most 8,
# thinner where an image has few channel groups) with the input channels in chunks of 128 (partial
# sums through the output): 2 chunks over several groups and bands of up to 8 rows, then 3 chunks
# over bands of one row (a single channel group) and of two rows (two groups).
CASES = [
    (1, 32, 96, 32, 8, 8, 1), (2, 16, 16, 16, 5, 7, 1), (1, 20, 24, 40, 9, 13, 1), (1, 96, 96, 32, 32, 32, 1),
    (3, 7, 5, 3, 4, 6, 2), (1, 48, 48, 100, 6, 33, 1), (1, 64, 64, 192, 7, 7, 1), (2, 24, 40, 17, 11, 10, 2),
    (1, 3, 3, 1, 1, 1, 1), (1, 40, 40, 64, 12, 12, 3), (1, 130, 64, 70, 3, 17, 1), (1, 16, 16, 80, 2, 25, 2),
    (2, 150, 200, 100, 19, 9, 1), (1, 64, 300, 57, 10, 12, 2), (1, 300, 300, 60, 5, 7, 1),
]


def test_function_fallback_matches_the_reference():
    rng = np.random.default_rng(0)
    for n, csrc, cin, cout, h, w, s in CASES[:6]:
        x, weight, b, address = case(rng, n, csrc, cin, cout, h, w)
        ref = address_conv_ref(x, weight, b, address, strides=(s, s))
        got = run(chain_model(x.shape, weight, b, address, (s, s)), {"X": x}, custom_ops=False)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@needs_lib
@pytest.mark.parametrize("shape", CASES)
def test_native_matches_reference_and_fallback(shape):
    n, csrc, cin, cout, h, w, s = shape
    rng = np.random.default_rng(sum(shape))
    x, weight, b, address = case(rng, n, csrc, cin, cout, h, w, bias=cout % 2 == 0)
    r = rng.standard_normal((n, cout, -(-h // s), -(-w // s))).astype(np.float32)
    for residual, clip in ((False, None), (True, (0.0, 6.0)), (True, (-0.5, np.inf))):
        feeds = {"X": x, "R": r} if residual else {"X": x}
        model = chain_model(x.shape, weight, b, address, (s, s), residual, clip)
        ref = address_conv_ref(x, weight, b, address, strides=(s, s), residual=r if residual else None,
                               clip_min=clip[0] if clip else -np.inf, clip_max=clip[1] if clip else np.inf)
        native = run(model, feeds)
        np.testing.assert_allclose(native, ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(native, run(model, feeds, custom_ops=False), rtol=1e-4, atol=1e-4)
        # the same sums whatever the thread count
        np.testing.assert_array_equal(native, run(model, feeds, threads=2))


@needs_lib
@pytest.mark.parametrize("cin", [20, 220])  # 220: > 64 KiB of weights, in chunks and bands (see CASES)
def test_raw_blocked_output_keeps_border_and_padding_zero(cin):
    rng = np.random.default_rng(3)
    x, weight, b, address = case(rng, 2, 20, cin, 21 if cin < 64 else 70, 10, 9)
    # clip_min > 0 would turn a computed padding channel into clip_min: the kernel must mask it
    model = chain_model(x.shape, weight, b, address, residual=False, clip=(0.5, 6.0), raw=True)
    yb = run(model, {"X": x})
    assert yb.shape == (2, 2 if cin < 64 else 5, 12, 11, 16)
    ref = address_conv_ref(x, weight, b, address, clip_min=0.5, clip_max=6.0).astype(np.float32)
    np.testing.assert_allclose(yb, blocked(ref), rtol=1e-4, atol=1e-4)
    assert not yb[:, -1, :, :, 5 if cin < 64 else 6:].any(), "padding channels must be zero"
    assert not yb[:, :, 0].any() and not yb[:, :, -1].any() and not yb[:, :, :, 0].any() and not yb[:, :, :, -1].any()
    np.testing.assert_allclose(run(model, {"X": x}, custom_ops=False), yb, rtol=1e-4, atol=1e-4)


@needs_lib
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 17, 3, 5), (1, 32, 20, 1), (1, 5, 1, 40)])
def test_to_and_from_blocked_round_trip(shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    to = helper.make_node(ops.TO_BLOCKED, ["X"], ["Y"], domain=ops.DOMAIN)
    graph = helper.make_graph([to], "to", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION)])
    model.ir_version = 10
    add_functions(model)
    xb = run(model, {"X": x})
    np.testing.assert_array_equal(xb, blocked(x))
    np.testing.assert_array_equal(run(model, {"X": x}, custom_ops=False), xb)
    back = helper.make_node(ops.FROM_BLOCKED, ["X"], ["Y"], domain=ops.DOMAIN, channels=shape[1])
    graph = helper.make_graph([back], "from", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(xb.shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION)])
    model.ir_version = 10
    add_functions(model)
    np.testing.assert_array_equal(run(model, {"X": xb}), x)
    np.testing.assert_array_equal(run(model, {"X": xb}, custom_ops=False), x)


@needs_lib
@pytest.mark.parametrize("address, message", [
    ([[0, 2, 0]], "displacements in [-1, 1]"),
    ([[16, 0, 0]], "not a channel of X"),
])
def test_bad_address_tables_fail_with_a_message(address, message):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 4, 4)).astype(np.float32)
    model = chain_model(x.shape, np.ones((4, 1, 1, 1), np.float32), None, np.array(address, np.int32))
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("]", r"\]")):
        run(model, {"X": x})


# BlockedEntryConv (N, C, K address rows, Cout, H, W, stride): one to 20 image channels (past one
# block), rows of 1..33 positions, strides 1 and 2, batch > 1, a ShiftNet stem (3 channels, 27 taps).
ENTRY_CASES = [(1, 3, 27, 32, 8, 8, 1), (2, 3, 27, 20, 9, 13, 2), (1, 1, 9, 16, 1, 1, 1), (1, 5, 12, 40, 6, 33, 1),
               (3, 20, 60, 17, 7, 5, 2)]


@needs_lib
@pytest.mark.parametrize("shape", ENTRY_CASES)
def test_entry_conv_is_to_blocked_and_the_blocked_conv(shape):
    """Bit for bit the ToBlocked + BlockedAddressConv it replaces (raw blocked output, border and
    padding lanes included), at 1 and 2 threads; its fallback and the reference agree."""
    n, c, k, cout, h, w, s = shape
    rng = np.random.default_rng(sum(shape))
    x, weight, b, address = case(rng, n, c, k, cout, h, w, bias=cout % 2 == 0)
    for clip in (None, (0.0, 6.0)):
        want = run(chain_model(x.shape, weight, b, address, (s, s), clip=clip, raw=True), {"X": x})
        model = chain_model(x.shape, weight, b, address, (s, s), clip=clip, raw=True, entry=True)
        for threads in (1, 2):
            np.testing.assert_array_equal(run(model, {"X": x}, threads=threads), want)
        np.testing.assert_allclose(run(model, {"X": x}, custom_ops=False), want, rtol=1e-4, atol=1e-4)
        ref = address_conv_ref(x, weight, b, address, strides=(s, s), clip_min=clip[0] if clip else -np.inf,
                               clip_max=clip[1] if clip else np.inf).astype(np.float32)
        np.testing.assert_allclose(want, blocked(ref), rtol=1e-4, atol=1e-4)


@needs_lib
def test_entry_conv_after_a_larger_image():
    """The padded copy of the image lives in per-thread scratch kept between runs: after a larger
    image has filled it, a smaller one must still read zeros around itself."""
    for shape in ((2, 5, 12, 40, 9, 33, 1), (1, 3, 27, 32, 8, 8, 1)):
        n, c, k, cout, h, w, s = shape
        x, weight, b, address = case(np.random.default_rng(sum(shape)), n, c, k, cout, h, w)
        x = x + 100.0  # a border read as the previous image's values would be far off
        want = run(chain_model(x.shape, weight, b, address, (s, s), raw=True), {"X": x})
        np.testing.assert_array_equal(run(chain_model(x.shape, weight, b, address, (s, s), raw=True, entry=True),
                                          {"X": x}), want)


@needs_lib
@pytest.mark.parametrize("address, message", [
    ([[0, 2, 0]], "displacements in [-1, 1]"),
    ([[3, 0, 0]], "address[0, 0] = 3 is not a channel of X (X stores 3)"),
])
def test_entry_conv_bad_address_fails_with_a_message(address, message):
    model = chain_model((1, 3, 4, 4), np.ones((4, 1, 1, 1), np.float32), None, np.array(address, np.int32), raw=True,
                        entry=True)
    with pytest.raises(Exception, match="BlockedEntryConv: .*" + re.escape(message)):
        run(model, {"X": np.zeros((1, 3, 4, 4), np.float32)})


@needs_lib
def test_entry_conv_needs_an_nchw_input():
    node = helper.make_node(ops.BLOCKED_ENTRY_CONV, ["X", "W", "", "address"], ["Y"], domain=ops.DOMAIN)
    model = _one_node_model(node, (1, 1, 3, 4, 4))
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.ones((4, 1, 1, 1), np.float32), "W"),
                                    onnx.numpy_helper.from_array(np.zeros((1, 3), np.int32), "address")])
    message = "BlockedEntryConv: X must be NCHW [N, C, H, W], got [1, 1, 3, 4, 4]"
    with pytest.raises(Exception, match=re.escape(message)):
        run(model, {"X": np.zeros((1, 1, 3, 4, 4), np.float32)})


def _one_node_model(node, x_shape):
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION)])
    model.ir_version = 10
    return add_functions(model)


@needs_lib
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 17, 3, 5), (1, 128, 8, 8), (3, 40, 7, 1), (1, 5, 13, 33)])
def test_blocked_global_average_pool(shape):
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    xb = blocked(x)
    node = helper.make_node(ops.BLOCKED_GLOBAL_AVERAGE_POOL, ["X"], ["Y"], domain=ops.DOMAIN, channels=shape[1])
    model = _one_node_model(node, xb.shape)
    want = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    got = run(model, {"X": xb})
    assert got.shape == (shape[0], shape[1], 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(model, {"X": xb}, custom_ops=False), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run(model, {"X": xb}, threads=2), got)


@needs_lib
def test_blocked_global_average_pool_checks_the_channel_count():
    node = helper.make_node(ops.BLOCKED_GLOBAL_AVERAGE_POOL, ["X"], ["Y"], domain=ops.DOMAIN, channels=40)
    with pytest.raises(Exception, match="X has 2 channel blocks, channels = 40 needs 3"):
        run(_one_node_model(node, (1, 2, 4, 4, 16)), {"X": np.zeros((1, 2, 4, 4, 16), np.float32)})


@needs_lib
def test_address_as_a_graph_input_changing_between_runs():
    """Plans are kept per kernel between runs: a new address table must get a new plan (and a
    new validation), on the same session."""
    from onnxopt.runtime.reference import address_conv_ref

    rng = np.random.default_rng(6)
    x, weight, b, _ = case(rng, 1, 24, 24, 20, 5, 9)
    model = chain_model(x.shape, weight, b, np.zeros((24, 3), np.int32))
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "address"))
    model.graph.input.append(helper.make_tensor_value_info("address", TensorProto.INT32, [24, 3]))
    sess = session(fit_ir_version(model), threads=1)
    for seed in range(3):
        a = case(np.random.default_rng(seed), 1, 24, 24, 20, 5, 9)[3]
        got = sess.run(None, {"X": x, "address": a})[0]
        np.testing.assert_allclose(got, address_conv_ref(x, weight, b, a), rtol=1e-4, atol=1e-4)
    bad = a.copy()
    bad[0, 1] = 2
    with pytest.raises(Exception, match=r"displacements in \[-1, 1\]"):
        sess.run(None, {"X": x, "address": bad})


@pytest.mark.parametrize("graph_input", ["B", "W"])
def test_bias_or_weight_as_a_graph_input(graph_input):
    """With W, B and the address constant the kernel makes its stage once; a B or W fed per run
    must still be read on every run."""
    from onnxopt.runtime.reference import address_conv_ref

    rng = np.random.default_rng(7)
    x, weight, b, address = case(rng, 1, 20, 20, 18, 6, 7)
    model = chain_model(x.shape, weight, b, address)
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == graph_input))
    shape = list(b.shape if graph_input == "B" else weight.shape)
    model.graph.input.append(helper.make_tensor_value_info(graph_input, TensorProto.FLOAT, shape))
    sess = session(fit_ir_version(model), threads=1)
    for seed in range(3):
        value = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        wv, bv = (weight, value) if graph_input == "B" else (value, b)
        got = sess.run(None, {"X": x, graph_input: value})[0]
        np.testing.assert_allclose(got, address_conv_ref(x, wv, bv, address), rtol=1e-4, atol=1e-4)


@needs_lib
@pytest.mark.skipif(bool(os.environ.get("ONNXOPT_GEMM_ISA")), reason="already running under a forced ISA")
def test_portable_tiles_pass_the_blocked_tests():
    """Without AVX-512 the blocked ops run the portable tile (ONNXOPT_GEMM_ISA=generic, read once per
    process): this file's and the pair's kernel tests in a subprocess."""
    here = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(here / "test_runtime_blocked.py"), str(here / "test_runtime_blocked_pair.py"),
                           "-k", "not portable_tiles"],
                          env={**os.environ, "ONNXOPT_GEMM_ISA": "generic"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
