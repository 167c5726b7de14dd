"""The shift pass: one case per rule of passes/shift.py's docstring, each checked on onnxruntime
against the original model, with the custom-op library registered and with the ONNX-function fallback."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.runtime import library_path, ops, session
from onnxopt.runtime.reference import address_conv_ref

from conftest import make_model

RTOL = 1e-5


@pytest.fixture(params=["library", "fallback"])
def runtime(request, monkeypatch):
    """Run each test once on our kernel and once on the ONNX function (library hidden)."""
    if request.param == "library":
        if library_path() is None:
            pytest.skip("onnxopt was installed without its custom-op library")
    else:
        monkeypatch.setenv("ONNXOPT_OPS_LIBRARY", "/nonexistent")
        assert library_path() is None
    return request.param


# --- tiny graph builders --------------------------------------------------------------------------

class Builder:
    def __init__(self, c: int, h: int = 7, w: int = 6, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])
        self.c = c
        self.count = 0

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        self.count += 1
        name = name or f"k{self.count}"
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op.lower()}{self.count}", **attrs))
        return out

    def shift(self, x: str, c: int, k: int = 3, scale: bool = False, bias: bool = False, taps=None,
              pads=None, strides=(1, 1)) -> str:
        w = np.zeros((c, 1, k, k), np.float32)
        taps = taps if taps is not None else [divmod(i % (k * k), k) for i in range(c)]
        for ch, (ky, kx) in enumerate(taps):
            w[ch, 0, ky, kx] = self.rng.uniform(0.5, 1.5) if scale else 1.0
        inputs = [x, self.const(w)]
        if bias:
            inputs.append(self.const(self.rng.uniform(-0.5, 0.5, c).astype(np.float32)))
        return self.node("Conv", inputs, group=c, kernel_shape=[k, k], pads=pads or [k // 2] * 4,
                         strides=list(strides))

    def conv(self, x: str, cin: int, cout: int, k: int = 1, group: int = 1, bias: bool = True, **attrs) -> str:
        w = self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
        inputs = [x, self.const(w)]
        if bias:
            inputs.append(self.const(self.rng.standard_normal(cout).astype(np.float32)))
        return self.node("Conv", inputs, group=group, kernel_shape=[k, k], **attrs)

    def shuffle(self, x: str, c: int, h: int, w: int, groups: int = 2) -> str:
        r = self.node("Reshape", [x, self.const(np.array([1, groups, c // groups, h, w], np.int64))])
        t = self.node("Transpose", [r], perm=[0, 2, 1, 3, 4])
        return self.node("Reshape", [t, self.const(np.array([1, -1, h, w], np.int64))])

    def model(self, *outputs: str) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        return make_model(self.nodes, [self.x], outs, self.inits)


def optimise(model: onnx.ModelProto, **options):
    """Apply the shift pass (apply verifies on onnxruntime), then compare once more here.

    Custom ops are forced on, so the fallback runs exercise the ONNX functions (by default the pass
    makes none without the library, see test_no_custom_ops_without_the_library)."""
    options.setdefault("custom_ops", True)
    result, report = onnxopt.apply(model, passes=["shift"], rtol=RTOL, options={"shift": options})
    assert report.verification.ok
    inp = model.graph.input[0]
    x = np.random.default_rng(1).standard_normal([d.dim_value for d in inp.type.tensor_type.shape.dim])
    feeds = {inp.name: x.astype(np.float32)}
    want = session(model).run(None, feeds)
    got = session(result).run(None, feeds)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * float(np.abs(b).max()))
    return result, report.passes[0]


def op_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def declines(res) -> str:
    return " | ".join(reason for _, reason in res.declined)


# --- one-hot depthwise + 1x1 conv -----------------------------------------------------------------

def test_shift_then_pointwise_becomes_address_conv(runtime):
    b = Builder(9)
    y = b.conv(b.shift("x", 9), 9, 5)
    out, res = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1}
    node = out.graph.node[0]
    assert node.domain == ops.DOMAIN and res.details["shifts_folded"] == 1
    assert any(o.domain == ops.DOMAIN and o.version == ops.OP_VERSION for o in out.opset_import)
    assert [(f.domain, f.name) for f in out.functions] == [(ops.DOMAIN, ops.ADDRESS_CONV)]
    address = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == node.input[3]))
    assert address.dtype == np.int32 and address[:, 0].tolist() == list(range(9))
    assert address[:, 1].tolist() == [-1, -1, -1, 0, 0, 0, 1, 1, 1] and address[:, 2].tolist() == [-1, 0, 1] * 3


def test_scale_and_bias_fold_into_the_pointwise_weights(runtime):
    b = Builder(12)
    y = b.conv(b.shift("x", 12, scale=True, bias=True), 12, 7, bias=False)
    out, res = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1} and out.graph.node[0].input[2]


def test_five_by_five_one_hot_and_dilated_taps(runtime):
    b = Builder(6, h=9, w=9)
    s = b.shift("x", 6, k=5, taps=[(0, 0), (4, 4), (2, 2), (0, 4), (1, 3), (2, 0)])
    y = b.conv(s, 6, 4)
    out, _ = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1}


def test_strided_pointwise(runtime):
    b = Builder(9, h=7, w=8)
    y = b.conv(b.shift("x", 9), 9, 6, strides=[2, 2])
    out, _ = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1}
    assert helper.get_attribute_value(next(a for a in out.graph.node[0].attribute if a.name == "strides")) == [2, 2]


def test_grouped_pointwise(runtime):
    b = Builder(12)
    y = b.conv(b.shift("x", 12, scale=True, bias=True), 12, 8, group=4)
    out, _ = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1}


def test_not_one_hot_is_left_alone():
    b = Builder(9)
    s = b.shift("x", 9)
    b.inits[0].CopyFrom(numpy_helper.from_array(np.ones((9, 1, 3, 3), np.float32), b.inits[0].name))
    y = b.conv(s, 9, 5)
    out, res = optimise(b.model(y))
    assert op_counts(out) == {"Conv": 2} and not res.changed


def test_two_consumers_decline():
    b = Builder(9)
    s = b.shift("x", 9)
    y1, y2 = b.conv(s, 9, 5), b.conv(s, 9, 3)
    out, res = optimise(b.model(y1, y2))
    assert op_counts(out) == {"Conv": 3} and "2 consumers" in declines(res)


def test_graph_output_between_is_untouched():
    b = Builder(9)
    s = b.shift("x", 9)
    y = b.conv(s, 9, 5)
    out, res = optimise(b.model(y, s))
    assert op_counts(out) == {"Conv": 2} and "graph output" in declines(res)


def test_relu_between_declines():
    b = Builder(9)
    y = b.conv(b.node("Relu", [b.shift("x", 9)]), 9, 5)
    out, res = optimise(b.model(y))
    assert op_counts(out) == {"Conv": 2, "Relu": 1} and "followed by Relu" in declines(res)


def test_padded_pointwise_declines():
    b = Builder(9)
    y = b.conv(b.shift("x", 9), 9, 5, pads=[1, 1, 1, 1])
    out, res = optimise(b.model(y))
    assert op_counts(out) == {"Conv": 2} and "pads" in declines(res)


def test_size_changing_padding_declines():
    b = Builder(9)
    y = b.conv(b.shift("x", 9, pads=[0, 0, 0, 0]), 9, 5)
    out, res = optimise(b.model(y))
    assert op_counts(out) == {"Conv": 2} and "change the spatial size" in declines(res)


def test_strided_shift_declines():
    b = Builder(9)
    y = b.conv(b.shift("x", 9, strides=(2, 2)), 9, 5)
    out, res = optimise(b.model(y))
    assert op_counts(out) == {"Conv": 2} and "strides" in declines(res)


def test_chained_shifts_in_the_same_direction_compose(runtime):
    b = Builder(3)
    s = b.shift(b.shift("x", 3, scale=True, taps=[(0, 0), (1, 1), (2, 1)]), 3, scale=True, bias=True,
                taps=[(0, 1), (2, 2), (2, 1)])
    out, res = optimise(b.model(b.conv(s, 3, 4)))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1} and res.details["shifts_folded"] == 2


def test_chained_opposite_shifts_decline():
    b = Builder(3)
    s = b.shift(b.shift("x", 3, taps=[(0, 0), (1, 1), (1, 1)]), 3, taps=[(2, 2), (1, 1), (1, 1)])
    out, res = optimise(b.model(b.conv(s, 3, 4)))
    assert op_counts(out) == {"Conv": 3} and "opposite displacements" in declines(res)


def test_chained_shift_with_inner_bias_declines():
    b = Builder(3)
    s = b.shift(b.shift("x", 3, bias=True, taps=[(1, 1)] * 3), 3, taps=[(0, 0), (1, 1), (1, 1)])
    out, res = optimise(b.model(b.conv(s, 3, 4)))
    assert op_counts(out) == {"Conv": 3} and "zero-filled" in declines(res)


def test_shift_then_dense_three_by_three_is_left_alone():
    b = Builder(9)
    y = b.conv(b.shift("x", 9), 9, 5, k=3, pads=[1, 1, 1, 1])
    out, res = optimise(b.model(y))
    assert op_counts(out) == {"Conv": 2} and "not a 1x1 conv" in declines(res)


# --- channel permutations -------------------------------------------------------------------------

def test_shuffle_into_pointwise_permutes_weights():
    b = Builder(8, h=5, w=5)
    y = b.conv(b.shuffle("x", 8, 5, 5), 8, 6)
    out, res = optimise(b.model(y))
    assert op_counts(out) == {"Conv": 1} and res.details["weights_permuted"] == 1


def test_shuffle_into_grouped_pointwise_keeps_a_gather_by_default():
    b = Builder(8, h=5, w=5)
    y = b.conv(b.shuffle("x", 8, 5, 5, groups=4), 8, 6, group=2)
    out, _ = optimise(b.model(y))
    assert op_counts(out) == {"Gather": 1, "Conv": 1}


def test_shuffle_into_grouped_pointwise_as_address_conv(runtime):
    b = Builder(8, h=5, w=5)
    y = b.conv(b.shuffle("x", 8, 5, 5, groups=4), 8, 6, group=2)
    out, _ = optimise(b.model(y), address_permutations=True)
    assert op_counts(out) == {ops.ADDRESS_CONV: 1}
    address = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[3]))
    assert sorted(address[:, 0].tolist()) == list(range(8)) and not address[:, 1:].any()


def test_shuffle_into_dense_three_by_three_permutes_weights():
    b = Builder(8, h=5, w=5)
    y = b.conv(b.shuffle("x", 8, 5, 5), 8, 4, k=3, pads=[1, 1, 1, 1])
    out, _ = optimise(b.model(y))
    assert op_counts(out) == {"Conv": 1}


def test_shuffle_then_shift_composes_into_the_address(runtime):
    b = Builder(8, h=5, w=5)
    y = b.conv(b.shift(b.shuffle("x", 8, 5, 5), 8, scale=True, bias=True), 8, 6)
    out, res = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1} and res.details["shifts_folded"] == 1


def test_shuffle_split_halves(runtime):
    """ShuffleNetV2's pattern: shuffle → Split; one half to a 1x1 conv, the other to a Concat."""
    b = Builder(8, h=5, w=5)
    sh = b.shuffle("x", 8, 5, 5)
    b.count += 1
    b.nodes.append(helper.make_node("Split", [sh, b.const(np.array([4, 4], np.int64))], ["h1", "h2"], axis=1))
    y = b.node("Concat", ["h1", b.conv("h2", 4, 4)], axis=1)
    out, _ = optimise(b.model(y))
    assert op_counts(out) == {"Gather": 2, "Conv": 1, "Concat": 1}
    out, _ = optimise(b.model(y), address_permutations=True)
    assert op_counts(out) == {"Gather": 1, ops.ADDRESS_CONV: 1, "Concat": 1}


def test_shuffle_into_depthwise_then_pointwise_commutes(runtime):
    b = Builder(8, h=6, w=6)
    dw = b.conv(b.shuffle("x", 8, 6, 6), 8, 8, k=3, group=8, pads=[1, 1, 1, 1], strides=[2, 2])
    out, res = optimise(b.model(b.conv(dw, 8, 6)))
    assert op_counts(out) == {"Conv": 2} and res.details["depthwise_commuted"] == 1


def test_channel_roll_into_pointwise():
    b = Builder(6, h=4, w=4)
    lo = b.node("Slice", ["x", b.const(np.array([4])), b.const(np.array([6])), b.const(np.array([1]))])
    hi = b.node("Slice", ["x", b.const(np.array([0])), b.const(np.array([4])), b.const(np.array([1]))])
    y = b.conv(b.node("Concat", [lo, hi], axis=1), 6, 3)
    out, _ = optimise(b.model(y))
    assert op_counts(out) == {"Conv": 1}


def test_spatial_roll_is_left_alone():
    b = Builder(4, h=4, w=4)
    lo = b.node("Slice", ["x", b.const(np.array([3])), b.const(np.array([4])), b.const(np.array([2]))])
    hi = b.node("Slice", ["x", b.const(np.array([0])), b.const(np.array([3])), b.const(np.array([2]))])
    y = b.conv(b.node("Concat", [lo, hi], axis=2), 4, 3)
    out, res = optimise(b.model(y))
    assert op_counts(out) == op_counts(b.model(y)) and not res.changed


def test_address_conv_macs_are_counted():
    b = Builder(9)
    model = b.model(b.conv(b.shift("x", 9), 9, 5))
    _, report = onnxopt.apply(model, passes=["shift"], options={"shift": {"custom_ops": True}})
    assert report.after.macs == 9 * 5 * 7 * 6 and report.after.unknown_macs == 0


def test_kernel_matches_reference_on_shifted_grouped_strided_input():
    if library_path() is None:
        pytest.skip("onnxopt was installed without its custom-op library")
    from onnxopt.runtime.functions import address_conv_model

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 9, 7)).astype(np.float32)
    w = rng.standard_normal((6, 4, 1, 1)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    address = np.stack([rng.integers(0, 5, 8), rng.integers(-2, 3, 8), rng.integers(-2, 3, 8)], 1).astype(np.int32)
    model = address_conv_model(x.shape, w, b, address, group=2, strides=(2, 3))
    got = session(model).run(None, {"X": x})[0]
    np.testing.assert_allclose(got, address_conv_ref(x, w, b, address, 2, (2, 3)), rtol=1e-5, atol=1e-5)


# --- what an AddressConv absorbs after it, and 1x1 convs joining its layout ------------------------

def address_nodes(model):
    return [n for n in model.graph.node if n.op_type == ops.ADDRESS_CONV]


def attrs_of(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_residual_add_then_relu_are_absorbed(runtime):
    b = Builder(9)
    y = b.node("Relu", [b.node("Add", ["x", b.conv(b.shift("x", 9), 9, 9)])])
    out, res = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1}
    node = address_nodes(out)[0]
    assert list(node.input)[4] == "x" and attrs_of(node)["clip_min"] == 0 and attrs_of(node)["clip_max"] == np.inf
    assert res.details["residuals_fused"] == 1 and res.details["activations_fused"] == 1


def test_constant_clip_is_absorbed(runtime):
    b = Builder(9)
    t = b.conv(b.shift("x", 9), 9, 5)
    y = b.node("Clip", [t, b.const(np.array(-0.5, np.float32)), b.const(np.array(0.75, np.float32))])
    out, _ = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1}
    assert (attrs_of(address_nodes(out)[0])["clip_min"], attrs_of(address_nodes(out)[0])["clip_max"]) == (-0.5, 0.75)


def test_add_after_the_activation_stays(runtime):
    b = Builder(9)
    y = b.node("Add", [b.node("Relu", [b.conv(b.shift("x", 9), 9, 9)]), "x"])
    out, res = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 1, "Add": 1} and res.details["residuals_fused"] == 0


def test_broadcasting_add_and_shared_output_are_not_absorbed(runtime):
    b = Builder(9)
    t = b.conv(b.shift("x", 9), 9, 9)
    y1 = b.node("Add", [t, b.const(np.ones((1, 9, 1, 1), np.float32))])  # broadcast: not a residual
    b2 = Builder(9)
    t2 = b2.conv(b2.shift("x", 9), 9, 9)
    y2, y3 = b2.node("Relu", [t2]), b2.node("Sigmoid", [t2])  # two consumers
    out1, res1 = optimise(b.model(y1))
    out2, res2 = optimise(b2.model(y2, y3))
    assert op_counts(out1) == {ops.ADDRESS_CONV: 1, "Add": 1} and op_counts(out2)["Relu"] == 1
    assert res1.details["residuals_fused"] == res2.details["activations_fused"] == 0


def test_pointwise_neighbours_join_the_address_conv_layout(runtime):
    """1x1 → Relu → shift → 1x1 → 1x1: the outer 1x1 convs become identity-table AddressConvs
    (onnxruntime would put layout reorders between its NCHWc convs and the AddressConv)."""
    b = Builder(9)
    t = b.node("Relu", [b.conv("x", 9, 18)])
    t = b.conv(b.shift(t, 18), 18, 9)
    y = b.node("Relu", [b.conv(t, 9, 12, strides=[2, 2])])
    out, res = optimise(b.model(y))
    assert op_counts(out) == {ops.ADDRESS_CONV: 3}
    assert res.details["chained_convs"] == 2 and res.details["activations_fused"] == 2
    tables = [numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == n.input[3]))
              for n in address_nodes(out)]
    identity = [t for t in tables if not t[:, 1:].any() and t[:, 0].tolist() == list(range(len(t)))]
    assert len(identity) == 2
    out, res = optimise(b.model(y), address_chains=False)
    assert op_counts(out) == {ops.ADDRESS_CONV: 1, "Conv": 2, "Relu": 2} and res.details["chained_convs"] == 0


# --- reference models exported from PyTorch -------------------------------------------------------

torch = pytest.importorskip("torch")


def export(net, size):
    from onnxopt.models import export_onnx

    return export_onnx(net, torch.randn(1, 3, size, size))


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"shift_scale": True, "shift_bias": True}])
def test_shiftnet(runtime, options):
    from onnxopt.models import shiftnet

    out, res = optimise(export(shiftnet(width=16, blocks=(1, 1, 1), **options), 32))
    counts = op_counts(out)
    assert res.details["address_convs"] == 3 and res.details["shifts_folded"] == 3 and not res.declined
    assert res.details["residuals_fused"] == 3 and res.details["chained_convs"] == 5  # 3 expand, 2 shortcut
    # every 1x1 conv of the blocks is an AddressConv, all in the blocked layout, each block's expand +
    # shift conv as one pair, the shortcuts alone; the stem's 3x3 Conv + Relu too (27 address rows),
    # reading the image itself (BlockedEntryConv: no ToBlocked), out through the blocked pooling, no
    # Conv, Relu or GlobalAveragePool left
    assert counts[ops.BLOCKED_ADDRESS_CONV_PAIR] == 3 and counts[ops.BLOCKED_ADDRESS_CONV] == 2
    assert counts[ops.BLOCKED_ENTRY_CONV] == 1 and counts[ops.BLOCKED_GLOBAL_AVERAGE_POOL] == 1
    assert not {"Conv", "Relu", "Add", "GlobalAveragePool", ops.ADDRESS_CONV, ops.FROM_BLOCKED,
                ops.TO_BLOCKED} & set(counts)
    assert res.details["blocked_convs"] == 8 and res.details["layout_conversions"] == 2
    assert res.details["blocked_pairs"] == 3 and res.details["entry_convs_blocked"] == 1
    assert res.details["pools_blocked"] == 1
    stem = out.graph.node[0]
    assert stem.op_type == ops.BLOCKED_ENTRY_CONV and stem.input[0] == out.graph.input[0].name
    assert any(i.name == stem.input[3] and list(i.dims) == [27, 3] for i in out.graph.initializer)
    out, res = optimise(export(shiftnet(width=16, blocks=(1, 1, 1), **options), 32), blocked_pairs=False)
    counts = op_counts(out)
    assert counts[ops.BLOCKED_ADDRESS_CONV] == 8 and ops.BLOCKED_ADDRESS_CONV_PAIR not in counts
    assert counts[ops.BLOCKED_ENTRY_CONV] == 1
    out, res = optimise(export(shiftnet(width=16, blocks=(1, 1, 1), **options), 32), blocked=False)
    counts = op_counts(out)
    assert counts[ops.ADDRESS_CONV] == 8 and counts["Conv"] == 1 and ops.BLOCKED_ADDRESS_CONV not in counts


@pytest.mark.slow
def test_shiftnet_blocked_layout_edges(runtime):
    """A tensor inside the blocked set that something else also reads leaves through FromBlocked; a
    set too small for its conversions stays in NCHW; a CUDA target gets no blocked ops."""
    import onnx_graphsurgeon as gs

    from onnxopt.models import shiftnet
    from onnxopt.runtime.targets import BUILTIN

    model = export(shiftnet(width=16, blocks=(2, 1, 1)), 16)
    g = gs.import_onnx(model)
    inner = next(n for n in g.nodes if n.name == "/layer1/layer1.1/conv1/Conv").inputs[0]  # a block's output
    tap = gs.Variable("tap", np.float32)
    g.nodes.append(gs.Node("Relu", inputs=[inner], outputs=[tap]))
    g.outputs.append(tap)
    out, res = optimise(gs.export_onnx(g))
    counts = op_counts(out)
    # the tap leaves through FromBlocked, the end of the net through the blocked pooling
    assert counts[ops.FROM_BLOCKED] == 1 and counts[ops.BLOCKED_GLOBAL_AVERAGE_POOL] == 1
    assert counts[ops.BLOCKED_ENTRY_CONV] == 1 and res.details["layout_conversions"] == 3
    assert {o.name for o in out.graph.output} == {o.name for o in model.graph.output} | {"tap"}

    b = Builder(9)
    y = b.conv(b.conv(b.shift("x", 9), 9, 5), 5, 4)  # two AddressConvs: below MIN_NODES
    out, res = optimise(b.model(y))
    assert ops.BLOCKED_ADDRESS_CONV not in op_counts(out) and res.details["blocked_convs"] == 0

    # the blocked ops have CPU kernels only: a CUDA target keeps the NCHW AddressConvs
    from onnxopt.passes.shift import ShiftPass
    from onnxopt.passmanager import PassContext

    graph = gs.import_onnx(model)
    res = ShiftPass().run(graph, PassContext(options={"custom_ops": True}, target=BUILTIN["cuda"], model=model))
    assert res.details["blocked_convs"] == 0 and res.details["address_convs"] == 4
    assert not [n for n in graph.nodes if n.op == ops.BLOCKED_ADDRESS_CONV]
    # pairs only for one thread by default: a 4-thread target gets the blocked convs unpaired
    for target, pairs in (("mobile-cpu-4", 0), ("mobile-cpu", 4)):
        graph = gs.import_onnx(model)
        res = ShiftPass().run(graph, PassContext(options={"custom_ops": True}, target=BUILTIN[target], model=model))
        assert res.details["blocked_convs"] == 10 and res.details["blocked_pairs"] == pairs


@pytest.mark.slow
def test_shufflenetv2(runtime):
    from onnxopt.models import shufflenetv2

    model = export(shufflenetv2(width=0.5), 64)
    out, res = optimise(model)
    counts = op_counts(out)
    assert not {"Transpose", "Reshape", "Slice", "Shape", ops.ADDRESS_CONV} & set(counts)
    assert res.details["permutations_to_gather"] == 16 and res.details["weights_permuted"] == 5
    assert counts["Gather"] == 26  # two half-size Gathers per stride-1 unit, in place of the shuffle
    out, res = optimise(model, address_permutations=True)
    counts = op_counts(out)
    assert counts[ops.ADDRESS_CONV] == 13 and counts["Gather"] == 13


def test_batch_mixing_reshape_transpose_is_not_a_shuffle():
    """[N,4,5,5] -> Reshape[2,-1,5,5] -> Transpose -> Reshape[-1,4,5,5] permutes channels at N=1 but
    mixes images at N=2: it must be left alone."""
    import onnx_graphsurgeon as gs

    from onnxopt.passes.shift import shuffle_permutation

    x = gs.Variable("x", np.float32, ["N", 4, 5, 5])
    a, b, y = (gs.Variable(n, np.float32) for n in "aby")
    nodes = [gs.Node("Reshape", inputs=[x, gs.Constant("s1", np.array([2, -1, 5, 5], np.int64))], outputs=[a]),
             gs.Node("Transpose", attrs={"perm": [1, 0, 2, 3]}, inputs=[a], outputs=[b]),
             gs.Node("Reshape", inputs=[b, gs.Constant("s2", np.array([-1, 4, 5, 5], np.int64))], outputs=[y])]
    gs.Graph(nodes=nodes, inputs=[x], outputs=[y])
    assert shuffle_permutation(nodes[2]) is None
    x.shape = [1, 4, 5, 5]  # with a fixed batch of 1 it really is a channel permutation
    assert shuffle_permutation(nodes[2]) is not None


def test_no_custom_ops_without_the_library(monkeypatch):
    monkeypatch.setenv("ONNXOPT_OPS_LIBRARY", "/nonexistent")
    b = Builder(9)
    model = b.model(b.conv(b.shift("x", 9), 9, 5))
    out, report = onnxopt.apply(model, passes=["shift"])
    res = report.passes[0]
    assert not any(n.domain == ops.DOMAIN for n in out.graph.node)
    assert any("custom-op library is not installed" in reason for _, reason in res.declined)


def _stem_then_chain(cin=3, strides=(1, 1), relu=True, pads=(1, 1, 1, 1), kernel=3, tap=False, h=9, w=8):
    """x -> Conv kxk (cin -> 16) [-> Relu] -> four shift + 1x1 conv stages (one blocked chain)."""
    b = Builder(cin, h, w, seed=5)
    wt = b.rng.standard_normal((16, cin, kernel, kernel)).astype(np.float32)
    t = b.node("Conv", ["x", b.const(wt), b.const(b.rng.standard_normal(16).astype(np.float32))],
               kernel_shape=[kernel, kernel], pads=list(pads), strides=list(strides))
    if relu:
        t = b.node("Relu", [t])
    outs = [b.node("Sigmoid", [t])] if tap else []
    for _ in range(4):
        t = b.conv(b.shift(t, 16), 16, 16)
    return b.model(t, *outs)


@pytest.mark.parametrize("kw", [{}, {"strides": (2, 2)}, {"relu": False}, {"cin": 28},
                                {"h": 1, "w": 5}])
def test_entry_conv_joins_the_blocked_layout(runtime, kw):
    out, res = optimise(_stem_then_chain(**kw))
    assert res.details["blocked_convs"] == 4 and res.details["entry_convs_blocked"] == 1
    counts = op_counts(out)
    assert "Conv" not in counts and "Relu" not in counts and ops.TO_BLOCKED not in counts
    assert out.graph.node[0].op_type == ops.BLOCKED_ENTRY_CONV and out.graph.node[0].input[0] == "x"


@pytest.mark.parametrize("kw", [{"pads": (0, 0, 0, 0)}, {"pads": (1, 1, 0, 0)}, {"tap": True}, {"cin": 29}])
def test_entry_conv_stays_outside_when_it_is_not_an_address_conv(kw):
    out, res = optimise(_stem_then_chain(**kw))
    assert res.details["blocked_convs"] == 4 and res.details["entry_convs_blocked"] == 0
    assert op_counts(out)["Conv"] == 1
