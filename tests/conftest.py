"""Shared fixtures: tiny models built in code."""
from __future__ import annotations

import os

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


def small_cnn_model(seed=0):
    """Conv-BN-Relu -> Conv (+ residual Add) -> GlobalAveragePool -> Flatten -> Gemm: every pass has work."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, positive=False):
        a = rng.standard_normal(shape).astype(np.float32)
        return numpy_helper.from_array(np.abs(a) + 0.5 if positive else a, name)

    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w1[[1, 5]] = 0
    inits = [numpy_helper.from_array(w1, "w1"), init("b1", 8), init("g", 8, positive=True), init("beta", 8),
             init("mean", 8), init("var", 8, positive=True), init("w2", 8, 8, 1, 1), init("b2", 8),
             init("fc_w", 10, 8), init("fc_b", 10)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Latency tables and other caches go to a temporary folder, not the user's ~/.cache."""
    old = os.environ.get("ONNXOPT_CACHE")
    os.environ["ONNXOPT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("ONNXOPT_CACHE", None)
    else:
        os.environ["ONNXOPT_CACHE"] = old
