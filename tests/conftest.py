"""Shared fixtures: tiny models built in code."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8, functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], functions=list(functions))
    model.ir_version = ir_version
    return model


def conv_relu_model(zero_filters=(2,), cout=8, dynamic_batch=True):
    """x[N,3,8,8] -> Conv 3x3 pad 1 (cout filters, some zeroed) -> Relu -> y."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((cout, 3, 3, 3)).astype(np.float32)
    w[list(zero_filters)] = 0
    b = rng.standard_normal(cout).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c"], ["y"], name="relu1")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N" if dynamic_batch else 1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return make_model(nodes, [x], [y], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])


@pytest.fixture
def tiny_model():
    return conv_relu_model()


@pytest.fixture
def tiny_path(tmp_path, tiny_model):
    p = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, p)
    return p
