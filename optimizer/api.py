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
    if output is not None:
        ir.check_writable(output)
    if report_path is not None:
        ir.check_writable(report_path)
    shapes = {k: list(v) for k, v in (input_shapes or {}).items()}
    feeds = load_inputs(inputs, original) if isinstance(inputs, (str, os.PathLike)) else inputs

    before = model_stats(original, shapes)
    graph = ir.to_graph(original)
    contexts = {p.name: PassContext(options=dict((options or {}).get(p.name, {})), calibration=calibration,
                                    labels=labels, input_shapes=shapes, target=target, model=original)
                for p in pipeline}
    results = PassManager(pipeline).run(graph, contexts)
    result = ir.to_model(graph, original)
    if any(n.domain == ops.DOMAIN for n in result.graph.node):
        result = add_functions(result)  # the ai.onnxopt opset import and a fallback FunctionProto per custom op
    after = model_stats(result, shapes)

    verification = None
    lossy = any(not p.exact for p in pipeline)
    if verify:
        verification = verify_models(original, result, feeds, shapes, rtol=rtol, atol=atol)
    report = Report(source, str(output) if output is not None else None, before, after, results, verification)
    if verification is not None and not verification.ok:
        worst = verification.worst()
        # Lossy passes are judged by their own budget; a broken shape or NaN pattern fails always.
        if not lossy or not np.isfinite(worst.max_abs):
            detail = f": {worst.reason}" if worst.reason else ""
            raise VerificationError(
                f"verification failed: output {worst.name!r} differs by max abs {worst.max_abs:.3g} "
                f"(rel {worst.max_rel:.3g}, rtol {rtol:g}){detail}; nothing written")
    if output is not None:
        ir.save_model(result, output)
    if target is not None:
        report.latency = measure_latency(original, result, target, feeds, shapes)
    if report_path is not None:
        report.write_json(report_path)
    return result, report


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
