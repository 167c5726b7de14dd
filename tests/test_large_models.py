"""Models past protobuf's 2 GB limit: external data on load, in sessions and on save.

The mechanism is tested on small models by lowering the limits; a real > 2 GB model runs when
``ONNXOPT_BIG_TESTS=1`` (it needs ~10 GB of memory and ~5 GB of disk).
"""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt
import onnxopt.runtime as rt
from onnxopt import ir

from conftest import make_model


def _gemm_model(rows: int, cols: int) -> onnx.ModelProto:
    w = np.linspace(-1, 1, rows * cols, dtype=np.float32).reshape(rows, cols)
    nodes = [helper.make_node("Identity", ["x"], ["xi"]), helper.make_node("Gemm", ["xi", "W"], ["y"], transB=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cols])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", rows])],
                      [numpy_helper.from_array(w, "W")])


def test_external_data_round_trip_with_small_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(ir, "EXTERNAL_DATA_THRESHOLD", 100)
    monkeypatch.setattr(rt, "_PROTOBUF_LIMIT", 100)
    model = _gemm_model(16, 32)
    src = tmp_path / "big.onnx"
    ir.save_model(model, src)
    assert (tmp_path / "big.onnx.data").stat().st_size == 16 * 32 * 4
    assert model.graph.initializer[0].data_location == TensorProto.DEFAULT  # caller's model untouched
    out = tmp_path / "out" / "big.opt.onnx"
    out.parent.mkdir()
    optimised, report = onnxopt.apply(src, output=out)
    assert report.verification.ok and (out.parent / "big.opt.onnx.data").exists()
    reloaded = ir.load_model(out)
    np.testing.assert_array_equal(numpy_helper.to_array(reloaded.graph.initializer[0]),
                                  numpy_helper.to_array(model.graph.initializer[0]))
    assert [f for f in os.listdir(out.parent) if f.startswith(".")] == []


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ONNXOPT_BIG_TESTS") != "1", reason="set ONNXOPT_BIG_TESTS=1 (needs ~16 GB RAM)")
def test_real_model_over_2gb(tmp_path):
    # Two 1.1 GB weights: the model is past protobuf's 2 GB limit, each tensor below it (a single
    # tensor over 2 GB cannot be held in a TensorProto message at all).
    cols = 69_000_000
    weights = [numpy_helper.from_array(np.full((4, cols), 0.5 + i, np.float32), f"W{i}") for i in range(2)]
    nodes = [helper.make_node("Identity", ["x"], ["xi"]),
             helper.make_node("Gemm", ["xi", "W0"], ["a"], transB=1), helper.make_node("Gemm", ["xi", "W1"], ["b"], transB=1),
             helper.make_node("Add", ["a", "b"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cols])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], weights)
    del weights
    src = tmp_path / "huge.onnx"
    ir.save_model(model, src)
    del model
    optimised, report = onnxopt.apply(src, output=tmp_path / "huge.opt.onnx")
    assert report.verification.ok and (tmp_path / "huge.opt.onnx.data").stat().st_size > 2**31
    assert [n.op_type for n in optimised.graph.node].count("Identity") == 0
