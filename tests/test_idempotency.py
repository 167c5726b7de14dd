"""Applying twice gives the model applying once gives; dynamic dimensions stay dynamic."""
import numpy as np
import onnx
import pytest
import torch

import onnxopt
from onnxopt.models import export_onnx, mobilenetv2, resnet20, shiftnet, shufflenetv2

from conftest import small_cnn_model

NETS = {
    "small_cnn": lambda: small_cnn_model(),
    "resnet20": lambda: export_onnx(resnet20(), torch.randn(1, 3, 32, 32), dynamic_batch=True, dynamic_hw=True,
                                    fold_constants=False),
    "mobilenetv2": lambda: export_onnx(mobilenetv2(num_classes=10, width_mult=0.25), torch.randn(1, 3, 32, 32),
                                       dynamic_batch=True),
    "shiftnet": lambda: export_onnx(shiftnet(width=8, blocks=(1, 1, 1), shift_scale=True), torch.randn(1, 3, 16, 16),
                                    dynamic_batch=True),
    "shufflenetv2": lambda: export_onnx(shufflenetv2(num_classes=10, width=0.5), torch.randn(1, 3, 32, 32),
                                        dynamic_batch=True),
}


def _fingerprint(model: onnx.ModelProto):
    """Node ops and weights in graph order: what 'the same model' means here (names may differ)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = []
    for n in model.graph.node:
        nodes.append((n.op_type, n.domain, tuple(inits[i].tobytes() if i in inits else "var" for i in n.input),
                      tuple(sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute))))
    return nodes


@pytest.fixture(scope="module", params=sorted(NETS))
def net(request):
    torch.manual_seed(0)
    return request.param, NETS[request.param]()


def test_apply_is_idempotent(net):
    name, model = net
    once, _ = onnxopt.apply(model)
    twice, report = onnxopt.apply(once)
    assert _fingerprint(twice) == _fingerprint(once), name
    assert all(not p.changed for p in report.passes), [p.summary for p in report.passes if p.changed]


def _dims(values):
    return [[d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in values]


def test_dynamic_dims_stay_dynamic(net):
    name, model = net
    out, _ = onnxopt.apply(model)
    assert _dims(out.graph.input) == _dims(model.graph.input)
    for before, after in zip(_dims(model.graph.output), _dims(out.graph.output)):
        assert [d for d in before if isinstance(d, str)] == [d for d in after if isinstance(d, str)] or not before
    batch = 3
    shape = [batch if isinstance(d, str) else d for d in _dims(model.graph.input)[0]]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    feeds = {model.graph.input[0].name: x}
    assert onnxopt.verify(model, out, inputs=feeds).ok
