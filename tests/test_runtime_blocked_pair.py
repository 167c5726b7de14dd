"""BlockedAddressConvPair: two blocked AddressConvs in one op (the inner result lives in a ring of
rows, in a whole image where the two convs' weights are large, or, where the second is strided,
per residue class of the positions it reads).  Checked bit for bit against the same two convs as
BlockedAddressConv nodes, raw blocked output included (border and padding lanes), at 1 and 2
threads, and against its ONNX-function fallback."""
from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxopt.ir import fit_ir_version
from onnxopt.runtime import ops, session
from onnxopt.runtime.functions import add_functions

from test_runtime_blocked import LIB, needs_lib, run


def _conv(rng, csrc, k, cout, max_d=1):
    address = np.stack([rng.integers(0, csrc, k), rng.integers(-max_d, max_d + 1, k),
                        rng.integers(-max_d, max_d + 1, k)], axis=1).astype(np.int32)
    return (rng.standard_normal((cout, k, 1, 1)).astype(np.float32),
            rng.standard_normal(cout).astype(np.float32), address)


def pair_models(x_shape, first, second, first_attrs, attrs, residual_shape=None):
    """(pair, chain): X -> ToBlocked -> BlockedAddressConvPair (or two BlockedAddressConvs), raw
    blocked output Y; R -> ToBlocked -> the residual when ``residual_shape``."""
    inits = []
    for tag, (w, b, a) in (("1", first), ("2", second)):
        inits += [onnx.numpy_helper.from_array(w, "W" + tag), onnx.numpy_helper.from_array(b, "B" + tag),
                  onnx.numpy_helper.from_array(a, "address" + tag)]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))]
    head = [helper.make_node(ops.TO_BLOCKED, ["X"], ["Xb"], domain=ops.DOMAIN)]
    res = []
    if residual_shape is not None:
        graph_inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, list(residual_shape)))
        head.append(helper.make_node(ops.TO_BLOCKED, ["R"], ["Rb"], domain=ops.DOMAIN))
        res = ["Rb"]
    pair = helper.make_node(ops.BLOCKED_ADDRESS_CONV_PAIR,
                            ["Xb", "W1", "B1", "address1", "W2", "B2", "address2"] + res, ["Y"], domain=ops.DOMAIN,
                            **{"first_" + k: v for k, v in first_attrs.items()}, **attrs)
    chain = [helper.make_node(ops.BLOCKED_ADDRESS_CONV, ["Xb", "W1", "B1", "address1"], ["M"], domain=ops.DOMAIN,
                              **first_attrs),
             helper.make_node(ops.BLOCKED_ADDRESS_CONV, ["M", "W2", "B2", "address2"] + res, ["Y"],
                              domain=ops.DOMAIN, **attrs)]
    models = []
    for body in ([pair], chain):
        graph = helper.make_graph(head + body, "pair", graph_inputs,
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION)])
        model.ir_version = 10
        models.append(add_functions(model))
    return models


# (N, C, mid, Cout, H, W, first stride, second stride, residual, clips): tails off multiples of 16,
# rows of 1..33 positions, strides on either conv, batch > 1, more images than one claim of rows.
CASES = [
    (1, 32, 96, 32, 8, 8, 1, 1, True, True), (2, 16, 48, 16, 5, 7, 1, 1, True, False),
    (1, 20, 40, 24, 9, 13, 1, 2, False, True), (1, 32, 96, 64, 32, 32, 1, 2, False, True),
    (3, 7, 5, 3, 4, 6, 2, 1, True, True), (1, 48, 100, 48, 6, 33, 1, 1, True, False),
    (1, 3, 1, 2, 1, 1, 1, 1, False, False), (2, 24, 40, 17, 11, 10, 2, 2, False, True),
    (5, 16, 32, 16, 3, 4, 1, 1, True, True), (1, 64, 192, 64, 16, 16, 1, 1, True, True),
    # more than 64 KiB of weights per conv: the two single convs run in chunks of input channels
    # and bands of rows; the pair by rows at 20 positions a row, and at 10 (too few FLOPs per byte
    # of weights read by rows) it computes its first conv whole, then the second, as it does past
    # 1 MiB of weights (2 bands of rows at 9 rows)
    (1, 128, 384, 128, 5, 20, 1, 1, True, True), (1, 128, 384, 128, 9, 10, 1, 1, True, True),
    (2, 256, 768, 256, 5, 6, 1, 2, True, True), (1, 256, 768, 256, 17, 3, 2, 1, False, True),
    # a first conv's image past the 16 MiB the pair keeps per thread: allocated for the run
    (1, 128, 384, 128, 1600, 5, 1, 1, True, True),
]


def _case(shape, seed=0):
    n, c, mid, cout, h, w, s1, s2, residual, clips = shape
    rng = np.random.default_rng(seed)
    first = _conv(rng, c, c + 3, mid)
    second = _conv(rng, mid, mid, cout)
    first_attrs = {"strides": [s1, s1]}
    attrs = {"strides": [s2, s2]}
    if clips:
        first_attrs.update(clip_min=0.0)
        attrs.update(clip_min=-0.5, clip_max=2.0)
    return _models_and_feeds(rng, (n, c, h, w), first, second, first_attrs, attrs, residual)


def _models_and_feeds(rng, x_shape, first, second, first_attrs, attrs, residual):
    """pair_models() and random feeds for them (R of the output's shape when ``residual``)."""
    n, _, h, w = x_shape
    (s1, _), (sh, sw) = first_attrs["strides"], attrs["strides"]
    ho, wo = -(-(-(-h // s1)) // sh), -(-(-(-w // s1)) // sw)
    r_shape = (n, second[0].shape[0], ho, wo)
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    if residual:
        feeds["R"] = rng.standard_normal(r_shape).astype(np.float32)
    return pair_models(x_shape, first, second, first_attrs, attrs, r_shape if residual else None), feeds


@needs_lib
@pytest.mark.parametrize("shape", CASES)
def test_pair_is_the_two_convs_bit_for_bit(shape):
    _assert_bit_for_bit(*_case(shape))


def _assert_bit_for_bit(models, feeds):
    """The pair's raw blocked output is the chain's, bit for bit, at 1 and 2 threads."""
    pair, chain = models
    want = run(chain, feeds)
    for threads in (1, 2):
        got = run(pair, feeds, threads=threads)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@needs_lib
@pytest.mark.parametrize("shape", CASES[:4])
def test_pair_fallback_matches_the_kernel(shape):
    (pair, _), feeds = _case(shape, seed=1)
    got = run(pair, feeds, custom_ops=False)
    np.testing.assert_allclose(got, run(pair, feeds), rtol=1e-4, atol=1e-4)


@needs_lib
def test_pair_rejects_an_address_past_the_inner_channels():
    rng = np.random.default_rng(2)
    first, second = _conv(rng, 16, 16, 20), _conv(rng, 20, 8, 16)
    second[2][3, 0] = 32  # the inner result stores 2 blocks = 32 channels
    (pair, _) = pair_models((1, 16, 4, 4), first, second, {}, {})
    with pytest.raises(Exception, match=r"BlockedAddressConvPair: address\[3, 0\] = 32 is not a channel"):
        run(pair, {"X": np.zeros((1, 16, 4, 4), np.float32)})


# A strided second conv reads its input channel k at one residue class of the first conv's
# positions only ((dy mod sh, dx mod sw)); the pair then computes the first conv per class at those
# positions (blocked_polyphase.h).  Cases: (N, C, mid, Cout, H, W, first stride, second strides,
# first conv's displacement, second conv's table, residual).  Tables: "shift" (ShiftNet's nine
# groups), "random" (any channel, any displacement), "twice" (every channel read in two classes),
# "padding" (one read of a padding channel of the first: the plan does not apply).  The image must
# divide into the strides (9 x 13 at stride 2 falls back to rows), and the classes must halve the
# first conv's work ("twice" at strides (1, 2) does not and falls back).
POLYPHASE_CASES = [
    (1, 32, 96, 64, 32, 32, 1, (2, 2), 0, "shift", False),
    (2, 20, 45, 24, 8, 12, 1, (2, 2), 0, "shift", True),
    (1, 16, 40, 16, 6, 9, 1, (3, 3), -1, "random", True),
    (1, 16, 40, 24, 8, 6, 1, (2, 1), 0, "random", False),
    (1, 16, 33, 16, 10, 4, 1, (1, 2), 0, "twice", True),
    (1, 16, 48, 32, 16, 16, 2, (2, 2), -1, "shift", True),
    (1, 16, 48, 32, 16, 16, 2, (2, 2), 0, "shift", True),
    (1, 16, 48, 32, 16, 16, 2, (2, 2), 1, "shift", False),
    (1, 16, 40, 16, 12, 18, 3, (2, 2), 1, "random", True),
    (1, 16, 40, 16, 16, 20, 1, (4, 5), 1, "random", True),
    (1, 16, 40, 16, 12, 7, 1, (3, 1), 0, "shift", False),
    (1, 24, 40, 16, 9, 13, 1, (2, 2), 0, "shift", True),
    (1, 16, 40, 16, 8, 8, 1, (2, 2), 0, "padding", False),
    # past 64 KiB of weights: the per-class convs and the second run in chunks of input channels
    (1, 128, 384, 256, 8, 8, 1, (2, 2), 0, "shift", True),
]


#: The tables' seed: the plan checks (_phase_blocks) and the bit-for-bit runs use the same tables.
POLYPHASE_SEED = 3


def _polyphase_tables(shape, rng):
    """The first and second convs (weights, bias, address table) of a POLYPHASE_CASES entry."""
    _, c, mid, cout, _, _, _, _, d1, table, _ = shape
    k1 = c + 3
    first = (rng.standard_normal((mid, k1, 1, 1)).astype(np.float32), rng.standard_normal(mid).astype(np.float32),
             np.stack([rng.integers(0, c, k1), np.full(k1, d1), np.full(k1, d1)], axis=1).astype(np.int32))
    src, k2 = np.arange(mid), mid
    if table == "shift":
        group = np.minimum(8, src * 9 // mid)
        dy, dx = group // 3 - 1, group % 3 - 1
    else:
        if table == "random":
            src = rng.integers(0, mid, mid)
        elif table == "twice":
            src, k2 = np.concatenate([src, src]), 2 * mid
        dy, dx = rng.integers(-1, 2, k2), rng.integers(-1, 2, k2)
        if table == "padding":
            src[5] = mid + 1
    second = (rng.standard_normal((cout, k2, 1, 1)).astype(np.float32), rng.standard_normal(cout).astype(np.float32),
              np.stack([src, dy, dx], axis=1).astype(np.int32))
    return first, second


def _polyphase_case(shape, seed=POLYPHASE_SEED):
    n, c, _, _, h, w, s1, (sh, sw), _, _, residual = shape
    rng = np.random.default_rng(seed)
    first, second = _polyphase_tables(shape, rng)
    first_attrs = {"strides": [s1, s1], "clip_min": 0.25}
    attrs = {"strides": [sh, sw], "clip_min": -0.5, "clip_max": 2.0}
    return _models_and_feeds(rng, (n, c, h, w), first, second, first_attrs, attrs, residual)


@needs_lib
@pytest.mark.parametrize("shape", POLYPHASE_CASES)
def test_strided_pair_is_the_two_convs_bit_for_bit(shape):
    _assert_bit_for_bit(*_polyphase_case(shape))


def _phase_blocks(shape):
    """What the library's plan for this case holds: its phase image's channel blocks, 0 for none."""
    _, _, mid, _, _, _, s1, (sh, sw), _, _, _ = shape
    (_, _, a1), (_, _, a2) = _polyphase_tables(shape, np.random.default_rng(POLYPHASE_SEED))
    blocks = ctypes.CDLL(str(LIB)).onnxopt_polyphase_blocks
    blocks.restype = ctypes.c_int64
    blocks.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 4 + [ctypes.c_void_p] + [ctypes.c_int64] * 3
    a1, a2 = np.ascontiguousarray(a1), np.ascontiguousarray(a2)
    return blocks(a1.ctypes.data, len(a1), mid, s1, s1, a2.ctypes.data, len(a2), sh, sw)


@needs_lib
@pytest.mark.parametrize("shape", POLYPHASE_CASES)
def test_strided_pair_plan_holds_each_class_read(shape):
    """Per class (dy mod sh, dx mod sw) the distinct first-conv channels read there, in whole blocks
    of 16; no plan where a padding channel is read or the classes do not halve the first's work."""
    _, _, mid, _, _, _, _, (sh, sw), _, table, _ = shape
    (_, _, _), (_, _, a2) = _polyphase_tables(shape, np.random.default_rng(POLYPHASE_SEED))
    classes = {}
    for src, dy, dx in a2.tolist():
        classes.setdefault((dy % sh, dx % sw), set()).add(src)
    want = sum(-(-len(v) // 16) for v in classes.values())
    if table == "padding" or 2 * want > -(-mid // 16) * sh * sw:
        want = 0
    assert _phase_blocks(shape) == want
    if shape == POLYPHASE_CASES[0]:  # ShiftNet's 96 channels: 11 + 22 + 21 + 42 in 1 + 2 + 2 + 3 blocks
        assert want == 8


@needs_lib
def test_strided_pair_plan_with_huge_strides():
    """Strides far past the image: at most nine classes are kept, never one per residue."""
    shape = (1, 16, 40, 16, 4, 4, 1, (100000, 100000), 0, "random", False)
    assert 0 < _phase_blocks(shape) <= 9
    _assert_bit_for_bit(*_polyphase_case(shape))


@needs_lib
def test_strided_pair_with_symbolic_sizes():
    """One session, sizes that fit the plan and sizes that do not (rows), in turn, and concurrently."""
    shape = POLYPHASE_CASES[1]
    (pair, chain), _ = _polyphase_case(shape)
    for model in (pair, chain):
        for value_info, dims in zip(model.graph.input, (("N", 20, "H", "W"), ("N", 24, "Ho", "Wo"))):
            value_info.CopyFrom(helper.make_tensor_value_info(value_info.name, TensorProto.FLOAT, list(dims)))
    sessions = [session(fit_ir_version(m), threads=2) for m in (pair, chain)]
    rng = np.random.default_rng(5)
    feeds = []
    for n, h, w in ((2, 8, 12), (1, 9, 13), (3, 16, 4), (1, 7, 7), (2, 8, 12)):
        feeds.append({"X": rng.standard_normal((n, 20, h, w)).astype(np.float32),
                      "R": rng.standard_normal((n, 24, -(-h // 2), -(-w // 2))).astype(np.float32)})
    want = [sessions[1].run(None, f)[0] for f in feeds]
    for f, expected in zip(feeds, want):
        np.testing.assert_array_equal(sessions[0].run(None, f)[0], expected)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda f: sessions[0].run(None, f)[0], feeds * 4))
    for g, expected in zip(got, want * 4):
        np.testing.assert_array_equal(g, expected)


@needs_lib
def test_strided_pair_with_weights_given_per_run():
    """W1 a graph input, not an initializer: no plan is kept (the pair runs by rows), and each run
    uses that run's W1."""
    (pair, chain), feeds = _polyphase_case(POLYPHASE_CASES[1])
    for model in (pair, chain):
        w1 = next(i for i in model.graph.initializer if i.name == "W1")
        model.graph.input.append(helper.make_tensor_value_info("W1", TensorProto.FLOAT, list(w1.dims)))
        model.graph.initializer.remove(w1)
    rng = np.random.default_rng(4)
    for _ in range(2):
        feeds["W1"] = rng.standard_normal(tuple(w1.dims)).astype(np.float32)
        np.testing.assert_array_equal(run(pair, feeds), run(chain, feeds))
