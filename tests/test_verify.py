"""Verification: the tolerance rule, NaN/shape handling, random and given inputs, failing when it should."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxopt.errors import OnnxoptError
from onnxopt.verify import compare, load_inputs, make_inputs, verify_models

from conftest import conv_relu_model


def test_tolerance_is_relative_to_magnitude():
    ref = [np.array([1000.0, -2000.0], np.float32)]
    assert compare(["y"], ref, [ref[0] + 0.01], rtol=1e-5).ok  # 0.01 <= 1e-5 * 2000 + atol
    assert not compare(["y"], ref, [ref[0] + 0.1], rtol=1e-5).ok
    small = [np.array([1e-3], np.float32)]
    r = compare(["y"], small, [small[0] * 1.01], rtol=1e-5)
    assert not r.ok and r.max_rel == pytest.approx(0.01, rel=1e-3)


def test_nan_inf_shape_dtype_mismatches_fail():
    a = np.array([np.nan, np.inf, 1.0], np.float32)
    assert compare(["y"], [a], [a.copy()]).ok
    assert not compare(["y"], [a], [np.array([0, np.inf, 1.0], np.float32)]).ok
    assert compare(["y"], [a], [a[:2]]).worst().reason.startswith("shape")
    assert compare(["y"], [a], [a.astype(np.float64)]).worst().reason.startswith("dtype")
    assert not compare(["y", "z"], [a, a], [a]).ok


def test_make_inputs_resolves_dynamic_dims(tiny_model):
    feeds = make_inputs(tiny_model)
    assert feeds["x"].shape == (1, 3, 8, 8) and feeds["x"].dtype == np.float32
    assert make_inputs(tiny_model, {"x": [2, 3, 8, 8]})["x"].shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(make_inputs(tiny_model)["x"], feeds["x"])  # seeded


def test_make_inputs_refuses_huge_declared_dims():
    m = conv_relu_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 1 << 20
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 1 << 20
    with pytest.raises(OnnxoptError, match="too large"):
        make_inputs(m)


def test_identical_models_match_and_changed_weights_fail():
    a = conv_relu_model()
    b = onnx.ModelProto()
    b.CopyFrom(a)
    assert verify_models(a, b).ok
    w = numpy_helper.to_array(b.graph.initializer[0]).copy()
    w[0, 0, 0, 0] += 1e-2
    b.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    result = verify_models(a, b)
    assert not result.ok and result.worst().name == "y"


def test_load_inputs_npz(tmp_path, tiny_model):
    p = tmp_path / "in.npz"
    np.savez(p, anything=np.ones((2, 3, 8, 8), np.float32))
    assert load_inputs(p, tiny_model)["x"].shape == (2, 3, 8, 8)
    with pytest.raises(OnnxoptError, match="no such file"):
        load_inputs(tmp_path / "missing.npz", tiny_model)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(OnnxoptError, match="not a readable"):
        load_inputs(tmp_path / "bad.npz", tiny_model)


def test_unrunnable_model_is_a_clean_error(tiny_model):
    bad = onnx.ModelProto()
    bad.CopyFrom(tiny_model)
    bad.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(OnnxoptError, match="onnxruntime cannot run"):
        verify_models(tiny_model, bad)
