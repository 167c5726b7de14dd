"""Model statistics: node and parameter counts, conv/gemm multiply-accumulates, dead filters.

MACs are counted per layer from concrete shapes: dynamic input dimensions are resolved (to 1, or
to what the caller gives) and onnx shape inference propagates them. Each op's rule is a small
function in :data:`MAC_RULES`, keyed by (domain, op type); custom ops register theirs with
:func:`mac_rule`.

    Conv          N * Cout * prod(out spatial) * (Cin / group) * prod(kernel)
    ConvTranspose N * Cin * prod(in spatial) * (Cout / group) * prod(kernel)
    Gemm          M * N * K
    MatMul        prod(batch dims) * M * N * K
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .ir import infer_shapes

Shape = Sequence[int]
#: (node, {tensor name: shape}, {initializer name: array}) -> MACs, or None if shapes are unknown
MacRule = Callable[[onnx.NodeProto, Mapping[str, Shape], Mapping[str, np.ndarray]], "int | None"]
MAC_RULES: dict[tuple[str, str], MacRule] = {}


def mac_rule(op: str, domain: str = ""):
    """Register the MAC rule of an op (decorator)."""
    def deco(fn: MacRule) -> MacRule:
        MAC_RULES[(domain, op)] = fn
        return fn
    return deco


def _group(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "group":
            return a.i
    return 1


def strided_size(node: onnx.NodeProto, h: int, w: int, attr: str = "strides") -> tuple[int, int]:
    """(ceil(h / sh), ceil(w / sw)) with the node's ints attribute ``attr`` (default [1, 1]): the
    output size of a 1x1 (Address)Conv."""
    sh, sw = next((list(a.ints) for a in node.attribute if a.name == attr), [1, 1])
    return -(-h // sh), -(-w // sw)


@mac_rule("Conv")
def _conv_macs(node, shapes, inits):
    w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
    if w is None or y is None:
        return None
    return int(np.prod(y, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))


@mac_rule("PerforatedConv", domain="ai.onnxopt")
def _perforated_conv_macs(node, shapes, inits):
    """Kept positions x the MACs of one output position (the fill costs no MACs)."""
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    positions = inits.get(node.input[3]) if len(node.input) > 3 else None
    if x is None or w is None or positions is None:
        return None
    return int(x[0] * w[0] * positions.size * np.prod(w[1:], dtype=np.int64))


@mac_rule("ConvTranspose")
def _conv_transpose_macs(node, shapes, inits):
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    if x is None or w is None:
        return None
    return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))


@mac_rule("Gemm")
def _gemm_macs(node, shapes, inits):
    a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
    if a is None or y is None:
        return None
    trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
    k = a[0] if trans_a else a[1]
    return int(y[0] * y[1] * k)


@mac_rule("MatMul")
def _matmul_macs(node, shapes, inits):
    a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
    if a is None or y is None or len(a) == 0:
        return None
    return int(np.prod(y, dtype=np.int64) * a[-1])


@dataclass
class LayerStats:
    name: str
    op: str
    macs: int | None
    out_channels: int | None = None
    zero_filters: int | None = None


@dataclass
class ModelStats:
    nodes: int
    params: int
    macs: int
    ops: dict[str, int]
    layers: list[LayerStats] = field(default_factory=list)
    custom_ops: dict[str, int] = field(default_factory=dict)
    unknown_macs: int = 0  # conv/gemm layers whose shapes could not be resolved

    def to_json(self) -> dict:
        return {
            "nodes": self.nodes, "params": self.params, "macs": self.macs, "ops": self.ops,
            "custom_ops": self.custom_ops, "unknown_macs": self.unknown_macs,
            "layers": [vars(layer) for layer in self.layers],
        }


def concrete_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Shape] | None = None) -> dict[str, list[int]]:
    """Shapes of every tensor with dynamic input dims resolved (given, else 1), via shape inference."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        given = (input_shapes or {}).get(inp.name)
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            value = given[i] if given is not None and i < len(given) else (d.dim_value if d.HasField("dim_value") else 1)
            d.Clear()
            d.dim_value = int(value)
    annotated = list(m.graph.value_info)
    del m.graph.value_info[:]
    m = infer_shapes(m)
    shapes: dict[str, list[int]] = {}
    # where inference stops (e.g. after a custom op whose function it cannot see through), the
    # graph's own static annotations (passes write them for the tensors they create)
    for vi in annotated:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and tt.shape.dim and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = [d.dim_value for d in tt.shape.dim]
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = [d.dim_value for d in tt.shape.dim]
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of the main graph, by name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    return values


def count_params(model: onnx.ModelProto) -> int:
    """Number of scalar weights: elements of floating-point initializers and constants."""
    return int(sum(v.size for v in initializers(model).values() if np.issubdtype(v.dtype, np.floating)))


def zero_filters(weight: np.ndarray) -> int:
    """Output channels (axis 0) whose filter is entirely zero."""
    if weight.ndim < 2:
        return 0
    return int(np.count_nonzero(~weight.reshape(weight.shape[0], -1).any(axis=1)))


def model_stats(model: onnx.ModelProto, input_shapes: Mapping[str, Shape] | None = None) -> ModelStats:
    """Statistics of the main graph (MACs for batch 1 unless ``input_shapes`` says otherwise)."""
    shapes = concrete_shapes(model, input_shapes)
    values = initializers(model)
    ops = collections.Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                              for n in model.graph.node)
    custom = {k: v for k, v in ops.items() if "." in k}
    layers, total, unknown = [], 0, 0
    for i, n in enumerate(model.graph.node):
        rule = MAC_RULES.get((n.domain if n.domain != "ai.onnx" else "", n.op_type))
        if rule is None:
            continue
        try:
            macs = rule(n, shapes, values)
        except (IndexError, KeyError, TypeError, ValueError):  # a malformed node: its cost is unknown
            macs = None
        if macs is None:
            unknown += 1
        else:
            total += macs
        layer = LayerStats(n.name or f"{n.op_type}_{i}", n.op_type, macs)
        w = values.get(n.input[1]) if len(n.input) > 1 else None
        if n.op_type in ("Conv", "ConvTranspose") or n.domain not in ("", "ai.onnx"):
            if w is not None and w.ndim >= 3:
                axis0 = w if n.op_type != "ConvTranspose" else np.swapaxes(w, 0, 1)
                layer.out_channels, layer.zero_filters = int(axis0.shape[0]), zero_filters(axis0)
        layers.append(layer)
    return ModelStats(nodes=len(model.graph.node), params=count_params(model), macs=total, ops=dict(ops),
                      layers=layers, custom_ops=custom, unknown_macs=unknown)
