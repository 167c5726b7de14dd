"""Fold: evaluate constant subgraphs once and fold BatchNorm and per-channel affine ops into conv/gemm weights.

Exact up to float rounding. The pass runs four stages, each linear in the graph size:

1. **Identity / Dropout / no-op Cast removal.** All are the identity at inference (a Cast or
   CastLike to the input's own type included). A Dropout is removed only when
   its mask output is unused and its ``training_mode`` input is absent or a constant false. An
   Identity feeding a graph output is removed by letting its producer write the output directly;
   one between a graph input (or a constant) and a graph output stays.

2. **Constant subgraphs.** ``Constant`` nodes become initializers, and so do Shape and Size of a
   tensor with a static shape and CastLike of a constant to a variable's known type (dynamo builds a
   missing conv bias that way). Every node whose inputs are all
   initializers (transitively: outputs of such nodes) is evaluated, all of them in ONE onnxruntime
   session (onnx's ReferenceEvaluator if onnxruntime refuses), and each tensor leaving that set is
   replaced by an initializer. Evaluating the subgraph as exported sidesteps the differences between
   normalisation variants (biased vs unbiased std, eps inside or outside the root). Not folded:
   nodes outside the standard domain, random ops, control flow, (De)QuantizeLinear (a QDQ model
   needs them), nodes whose output is a graph output, nodes whose output would exceed
   ``max_eval_elements`` (default 2**25) or whose size cannot be bounded for an op that can grow
   (Expand, Tile, ConstantOfShape, Range, ...). A result is materialised only if it is no larger than
   the initializers it derives from plus ``max_growth_bytes`` (default 256 KiB): an Expand of a
   scalar to an activation-sized tensor stays an Expand.

   The subgraph feeding a conv/gemm weight is named (``details["patterns"]``), by its op types:

   - ``timm BN-on-weights``: a BatchNormalization (training_mode=1) on the reshaped weight, timm's
     ``F.batch_norm(W.reshape(1, O, -1), training=True)``;
   - ``scaled WS`` (NF-Nets): W' = g_o (W - mean_o) / sqrt(max(N var_o, eps)), seen as ReduceMean,
     Sub, Sqrt and a Max or Clip;
   - ``WeightAlign``: W' = alpha_o (W - mean_o) / (sqrt(N) std_o), seen as ReduceMean, Sub, Sqrt and
     a per-filter gain initializer (size O) besides the weight, without Max/Clip;
   - ``WS`` (Weight Standardization): W' = (W - mean_o) / (std_o + eps): ReduceMean, Sub, Sqrt, no gain;
   - ``generic``: anything else (a reshape, a transpose, a cast, ...).

   WS followed by a learnable per-filter gain is reported as WeightAlign: the graph alone cannot
   tell them apart, and the fold is the same.

3. **Per-channel affine ops into linear neighbours.** An affine op computes y = a*x + b per channel:
   BatchNormalization (a = gamma / sqrt(var + eps), b = beta - mean*a, eps default 1e-5 as in the
   ONNX spec; only with constant parameters, spatial=1, not in training mode: training_mode=1 from
   opset 14, any statistics output before it, where the output count selects the mode; extra
   outputs unused),
   or Mul / Add / Sub / Div by a constant that varies along at most one axis and does not broadcast
   x to a larger shape (Sub c - x is a = -1, b = c; Div x / c is a = 1/c).

   *After* a linear op P whose output feeds only the affine op (output channel o):

   - Conv:          W'[o] = a_o W[o],                  B'_o = a_o B_o + b_o  (B = 0 when absent);
   - ConvTranspose: W[i, j] with o = group(i)*O/g + j: W'[i, j] = a_o W[i, j], B' as for Conv;
   - Gemm (Y = alpha A B~ + beta C, B~ = B or B^T): B~' = alpha B~ diag(a), C' = beta a C + b,
     alpha = beta = 1;
   - MatMul (X @ W, W constant 2-D): W' = W diag(a); a bias b != 0 turns a rank-2 MatMul into
     Gemm(X, W', b), and is declined for higher ranks (no bias slot).

   *Before* a Conv or Gemm Q that is the only consumer of y (input channel i of Q):

   - Conv:  W'[o, i] = a_i W[o, i],  B'_o = B_o + sum_{i,k} W[o, i, k] b_i  (within o's group);
   - Gemm (transA = 0): B~' = alpha diag(a) B~, C' = beta C + alpha b B~, alpha = beta = 1;
   - ConvTranspose: only b = 0 (W'[i] = a_i W[i]).

   With b != 0 this is exact only when Q reads no zero padding (a padded border sees 0, not b):
   declined otherwise ("BN before zero-padded conv: not exact"). A scale alone (b = 0) is exact
   with padding, since a*0 = 0.

   An affine op with a = 1 and b = 0 (Mul by ones, Add of zeros: the default affine of a GroupNorm)
   is removed. A BatchNormalization that can be absorbed nowhere becomes Mul(x, a) then Add(., b), with a and
   b shaped [C, 1, ...]; a Mul by ones or an Add of zeros is left out.

Per-channel vectors (a, b, biases, the shift a Gemm/Conv carries through) are computed in float64;
weights are scaled in float32 (float64 weights in float64) and cast back to their dtype, so fp16
models keep fp16 weights. Values are never changed in place: every folded tensor is a new initializer, so
an initializer shared by two consumers is never folded into both, and the pass manager's rollback
snapshot (which shares arrays) stays intact.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.ir import const_value, fit_ir_version, is_graph_output, producer, replace_tensor
from onnxopt.passmanager import PassContext, PassResult, register

log = logging.getLogger(__name__)

STD_DOMAINS = ("", "ai.onnx")
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
AFFINE_OPS = ("BatchNormalization", "Mul", "Add", "Sub", "Div")

#: Never evaluated at fold time: nondeterministic, control flow, sequences, quantisation boundaries.
NOT_FOLDABLE = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
    "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceAt", "SequenceErase",
    "SequenceLength", "SplitToSequence", "ConcatFromSequence", "SequenceMap", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Identity", "Dropout",
})
#: Ops whose output can be much larger than their inputs: folded only when the output size is known.
GROWING_OPS = frozenset({"Expand", "Tile", "ConstantOfShape", "Range", "Resize", "Upsample", "Pad", "OneHot",
                         "EyeLike", "MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Col2Im", "CumSum"})

DEFAULT_MAX_EVAL_ELEMENTS = 1 << 25
DEFAULT_MAX_GROWTH_BYTES = 256 * 1024


def _std(node: gs.Node) -> bool:
    return (node.domain or "") in STD_DOMAINS


def _empty(t: gs.Tensor) -> bool:
    """An omitted optional input."""
    return isinstance(t, gs.Variable) and t.name == ""


def _static_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    if isinstance(t, gs.Constant):
        return tuple(t.shape)
    shape = t.shape
    if shape is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _rank(t: gs.Tensor) -> int | None:
    return None if t.shape is None else len(t.shape)


def _consumers(t: gs.Tensor) -> list[gs.Node]:
    """Distinct consumer nodes of ``t``."""
    seen: dict[int, gs.Node] = {}
    for n in t.outputs:
        seen.setdefault(id(n), n)
    return list(seen.values())


def _only_consumer(t: gs.Tensor, graph: gs.Graph) -> gs.Node | None:
    cons = _consumers(t)
    return cons[0] if len(cons) == 1 and not is_graph_output(graph, t) else None


def _detach(node: gs.Node) -> None:
    """Disconnect a node from the graph; ``cleanup`` then drops it."""
    node.inputs.clear()
    node.outputs.clear()


def _f64(x: np.ndarray) -> np.ndarray:
    """Per-channel vectors (small): computed in float64."""
    return np.asarray(x, dtype=np.float64)


def _work(x: np.ndarray) -> np.ndarray:
    """Weights: float32 (float64 weights stay float64); no copy for float32 input."""
    return np.asarray(x, dtype=np.promote_types(x.dtype, np.float32))


def _vec(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A float64 per-channel vector in ``like``'s working dtype, so products stay in that precision."""
    return v.astype(like.dtype)


@dataclass
class _Affine:
    """y = a*x + b along ``axis`` of x (a, b of length C, or 1 when uniform; axis None when uniform)."""

    node: gs.Node
    x: gs.Tensor
    y: gs.Tensor
    a: np.ndarray
    b: np.ndarray
    axis: int | None
    rank: int | None

    @property
    def has_shift(self) -> bool:
        return bool(np.any(self.b != 0))

    def channels(self, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """a and b broadcast to ``n`` channels, or None if they do not fit."""
        if self.a.size not in (1, n) or self.b.size not in (1, n):
            return None
        return np.broadcast_to(self.a, (n,)).copy(), np.broadcast_to(self.b, (n,)).copy()


class _Names:
    def __init__(self, graph: gs.Graph):
        self.used = set(graph.tensors().keys())

    def __call__(self, base: str) -> str:
        name, k = f"{base}_fold", 1
        while name in self.used:
            k += 1
            name = f"{base}_fold{k}"
        self.used.add(name)
        return name


@register
class FoldPass:
    """Constant subgraphs, BatchNorm and per-channel affine ops folded into conv/gemm (see module docstring)."""

    name = "fold"
    exact = True
    order = 10

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return _Folder(graph, ctx).run()


class _Folder:
    def __init__(self, graph: gs.Graph, ctx: PassContext):
        self.graph, self.ctx = graph, ctx
        self.result = PassResult(FoldPass.name)
        self.names = _Names(graph)
        self.counts: Counter[str] = Counter()
        self.patterns: dict[str, str] = {}

    # --- driver -------------------------------------------------------------------------------

    def run(self) -> PassResult:
        g = self.graph
        g.toposort()
        self.remove_identities()
        self.fold_constants()
        g.cleanup().toposort()
        self.fold_affines()
        c = self.counts
        changed = sum(c.values()) > 0
        self.result.changed = changed
        self.result.details = {"patterns": self.patterns, **{k: v for k, v in sorted(c.items())}}
        self.result.summary = self.summary() if changed else "nothing to fold"
        return self.result

    def summary(self) -> str:
        c = self.counts
        parts = []
        if c["bn_after"] + c["bn_before"]:
            parts.append(f"folded {c['bn_after'] + c['bn_before']} BatchNormalization")
        if c["constant_subgraphs"]:
            kinds = Counter(self.patterns.values())
            named = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
            parts.append(f"{c['constant_subgraphs']} constant subgraphs" + (f" ({named})" if named else ""))
        if c["affine_absorbed"]:
            parts.append(f"absorbed {c['affine_absorbed']} Mul/Add/Sub/Div")
        if c["bn_to_affine"]:
            parts.append(f"{c['bn_to_affine']} standalone BatchNormalization -> Mul/Add")
        if c["constant_nodes"]:
            parts.append(f"{c['constant_nodes']} Constant nodes -> initializers")
        if c["static_ops"]:
            parts.append(f"{c['static_ops']} Shape/Size/CastLike of static inputs -> initializers")
        if c["identity_removed"]:
            parts.append(f"removed {c['identity_removed']} Identity/Dropout/no-op Cast")
        if c["neutral_removed"]:
            parts.append(f"removed {c['neutral_removed']} Mul by 1/Add of 0")
        return ", ".join(parts)

    # --- stage 1: Identity / Dropout ------------------------------------------------------------

    def remove_identities(self) -> None:
        g = self.graph
        for node in list(g.nodes):
            if not _std(node) or not node.inputs or not node.outputs:
                continue
            if node.op in ("Cast", "CastLike") and _noop_cast(node):
                if self._bypass(node, node.inputs[0], node.outputs[0]):
                    self.counts["identity_removed"] += 1
                continue
            if node.op not in ("Identity", "Dropout"):
                continue
            if node.op == "Dropout":
                reason = self._dropout_reason(node, g)
                if reason:
                    self.result.decline(node, reason)
                    continue
            if self._bypass(node, node.inputs[0], node.outputs[0]):
                self.counts["identity_removed"] += 1

    def _bypass(self, node: gs.Node, inp: gs.Tensor, out: gs.Tensor) -> bool:
        """Remove ``node``, whose output ``out`` equals its input ``inp``; False (declined) if it must stay."""
        g = self.graph
        if not is_graph_output(g, out):
            replace_tensor(out, inp, g)
            _detach(node)
            return True
        src = producer(inp) if isinstance(inp, gs.Variable) else None
        if src is None or is_graph_output(g, inp) or any(t is inp for t in g.inputs):
            self.result.decline(node, f"{node.op} between a graph input or constant and a graph output kept")
            return False
        _detach(node)
        replace_tensor(inp, out, g)  # the producer writes the graph output directly
        src.outputs[src.outputs.index(inp)] = out
        return True

    @staticmethod
    def _dropout_reason(node: gs.Node, graph: gs.Graph) -> str | None:
        if len(node.outputs) > 1 and (node.outputs[1].outputs or is_graph_output(graph, node.outputs[1])):
            return "Dropout mask output is used"
        if len(node.inputs) > 2 and not _empty(node.inputs[2]):
            mode = const_value(node.inputs[2])
            if mode is None or bool(np.any(mode)):
                return "Dropout in training mode (training_mode input not a constant false)"
        return None

    # --- stage 2: constant subgraphs ------------------------------------------------------------

    def fold_constants(self) -> None:
        g = self.graph
        for node in list(g.nodes):
            if node.op == "Constant" and _std(node) and len(node.outputs) == 1:
                out = node.outputs[0]
                if is_graph_output(g, out):
                    continue
                value = const_value(out)
                if value is None:
                    continue
                replace_tensor(out, gs.Constant(out.name, np.asarray(value)), g)
                out.name = self.names(out.name + "_dead")
                self.counts["constant_nodes"] += 1

        max_eval = int(self.ctx.option("max_eval_elements", DEFAULT_MAX_EVAL_ELEMENTS))
        folded: list[gs.Node] = []
        computed: dict[int, gs.Tensor] = {}  # id(tensor) -> tensor, outputs of folded nodes
        shapes: dict[int, tuple[int, ...] | None] = {}
        known: dict[int, np.ndarray] = {}  # values of Shape outputs, for the size guard
        for node in g.nodes:  # topological order
            static = _static_value(node)
            if static is not None and not is_graph_output(g, node.outputs[0]):
                out = node.outputs[0]
                replace_tensor(out, gs.Constant(out.name, static), g)
                out.name = self.names(out.name + "_dead")
                self.counts["static_ops"] += 1
                continue
            reason = self._foldable(node, computed, shapes, known, max_eval)
            if reason is None:
                folded.append(node)
                for t in node.outputs:
                    computed[id(t)] = t
            elif reason:
                self.result.decline(node, reason)
        if not folded:
            return
        folded_ids = {id(n) for n in folded}
        boundary = []
        for node in folded:
            for t in node.outputs:
                if any(id(c) not in folded_ids for c in t.outputs) and t.name:
                    boundary.append(t)
        if not boundary:
            return
        values = self._evaluate(folded, boundary)
        if values is None:
            return
        max_growth = int(self.ctx.option("max_growth_bytes", DEFAULT_MAX_GROWTH_BYTES))
        for t in boundary:
            value = values.get(t.name)
            if value is None:
                continue
            cone, leaves = self._cone(t, folded_ids)
            leaf_bytes = sum(c.values.nbytes for c in leaves)
            if value.nbytes > leaf_bytes + max_growth:
                self.result.decline(producer(t) or t.name,
                                    f"constant fold would grow the model ({value.nbytes} bytes from {leaf_bytes})")
                continue
            const = gs.Constant(t.name, np.ascontiguousarray(value))
            consumers = _consumers(t)
            replace_tensor(t, const, g)
            t.name = self.names(t.name + "_dead")  # the unused original goes with cleanup; no name clash
            self.counts["constant_subgraphs"] += 1
            for c in consumers:
                if c.op in LINEAR_OPS and _std(c) and len(c.inputs) > 1 and c.inputs[1] is const:
                    self.patterns[c.name or c.op] = classify(cone, leaves, value)

    def _foldable(self, node: gs.Node, computed: dict, shapes: dict, known: dict, max_eval: int) -> str | None:
        """None if ``node`` can be folded; '' if it plainly cannot; a reason worth reporting otherwise."""
        if not _std(node) or node.op in NOT_FOLDABLE or not node.inputs or not node.outputs:
            return ""
        for i, t in enumerate(node.inputs):
            if node.op == "CastLike" and i == 1 and _known_dtype(t) is not None:
                continue  # only its type is read: evaluated as Cast
            if not (isinstance(t, gs.Constant) or _empty(t) or id(t) in computed):
                return ""
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return ""
        if any(is_graph_output(self.graph, t) for t in node.outputs):
            return ""
        for t in node.outputs:
            shape = _static_shape(t)
            if shape is None and node.op in GROWING_OPS:
                shape = _grown_shape(node, shapes, known)
            if shape is None and node.op in GROWING_OPS:
                return f"{node.op} on constants: output size unknown, not folded"
            if shape is not None and int(np.prod(shape, dtype=np.float64)) > max_eval:
                return f"{node.op} on constants: output of {int(np.prod(shape, dtype=np.float64))} elements not folded"
            shapes[id(t)] = shape
        small = _small_int_value(node, shapes, known)
        if small is not None:
            known[id(node.outputs[0])] = small
        return None

    def _cone(self, t: gs.Tensor, folded_ids: set[int]) -> tuple[list[gs.Node], list[gs.Constant]]:
        """The folded nodes ``t`` derives from, and the initializers at their roots."""
        nodes: dict[int, gs.Node] = {}
        leaves: dict[int, gs.Constant] = {}
        stack = [t]
        while stack:
            cur = stack.pop()
            if isinstance(cur, gs.Constant):
                leaves[id(cur)] = cur
                continue
            p = producer(cur)
            if p is None or id(p) not in folded_ids or id(p) in nodes:
                continue
            nodes[id(p)] = p
            stack.extend(p.inputs)
        return list(nodes.values()), list(leaves.values())

    def _evaluate(self, nodes: list[gs.Node], outputs: list[gs.Tensor]) -> dict[str, np.ndarray] | None:
        """Run ``nodes`` (inputs: initializers) in one session; {output name: value}."""
        from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

        g = self.graph
        made = {t.name for n in nodes for t in n.outputs}
        inits: dict[str, gs.Constant] = {}
        for n in nodes:
            for t in n.inputs:
                if isinstance(t, gs.Constant):
                    inits.setdefault(t.name, t)
        protos = []
        for n in nodes:
            if n.op == "CastLike" and not isinstance(n.inputs[1], gs.Constant) and n.inputs[1].name not in made:
                to = onnx.helper.np_dtype_to_tensor_dtype(_known_dtype(n.inputs[1]))
                protos.append(onnx.helper.make_node("Cast", [n.inputs[0].name], [n.outputs[0].name], to=to))
            else:
                protos.append(OnnxExporter.export_node(n))
        graph_proto = onnx.helper.make_graph(
            protos, "fold_constants", [],
            [onnx.helper.make_empty_tensor_value_info(t.name) for t in outputs],
            [OnnxExporter.export_tensor_proto(c) for c in inits.values()])
        model = onnx.helper.make_model(graph_proto, opset_imports=[onnx.helper.make_opsetid("", g.opset)])
        fit_ir_version(model)
        names = [t.name for t in outputs]
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.log_severity_level = 3
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return dict(zip(names, sess.run(names, {})))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; fall back below
            log.debug("onnxruntime could not evaluate the constant subgraphs (%s); trying ReferenceEvaluator", e)
        try:
            from onnx.reference import ReferenceEvaluator

            return dict(zip(names, ReferenceEvaluator(model).run(names, {})))
        except Exception as e:  # noqa: BLE001 - the reference evaluator raises assorted errors
            self.result.decline("<constant subgraphs>", f"could not be evaluated: {str(e).splitlines()[0][:200]}")
            return None

    # --- stage 3: per-channel affine ops ----------------------------------------------------------

    def fold_affines(self) -> None:
        for node in list(self.graph.nodes):
            if not _std(node) or node.op not in AFFINE_OPS or not node.outputs:
                continue
            aff = self._affine(node)
            if isinstance(aff, str):
                if node.op == "BatchNormalization":
                    self.result.decline(node, aff)
                continue
            is_bn = node.op == "BatchNormalization"
            if not is_bn and np.all(aff.a == 1) and not aff.has_shift and _keeps_shape(aff):
                if self._bypass(node, aff.x, aff.y):  # x*1, x+0, x-0, x/1
                    self.counts["neutral_removed"] += 1
                continue
            why_after = self._absorb_after(aff)
            if why_after is None:
                self.counts["bn_after" if is_bn else "affine_absorbed"] += 1
                continue
            why_before = self._absorb_before(aff)
            if why_before is None:
                self.counts["bn_before" if is_bn else "affine_absorbed"] += 1
                continue
            if is_bn:
                why_standalone = self._bn_to_affine(aff)
                if why_standalone is None:
                    self.counts["bn_to_affine"] += 1
                for why in (why_after, why_before, why_standalone):
                    if why:
                        self.result.decline(node, why)
            else:
                for why in (why_after, why_before):
                    if why:
                        self.result.decline(node, why)

    def _affine(self, node: gs.Node) -> _Affine | str:
        """Describe ``node`` as y = a*x + b per channel, or say why it is not one."""
        if node.op == "BatchNormalization":
            return self._bn_affine(node)
        if len(node.inputs) != 2 or len(node.outputs) != 1:
            return "not a binary op"
        c0, c1 = const_value(node.inputs[0]), const_value(node.inputs[1])
        if (c0 is None) == (c1 is None):
            return "not one constant and one variable input"
        swapped = c0 is not None
        x, c = (node.inputs[1], c0) if swapped else (node.inputs[0], c1)
        if c.dtype.kind != "f":
            return "constant is not floating point"
        rank = _rank(x)
        if rank is None and (p := producer(x)) is not None and p.op in ("Conv", "ConvTranspose") and \
                isinstance(p.inputs[1], gs.Constant):
            rank = p.inputs[1].values.ndim
        if rank is None or c.ndim > rank:
            return "rank unknown, or the constant broadcasts x to a higher rank"
        padded = (1,) * (rank - c.ndim) + tuple(c.shape)
        xs = x.shape or []
        varying = [i for i, d in enumerate(padded) if d != 1]
        if len(varying) > 1:
            return "constant varies along more than one axis"
        axis = varying[0] if varying else None
        if axis is not None and len(xs) == rank and isinstance(xs[axis], (int, np.integer)) and xs[axis] != padded[axis]:
            return "constant broadcasts x"
        v = _f64(c).reshape(-1)
        one, zero = np.ones_like(v), np.zeros_like(v)
        if node.op == "Mul":
            a, b = v, zero
        elif node.op == "Add":
            a, b = one, v
        elif node.op == "Sub":
            a, b = (-one, v) if swapped else (one, -v)
        else:  # Div
            if swapped:
                return "constant divided by x is not affine"
            a, b = 1.0 / v, zero
        return _Affine(node, x, node.outputs[0], a, b, axis, rank)

    def _bn_affine(self, node: gs.Node) -> _Affine | str:
        if len(node.inputs) != 5:
            return "BatchNormalization with unexpected inputs"
        if node.attrs.get("training_mode", 0):
            return "BatchNormalization in training mode (batch statistics): not an affine op"
        if self.graph.opset < 14 and any(t.name for t in node.outputs[1:]):
            return "BatchNormalization with statistics outputs is in training mode before opset 14: not an affine op"
        if node.attrs.get("spatial", 1) != 1:
            return "BatchNormalization with spatial=0 not folded"
        if any(t.outputs or is_graph_output(self.graph, t) for t in node.outputs[1:]):
            return "BatchNormalization extra outputs (running/saved statistics) are used"
        params = [const_value(t) for t in node.inputs[1:]]
        if any(p is None for p in params):
            return "BatchNormalization parameters are not constants"
        scale, bias, mean, var = (_f64(p).reshape(-1) for p in params)
        eps = float(node.attrs.get("epsilon", 1e-5))
        a = scale / np.sqrt(var + eps)
        b = bias - mean * a
        return _Affine(node, node.inputs[0], node.outputs[0], a, b, 1, _rank(node.inputs[0]))

    # after a linear op --------------------------------------------------------------------------

    def _absorb_after(self, aff: _Affine) -> str | None:
        g = self.graph
        p = producer(aff.x) if isinstance(aff.x, gs.Variable) else None
        if p is None or not _std(p) or p.op not in LINEAR_OPS or p.outputs[0] is not aff.x:
            return ""
        if _only_consumer(aff.x, g) is not aff.node:
            return f"{p.op} output has other consumers or is a graph output"
        w = p.inputs[1] if len(p.inputs) > 1 else None
        if not isinstance(w, gs.Constant) or w.values.dtype.kind != "f":
            return f"{p.op} weight is not a floating-point initializer"
        bias = p.inputs[2] if len(p.inputs) > 2 and not _empty(p.inputs[2]) else None
        if bias is not None and not isinstance(bias, gs.Constant):
            return f"{p.op} bias is not an initializer"
        fold = {"Conv": self._after_conv, "ConvTranspose": self._after_convtranspose,
                "Gemm": self._after_gemm, "MatMul": self._after_matmul}[p.op]
        why = fold(p, aff, w, bias)
        if why is None:
            _detach(aff.node)
            p.outputs[0] = aff.y
        return why

    def _set_bias(self, node: gs.Node, base: str, values: np.ndarray, dtype: np.dtype) -> None:
        const = gs.Constant(self.names(base), values.astype(dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = const
        else:
            node.inputs.append(const)

    def _after_conv(self, p: gs.Node, aff: _Affine, w: gs.Constant, bias: gs.Constant | None) -> str | None:
        W = w.values
        if aff.axis not in (None, 1):
            return "per-channel constant is not along the conv's channel axis"
        ab = aff.channels(W.shape[0])
        if ab is None:
            return "channel count does not match the conv's output channels"
        a, b = ab
        B = _f64(bias.values) if bias is not None else np.zeros(W.shape[0])
        Ww = _work(W)
        p.inputs[1] = gs.Constant(self.names(w.name),
                                  (Ww * _vec(a, Ww).reshape((-1,) + (1,) * (W.ndim - 1))).astype(W.dtype, copy=False))
        self._set_bias(p, w.name + "_bias" if bias is None else bias.name, B * a + b, W.dtype)
        return None

    def _after_convtranspose(self, p, aff, w, bias) -> str | None:
        W = w.values
        g = int(p.attrs.get("group", 1))
        if aff.axis not in (None, 1):
            return "per-channel constant is not along the conv's channel axis"
        out = W.shape[1] * g
        ab = aff.channels(out)
        if ab is None:
            return "channel count does not match the ConvTranspose's output channels"
        a, b = ab
        k = W.shape[2:]
        Wg = _work(W).reshape((g, W.shape[0] // g, W.shape[1]) + k)
        Wn = (Wg * _vec(a, Wg).reshape((g, 1, W.shape[1]) + (1,) * len(k))).reshape(W.shape)
        B = _f64(bias.values) if bias is not None else np.zeros(out)
        p.inputs[1] = gs.Constant(self.names(w.name), Wn.astype(W.dtype, copy=False))
        self._set_bias(p, w.name + "_bias" if bias is None else bias.name, B * a + b, W.dtype)
        return None

    def _after_gemm(self, p, aff, w, bias) -> str | None:
        if aff.axis not in (None, 1) or (aff.rank not in (None, 2)):
            return "per-channel constant is not along the Gemm's output columns"
        W = w.values
        trans_b = int(p.attrs.get("transB", 0))
        Bm = _f64(W.T if trans_b else W)  # [K, M]
        ab = aff.channels(Bm.shape[1])
        if ab is None:
            return "channel count does not match the Gemm's output columns"
        a, b = ab
        alpha, beta = float(p.attrs.get("alpha", 1.0)), float(p.attrs.get("beta", 1.0))
        Bn = alpha * Bm * a[None, :]
        C = beta * _f64(bias.values) * a + b if bias is not None else b
        p.inputs[1] = gs.Constant(self.names(w.name), (Bn.T if trans_b else Bn).astype(W.dtype, copy=False))
        self._set_bias(p, w.name + "_bias" if bias is None else bias.name, C, W.dtype)
        p.attrs["alpha"], p.attrs["beta"] = 1.0, 1.0
        return None

    def _after_matmul(self, p, aff, w, bias) -> str | None:
        W = w.values
        if W.ndim != 2:
            return "MatMul weight is not 2-D"
        rank = aff.rank or _rank(p.inputs[0])
        if rank is None or rank < 2:
            return "MatMul output rank unknown"
        if aff.axis not in (None, rank - 1):
            return "per-channel constant is not along the MatMul's output columns"
        ab = aff.channels(W.shape[1])
        if ab is None:
            return "channel count does not match the MatMul's output columns"
        a, b = ab
        if aff.has_shift and rank != 2:
            return "MatMul of rank > 2 has no bias slot for the shift"
        Ww = _work(W)
        Wn = gs.Constant(self.names(w.name), (Ww * _vec(a, Ww)[None, :]).astype(W.dtype, copy=False))
        p.inputs[1] = Wn
        if aff.has_shift:
            p.op = "Gemm"
            p.attrs = {}
            self._set_bias(p, w.name + "_bias", b, W.dtype)
        return None

    # before a linear op -------------------------------------------------------------------------

    def _absorb_before(self, aff: _Affine) -> str | None:
        q = _only_consumer(aff.y, self.graph)
        if q is None or not _std(q) or q.op not in ("Conv", "ConvTranspose", "Gemm") or q.inputs[0] is not aff.y:
            return ""
        if sum(1 for t in q.inputs if t is aff.y) != 1:
            return ""
        w = q.inputs[1] if len(q.inputs) > 1 else None
        if not isinstance(w, gs.Constant) or w.values.dtype.kind != "f":
            return f"{q.op} weight is not a floating-point initializer"
        bias = q.inputs[2] if len(q.inputs) > 2 and not _empty(q.inputs[2]) else None
        if bias is not None and not isinstance(bias, gs.Constant):
            return f"{q.op} bias is not an initializer"
        label = "BN" if aff.node.op == "BatchNormalization" else aff.node.op
        W = w.values
        if q.op == "Conv":
            if aff.axis not in (None, 1):
                return ""
            if aff.has_shift and _zero_padded(q):
                return f"{label} before zero-padded conv: not exact"
            g = int(q.attrs.get("group", 1))
            cin = W.shape[1] * g
            ab = aff.channels(cin)
            if ab is None:
                return "channel count does not match the conv's input channels"
            a, b = ab
            o, ig, k = W.shape[0], W.shape[1], W.shape[2:]
            Wg = _work(W).reshape((g, o // g, ig) + k)
            ones = (1,) * len(k)
            Wn = (Wg * _vec(a, Wg).reshape((g, 1, ig) + ones)).reshape(W.shape)
            shift = (_f64(Wg) * b.reshape((g, 1, ig) + ones)).sum(axis=tuple(range(2, Wg.ndim))).reshape(o)
            B = _f64(bias.values) if bias is not None else np.zeros(o)
            q.inputs[1] = gs.Constant(self.names(w.name), Wn.astype(W.dtype, copy=False))
            if aff.has_shift or bias is not None:
                self._set_bias(q, w.name + "_bias" if bias is None else bias.name, B + shift, W.dtype)
        elif q.op == "ConvTranspose":
            if aff.axis not in (None, 1):
                return ""
            if aff.has_shift:
                return f"{label} shift before ConvTranspose: not exact (border outputs see fewer taps)"
            ab = aff.channels(W.shape[0])
            if ab is None:
                return "channel count does not match the ConvTranspose's input channels"
            a, _ = ab
            Ww = _work(W)
            q.inputs[1] = gs.Constant(self.names(w.name),
                                      (Ww * _vec(a, Ww).reshape((-1,) + (1,) * (W.ndim - 1))).astype(W.dtype, copy=False))
        else:  # Gemm
            if int(q.attrs.get("transA", 0)) or aff.rank != 2 or aff.axis not in (None, 1):
                return ""
            trans_b = int(q.attrs.get("transB", 0))
            Bm = _f64(W.T if trans_b else W)  # [K, M]
            ab = aff.channels(Bm.shape[0])
            if ab is None:
                return "channel count does not match the Gemm's input columns"
            a, b = ab
            alpha, beta = float(q.attrs.get("alpha", 1.0)), float(q.attrs.get("beta", 1.0))
            Bn = alpha * a[:, None] * Bm
            C = (beta * _f64(bias.values) if bias is not None else 0.0) + alpha * (b @ Bm)
            q.inputs[1] = gs.Constant(self.names(w.name), (Bn.T if trans_b else Bn).astype(W.dtype, copy=False))
            self._set_bias(q, w.name + "_bias" if bias is None else bias.name, np.asarray(C), W.dtype)
            q.attrs["alpha"], q.attrs["beta"] = 1.0, 1.0
        x = aff.x
        _detach(aff.node)
        q.inputs[0] = x
        return None

    # standalone BN ------------------------------------------------------------------------------

    def _bn_to_affine(self, aff: _Affine) -> str | None:
        if aff.rank is None or aff.rank < 2:
            return "standalone BatchNormalization with unknown input rank kept"
        node, x, y = aff.node, aff.x, aff.y
        dtype = np.dtype(x.dtype if x.dtype is not None else node.inputs[1].dtype)
        shape = (-1,) + (1,) * (aff.rank - 2)
        base = node.name or "bn"
        ops = []
        if np.any(aff.a != 1) or not aff.has_shift:  # a BN that is the identity still needs one node
            ops.append(("Mul", gs.Constant(self.names(base + "_scale"), aff.a.reshape(shape).astype(dtype))))
        if aff.has_shift:
            ops.append(("Add", gs.Constant(self.names(base + "_shift"), aff.b.reshape(shape).astype(dtype))))
        _detach(node)
        cur = x
        for i, (op, const) in enumerate(ops):
            out = y if i == len(ops) - 1 else gs.Variable(self.names(base + "_" + op.lower()), dtype=dtype,
                                                           shape=y.shape)
            self.graph.nodes.append(gs.Node(op, f"{base}_{op.lower()}", inputs=[cur, const], outputs=[out]))
            cur = out
        return None


def _known_dtype(t: gs.Tensor) -> np.dtype | None:
    try:
        return np.dtype(t.dtype) if t.dtype is not None else None
    except TypeError:  # onnx types numpy lacks (bfloat16, float8)
        return None


def _noop_cast(node: gs.Node) -> bool:
    """Cast to the input's own type, CastLike to a tensor of the input's type."""
    src = _known_dtype(node.inputs[0])
    if src is None:
        return False
    if node.op == "Cast":
        to = node.attrs.get("to")
        return to is not None and onnx.helper.tensor_dtype_to_np_dtype(int(to)) == src
    return len(node.inputs) == 2 and _known_dtype(node.inputs[1]) == src


def _keeps_shape(aff: _Affine) -> bool:
    """Whether the op's output provably has x's shape (the constant never broadcasts x larger)."""
    if aff.rank is None:
        return False
    if aff.axis is None:
        return True
    shape = aff.x.shape or []
    return len(shape) == aff.rank and isinstance(shape[aff.axis], (int, np.integer)) and shape[aff.axis] == aff.a.size


def _static_value(node: gs.Node) -> np.ndarray | None:
    """The value of a node that only reads static properties of its input: Shape and Size of a tensor
    with a static shape (so a weight's shape never makes its values travel to the evaluator), CastLike
    of a constant to a variable's known type."""
    if not _std(node) or len(node.outputs) != 1 or not node.inputs:
        return None
    x = node.inputs[0]
    if node.op in ("Shape", "Size") and (shape := _static_shape(x)) is not None:
        if node.op == "Size":
            return np.asarray(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        return np.asarray(shape[start:end], dtype=np.int64)
    if node.op == "CastLike" and len(node.inputs) == 2 and isinstance(x, gs.Constant) \
            and isinstance(node.inputs[1], gs.Variable) and node.inputs[1].dtype is not None:
        try:
            dtype = np.dtype(node.inputs[1].dtype)
        except TypeError:
            return None
        if dtype.kind in "fiub" and x.values.dtype.kind in "fiub":
            return x.values.astype(dtype)
    return None


def _zero_padded(conv: gs.Node) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", "VALID"):
        return True
    return any(int(p) != 0 for p in conv.attrs.get("pads", []) or [])


#: Small integer tensors (shape arithmetic) are tracked through these ops to bound growing ops' sizes.
_SMALL = 64


def _small_int_value(node: gs.Node, shapes: dict, known: dict) -> np.ndarray | None:
    """The value of a small integer output of a shape-arithmetic node, for the size guard only
    (the folded values themselves come from onnxruntime)."""
    def value(t):
        v = t.values if isinstance(t, gs.Constant) else known.get(id(t))
        return None if v is None or v.size > _SMALL or v.dtype.kind not in "iu" else np.asarray(v)

    op, a = node.op, node.attrs
    if len(node.outputs) != 1:
        return None
    if op == "Shape":
        src = node.inputs[0]
        shape = _static_shape(src) if _static_shape(src) is not None else shapes.get(id(src))
        return None if shape is None else np.asarray(shape[a.get("start", 0):a.get("end")], dtype=np.int64)
    vals = [value(t) if not _empty(t) else None for t in node.inputs]
    if any(v is None for v, t in zip(vals, node.inputs) if not _empty(t)):
        return None
    try:
        if op in ("Identity", "Cast") and vals[0] is not None:
            return vals[0]
        if op == "Expand":
            return np.broadcast_to(vals[0], np.broadcast_shapes(vals[0].shape, tuple(vals[1]))).copy()
        if op == "Concat":
            return np.concatenate(vals, axis=a.get("axis", 0))
        if op == "Unsqueeze":
            axes = list(vals[1]) if len(vals) > 1 else list(a.get("axes", []))
            out = vals[0]
            for ax in sorted(int(x) % (out.ndim + len(axes)) for x in axes):
                out = np.expand_dims(out, ax)
            return out
        if op == "Squeeze":
            axes = vals[1] if len(vals) > 1 and vals[1] is not None else a.get("axes")
            return np.squeeze(vals[0], axis=None if axes is None else tuple(int(x) for x in axes))
        if op == "Gather":
            return np.take(vals[0], vals[1], axis=a.get("axis", 0))
        if op == "Reshape":
            shape = [d if d != 0 else vals[0].shape[i] for i, d in enumerate(vals[1])]
            return vals[0].reshape(shape)
        if op in ("Add", "Sub", "Mul"):
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](vals[0], vals[1])
    except (ValueError, TypeError, IndexError, np.exceptions.AxisError):
        return None
    return None


def _grown_shape(node: gs.Node, shapes: dict, known: dict) -> tuple[int, ...] | None:
    """Output shape of a growing op from its inputs' shapes and constant values, where cheap to know."""
    def value(t):
        return t.values if isinstance(t, gs.Constant) else known.get(id(t))

    def shape(t):
        return _static_shape(t) if isinstance(t, gs.Constant) or _static_shape(t) else shapes.get(id(t))

    ins = node.inputs
    try:
        if node.op == "Expand" and shape(ins[0]) is not None and value(ins[1]) is not None:
            return tuple(np.broadcast_shapes(shape(ins[0]), tuple(int(d) for d in value(ins[1]))))
        if node.op == "Tile" and shape(ins[0]) is not None and value(ins[1]) is not None:
            return tuple(int(s) * int(r) for s, r in zip(shape(ins[0]), value(ins[1])))
        if node.op == "ConstantOfShape" and value(ins[0]) is not None:
            return tuple(int(d) for d in value(ins[0]))
        if node.op == "Range" and all(value(t) is not None for t in ins[:3]):
            start, limit, delta = (float(value(t)) for t in ins[:3])
            return (max(int(np.ceil((limit - start) / delta)), 0),)
        if node.op in ("MatMul", "Gemm", "Conv", "ConvTranspose") and all(shape(t) is not None for t in ins):
            return None  # shape inference would have known; stay conservative
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return None
    return None


def classify(cone: list[gs.Node], leaves: list[gs.Constant], value: np.ndarray) -> str:
    """Name the weight normalisation a folded subgraph computed (see the module docstring)."""
    ops = Counter(n.op for n in cone)
    if ops["BatchNormalization"]:
        return "timm BN-on-weights"
    standardised = ops["ReduceMean"] and ops["Sub"] and (ops["Sqrt"] or ops["Pow"] or ops["Reciprocal"])
    if not standardised:
        return "generic"
    if ops["Max"] or ops["Clip"]:
        return "scaled WS"
    filters = value.shape[0] if value.ndim else 0
    weight = max(leaves, key=lambda c: c.values.size, default=None)
    gain = any(c is not weight and c.values.dtype.kind == "f" and c.values.size == filters > 1 for c in leaves)
    return "WeightAlign" if gain else "WS"


__all__ = ["FoldPass", "classify"]
