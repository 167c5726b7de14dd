"""Export the reference nets to ONNX with either PyTorch exporter and get back a self-contained ModelProto.

Observed with torch 2.13.0 (CPU), onnxscript 0.7.2, onnx 1.23.2, onnxruntime 1.31.1.
``exporter="torchscript"`` (``dynamo=False``) honours every opset 13–21 exactly; it folds Conv→BN in
eval mode, exports adaptive average pooling to 1x1 as GlobalAveragePool and ``flatten`` as Flatten,
and writes IR version 7 (opsets 13–14), 8 (15–18), 9 (19–20) or 10 (21). ``chunk`` becomes a
Shape/Gather/Div/Slice chain. Its constant folding (``fold_constants``, default on) leaves per-filter
weight normalisation computed from parameters in place (ReduceMean/Sub/Pow/Sqrt/Div on the weight
initializer), and so does dynamo's optimizer.
``exporter="dynamo"`` (torch.export + onnxscript) has implementations from opset 18 up: asked for
13–17 it exports at 18 and tries onnx's version converter, which fails on ReduceMean (axes moved
from input to attribute) and leaves the model at opset 18; this module therefore refuses opsets
below 18 for dynamo rather than return a different opset than asked. Dynamo writes IR version 10,
also folds BatchNorm into Conv, exports adaptive average pooling as ReduceMean, ``flatten`` as
Reshape and ``chunk`` as Split, and keeps every initializer inside the in-memory ``model_proto`` (only
``ONNXProgram.save`` may move them to a side file); a proto with external tensors is refused here. With
``dynamic_hw`` dynamo names the spatial axes itself (e.g. ``s53``, ``s0``) rather than height/width. Both
results get their IR version lowered to what the installed onnxruntime reads
(:func:`onnxopt.ir.fit_ir_version`).
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Sequence, Union

import onnx
import torch
from torch import nn

from ..errors import OnnxoptError
from ..ir import fit_ir_version

TORCHSCRIPT_OPSETS = range(13, 22)
DYNAMO_OPSETS = range(18, 22)

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


def export_onnx(model: nn.Module, example_inputs: Inputs, path: Union[str, os.PathLike, None] = None, *,
                exporter: str = "torchscript", opset: int = 17, dynamic_batch: bool = False,
                dynamic_hw: bool = False, input_names: Sequence[str] = ("input",),
                output_names: Sequence[str] = ("output",), fold_constants: bool = True) -> onnx.ModelProto:
    """Export ``model`` (switched to eval mode) and return the ModelProto; save it to ``path`` if given.

    ``dynamic_batch`` makes axis 0 of every input and output symbolic, ``dynamic_hw`` axes 2 and 3
    of every input. ``fold_constants`` is torchscript's ``do_constant_folding`` and dynamo's
    ``optimize``. Raises OnnxoptError for an exporter or opset it cannot honour.
    """
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    model.eval()
    if exporter == "torchscript":
        proto = _export_torchscript(model, inputs, opset, dynamic_batch, dynamic_hw, input_names, output_names,
                                    fold_constants)
    elif exporter == "dynamo":
        proto = _export_dynamo(model, inputs, opset, dynamic_batch, dynamic_hw, input_names, output_names,
                               fold_constants)
    else:
        raise OnnxoptError(f"unknown exporter {exporter!r}; expected 'torchscript' or 'dynamo'")
    fit_ir_version(proto)
    if path is not None:
        onnx.save_model(proto, os.fspath(path))
    return proto


def _dynamic_axes(input_names: Sequence[str], output_names: Sequence[str], batch: bool,
                  hw: bool) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name in input_names:
        axes[name] = {**({0: "batch"} if batch else {}), **({2: "height", 3: "width"} if hw else {})}
    for name in output_names:
        axes[name] = {0: "batch"} if batch else {}
    return {k: v for k, v in axes.items() if v}


def _export_torchscript(model: nn.Module, inputs: tuple, opset: int, batch: bool, hw: bool,
                        input_names: Sequence[str], output_names: Sequence[str], fold: bool) -> onnx.ModelProto:
    if opset not in TORCHSCRIPT_OPSETS:
        raise OnnxoptError(f"torchscript export supports opsets 13..21 here, not {opset}")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, buf, dynamo=False, opset_version=opset, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=_dynamic_axes(input_names, output_names,
                                                                                      batch, hw) or None,
                          do_constant_folding=fold)
    return onnx.load_model_from_string(buf.getvalue())


def _export_dynamo(model: nn.Module, inputs: tuple, opset: int, batch: bool, hw: bool,
                   input_names: Sequence[str], output_names: Sequence[str], optimize: bool) -> onnx.ModelProto:
    if opset not in DYNAMO_OPSETS:
        raise OnnxoptError(f"dynamo export supports opsets 18..21 (it cannot lower its output to {opset}); "
                           "use exporter='torchscript'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, inputs, dynamo=True, opset_version=opset, input_names=list(input_names),
                                    output_names=list(output_names), verbose=False, optimize=optimize,
                                    dynamic_shapes=_dynamic_shapes(len(inputs), batch, hw))
    proto = program.model_proto
    _check_self_contained(proto)
    if proto.opset_import and _default_opset(proto) != opset:
        raise OnnxoptError(f"dynamo exported opset {_default_opset(proto)}, not the requested {opset}")
    return proto


def _dynamic_shapes(count: int, batch: bool, hw: bool) -> tuple | None:
    if not (batch or hw):
        return None
    dims: dict[int, object] = {}
    if batch:
        dims[0] = torch.export.Dim("batch")
    if hw:
        dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
    return tuple(dict(dims) for _ in range(count))


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _check_self_contained(proto: onnx.ModelProto) -> None:
    """Refuse a ModelProto whose tensors point at external files (the in-memory proto should carry them)."""
    external = [t.name for t in onnx.external_data_helper._get_all_tensors(proto)
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise OnnxoptError(f"exported model keeps tensors outside the proto: {external[:3]}")
