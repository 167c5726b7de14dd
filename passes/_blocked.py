"""The shift pass's last step: chains of AddressConvs move into the blocked layout.

A connected set of AddressConvs (group 1, displacements within [-1, 1]) — connected where one's
output is another's input X or residual — becomes BlockedAddressConvs working on
[N, ceil(C/16), H + 2, W + 2, 16] tensors with a zero border (runtime/csrc/blocked_conv.h): one
ToBlocked per tensor entering the set, one FromBlocked per tensor leaving it (read by anything else
or a graph output). Inside, no conversion happens at all, so a ShiftNet runs from its stem to its
pooling in the blocked layout.

Why (one thread, Zen 5, per layer; ShiftNet widths 32 and 64): the NCHW AddressConv vectorises
over positions, so its B rows lie a plane apart (at 32x32 every one in the same L1 set) and the
displaced reads straddle cache lines; the blocked tiles vectorise over output channels and
broadcast R displaced inputs per input channel, plain loads thanks to the border. Shift layers
ran 5-27 % faster (96->32 @32x32: 35.6 -> 26.5 us; stride 2 96->64: 18.0 -> 12.6 us), identity
layers the same or up to 8 % faster. The conversions cost about one copy of their tensor, so a set
is converted only when it has at least ``MIN_NODES`` nodes and at most one conversion per two nodes
(a ShuffleNetV2's AddressConvs, separated by depthwise convs, stay in NCHW).

Then, around and inside the set: a small "same" Conv (+ Relu) whose result only enters the layout
becomes a BlockedEntryConv reading the NCHW input (:func:`absorb_entry_convs`), FromBlocked -> GlobalAveragePool
becomes one BlockedGlobalAveragePool (:func:`pool_exits`), and two BlockedAddressConvs where the
first's result only feeds the second become one BlockedAddressConvPair (:func:`pair_convs`).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import ir
from onnxopt.cost import mac_rule, strided_size
from onnxopt.runtime import ops

MIN_NODES = 3
BLOCK = 16


@mac_rule(ops.BLOCKED_ADDRESS_CONV, domain=ops.DOMAIN)
def _blocked_address_conv_macs(node, shapes, inits):
    """N · Cout · Ho · Wo · K (group 1), X blocked [N, Cb, H + 2, W + 2, 16]."""
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    if x is None or w is None or len(x) != 5:
        return None
    ho, wo = strided_size(node, x[2] - 2, x[3] - 2)
    return int(x[0] * w[0] * ho * wo * w[1])


@mac_rule(ops.BLOCKED_ADDRESS_CONV_PAIR, domain=ops.DOMAIN)
def _blocked_pair_macs(node, shapes, inits):
    """The two convs' MACs: N · (Cmid · H1 · W1 · K1 + Cout · Ho · Wo · K2)."""
    x, w1, w2 = (shapes.get(node.input[i]) for i in (0, 1, 4))
    if x is None or w1 is None or w2 is None or len(x) != 5:
        return None
    h1, w1_ = strided_size(node, x[2] - 2, x[3] - 2, "first_strides")
    ho, wo = strided_size(node, h1, w1_)
    return int(x[0] * (w1[0] * h1 * w1_ * w1[1] + w2[0] * ho * wo * w2[1]))


def _eligible(node: gs.Node) -> bool:
    if node.op != ops.ADDRESS_CONV or node.domain != ops.DOMAIN or int(node.attrs.get("group", 1)) != 1:
        return False
    if len(node.inputs) < 4 or len(node.outputs) != 1:
        return False
    address, w = ir.const_value(node.inputs[3]), ir.const_value(node.inputs[1])
    if address is None or w is None or address.ndim != 2 or address.shape[1] != 3 or w.ndim != 4:
        return False
    return bool(np.abs(address[:, 1:]).max(initial=0) <= 1)


def _has_residual(node: gs.Node) -> bool:
    return len(node.inputs) > 4 and bool(node.inputs[4].name)


def _data_inputs(node: gs.Node) -> list[gs.Tensor]:
    """X and, when present, the residual."""
    return [node.inputs[0]] + ([node.inputs[4]] if _has_residual(node) else [])


def _components(nodes: list[gs.Node]) -> list[list[gs.Node]]:
    index = {id(n): i for i, n in enumerate(nodes)}
    parent = list(range(len(nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, node in enumerate(nodes):
        for t in _data_inputs(node):
            j = index.get(id(ir.producer(t)))
            if j is not None:
                parent[find(i)] = find(j)
    groups: dict[int, list[gs.Node]] = {}
    for i, node in enumerate(nodes):
        groups.setdefault(find(i), []).append(node)
    return list(groups.values())


def _blocked_shape(shape) -> list | None:
    if shape is None or len(shape) != 4:
        return None
    n, c, h, w = shape
    known = all(isinstance(d, (int, np.integer)) for d in (h, w))
    cb = -(-int(c) // BLOCK) if isinstance(c, (int, np.integer)) else None
    return [n, cb, int(h) + 2 if known else None, int(w) + 2 if known else None, BLOCK]


def _inner(d):
    return int(d) - 2 if isinstance(d, (int, np.integer)) else None


def _output_shape(xb_shape, channels: int, strides) -> list | None:
    """A BlockedAddressConv's output shape from its blocked input's."""
    if xb_shape is None:
        return None
    h, w = _inner(xb_shape[2]), _inner(xb_shape[3])
    ho = -(-h // int(strides[0])) + 2 if h is not None else None
    wo = -(-w // int(strides[1])) + 2 if w is not None else None
    return [xb_shape[0], -(-channels // BLOCK), ho, wo, BLOCK]


def block_chains(graph: gs.Graph) -> tuple[int, int]:
    """Move every qualifying set of AddressConvs into the blocked layout; returns (nodes, conversions)."""
    moved = conversions = 0
    graph.toposort()
    for comp in _components([n for n in graph.nodes if _eligible(n)]):
        members = {id(n) for n in comp}
        entering = {t.name: t for n in comp for t in _data_inputs(n) if id(ir.producer(t)) not in members}
        leaving = [n.outputs[0] for n in comp
                   if ir.is_graph_output(graph, n.outputs[0])
                   or any(id(u) not in members or not any(t is n.outputs[0] for t in _data_inputs(u))
                          for u in ir.consumers(n.outputs[0]))]
        cost = len(entering) + len(leaving)
        if len(comp) < MIN_NODES or 2 * cost > len(comp):
            continue
        blocked: dict[str, gs.Variable] = {}
        for name, t in entering.items():
            tb = gs.Variable(f"{name}/blocked", np.float32, _blocked_shape(t.shape))
            graph.nodes.append(gs.Node(ops.TO_BLOCKED, name=f"{name}/to_blocked", domain=ops.DOMAIN,
                                       inputs=[t], outputs=[tb]))
            blocked[name] = tb
        leaving_names = {t.name for t in leaving}
        for n in comp:  # in graph order, which is topological: each X's blocked shape is known first
            y = n.outputs[0]
            inputs = list(n.inputs)
            inputs[0] = blocked[inputs[0].name]
            if len(inputs) > 4 and inputs[4].name:
                inputs[4] = blocked[inputs[4].name]
            attrs = {k: v for k, v in n.attrs.items() if k != "group"}
            channels = int(ir.const_value(inputs[1]).shape[0])
            out = gs.Variable(f"{y.name}/blocked", np.float32,
                              _output_shape(inputs[0].shape, channels, attrs.get("strides", [1, 1])))
            blocked[y.name] = out
            n.inputs.clear()
            n.outputs.clear()
            graph.nodes.append(gs.Node(ops.BLOCKED_ADDRESS_CONV, name=n.name, domain=ops.DOMAIN, attrs=attrs,
                                       inputs=inputs, outputs=[out]))
            if y.name in leaving_names:
                if out.shape is not None and y.shape is None:
                    y.shape, y.dtype = [out.shape[0], channels, _inner(out.shape[2]), _inner(out.shape[3])], np.float32
                graph.nodes.append(gs.Node(ops.FROM_BLOCKED, name=f"{y.name}/from_blocked", domain=ops.DOMAIN,
                                           attrs={"channels": channels}, inputs=[out], outputs=[y]))
        moved += len(comp)
        conversions += cost
    if moved:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return moved, conversions


MAX_ENTRY_K = 256


def _entry_conv(graph: gs.Graph, to_blocked: gs.Node):
    """(Conv, Relu or None) computing ToBlocked's input alone, when the Conv is an AddressConv in
    disguise: group 1, no dilation, an odd kernel of at most 3x3 with "same" pads, constant weights
    and at most MAX_ENTRY_K input taps (channels x kernel positions)."""
    t = to_blocked.inputs[0]
    relu = ir.producer(t)
    if relu is not None and relu.op == "Relu" and ir.only_consumer(graph, t) is to_blocked:
        t, user = relu.inputs[0], relu
    else:
        relu, user = None, to_blocked
    conv = ir.producer(t)
    if conv is None or conv.op != "Conv" or ir.only_consumer(graph, t) is not user or len(conv.inputs) < 2:
        return None
    w = ir.const_value(conv.inputs[1])
    b = ir.const_value(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2].name else None
    if w is None or w.ndim != 4 or (len(conv.inputs) > 2 and conv.inputs[2].name and b is None):
        return None
    kh, kw = w.shape[2:]
    a = conv.attrs
    if int(a.get("group", 1)) != 1 or list(a.get("dilations", [1, 1])) != [1, 1] \
            or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or kh % 2 == 0 or kw % 2 == 0 \
            or kh > 3 or kw > 3 or list(a.get("pads", [0, 0, 0, 0])) != [kh // 2, kw // 2, kh // 2, kw // 2] \
            or w.shape[1] * kh * kw > MAX_ENTRY_K:
        return None
    return conv, relu


def absorb_entry_convs(graph: gs.Graph) -> int:
    """A small "same" Conv (+ Relu) whose result only enters the blocked layout becomes a
    BlockedEntryConv reading the NCHW input: one address row (c, ky - kh/2, kx - kw/2) per input
    tap, the weights reshaped to [Cout, C·kh·kw, 1, 1]; returns how many.

    Why: a ShiftNet's stem (3x3, 3 -> w channels) ran in onnxruntime's NCHWc layout, went back to
    NCHW (ReorderOutput) and then blocked (ToBlocked): three passes over its output where running
    the conv on the image (K = 27) straight into the layout makes one. (A ToBlocked of the
    3-channel image and a BlockedAddressConv did the same with 16-lane cells of which 3 are read:
    in the w32 net that ToBlocked took 12 us of ~900.)"""
    count = 0
    for tb in list(ir.nodes_of(graph, ops.TO_BLOCKED, domain=ops.DOMAIN)):
        found = _entry_conv(graph, tb)
        if found is None:
            continue
        conv, relu = found
        x, w = conv.inputs[0], ir.const_value(conv.inputs[1])
        cout, cin, kh, kw = w.shape
        address = np.array([(c, ky - kh // 2, kx - kw // 2) for c in range(cin) for ky in range(kh)
                            for kx in range(kw)], np.int32)
        name = conv.name or tb.name
        weight = gs.Constant(f"{name}/blocked_w", np.ascontiguousarray(w.reshape(cout, cin * kh * kw, 1, 1)))
        bias = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2].name else gs.Variable.empty()
        out = tb.outputs[0]
        attrs = {"strides": list(conv.attrs.get("strides", [1, 1]))}
        if relu is not None:
            attrs["clip_min"] = 0.0
        for n in (tb, conv) + ((relu,) if relu is not None else ()):
            n.inputs.clear()
            n.outputs.clear()
        graph.nodes.append(gs.Node(ops.BLOCKED_ENTRY_CONV, name=name, domain=ops.DOMAIN, attrs=attrs,
                                   inputs=[x, weight, bias, gs.Constant(f"{name}/address", address)],
                                   outputs=[out]))
        count += 1
    if count:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return count


def pool_exits(graph: gs.Graph) -> int:
    """FromBlocked -> GlobalAveragePool (FromBlocked's result read by nothing else) becomes one
    BlockedGlobalAveragePool, which reads each blocked cell once and writes only the means; returns
    how many."""
    count = 0
    for fb in list(ir.nodes_of(graph, ops.FROM_BLOCKED, domain=ops.DOMAIN)):
        t = fb.outputs[0]
        pool = ir.only_consumer(graph, t)
        if pool is None or pool.op != "GlobalAveragePool":
            continue
        xb, out = fb.inputs[0], pool.outputs[0]
        for n in (fb, pool):
            n.inputs.clear()
            n.outputs.clear()
        graph.nodes.append(gs.Node(ops.BLOCKED_GLOBAL_AVERAGE_POOL, name=pool.name or f"{t.name}/pool",
                                   domain=ops.DOMAIN, attrs={"channels": int(fb.attrs["channels"])},
                                   inputs=[xb], outputs=[out]))
        count += 1
    if count:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return count


def pair_convs(graph: gs.Graph) -> int:
    """Join each BlockedAddressConv A whose result only B reads, as its X, into one
    BlockedAddressConvPair with B (A without a residual); returns how many pairs.

    Why (one thread, Zen 5, C++ loop over ShiftNet stage-1 blocks): A's result (3x the channels
    in a ShiftNet block) is never written out and read back; its rows live in a ring of three in
    L1/L2. 59.6 -> 57.4 us per w32 block at 32x32, 2-4 % across the ShiftNet shapes."""
    pairs = 0
    taken: set[int] = set()
    for a in list(graph.nodes):
        if a.op != ops.BLOCKED_ADDRESS_CONV or id(a) in taken or _has_residual(a):
            continue
        mid = a.outputs[0]
        b = ir.only_consumer(graph, mid)
        if b is None or b.op != ops.BLOCKED_ADDRESS_CONV or id(b) in taken or b.inputs[0] is not mid \
                or any(t is mid for t in b.inputs[1:]):
            continue
        taken.update((id(a), id(b)))
        bias = [a.inputs[2] if len(a.inputs) > 2 else gs.Variable.empty(),
                b.inputs[2] if len(b.inputs) > 2 else gs.Variable.empty()]
        inputs = [a.inputs[0], a.inputs[1], bias[0], a.inputs[3], b.inputs[1], bias[1], b.inputs[3]]
        if _has_residual(b):
            inputs.append(b.inputs[4])
        attrs = {f"first_{k}": v for k, v in a.attrs.items()}
        attrs.update(b.attrs)
        out = b.outputs[0]
        for n in (a, b):
            n.inputs.clear()
            n.outputs.clear()
        graph.nodes.append(gs.Node(ops.BLOCKED_ADDRESS_CONV_PAIR, name=f"{a.name}+{b.name}", domain=ops.DOMAIN,
                                   attrs=attrs, inputs=inputs, outputs=[out]))
        pairs += 1
    if pairs:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return pairs
