"""Tests for onnxopt.models: builders, pruning helpers, ONNX export and the bundled example."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from onnxopt.errors import OnnxoptError  # noqa: E402
from onnxopt.models import (BUILDERS, Shift, export_onnx, mobilenetv2, prune, residual_producers,  # noqa: E402
                            resnet18, resnet20, resnet50, shiftnet, weightalign_resnet, zero_block_inner,
                            zero_bottleneck_inner, zero_channels, zero_mobilenet_expansion, zero_random_channels,
                            zero_residual_stage, zero_vgg)
from onnxopt.models import make_examples  # noqa: E402
from onnxopt.models.weightalign import NormalizedConv2d  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "models" / "examples" / "resnet20_pruned.onnx"

#: Small configurations of every builder, with an input size they run on.
SMALL = {
    "resnet20": ({}, 32),
    "resnet56": ({"width": 8}, 32),
    "resnet18": ({"num_classes": 10, "width": 16}, 64),
    "resnet50": ({"num_classes": 10, "width": 16}, 64),
    "vgg16": ({"num_classes": 10, "width": 0.125, "pool_size": 1, "hidden": 64}, 32),
    "alexnet": ({"num_classes": 10, "width": 0.25, "pool_size": 1, "hidden": 64}, 64),
    "mobilenetv2": ({"num_classes": 10, "width_mult": 0.25}, 32),
    "shufflenetv2": ({"num_classes": 10, "width": 0.5}, 32),
    "shiftnet": ({"width": 18}, 32),
    "weightalign_resnet": ({"width": 8}, 32),
}


def build(name: str, **overrides) -> tuple[nn.Module, torch.Tensor]:
    kwargs, size = SMALL[name]
    model = BUILDERS[name](**{**kwargs, **overrides})
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def forward(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def run_ort(proto: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))


def initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


# --- builders ----------------------------------------------------------------------------------

def test_builders_cover_the_documented_names():
    assert set(BUILDERS) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_builder_runs_forward_in_eval_mode(name):
    model, x = build(name)
    y = forward(model, x)
    assert not model.training
    assert y.shape == (2, 10)
    assert np.isfinite(y).all()


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "shiftnet"])
def test_builder_is_deterministic_per_seed(name):
    a, x = build(name, seed=3)
    b, _ = build(name, seed=3)
    c, _ = build(name, seed=4)
    np.testing.assert_array_equal(forward(a, x), forward(b, x))
    assert not np.array_equal(forward(a, x), forward(c, x))


def test_resnet50_inner_width_narrows_only_bottleneck_inner_channels():
    full, narrow = resnet50(width=16), resnet50(width=16, inner_width=0.5)
    for fb, nb in zip(full.layer2, narrow.layer2):
        assert nb.conv1.out_channels == nb.conv2.out_channels == fb.conv1.out_channels // 2
        assert nb.conv3.out_channels == fb.conv3.out_channels


def test_resnet18_inner_width_narrows_first_conv_of_each_block():
    block = resnet18(width=16, inner_width=0.25).layer3[0]
    assert block.conv1.out_channels == 16 and block.conv2.out_channels == 64


def test_mobilenetv2_expand_ratio_override():
    narrow = mobilenetv2(width_mult=0.5, expand_ratio=2)
    per_block = mobilenetv2(width_mult=0.5, expand_ratio={3: 3})
    assert narrow.features[2].conv[0][0].out_channels == 2 * narrow.features[2].conv[0][0].in_channels
    assert len(narrow.features[1].conv) == 3  # the t=1 block keeps no expansion conv
    block = per_block.features[4].conv[0][0]
    assert block.out_channels == 3 * block.in_channels


def test_shift_kernels_are_frozen_one_hot_in_nine_groups():
    shift = shiftnet(width=18).layer1[0].shift
    w = shift.weight.detach()
    assert shift.groups == shift.in_channels and shift.padding == (1, 1) and shift.bias is None
    assert not shift.weight.requires_grad
    assert ((w != 0).sum(dim=(1, 2, 3)) == 1).all() and (w.sum(dim=(1, 2, 3)) == 1).all()
    taps = w.reshape(w.shape[0], 9).argmax(1)
    assert set(taps.tolist()) == set(range(9))


def test_shift_moves_each_channel_with_zero_fill():
    shift = Shift(9)
    x = torch.randn(1, 9, 5, 5)
    with torch.no_grad():
        y = shift(x)
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    for c, (ky, kx) in enumerate(shift.offsets):
        torch.testing.assert_close(y[0, c], padded[0, c, ky:ky + 5, kx:kx + 5])


def test_shift_scale_gives_non_unit_one_hot_values_and_bias():
    shift = shiftnet(width=18, shift_scale=True, shift_bias=True).layer1[0].shift
    w = shift.weight.detach()
    values = w.sum(dim=(1, 2, 3))
    assert ((w != 0).sum(dim=(1, 2, 3)) == 1).all()
    assert (values != 1).all() and (values >= 0.5).all() and (values <= 1.5).all()
    assert shift.bias is not None and (shift.bias != 0).any()


def test_with_shift_false_deletes_the_shift():
    model = shiftnet(width=18, with_shift=False)
    assert not any(isinstance(m, Shift) for m in model.modules())
    assert model.layer1[0].conv2.in_channels == shiftnet(width=18).layer1[0].conv2.in_channels


@pytest.mark.parametrize("variant", ["ws", "scaled_ws", "weightalign"])
def test_weight_normalisation_per_filter(variant):
    model = weightalign_resnet(width=8, variant=variant)
    conv = model.layer2[0].conv1
    w = conv.normalized_weight().detach().flatten(1).double()
    fan_in = w.shape[1]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(w.mean(1), torch.zeros(w.shape[0], dtype=torch.double), atol=1e-6, rtol=0)
    if variant == "ws":
        torch.testing.assert_close(w.std(1), torch.ones_like(w[:, 0]), atol=1e-3, rtol=0)
    else:
        expected = conv.gain.detach().flatten().double() ** 2
        torch.testing.assert_close(w.var(1, unbiased=False) * fan_in, expected, atol=1e-3, rtol=1e-3)


def test_weightalign_rejects_unknown_variant():
    with pytest.raises(ValueError, match="unknown weight normalisation"):
        NormalizedConv2d(3, 4, 3, variant="bogus")


# --- pruning -------------------------------------------------------------------------------------

def conv_bn(seed: int = 0) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(seed)
    conv, bn = nn.Conv2d(4, 8, 3, bias=True), nn.BatchNorm2d(8)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, 0.1, 0.2)
    return conv, bn


@pytest.mark.parametrize("keep_beta", [False, True])
def test_zero_channels_exact_leaves_exact_zeros(keep_beta):
    conv, bn = conv_bn()
    before_w, before_beta = conv.weight.detach().clone(), bn.bias.detach().clone()
    idx = zero_channels(conv, bn, [5, 1], mode="exact", keep_beta=keep_beta)
    rest = [i for i in range(8) if i not in idx]
    assert idx == [1, 5]
    assert (conv.weight[idx] == 0).all() and (conv.bias[idx] == 0).all() and (bn.weight[idx] == 0).all()
    assert torch.equal(bn.bias[idx], before_beta[idx]) if keep_beta else (bn.bias[idx] == 0).all()
    assert torch.equal(conv.weight[rest], before_w[rest]) and (bn.weight[rest] != 0).all()


def test_zero_channels_near_leaves_small_nonzero_values_and_keeps_beta():
    conv, bn = conv_bn()
    before_w, before_beta = conv.weight.detach().clone(), bn.bias.detach().clone()
    idx = zero_channels(conv, bn, [2], mode="near", scale=1e-6)
    w, gamma = conv.weight[idx].detach(), bn.weight[idx].detach()
    assert (w != 0).all() and (w.abs() <= 1e-6 * before_w[idx].abs().max() * 1.0001).all()
    assert (gamma != 0).all() and (gamma.abs() <= 2e-6).all()
    assert torch.equal(bn.bias, before_beta)


def test_zero_channels_rejects_unknown_mode():
    with pytest.raises(ValueError):
        zero_channels(*conv_bn(), [0], mode="approx")


def assert_zeroed(model: nn.Module, zeroed: dict[str, list[int]]) -> None:
    modules = dict(model.named_modules())
    for name, idx in zeroed.items():
        w = modules[name].weight.detach()
        assert (w[idx] == 0).all(), name
        live = [i for i in range(w.shape[0]) if i not in idx]
        assert (w[live].flatten(1).abs().sum(1) > 0).all(), name


def test_zero_bottleneck_inner_zeroes_conv1_and_conv2_of_every_bottleneck():
    model = resnet50(width=16)
    zeroed = zero_bottleneck_inner(model, 0.25, seed=0)
    assert len(zeroed) == 2 * 16
    assert all(n.endswith(("conv1", "conv2")) and n.startswith("layer") for n in zeroed)
    assert all(len(idx) == round(0.25 * dict(model.named_modules())[n].out_channels) for n, idx in zeroed.items())
    assert_zeroed(model, zeroed)
    assert np.isfinite(forward(model, torch.randn(1, 3, 64, 64))).all()


def test_zero_block_inner_near_mode_on_cifar_resnet_keeps_small_filters_and_beta():
    model = resnet20()
    betas = {n: m.bias.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    zeroed = zero_block_inner(model, 0.5, seed=0, mode="near")
    modules = dict(model.named_modules())
    assert sorted(zeroed) == sorted(f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))
    for name, idx in zeroed.items():
        w, bn = modules[name].weight.detach()[idx], modules[name.replace("conv1", "bn1")]
        assert (w != 0).all() and (w.abs() < 1e-5).all()
        assert (bn.weight[idx] != 0).all() and (bn.weight[idx].abs() < 2e-6).all()
        assert torch.equal(bn.bias.detach(), betas[name.replace("conv1", "bn1")])


def test_zero_vgg_zeroes_every_conv_but_the_last():
    model, _ = build("vgg16")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    zeroed = zero_vgg(model, 0.5, seed=0)
    assert sorted(zeroed) == sorted(convs[:-1])
    assert_zeroed(model, zeroed)


@pytest.mark.parametrize("include_depthwise", [False, True])
def test_zero_mobilenet_expansion(include_depthwise):
    model = mobilenetv2(width_mult=0.5)
    zeroed = zero_mobilenet_expansion(model, 0.5, seed=0, include_depthwise=include_depthwise)
    expanding = [b for b in model.features if hasattr(b, "use_res") and len(b.conv) == 4]
    assert len(zeroed) == len(expanding) * (2 if include_depthwise else 1)
    assert_zeroed(model, zeroed)
    first = expanding[0]
    names = {m: n for n, m in model.named_modules()}
    idx = zeroed[names[first.conv[0][0]]]
    assert (first.conv[0][1].weight[idx] == 0).all() and (first.conv[0][1].bias[idx] == 0).all()
    if include_depthwise:
        assert zeroed[names[first.conv[1][0]]] == idx


@pytest.mark.parametrize("builder, stage, producers", [
    (lambda: resnet20(), 1, 4),  # three blocks' conv2 and the stem
    (lambda: resnet20(), 2, 4),  # three blocks' conv2 and one shortcut
    (lambda: resnet18(width=16), 3, 3),
    (lambda: resnet50(width=16), 1, 4),  # three blocks' conv3 and one downsample
    (lambda: shiftnet(width=18), 2, 4),
])
def test_zero_residual_stage_is_coupled_and_kills_the_stream(builder, stage, producers):
    model = builder()
    zeroed = zero_residual_stage(model, stage, 0.25, seed=5)
    indices = list(zeroed.values())
    assert len(zeroed) == producers and all(idx == indices[0] for idx in indices) and indices[0]
    assert_zeroed(model, zeroed)
    outputs = []
    hooks = [blk.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for blk in
             getattr(model, f"layer{stage}")]
    model(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert all((out[:, indices[0]] == 0).all() for out in outputs)
    assert all((out.abs().sum((0, 2, 3)) > 0).sum() > 0 for out in outputs)


def test_residual_producers_refuses_a_stage_fed_by_the_previous_stage():
    model = resnet20()
    model.layer2[0].shortcut = nn.Sequential()
    with pytest.raises(ValueError, match="identity shortcut"):
        residual_producers(model, 2)


def test_zero_random_channels_covers_every_dense_conv():
    model, x = build("shufflenetv2")
    zeroed = zero_random_channels(model, 0.5, seed=0)
    dense = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}
    assert set(zeroed) == dense
    assert_zeroed(model, zeroed)
    assert zeroed != zero_random_channels(build("shufflenetv2")[0], 0.5, seed=1)


def test_conv_bn_pairs_pairs_each_conv_with_its_following_bn():
    pairs = {name: bn for name, _, bn in prune.conv_bn_pairs(resnet20())}
    modules = dict(resnet20().named_modules())
    assert pairs["layer2.0.shortcut.0"] is not None
    assert pairs["layer1.0.conv2"].num_features == modules["layer1.0.conv2"].out_channels


# --- export --------------------------------------------------------------------------------------

@pytest.mark.parametrize("exporter, opset, dynamic_batch", [
    ("torchscript", 13, False), ("torchscript", 17, True), ("dynamo", 18, False), ("dynamo", 21, True)])
def test_export_resnet20_matches_torch(exporter, opset, dynamic_batch):
    model, x = build("resnet20")
    proto = export_onnx(model, x[:1], exporter=exporter, opset=opset, dynamic_batch=dynamic_batch)
    assert next(o.version for o in proto.opset_import if o.domain == "") == opset
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert (batch_dim.dim_param != "") == dynamic_batch
    x_run = x if dynamic_batch else x[:1]
    assert_close(run_ort(proto, x_run), forward(model, x_run))


@pytest.mark.parametrize("name, exporter, opset", [
    ("mobilenetv2", "torchscript", 13), ("alexnet", "torchscript", 17), ("vgg16", "dynamo", 18),
    ("shiftnet", "dynamo", 21)])
def test_export_other_nets_match_torch(name, exporter, opset):
    model, x = build(name)
    assert_close(run_ort(export_onnx(model, x, exporter=exporter, opset=opset), x), forward(model, x))


@pytest.mark.parametrize("exporter, opset", [("torchscript", 17), ("dynamo", 18)])
def test_export_dynamic_hw_runs_other_sizes(exporter, opset):
    model, x = build("resnet20")
    proto = export_onnx(model, x, exporter=exporter, opset=opset, dynamic_batch=True, dynamic_hw=True)
    x48 = torch.randn(3, 3, 48, 40)
    assert_close(run_ort(proto, x48), forward(model, x48))


def test_export_saves_a_loadable_file(tmp_path):
    model, x = build("resnet20")
    path = tmp_path / "m.onnx"
    proto = export_onnx(model, x, path, exporter="torchscript", opset=17)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded)
    assert loaded.ir_version == proto.ir_version <= 11


def test_export_puts_model_in_eval_mode():
    model, x = build("resnet20")
    model.train()
    proto = export_onnx(model, x)
    assert not model.training
    assert_close(run_ort(proto, x), forward(model, x))


@pytest.mark.parametrize("exporter, opset", [("dynamo", 17), ("torchscript", 12), ("torchscript", 22), ("jit", 17)])
def test_export_refuses_what_it_cannot_honour(exporter, opset):
    model, x = build("resnet20")
    with pytest.raises(OnnxoptError):
        export_onnx(model, x, exporter=exporter, opset=opset)


def weight_rooted_ops(proto: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    """Nodes of ``op_type`` whose inputs trace back only to initializers and constants."""
    const = {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" or (node.input and all(i in const or i == "" for i in node.input)):
            const.update(node.output)
    return [n for n in proto.graph.node if n.op_type == op_type and n.input[0] in const]


@pytest.mark.parametrize("exporter, opset", [("torchscript", 17), ("dynamo", 18)])
def test_weightalign_export_keeps_normalisation_chain_on_weights(exporter, opset):
    model, x = build("weightalign_resnet", variant="weightalign")
    proto = export_onnx(model, x, exporter=exporter, opset=opset)
    ops = {n.op_type for n in proto.graph.node}
    assert weight_rooted_ops(proto, "ReduceMean") and {"Sub", "Pow", "Sqrt", "Div"} <= ops
    assert_close(run_ort(proto, x), forward(model, x))


def test_shiftnet_export_has_one_hot_depthwise_conv():
    model, x = build("shiftnet")
    proto = export_onnx(model, x, opset=17)
    inits = initializers(proto)
    one_hot = []
    for node in proto.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = inits.get(node.input[1]) if node.op_type == "Conv" else None
        if w is not None and group > 1 and group == w.shape[0] and w.shape[1:] == (1, 3, 3):
            one_hot.append(((w != 0).sum((1, 2, 3)) == 1).all() and (w.sum((1, 2, 3)) == 1).all())
    assert one_hot and all(one_hot)
    assert_close(run_ort(proto, x), forward(model, x))


def test_shufflenet_export_has_reshape_transpose_reshape():
    model, x = build("shufflenetv2")
    proto = export_onnx(model, x, opset=17)
    producer = {o: n for n in proto.graph.node for o in n.output}
    shuffles = [n for n in proto.graph.node if n.op_type == "Reshape"
                and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "Transpose"
                and producer[producer[n.input[0]].input[0]].op_type == "Reshape"]
    assert len(shuffles) == 16
    assert_close(run_ort(proto, x), forward(model, x))


# --- bundled example -----------------------------------------------------------------------------

def test_bundled_example_loads_runs_and_has_zero_filters():
    proto = onnx.load(str(EXAMPLE))
    assert EXAMPLE.stat().st_size < 1_500_000
    assert next(o.version for o in proto.opset_import if o.domain == "") == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    inits = initializers(proto)
    zero_filters = [int((np.abs(inits[n.input[1]]).reshape(inits[n.input[1]].shape[0], -1).sum(1) == 0).sum())
                    for n in proto.graph.node if n.op_type == "Conv"]
    assert sum(z > 0 for z in zero_filters) >= 9 and max(zero_filters) >= 8
    y = run_ort(proto, torch.randn(4, 3, 32, 32))
    assert y.shape == (4, 10) and np.isfinite(y).all()


def test_make_examples_reproduces_the_bundled_file(tmp_path):
    """Same graph and the same zero filters; weights equal up to float rounding (torch's CPU kernels
    round differently across CPU families, so the bytes can differ in the last bits)."""
    assert make_examples.main([str(tmp_path)]) == 0
    made, bundled = onnx.load(str(tmp_path / "resnet20_pruned.onnx")), onnx.load(str(EXAMPLE))
    assert made.graph.node == bundled.graph.node
    assert made.graph.input == bundled.graph.input and made.graph.output == bundled.graph.output
    a, b = initializers(made), initializers(bundled)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape and a[name].dtype == b[name].dtype, name
        assert ((a[name] == 0) == (b[name] == 0)).all(), name
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)
