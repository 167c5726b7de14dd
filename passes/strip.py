"""Strip: physically remove the channels that structured-sparsity training has killed.

A channel of a conv/gemm output is *dead* when what it carries never reaches an output: either
every layer that reads it has zero weights for it (input-side deadness), or it is a per-channel
constant (a zero filter emits its bias ``b_c``) that every reader can absorb exactly into its own
bias. Removing it removes the filter, the matching slices of everything between producer and
readers (BN parameters, per-channel constants, Split sizes, depthwise filters and ``group``), and
the readers' weights for it.

Channel handlers and groups
    Every channel-carrying tensor (rank >= 2, channel axis 1, known width) contributes one element
    per channel to a union-find. Each op type has a handler saying how its channels relate:

    * pass-through (activations, Clip, BN, per-channel Mul/Add/Sub/Div, Max/Min, PRelu, pooling,
      Resize, spatial Reduce*, spatial Slice): input channel c is output channel c;
    * Add/Mul/... of two channel tensors ties all of them (a residual sum couples its producers);
    * Concat on the channel axis maps output ``off_i + c`` to input i's channel c; Split and a
      channel-axis Slice map the other way;
    * a depthwise conv (``group == Cin``, ``Cout = m * Cin``) ties output ``c*m + j`` to input c;
    * Flatten (axis 1), or a Reshape to [N, C*H*W], ties Gemm input rows ``c*HW .. c*HW+HW-1`` to
      channel c; Squeeze/Unsqueeze of spatial axes pass channels through;
    * Conv and Gemm *read* their input channels (sinks) and *start* new channels; a grouped conv
      (not depthwise) too, group g's filters reading only group g's inputs, and its input and its
      output must keep equally many channels in every group: a group short of the fullest one keeps
      its lowest removable channels as well (reported), and ``group`` stays;
    * anything else (other Reshapes, Transpose, MatMul, graph inputs and outputs) pins every
      channel it touches: they keep their shapes.

    A group (union-find class) goes as a whole, from every tensor in it, or not at all. It goes
    only if nothing pins it and every sink read of it is absorbable (below). So a channel of a
    residual stream goes only if it is constant in every producer of the sum (an Add of a live
    and a constant channel is not constant), and then it goes from every producer and consumer.

Constants
    A zero filter emits ``b_c`` everywhere. Per-channel constants are propagated forward in
    float64: ``act(k)`` through activations, the affine map through BN and per-channel Mul/Add,
    unchanged through max/global pooling and Resize, unchanged through average pooling unless it
    counts zero padding (then only 0 survives), through a depthwise conv only if the constant is 0
    or the conv is unpadded (``k * sum(w_c) + b_c``); a zero depthwise filter emits its bias.

Absorption (exact): a reader whose weights for channel c are zero needs nothing. Otherwise
    the constant k must be known and either 0, or the reader must see it at every tap:

        conv without padding (any kernel, stride, dilation):  b2[o] += k * sum_{taps} W2[o, c]
        Gemm (rows of channel c, after Flatten or global pooling):  C[f] += alpha/beta * k * sum_rows B[r, f]

    A zero-padded conv sees the constant only inside the image, so a nonzero constant there keeps
    the channel (declined, with the reason) unless option ``bias_map`` is set: then the exact
    contribution ``sum_c sum_{taps inside the image} W2[o, c, kh, kw] * k_c`` at every output
    position is added after the conv as a constant ``[1, Cout, Ho, Wo]`` map (2-D convs with
    explicit pads and known shapes).

Threshold (pass ``strip-near``, lossy): a filter counts as zero when ``max|w_o| <= t * max|W|``
    (and an input column of a reader likewise); its output is taken to be its bias. The default
    pipeline runs only the exact ``strip`` (threshold 0); apply's verification reports the
    deviation of ``strip-near``.

Options (``options={"strip": {...}}`` or ``{"strip-near": {...}}``)
    ``threshold``  relative threshold; ``strip-near`` only (default 1e-3); the exact ``strip``
                   ignores it and says so in its declined list.
    ``bias_map``   fold nonzero constants into zero-padded readers as per-position bias maps
                   (default False: such channels are kept). Exact; costs one Add and a
                   ``Cout x Ho x Wo`` constant per affected reader.

No tensor loses every channel (one is kept), and the pass is linear in the number of channels.
Details: ``channels_removed`` {layer: n}, ``channels_total``, params and MACs before/after.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import clip_bounds, const_value, is_graph_output
from onnxopt.passmanager import PassContext, PassResult, register

log = logging.getLogger(__name__)

_NAN = np.nan


# --- unary elementwise ops: how a constant maps through them ------------------------------------

def _unary_fn(node: gs.Node) -> Callable[[np.ndarray], np.ndarray] | None:
    a = node.attrs
    op = node.op
    if op in ("Identity", "Dropout"):
        return lambda x: x
    if op == "Relu":
        return lambda x: np.where(np.isnan(x), x, np.maximum(x, 0.0))
    if op == "LeakyRelu":
        al = float(a.get("alpha", 0.01))
        return lambda x: np.where(x < 0, al * x, x)
    if op == "Clip":
        b = clip_bounds(node, ordered=False)  # min > max: every value becomes max, as np.clip does
        if b is None:
            return None
        return lambda x: np.where(np.isnan(x), x, np.clip(x, b[0], b[1]))
    if op == "Sigmoid":
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    if op == "HardSigmoid":
        al, be = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        return lambda x: np.where(np.isnan(x), x, np.clip(al * x + be, 0.0, 1.0))
    if op == "HardSwish":
        return lambda x: np.where(np.isnan(x), x, x * np.clip(x / 6.0 + 0.5, 0.0, 1.0))
    if op == "Tanh":
        return np.tanh
    if op == "Elu":
        al = float(a.get("alpha", 1.0))
        return lambda x: np.where(x < 0, al * (np.exp(x) - 1.0), x)
    if op == "Selu":
        al, ga = float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875))
        return lambda x: np.where(x <= 0, ga * (al * np.exp(x) - al), ga * x)
    if op == "Softplus":
        return lambda x: np.log1p(np.exp(x))
    if op == "Neg":
        return np.negative
    if op == "Abs":
        return np.abs
    if op == "Mish":
        return lambda x: x * np.tanh(np.log1p(np.exp(x)))
    return None


_UNARY = {"Identity", "Dropout", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
          "Elu", "Selu", "Softplus", "Neg", "Abs", "Mish"}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
           "Max": np.maximum, "Min": np.minimum,
           "PRelu": lambda x, s: np.where(x < 0, s * x, x)}


def _pads_zero(node: gs.Node) -> bool:
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID"):
        return False
    return not any(int(p) for p in node.attrs.get("pads", []))


class _Analysis:
    """Union-find over channels of channel-carrying tensors, constants, needs and rewriters."""

    def __init__(self, graph: gs.Graph, threshold: float):
        self.graph = graph
        self.threshold = threshold
        self.bias_map = False  # exact per-position bias maps for zero-padded readers of constants
        self.opset = 13
        self.base: dict[int, int] = {}  # id(tensor) -> first element
        self.width: dict[int, int] = {}
        self.tensors: dict[int, gs.Tensor] = {}
        self.parent: list[int] = []
        self.const: dict[int, np.ndarray] = {}
        self.needs: list[tuple[np.ndarray, str, str]] = []  # (elements, node name, reason)
        self.rewriters: list[Callable[[], None]] = []
        self.layers: dict[str, tuple[gs.Node, gs.Tensor]] = {}  # conv/gemm producers: name -> (node, out)
        # (tensor, groups, node name): its channels split into `groups` equal slices that must keep
        # equally many (a grouped conv's input or output)
        self.balanced: list[tuple[gs.Tensor, int, str]] = []

    # --- universe ---------------------------------------------------------------------------
    def add(self, t: gs.Tensor) -> None:
        if id(t) in self.base or not isinstance(t, gs.Variable) or const_value(t) is not None:
            return
        shape = t.shape
        if shape is None or len(shape) < 2 or not isinstance(shape[1], (int, np.integer)) or int(shape[1]) <= 0:
            return
        n = int(shape[1])
        self.base[id(t)] = len(self.parent)
        self.width[id(t)] = n
        self.tensors[id(t)] = t
        self.parent.extend(range(len(self.parent), len(self.parent) + n))

    def has(self, t: gs.Tensor | None) -> bool:
        return t is not None and id(t) in self.base

    def C(self, t: gs.Tensor) -> int:
        return self.width[id(t)]

    def elems(self, t: gs.Tensor) -> np.ndarray:
        b = self.base[id(t)]
        return np.arange(b, b + self.width[id(t)])

    def get_const(self, t: gs.Tensor) -> np.ndarray:
        c = self.const.get(id(t))
        return c if c is not None else np.full(self.C(t), _NAN)

    def set_const(self, t: gs.Tensor, v: np.ndarray) -> None:
        if self.has(t):
            v = np.asarray(v, dtype=np.float64).reshape(-1)
            if v.size == self.C(t):
                self.const[id(t)] = v

    # --- union-find ---------------------------------------------------------------------------
    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def tie(self, a: gs.Tensor, a_off: int, b: gs.Tensor, b_off: int, n: int) -> None:
        ba, bb = self.base[id(a)] + a_off, self.base[id(b)] + b_off
        for i in range(n):
            self.union(ba + i, bb + i)

    # --- needs (channels that must stay) ------------------------------------------------------
    def need(self, t: gs.Tensor, node: str, reason: str, mask: np.ndarray | None = None) -> None:
        if not self.has(t):
            return
        e = self.elems(t)
        if mask is not None:
            e = e[np.asarray(mask, dtype=bool)]
        if e.size:
            self.needs.append((e, node, reason))

    def pin(self, node: gs.Node, reason: str) -> None:
        for t in list(node.inputs) + list(node.outputs):
            self.need(t, node.name or node.op, reason)

    def read(self, node: gs.Node, t: gs.Tensor, wzero: np.ndarray, exact_const: bool) -> np.ndarray:
        """A sink reads channel tensor ``t``: mark channels it cannot absorb; return absorbable consts."""
        k = self.get_const(t)
        known = ~np.isnan(k)
        zero_k = known & (k == 0)
        ok = wzero | zero_k | (known & exact_const)
        bad_const = known & ~ok
        self.need(t, node.name or node.op, "zero-padded reader: the channel's constant is nonzero (kept; option "
                  "bias_map folds it exactly as a per-position bias map)",
                  bad_const)
        self.need(t, node.name or node.op, "channel is live", ~ok & ~bad_const)
        return np.where(known & ~wzero & ~zero_k, k, 0.0)

    # --- results ------------------------------------------------------------------------------
    def decide(self) -> tuple[dict[int, np.ndarray], list[tuple[str, str]]]:
        n = len(self.parent)
        roots = np.fromiter((self.find(i) for i in range(n)), dtype=np.int64, count=n)
        needed = np.zeros(n, dtype=bool)
        for e, _, _ in self.needs:
            needed[roots[e]] = True
        # A tensor never loses all its channels (a zero-width tensor is not worth the risk), and the
        # groups of a grouped conv keep equally many (at least one): a group short of the fullest
        # one keeps its lowest removable channels too.  Only ever more is kept, so this ends.
        rebalanced: set[str] = set()
        while True:
            keep = {tid: needed[roots[self.elems(t)]] for tid, t in self.tensors.items()}
            more = [self.base[tid] for tid, k in keep.items() if not k.any()]
            for t, groups, node in self.balanced:
                per_group = keep[id(t)].reshape(groups, -1)
                target = max(int(per_group.sum(axis=1).max()), 1)
                for g, kg in enumerate(per_group):
                    short = target - int(kg.sum())
                    if short > 0:
                        more += list(self.base[id(t)] + g * kg.size + np.flatnonzero(~kg)[:short])
                        rebalanced.add(node)
            if not more:
                break
            needed[roots[np.asarray(more)]] = True
        # Report why candidate channels (ones that carry a known constant) were kept.
        candidate = np.zeros(n, dtype=bool)
        for tid, c in self.const.items():
            known = ~np.isnan(c)
            if known.any():
                candidate[roots[self.elems(self.tensors[tid])[known]]] = True
        declined, seen = [], set()
        for node in sorted(rebalanced):
            declined.append((node, "grouped Conv: every group keeps as many channels as its fullest one"))
        for e, node, reason in self.needs:
            if reason == "channel is live":
                continue
            if candidate[roots[e]].any() and (node, reason) not in seen:
                seen.add((node, reason))
                declined.append((node, reason))
        return keep, declined


# --- handlers: one per op family ----------------------------------------------------------------

def _same_width(an: _Analysis, x: gs.Tensor, y: gs.Tensor) -> bool:
    return an.has(x) and an.has(y) and an.C(x) == an.C(y)


def _h_unary(an: _Analysis, node: gs.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    fn = _unary_fn(node)
    extra_used = any(len(o.outputs) or is_graph_output(an.graph, o) for o in node.outputs[1:])
    if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name:
        mode = const_value(node.inputs[2])
        extra_used = extra_used or mode is None or bool(np.asarray(mode).reshape(-1)[0])
    if fn is None or not _same_width(an, x, y) or extra_used:
        an.pin(node, f"{node.op} with these inputs is not understood on the channel axis")
        return
    an.tie(x, 0, y, 0, an.C(x))
    with np.errstate(all="ignore"):
        an.set_const(y, fn(an.get_const(x)))


def _h_batchnorm(an: _Analysis, node: gs.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    params = [const_value(t) for t in node.inputs[1:5]]
    if (len(params) < 4 or any(p is None for p in params) or node.attrs.get("training_mode", 0)
            or not _same_width(an, x, y) or any(np.asarray(p).size != an.C(x) for p in params)
            or any(len(o.outputs) for o in node.outputs[1:])):
        an.pin(node, "BatchNormalization with non-constant or training-mode parameters")
        return
    an.tie(x, 0, y, 0, an.C(x))
    scale, bias, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
    eps = float(node.attrs.get("epsilon", 1e-5))
    an.set_const(y, scale * (an.get_const(x) - mean) / np.sqrt(var + eps) + bias)

    def rewrite():
        keep = an.keep[id(x)]
        if keep.all():
            return
        for i in range(1, 5):
            v = const_value(node.inputs[i])
            node.inputs[i] = gs.Constant(f"{node.inputs[i].name}_strip_{node.name}", np.ascontiguousarray(v[keep]))
    an.rewriters.append(rewrite)


def _channel_vector(v: np.ndarray, rank: int, c: int) -> tuple[int, np.ndarray | None, bool]:
    """For a constant operand broadcast against a rank-``rank`` tensor of ``c`` channels: its own
    channel axis (-1 if none), its per-channel values (None if it varies over other axes), and
    whether it must be sliced when channels go."""
    ax = v.ndim - (rank - 1)
    others = [d for i, d in enumerate(v.shape) if i != ax]
    per_channel = all(d == 1 for d in others)
    if ax < 0:
        return -1, (np.full(c, float(v.reshape(-1)[0])) if v.size == 1 else None), False
    dc = v.shape[ax]
    if dc not in (1, c):
        return ax, None, False
    vec = None
    if per_channel:
        vec = np.broadcast_to(v.reshape(-1).astype(np.float64), (c,)) if dc == 1 else v.reshape(-1).astype(np.float64)
    return ax, vec, dc == c and c > 1


def _h_binary(an: _Analysis, node: gs.Node) -> None:
    y = node.outputs[0]
    if not an.has(y) or len(node.inputs) != 2:
        an.pin(node, f"{node.op} output has no known channel width")
        return
    c, rank = an.C(y), len(y.shape)
    vecs, slices = [], []
    for i, t in enumerate(node.inputs):
        v = const_value(t)
        if v is not None:
            v = np.asarray(v)
            if v.ndim > rank:
                an.pin(node, f"{node.op} operand of higher rank")
                return
            ax, vec, sl = _channel_vector(v, rank, c)
            if ax >= 0 and v.shape[ax] not in (1, c):
                an.pin(node, f"{node.op} constant does not broadcast per channel")
                return
            vecs.append(vec if vec is not None else np.full(c, _NAN))
            if sl:
                slices.append((i, ax, v))
        elif an.has(t) and len(t.shape) == rank and an.C(t) == c:
            vecs.append(None)
        elif an.has(t) and len(t.shape) == rank and an.C(t) == 1 and c > 1:
            vecs.append(np.full(c, _NAN))  # broadcast over every channel: its one channel stays
            an.need(t, node.name or node.op, "operand broadcast over the channel axis")
        else:
            an.pin(node, f"{node.op} operand is not understood on the channel axis")
            return
    for i, t in enumerate(node.inputs):
        if vecs[i] is None:
            an.tie(t, 0, y, 0, c)
    vals = [vecs[i] if vecs[i] is not None else an.get_const(t) for i, t in enumerate(node.inputs)]
    with np.errstate(all="ignore"):
        out = _BINARY[node.op](vals[0], vals[1])
        if node.op == "Mul":
            out = np.where(((vals[0] == 0) & ~np.isnan(vals[0])) | ((vals[1] == 0) & ~np.isnan(vals[1])), 0.0, out)
    an.set_const(y, out)
    if slices:
        def rewrite():
            keep = an.keep[id(y)]
            if keep.all():
                return
            for i, ax, v in slices:
                name = node.inputs[i].name
                node.inputs[i] = gs.Constant(f"{name}_strip_{node.name}", np.ascontiguousarray(np.compress(keep, v, axis=ax)))
        an.rewriters.append(rewrite)


def _h_pool(an: _Analysis, node: gs.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _same_width(an, x, y) or any(len(o.outputs) for o in node.outputs[1:]):
        an.pin(node, f"{node.op} not understood on the channel axis")
        return
    an.tie(x, 0, y, 0, an.C(x))
    k = an.get_const(x)
    if node.op == "AveragePool" and node.attrs.get("count_include_pad", 0) and not _pads_zero(node):
        k = np.where(k == 0, k, _NAN)  # zero padding dilutes a nonzero constant at the borders
    an.set_const(y, k)


def _h_resize(an: _Analysis, node: gs.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    sizes_t = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
    sizes = const_value(sizes_t) if sizes_t is not None else None
    if not _same_width(an, x, y) or (sizes_t is not None and sizes is None):
        an.pin(node, "Resize with unknown sizes")
        return
    an.tie(x, 0, y, 0, an.C(x))
    an.set_const(y, an.get_const(x))
    if sizes is not None:
        def rewrite():
            keep = an.keep[id(y)]
            if not keep.all():
                s = np.array(sizes, dtype=np.int64)
                s[1] = int(keep.sum())
                node.inputs[3] = gs.Constant(f"{sizes_t.name}_strip_{node.name}", s)
        an.rewriters.append(rewrite)


def _axes(node: gs.Node, rank: int, input_index: int) -> list[int] | None:
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > input_index and node.inputs[input_index].name:
        v = const_value(node.inputs[input_index])
        if v is None:
            return None
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    else:
        return []
    return [a + rank if a < 0 else a for a in axes]


def _h_reduce(an: _Analysis, node: gs.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    axes = _axes(node, len(x.shape) if x.shape is not None else 0, 1)
    if not _same_width(an, x, y) or not axes or 0 in axes or 1 in axes:
        an.pin(node, f"{node.op} over the channel or batch axis")
        return
    an.tie(x, 0, y, 0, an.C(x))
    k = an.get_const(x)
    an.set_const(y, k if node.op != "ReduceSum" else np.where(k == 0, k, _NAN))


def _flatten_tie(an: _Analysis, node: gs.Node) -> int | None:
    """Tie ``y[:, c*HW + j]`` to ``x[:, c]`` for a node that flattens [N, C, *S] to [N, C*HW]; returns
    HW, or None (after pinning) when the shapes do not say that."""
    x, y = node.inputs[0], node.outputs[0]
    shape = x.shape if an.has(x) else None
    if (shape is None or not an.has(y) or len(y.shape) != 2
            or not all(isinstance(d, (int, np.integer)) for d in shape[1:])):
        an.pin(node, f"{node.op} not to [N, C*H*W] or of unknown spatial size")
        return None
    hw = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    c = an.C(x)
    if an.C(y) != c * hw or (shape[0] != y.shape[0] and not (isinstance(shape[0], str) and isinstance(y.shape[0], str))):
        an.pin(node, f"{node.op} output width does not match a flattening of its input")
        return None
    for j in range(hw):
        for ch in range(c):
            an.union(an.base[id(x)] + ch, an.base[id(y)] + ch * hw + j)
    an.set_const(y, np.repeat(an.get_const(x), hw))
    return hw


def _h_flatten(an: _Analysis, node: gs.Node) -> None:
    if int(node.attrs.get("axis", 1)) != 1:
        an.pin(node, "Flatten not on axis 1")
        return
    _flatten_tie(an, node)


def _h_reshape(an: _Analysis, node: gs.Node) -> None:
    """A Reshape to [N, C*H*W] is a Flatten (dynamo exports pooling heads so); others pin."""
    shape_t = node.inputs[1]
    target = const_value(shape_t)
    if (target is None or np.asarray(target).size != 2
            or (node.attrs.get("allowzero", 0) and 0 in np.asarray(target).reshape(-1))):
        an.pin(node, "Reshape is not understood on the channel axis: its channels are kept")
        return
    if _flatten_tie(an, node) is None:
        return
    target = np.asarray(target, dtype=np.int64).reshape(-1)

    def rewrite():
        y = node.outputs[0]
        if an.keep[id(y)].all():
            return
        new = np.array([target[0], -1] if target[0] != -1 else [-1, int(an.keep[id(y)].sum())], dtype=np.int64)
        node.inputs[1] = gs.Constant(f"{shape_t.name}_strip_{node.name}", new)
    an.rewriters.append(rewrite)


def _h_squeeze(an: _Analysis, node: gs.Node) -> None:
    """Squeeze/Unsqueeze of spatial axes keep the channel on axis 1."""
    x, y = node.inputs[0], node.outputs[0]
    rank = len(y.shape if node.op == "Unsqueeze" else x.shape) if an.has(x) and an.has(y) else 0
    axes = _axes(node, rank, 1) if rank else None
    if not _same_width(an, x, y) or not axes or 0 in axes or 1 in axes:
        an.pin(node, f"{node.op} on the channel or batch axis")
        return
    an.tie(x, 0, y, 0, an.C(x))
    an.set_const(y, an.get_const(x))


def _h_concat(an: _Analysis, node: gs.Node) -> None:
    y = node.outputs[0]
    rank = len(y.shape) if an.has(y) else 0
    axis = int(node.attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis != 1 or not all(an.has(t) for t in node.inputs) or not an.has(y) \
            or sum(an.C(t) for t in node.inputs) != an.C(y):
        an.pin(node, "Concat not on the channel axis, or of unknown widths")
        return
    off, consts = 0, []
    for t in node.inputs:
        an.tie(t, 0, y, off, an.C(t))
        consts.append(an.get_const(t))
        off += an.C(t)
    an.set_const(y, np.concatenate(consts))


def _h_split(an: _Analysis, node: gs.Node) -> None:
    x = node.inputs[0]
    rank = len(x.shape) if an.has(x) else 0
    axis = int(node.attrs.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    outs = node.outputs
    if axis != 1 or not an.has(x) or not all(an.has(o) for o in outs) or sum(an.C(o) for o in outs) != an.C(x):
        an.pin(node, "Split not on the channel axis, or of unknown widths")
        return
    split_t = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1].name else None
    if split_t is not None and const_value(split_t) is None:
        an.pin(node, "Split with non-constant sizes")
        return
    off, kx = 0, an.get_const(x)
    for o in outs:
        an.tie(x, off, o, 0, an.C(o))
        an.set_const(o, kx[off:off + an.C(o)])
        off += an.C(o)

    def rewrite():
        if an.keep[id(x)].all():
            return
        sizes = np.array([int(an.keep[id(o)].sum()) for o in outs], dtype=np.int64)
        node.attrs.pop("num_outputs", None)
        if "split" in node.attrs or an.opset < 13:
            node.attrs["split"] = [int(s) for s in sizes]
        else:
            name = split_t.name if split_t is not None else f"{node.name}_split"
            const = gs.Constant(f"{name}_strip_{node.name}", sizes)
            if split_t is not None:
                node.inputs[1] = const
            else:
                node.inputs.append(const)
    an.rewriters.append(rewrite)


def _h_slice(an: _Analysis, node: gs.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not (an.has(x) and an.has(y)):
        an.pin(node, "Slice of unknown width")
        return
    rank = len(x.shape)
    present = [len(node.inputs) > i and bool(node.inputs[i].name) for i in range(5)]
    vals = [const_value(node.inputs[i]) if present[i] else None for i in range(5)]
    if any(present[i] and vals[i] is None for i in range(1, 5)) or not present[1] or not present[2]:
        an.pin(node, "Slice with non-constant parameters (or opset < 10)")
        return
    starts, ends = np.asarray(vals[1]).reshape(-1), np.asarray(vals[2]).reshape(-1)
    axes = np.asarray(vals[3]).reshape(-1) if present[3] else np.arange(starts.size)
    steps = np.asarray(vals[4]).reshape(-1) if present[4] else np.ones(starts.size, dtype=np.int64)
    axes = np.where(axes < 0, axes + rank, axes)
    if 1 not in axes:
        if an.C(x) != an.C(y):
            an.pin(node, "Slice width mismatch")
            return
        an.tie(x, 0, y, 0, an.C(x))
        an.set_const(y, an.get_const(x))
        return
    i = int(np.nonzero(axes == 1)[0][0])
    c = an.C(x)
    s, e = int(starts[i]), int(ends[i])
    s = max(0, min(c, s + c if s < 0 else s))
    e = max(0, min(c, e + c if e < 0 else e))
    if int(steps[i]) != 1 or e - s != an.C(y):
        an.pin(node, "Slice on the channel axis with a step")
        return
    an.tie(x, s, y, 0, e - s)
    an.set_const(y, an.get_const(x)[s:e])

    def rewrite():
        keep = an.keep[id(x)]
        if keep.all():
            return
        ns, ne = np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)
        ns[i] = int(keep[:s].sum())
        ne[i] = ns[i] + int(keep[s:e].sum())
        node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_strip_{node.name}", ns)
        node.inputs[2] = gs.Constant(f"{node.inputs[2].name}_strip_{node.name}", ne)
    an.rewriters.append(rewrite)


def _dead_rows(w2d: np.ndarray, threshold: float, wmax: float) -> np.ndarray:
    """Rows of a 2-D view that are zero (or below ``threshold * wmax``)."""
    if threshold <= 0:
        return ~w2d.any(axis=1)
    return np.abs(w2d).max(axis=1, initial=0.0) <= threshold * wmax


def _h_conv(an: _Analysis, node: gs.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    b_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    b = const_value(b_t) if b_t is not None else None
    if w is None or (b_t is not None and b is None) or not an.has(y) or w.shape[0] != an.C(y):
        an.pin(node, "Conv with non-constant weights or unknown output width")
        return
    group = int(node.attrs.get("group", 1))
    cout = w.shape[0]
    bias = np.zeros(cout, dtype=np.float64) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
    wmax = float(np.abs(w).max(initial=0.0))
    dead_out = _dead_rows(w.reshape(cout, -1), an.threshold, wmax)
    name = node.name or "Conv"
    an.layers[name] = (node, y)
    cin = an.C(x) if an.has(x) else None
    if group < 1:
        an.pin(node, f"Conv with group = {group}")
        return
    depthwise = group > 1 and cin is not None and group == cin and w.shape[1] == 1 and cout % cin == 0
    if not depthwise and cout % group == 0:
        # A plain or grouped conv reads its input channels and starts new ones; group g's outputs
        # read only group g's inputs (W's column j of those rows is input g * cin_g + j).
        cin_g, cout_g = w.shape[1], cout // group
        if cin is None or cin_g * group != cin:
            an.need(y, name, "Conv input of unknown width")
            an.set_const(y, np.where(dead_out, bias, _NAN))
            return
        wz = np.concatenate([_dead_rows(np.swapaxes(w[g * cout_g:(g + 1) * cout_g], 0, 1).reshape(cin_g, -1),
                                        an.threshold, wmax) for g in range(group)])
        unpadded = _pads_zero(node)
        masks = None if unpadded or not an.bias_map or group > 1 else _tap_masks(node, x, y, w)
        absorb = an.read(node, x, wz, unpadded or masks is not None)
        an.set_const(y, np.where(dead_out, bias, _NAN))
        if group > 1:
            an.balanced += [(x, group, name), (y, group, name)]

        def rewrite():
            kx, ky = an.keep[id(x)], an.keep[id(y)]
            if kx.all() and ky.all():
                return
            gone = ~kx
            delta = np.zeros(cout)
            if masks is not None and np.any(absorb[gone]):
                # contribution of the removed constants at every output position (zero padding included)
                a = np.einsum("ockl,c->okl", w[:, gone].astype(np.float64), absorb[gone])
                _add_after(an.graph, node, y, np.einsum("okl,kh,lw->ohw", a, *masks)[ky][None].astype(w.dtype))
            elif gone.any():
                taps = w.astype(np.float64).reshape(cout, cin_g, -1).sum(axis=-1)
                for g in range(group):
                    rows, cols = slice(g * cout_g, (g + 1) * cout_g), slice(g * cin_g, (g + 1) * cin_g)
                    delta[rows] = taps[rows][:, gone[cols]] @ absorb[cols][gone[cols]]
            nb = bias + delta
            # the balance in decide() leaves every group as many inputs and outputs as the others
            neww = np.concatenate([w[g * cout_g:(g + 1) * cout_g][ky[g * cout_g:(g + 1) * cout_g]]
                                   [:, kx[g * cin_g:(g + 1) * cin_g]] for g in range(group)])
            node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_strip_{name}", np.ascontiguousarray(neww))
            if b_t is not None or np.any(nb[ky] != 0):
                dtype = b.dtype if b is not None else w.dtype
                newb = gs.Constant(f"{b_t.name if b_t is not None else name + '_bias'}_strip_{name}",
                                   np.ascontiguousarray(nb[ky].astype(dtype)))
                if b_t is not None:
                    node.inputs[2] = newb
                else:
                    node.inputs.append(newb)
        an.rewriters.append(rewrite)
        return
    if depthwise:
        m = cout // cin
        for j in range(m):
            for ch in range(cin):
                an.union(an.base[id(x)] + ch, an.base[id(y)] + ch * m + j)
        kx = np.repeat(an.get_const(x), m)
        through = np.where(kx == 0, bias, np.where(~np.isnan(kx) & _pads_zero(node),
                                                   kx * w.reshape(cout, -1).sum(axis=1) + bias, _NAN))
        an.set_const(y, np.where(dead_out, bias, through))

        def rewrite_dw():
            kx_, ky = an.keep[id(x)], an.keep[id(y)]
            if ky.all():
                return
            node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_strip_{name}", np.ascontiguousarray(w[ky]))
            if b_t is not None:
                node.inputs[2] = gs.Constant(f"{b_t.name}_strip_{name}", np.ascontiguousarray(b.reshape(-1)[ky]))
            node.attrs["group"] = int(kx_.sum())
        an.rewriters.append(rewrite_dw)
        return
    an.pin(node, "grouped Conv whose output channels do not split into its groups")


def _tap_masks(node: gs.Node, x: gs.Tensor, y: gs.Tensor, w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For a 2-D conv with explicit padding: per axis, which output positions each tap sees inside
    the input (``M[k, o]``), or None when shapes or attributes do not allow an exact map."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if (w.ndim != 4 or auto != "NOTSET" or x.shape is None or y.shape is None or len(x.shape) != 4
            or not all(isinstance(d, (int, np.integer)) for d in list(x.shape[2:]) + list(y.shape[2:]))):
        return None
    pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
    strides = list(node.attrs.get("strides", [1, 1]))
    dil = list(node.attrs.get("dilations", [1, 1]))
    masks = []
    for ax in range(2):
        size, out, k = int(x.shape[2 + ax]), int(y.shape[2 + ax]), w.shape[2 + ax]
        pos = np.arange(out)[None, :] * strides[ax] - pads[ax] + np.arange(k)[:, None] * dil[ax]
        masks.append(((pos >= 0) & (pos < size)).astype(np.float64))
    return masks[0], masks[1]


def _add_after(graph: gs.Graph, node: gs.Node, y: gs.Tensor, value: np.ndarray) -> None:
    """Insert ``y = node_output + value`` after ``node`` (a per-position bias map)."""
    name = node.name or node.op
    mid = gs.Variable(f"{y.name}_strip_pre", dtype=y.dtype,
                      shape=[y.shape[0], value.shape[1], *y.shape[2:]] if y.shape is not None else None)
    node.outputs[0] = mid
    graph.nodes.append(gs.Node("Add", name=f"{name}_strip_biasmap", inputs=[mid, gs.Constant(f"{name}_strip_biasmap", value)],
                               outputs=[y]))


def _h_gemm(an: _Analysis, node: gs.Node) -> None:
    a, y = node.inputs[0], node.outputs[0]
    bw = const_value(node.inputs[1])
    c_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    cv = const_value(c_t) if c_t is not None else None
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    trans_b = int(node.attrs.get("transB", 0))
    if (bw is None or (c_t is not None and cv is None) or int(node.attrs.get("transA", 0)) or beta == 0
            or not an.has(y)):
        an.pin(node, "Gemm with non-constant weights, transA or beta 0")
        return
    wk = bw.T if trans_b else bw  # K x F
    k_in, f = wk.shape
    if f != an.C(y) or (cv is not None and (cv.ndim > 2 or (cv.ndim == 2 and cv.shape[0] != 1)
                                             or cv.shape[-1:] not in ((), (1,), (f,)))):
        an.pin(node, "Gemm bias is not a per-column vector")
        return
    cvec = np.zeros(f) if cv is None else np.broadcast_to(np.asarray(cv, dtype=np.float64).reshape(-1), (f,))
    wmax = float(np.abs(wk).max(initial=0.0))
    dead_out = _dead_rows(np.ascontiguousarray(wk.T), an.threshold, wmax)
    name = node.name or "Gemm"
    an.layers[name] = (node, y)
    an.set_const(y, np.where(dead_out, beta * cvec, _NAN))
    has_a = an.has(a) and an.C(a) == k_in
    if not has_a:
        an.need(a, name, "Gemm input of unknown width")
        absorb = None
    else:
        absorb = an.read(node, a, _dead_rows(wk, an.threshold, wmax), True)

    def rewrite():
        ka = an.keep[id(a)] if has_a else np.ones(k_in, dtype=bool)
        ky = an.keep[id(y)]
        if ka.all() and ky.all():
            return
        delta = alpha * (absorb[~ka] @ wk[~ka].astype(np.float64)) if (~ka).any() else np.zeros(f)
        neww = wk[ka][:, ky]
        node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_strip_{name}",
                                     np.ascontiguousarray(neww.T if trans_b else neww))
        nc = cvec + delta / beta
        if c_t is not None or np.any(nc != 0):
            dtype = cv.dtype if cv is not None else bw.dtype
            if c_t is not None and cv.size == 1 and not np.any(delta):
                return  # a scalar bias broadcasts to any width
            newc = gs.Constant(f"{c_t.name if c_t is not None else name + '_bias'}_strip_{name}",
                               np.ascontiguousarray(nc[ky].astype(dtype)))
            if c_t is not None:
                node.inputs[2] = newc
            else:
                node.inputs.append(newc)
    an.rewriters.append(rewrite)


_HANDLERS: dict[str, Callable[[_Analysis, gs.Node], None]] = {
    **{op: _h_unary for op in _UNARY},
    **{op: _h_binary for op in _BINARY},
    "BatchNormalization": _h_batchnorm,
    **{op: _h_pool for op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")},
    "Resize": _h_resize,
    **{op: _h_reduce for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")},
    "Flatten": _h_flatten,
    "Reshape": _h_reshape,
    "Squeeze": _h_squeeze,
    "Unsqueeze": _h_squeeze,
    "Concat": _h_concat,
    "Split": _h_split,
    "Slice": _h_slice,
    "Conv": _h_conv,
    "Gemm": _h_gemm,
}


# --- counting -----------------------------------------------------------------------------------

def _dim(d) -> int:
    return int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1


def _count(graph: gs.Graph) -> tuple[int, int]:
    """(float parameters, conv/gemm MACs) of the graph, from the shapes it carries."""
    params = sum(int(t.values.size) for t in graph.tensors().values()
                 if isinstance(t, gs.Constant) and np.issubdtype(t.values.dtype, np.floating))
    macs = 0
    for n in graph.nodes:
        if n.op in ("Conv", "Gemm") and len(n.inputs) > 1 and isinstance(n.inputs[1], gs.Constant) \
                and n.outputs[0].shape is not None:
            w = n.inputs[1].values
            out = int(np.prod([_dim(d) for d in n.outputs[0].shape]))
            k = int(np.prod(w.shape[1:])) if n.op == "Conv" else (w.shape[1] if n.attrs.get("transB", 0) else w.shape[0])
            macs += out * k
    return params, macs


# --- the pass -----------------------------------------------------------------------------------

def strip(graph: gs.Graph, ctx: PassContext, name: str, threshold: float) -> PassResult:
    result = PassResult(name)
    graph.toposort()
    params0, macs0 = _count(graph)
    an = _Analysis(graph, threshold)
    an.opset = int(graph.opset or 13)
    an.bias_map = bool(ctx.option("bias_map", False))
    for node in graph.nodes:
        for t in list(node.inputs) + list(node.outputs):
            an.add(t)
    for t in graph.inputs:
        an.need(t, t.name, "graph input keeps its shape")
    for t in graph.outputs:
        an.need(t, t.name, "graph output keeps its shape")
    by_name = {t.name: t for t in an.tensors.values()}
    for node in graph.nodes:
        for sub in (v for v in node.attrs.values() if isinstance(v, gs.Graph)):
            for inner in sub.tensors().values():  # outer tensors a subgraph reads by name stay whole
                if inner.name in by_name:
                    an.need(by_name[inner.name], node.name or node.op, "read inside a subgraph")
    for node in graph.nodes:
        handler = _HANDLERS.get(node.op) if (node.domain or "") in ("", "ai.onnx") else None
        if handler is None:
            if any(an.has(t) for t in list(node.inputs) + list(node.outputs)):
                an.pin(node, f"{node.op} is not understood on the channel axis: its channels are kept")
            continue
        handler(an, node)
    an.keep, declined = an.decide()
    log.debug("strip: %d channel elements in %d tensors", len(an.parent), len(an.tensors))
    for node_name, reason in declined:
        result.decline(node_name, reason)
    removed = {lname: int((~an.keep[id(y)]).sum()) for lname, (node, y) in an.layers.items()}
    total = sum(an.C(y) for _, y in an.layers.values())
    if not any(removed.values()) and all(k.all() for k in an.keep.values()):
        result.summary = f"no removable channels among {total} in {len(an.layers)} layers"
        result.details = {"channels_removed": {}, "params_before": params0, "params_after": params0,
                          "macs_before": macs0, "macs_after": macs0}
        return result
    for rw in an.rewriters:
        rw()
    for tid, t in an.tensors.items():
        kept = int(an.keep[tid].sum())
        if kept != an.C(t):
            shape = list(t.shape)
            shape[1] = kept
            t.shape = shape
    params1, macs1 = _count(graph)
    removed = {k: v for k, v in removed.items() if v}
    n = sum(removed.values())

    def pct(a, b):
        return f"{(b - a) / a * 100:+.0f}%" if a else "n/a"
    result.changed = True
    result.summary = (f"removed {n} of {total} channels in {len(removed)} layer{'s' if len(removed) != 1 else ''} "
                      f"(params {pct(params0, params1)}, MACs {pct(macs0, macs1)})")
    result.details = {"channels_removed": removed, "channels_total": total, "threshold": threshold,
                      "params_before": params0, "params_after": params1, "macs_before": macs0, "macs_after": macs1}
    return result


@register
class StripPass:
    """Remove dead channels exactly (threshold 0)."""

    name = "strip"
    exact = True
    order = 20

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        t = float(ctx.option("threshold", 0.0) or 0.0)
        result = strip(graph, ctx, self.name, 0.0)
        if t > 0:
            result.decline(self.name, f"threshold {t:g} ignored: the exact 'strip' pass only removes zero "
                                      "filters; run 'strip-near' for a lossy relative threshold")
        return result


@register
class StripNearZeroPass:
    """Remove channels whose filters are near zero (relative ``threshold``, default 1e-3): lossy."""

    name = "strip-near"
    exact = False
    order = 21

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        t = float(ctx.option("threshold", 1e-3))
        return strip(graph, ctx, self.name, max(t, 0.0))
