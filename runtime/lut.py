"""A latency lookup table: per-layer time on a target, cached on disk.

Keyed by (op, input shapes, attributes, rate) inside a file that is itself keyed by the target
(name, provider, threads), the onnxruntime version and the CPU model, so a table measured on one
machine or runtime is never used on another. The perforation search asks it for layer times
instead of re-measuring the whole network at every step.

Files live in ``$ONNXOPT_CACHE`` (default ``~/.cache/onnxopt``)/``lut/``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import onnx

from .latency import bench, environment
from .targets import Target

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("ONNXOPT_CACHE", Path.home() / ".cache" / "onnxopt")) / "lut"


def table_id(target: Target) -> str:
    env = environment()
    ident = [target.name, target.provider, target.threads, target.opt_level, env["onnxruntime"], env["cpu"]]
    if target.provider == "CUDAExecutionProvider":
        # the GPU and our kernels' math mode (gemm_cuda.cc turns TF32 on for "1" only)
        ident += [gpu_models(), os.environ.get("ONNXOPT_CUDA_TF32") == "1"]
    return f"{target.name}-{hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:12]}"


def gpu_models() -> list[str]:
    """The NVIDIA GPUs' model names as the driver reports them (empty where there is none)."""
    models = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            models += [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                       if line.startswith("Model:")]
        except OSError:
            pass
    return models


def layer_key(op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any], rate: float = 1.0) -> str:
    attr_text = ",".join(f"{k}={attrs[k]}" for k in sorted(attrs))
    return f"{op}|{';'.join('x'.join(map(str, s)) for s in shapes)}|{attr_text}|{rate:.4f}"


_OPEN: "weakref.WeakSet[LatencyTable]" = weakref.WeakSet()


def flush_tables() -> None:
    """Save every table measured into since it was loaded (passes do not write files themselves;
    the API calls this after the passes ran). A cache that cannot be written is skipped."""
    for table in list(_OPEN):
        if table.measured:
            try:
                table.save()
            except OSError as e:
                log.info("latency table %s not saved: %s", table.path, e)


class LatencyTable:
    """Layer times (ms, median) on one target; measured on first request, then read from disk."""

    def __init__(self, target: Target, path: str | os.PathLike | None = None, runs: int = 20, warmup: int = 3):
        self.target, self.runs, self.warmup = target, runs, warmup
        self.path = Path(path) if path else cache_dir() / f"{table_id(target)}.json"
        self.entries: dict[str, float] = {}
        self.measured = 0
        _OPEN.add(self)
        if self.path.is_file():
            try:
                self.entries = {k: float(v) for k, v in json.loads(self.path.read_text()).get("entries", {}).items()}
            except (ValueError, OSError, AttributeError):
                self.entries = {}  # a corrupt cache is re-measured, never trusted

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def time_ms(self, key: str, build: Callable[[], onnx.ModelProto]) -> float:
        """The cached time for ``key``, measuring the model ``build()`` returns when absent."""
        if key not in self.entries:
            self.entries[key] = bench(build(), self.target, runs=self.runs, warmup=self.warmup).median_ms
            self.measured += 1
        return self.entries[key]

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"target": self.target.name, "environment": environment(), "entries": self.entries}, f, indent=1)
        os.replace(tmp, self.path)
        self.measured = 0
        return self.path
