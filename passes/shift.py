"""Shift pass: fuse shifts and channel permutations into the point-wise conv that reads them (exact).

Every rule expresses a tensor T [N, C, H, W] as a *view* of a source tensor X through a table, one
row per channel k of T::

    T[:, k, i, j] = s_k * X[:, src_k, i + dy_k, j + dx_k] + beta_k      (X read as 0 outside the image)

and lets the 1x1 conv that consumes T read X through the table instead: that conv becomes one
``AddressConv(X, W', B', address = [src, dy, dx])`` (:mod:`onnxopt.runtime.ops`), with the scale
folded into the weights and the bias folded through them. For a grouped 1x1 conv, output o of group
g reads the rows k = g·K + kk (K = Cin/group)::

    W'[o, kk] = W[o, kk] · s_k
    b'[o]     = b[o] + sum_kk W[o, kk] · beta_k

The bias fold is exact: the depthwise conv adds beta_k at *every* position, including those whose
shifted read is zero fill, so its output is s_k·shifted(X) + beta_k everywhere and the 1x1 conv maps
the constant beta_k to the constant W[o, kk]·beta_k.

Where a view comes from (walking back from the 1x1 conv's input):

* **One-hot depthwise conv** (group = C, one weight per channel [C, 1, kh, kw], every kernel with at
  most one non-zero tap (ky, kx), stride 1, ``pads`` top+bottom = d·(kh-1) and left+right =
  d·(kw-1) so the output has the input's size): channel k reads (i + ky·d - top, j + kx·d - left),
  scale = the tap's value, beta = the conv's bias. Its output must feed only the conv that absorbs it.
  Declined (with a reason): stride ≠ 1, padding that changes the size, a consumer that is not a 1x1
  conv with zero padding (BN, ReLU, a graph output between them), other consumers.
* **Chains of shifts** compose: applying the shift (s2, beta2, d2) to the view (s1, beta1, d1)
  gives s = s1·s2, beta = s2·beta1 + beta2, d = d1 + d2, and this is exact only when the inner
  zero fill coincides with the outer one: per axis d1·d2 >= 0 (same direction or one of them 0), and
  beta1 = 0 wherever d2 ≠ 0 (a displaced bias is zero-filled at the border, no longer a constant).
  Otherwise the chain is declined.
* **Channel permutations**: ``Gather(X, idx, axis=1)`` with constant indices is the view
  src = idx. A channel shuffle Reshape → Transpose → Reshape (ShuffleNet) is first rewritten to the
  equivalent Gather — its permutation found by pushing a probe tensor through the three ops, so any
  Reshape/Transpose/Reshape that only permutes channels qualifies — and a channel roll
  (``torch.roll`` on axis 1: Concat of two channel Slices of X covering every channel once) likewise.
  A Slice or Split on the channel axis of a Gather is the Gather of the sliced indices, so a
  shuffle in front of ShuffleNetV2's channel split becomes two half-size Gathers, and the whole
  shuffle disappears once its consumers read X through their tables. Slice bounds computed from
  Shape (the ``chunk`` export) are evaluated from the inferred static shape.
* A **depthwise conv** after a bijective Gather commutes with it (its per-channel weights and bias
  are permuted instead) when every consumer of its output is a conv that can absorb the permutation.

What consumes a view:

* a 1x1 conv (any group, any stride, zero padding) → AddressConv with ``strides`` of the conv, when
  the view displaces something; a view that only selects/permutes channels and cannot go into the
  weights stays a Gather in front of the ordinary Conv unless the option ``address_permutations``
  is set (measured on ShuffleNetV2, one thread: the half-size Gather costs ~5 us per unit while the
  AddressConv loses onnxruntime's NCHWc 1x1 conv with its fused ReLU, ~1.5x the conv's time);
* a dense conv (group 1, any kernel) whose input is a pure, bijective permutation → the same Conv
  with its input-channel axis permuted, W'[:, src_k] = W[:, k] (no custom op).

What an AddressConv this pass created absorbs after it (its output feeding only that node, not a
graph output), in this order, exactly as the native kernel and the function compute them
(``Y = min(max(conv + B + residual, clip_min), clip_max)``, :mod:`onnxopt.runtime.functions`):

* a residual ``Add(Y, R)`` (either input order) whose other input R has Y's static shape (no
  broadcasting) → R becomes the 5th input ``residual``;
* then a ``Relu`` (clip_min = 0) or a ``Clip`` with constant scalar bounds (missing = unbounded) →
  the ``clip_min``/``clip_max`` attributes. Nothing is absorbed after the activation.

Measured (ShiftNet, one thread): onnxruntime fuses Add and ReLU into its own NCHWc 1x1 convs, so
without this the AddressConv's Add and ReLU ran as separate nodes over the whole tensor.

**Layout chains** (option ``address_chains``, default on): a 1x1 conv (zero padding, float weights)
whose input an AddressConv produces, or whose output — after at most a Relu/Clip — only
AddressConvs read, becomes an AddressConv with the identity table (src = k, no displacement; the
native kernel then reads X unpacked), absorbing what follows as above; repeated until nothing
changes, so a ShiftNet's whole chain of 1x1 convs joins. Why (onnxruntime profiler, ShiftNet width
32 at 32x32, one thread): onnxruntime runs its convs in the blocked NCHWc layout and puts a
ReorderInput/ReorderOutput pair around every node it cannot run in that layout; with only the shift
convs as AddressConvs the reorders cost 125 us (2 us in the original) and the sum of kernels was
720 us; with the neighbouring 1x1 convs joined, 7 us of reorders (the stem's) and 640 us, 571 us once
the kernel read identity and stride-1 tables unpacked (the net without shifts: 503 us). On a stock
onnxruntime without the library the identity AddressConvs run as the ONNX function (pad, gather,
conv): that path is for correctness (ShiftNet w32: 0.57 ms original, 2.1 ms applied without the
chains, 2.9 ms with them); ``address_chains=False`` keeps plain Convs.

Spatial ``torch.roll`` wraps around instead of zero-filling: it is not a shift in this sense and is
left alone; a standalone one-hot depthwise conv (no 1x1 conv after it) is left alone too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import ir
from onnxopt.cost import mac_rule, strided_size
from onnxopt.passmanager import PassContext, PassResult, register
from onnxopt.runtime import library_path, ops
from onnxopt.runtime.functions import MIN_OPSET

from ._blocked import absorb_entry_convs, block_chains, pair_convs, pool_exits

log = logging.getLogger(__name__)


@mac_rule(ops.ADDRESS_CONV, domain=ops.DOMAIN)
@mac_rule(ops.BLOCKED_ENTRY_CONV, domain=ops.DOMAIN)  # the same sums from an NCHW input (group 1)
def _address_conv_macs(node, shapes, inits):
    """N · Cout · Ho · Wo · (Cin / group), Ho = ceil(H / stride_h): a grouped 1x1 conv's MACs."""
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    if x is None or w is None or len(x) != 4:
        return None
    ho, wo = strided_size(node, x[2], x[3])
    return int(x[0] * w[0] * ho * wo * w[1])


@dataclass
class View:
    """T[:, k] = scale[k] * X[:, src[k]] displaced by (dy[k], dx[k]) with zero fill, + bias[k]."""

    source: gs.Tensor
    src: np.ndarray
    dy: np.ndarray
    dx: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    shifts: int = 0  # how many one-hot depthwise convs it absorbs (for the report)

    @classmethod
    def identity(cls, t: gs.Tensor, channels: int) -> "View":
        z = np.zeros(channels, np.int64)
        return cls(t, np.arange(channels), z, z.copy(), np.ones(channels, np.float64), np.zeros(channels))

    @property
    def permutation_only(self) -> bool:
        return not (self.dy.any() or self.dx.any() or self.bias.any()) and bool(np.all(self.scale == 1))

    def is_identity(self) -> bool:
        return self.permutation_only and np.array_equal(self.src, np.arange(len(self.src))) and \
            _channels(self.source) == len(self.src)

    def bijective(self) -> bool:
        c = _channels(self.source)
        return c == len(self.src) and np.array_equal(np.sort(self.src), np.arange(c))


class Decline(Exception):
    """A pattern this pass recognises but cannot rewrite exactly; the message is the reason."""


def _channels(t: gs.Tensor) -> int | None:
    shape = getattr(t, "shape", None)
    if shape is None or len(shape) != 4 or not isinstance(shape[1], (int, np.integer)):
        return None
    return int(shape[1])


def _conv_attrs(node: gs.Node, kernel) -> tuple[int, list[int], list[int], list[int]]:
    """(group, strides, dilations, pads) with ONNX defaults; Decline on auto_pad other than NOTSET."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID"):
        raise Decline(f"auto_pad={auto} is not handled")
    nd = len(kernel)
    return (int(node.attrs.get("group", 1)), list(node.attrs.get("strides", [1] * nd)),
            list(node.attrs.get("dilations", [1] * nd)), list(node.attrs.get("pads", [0] * (2 * nd))))


def _is_conv(node: gs.Node | None) -> bool:
    return node is not None and node.op == "Conv" and (node.domain or "") in ("", "ai.onnx")


def _weights(node: gs.Node) -> tuple[np.ndarray | None, np.ndarray | None]:
    w = ir.const_through_identity(node.inputs[1]) if len(node.inputs) > 1 else None
    b = ir.const_through_identity(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    return w, b


def _depthwise(node: gs.Node) -> bool:
    """A conv with one 2-D filter per input channel (group = C, channel multiplier 1)."""
    if not _is_conv(node):
        return False
    w, _ = _weights(node)
    return (w is not None and w.ndim == 4 and w.shape[1] == 1 and int(node.attrs.get("group", 1)) == w.shape[0]
            and w.shape[0] > 1)


def one_hot_shift(node: gs.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(dy, dx, scale, bias) of a one-hot depthwise conv; None if it is not one; Decline if it is one
    that does not read (i + dy, j + dx) with zero fill."""
    if not _depthwise(node):
        return None
    w, b = _weights(node)
    if w.dtype != np.float32:
        return None
    flat = w.reshape(w.shape[0], -1)
    nonzero = np.count_nonzero(flat, axis=1)
    if np.any(nonzero > 1):
        return None
    kh, kw = w.shape[2:]
    group, strides, dilations, pads = _conv_attrs(node, (kh, kw))
    if strides != [1, 1]:
        raise Decline(f"one-hot depthwise conv has strides {strides}, not 1")
    top, left, bottom, right = pads
    if top + bottom != dilations[0] * (kh - 1) or left + right != dilations[1] * (kw - 1):
        raise Decline(f"one-hot depthwise conv's pads {pads} change the spatial size (kernel {kh}x{kw}, "
                      f"dilations {dilations})")
    tap = np.argmax(flat != 0, axis=1)
    ky, kx = tap // kw, tap % kw
    scale = flat[np.arange(len(flat)), tap].astype(np.float64)
    dy = np.where(nonzero > 0, ky * dilations[0] - top, 0)
    dx = np.where(nonzero > 0, kx * dilations[1] - left, 0)
    bias = np.zeros(len(flat)) if b is None else b.astype(np.float64)
    return dy.astype(np.int64), dx.astype(np.int64), scale, bias


# --- constant evaluation of small integer chains (Slice bounds computed from Shape) ---------------

def _int_value(t: gs.Tensor, depth: int = 0) -> np.ndarray | None:
    v = ir.const_value(t)
    if v is not None:
        return np.asarray(v)
    node = ir.producer(t)
    if node is None or depth > 12 or (node.domain or "") not in ("", "ai.onnx"):
        return None
    if node.op == "Shape":
        shape = node.inputs[0].shape
        if shape is None or not all(isinstance(d, (int, np.integer)) for d in shape):
            return None
        full = np.asarray(shape, np.int64)
        return full[node.attrs.get("start", 0): node.attrs.get("end", len(full))]
    args = [_int_value(i, depth + 1) for i in node.inputs]
    if any(a is None for a in args):
        return None
    op = node.op
    try:
        if op == "Gather":
            return np.take(args[0], args[1], axis=node.attrs.get("axis", 0))
        if op in ("Add", "Sub", "Mul"):
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](args[0], args[1])
        if op == "Div" and np.issubdtype(args[0].dtype, np.integer):
            return np.floor_divide(args[0], args[1])
        if op == "Unsqueeze":
            axes = args[1] if len(args) > 1 else node.attrs.get("axes")
            return np.expand_dims(args[0], tuple(int(a) for a in np.atleast_1d(axes)))
        if op == "Squeeze":
            return np.squeeze(args[0])
        if op == "Concat":
            return np.concatenate([np.atleast_1d(a) for a in args], axis=node.attrs.get("axis", 0))
        if op == "Cast" and np.issubdtype(args[0].dtype, np.integer):
            return args[0].astype(np.int64)
    except (ValueError, IndexError, TypeError):
        return None
    return None


def _slice_params(node: gs.Node, dims: int) -> list[tuple[int, int, int, int]] | None:
    """[(axis, start, end, step)] of a Slice with bounds clamped ONNX-style to ``dims``; None if not constant."""
    vals = [_int_value(t) if t.name else None for t in node.inputs[1:]]
    if len(vals) < 2 or vals[0] is None or vals[1] is None:
        return None
    starts, ends = np.atleast_1d(vals[0]), np.atleast_1d(vals[1])
    axes = np.atleast_1d(vals[2]) if len(vals) > 2 and vals[2] is not None else np.arange(len(starts))
    if len(vals) > 2 and vals[2] is None and node.inputs[3].name:
        return None
    steps = np.atleast_1d(vals[3]) if len(vals) > 3 and vals[3] is not None else np.ones(len(starts), np.int64)
    if len(vals) > 3 and vals[3] is None and node.inputs[4].name:
        return None
    return [(int(a), int(s), int(e), int(st)) for a, s, e, st in zip(axes, starts, ends, steps)]


def _channel_slice(node: gs.Node, c: int, rank: int) -> slice | None:
    """The channel slice a Slice node takes (it must slice only axis 1), or None."""
    params = _slice_params(node, rank)
    if params is None or len(params) != 1:
        return None
    axis, start, end, step = params[0]
    if axis % rank != 1 or step == 0:
        return None
    return slice(*slice(start, end, step).indices(c))


# --- recognising permutations (rewritten to Gather) -----------------------------------------------

def _reshape_to(x: np.ndarray, node: gs.Node) -> np.ndarray | None:
    shape = ir.const_value(node.inputs[1])
    if shape is None:
        return None
    shape = [int(s) for s in shape]
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    try:
        return x.reshape(shape)
    except ValueError:
        return None


def shuffle_permutation(last: gs.Node) -> tuple[gs.Tensor, np.ndarray] | None:
    """(X, perm) when ``last`` ends Reshape → Transpose → Reshape mapping X [N,C,H,W] to X[:, perm]."""
    if last.op != "Reshape":
        return None
    tr = ir.producer(last.inputs[0])
    if tr is None or tr.op != "Transpose" or len(tr.outputs[0].outputs) != 1:
        return None
    first = ir.producer(tr.inputs[0])
    if first is None or first.op != "Reshape" or len(first.outputs[0].outputs) != 1:
        return None
    x = first.inputs[0]
    shape = x.shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, (int, np.integer)) for d in shape[1:]):
        return None
    c, h, w = (int(d) for d in shape[1:])
    # A dynamic batch is probed at two sizes: a Reshape that folds the batch into the channels is
    # a channel permutation at N = 1 and mixes images at N = 2.
    batches = [int(shape[0])] if isinstance(shape[0], (int, np.integer)) else [2, 3]
    src = None
    for n in batches:
        probe = np.arange(n * c * h * w).reshape(n, c, h, w)
        y = _reshape_to(probe, first)
        if y is None:
            return None
        perm = tr.attrs.get("perm")
        y = np.transpose(y, perm) if perm is not None else np.transpose(y)
        y = _reshape_to(y, last)
        if y is None or y.shape != probe.shape:
            return None
        found = y[0, :, 0, 0] // (h * w)  # flat channel index: >= c reads another image
        if found.max() >= c or not np.array_equal(y, probe[:, found]) or (src is not None and not np.array_equal(found, src)):
            return None
        src = found
    return x, src


def channel_roll(concat: gs.Node) -> tuple[gs.Tensor, np.ndarray] | None:
    """(X, idx) when a channel-axis Concat joins Slices of one tensor X (and maybe X itself) on axis 1."""
    if concat.op != "Concat" or len(concat.inputs) < 2:
        return None
    src, idx = None, []
    for t in concat.inputs:
        node = ir.producer(t)
        if node is None or node.op != "Slice":
            return None
        x = node.inputs[0]
        c = _channels(x)
        if c is None or (src is not None and x is not src):
            return None
        rank = len(x.shape)
        if concat.attrs.get("axis", 0) % rank != 1:
            return None
        sl = _channel_slice(node, c, rank)
        if sl is None:
            return None
        src = x
        idx.extend(range(c)[sl])
    if src is None or len(idx) == 0:
        return None
    return src, np.asarray(idx, np.int64)


# --- the pass -------------------------------------------------------------------------------------

@register
class ShiftPass:
    """Fold one-hot depthwise shifts and channel permutations into the following point-wise conv."""

    name = "shift"
    exact = True
    order = 30

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        self.graph = graph
        self.result = PassResult(self.name)
        self.opset = _default_opset(ctx.model)
        self.address_permutations = bool(ctx.option("address_permutations", False))
        # Custom ops only pay where their kernels run: by default only when this install has the library.
        self.custom_ops = bool(ctx.option("custom_ops", library_path() is not None))
        self.address_chains = self.custom_ops and bool(ctx.option("address_chains", True))
        # The blocked layout has CPU kernels only.
        on_cpu = ctx.target is None or ctx.target.provider == "CPUExecutionProvider"
        self.blocked = self.custom_ops and on_cpu and bool(ctx.option("blocked", True))
        # A pair keeps its inner result in a ring of rows per thread; more threads split the rows and
        # recompute the ring's rows at each split, so pairs are made by default for one thread (or
        # no target: the mobile CPU this tool aims at) only.
        one_thread = ctx.target is None or ctx.target.threads == 1
        self.blocked_pairs = self.blocked and bool(ctx.option("blocked_pairs", one_thread))
        self.counts = {"address_convs": 0, "shifts_folded": 0, "permutations_to_gather": 0,
                       "weights_permuted": 0, "depthwise_commuted": 0, "residuals_fused": 0, "activations_fused": 0,
                       "chained_convs": 0, "blocked_convs": 0, "layout_conversions": 0, "blocked_pairs": 0,
                       "entry_convs_blocked": 0, "pools_blocked": 0}
        # Slice bounds computed from Shape defeat onnx's shape inference past each ShuffleNet unit; every
        # round turns the permutations whose shapes are known into Gathers, which it then sees through.
        for _ in range(_MAX_ROUNDS):
            found = self._normalise_permutations() + self._compose_gathers()
            if not found:
                break
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            _refresh_shapes(graph)
        self._commute_depthwise()
        _refresh_shapes(graph)  # the residual Add's operand shapes (onnx cannot infer past an AddressConv)
        self._rewrite_consumers()
        if self.address_chains:
            graph.cleanup(remove_unused_graph_inputs=False)  # the folded shifts still read their inputs
            self._chain_pointwise()
        self._report_standalone_shifts()
        if self.blocked:
            self.counts["blocked_convs"], self.counts["layout_conversions"] = block_chains(graph)
            self.counts["entry_convs_blocked"] = absorb_entry_convs(graph)
            self.counts["pools_blocked"] = pool_exits(graph)
        if self.blocked_pairs:
            self.counts["blocked_pairs"] = pair_convs(graph)
        c = self.counts
        r = self.result
        r.changed = any(c.values())
        r.details = dict(c)
        r.summary = (f"{c['address_convs']} AddressConv ({c['shifts_folded']} shifts folded, "
                     f"{c['residuals_fused']} residual Adds and {c['activations_fused']} activations fused), "
                     f"{c['chained_convs']} 1x1 convs joined the AddressConv layout, "
                     f"{c['blocked_convs']} in the blocked layout ({c['layout_conversions']} conversions, "
                     f"{c['blocked_pairs']} pairs run as one op, {c['entry_convs_blocked']} entry convs "
                     f"and {c['pools_blocked']} pools blocked), "
                     f"{c['weights_permuted']} convs with permuted weights, "
                     f"{c['permutations_to_gather']} permutations rewritten as Gather") if r.changed \
            else "no shift or channel permutation found"
        return r

    # -- step 1: channel shuffles and rolls become Gather(X, idx, axis=1) --
    def _normalise_permutations(self) -> int:
        count = 0
        for node in list(self.graph.nodes):
            if not node.outputs:
                continue
            found = shuffle_permutation(node) if node.op == "Reshape" else (
                channel_roll(node) if node.op == "Concat" else None)
            if found is None:
                continue
            x, idx = found
            self._replace_with_gather(node.outputs[0], x, idx, node.name)
            self.counts["permutations_to_gather"] += 1
            count += 1
        return count

    def _replace_with_gather(self, out: gs.Tensor, x: gs.Tensor, idx: np.ndarray, name: str) -> gs.Node:
        """Make ``out`` be produced by Gather(x, idx, axis=1), detaching its current producer."""
        old = ir.producer(out)
        if old is not None:
            old.outputs.clear()
        indices = gs.Constant(f"{name}/shift_gather_idx", np.asarray(idx, np.int64))
        node = gs.Node("Gather", name=f"{name}/shift_gather", attrs={"axis": 1}, inputs=[x, indices], outputs=[out])
        self.graph.nodes.append(node)
        return node

    # -- step 2: Slice / Split of a Gather on the channel axis become smaller Gathers of its source --
    def _compose_gathers(self) -> int:
        count, changed = 0, True
        while changed:
            changed = False
            for node in list(self.graph.nodes):
                if node.op not in ("Slice", "Split") or not node.inputs:
                    continue
                g = ir.producer(node.inputs[0])
                if not _is_gather(g):
                    continue
                x, idx = g.inputs[0], ir.const_value(g.inputs[1]).astype(np.int64)
                rank = len(node.inputs[0].shape or ())
                if rank != 4:
                    continue
                parts = self._split_parts(node, len(idx), rank)
                if parts is None:
                    continue
                outs = list(node.outputs)
                node.outputs.clear()
                node.inputs.clear()
                for out, part in zip(outs, parts):
                    self._replace_with_gather(out, x, idx[part], f"{node.name}_{out.name}")
                changed = True
                count += 1
        return count

    def _split_parts(self, node: gs.Node, c: int, rank: int) -> list[slice] | None:
        if node.op == "Slice":
            sl = _channel_slice(node, c, rank)
            return None if sl is None else [sl]
        if node.attrs.get("axis", 0) % rank != 1:
            return None
        sizes = _int_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
        if sizes is None and "split" in node.attrs:
            sizes = np.asarray(node.attrs["split"])
        if sizes is None:
            k = len(node.outputs)
            if c % k:
                return None
            sizes = [c // k] * k
        if int(np.sum(sizes)) != c:
            return None
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    # -- step 3: depthwise conv after a bijective Gather: permute the depthwise instead --
    def _commute_depthwise(self) -> None:
        for node in list(self.graph.nodes):
            if not _depthwise(node) or not node.inputs or not _is_gather(ir.producer(node.inputs[0])):
                continue
            out = node.outputs[0]
            users = ir.consumers(out)
            if not users or ir.is_graph_output(self.graph, out) or not all(self._absorbs_permutation(u) for u in users):
                continue
            try:
                if one_hot_shift(node) is not None and all(self._pointwise(u) for u in users):
                    continue  # a shift: folded with the Gather into the AddressConv instead
            except Decline:
                pass
            g = ir.producer(node.inputs[0])
            idx = ir.const_value(g.inputs[1]).astype(np.int64)
            x = g.inputs[0]
            if _channels(x) != len(idx) or not np.array_equal(np.sort(idx), np.arange(len(idx))):
                continue
            w, b = _weights(node)
            w2 = np.empty_like(w)
            w2[idx] = w
            inputs = [x, gs.Constant(f"{node.name}/W_perm", w2)]
            if b is not None:
                b2 = np.empty_like(b)
                b2[idx] = b
                inputs.append(gs.Constant(f"{node.name}/B_perm", b2))
            new_out = gs.Variable(f"{out.name}/unpermuted", dtype=out.dtype, shape=out.shape)
            self.graph.nodes.append(gs.Node("Conv", name=f"{node.name}/commuted", attrs=dict(node.attrs),
                                            inputs=inputs, outputs=[new_out]))
            node.inputs.clear()
            self._replace_with_gather(out, new_out, idx, node.name)
            self.counts["depthwise_commuted"] += 1

    def _kernel_1x1(self, node: gs.Node) -> bool:
        w, _ = _weights(node) if _is_conv(node) else (None, None)
        return w is not None and w.ndim == 4 and w.shape[2:] == (1, 1)

    def _pointwise(self, node: gs.Node) -> bool:
        if not self._kernel_1x1(node):
            return False
        return not any(node.attrs.get("pads", [0])) and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")

    def _absorbs_permutation(self, node: gs.Node) -> bool:
        w, _ = _weights(node) if _is_conv(node) else (None, None)
        return w is not None and w.dtype == np.float32 and (self._pointwise(node) or int(node.attrs.get("group", 1)) == 1)

    # -- step 4: convs read their input through its view --
    def _rewrite_consumers(self) -> None:
        for conv in list(self.graph.nodes):
            if not _is_conv(conv) or not conv.inputs:
                continue
            w, b = _weights(conv)
            if w is None or w.ndim != 4 or w.dtype != np.float32:
                continue
            try:
                view = self._view(conv.inputs[0], conv)
            except Decline as e:
                self.result.decline(conv, str(e))
                continue
            if view is None or view.is_identity():
                continue
            if not (self._pointwise(conv) or (int(conv.attrs.get("group", 1)) == 1 and view.permutation_only)):
                continue  # e.g. a depthwise or 3x3 conv after a shift: the shift stays, reported on its own
            try:
                self._rewrite(conv, view, w, b)
            except Decline as e:
                self.result.decline(conv, str(e))

    def _view(self, t: gs.Tensor, reader: gs.Node) -> View | None:
        """``t`` as a view of another tensor, walking back through one-hot depthwise convs and Gathers."""
        node = ir.producer(t)
        if node is None:
            return None
        if _is_gather(node):
            c = _channels(node.inputs[0])
            idx = ir.const_value(node.inputs[1]).astype(np.int64)
            if c is None:
                return None
            z = np.zeros(len(idx), np.int64)
            return View(node.inputs[0], idx % c, z, z.copy(), np.ones(len(idx)), np.zeros(len(idx)))
        shift = one_hot_shift(node) if _is_conv(node) else None
        if shift is None:
            return None
        if ir.only_consumer(self.graph, t) is None:
            return None  # the shift stays (reported by _report_standalone_shifts); its output is read as is
        dy, dx, scale, bias = shift
        inner = self._view(node.inputs[0], node)
        if inner is None:
            c = len(dy)
            inner = View.identity(node.inputs[0], c)
        moved = (dy != 0) | (dx != 0)
        if np.any(moved & (inner.bias != 0)):
            raise Decline(f"chained shift at {node.name!r}: the inner shift's bias would be zero-filled at the border")
        if np.any(inner.dy * dy < 0) or np.any(inner.dx * dx < 0):
            raise Decline(f"chained shift at {node.name!r}: opposite displacements do not compose exactly "
                          "(the intermediate zero fill differs)")
        return View(inner.source, inner.src, inner.dy + dy, inner.dx + dx, inner.scale * scale,
                    scale * inner.bias + bias, inner.shifts + 1)

    def _rewrite(self, conv: gs.Node, view: View, w: np.ndarray, b: np.ndarray | None) -> None:
        group, strides, dilations, pads = _conv_attrs(conv, w.shape[2:])
        cin = w.shape[1] * group
        if cin != len(view.src):
            raise Decline(f"input has {len(view.src)} channels, weights expect {cin}")
        pointwise = w.shape[2:] == (1, 1)
        if view.permutation_only and group == 1 and view.bijective():
            w2 = np.zeros_like(w)
            w2[:, view.src] = w
            op, domain, attrs = "Conv", None, dict(conv.attrs)
            inputs = [view.source, gs.Constant(f"{conv.name}/W_perm", w2)] + list(conv.inputs[2:3])
            self.counts["weights_permuted"] += 1
        elif view.permutation_only and not self.address_permutations:
            return  # measured: Gather + onnxruntime's Conv beats AddressConv when nothing is displaced
        elif not pointwise:
            raise Decline(f"a {w.shape[2]}x{w.shape[3]} conv can absorb only a bijective channel permutation "
                          "(this input is shifted, scaled, sliced or read by a grouped conv)")
        elif any(pads):
            raise Decline(f"1x1 conv after a shift has pads {pads}")
        elif self.opset is not None and self.opset < MIN_OPSET:
            raise Decline(f"the model's opset {self.opset} is below {MIN_OPSET}, which {ops.ADDRESS_CONV}'s "
                          "ONNX-function fallback needs")
        elif not self.custom_ops:
            raise Decline(f"onnxopt's custom-op library is not installed: an {ops.ADDRESS_CONV} would run as its "
                          "slower ONNX function (option shift.custom_ops=true makes it anyway)")
        else:
            self._address_conv(conv, view, w, b, group, strides)
            self.counts["address_convs"] += 1
            self.counts["shifts_folded"] += view.shifts
            return
        outs = list(conv.outputs)
        conv.outputs.clear()
        conv.inputs.clear()
        self.graph.nodes.append(gs.Node(op, name=conv.name, domain=domain, attrs=attrs, inputs=inputs, outputs=outs))

    def _address_conv(self, conv: gs.Node, view: View, w: np.ndarray, b: np.ndarray | None, group: int,
                      strides: list[int]) -> None:
        """Replace the 1x1 ``conv`` by AddressConv(view.source, W', B', address), then absorb what follows."""
        cout, kg = w.shape[0], w.shape[1]
        rows = (np.arange(cout) // (cout // group))[:, None] * kg + np.arange(kg)[None, :]  # [Cout, K]
        w64 = w.reshape(cout, kg).astype(np.float64)
        w2 = (w64 * view.scale[rows]).astype(np.float32).reshape(w.shape)
        b2 = (b.astype(np.float64) if b is not None else np.zeros(cout)) + (w64 * view.bias[rows]).sum(axis=1)
        has_bias = b is not None or bool(view.bias.any())
        address = np.stack([view.src, view.dy, view.dx], axis=1).astype(np.int32)
        inputs = [view.source, gs.Constant(f"{conv.name}/W_addr", w2),
                  gs.Constant(f"{conv.name}/B_addr", b2.astype(np.float32)) if has_bias else gs.Variable.empty(),
                  gs.Constant(f"{conv.name}/address", address)]
        attrs = {"group": group, "strides": [int(s) for s in strides]}
        outs = list(conv.outputs)
        conv.outputs.clear()
        conv.inputs.clear()
        node = gs.Node(ops.ADDRESS_CONV, name=conv.name, domain=ops.DOMAIN, attrs=attrs, inputs=inputs, outputs=outs)
        self.graph.nodes.append(node)
        self._absorb_epilogue(node)

    # -- step 5: 1x1 convs between AddressConvs join their layout --
    def _chain_pointwise(self) -> None:
        """A 1x1 conv whose input an AddressConv produces, or whose output (after a Relu/Clip) only
        AddressConvs read, becomes an AddressConv with the identity table (see the module docstring)."""
        changed = True
        while changed:
            changed = False
            for conv in list(self.graph.nodes):
                if not conv.inputs or not self._pointwise(conv):
                    continue
                w, b = _weights(conv)
                c = _channels(conv.inputs[0])
                if w is None or w.dtype != np.float32 or c is None or c != w.shape[1] * int(conv.attrs.get("group", 1)):
                    continue
                if not (_is_address_conv(ir.producer(conv.inputs[0])) or self._feeds_address_convs(conv.outputs[0])):
                    continue
                try:
                    group, strides, _, _ = _conv_attrs(conv, w.shape[2:])
                except Decline:
                    continue
                self._address_conv(conv, View.identity(conv.inputs[0], c), w, b, group, strides)
                self.counts["chained_convs"] += 1
                changed = True

    def _feeds_address_convs(self, t: gs.Tensor) -> bool:
        users = ir.consumers(t)
        if ir.is_graph_output(self.graph, t) or not users:
            return False
        if len(users) == 1 and users[0].op in ("Relu", "Clip") and (users[0].domain or "") in ("", "ai.onnx"):
            return self._feeds_address_convs(users[0].outputs[0])
        return all(_is_address_conv(u) for u in users)

    def _absorb_epilogue(self, node: gs.Node) -> None:
        """Fold a following residual Add, then a Relu / constant Clip, into the AddressConv ``node``."""
        while True:
            out = node.outputs[0]
            user = ir.only_consumer(self.graph, out)
            if user is None or (user.domain or "") not in ("", "ai.onnx"):
                return
            if "clip_min" in node.attrs:  # nothing is absorbed after the activation
                return
            if user.op == "Add" and len(node.inputs) == 4:
                others = [t for t in user.inputs if t is not out]
                if len(user.inputs) != 2 or len(others) != 1 or not _same_static_shape(others[0], out):
                    return
                node.inputs.append(others[0])
                self.counts["residuals_fused"] += 1
                ir.absorb_consumer(node, user)
            elif ir.fuse_activation(node, user):
                self.counts["activations_fused"] += 1
            else:
                return

    def _report_standalone_shifts(self) -> None:
        """Say why each one-hot depthwise conv that is still in the graph was not folded."""
        for node in self.graph.nodes:
            if not node.inputs or not node.outputs or not _is_conv(node):
                continue
            try:
                if one_hot_shift(node) is None:
                    continue
            except Decline as e:
                self.result.decline(node, str(e))
                continue
            out = node.outputs[0]
            users = ir.consumers(out)
            if not users:
                continue
            if ir.is_graph_output(self.graph, out):
                reason = "its output is a graph output"
            elif len(users) > 1:
                reason = f"its output has {len(users)} consumers"
            elif _is_conv(users[0]) and self._kernel_1x1(users[0]) and any(users[0].attrs.get("pads", [0])):
                reason = f"the 1x1 conv after it ({users[0].name!r}) has pads {list(users[0].attrs['pads'])}"
            elif not self._pointwise(users[0]):
                reason = f"followed by {users[0].op} ({users[0].name!r}), not a 1x1 conv with zero padding"
            else:
                continue  # declined at the consumer, with its own reason
            self.result.decline(node, f"one-hot depthwise conv left as is: {reason}")


_MAX_ROUNDS = 256


def _refresh_shapes(graph: gs.Graph) -> None:
    """Re-run shape inference and copy the shapes it finds onto the graph's tensors whose shape is unknown."""
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]  # stale symbolic dims would otherwise be kept
    model = ir.infer_shapes(model)
    tensors = graph.tensors()
    for vi in list(model.graph.value_info) + list(model.graph.output):
        t = tensors.get(vi.name)
        tt = vi.type.tensor_type
        if t is None or not isinstance(t, gs.Variable) or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        if t.shape is None or not all(isinstance(d, (int, np.integer)) for d in t.shape):
            t.shape = dims
            if t.dtype is None:
                t.dtype = onnx_helper_dtype(tt.elem_type)


def onnx_helper_dtype(elem_type: int):
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type)


def _is_address_conv(node: gs.Node | None) -> bool:
    return node is not None and node.op == ops.ADDRESS_CONV and node.domain == ops.DOMAIN


def _same_static_shape(a: gs.Tensor, b: gs.Tensor) -> bool:
    sa, sb = getattr(a, "shape", None), getattr(b, "shape", None)
    return (sa is not None and sb is not None and len(sa) == 4 and list(sa) == list(sb)
            and all(isinstance(d, (int, np.integer)) for d in sa) and a.dtype == np.float32)


def _is_gather(node: gs.Node | None) -> bool:
    if node is None or node.op != "Gather" or (node.domain or "") not in ("", "ai.onnx"):
        return False
    idx = ir.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    rank = len(node.inputs[0].shape or ())
    return (idx is not None and idx.ndim == 1 and rank == 4 and node.attrs.get("axis", 0) % rank == 1
            and _channels(node.inputs[0]) is not None)


def _default_opset(model) -> int | None:
    for imp in getattr(model, "opset_import", ()):
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None
