"""The Python API: apply, inspect and verify, mirroring the CLI.

    model, report = onnxopt.apply("net.onnx", output="net.opt.onnx")

Data flows one way: load -> passes -> verify -> write. Nothing is written unless verification
passed; a failed verification raises :class:`VerificationError` naming the worst output.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from . import ir
from .cost import model_stats
from .errors import OnnxoptError, VerificationError
from .passmanager import Pass, PassContext, PassManager, available, resolve
from .report import Report
from .runtime import ops
from .runtime.functions import add_functions
from .verify import DEFAULT_ATOL, DEFAULT_RTOL, VerifyResult, load_inputs, make_inputs, verify_models


def default_output(path: str | os.PathLike) -> Path:
    """``dir/name.onnx`` -> ``dir/name.opt.onnx``."""
    p = Path(path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(stem + ".opt.onnx")


def apply(model: ir.ModelLike, passes: Sequence[str | Pass] | None = None, output: str | os.PathLike | None = None,
          *, options: Mapping[str, Mapping[str, Any]] | None = None,
          inputs: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
          input_shapes: Mapping[str, Sequence[int]] | None = None,
          calibration: Mapping[str, np.ndarray] | None = None, labels: Any = None, target: Any = None,
          rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, verify: bool = True,
          report_path: str | os.PathLike | None = None) -> tuple[onnx.ModelProto, Report]:
    """Optimise ``model``: run ``passes`` (default: every exact pass), verify, optionally write.

    ``options`` maps a pass name to that pass's options. ``inputs`` (arrays or an .npz path) are
    the verification inputs; random ones are used otherwise. ``output`` is written atomically only
    after verification passed. Returns the optimised model and the report.
    """
    source = str(model) if not isinstance(model, onnx.ModelProto) else "<in-memory model>"
    original = ir.load_model(model)
    pipeline = resolve(list(passes) if passes is not None else None)
    stray = sorted(set(options or {}) - {p.name for p in pipeline})
    if stray:
        raise OnnxoptError(f"options given for pass {stray[0]!r}, which is not in the pipeline "
                           f"({', '.join(p.name for p in pipeline) or 'none'}); name it in passes")
    if output is not None:
        ir.check_writable(output)
    if report_path is not None:
        ir.check_writable(report_path)
        taken = [p for p in (source if not isinstance(model, onnx.ModelProto) else None, output) if p is not None]
        if any(Path(report_path).resolve() == Path(p).resolve() for p in taken):
            raise OnnxoptError(f"{report_path}: the report would overwrite the input or output model")
    if target is not None:
        from onnxopt.runtime.targets import Target, load_target

        # the passes read a Target (provider, threads), never a name or a path
        target = target if isinstance(target, Target) else load_target(target, require_provider=False)
    shapes = {k: list(v) for k, v in (input_shapes or {}).items()}
    feeds = load_inputs(inputs, original) if isinstance(inputs, (str, os.PathLike)) else inputs

    before = model_stats(original, shapes)
    graph = ir.to_graph(original)
    contexts = {p.name: PassContext(options=dict((options or {}).get(p.name, {})), calibration=calibration,
                                    labels=labels, input_shapes=shapes, target=target, model=original)
                for p in pipeline}
    if verify and feeds is None:
        feeds = make_inputs(original, shapes)
    results, checks, current = [], [], original
    for exact, segment in _segments(pipeline):
        seg_results = PassManager(segment).run(graph, contexts)
        results += seg_results
        if not any(r.changed for r in seg_results):
            continue
        candidate = _export(graph, original)
        if verify:
            check = verify_models(current, candidate, feeds, shapes, rtol=rtol, atol=atol)
            names = [p.name for p in segment]
            checks.append({"passes": names, "exact": exact, **check.to_json()})
            if exact and not check.ok:
                _fail(check, rtol, f"after {', '.join(names)}")
        current = candidate
    result = current if current is not original else _export(graph, original)
    after = model_stats(result, shapes)

    verification = verify_models(original, result, feeds, shapes, rtol=rtol, atol=atol) if verify else None
    lossy = any(r.changed and not _is_exact(pipeline, r.name) for r in results)
    if verification is not None and not verification.ok and (not lossy or not np.isfinite(verification.worst().max_abs)):
        _fail(verification, rtol, "")  # a broken shape or NaN pattern fails even when lossy passes ran
    report = Report(source, str(output) if output is not None else None, before, after, results, verification,
                    lossy=lossy, extra={"checks": checks})
    if output is not None:
        ir.save_model(result, output)
    _flush_caches()
    if target is not None:
        try:
            report.latency = measure_latency(original, result, target, feeds, shapes)
        except OnnxoptError as e:  # the model is written and verified: a failed measurement is reported
            report.latency = {"error": str(e)}
    if report_path is not None:
        report.write_json(report_path)
    return result, report


def _segments(pipeline: list[Pass]):
    """Maximal runs of consecutive passes that are all exact or all lossy, in order."""
    runs: list[tuple[bool, list[Pass]]] = []
    for p in pipeline:
        if runs and runs[-1][0] == bool(p.exact):
            runs[-1][1].append(p)
        else:
            runs.append((bool(p.exact), [p]))
    return runs


def _is_exact(pipeline: list[Pass], name: str) -> bool:
    return next((bool(p.exact) for p in pipeline if p.name == name), True)


def _export(graph, original: onnx.ModelProto) -> onnx.ModelProto:
    model = ir.to_model(graph, original)
    if any(n.domain == ops.DOMAIN for n in model.graph.node):
        model = add_functions(model)  # the ai.onnxopt opset import and a fallback FunctionProto per custom op
    return model


def _fail(check: VerifyResult, rtol: float, where: str) -> None:
    worst = check.worst()
    detail = f": {worst.reason}" if worst.reason else ""
    at = f" {where}" if where else ""
    raise VerificationError(
        f"verification failed{at}: output {worst.name!r} differs by max abs {worst.max_abs:.3g} "
        f"(rel {worst.max_rel:.3g}, rtol {rtol:g}){detail}; nothing written")


def _flush_caches() -> None:
    """Save latency tables the passes filled (a pass never writes files itself); a cache that
    cannot be written is only a missed speed-up next time."""
    from onnxopt.runtime.lut import flush_tables

    flush_tables()


def measure_latency(before: onnx.ModelProto, after: onnx.ModelProto, target: Any,
                    feeds: Mapping[str, np.ndarray] | None = None,
                    input_shapes: Mapping[str, Sequence[int]] | None = None, runs: int | None = None) -> dict:
    """Before/after latency on a target (a name, a profile path or a Target), interleaved pair by pair."""
    from onnxopt.runtime.latency import bench_pair
    from onnxopt.runtime.targets import Target, load_target

    tgt = target if isinstance(target, Target) else load_target(target)
    cmp = bench_pair(before, after, tgt, feeds=feeds, input_shapes=input_shapes, runs=runs)
    return {"target": tgt.name, "describe": tgt.describe(), "before_ms": cmp.a.median_ms, "after_ms": cmp.b.median_ms,
            "speedup": cmp.speedup, "comparison": cmp.to_json()}


def inspect(model: ir.ModelLike, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Inputs/outputs, op histogram, parameters, MACs and dead filters per conv/gemm layer."""
    m = ir.load_model(model)
    stats = model_stats(m, {k: list(v) for k, v in (input_shapes or {}).items()})

    def io(vis):
        out = []
        for vi in vis:
            tt = vi.type.tensor_type
            dims = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
                    if tt.HasField("shape") else "unknown")
            out.append({"name": vi.name, "type": onnx.TensorProto.DataType.Name(tt.elem_type), "shape": dims})
        return out

    from .verify import graph_inputs

    return {
        "ir_version": m.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "inputs": io(graph_inputs(m)), "outputs": io(m.graph.output),
        "functions": [f"{f.domain}.{f.name}" for f in m.functions],
        **stats.to_json(),
    }


def verify(a: ir.ModelLike, b: ir.ModelLike, inputs: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
           input_shapes: Mapping[str, Sequence[int]] | None = None,
           rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> VerifyResult:
    """Run ``a`` and ``b`` on the same inputs and compare every output."""
    ma, mb = ir.load_model(a), ir.load_model(b)
    feeds = load_inputs(inputs, ma) if isinstance(inputs, (str, os.PathLike)) else inputs
    if feeds is None:
        feeds = make_inputs(ma, input_shapes)
    return verify_models(ma, mb, feeds, input_shapes, rtol=rtol, atol=atol)


def pass_names() -> list[str]:
    return list(available())


__all__ = ["apply", "inspect", "verify", "default_output", "pass_names", "OnnxoptError", "VerificationError"]
