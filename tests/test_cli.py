"""The CLI: apply/inspect/verify output and exit codes, bad input as one line, nothing written on failure."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxopt.cli import main


def run(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_apply_writes_default_output_and_report(capsys, tiny_path, tmp_path):
    code, out, err = run(capsys, "apply", tiny_path, "--report", tmp_path / "r.json")
    assert code == 0, err
    assert (tmp_path / "tiny.opt.onnx").exists()
    assert "verification: 1 output(s)" in out and "OK" in out and "conv/gemm MACs" in out
    assert json.loads((tmp_path / "r.json").read_text())["verification"]["ok"]


def test_apply_never_overwrites_input_by_default(capsys, tiny_path):
    before = tiny_path.read_bytes()
    assert run(capsys, "apply", tiny_path)[0] == 0
    assert tiny_path.read_bytes() == before


@pytest.mark.parametrize("make_bad,needle", [
    (lambda p: p.write_bytes(b"\x08\x07\x12garbage\xff\xff"), "not an ONNX model"),
    (lambda p: p.write_text("hello, I am a text file"), "not an ONNX model"),
    (lambda p: None, "no such file"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, make_bad, needle):
    p = tmp_path / "bad.onnx"
    make_bad(p)
    code, out, err = run(capsys, "apply", p)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "bad.opt.onnx").exists()


@pytest.mark.parametrize("target", ["parent_is_file", "proc", "read_only_dir"])
def test_unwritable_output_exits_2(capsys, tiny_path, tmp_path, target):
    if target == "parent_is_file":
        out = tiny_path / "x.onnx"
    elif target == "proc":
        out = "/proc/onnxopt-test.onnx"  # writes fail even for root
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out = ro / "x.onnx"
    code, _, err = run(capsys, "apply", tiny_path, "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not os.path.exists(out)


def test_unknown_pass_and_bad_shape_option(capsys, tiny_path):
    code, _, err = run(capsys, "apply", tiny_path, "--passes", "nonsense")
    assert code == 2 and "unknown pass 'nonsense'" in err
    code, _, err = run(capsys, "apply", tiny_path, "--input-shape", "x=1,3")
    assert code == 2 and "--input-shape" in err


def test_inspect_text_and_json(capsys, tiny_path):
    code, out, _ = run(capsys, "inspect", tiny_path)
    assert code == 0 and "zeroed filters (strip opportunity): 1" in out and "conv1" in out
    code, out, _ = run(capsys, "inspect", tiny_path, "--json")
    info = json.loads(out)
    assert info["layers"][0]["zero_filters"] == 1 and info["macs"] == 8 * 64 * 27


def test_verify_exit_codes(capsys, tiny_path, tmp_path):
    assert run(capsys, "verify", tiny_path, tiny_path)[0] == 0
    m = onnx.load(tiny_path)
    w = numpy_helper.to_array(m.graph.initializer[0]) * 1.1
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w.astype(np.float32), "W"))
    other = tmp_path / "other.onnx"
    onnx.save(m, other)
    code, out, _ = run(capsys, "verify", tiny_path, other)
    assert code == 1 and "MISMATCH" in out and "y:" in out


def test_console_script_is_installed(tiny_path):
    r = subprocess.run([sys.executable, "-m", "onnxopt.cli", "inspect", str(tiny_path)], capture_output=True, text=True)
    assert r.returncode == 0 and "Conv 1" in r.stdout


def test_bench_and_profile_commands(capsys, tiny_path, tmp_path):
    code, out, err = run(capsys, "bench", tiny_path, "--vs", tiny_path, "--runs", 3, "--json", tmp_path / "b.json")
    assert code == 0, err
    assert "ratio" in out and json.loads((tmp_path / "b.json").read_text())["a"]["runs"] == 3
    code, out, err = run(capsys, "profile", tiny_path, "--runs", 2, "--html", tmp_path / "p.html")
    assert code == 0, err
    assert "op type" in out and (tmp_path / "p.html").read_text().startswith("<!doctype html>")
    code, out, err = run(capsys, "apply", tiny_path, "--target", "mobile-cpu")
    assert code == 0 and "latency (ms)" in out
    code, _, err = run(capsys, "bench", tiny_path, "--target", "nowhere")
    assert code == 2 and "unknown target" in err


def test_pass_options(capsys, tmp_path):
    from conftest import small_cnn_model

    src = tmp_path / "m.onnx"
    onnx.save(small_cnn_model(), src)
    code, out, err = run(capsys, "apply", src, "--passes", "fold,strip-near", "--option", "strip-near.threshold=0.5")
    assert code == 0, err
    code, _, err = run(capsys, "apply", src, "--option", "strip-near.threshold=0.5")
    assert code == 2 and "not in the pipeline" in err
    code, _, err = run(capsys, "apply", src, "--option", "threshold=0.5")
    assert code == 2 and "PASS.KEY=VALUE" in err


def test_report_may_not_overwrite_a_model(capsys, tiny_path, tmp_path):
    before = tiny_path.read_bytes()
    code, _, err = run(capsys, "apply", tiny_path, "--report", tiny_path)
    assert code == 2 and "would overwrite" in err and tiny_path.read_bytes() == before
    code, _, err = run(capsys, "apply", tiny_path, "-o", tmp_path / "o.onnx", "--report", tmp_path / "o.onnx")
    assert code == 2 and not (tmp_path / "o.onnx").exists()


def test_bench_and_profile_fail_cleanly_on_unrunnable_shapes(capsys, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    w = np.ones((4, 3, 3, 3), np.float32)
    m = make_model([helper.make_node("Conv", ["x", "W"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "W")])
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    for cmd in ("bench", "profile"):
        code, _, err = run(capsys, cmd, p, "--runs", 2)
        assert code == 2 and "--input-shape" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "bench", p, "--runs", 2, "--input-shape", "x:1x3x8x8")
    assert code == 0, err


def test_apply_for_a_target_this_machine_cannot_run(capsys, tmp_path):
    """apply --target cuda on a machine without onnxruntime's CUDA provider: the model is shaped
    for the GPU (no CPU-only blocked layout), verified on the CPU and written; only the latency
    line says why it is missing. bench --target cuda stays an error."""
    import onnxruntime as ort
    import torch

    from onnxopt.models import export_onnx, shiftnet
    from onnxopt.runtime import library_path, ops

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    src, out = tmp_path / "shift.onnx", tmp_path / "shift.cuda.onnx"
    export_onnx(shiftnet(width=8, blocks=(1, 1, 1)), torch.randn(1, 3, 16, 16), src)
    code, text, err = run(capsys, "apply", src, "-o", out, "--target", "cuda")
    assert code == 0, err
    assert "latency: not measured (target 'cuda' needs CUDAExecutionProvider" in text and "OK" in text
    op_types = {n.op_type for n in onnx.load(out).graph.node}
    assert ops.BLOCKED_ADDRESS_CONV_PAIR not in op_types and ops.BLOCKED_ADDRESS_CONV not in op_types
    if library_path() is not None:
        assert ops.ADDRESS_CONV in op_types
    code, _, err = run(capsys, "bench", src, "--target", "cuda")
    assert code == 2 and "CUDAExecutionProvider" in err
