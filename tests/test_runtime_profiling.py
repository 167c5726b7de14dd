"""Targets, latency statistics, interleaving, profiler parsing, HTML report, lookup table (no timing asserts)."""
import json

import numpy as np
import pytest

from onnxopt.errors import OnnxoptError
from onnxopt.runtime import latency, lut, profiling
from onnxopt.runtime.targets import BUILTIN, Target, load_target


def test_stats_from_samples():
    s = latency.LatencyStats.from_seconds([0.001, 0.002, 0.003, 0.004, 0.100])
    assert s.median_ms == pytest.approx(3.0) and s.min_ms == pytest.approx(1.0) and s.max_ms == pytest.approx(100.0)
    assert s.runs == 5 and s.p90_ms == pytest.approx(61.6)
    with pytest.raises(ValueError):
        latency.LatencyStats.from_seconds([])


def test_builtin_and_file_targets(tmp_path):
    assert load_target("mobile-cpu").threads == 1 and load_target("mobile-cpu").affinity() is not None
    four = load_target("mobile-cpu-4")
    assert four.threads <= 4 and (four.threads == 4 or four.notes)
    p = tmp_path / "edge.toml"
    p.write_text('threads = 1\npin = true\nruns = 7\nopt_level = "basic"\n')
    t = load_target(p)
    assert (t.name, t.runs, t.opt_level) == ("edge", 7, "basic")
    (tmp_path / "bad.json").write_text('{"threads": 1, "colour": "red"}')
    with pytest.raises(OnnxoptError, match="unknown field"):
        load_target(tmp_path / "bad.json")
    with pytest.raises(OnnxoptError, match="unknown target"):
        load_target("phone-9000")


def test_cuda_target_refused_without_provider(tiny_model):
    """Measuring needs the provider (onnxruntime would fall back to the CPU and the times would be
    the CPU's); optimising for the target does not."""
    import onnxruntime as ort

    from onnxopt.runtime.latency import bench
    from onnxopt.runtime.targets import check_provider

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(OnnxoptError, match="CUDAExecutionProvider"):
        load_target("cuda")
    cuda = load_target("cuda", require_provider=False)
    assert cuda.provider == "CUDAExecutionProvider"
    with pytest.raises(OnnxoptError, match="CUDAExecutionProvider"):
        check_provider(cuda)
    with pytest.raises(OnnxoptError, match="CUDAExecutionProvider"):
        bench(tiny_model, cuda, runs=1, warmup=0)


def test_bench_pair_interleaves_and_alternates(monkeypatch, tiny_model):
    order = []

    def fake_timer(sess, feeds):
        tag = sess
        return lambda: order.append(tag) or (0.002 if tag == "b" else 0.001)

    sessions = iter(["a", "b"])
    monkeypatch.setattr(latency, "make_session", lambda model, target, **kw: next(sessions))
    monkeypatch.setattr(latency, "_timer", fake_timer)
    cmp = latency.bench_pair(tiny_model, tiny_model, Target("t"), runs=4, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then AB BA AB BA
    assert cmp.ratio == pytest.approx(2.0) and cmp.speedup == pytest.approx(0.5)


def test_bench_runs_a_real_model(tiny_model):
    seen = []
    s = latency.bench(tiny_model, BUILTIN["mobile-cpu"], runs=3, warmup=1, progress=lambda i, n: seen.append((i, n)))
    assert s.runs == 3 and s.min_ms > 0 and seen[-1] == (3, 3)


def test_parse_events_medians_and_skips_warmup():
    def ev(name, op, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": {"op_name": op, "provider": "CPU"}}

    events = [ev("c1", "Conv", 1000), ev("c1", "Conv", 10), ev("c1", "Conv", 30), ev("c1", "Conv", 20),
              ev("r", "Relu", 5), ev("r", "Relu", 5), {"cat": "Session", "name": "model_run", "dur": 99},
              {"cat": "Node", "name": "c1_fence_before", "dur": 1}]
    p = profiling.parse_events(events, skip_runs=1)
    assert [(n.name, n.median_us, n.calls) for n in p.nodes] == [("c1", 20.0, 3), ("r", 5.0, 1)]
    assert p.by_op() == {"Conv": 20.0, "Relu": 5.0} and p.total_us == 25.0


def test_profile_model_and_reports(tiny_model):
    prof = profiling.profile_model(tiny_model, BUILTIN["mobile-cpu"], runs=3, warmup=1)
    assert prof.nodes and all(n.calls == 3 for n in prof.nodes)
    table = profiling.op_table(prof, prof)
    assert "total (sum of kernels)" in table and "saved us" in table
    page = profiling.render_html(prof, prof, header={"target": "mobile-cpu"})
    assert page.count("<svg") == 3 and "Time per op type" in page and "</html>" in page
    json.dumps(prof.to_json())


def test_lookup_table_measures_once_and_persists(tmp_path, tiny_model):
    target = Target("t", threads=1)
    table = lut.LatencyTable(target, path=tmp_path / "lut.json", runs=2, warmup=0)
    key = lut.layer_key("Conv", [[1, 3, 8, 8], [8, 3, 3, 3]], {"pads": [1, 1, 1, 1]}, rate=0.5)
    calls = []
    t1 = table.time_ms(key, lambda: calls.append(1) or tiny_model)
    t2 = table.time_ms(key, lambda: calls.append(1) or tiny_model)
    assert t1 == t2 > 0 and calls == [1] and table.measured == 1
    table.save()
    again = lut.LatencyTable(target, path=tmp_path / "lut.json")
    assert key in again and again.entries[key] == t1
    (tmp_path / "lut.json").write_text("{corrupt")
    assert lut.LatencyTable(target, path=tmp_path / "lut.json").entries == {}
    assert lut.table_id(target) != lut.table_id(Target("t", threads=2))
    np.testing.assert_equal(lut.layer_key("Conv", [[1]], {"b": 1, "a": 2}), "Conv|1|a=2,b=1|1.0000")


def test_cuda_tables_are_kept_apart_by_gpu_model_and_math_mode(monkeypatch):
    from onnxopt.runtime import lut
    from onnxopt.runtime.targets import Target

    cuda = Target("cuda", provider="CUDAExecutionProvider")
    monkeypatch.setenv("ONNXOPT_CUDA_TF32", "0")
    monkeypatch.setattr(lut, "gpu_models", lambda: ["NVIDIA H200"])
    fp32_h200 = lut.table_id(cuda)
    monkeypatch.setenv("ONNXOPT_CUDA_TF32", "1")
    assert lut.table_id(cuda) != fp32_h200
    monkeypatch.setenv("ONNXOPT_CUDA_TF32", "0")
    monkeypatch.setattr(lut, "gpu_models", lambda: ["NVIDIA A100-SXM4-80GB"])
    assert lut.table_id(cuda) != fp32_h200
    cpu = Target("cpu")
    before = lut.table_id(cpu)
    monkeypatch.setenv("ONNXOPT_CUDA_TF32", "1")
    assert lut.table_id(cpu) == before  # CPU tables do not depend on the GPU settings
