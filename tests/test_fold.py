"""Tests of the fold pass: one case per rule in passes/fold.py's docstring, on tiny built graphs and on
small PyTorch modules exported with both exporters. Every rewrite ends with a numeric comparison on
onnxruntime (``onnxopt.apply`` verifies; :func:`fold` compares again explicitly) and the full checker."""
from __future__ import annotations

import io
import time
import warnings
from collections import Counter

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import onnxopt
from onnxopt import ir
from onnxopt.passmanager import PassContext
from onnxopt.passes.fold import FoldPass
from onnxopt.runtime import session
from onnxopt.verify import make_inputs

RNG = np.random.default_rng(0)


# --- helpers ----------------------------------------------------------------------------------------

def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def run(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def fold(model: onnx.ModelProto, rtol: float = 1e-5, atol: float = 1e-6, **kw):
    """Apply the fold pass (which verifies), check the result, compare outputs again; (model, PassResult)."""
    out, report = onnxopt.apply(model, passes=["fold"], rtol=rtol, atol=atol, **kw)
    onnx.checker.check_model(out, full_check=True)
    feeds = make_inputs(model, seed=1)
    for a, b in zip(run(model, feeds), run(out, feeds)):
        assert a.shape == b.shape and a.dtype == b.dtype
        err = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
        assert err <= rtol * np.max(np.abs(a)) + atol, f"max abs err {err}"
    result = report.passes[0]
    assert result.skipped is None, result.skipped
    return out, result


def reasons(result) -> list[str]:
    return [r for _, r in result.declined]


def init(name: str, arr) -> onnx.TensorProto:
    return onh.from_array(np.asarray(arr), name)


def rand(*shape, dtype=np.float32, low=None, high=None):
    if low is not None:
        return RNG.uniform(low, high, shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


def bn_params(prefix: str, c: int, dtype=np.float32) -> list[onnx.TensorProto]:
    return [init(f"{prefix}_s", rand(c, low=0.5, high=2.0, dtype=dtype)), init(f"{prefix}_b", rand(c, dtype=dtype)),
            init(f"{prefix}_m", rand(c, dtype=dtype)), init(f"{prefix}_v", rand(c, low=0.5, high=2.0, dtype=dtype))]


def model(text: str, inits: list[onnx.TensorProto] = (), opset: int = 17) -> onnx.ModelProto:
    """An ONNX-text graph plus initializers, at ``opset``."""
    m = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n' + text)
    m.graph.initializer.extend(inits)
    onnx.checker.check_model(m)
    return m


BN = "BatchNormalization"


# --- BN after a linear op ---------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2, 8])
def test_bn_after_conv(bias, group):
    w = init("w", rand(8, 8 // group, 3, 3))
    inits = [w, *bn_params("bn", 8)] + ([init("cb", rand(8))] if bias else [])
    conv_in = "x, w, cb" if bias else "x, w"
    m = model(f"""g (float[1, 8, 6, 6] x) => (float[1, 8, 6, 6] y) {{
        c = Conv <pads = [1, 1, 1, 1], group = {group}> ({conv_in})
        y = BatchNormalization <epsilon = 0.001> (c, bn_s, bn_b, bn_m, bn_v)
    }}""", inits)
    out, res = fold(m)
    assert ops(out) == Counter({"Conv": 1})
    assert res.details["bn_after"] == 1
    assert "folded 1 BatchNormalization" in res.summary


@pytest.mark.parametrize("group", [1, 2])
def test_bn_after_convtranspose(group):
    m = model(f"""g (float[1, 4, 5, 5] x) => (float[1, 6, 11, 11] y) {{
        c = ConvTranspose <strides = [2, 2], group = {group}> (x, w)
        y = BatchNormalization (c, bn_s, bn_b, bn_m, bn_v)
    }}""", [init("w", rand(4, 6 // group, 3, 3)), *bn_params("bn", 6)])
    out, _ = fold(m)
    assert ops(out) == Counter({"ConvTranspose": 1})


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_bn_after_gemm(trans_b, with_c):
    w = rand(6, 5) if trans_b else rand(5, 6)
    cin = ", c" if with_c else ""
    m = model(f"""g (float[3, 5] x) => (float[3, 6] y) {{
        h = Gemm <transB = {trans_b}, alpha = 0.5, beta = 2.0> (x, w{cin})
        y = BatchNormalization (h, bn_s, bn_b, bn_m, bn_v)
    }}""", [init("w", w), init("c", rand(6)), *bn_params("bn", 6)][: None if with_c else None])
    out, _ = fold(m)
    assert ops(out) == Counter({"Gemm": 1})


def test_bn_after_matmul_becomes_gemm():
    m = model("""g (float[3, 5] x) => (float[3, 6] y) {
        h = MatMul (x, w)
        y = BatchNormalization (h, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(5, 6)), *bn_params("bn", 6)])
    out, _ = fold(m)
    assert ops(out) == Counter({"Gemm": 1})


def test_bn_on_conv_with_other_consumer_not_absorbed():
    m = model("""g (float[1, 4, 6, 6] x) => (float[1, 4, 6, 6] y, float[1, 4, 6, 6] c) {
        c = Conv (x, w)
        y = BatchNormalization (c, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(4, 4, 1, 1)), *bn_params("bn", 4)])
    out, res = fold(m)
    assert ops(out) == Counter({"Conv": 1, "Mul": 1, "Add": 1})
    assert any("other consumers" in r for r in reasons(res))


def test_bn_after_conv_with_weight_input_declined():
    m = model("""g (float[1, 4, 5, 5] x, float[4, 4, 1, 1] w) => (float[1, 4, 5, 5] y) {
        c = Conv (x, w)
        y = BatchNormalization (c, bn_s, bn_b, bn_m, bn_v)
    }""", bn_params("bn", 4))
    gr = ir.to_graph(m)
    res = FoldPass().run(gr, PassContext())
    assert "Conv weight is not a floating-point initializer" in reasons(res)


def test_bn_with_variable_parameters_declined():
    m = model("""g (float[1, 4, 5, 5] x, float[4] s) => (float[1, 4, 5, 5] y) {
        c = Conv (x, w)
        y = BatchNormalization (c, s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(4, 4, 1, 1)), *bn_params("bn", 4)[1:]])
    gr = ir.to_graph(m)
    res = FoldPass().run(gr, PassContext())
    assert "BatchNormalization parameters are not constants" in reasons(res)
    assert not res.changed


# --- BN before a conv ---------------------------------------------------------------------------------

@pytest.mark.parametrize("group", [1, 2])
def test_bn_before_unpadded_conv(group):
    m = model(f"""g (float[1, 4, 6, 6] x) => (float[1, 6, 4, 4] y) {{
        b = BatchNormalization (x, bn_s, bn_b, bn_m, bn_v)
        y = Conv <group = {group}> (b, w, cb)
    }}""", [init("w", rand(6, 4 // group, 3, 3)), init("cb", rand(6)), *bn_params("bn", 4)])
    out, res = fold(m)
    assert ops(out) == Counter({"Conv": 1})
    assert res.details["bn_before"] == 1


def test_bn_before_1x1_conv_without_bias():
    m = model("""g (float[1, 4, 6, 6] x) => (float[1, 6, 6, 6] y) {
        r = Relu (x)
        b = BatchNormalization (r, bn_s, bn_b, bn_m, bn_v)
        y = Conv (b, w)
    }""", [init("w", rand(6, 4, 1, 1)), *bn_params("bn", 4)])
    out, _ = fold(m)
    assert ops(out) == Counter({"Relu": 1, "Conv": 1})


def test_bn_before_zero_padded_conv_declined():
    m = model("""g (float[1, 4, 6, 6] x) => (float[1, 6, 6, 6] y) {
        r = Relu (x)
        b = BatchNormalization (r, bn_s, bn_b, bn_m, bn_v)
        y = Conv <pads = [1, 1, 1, 1]> (b, w)
    }""", [init("w", rand(6, 4, 3, 3)), *bn_params("bn", 4)])
    out, res = fold(m)
    assert "BN before zero-padded conv: not exact" in reasons(res)
    assert ops(out) == Counter({"Relu": 1, "Mul": 1, "Add": 1, "Conv": 1})  # standalone -> Mul + Add


def test_scale_before_zero_padded_conv_is_exact():
    m = model("""g (float[1, 4, 6, 6] x) => (float[1, 6, 6, 6] y) {
        r = Relu (x)
        s = Mul (r, k)
        y = Conv <pads = [1, 1, 1, 1]> (s, w)
    }""", [init("w", rand(6, 4, 3, 3)), init("k", rand(4, 1, 1, low=0.5, high=2.0))])
    out, _ = fold(m)
    assert ops(out) == Counter({"Relu": 1, "Conv": 1})


def test_bn_before_gemm():
    m = model("""g (float[3, 5] x) => (float[3, 6] y) {
        b = BatchNormalization (x, bn_s, bn_b, bn_m, bn_v)
        y = Gemm <transB = 1, alpha = 2.0> (b, w, c)
    }""", [init("w", rand(6, 5)), init("c", rand(6)), *bn_params("bn", 5)])
    out, _ = fold(m)
    assert ops(out) == Counter({"Gemm": 1})


# --- standalone BN, opsets, modes ---------------------------------------------------------------------

def test_standalone_bn_becomes_mul_add():
    m = model("""g (float[2, 4, 5, 5] x) => (float[2, 4, 5, 5] y) {
        r = Relu (x)
        y = BatchNormalization (r, bn_s, bn_b, bn_m, bn_v)
    }""", bn_params("bn", 4))
    out, res = fold(m)
    assert ops(out) == Counter({"Relu": 1, "Mul": 1, "Add": 1})
    assert res.details["bn_to_affine"] == 1


def test_bn_opset9_folds():
    m = model("""g (float[1, 4, 5, 5] x) => (float[1, 4, 5, 5] y) {
        c = Conv (x, w)
        y = BatchNormalization (c, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(4, 4, 1, 1)), *bn_params("bn", 4)], opset=9)
    out, _ = fold(m)
    assert ops(out) == Counter({"Conv": 1})


def test_bn_opset9_with_statistics_outputs_is_training_mode():
    """Before opset 14 the output count selects the mode: five outputs is training, even if unused."""
    m = model("""g (float[2, 4, 5, 5] x) => (float[2, 4, 5, 5] y) {
        c = Conv (x, w)
        y, rm, rv, sm, sv = BatchNormalization (c, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(4, 4, 1, 1)), *bn_params("bn", 4)], opset=9)
    gr = ir.to_graph(m)
    res = FoldPass().run(gr, PassContext())
    assert any("training mode" in r for r in reasons(res))
    assert BN in [n.op for n in gr.nodes]


def test_bn_opset15_with_used_extra_output_declined():
    m = model("""g (float[2, 4, 5, 5] x) => (float[2, 4, 5, 5] y, float[4] rm) {
        c = Conv (x, w)
        y, rm, rv = BatchNormalization <training_mode = 1> (c, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(4, 4, 1, 1)), *bn_params("bn", 4)], opset=15)
    gr = ir.to_graph(m)
    res = FoldPass().run(gr, PassContext())
    assert BN in [n.op for n in gr.nodes] and res.declined


def test_bn_opset15_training_mode_zero_folds():
    m = model("""g (float[1, 4, 5, 5] x) => (float[1, 4, 5, 5] y) {
        c = Conv (x, w)
        y = BatchNormalization <training_mode = 0> (c, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(4, 4, 1, 1)), *bn_params("bn", 4)], opset=15)
    out, _ = fold(m)
    assert ops(out) == Counter({"Conv": 1})


def test_bn_training_mode_one_on_activations_declined():
    m = model("""g (float[2, 4, 5, 5] x) => (float[2, 4, 5, 5] y) {
        c = Conv (x, w)
        y, rm, rv = BatchNormalization <training_mode = 1> (c, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(4, 4, 1, 1)), *bn_params("bn", 4)], opset=15)
    gr = ir.to_graph(m)
    res = FoldPass().run(gr, PassContext())
    assert any("training mode" in r for r in reasons(res))
    assert BN in [n.op for n in gr.nodes]


# --- per-channel Mul / Add after a linear op ----------------------------------------------------------

def test_conv_mul_add_per_channel_folded():
    m = model("""g (float[1, 3, 6, 6] x) => (float[1, 4, 4, 4] y) {
        c = Conv (x, w)
        s = Mul (k, c)
        d = Sub (s, t)
        y = Add (d, u)
    }""", [init("w", rand(4, 3, 3, 3)), init("k", rand(4, 1, 1)), init("t", rand(1, 4, 1, 1)),
           init("u", np.float32(0.5))])
    out, res = fold(m)
    assert ops(out) == Counter({"Conv": 1})
    assert res.details["affine_absorbed"] == 3


def test_conv_add_not_per_channel_kept():
    m = model("""g (float[1, 3, 6, 6] x) => (float[1, 4, 4, 4] y) {
        c = Conv (x, w)
        y = Add (c, t)
    }""", [init("w", rand(4, 3, 3, 3)), init("t", rand(1, 4, 4, 4))])
    out, _ = fold(m)
    assert ops(out) == Counter({"Conv": 1, "Add": 1})


def test_neutral_mul_add_removed():
    m = model("""g (float[1, 4, 3, 3] x) => (float[1, 4, 3, 3] y, float[1, 4, 3, 3] z) {
        r = Relu (x)
        s = Mul (r, one)
        y = Add (s, zero)
        z = Add (r, big)
    }""", [init("one", np.ones((4, 1, 1), np.float32)), init("zero", np.zeros(4, np.float32)[:, None, None]),
           init("big", np.zeros((2, 1, 4, 3, 3), np.float32)[:1].reshape(1, 4, 3, 3) + 1)])
    out, res = fold(m)
    assert ops(out) == Counter({"Relu": 1, "Add": 1})
    assert out.graph.output[0].name == "y" and res.details["neutral_removed"] == 2


def test_add_of_zeros_that_broadcasts_kept():
    m = model("""g (float[1, 4] x) => (float[2, 1, 4] y) {
        y = Add (x, zero)
    }""", [init("zero", np.zeros((2, 1, 4), np.float32))])
    out, _ = fold(m)
    assert ops(out) == Counter({"Add": 1})


def test_add_of_zeros_on_symbolic_dim_kept():
    m = model("""g (float[1, C] x) => (float[1, 4] y) {
        y = Add (x, zero)
    }""", [init("zero", np.zeros(4, np.float32))])
    gr = ir.to_graph(m)
    FoldPass().run(gr, PassContext())
    assert [n.op for n in gr.nodes] == ["Add"]


def test_matmul_add_becomes_gemm():
    m = model("""g (float[3, 5] x) => (float[3, 6] y) {
        h = MatMul (x, w)
        y = Add (h, b)
    }""", [init("w", rand(5, 6)), init("b", rand(6))])
    out, _ = fold(m)
    assert ops(out) == Counter({"Gemm": 1})


def test_matmul_rank3_add_kept():
    m = model("""g (float[2, 3, 5] x) => (float[2, 3, 6] y) {
        h = MatMul (x, w)
        y = Add (h, b)
    }""", [init("w", rand(5, 6)), init("b", rand(6))])
    out, res = fold(m)
    assert ops(out) == Counter({"MatMul": 1, "Add": 1})
    assert any("no bias slot" in r for r in reasons(res))


# --- Identity / Dropout --------------------------------------------------------------------------------

def test_identity_and_dropout_removed():
    m = model("""g (float[1, 4] x) => (float[1, 4] y) {
        a = Identity (x)
        b = Relu (a)
        c = Dropout (b)
        d = Dropout (c, ratio)
        y = Identity (d)
    }""", [init("ratio", np.float32(0.3))], opset=13)
    out, res = fold(m)
    assert ops(out) == Counter({"Relu": 1})
    assert out.graph.output[0].name == "y"
    assert res.details["identity_removed"] == 4
    assert "removed 4 Identity/Dropout" in res.summary


def test_noop_casts_removed_and_castlike_of_variable_type_folded():
    m = model("""g (float[1, 4, 3, 3] x) => (float[1, 4, 3, 3] y, double[1, 4, 3, 3] z) {
        a = Cast <to = 1> (x)
        b = CastLike (a, x)
        k = Unsqueeze (g, axes)
        kc = CastLike (k, b)
        y = Mul (b, kc)
        z = Cast <to = 11> (y)
    }""", [init("g", rand(4, 1, low=0.5, high=1.5)), init("axes", np.array([2], np.int64))], opset=17)
    out, res = fold(m)
    assert ops(out) == Counter({"Mul": 1, "Cast": 1})
    assert res.details["identity_removed"] == 3


def test_dropout_with_used_mask_or_training_kept():
    m = model("""g (float[1, 4] x, bool t) => (float[1, 4] y, bool[1, 4] mask) {
        b = Relu (x)
        c, mask = Dropout (b)
        y = Dropout (c, ratio, t)
    }""", [init("ratio", np.float32(0.3))], opset=13)
    gr = ir.to_graph(m)
    res = FoldPass().run(gr, PassContext())
    assert Counter(n.op for n in gr.nodes)["Dropout"] == 2
    assert {"Dropout mask output is used", "Dropout in training mode (training_mode input not a constant false)"} \
        <= set(reasons(res))


def test_identity_input_to_output_kept():
    m = model("""g (float[1, 4] x) => (float[1, 4] y) {
        y = Identity (x)
    }""")
    out, res = fold(m)
    assert ops(out) == Counter({"Identity": 1})
    assert res.declined


# --- constant subgraphs ---------------------------------------------------------------------------------

def test_generic_constant_subgraph_folded():
    m = model("""g (float[1, 3, 6, 6] x) => (float[1, 4, 4, 4] y) {
        t = Transpose <perm = [1, 0, 2, 3]> (w)
        s = Mul (t, k)
        y = Conv (x, s)
    }""", [init("w", rand(3, 4, 3, 3)), init("k", np.float32(2.0))])
    out, res = fold(m)
    assert ops(out) == Counter({"Conv": 1})
    assert res.details["patterns"] == {"": "generic"} or list(res.details["patterns"].values()) == ["generic"]


def test_expand_size_guard():
    big = model("""g (float[1, 64, 64, 64] x) => (float[1, 64, 64, 64] y) {
        e = Expand (k, shape)
        y = Add (x, e)
    }""", [init("k", np.float32(0.5)), init("shape", np.array([1, 64, 64, 64], np.int64))])
    out, res = fold(big)
    assert ops(out) == Counter({"Expand": 1, "Add": 1})
    assert any("grow the model" in r for r in reasons(res))
    small = model("""g (float[1, 4, 2, 2] x) => (float[1, 4, 2, 2] y) {
        e = Expand (k, shape)
        y = Add (x, e)
    }""", [init("k", np.float32(0.5)), init("shape", np.array([1, 4, 1, 1], np.int64))])
    out, _ = fold(small)
    assert ops(out) == Counter({"Add": 1})


def test_eval_cap_skips_huge_intermediate():
    m = model("""g (float[1, 4] x) => (float[1, 4] y) {
        e = Expand (k, shape)
        r = ReduceSum <keepdims = 0> (e, axes)
        y = Add (x, r)
    }""", [init("k", np.float32(0.5)), init("shape", np.array([4, 1 << 12, 1 << 12], np.int64)),
           init("axes", np.array([0, 1], np.int64))], opset=13)
    gr = ir.to_graph(m)
    res = FoldPass().run(gr, PassContext(options={"max_eval_elements": 1 << 20}))
    assert "Expand" in [n.op for n in gr.nodes]
    assert any("not folded" in r for r in reasons(res))


def test_foreign_domain_and_random_ops_not_folded():
    m = oh.make_model(oh.make_graph(
        [oh.make_node("Custom", ["w"], ["c"], domain="com.example"),
         oh.make_node("RandomNormalLike", ["w"], ["r"]),
         oh.make_node("Sum", ["x", "c", "r"], ["y"])], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])], [init("w", rand(4))]),
        opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.example", 1)])
    gr = ir.to_graph(m)
    res = FoldPass().run(gr, PassContext())
    assert sorted(n.op for n in gr.nodes) == ["Custom", "RandomNormalLike", "Sum"]
    assert not res.changed


def test_constant_subgraphs_evaluated_in_one_session(monkeypatch):
    """Many independent weight chains: one onnxruntime session for all of them, and time ~ linear."""
    import onnxruntime as ort

    calls = []
    real = ort.InferenceSession

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    n = 60
    nodes, inits = [], []
    prev = "x"
    for i in range(n):
        nodes += [oh.make_node("Transpose", [f"w{i}"], [f"t{i}"], perm=[1, 0, 2, 3]),
                  oh.make_node("Mul", [f"t{i}", "k"], [f"s{i}"]),
                  oh.make_node("Conv", [prev, f"s{i}"], [f"c{i}"]),
                  oh.make_node(BN, [f"c{i}"] + [f"bn{i}_{p}" for p in "sbmv"], [f"y{i}"])]
        inits += [init(f"w{i}", rand(4, 4, 1, 1))] + bn_params(f"bn{i}", 4)
        prev = f"y{i}"
    inits.append(init("k", np.float32(0.5)))
    m = oh.make_model(oh.make_graph(nodes, "chain", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 3, 3])],
                                    [oh.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, [1, 4, 3, 3])], inits),
                      opset_imports=[oh.make_opsetid("", 17)])
    ir.fit_ir_version(m)
    gr = ir.to_graph(m)
    ir.runtime_max_ir_version()  # cached probe, itself made of sessions
    monkeypatch.setattr(ort, "InferenceSession", counting)
    t0 = time.perf_counter()
    res = FoldPass().run(gr, PassContext())
    elapsed = time.perf_counter() - t0
    monkeypatch.undo()
    assert len(calls) == 1
    assert res.details["constant_subgraphs"] == n and res.details["bn_after"] == n
    assert elapsed < 5.0
    out, _ = fold(m)
    assert ops(out) == Counter({"Conv": n})


# --- shared initializers, rollback safety, fp16 -----------------------------------------------------

def test_shared_initializer_not_folded_twice():
    m = model("""g (float[1, 4, 5, 5] x) => (float[1, 4, 5, 5] y, float[1, 4, 5, 5] z, float[1, 4, 5, 5] u) {
        c1 = Conv (x, w)
        y = BatchNormalization (c1, a_s, a_b, a_m, a_v)
        c2 = Conv (x, w)
        z = BatchNormalization (c2, b_s, b_b, b_m, b_v)
        u = Conv (x, w)
    }""", [init("w", rand(4, 4, 1, 1)), *bn_params("a", 4), *bn_params("b", 4)])
    before = onh.to_array(next(t for t in m.graph.initializer if t.name == "w")).copy()
    out, _ = fold(m)
    assert ops(out) == Counter({"Conv": 3})
    weights = {n.output[0]: n.input[1] for n in out.graph.node}
    assert len(set(weights.values())) == 3 and weights["u"] == "w"
    kept = onh.to_array(next(t for t in out.graph.initializer if t.name == "w"))
    np.testing.assert_array_equal(kept, before)


def test_pass_never_mutates_arrays_in_place():
    m = model("""g (float[1, 4, 5, 5] x) => (float[1, 4, 5, 5] y) {
        c = Conv (x, w, cb)
        s = Mul (c, k)
        y = BatchNormalization (s, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(4, 4, 1, 1)), init("cb", rand(4)), init("k", rand(4, 1, 1)), *bn_params("bn", 4)])
    gr = ir.to_graph(m)
    originals = {name: (t, t.values.copy()) for name, t in gr.tensors().items() if hasattr(t, "values")}
    FoldPass().run(gr, PassContext())
    for name, (t, copy) in originals.items():
        np.testing.assert_array_equal(t.values, copy, err_msg=name)


def test_fp16_keeps_fp16_weights():
    m = model("""g (float16[1, 4, 6, 6] x) => (float16[1, 8, 6, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        y = BatchNormalization (c, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(8, 4, 3, 3, dtype=np.float16)), *bn_params("bn", 8, np.float16)])
    out, _ = fold(m, rtol=2e-3, atol=2e-3)
    assert ops(out) == Counter({"Conv": 1})
    assert {t.data_type for t in out.graph.initializer} == {onnx.TensorProto.FLOAT16}


# --- models exported from PyTorch --------------------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class NormConv(nn.Conv2d):
    """A conv that normalises its weight per filter in forward: WS, scaled WS, WeightAlign, timm BN-on-weights."""

    def __init__(self, *args, variant="ws", **kw):
        super().__init__(*args, **kw)
        self.variant = variant
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def weight_(self):
        w = self.weight
        n = w[0].numel()
        if self.variant == "timm":
            return F.batch_norm(w.reshape(1, self.out_channels, -1), None, None, weight=self.gain.view(-1),
                                training=True, momentum=0.0, eps=1e-6).reshape_as(w)
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        c = w - mean
        var = c.pow(2).mean(dim=(1, 2, 3), keepdim=True)
        if self.variant == "ws":
            return c / (torch.sqrt(var * (n / (n - 1))) + 1e-5)
        if self.variant == "scaled_ws":
            return self.gain * c / torch.sqrt(torch.clamp(var * n, min=1e-5))
        return self.gain * c / (n ** 0.5 * torch.sqrt(var + 1e-5))  # WeightAlign

    def forward(self, x):
        return F.conv2d(x, self.weight_(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def _randomise_bn(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return module.eval()


class LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(12, 6), nn.BatchNorm1d(6)

    def forward(self, x):
        return self.bn(self.fc(x.flatten(1)))


def _modules():
    return {
        "conv_bn_relu": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
                         (1, 3, 8, 8), {"Conv": 1, "Relu": 1}),
        "depthwise_bn": (lambda: nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4)),
                         (1, 4, 8, 8), {"Conv": 1}),
        "convtranspose_bn": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2), nn.BatchNorm2d(6)),
                             (1, 4, 5, 5), {"ConvTranspose": 1}),
        "linear_bn1d": (LinearBN, (2, 3, 2, 2), {"Flatten": 1, "Gemm": 1}),  # dynamo: Reshape for Flatten
        "bn_before_1x1": (lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1)),
                          (1, 4, 6, 6), {"Relu": 1, "Conv": 1}),
        "standalone_bn": (lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4)), (1, 4, 6, 6),
                          {"Relu": 1, "Mul": 1, "Add": 1}),
        "ws": (lambda: nn.Sequential(NormConv(3, 8, 3, padding=1, variant="ws"), nn.BatchNorm2d(8)), (1, 3, 8, 8),
               {"Conv": 1}),
        "scaled_ws": (lambda: nn.Sequential(NormConv(3, 8, 3, padding=1, variant="scaled_ws"), nn.ReLU()),
                      (1, 3, 8, 8), {"Conv": 1, "Relu": 1}),
        "weightalign": (lambda: nn.Sequential(NormConv(3, 8, 3, padding=1, variant="weightalign"), nn.ReLU()),
                        (1, 3, 8, 8), {"Conv": 1, "Relu": 1}),
        "timm": (lambda: nn.Sequential(NormConv(3, 8, 3, padding=1, variant="timm"), nn.ReLU()), (1, 3, 8, 8),
                 {"Conv": 1, "Relu": 1}),
    }


PATTERNS = {"ws": "WS", "scaled_ws": "scaled WS", "weightalign": "WeightAlign", "timm": "timm BN-on-weights"}


def export(module, shape, exporter: str) -> onnx.ModelProto:
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=18, optimize=False, verbose=False)
            m = prog.model_proto
        else:
            f = io.BytesIO()
            torch.onnx.export(module, (x,), f, dynamo=False, opset_version=int(exporter[2:]), do_constant_folding=False)
            m = onnx.load_from_string(f.getvalue())
    return ir.fit_ir_version(m)


@pytest.mark.parametrize("exporter", ["ts13", "ts17", "dynamo"])
@pytest.mark.parametrize("name", list(_modules()))
def test_pytorch_export(name, exporter):
    make, shape, expected = _modules()[name]
    torch.manual_seed(0)
    module = _randomise_bn(make())
    m = export(module, shape, exporter)
    out, res = fold(m)
    if exporter == "dynamo" and "Flatten" in expected:
        expected = {("Reshape" if k == "Flatten" else k): v for k, v in expected.items()}
    assert ops(out) == Counter(expected), (ops(m), ops(out), res.declined)
    if name in PATTERNS:
        assert list(res.details["patterns"].values()) == [PATTERNS[name]]
        assert f"({PATTERNS[name]} x1)" in res.summary
    # onnxruntime's own output on the original matches PyTorch too
    x = make_inputs(m, seed=3)
    torch_out = module(torch.from_numpy(next(iter(x.values())))).detach().numpy()
    np.testing.assert_allclose(run(out, x)[0], torch_out, rtol=1e-4, atol=1e-4)


def test_cli_apply_fold(tmp_path):
    from click.testing import CliRunner

    from onnxopt.cli import cli

    m = model("""g (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        y = BatchNormalization (c, bn_s, bn_b, bn_m, bn_v)
    }""", [init("w", rand(4, 3, 3, 3)), *bn_params("bn", 4)])
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    r = CliRunner().invoke(cli, ["apply", str(src), "--passes", "fold"])
    assert r.exit_code == 0, r.output
    assert "folded 1 BatchNormalization" in r.output
    assert ops(onnx.load(tmp_path / "m.opt.onnx")) == Counter({"Conv": 1})
