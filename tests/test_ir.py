"""IR helpers: loading (and every way it can fail), graph round trip, atomic save, IR version."""
import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import ir
from onnxopt.errors import OnnxoptError

from conftest import make_model


def test_load_round_trip(tiny_path, tiny_model):
    m = ir.load_model(tiny_path)
    assert m.graph.node[0].op_type == "Conv"
    assert ir.load_model(tiny_model) is tiny_model


@pytest.mark.parametrize("content,needle", [
    (b"", "no graph"),
    (b"\x00\x01garbage\xff" * 10, "not an ONNX model"),
    (helper.make_tensor("t", TensorProto.FLOAT, [1], [1.0]).SerializeToString(), "not an ONNX model"),
])
def test_load_rejects_non_models(tmp_path, content, needle):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(OnnxoptError, match=needle):
        ir.load_model(p)


def test_load_missing_and_folder(tmp_path):
    with pytest.raises(OnnxoptError, match="no such file"):
        ir.load_model(tmp_path / "missing.onnx")
    with pytest.raises(OnnxoptError, match="not a regular file"):
        ir.load_model(tmp_path)


def test_load_truncated(tmp_path, tiny_model):
    data = tiny_model.SerializeToString()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxoptError):
        ir.load_model(p)


def test_external_data_outside_folder_refused(tmp_path, tiny_model):
    m = onnx.ModelProto()
    m.CopyFrom(tiny_model)
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    del w.float_data[:]
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../outside.bin")
    p = tmp_path / "ext.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(OnnxoptError, match="outside the model's folder"):
        ir.load_model(p)
    w.external_data[0].value = "missing.bin"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(OnnxoptError, match="missing"):
        ir.load_model(p)


def test_graph_round_trip_keeps_opsets_and_fits_ir(tiny_model):
    tiny_model.ir_version = onnx.IR_VERSION
    tiny_model.metadata_props.add(key="k", value="v")
    g = ir.to_graph(tiny_model)
    assert isinstance(g, gs.Graph)
    out = ir.to_model(g, tiny_model)
    assert {o.domain: o.version for o in out.opset_import}[""] == 17
    assert out.ir_version == ir.runtime_max_ir_version() <= onnx.IR_VERSION
    assert out.metadata_props[0].key == "k"
    onnx.checker.check_model(out)


def test_save_is_atomic_and_leaves_no_temp(tmp_path, tiny_model):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    ir.save_model(tiny_model, target)
    assert onnx.load(target).graph.node[0].op_type == "Conv"
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_save_refuses_bad_targets(tmp_path, tiny_model):
    with pytest.raises(OnnxoptError, match="does not exist"):
        ir.save_model(tiny_model, tmp_path / "no" / "x.onnx")
    with pytest.raises(OnnxoptError, match="is a folder"):
        ir.save_model(tiny_model, tmp_path)


def test_const_value_reads_initializers_and_constant_nodes():
    c = gs.Constant("c", np.arange(3, dtype=np.float32))
    assert ir.const_value(c).tolist() == [0, 1, 2]
    out = gs.Variable("v")
    gs.Node("Constant", attrs={"value": gs.Constant("k", np.ones(2, np.float32))}, outputs=[out])
    assert ir.const_value(out).tolist() == [1, 1]
    out2 = gs.Variable("w")
    gs.Node("Constant", attrs={"value_ints": [4, 5]}, outputs=[out2])
    assert ir.const_value(out2).tolist() == [4, 5]
    assert ir.const_value(gs.Variable("x")) is None


def test_replace_tensor_rewires_consumers_and_outputs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    m = make_model([helper.make_node("Identity", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])], [x], [y])
    g = ir.to_graph(m)
    t = g.tensors()["t"]
    relu = ir.consumers(t)[0]
    ir.replace_tensor(t, g.inputs[0], g)
    assert relu.inputs[0] is g.inputs[0]
    assert [n.op for n in ir.nodes_of(g, "Relu")] == ["Relu"]


@pytest.mark.parametrize("nodes,needle", [
    ([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
      helper.make_node("Relu", ["b"], ["y"])], "cycle"),
    ([helper.make_node("Relu", ["nowhere"], ["y"])], "reads 'nowhere', which nothing produces"),
    ([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["y"])], "produced by two nodes"),
    ([helper.make_node("Relu", ["x"], ["z"])], "graph output 'y' is never produced"),
])
def test_invalid_graphs_are_refused_in_one_line(nodes, needle):
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(OnnxoptError, match=needle) as info:
        ir.load_model(m)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dims,needle", [([1 << 30, 1 << 10], "declares"), ([4, -1], "negative dimension")])
def test_initializer_data_must_match_its_dims(tiny_model, dims, needle):
    w = tiny_model.graph.initializer[0]
    del w.dims[:]
    w.dims.extend(dims)
    with pytest.raises(OnnxoptError, match=needle):
        ir.load_model(tiny_model)


def test_zero_size_initializer_is_fine(tiny_model):
    tiny_model.graph.initializer.append(numpy_helper.from_array(np.zeros((0, 3), np.float32), "empty"))
    assert ir.load_model(tiny_model) is tiny_model


def test_distinct_tensors_with_one_name_are_renamed_on_export(tiny_model):
    g = ir.to_graph(tiny_model)
    conv = g.nodes[0]
    # a pass that names a new weight after an unnamed node, twice
    conv.inputs[1] = gs.Constant("/W", conv.inputs[1].values * 2)
    x = g.inputs[0]
    y2 = gs.Variable("y2", dtype=np.float32)
    g.nodes.append(gs.Node("Conv", inputs=[x, gs.Constant("/W", conv.inputs[1].values * 3), conv.inputs[2]],
                           outputs=[y2], attrs=dict(conv.attrs)))
    g.outputs.append(y2)
    assert ir.uniquify_names(g) == 1
    model = ir.to_model(g, tiny_model)
    assert sorted(t.name for t in model.graph.initializer) == ["/W", "/W_1", "B"]
    assert [o.name for o in model.graph.output] == ["y", "y2"]
