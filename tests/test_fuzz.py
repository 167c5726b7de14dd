"""Fuzzing `apply` with mutated small models: it succeeds with a verified output or fails cleanly.

Clean failure means exit code 1 (verification) or 2 (bad input) with one line on stderr and
nothing written; exit code 3 (an internal error) or a traceback is a bug.
"""
import os

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxopt.cli import main

from conftest import small_cnn_model

SEED = small_cnn_model()
SEED_BYTES = SEED.SerializeToString()
OPS = ["Relu", "Conv", "Add", "Identity", "Flatten", "Gemm", "BatchNormalization", "Sigmoid", "Concat", "Foo"]
FUZZ = settings(max_examples=int(os.environ.get("ONNXOPT_FUZZ_EXAMPLES", "100")), deadline=None,
                 suppress_health_check=list(HealthCheck), derandomize=True)


def _apply_cleanly(tmp_path, data: bytes, capsys) -> None:
    src, out = tmp_path / "m.onnx", tmp_path / "m.opt.onnx"
    src.write_bytes(data)
    out.unlink(missing_ok=True)
    code = main(["apply", str(src), "-o", str(out)])
    _, err = capsys.readouterr()
    assert code in (0, 1, 2), err
    assert "Traceback" not in err
    if code == 0:
        assert out.exists()
        assert main(["verify", str(src), str(out)]) == 0
        capsys.readouterr()
    else:
        assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files left


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(SEED_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_flips(tmp_path_factory, capsys, flips):
    data = bytearray(SEED_BYTES)
    for pos, value in flips:
        data[pos] = value
    _apply_cleanly(tmp_path_factory.mktemp("flip"), bytes(data), capsys)


@FUZZ
@given(st.integers(0, len(SEED_BYTES)))
def test_truncation(tmp_path_factory, capsys, cut):
    _apply_cleanly(tmp_path_factory.mktemp("cut"), SEED_BYTES[:cut], capsys)


@FUZZ
@given(st.data())
def test_structural_mutations(tmp_path_factory, capsys, data):
    m = onnx.ModelProto()
    m.CopyFrom(SEED)
    nodes = m.graph.node
    for _ in range(data.draw(st.integers(1, 3))):
        node = nodes[data.draw(st.integers(0, len(nodes) - 1))]
        kind = data.draw(st.sampled_from(["op", "input", "attr", "dim", "drop", "init"]))
        if kind == "op":
            node.op_type = data.draw(st.sampled_from(OPS))
        elif kind == "input" and node.input:
            names = [t.name for t in m.graph.initializer] + [o for n in nodes for o in n.output] + ["x", "", "ghost"]
            node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(st.sampled_from(names))
        elif kind == "attr":
            node.attribute.append(helper.make_attribute(data.draw(st.sampled_from(["pads", "strides", "group", "axis"])),
                                                        data.draw(st.sampled_from([0, 2, -1, [0, 0], [2, 2, 2, 2]]))))
        elif kind == "dim":
            dim = m.graph.input[0].type.tensor_type.shape.dim[data.draw(st.integers(0, 3))]
            dim.dim_value = data.draw(st.sampled_from([0, 1, 2, 7, 1 << 40]))
        elif kind == "drop":
            del nodes[data.draw(st.integers(0, len(nodes) - 1))]
        elif kind == "init":
            t = m.graph.initializer[data.draw(st.integers(0, len(m.graph.initializer) - 1))]
            t.dims[0] = data.draw(st.sampled_from([0, 1, 3, 9]))
    _apply_cleanly(tmp_path_factory.mktemp("mut"), m.SerializeToString(), capsys)
