"""Target profiles: where latency is measured (execution provider, threads, pinning, optimisation level).

Built in:

=============  ===============================================================================
mobile-cpu     CPU EP, 1 thread pinned to one core, spinning off, all graph optimisations
mobile-cpu-4   CPU EP, 4 threads pinned to 4 cores (fewer where the machine has fewer), spinning off
cpu            CPU EP, all cores, onnxruntime's default spinning
cuda           CUDA EP (measuring refused with a clear message where onnxruntime has no CUDA provider)
=============  ===============================================================================

A phone's big cores do not outnumber four, so ``mobile-cpu`` and ``mobile-cpu-4`` bracket a
phone-class CPU. A user profile is a TOML or JSON file with the same fields as :class:`Target`,
e.g. ``{"name": "edge", "provider": "CPUExecutionProvider", "threads": 2, "pin": true}``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from onnxopt.errors import OnnxoptError


@dataclass(frozen=True)
class Target:
    name: str
    provider: str = "CPUExecutionProvider"
    threads: int = 0  # 0 = onnxruntime's default (all cores)
    pin: bool = False  # pin the process to `threads` cores while measuring
    cores: tuple[int, ...] = ()  # explicit cores to pin to (default: the first `threads` allowed ones)
    spinning: bool | None = None  # None = onnxruntime's default
    opt_level: str = "all"
    warmup: int = 5
    runs: int = 50
    notes: list[str] = field(default_factory=list, compare=False)

    def session_kwargs(self) -> dict:
        return {"threads": self.threads or None, "opt_level": self.opt_level, "spinning": self.spinning}

    def affinity(self) -> set[int] | None:
        """The cores to pin to, or None for no pinning."""
        if not self.pin or not hasattr(os, "sched_getaffinity"):
            return None
        allowed = sorted(os.sched_getaffinity(0))
        if self.cores:
            return set(self.cores) & set(allowed) or set(allowed[:1])
        return set(allowed[: max(1, self.threads)])

    def describe(self) -> str:
        threads = self.threads or (os.cpu_count() or 1)
        pin = self.affinity()
        pinned = f", pinned to cores {sorted(pin)}" if pin else ""
        spin = "" if self.spinning is None else f", spinning {'on' if self.spinning else 'off'}"
        ep = self.provider.replace("ExecutionProvider", "")
        return f"{self.name}: {ep} EP, {threads} thread(s){pinned}{spin}, optimisation {self.opt_level}"


def _clip_threads(target: Target) -> Target:
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if target.threads > allowed:
        note = f"asked for {target.threads} threads, the machine allows {allowed}"
        return dataclasses.replace(target, threads=allowed, notes=[*target.notes, note])
    return target


BUILTIN = {
    "mobile-cpu": Target("mobile-cpu", threads=1, pin=True, spinning=False),
    "mobile-cpu-4": Target("mobile-cpu-4", threads=4, pin=True, spinning=False),
    "cpu": Target("cpu", threads=0),
    "cuda": Target("cuda", provider="CUDAExecutionProvider", warmup=10, runs=100),
}


def load_target(name_or_path: str | os.PathLike, require_provider: bool = True) -> Target:
    """A built-in target by name, or a user profile from a .toml/.json file. With
    ``require_provider`` (the default) a target whose execution provider this onnxruntime lacks is
    an error here; without it, only where latency is measured (:func:`check_provider`): ``apply
    --target cuda`` can shape a model for a GPU on a machine without one."""
    key = str(name_or_path)
    if key in BUILTIN:
        target = BUILTIN[key]
    else:
        path = Path(key)
        if not path.suffix or not path.exists():
            raise OnnxoptError(f"unknown target {key!r}; built in: {', '.join(BUILTIN)}, or a .toml/.json profile")
        target = _from_file(path)
    target = _clip_threads(target)
    if require_provider:
        check_provider(target)
    return target


def check_provider(target: Target) -> None:
    """Raise unless this onnxruntime has the target's execution provider (onnxruntime itself would
    fall back to the CPU with a warning, and the times would be the CPU's)."""
    if target.provider == "CPUExecutionProvider":
        return
    import onnxruntime as ort

    if target.provider not in ort.get_available_providers():
        raise OnnxoptError(f"target {target.name!r} needs {target.provider}, which this onnxruntime "
                           f"({ort.__version__}, providers: {', '.join(ort.get_available_providers())}) lacks;"
                           " install onnxruntime-gpu on a machine with a GPU")


def _from_file(path: Path) -> Target:
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001 - both parsers raise their own errors
        raise OnnxoptError(f"{path}: not a valid target profile ({type(e).__name__}: {e})") from None
    known = {f.name for f in dataclasses.fields(Target)} - {"notes"}
    unknown = set(data) - known
    if unknown:
        raise OnnxoptError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    data.setdefault("name", path.stem)
    if "cores" in data:
        data["cores"] = tuple(data["cores"])
    if data.get("opt_level", "all") not in ("disable", "basic", "extended", "all"):
        raise OnnxoptError(f"{path}: opt_level must be one of disable, basic, extended, all")
    try:
        return Target(**data)
    except TypeError as e:
        raise OnnxoptError(f"{path}: {e}") from None
