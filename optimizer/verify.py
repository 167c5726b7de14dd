"""Numerical verification: run two models on the same inputs on onnxruntime and compare outputs.

The tolerance is relative to each output's magnitude: an output passes when

    max |a - b|  <=  rtol * max |a|  +  atol

(``a`` the reference). NaN and Inf must sit at the same places in both. Inputs are random
(seeded) unless given; dynamic dimensions resolve to 1 unless ``input_shapes`` names them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from .errors import OnnxoptError

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float  # max_abs / max |reference|
    ok: bool
    reason: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "max_abs": self.max_abs, "max_rel": self.max_rel, "ok": self.ok,
                "reason": self.reason}


@dataclass
class VerifyResult:
    outputs: list[OutputDiff]
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def worst(self) -> OutputDiff | None:
        bad = [o for o in self.outputs if not o.ok]
        return max(bad, key=lambda o: o.max_rel) if bad else None

    def to_json(self) -> dict:
        return {"ok": self.ok, "rtol": self.rtol, "atol": self.atol, "max_abs": self.max_abs,
                "max_rel": self.max_rel, "outputs": [o.to_json() for o in self.outputs]}


_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_,
}

#: Refuse to make random inputs bigger than this (a hostile model can declare huge dims).
MAX_INPUT_ELEMENTS = 1 << 28


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def make_inputs(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input: floats ~ N(0, 1), integers in [0, 4), booleans fair."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type not in _NP_TYPES:
            raise OnnxoptError(f"input {vi.name!r}: unsupported input type; pass inputs with --inputs")
        given = (input_shapes or {}).get(vi.name)
        if given is not None:
            shape = [int(d) for d in given]
        else:
            shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        if any(d < 0 for d in shape):
            raise OnnxoptError(f"input {vi.name!r}: negative dimension in {shape}")
        if int(np.prod(shape, dtype=np.float64)) > MAX_INPUT_ELEMENTS:
            raise OnnxoptError(f"input {vi.name!r}: shape {shape} is too large to make random data for")
        dtype = _NP_TYPES[tt.elem_type]
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def load_inputs(path: str | os.PathLike, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs from an .npz whose keys are the model's input names (a single input may use any key)."""
    try:
        with np.load(Path(path), allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise OnnxoptError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - np.load raises several error types for bad files
        raise OnnxoptError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    names = [vi.name for vi in graph_inputs(model)]
    if len(names) == 1 and len(data) == 1 and names[0] not in data:
        data = {names[0]: next(iter(data.values()))}
    missing = [n for n in names if n not in data]
    if missing:
        raise OnnxoptError(f"{path}: no array for input {missing[0]!r} (has {', '.join(data) or 'nothing'})")
    return {n: data[n] for n in names}


def run_model(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], what: str = "model") -> list[np.ndarray]:
    """Run on onnxruntime's CPU EP (with onnxopt's custom ops when the library is present)."""
    from onnxopt.runtime import session

    try:
        sess = session(model)
        return sess.run(None, dict(feeds))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxoptError(f"onnxruntime cannot run the {what}: {text}") from None


def compare(names: Sequence[str], ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
            rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> VerifyResult:
    """Compare output lists element by element (see the module docstring for the rule)."""
    diffs = []
    if len(ref) != len(got):
        return VerifyResult([OutputDiff("<outputs>", float("inf"), float("inf"), False,
                                        f"{len(ref)} outputs vs {len(got)}")], rtol, atol)
    for name, a, b in zip(names, ref, got):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            diffs.append(OutputDiff(name, float("inf"), float("inf"), False, f"shape {list(a.shape)} vs {list(b.shape)}"))
            continue
        if a.dtype != b.dtype:
            diffs.append(OutputDiff(name, float("inf"), float("inf"), False, f"dtype {a.dtype} vs {b.dtype}"))
            continue
        if a.size == 0:
            diffs.append(OutputDiff(name, 0.0, 0.0, True))
            continue
        if not np.issubdtype(a.dtype, np.number):
            equal = bool(np.array_equal(a, b))
            diffs.append(OutputDiff(name, 0.0 if equal else float("inf"), 0.0 if equal else float("inf"), equal,
                                    "" if equal else "values differ"))
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        fin_a, fin_b = np.isfinite(a64), np.isfinite(b64)
        if not np.array_equal(fin_a, fin_b) or not np.array_equal(a64[~fin_a], b64[~fin_b], equal_nan=True):
            diffs.append(OutputDiff(name, float("inf"), float("inf"), False, "NaN/Inf at different places"))
            continue
        err = float(np.max(np.abs(a64[fin_a] - b64[fin_a]), initial=0.0))
        scale = float(np.max(np.abs(a64[fin_a]), initial=0.0))
        rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
        diffs.append(OutputDiff(name, err, rel, err <= rtol * scale + atol))
    return VerifyResult(diffs, rtol, atol)


def verify_models(reference: onnx.ModelProto, candidate: onnx.ModelProto,
                  feeds: Mapping[str, np.ndarray] | None = None,
                  input_shapes: Mapping[str, Sequence[int]] | None = None,
                  rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> VerifyResult:
    """Run both models on the same inputs and compare every output."""
    feeds = dict(feeds) if feeds is not None else make_inputs(reference, input_shapes)
    ref_names = [o.name for o in reference.graph.output]
    cand_names = [o.name for o in candidate.graph.output]
    if ref_names != cand_names:
        raise OnnxoptError(f"models have different outputs: {ref_names} vs {cand_names}")
    ref = run_model(reference, feeds, "reference model")
    got = run_model(candidate, feeds, "candidate model")
    return compare(ref_names, ref, got, rtol, atol)
