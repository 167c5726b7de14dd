"""Latency measurement on a target: warm-up, many runs, robust statistics, interleaved A/B pairs.

A/B comparisons run the two models pair by pair, alternating which goes first (ABBA...), and take
the ratio per pair: slow drift on a noisy machine (another process, frequency changes) hits both
members of a pair alike and cancels in the ratio.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from .targets import Target

Progress = Callable[[int, int], None]


@dataclass
class LatencyStats:
    runs: int
    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> "LatencyStats":
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise ValueError("no samples")
        return cls(int(ms.size), float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.min()),
                   float(ms.max()), float(ms.mean()))

    def to_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass
class Comparison:
    """B relative to A: ``ratio`` is the median over pairs of time(B) / time(A)."""

    a: LatencyStats
    b: LatencyStats
    ratio: float
    ratio_p10: float
    ratio_p90: float

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio

    def to_json(self) -> dict:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "ratio": round(self.ratio, 4),
                "ratio_p10": round(self.ratio_p10, 4), "ratio_p90": round(self.ratio_p90, 4),
                "speedup": round(self.speedup, 4)}


@contextlib.contextmanager
def pinned(target: Target):
    """Pin this process to the target's cores for the duration (no-op where it does not pin)."""
    cores = target.affinity()
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def make_session(model: onnx.ModelProto | bytes | str, target: Target, **extra):
    from onnxopt.errors import OnnxoptError

    from . import session
    from .targets import check_provider

    check_provider(target)  # never a CPU time under a GPU target's name

    providers = [target.provider] + (["CPUExecutionProvider"] if target.provider != "CPUExecutionProvider" else [])
    try:
        return session(model, providers=providers, **target.session_kwargs(), **extra)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise OnnxoptError(f"onnxruntime cannot load the model: {_one_line(e)}") from None


def run_once(sess, feeds) -> None:
    """One inference; a failure becomes a one-line error (e.g. a shape that needs --input-shape)."""
    from onnxopt.errors import OnnxoptError

    try:
        sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise OnnxoptError(f"onnxruntime cannot run the model: {_one_line(e)} "
                           "(dynamic dims are 1 unless --input-shape says otherwise)") from None


def _feeds_for(model, feeds, input_shapes):
    from onnxopt.ir import load_model
    from onnxopt.verify import make_inputs

    proto = load_model(model) if not isinstance(model, onnx.ModelProto) else model
    if feeds is not None and all(vi in feeds for vi in _input_names(proto)):
        return {k: feeds[k] for k in _input_names(proto)}
    return make_inputs(proto, input_shapes)


def _input_names(model: onnx.ModelProto) -> list[str]:
    from onnxopt.verify import graph_inputs

    return [vi.name for vi in graph_inputs(model)]


def _timer(sess, feeds):
    run_once(sess, feeds)  # fail with a clear message before any timing starts

    def once() -> float:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        return time.perf_counter() - t0
    return once


def bench(model, target: Target, feeds: Mapping[str, np.ndarray] | None = None,
          input_shapes: Mapping[str, Sequence[int]] | None = None, runs: int | None = None,
          warmup: int | None = None, progress: Progress | None = None) -> LatencyStats:
    """Latency of one model on ``target``."""
    runs = runs or target.runs
    warmup = target.warmup if warmup is None else warmup
    with pinned(target):
        once = _timer(make_session(model, target), _feeds_for(model, feeds, input_shapes))
        for _ in range(warmup):
            once()
        samples = []
        for i in range(runs):
            samples.append(once())
            if progress:
                progress(i + 1, runs)
    return LatencyStats.from_seconds(samples)


def bench_pair(a, b, target: Target, feeds: Mapping[str, np.ndarray] | None = None,
               input_shapes: Mapping[str, Sequence[int]] | None = None, runs: int | None = None,
               warmup: int | None = None, progress: Progress | None = None) -> Comparison:
    """Latency of A and B measured in interleaved pairs; the ratio B/A is taken per pair."""
    runs = runs or target.runs
    warmup = target.warmup if warmup is None else warmup
    with pinned(target):
        run_a = _timer(make_session(a, target), _feeds_for(a, feeds, input_shapes))
        run_b = _timer(make_session(b, target), _feeds_for(b, feeds, input_shapes))
        for _ in range(warmup):
            run_a()
            run_b()
        ta, tb = [], []
        for i in range(runs):
            if i % 2:
                tb.append(run_b())
                ta.append(run_a())
            else:
                ta.append(run_a())
                tb.append(run_b())
            if progress:
                progress(i + 1, runs)
    ratios = np.asarray(tb) / np.asarray(ta)
    return Comparison(LatencyStats.from_seconds(ta), LatencyStats.from_seconds(tb), float(np.median(ratios)),
                      float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90)))


def environment() -> dict:
    """Machine, CPU model and versions, for benchmark headers and cache keys."""
    import platform

    import onnxruntime as ort

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
