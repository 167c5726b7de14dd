"""ONNX-function fallbacks of the custom ops, so an optimized model also runs on a stock runtime.

Design: one model-local FunctionProto per custom op type (domain ``ai.onnxopt``, same name),
built from standard ops and *data-independent*: the ``address`` table is an ordinary input of
the function, and its body turns it into gather indices at run time. So a model holds a single
``AddressConv`` function however many nodes (and address tables) use it, the node is exactly the
node the native kernel runs, and nothing has to be regenerated when a pass edits an address
table. onnxruntime runs the registered kernel when the library is loaded and expands the
function otherwise.

AddressConv body, for X [N, Csrc, H, W], address [Cin, 3] = (src, dy, dx), strides (sh, sw)::

    P   = max |dy|, |dx|                               # every read lands inside the padding
    Xp  = Pad(X, P on both sides of H and W)           # zeros outside the image
    Hp, Wp = H + 2P, W + 2P;  Ho, Wo = ceil(H/sh), ceil(W/sw)
    idx[k, i, j] = src[k]*Hp*Wp + (i*sh + dy[k] + P)*Wp + (j*sw + dx[k] + P)   # [Cin, Ho, Wo]
    G   = Gather(Reshape(Xp, [N, -1]), idx, axis=1)    # [N, Cin, Ho, Wo]
    Y   = Conv(G, W, B, group)                          # 1x1, stride 1
    Y   = Y + residual                                  # overload "residual" only
    Y   = Clip(Y, clip_min, clip_max)                   # attributes, default -inf / +inf

The fused activation is a clamp to [``clip_min``, ``clip_max``] (Relu: clip_min = 0; Clip: its
constant bounds; none: the defaults, which clamp nothing), so one body serves every activation with
no branching on a string attribute. The optional 5th input ``residual`` cannot be optional in the
body: onnxruntime 1.31 binds a missing function input to the empty name, and an ``Add`` (or
``Sum``: it crashes) reading it is rejected, as is ``OptionalHasElement`` + ``If`` (the branch still
names it). So the residual form is an *overload* of the same function (IR >= 10, ``overload =
"residual"``, :data:`RESIDUAL_OVERLOAD`): both are built by :func:`address_conv_function` from the
same nodes, and :func:`add_functions` tags each node that has a residual with that overload (the
native kernel runs either). The function needs the model's default-domain opset >= 13 and IR
version >= 9 (attribute defaults on functions), 10 with a residual; :func:`add_functions` sets it.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from . import ops

#: Lowest default-domain opset whose ops the function bodies use as written.
MIN_OPSET = 13
#: FunctionProto.overload / NodeProto.overload of AddressConv with its 5th input ``residual``.
RESIDUAL_OVERLOAD = "residual"


def _const(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value_ints=values)


def _ref_const(name: str, attr: str, kind: str) -> onnx.NodeProto:
    """Constant ``name`` = the function attribute ``attr`` (kind "value_float" or "value_ints")."""
    node = helper.make_node("Constant", [], [name])
    typ = onnx.AttributeProto.FLOAT if kind == "value_float" else onnx.AttributeProto.INTS
    node.attribute.append(onnx.AttributeProto(name=kind, ref_attr_name=attr, type=typ))
    return node


def _address_conv_like(name: str, inputs: list[str], nodes: list[onnx.NodeProto], opset: int,
                       residual: bool) -> onnx.FunctionProto:
    """A FunctionProto with AddressConv's attributes and defaults (group 1, strides [1, 1], no clamp),
    the residual overload when ``residual``."""
    f = helper.make_function(ops.DOMAIN, name, inputs=inputs, outputs=["Y"], nodes=nodes,
                             opset_imports=[helper.make_opsetid("", opset)], attributes=[])
    f.attribute_proto.extend([helper.make_attribute("group", 1), helper.make_attribute("strides", [1, 1]),
                              helper.make_attribute("clip_min", float("-inf")),
                              helper.make_attribute("clip_max", float("inf"))])
    if residual:
        f.overload = RESIDUAL_OVERLOAD
    return f


def address_conv_function(opset: int, residual: bool = False) -> onnx.FunctionProto:
    """The AddressConv FunctionProto, written against default-domain opset ``opset``; with
    ``residual`` its overload with the 5th input (see the module docstring)."""
    if opset < MIN_OPSET:
        raise ValueError(f"{ops.ADDRESS_CONV} fallback needs opset >= {MIN_OPSET}, model has {opset}")
    n = helper.make_node
    strides = _ref_const("strides", "strides", "value_ints")
    conv = n("Conv", ["G", "W", "B"], ["Yc"], kernel_shape=[1, 1])
    conv.attribute.append(onnx.AttributeProto(name="group", ref_attr_name="group", type=onnx.AttributeProto.INT))
    nodes = [
        _const("c0", [0]), _const("c1", [1]), _const("c2", [2]), _const("c3", [3]), _const("c4", [4]),
        _const("zero2", [0, 0]), _const("one", [1]), _const("two", [2]), _const("flat", [0, -1]),
        _const("col3", [-1, 1, 1]), _const("row3", [1, -1, 1]), _const("lane3", [1, 1, -1]),
        n("Constant", [], ["scalar"], value=helper.make_tensor("scalar", TensorProto.INT64, [0], [])),
        strides,
        n("Cast", ["address"], ["addr"], to=TensorProto.INT64),
        n("Slice", ["addr", "c0", "c1", "c1"], ["src2"]),
        n("Slice", ["addr", "c1", "c2", "c1"], ["dy2"]),
        n("Slice", ["addr", "c2", "c3", "c1"], ["dx2"]),
        n("Slice", ["addr", "c1", "c3", "c1"], ["dyx"]),
        n("Abs", ["dyx"], ["absd"]),
        n("ReduceMax", ["absd"], ["pmax"], keepdims=1),
        n("Reshape", ["pmax", "one"], ["P"]),
        n("Concat", ["zero2", "P", "P", "zero2", "P", "P"], ["pads"], axis=0),
        n("Pad", ["X", "pads"], ["Xp"]),
        n("Shape", ["X"], ["xshape"]),
        n("Slice", ["xshape", "c2", "c3"], ["H"]),
        n("Slice", ["xshape", "c3", "c4"], ["Wd"]),
        n("Slice", ["strides", "c0", "c1"], ["sh"]),
        n("Slice", ["strides", "c1", "c2"], ["sw"]),
        # Ho = (H + sh - 1) / sh, Wo likewise (integer division of positive numbers)
        n("Add", ["H", "sh"], ["h1"]), n("Sub", ["h1", "one"], ["h2"]), n("Div", ["h2", "sh"], ["Ho"]),
        n("Add", ["Wd", "sw"], ["w1"]), n("Sub", ["w1", "one"], ["w2"]), n("Div", ["w2", "sw"], ["Wo"]),
        n("Mul", ["P", "two"], ["P2"]),
        n("Add", ["H", "P2"], ["Hp"]), n("Add", ["Wd", "P2"], ["Wp"]),
        n("Mul", ["Hp", "Wp"], ["plane"]),
        n("Reshape", ["Ho", "scalar"], ["Ho0"]), n("Reshape", ["Wo", "scalar"], ["Wo0"]),
        n("Reshape", ["c0", "scalar"], ["zero0"]), n("Reshape", ["one", "scalar"], ["one0"]),
        n("Range", ["zero0", "Ho0", "one0"], ["ri"]), n("Range", ["zero0", "Wo0", "one0"], ["rj"]),
        n("Mul", ["ri", "sh"], ["ri_s"]), n("Add", ["ri_s", "P"], ["ri_p"]), n("Reshape", ["ri_p", "row3"], ["rows"]),
        n("Mul", ["rj", "sw"], ["rj_s"]), n("Add", ["rj_s", "P"], ["rj_p"]), n("Reshape", ["rj_p", "lane3"], ["cols"]),
        n("Reshape", ["src2", "col3"], ["src3"]), n("Reshape", ["dy2", "col3"], ["dy3"]),
        n("Reshape", ["dx2", "col3"], ["dx3"]),
        n("Mul", ["src3", "plane"], ["base"]),
        n("Add", ["rows", "dy3"], ["yy"]), n("Mul", ["yy", "Wp"], ["yoff"]),
        n("Add", ["cols", "dx3"], ["xx"]),
        n("Add", ["base", "yoff"], ["i1"]), n("Add", ["i1", "xx"], ["idx"]),
        n("Reshape", ["Xp", "flat"], ["Xf"]),
        n("Gather", ["Xf", "idx"], ["G"], axis=1),
        conv,
    ]
    if residual:
        nodes.append(n("Add", ["Yc", "residual"], ["Ys"]))
    nodes += [_ref_const("lo", "clip_min", "value_float"), _ref_const("hi", "clip_max", "value_float"),
              n("Clip", ["Ys" if residual else "Yc", "lo", "hi"], ["Y"])]
    f = _address_conv_like(ops.ADDRESS_CONV, ["X", "W", "B", "address"] + (["residual"] if residual else []),
                           nodes, opset, residual)
    f.doc_string = (f"{ops.ADDRESS_CONV} from standard ops: pad by the largest displacement, gather the "
                    "displaced strided pixels with indices computed from `address`, then a 1x1 Conv.")
    return f


def perforated_conv_function(opset: int) -> onnx.FunctionProto:
    """The PerforatedConv FunctionProto: the dense Conv, then every position takes the value at
    ``positions[fill[q]]`` (two Gathers over the flattened plane). Exact, and as slow as the dense
    conv: it is the fallback for runtimes without our library, not a fast path."""
    if opset < MIN_OPSET:
        raise ValueError(f"{ops.PERFORATED_CONV} fallback needs opset >= {MIN_OPSET}, model has {opset}")
    n = helper.make_node
    conv = n("Conv", ["X", "W", "B"], ["Yd"])
    for name, kind in (("kernel_shape", onnx.AttributeProto.INTS), ("strides", onnx.AttributeProto.INTS),
                       ("pads", onnx.AttributeProto.INTS), ("dilations", onnx.AttributeProto.INTS),
                       ("group", onnx.AttributeProto.INT)):
        conv.attribute.append(onnx.AttributeProto(name=name, ref_attr_name=name, type=kind))
    nodes = [
        conv,
        _const("c0", [0]), _const("c2", [2]), _const("minus1", [-1]),
        n("Shape", ["Yd"], ["yshape"]),
        n("Slice", ["yshape", "c0", "c2"], ["nc"]),
        n("Concat", ["nc", "minus1"], ["flat"], axis=0),
        n("Reshape", ["Yd", "flat"], ["Yf"]),
        n("Gather", ["Yf", "positions"], ["Yk"], axis=2),
        n("Gather", ["Yk", "fill"], ["Yg"], axis=2),
        n("Reshape", ["Yg", "yshape"], ["Yr"]),
        _ref_const("lo", "clip_min", "value_float"), _ref_const("hi", "clip_max", "value_float"),
        n("Clip", ["Yr", "lo", "hi"], ["Y"]),
    ]
    f = helper.make_function(
        ops.DOMAIN, ops.PERFORATED_CONV, inputs=["X", "W", "B", "positions", "fill"], outputs=["Y"], nodes=nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["kernel_shape", "strides", "pads", "dilations", "group"])
    f.attribute_proto.extend([helper.make_attribute("clip_min", float("-inf")),
                              helper.make_attribute("clip_max", float("inf"))])
    f.doc_string = (f"{ops.PERFORATED_CONV} from standard ops: the dense Conv, then output position q takes "
                    "the value at positions[fill[q]] (Gather, Gather on the flattened plane), then the fused "
                    "activation's clamp to [clip_min, clip_max] (default -inf / +inf).")
    return f


# --- the blocked layout (runtime/csrc/blocked_conv.h): [N, ceil(C/16), H + 2, W + 2, 16], zero border ---

def _to_blocked_nodes(x: str, out: str, p: str) -> list[onnx.NodeProto]:
    """Nodes computing blocked ``out`` from NCHW ``x``: pad the channels to a multiple of 16 and H, W
    by one on each side (zeros), split the channels into blocks of 16 and move each block's 16 last.
    Internal names start with ``p``."""
    n = helper.make_node
    return [
        _const(p + "c1", [1]), _const(p + "c2", [2]), _const(p + "c4", [4]), _const(p + "c0", [0]),
        _const(p + "b16", [16]), _const(p + "head", [0, 0, 1, 1]), _const(p + "one", [1]), _const(p + "m16", [-1, 16]),
        n("Shape", [x], [p + "s"]),
        n("Slice", [p + "s", p + "c1", p + "c2"], [p + "C"]),
        n("Mod", [p + "C", p + "b16"], [p + "r"]), n("Sub", [p + "b16", p + "r"], [p + "r2"]),
        n("Mod", [p + "r2", p + "b16"], [p + "cpad"]),
        n("Concat", [p + "head", p + "c0", p + "cpad", p + "one", p + "one"], [p + "pads"], axis=0),
        n("Pad", [x, p + "pads"], [p + "xp"]),
        n("Shape", [p + "xp"], [p + "ps"]),
        n("Slice", [p + "ps", p + "c0", p + "c1"], [p + "N"]),
        n("Slice", [p + "ps", p + "c2", p + "c4"], [p + "HW"]),
        n("Concat", [p + "N", p + "m16", p + "HW"], [p + "shape5"], axis=0),
        n("Reshape", [p + "xp", p + "shape5"], [p + "x5"]),
        n("Transpose", [p + "x5"], [out], perm=[0, 1, 3, 4, 2]),
    ]


def _from_blocked_nodes(xb: str, channels: str, out: str, p: str) -> list[onnx.NodeProto]:
    """Nodes computing NCHW ``out`` from blocked ``xb``, keeping the first ``channels`` (a 1-D int64
    tensor of one value) channels and dropping the border."""
    n = helper.make_node
    return [
        _const(p + "c0", [0]), _const(p + "c1", [1]), _const(p + "c2", [2]), _const(p + "c4", [4]),
        _const(p + "m1", [-1]), _const(p + "starts", [0, 1, 1]), _const(p + "tail", [-1, -1]),
        _const(p + "axes", [1, 2, 3]),
        n("Transpose", [xb], [p + "t"], perm=[0, 1, 4, 2, 3]),
        n("Shape", [xb], [p + "s"]),
        n("Slice", [p + "s", p + "c0", p + "c1"], [p + "N"]),
        n("Slice", [p + "s", p + "c2", p + "c4"], [p + "HW"]),
        n("Concat", [p + "N", p + "m1", p + "HW"], [p + "shape4"], axis=0),
        n("Reshape", [p + "t", p + "shape4"], [p + "x4"]),
        n("Concat", [channels, p + "tail"], [p + "ends"], axis=0),
        n("Slice", [p + "x4", p + "starts", p + "ends", p + "axes"], [out]),
    ]


def _check_opset(op: str, opset: int) -> None:
    if opset < MIN_OPSET:
        raise ValueError(f"{op} fallback needs opset >= {MIN_OPSET}, model has {opset}")


def to_blocked_function(opset: int) -> onnx.FunctionProto:
    """ToBlocked: X [N, C, H, W] -> [N, ceil(C/16), H + 2, W + 2, 16] (Pad, Reshape, Transpose)."""
    _check_opset(ops.TO_BLOCKED, opset)
    f = helper.make_function(ops.DOMAIN, ops.TO_BLOCKED, inputs=["X"], outputs=["Y"],
                             nodes=_to_blocked_nodes("X", "Y", "tb_"),
                             opset_imports=[helper.make_opsetid("", opset)], attributes=[])
    f.doc_string = f"{ops.TO_BLOCKED} from standard ops: Pad (channels to a multiple of 16, H and W by 1), Reshape, Transpose."
    return f


def _from_blocked_channels_nodes(out: str) -> list[onnx.NodeProto]:
    """FromBlocked of function input X to ``out``, keeping the attribute ``channels``' channels."""
    n = helper.make_node
    count = n("Constant", [], ["fb_count"])
    count.attribute.append(onnx.AttributeProto(name="value_int", ref_attr_name="channels",
                                               type=onnx.AttributeProto.INT))
    nodes = [count, _const("fb_shape1", [1]), n("Reshape", ["fb_count", "fb_shape1"], ["fb_C"])]
    return nodes + _from_blocked_nodes("X", "fb_C", out, "fb_")


def from_blocked_function(opset: int) -> onnx.FunctionProto:
    """FromBlocked: Xb [N, ceil(C/16), H + 2, W + 2, 16] -> [N, C, H, W], C = attribute ``channels``."""
    _check_opset(ops.FROM_BLOCKED, opset)
    f = helper.make_function(ops.DOMAIN, ops.FROM_BLOCKED, inputs=["X"], outputs=["Y"],
                             nodes=_from_blocked_channels_nodes("Y"),
                             opset_imports=[helper.make_opsetid("", opset)], attributes=["channels"])
    f.doc_string = f"{ops.FROM_BLOCKED} from standard ops: Transpose, Reshape, Slice (the channels and the border)."
    return f


def blocked_global_average_pool_function(opset: int) -> onnx.FunctionProto:
    """BlockedGlobalAveragePool: Xb [N, ceil(C/16), H + 2, W + 2, 16] -> [N, C, 1, 1], C = ``channels``."""
    _check_opset(ops.BLOCKED_GLOBAL_AVERAGE_POOL, opset)
    nodes = _from_blocked_channels_nodes("gp_x") + [helper.make_node("GlobalAveragePool", ["gp_x"], ["Y"])]
    f = helper.make_function(ops.DOMAIN, ops.BLOCKED_GLOBAL_AVERAGE_POOL, inputs=["X"], outputs=["Y"], nodes=nodes,
                             opset_imports=[helper.make_opsetid("", opset)], attributes=["channels"])
    f.doc_string = f"{ops.BLOCKED_GLOBAL_AVERAGE_POOL} from standard ops: the {ops.FROM_BLOCKED} body, GlobalAveragePool."
    return f


def blocked_address_conv_function(opset: int, residual: bool = False) -> onnx.FunctionProto:
    """BlockedAddressConv: back to NCHW (every stored channel of X; the residual's first Cout), the
    AddressConv body, then blocked again (which writes the zero border and padding channels)."""
    _check_opset(ops.BLOCKED_ADDRESS_CONV, opset)
    n = helper.make_node
    nodes = [_const("bc_c1", [1]), _const("bc_c2", [2]), _const("bc_16", [16]),
             n("Shape", ["Xb"], ["bc_s"]), n("Slice", ["bc_s", "bc_c1", "bc_c2"], ["bc_cb"]),
             n("Mul", ["bc_cb", "bc_16"], ["bc_C"])]
    nodes += _from_blocked_nodes("Xb", "bc_C", "X", "bx_")
    if residual:
        nodes += [_const("bw_c0", [0]), _const("bw_c1", [1]), n("Shape", ["W"], ["bw_ws"]),
                  n("Slice", ["bw_ws", "bw_c0", "bw_c1"], ["bw_cout"])]
        nodes += _from_blocked_nodes("residual_b", "bw_cout", "residual", "br_")
    body = list(address_conv_function(opset, residual).node)
    assert list(body[-1].output) == ["Y"], "the AddressConv body ends in its output"
    body[-1].output[0] = "Yn"
    nodes += body
    nodes += _to_blocked_nodes("Yn", "Y", "by_")
    f = _address_conv_like(ops.BLOCKED_ADDRESS_CONV,
                           ["Xb", "W", "B", "address"] + (["residual_b"] if residual else []), nodes, opset, residual)
    f.doc_string = (f"{ops.BLOCKED_ADDRESS_CONV} from standard ops: the blocked input (and residual) back to "
                    f"NCHW, the {ops.ADDRESS_CONV} body, the result blocked again.")
    return f


def _renamed(nodes, prefix: str, io: dict[str, str], attr_prefix: str) -> list[onnx.NodeProto]:
    """Copies of a function body's ``nodes`` with every value name ``prefix``-ed except those in
    ``io`` (mapped), and every attribute reference ``attr_prefix``-ed."""
    out = []
    for node in nodes:
        c = onnx.NodeProto()
        c.CopyFrom(node)
        for names in (c.input, c.output):
            for i, name in enumerate(names):
                if name:
                    names[i] = io.get(name, prefix + name)
        for a in c.attribute:
            if a.ref_attr_name:
                a.ref_attr_name = attr_prefix + a.ref_attr_name
        out.append(c)
    return out


def blocked_entry_conv_function(opset: int) -> onnx.FunctionProto:
    """BlockedEntryConv: the AddressConv body on the NCHW input, its result blocked."""
    _check_opset(ops.BLOCKED_ENTRY_CONV, opset)
    body = list(address_conv_function(opset).node)
    assert list(body[-1].output) == ["Y"], "the AddressConv body ends in its output"
    body[-1].output[0] = "Yn"
    nodes = body + _to_blocked_nodes("Yn", "Y", "by_")
    f = _address_conv_like(ops.BLOCKED_ENTRY_CONV, ["X", "W", "B", "address"], nodes, opset, residual=False)
    f.doc_string = f"{ops.BLOCKED_ENTRY_CONV} from standard ops: the {ops.ADDRESS_CONV} body, its result blocked."
    return f


def blocked_address_conv_pair_function(opset: int, residual: bool = False) -> onnx.FunctionProto:
    """BlockedAddressConvPair: the BlockedAddressConv body twice, the inner one's attributes named
    ``first_*``."""
    inner = _renamed(blocked_address_conv_function(opset).node, "p1_",
                     {"Xb": "Xb", "W": "W1", "B": "B1", "address": "address1", "Y": "Ymid"}, "first_")
    outer = _renamed(blocked_address_conv_function(opset, residual).node, "p2_",
                     {"Xb": "Ymid", "W": "W2", "B": "B2", "address": "address2", "residual_b": "residual_b",
                      "Y": "Y"}, "")
    f = _address_conv_like(ops.BLOCKED_ADDRESS_CONV_PAIR,
                           ["Xb", "W1", "B1", "address1", "W2", "B2", "address2"] + (["residual_b"] if residual else []),
                           inner + outer, opset, residual)
    f.attribute_proto.extend([helper.make_attribute("first_group", 1), helper.make_attribute("first_strides", [1, 1]),
                              helper.make_attribute("first_clip_min", float("-inf")),
                              helper.make_attribute("first_clip_max", float("inf"))])
    f.doc_string = (f"{ops.BLOCKED_ADDRESS_CONV_PAIR} from standard ops: the {ops.BLOCKED_ADDRESS_CONV} body "
                    "(first_* attributes), then again on its result (with the residual).")
    return f


#: Builders of each custom op's fallback function, keyed by op type.
FUNCTION_BUILDERS = {ops.ADDRESS_CONV: address_conv_function, ops.PERFORATED_CONV: perforated_conv_function,
                     ops.TO_BLOCKED: to_blocked_function, ops.FROM_BLOCKED: from_blocked_function,
                     ops.BLOCKED_ADDRESS_CONV: blocked_address_conv_function,
                     ops.BLOCKED_ADDRESS_CONV_PAIR: blocked_address_conv_pair_function,
                     ops.BLOCKED_GLOBAL_AVERAGE_POOL: blocked_global_average_pool_function,
                     ops.BLOCKED_ENTRY_CONV: blocked_entry_conv_function}

#: Where each op's optional residual input sits (the overload "residual" when it is given).
_RESIDUAL_INPUT = {ops.ADDRESS_CONV: 4, ops.BLOCKED_ADDRESS_CONV: 4, ops.BLOCKED_ADDRESS_CONV_PAIR: 7}


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ValueError("model imports no default-domain opset")


def _overload(node: onnx.NodeProto) -> str:
    """The function overload a custom-op node needs: AddressConv with a residual input has its own."""
    at = _RESIDUAL_INPUT.get(node.op_type)
    if at is not None and len(node.input) > at and node.input[at]:
        return RESIDUAL_OVERLOAD
    return ""


def add_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Embed (in place) the fallback FunctionProto of every custom op (and overload) the model uses,
    tag each node with its overload, and import ``ai.onnxopt`` version 1. Our functions already present
    are replaced (other domains' are kept). Returns the model."""
    nodes = [node for node in model.graph.node if node.domain == ops.DOMAIN]
    unknown = {node.op_type for node in nodes} - set(FUNCTION_BUILDERS)
    if unknown:
        raise ValueError(f"no ONNX-function fallback for {sorted(unknown)} (domain {ops.DOMAIN})")
    if not nodes:
        return model
    for node in nodes:
        node.overload = _overload(node)
    used = {(node.op_type, node.overload) for node in nodes}
    opset = default_opset(model)
    # ours are rebuilt: a round trip through onnx-graphsurgeon loses FunctionProto.overload
    kept = [f for f in model.functions if f.domain != ops.DOMAIN or f.name not in FUNCTION_BUILDERS]
    del model.functions[:]
    model.functions.extend(kept)
    for op_type, overload in sorted(used):
        model.functions.append(FUNCTION_BUILDERS[op_type](opset, **({"residual": True} if overload else {})))
    if not any(imp.domain == ops.DOMAIN for imp in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION))
    model.ir_version = max(model.ir_version, 10 if any(o for _, o in used) else 9)
    return model


def address_conv_model(x_shape, weight, bias, address, group: int = 1, strides=(1, 1),
                       opset: int = 17, dynamic_hw: bool = False, with_functions: bool = True,
                       residual: bool = False, clip=None) -> onnx.ModelProto:
    """A one-node model ``Y = AddressConv(X, W, B, address[, R])`` with W, B, address as initializers
    (for tests, benchmarks and latency tables). ``bias`` may be None (input left empty); ``residual``
    adds a graph input R of the output's shape; ``clip`` = (clip_min, clip_max) sets the attributes."""
    import numpy as np

    n, c, h, w = x_shape
    dims = [n, c, "H", "W"] if dynamic_hw else [n, c, h, w]
    out_dims = ([n, len(weight), "Ho", "Wo"] if dynamic_hw
                else [n, len(weight), -(-h // strides[0]), -(-w // strides[1])])
    inits = [onnx.numpy_helper.from_array(np.asarray(weight, np.float32), "W"),
             onnx.numpy_helper.from_array(np.asarray(address, np.int32), "address")]
    inputs = ["X", "W", "", "address"]
    if bias is not None:
        inits.append(onnx.numpy_helper.from_array(np.asarray(bias, np.float32), "B"))
        inputs[2] = "B"
    attrs = {"group": group, "strides": list(strides)}
    if clip is not None:
        attrs.update(clip_min=float(clip[0]), clip_max=float(clip[1]))
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, dims)]
    if residual:
        inputs.append("R")
        graph_inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, out_dims))
    node = helper.make_node(ops.ADDRESS_CONV, inputs, ["Y"], domain=ops.DOMAIN, **attrs)
    graph = helper.make_graph([node], "address_conv", graph_inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION)])
    model.ir_version = 10
    if with_functions:
        add_functions(model)
    return model


def perforated_conv_model(x_shape, weight, bias, positions, fill, group: int = 1, strides=(1, 1),
                          pads=(0, 0, 0, 0), dilations=(1, 1), opset: int = 17, dynamic_batch: bool = False,
                          dynamic_hw: bool = False, with_functions: bool = True, clip=None) -> onnx.ModelProto:
    """A one-node model ``Y = PerforatedConv(X, W, B, positions, fill)`` with W, B, positions, fill as
    initializers (for tests, benchmarks and latency tables). ``bias`` may be None (input left empty);
    ``clip`` = (clip_min, clip_max) sets the fused activation's attributes."""
    import numpy as np

    n, c, h, w = x_shape
    weight = np.asarray(weight, np.float32)
    kh, kw = weight.shape[2:]
    ho = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    batch = "N" if dynamic_batch else n
    inits = [onnx.numpy_helper.from_array(weight, "W"),
             onnx.numpy_helper.from_array(np.asarray(positions, np.int32), "positions"),
             onnx.numpy_helper.from_array(np.asarray(fill, np.int32), "fill")]
    inputs = ["X", "W", "", "positions", "fill"]
    if bias is not None:
        inits.append(onnx.numpy_helper.from_array(np.asarray(bias, np.float32), "B"))
        inputs[2] = "B"
    attrs = {"clip_min": float(clip[0]), "clip_max": float(clip[1])} if clip is not None else {}
    node = helper.make_node(ops.PERFORATED_CONV, inputs, ["Y"], domain=ops.DOMAIN, kernel_shape=[kh, kw],
                            group=group, strides=list(strides), pads=list(pads), dilations=list(dilations), **attrs)
    graph = helper.make_graph([node], "perforated_conv",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                             [batch, c, "H", "W"] if dynamic_hw else [batch, c, h, w])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                                             [batch, len(weight), "Ho", "Wo"] if dynamic_hw
                                                             else [batch, len(weight), ho, wo])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION)])
    model.ir_version = 10
    if with_functions:
        add_functions(model)
    return model
