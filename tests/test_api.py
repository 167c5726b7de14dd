"""The Python API: apply (passes, verification gate, atomic write, report), inspect, verify."""
import json

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt import ir
from onnxopt.errors import OnnxoptError, VerificationError
from onnxopt.passmanager import PassResult, default_pipeline


class Corrupt:
    """An 'exact' pass that changes the numbers: verification must catch it."""

    name, exact, order = "test-corrupt", True, 99

    def run(self, graph, ctx):
        w = graph.tensors()["W"]
        w.values = w.values * 1.5
        return PassResult(self.name, changed=True, summary="scaled weights")


def test_apply_default_pipeline_writes_and_reports(tmp_path, tiny_path):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    model, report = onnxopt.apply(tiny_path, output=out, report_path=rep)
    assert out.exists() and report.verification.ok
    assert onnx.load(out).ir_version <= ir.runtime_max_ir_version()
    data = json.loads(rep.read_text())
    assert data["before"]["macs"] == 8 * 64 * 27 and data["verification"]["ok"]
    assert [p["name"] for p in data["passes"]] == default_pipeline()


def test_failed_verification_writes_nothing(tmp_path, tiny_path):
    out = tmp_path / "o.onnx"
    with pytest.raises(VerificationError, match="output 'y' differs"):
        onnxopt.apply(tiny_path, passes=[Corrupt()], output=out)
    assert not out.exists()


def test_apply_in_memory_without_output(tiny_model):
    model, report = onnxopt.apply(tiny_model, passes=[])
    assert isinstance(model, onnx.ModelProto) and report.output is None and "nodes" in report.summary()


def test_apply_checks_output_before_working(tmp_path, tiny_path):
    with pytest.raises(OnnxoptError, match="does not exist"):
        onnxopt.apply(tiny_path, output=tmp_path / "missing" / "o.onnx")


def test_default_output_name(tmp_path):
    assert onnxopt.default_output(tmp_path / "net.onnx").name == "net.opt.onnx"
    assert onnxopt.default_output(tmp_path / "net.bin").name == "net.bin.opt.onnx"


def test_inspect_reports_dead_filters(tiny_path):
    info = onnxopt.inspect(tiny_path)
    assert info["inputs"][0]["shape"] == ["N", 3, 8, 8]
    assert info["layers"][0]["zero_filters"] == 1 and info["ops"] == {"Conv": 1, "Relu": 1}


def test_verify_api_with_npz(tmp_path, tiny_path):
    np.savez(tmp_path / "in.npz", x=np.ones((3, 3, 8, 8), np.float32))
    result = onnxopt.verify(tiny_path, tiny_path, inputs=tmp_path / "in.npz")
    assert result.ok and result.max_abs == 0


class LossyNoop:
    name, exact, order = "test-lossy-noop", False, 100

    def run(self, graph, ctx):
        return PassResult(self.name, skipped="nothing to do")


class LossyScale:
    """A lossy pass that changes the numbers a little (as a perforation would)."""

    name, exact, order = "test-lossy-scale", False, 100

    def run(self, graph, ctx):
        w = graph.tensors()["W"]
        w.values = w.values * 1.01
        return PassResult(self.name, changed=True, summary="scaled weights by 1.01")


@pytest.mark.parametrize("lossy", [LossyNoop, LossyScale])
def test_a_lossy_pass_does_not_excuse_an_exact_one(tmp_path, tiny_path, lossy):
    out = tmp_path / "o.onnx"
    with pytest.raises(VerificationError, match="after test-corrupt"):
        onnxopt.apply(tiny_path, passes=[Corrupt(), lossy()], output=out)
    assert not out.exists()


def test_lossy_deviation_is_reported_not_failed(tmp_path, tiny_path):
    model, report = onnxopt.apply(tiny_path, passes=["fold", LossyScale()], output=tmp_path / "o.onnx")
    assert report.lossy and not report.verification.ok and report.verification.max_rel > 1e-3
    assert "deviation from the original (lossy passes ran)" in report.summary()


class TargetProbe:
    """An exact pass that changes nothing and records the target it was handed."""

    name, exact, order = "test-target-probe", True, 99
    seen = []

    def run(self, graph, ctx):
        self.seen.append(ctx.target)
        return PassResult(self.name, changed=False, summary="looked")


def test_a_target_given_by_name_reaches_the_passes_as_a_target(tiny_path):
    from onnxopt.runtime.targets import Target

    probe = TargetProbe()
    _, report = onnxopt.apply(tiny_path, passes=[probe], target="mobile-cpu")
    assert isinstance(probe.seen[-1], Target) and probe.seen[-1].name == "mobile-cpu" and probe.seen[-1].threads == 1
    assert report.latency["target"] == "mobile-cpu"
    with pytest.raises(OnnxoptError, match="unknown target 'no-such-target'"):
        onnxopt.apply(tiny_path, passes=[probe], target="no-such-target")
