"""Tests of the strip pass: one tiny built graph per rule, then models exported from PyTorch.

Every rewrite test compares outputs with onnxruntime (1e-5 relative) and checks widths shrank.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt

RNG = np.random.default_rng(0)


# --- helpers ------------------------------------------------------------------------------------

class G:
    """A tiny graph builder: G(x=[1, 4, 8, 8]).conv('c1', 'x', W, b) ... .model('y')."""

    def __init__(self, **inputs):
        self.inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()]
        self.nodes, self.inits = [], []

    def init(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, output, **attrs):
        outs = output if isinstance(output, list) else [output]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0] + "_node", **attrs))
        return output

    def conv(self, out, x, w, b=None, **attrs):
        ins = [x, self.init(out + "_w", w.astype(np.float32))]
        if b is not None:
            ins.append(self.init(out + "_b", np.asarray(b, dtype=np.float32)))
        return self.node("Conv", ins, out, **attrs)

    def model(self, *outputs, opset=17):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        g = helper.make_graph(self.nodes, "t", self.inputs, outs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        return m


def W(cout, cin, k=1, dead_out=(), dead_in=()):
    w = RNG.standard_normal((cout, cin, k, k)).astype(np.float32)
    w[list(dead_out)] = 0
    w[:, list(dead_in)] = 0
    return w


def run(model, feeds=None):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    if feeds is None:
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            feeds[i.name] = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    return sess.run(None, feeds), feeds


def strip(model, passes=("strip",), options=None):
    """Apply the pass and check outputs against the original (1e-5 relative)."""
    out, report = onnxopt.apply(model, passes=list(passes), options=options)
    (ref, *_), feeds = run(model)
    (got, *_), _ = run(out, feeds)
    assert got.shape == ref.shape
    if all(p == "strip" for p in passes):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
    return out, report.passes[-1]


def widths(model):
    """Output width of each conv/gemm node (by node name)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    res = {}
    for n in model.graph.node:
        if n.op_type == "Conv":
            res[n.name] = inits[n.input[1]].shape[0]
        elif n.op_type == "Gemm":
            w = inits[n.input[1]]
            trans = any(a.name == "transB" and a.i for a in n.attribute)
            res[n.name] = w.shape[0] if trans else w.shape[1]
    return res


def removed(result):
    return result.details.get("channels_removed", {})


# --- built graphs: one per rule -----------------------------------------------------------------

def test_dead_filter_zero_bias_is_removed():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, 3, dead_out=[1, 5]), np.where(np.isin(np.arange(8), [1, 5]), 0, 0.5), pads=[1] * 4)
    g.node("Relu", ["a"], "r")
    g.conv("y", "r", W(4, 8, 3), np.zeros(4), pads=[1] * 4)
    out, res = strip(g.model("y"))
    assert widths(out)["a_node"] == 6 and removed(res) == {"a_node": 2}
    assert res.summary.startswith("removed 2 of 12 channels in 1 layer (")
    assert res.details["params_after"] < res.details["params_before"]
    assert res.details["macs_after"] < res.details["macs_before"]


def test_no_dead_filter_no_change():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, 3), np.ones(8), pads=[1] * 4)
    g.node("Relu", ["a"], "r")
    g.conv("y", "r", W(4, 8, 1))
    out, res = strip(g.model("y"))
    assert not res.changed and widths(out)["a_node"] == 8


def test_graph_output_keeps_its_shape():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, dead_out=[0, 1]), np.zeros(8))
    g.node("Relu", ["a"], "r")
    g.conv("y", "r", W(4, 8))
    out, res = strip(g.model("y", "r"))
    assert widths(out)["a_node"] == 8 and not res.changed


def test_graph_input_keeps_its_shape():
    g = G(x=[1, 3, 8, 8])
    g.conv("y", "x", W(4, 3, dead_in=[0]))
    out, res = strip(g.model("y"))
    assert not res.changed


def test_nonzero_constant_folds_into_1x1_and_unpadded_consumers():
    for k, pads in ((1, [0] * 4), (3, [0] * 4)):
        g = G(x=[1, 3, 8, 8])
        bias = RNG.standard_normal(8).astype(np.float32)
        g.conv("a", "x", W(8, 3, 3, dead_out=[2, 3, 7]), bias, pads=[1] * 4)
        g.node("Relu", ["a"], "r")
        g.conv("y", "r", W(4, 8, k), np.ones(4), pads=pads)
        out, res = strip(g.model("y"))
        assert widths(out)["a_node"] == 5


def test_padded_consumer_with_nonzero_constant_keeps_channel():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, dead_out=[2, 3]), np.full(8, 0.7), pads=[0] * 4)
    g.node("Relu", ["a"], "r")
    g.conv("y", "r", W(4, 8, 3), np.ones(4), pads=[1] * 4)
    out, res = strip(g.model("y"))
    assert widths(out)["a_node"] == 8 and not res.changed
    assert any("zero-padded" in reason for _, reason in res.declined)


@pytest.mark.parametrize("attrs", [dict(pads=[1] * 4), dict(pads=[2, 1, 0, 2], strides=[2, 2]),
                                   dict(pads=[2] * 4, dilations=[2, 2])])
def test_padded_consumer_bias_map_option(attrs):
    g = G(x=[1, 3, 9, 9])
    g.conv("a", "x", W(8, 3, dead_out=[2, 3, 6]), RNG.uniform(0.2, 1, 8))
    g.node("Relu", ["a"], "r")
    g.conv("y", "r", W(4, 8, 3), np.ones(4), **attrs)
    g.node("Relu", ["y"], "o")
    out, res = strip(g.model("o"), options={"strip": {"bias_map": True}})
    assert widths(out)["a_node"] == 5
    assert sum(n.op_type == "Add" for n in out.graph.node) == 1


def test_padded_consumer_with_constant_zero_after_activation_is_removed():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, dead_out=[2, 3]), np.full(8, -0.7))  # relu(-0.7) == 0
    g.node("Relu", ["a"], "r")
    g.conv("y", "r", W(4, 8, 3), np.ones(4), pads=[1] * 4)
    out, _ = strip(g.model("y"))
    assert widths(out)["a_node"] == 6


def test_reshape_stops_propagation():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, dead_out=[0]), np.zeros(8))
    g.node("Reshape", ["a", g.init("shape", np.array([1, 8, 64], dtype=np.int64))], "y")
    out, res = strip(g.model("y"))
    assert widths(out)["a_node"] == 8 and not res.changed


@pytest.mark.parametrize("target", [[1, -1], [-1, 48], [0, 48]])
def test_reshape_to_flat_is_a_flatten(target):
    g = G(x=[1, 3, 4, 4])
    g.conv("a", "x", W(12, 3, dead_out=[1, 5, 6]), RNG.standard_normal(12), strides=[2, 2])
    g.node("Relu", ["a"], "r")
    g.node("Reshape", ["r", g.init("shape", np.array(target, dtype=np.int64))], "f")
    g.node("Gemm", ["f", g.init("fw", RNG.standard_normal((5, 48)).astype(np.float32))], "y", transB=1)
    out, _ = strip(g.model("y"))
    assert widths(out)["a_node"] == 9


def test_squeeze_unsqueeze_spatial_axes():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(6, 3, dead_out=[0, 4]), np.full(6, 0.3))
    g.node("GlobalAveragePool", ["a"], "p")
    g.node("Squeeze", ["p", g.init("ax", np.array([2, 3], dtype=np.int64))], "s")
    g.node("Unsqueeze", ["s", "ax"], "u")
    g.conv("y", "u", W(4, 6), np.zeros(4))
    out, _ = strip(g.model("y"))
    assert widths(out)["a_node"] == 4


def test_single_channel_operand_broadcast_over_channels_stays():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(6, 3, dead_out=[0]), np.zeros(6))
    g.conv("att", "x", W(1, 3, dead_out=[0]), np.full(1, 0.5))  # a constant spatial attention map
    g.node("Sigmoid", ["att"], "s")
    g.node("Mul", ["a", "s"], "m")
    g.conv("y", "m", W(4, 6), np.zeros(4))
    out, _ = strip(g.model("y"))
    assert widths(out) == {"a_node": 5, "att_node": 1, "y_node": 4}


def test_tensor_read_inside_a_subgraph_stays_whole():
    g = G(x=[1, 3, 8, 8], c=[])
    g.conv("a", "x", W(6, 3, dead_out=[0]), np.full(6, 0.5))  # the sum in the branch sees the constant
    g.node("Relu", ["a"], "r")
    g.conv("y", "r", W(4, 6), np.zeros(4))
    branch = lambda n: helper.make_graph(  # noqa: E731
        [helper.make_node("ReduceSum", ["r"], [n], keepdims=0)], n, [],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)])
    g.nodes.append(helper.make_node("Cast", ["c"], ["cb"], to=TensorProto.BOOL))
    g.nodes.append(helper.make_node("If", ["cb"], ["z"], then_branch=branch("t"), else_branch=branch("e")))
    out, _ = strip(g.model("y", "z"))
    assert widths(out)["a_node"] == 6


def test_unknown_op_stops_propagation():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, dead_out=[0]), np.zeros(8))
    g.node("LRN", ["a"], "l", size=3)
    g.conv("y", "l", W(4, 8))
    out, res = strip(g.model("y"))
    assert widths(out)["a_node"] == 8


def _residual(dead_a, dead_b, bias_a=0.0, bias_b=0.0):
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, 3, dead_out=dead_a), np.full(8, bias_a), pads=[1] * 4)
    g.node("Relu", ["a"], "ra")
    g.conv("b", "ra", W(8, 8, 3, dead_out=dead_b), np.full(8, bias_b), pads=[1] * 4)
    g.node("Add", ["ra", "b"], "s")
    g.node("Relu", ["s"], "rs")
    g.conv("y", "rs", W(4, 8), np.zeros(4))
    return g.model("y")


def test_residual_channel_dead_in_one_producer_is_kept():
    out, res = strip(_residual([1, 2], [3]))
    w = widths(out)
    assert w["a_node"] == 8 and w["b_node"] == 8


def test_residual_channel_dead_in_every_producer_goes_from_all():
    # relu(-0.25) == 0 is all the padded conv b sees; the sum's constant 0.25 folds into the 1x1 conv y
    out, res = strip(_residual([1, 2, 5], [2, 5, 6], bias_a=-0.25, bias_b=0.25))
    w = widths(out)
    assert w["a_node"] == 6 and w["b_node"] == 6


def test_input_side_deadness_removes_live_filter():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, 3), np.ones(8), pads=[1] * 4)
    g.node("Relu", ["a"], "r")
    g.conv("y1", "r", W(4, 8, 3, dead_in=[0, 4]), pads=[1] * 4)
    g.conv("y2", "r", W(4, 8, 1, dead_in=[0, 4, 5]))
    g.node("Add", ["y1", "y2"], "y")
    out, res = strip(g.model("y"))
    assert widths(out)["a_node"] == 6


def test_concat_maps_channels_by_offset():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(4, 3, 3, dead_out=[1]), np.zeros(4), pads=[1] * 4)
    g.conv("b", "x", W(6, 3, 1, dead_out=[0, 5]), np.array([0.3, 1, 1, 1, 1, -0.2]))
    g.node("Concat", ["a", "b"], "c", axis=1)
    g.node("Relu", ["c"], "r")
    g.conv("y", "r", W(5, 10), np.zeros(5))
    out, res = strip(g.model("y"))
    assert widths(out)["a_node"] == 3 and widths(out)["b_node"] == 4


def test_split_on_channel_axis():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, dead_out=[0, 1, 6]), np.zeros(8))
    g.node("Split", ["a", g.init("sp", np.array([3, 5], dtype=np.int64))], ["s1", "s2"], axis=1)
    g.conv("y1", "s1", W(4, 3, 3), pads=[1] * 4)
    g.conv("y2", "s2", W(4, 5, 3), pads=[1] * 4)
    g.node("Add", ["y1", "y2"], "y")
    out, _ = strip(g.model("y"))
    assert widths(out)["a_node"] == 5


@pytest.mark.parametrize("opset", [11, 18])
def test_split_attribute_forms(opset):
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, dead_out=[0, 1, 6]), np.zeros(8))
    attrs = {"split": [4, 4]} if opset == 11 else {"num_outputs": 2}
    g.node("Split", ["a"], ["s1", "s2"], axis=1, **attrs)
    g.conv("y1", "s1", W(4, 4))
    g.conv("y2", "s2", W(4, 4))
    g.node("Add", ["y1", "y2"], "y")
    out, _ = strip(g.model("y", opset=opset))
    assert widths(out)["a_node"] == 5


def test_slice_on_channel_axis():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, dead_out=[0, 3, 6]), np.zeros(8))
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    g.node("Slice", ["a", g.init("st", i64(2)), g.init("en", i64(7)), g.init("ax", i64(1))], "s")
    g.conv("y", "s", W(4, 5), np.zeros(4))
    g.node("Relu", ["a"], "r")
    g.conv("z", "r", W(4, 8), np.zeros(4))
    g.node("Add", ["y", "z"], "o")
    out, _ = strip(g.model("o"))
    assert widths(out)["a_node"] == 5


def test_depthwise_shrinks_group():
    g = G(x=[1, 3, 8, 8])
    g.conv("e", "x", W(8, 3, dead_out=[1, 4]), np.zeros(8))
    g.node("Clip", ["e", g.init("lo", np.float32(0)), g.init("hi", np.float32(6))], "r")
    g.conv("d", "r", W(8, 1, 3), RNG.standard_normal(8), pads=[1] * 4, group=8)  # bias flows as a constant
    g.node("Clip", ["d", "lo", "hi"], "rd")
    g.conv("y", "rd", W(4, 8), np.zeros(4))
    out, res = strip(g.model("y"))
    w = widths(out)
    assert w["e_node"] == 6 and w["d_node"] == 6
    assert next(a.i for n in out.graph.node if n.name == "d_node" for a in n.attribute if a.name == "group") == 6


def group_attr(model, name):
    return next(a.i for n in model.graph.node if n.name == name for a in n.attribute if a.name == "group")


def test_grouped_conv_loses_its_inputs_evenly_from_every_group():
    """Dead inputs of a grouped conv (ResNeXt-style) go where each group loses as many: group g's
    filters then drop their columns for them; the group count stays."""
    g = G(x=[1, 3, 8, 8])
    g.conv("e", "x", W(12, 3, dead_out=[1, 4, 8, 10]), np.zeros(12))  # 2 per group of 6... 1, 4 | 8, 10
    g.node("Relu", ["e"], "r")
    g.conv("d", "r", W(8, 6, 3), RNG.standard_normal(8), pads=[1] * 4, group=2)
    g.conv("y", "d", W(4, 8), np.zeros(4))
    out, res = strip(g.model("y"))
    assert widths(out)["e_node"] == 8 and group_attr(out, "d_node") == 2
    w_d = next(numpy_helper.to_array(t) for t in out.graph.initializer if t.name.startswith("d_w"))
    assert w_d.shape == (8, 4, 3, 3)


def test_grouped_conv_groups_keep_as_many_as_the_fullest():
    """Uneven dead inputs (3 in group 0, 1 in group 1, 0 in group 2): nothing can go from group 2,
    so every group keeps all; with 2 and 1 dead, group 0 keeps one of its dead channels."""
    for dead, kept in (([0, 1, 2, 5], 12), ([0, 1, 5, 8, 9, 10, 11], 9)):
        g = G(x=[1, 3, 8, 8])
        g.conv("e", "x", W(12, 3, dead_out=dead), np.zeros(12))
        g.node("Relu", ["e"], "r")
        g.conv("d", "r", W(6, 4, 1), np.zeros(6), group=3)
        g.node("Relu", ["d"], "y")
        out, res = strip(g.model("y"))
        assert widths(out)["e_node"] == kept and group_attr(out, "d_node") == 3
        if kept == 12:
            assert ("d_node", "grouped Conv: every group keeps as many channels as its fullest one") in res.declined


def test_grouped_conv_dead_filters_and_constants_through_an_unpadded_grouped_conv():
    """A grouped conv's own dead filters (bias 0.3 through Relu: a constant) go evenly, the next conv
    absorbs their constant; dead inputs with nonzero constants are absorbed by the unpadded grouped
    conv's bias, per group."""
    g = G(x=[1, 3, 8, 8])
    b_e = np.where(np.isin(np.arange(8), [2, 6]), 0.7, 0.0)
    g.conv("e", "x", W(8, 3, dead_out=[2, 6]), b_e)
    g.node("Relu", ["e"], "r")
    g.conv("d", "r", W(8, 4, 1, dead_out=[0, 5]), np.full(8, 0.3), group=2)
    g.node("Relu", ["d"], "rd")
    g.conv("y", "rd", W(4, 8), np.zeros(4))
    out, res = strip(g.model("y"))
    assert widths(out)["e_node"] == 6 and widths(out)["d_node"] == 6 and group_attr(out, "d_node") == 2


def test_batchnorm_passes_channels_through():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(8, 3, dead_out=[0, 7]), np.zeros(8))
    bn = [g.init(n, v.astype(np.float32)) for n, v in (("g", RNG.uniform(0.5, 2, 8)), ("be", RNG.standard_normal(8)),
                                                       ("m", RNG.standard_normal(8)), ("v", RNG.uniform(0.5, 2, 8)))]
    g.node("BatchNormalization", ["a"] + bn, "n")
    g.node("Relu", ["n"], "r")
    g.node("Mul", ["r", g.init("s", RNG.standard_normal((8, 1, 1)).astype(np.float32))], "m2")
    g.node("MaxPool", ["m2"], "p", kernel_shape=[2, 2], strides=[2, 2])
    g.conv("y", "p", W(4, 8), np.zeros(4))
    out, _ = strip(g.model("y"))
    assert widths(out)["a_node"] == 6


def test_flatten_gemm_folds_constant_rows():
    g = G(x=[1, 3, 4, 4])
    g.conv("a", "x", W(6, 3, dead_out=[1, 2]), RNG.standard_normal(6), strides=[2, 2])
    g.node("Relu", ["a"], "r")
    g.node("Flatten", ["r"], "f", axis=1)
    g.node("Gemm", ["f", g.init("fw", RNG.standard_normal((5, 24)).astype(np.float32)),
                    g.init("fb", RNG.standard_normal(5).astype(np.float32))], "y", transB=1)
    out, _ = strip(g.model("y"))
    assert widths(out)["a_node"] == 4
    assert numpy_helper.to_array(next(t for t in out.graph.initializer if t.name.startswith("fw"))).shape == (5, 16)


def test_global_pool_gemm_and_dead_gemm_rows():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(6, 3, 3, dead_out=[0, 3]), RNG.standard_normal(6), pads=[1] * 4)
    g.node("Relu", ["a"], "r")
    g.node("GlobalAveragePool", ["r"], "p")
    g.node("Flatten", ["p"], "f")
    fw = RNG.standard_normal((6, 7)).astype(np.float32)
    fw[:, 2] = 0
    g.node("Gemm", ["f", g.init("fw", fw), g.init("fb", RNG.standard_normal(7).astype(np.float32))], "h")
    g.node("Relu", ["h"], "hr")
    g.node("Gemm", ["hr", g.init("gw", RNG.standard_normal((3, 7)).astype(np.float32))], "y", transB=1)
    out, res = strip(g.model("y"))
    w = widths(out)
    assert w["a_node"] == 4 and w["h_node"] == 6


def test_resize_and_avgpool_pass_through():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(6, 3, dead_out=[0, 3]), np.full(6, 0.5))
    g.node("Resize", ["a", "", g.init("sc", np.array([1, 1, 2, 2], dtype=np.float32))], "u", mode="nearest")
    g.node("AveragePool", ["u"], "p", kernel_shape=[2, 2], strides=[2, 2])
    g.conv("y", "p", W(4, 6), np.zeros(4))
    out, _ = strip(g.model("y"))
    assert widths(out)["a_node"] == 4


def test_strip_near_threshold_is_lossy_and_reported():
    g = G(x=[1, 3, 8, 8])
    w = W(8, 3, 3)
    w[[2, 6]] *= 1e-5
    g.conv("a", "x", w, np.full(8, 0.3), pads=[1] * 4)
    g.node("Relu", ["a"], "r")
    g.conv("y", "r", W(4, 8), np.zeros(4))
    m = g.model("y")
    out, res = strip(m)  # exact: nothing to remove
    assert not res.changed
    out, report = onnxopt.apply(m, passes=["strip"], options={"strip": {"threshold": 1e-3}})
    assert not report.passes[0].changed and report.passes[0].declined
    out, report = onnxopt.apply(m, passes=["strip-near"], options={"strip-near": {"threshold": 1e-3}})
    assert widths(out)["a_node"] == 6
    assert report.verification is not None and 0 < report.verification.max_rel < 1e-3
    assert "strip" in onnxopt.pass_names() and "strip-near" in onnxopt.pass_names()


def test_channel_kept_if_a_tensor_would_lose_every_channel():
    g = G(x=[1, 3, 8, 8])
    g.conv("a", "x", W(4, 3, dead_out=[0, 1, 2, 3]), np.zeros(4))
    g.node("Relu", ["a"], "r")
    g.conv("y", "r", W(4, 4), np.ones(4))
    out, _ = strip(g.model("y"))
    assert widths(out)["a_node"] == 1


# --- models exported from PyTorch ---------------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn


def export(module, shape):
    module.eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.randn(*shape), f, dynamo=False, opset_version=17)
    return onnx.load_from_string(f.getvalue())


def cbr(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


def randomize_bn(module):
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return module


def zero(seq, idx, beta=0.0):
    """Zero channels ``idx`` of a conv-bn(-act) block: filter and gamma 0, beta as given."""
    conv, bn = seq[0], seq[1]
    with torch.no_grad():
        conv.weight[idx] = 0
        bn.weight[idx] = 0
        bn.bias[idx] = beta


@pytest.mark.parametrize("beta", [0.0, 0.4])
def test_torch_conv_chain(beta):
    net = randomize_bn(nn.Sequential(cbr(3, 16), cbr(16, 16), nn.MaxPool2d(2), cbr(16, 8, k=1), cbr(8, 8)))
    zero(net[0], [0, 5, 9], beta)
    zero(net[1], list(range(8)), beta)
    zero(net[3], [1, 2], beta)
    model = export(net, (1, 3, 16, 16))
    out, res = strip(model)
    w = list(widths(out).values())
    out_map, _ = strip(model, options={"strip": {"bias_map": True}})
    assert list(widths(out_map).values()) == [13, 8, 6, 8]
    if beta == 0:
        assert w == [13, 8, 6, 8]
    else:  # nonzero constants cannot fold into the zero-padded 3x3 convs; the 1x1 one absorbs them
        assert w == [16, 8, 8, 8]


def test_torch_residual_coupled():
    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = cbr(c, c // 2, k=1), nn.Sequential(*cbr(c // 2, c)[:2])

        def forward(self, x):
            return torch.relu(x + self.b(self.a(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(*cbr(3, 16)[:2])
            self.blocks = nn.Sequential(Block(16), Block(16))
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            return self.head(torch.relu(self.blocks(torch.relu(self.stem(x)))).mean((2, 3)))

    net = randomize_bn(Net())
    stream = [1, 4, 7, 8]
    for seq in (net.stem, net.blocks[0].b, net.blocks[1].b):
        zero(seq, stream, beta=0.2)  # constant flows along the residual stream into 1x1 convs and the head
    zero(net.blocks[0].a, [0, 3])
    out, res = strip(export(net, (1, 3, 12, 12)))
    w = list(widths(out).values())
    assert w == [12, 6, 12, 8, 12, 5]


def test_torch_residual_partially_zeroed_stream_is_kept():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 8), cbr(8, 8, k=1)

        def forward(self, x):
            a = self.a(x)
            return a + self.b(a)

    net = randomize_bn(Net())
    zero(net.a, [0, 1])
    zero(net.b, [1, 2])
    out, _ = strip(export(net, (1, 3, 8, 8)))
    assert list(widths(out).values()) == [8, 8]


def test_torch_concat_and_split():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = cbr(3, 8), cbr(3, 6, k=1), cbr(14, 10, k=1)
            self.d, self.e = cbr(4, 4), cbr(6, 4)

        def forward(self, x):
            y = self.c(torch.cat([self.a(x), self.b(x)], 1))
            p, q = torch.split(y, [4, 6], dim=1)
            return torch.cat([self.d(p), self.e(q)], 1)

    net = randomize_bn(Net())
    zero(net.a, [0, 7])
    zero(net.b, [2])
    zero(net.c, [1, 5, 6])
    out, _ = strip(export(net, (1, 3, 8, 8)))
    assert list(widths(out).values()) == [6, 5, 7, 4, 4]


def test_torch_inverted_residual_depthwise():
    class IR(nn.Module):
        def __init__(self, c, e):
            super().__init__()
            self.expand = cbr(c, c * e, k=1, act=nn.ReLU6)
            self.dw = cbr(c * e, c * e, groups=c * e, act=nn.ReLU6)
            self.project = nn.Sequential(*cbr(c * e, c, k=1)[:2])

        def forward(self, x):
            return x + self.project(self.dw(self.expand(x)))

    net = randomize_bn(nn.Sequential(cbr(3, 8), IR(8, 4)))
    zero(net[1].expand, list(range(0, 32, 2)))
    out, res = strip(export(net, (1, 3, 8, 8)))
    assert list(widths(out).values()) == [8, 16, 16, 8]


def test_torch_resnext_bottleneck_grouped_conv():
    """A ResNeXt bottleneck (1x1 -> grouped 3x3, 8 groups -> 1x1 + identity) slimmed evenly across
    the groups: the grouped conv loses inputs in every group, and its own zeroed filters too."""
    class Bottleneck(nn.Module):
        def __init__(self, c, width, groups):
            super().__init__()
            self.a, self.b = cbr(c, width, k=1), cbr(width, width, groups=groups)
            self.c = nn.Sequential(*cbr(width, c, k=1)[:2])

        def forward(self, x):
            return torch.relu(x + self.c(self.b(self.a(x))))

    net = randomize_bn(nn.Sequential(cbr(3, 16), Bottleneck(16, 32, 8)))
    zero(net[1].a, list(range(0, 32, 4)))  # one input of each group of 4
    zero(net[1].b, list(range(1, 32, 4)))  # one filter of each group
    out, res = strip(export(net, (1, 3, 8, 8)))
    assert list(widths(out).values()) == [16, 24, 24, 16]
    grouped = next(n for n in out.graph.node if n.op_type == "Conv" and group_attr(out, n.name) > 1)
    assert group_attr(out, grouped.name) == 8


def test_torch_flatten_linear():
    net = randomize_bn(nn.Sequential(cbr(3, 8, stride=2), nn.Flatten(), nn.Linear(8 * 16, 10), nn.ReLU(),
                                     nn.Linear(10, 4)))
    zero(net[0], [2, 3], beta=0.5)
    with torch.no_grad():
        net[2].weight[4] = 0
    out, _ = strip(export(net, (1, 3, 8, 8)))
    assert list(widths(out).values()) == [6, 9, 4]


def test_torch_slimming_near_zero_gammas_with_strip_near():
    net = randomize_bn(nn.Sequential(cbr(3, 16), cbr(16, 16), cbr(16, 8, k=1)))
    with torch.no_grad():  # network slimming: gamma (and so the fused filter) tiny, beta kept
        for seq, idx in ((net[0], [1, 2, 3, 9]), (net[1], [0, 4])):
            seq[1].weight[idx] *= 1e-6
    model = export(net, (1, 3, 12, 12))
    _, res = strip(model)
    assert not res.changed  # nothing is exactly zero
    out, report = onnxopt.apply(model, passes=["strip-near"],
                                options={"strip-near": {"threshold": 1e-4, "bias_map": True}})
    assert list(widths(out).values()) == [12, 14, 8]
    assert 0 < report.verification.max_rel < 1e-4


def test_torch_dynamo_export_pool_view_linear():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 8), cbr(8, 8, k=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = self.b(self.a(x)).mean((2, 3), keepdim=True)
            return self.fc(y.view(y.shape[0], -1))

    net = randomize_bn(Net())
    zero(net.a, [1, 2])
    zero(net.b, [0, 5, 7], beta=0.3)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), dynamo=True, opset_version=18, verbose=False)
    model = program.model_proto
    model.ir_version = min(model.ir_version, 10)
    out, _ = strip(model)
    assert list(widths(out).values()) == [6, 5, 4]
