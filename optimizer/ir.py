"""IR helpers: load and save ONNX models, move between protobuf and onnx-graphsurgeon, query nodes.

onnx-graphsurgeon's ``Graph`` is the mutable IR every pass works on. Protobuf is only touched at
the edges: :func:`load_model` (with clear errors for every way a file can be unusable),
:func:`to_graph` / :func:`to_model`, and :func:`save_model` (atomic: temp file + rename).
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from .errors import OnnxoptError

log = logging.getLogger(__name__)

ModelLike = Union[str, os.PathLike, onnx.ModelProto]

#: Models larger than this are saved with their tensors in an external data file.
EXTERNAL_DATA_THRESHOLD = 1_900_000_000


def load_model(src: ModelLike) -> onnx.ModelProto:
    """Load a model from a path (or pass a ModelProto through), raising OnnxoptError on bad input."""
    if isinstance(src, onnx.ModelProto):
        _check_model(src, "<in-memory model>")
        return src
    path = Path(src)
    if not path.exists():
        raise OnnxoptError(f"{path}: no such file")
    if not path.is_file():
        raise OnnxoptError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            model = onnx.load_model_from_string(f.read())
    except (DecodeError, RuntimeWarning, ValueError, TypeError) as e:
        raise OnnxoptError(f"{path}: not an ONNX model (protobuf parse failed: {_first_line(e)})") from None
    except OSError as e:
        raise OnnxoptError(f"{path}: cannot read: {e.strerror or e}") from None
    _check_model(model, str(path))
    if _uses_external_data(model):
        _load_external_data(model, path)
    return model


def _first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed, truncated)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_model(model: onnx.ModelProto, name: str) -> None:
    if not model.HasField("graph") or model.ir_version <= 0:
        raise OnnxoptError(f"{name}: not an ONNX model (no graph or IR version)")
    if not model.opset_import:
        raise OnnxoptError(f"{name}: model declares no opset")
    if len(model.graph.output) == 0:
        raise OnnxoptError(f"{name}: graph has no outputs")
    _check_structure(model.graph, name)
    for t in model.graph.initializer:
        _check_tensor_data(t, name)


_FIELD_OF = {
    onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.DOUBLE: "double_data", onnx.TensorProto.INT64: "int64_data",
    onnx.TensorProto.UINT64: "uint64_data", onnx.TensorProto.STRING: "string_data",
}


def _check_tensor_data(t: onnx.TensorProto, name: str) -> None:
    """An initializer's data must hold as many elements as its dims declare (before anything reads it)."""
    if any(d < 0 for d in t.dims):
        raise OnnxoptError(f"{name}: invalid model: initializer {t.name!r} has a negative dimension {list(t.dims)}")
    if t.data_type == onnx.TensorProto.UNDEFINED or t.data_type not in set(onnx.helper.get_all_tensor_dtypes()):
        raise OnnxoptError(f"{name}: invalid model: initializer {t.name!r} has no valid element type ({t.data_type})")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return  # checked against the file in _load_external_data
    count = 1
    for d in t.dims:
        count *= d
    if t.HasField("raw_data"):
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 0
        if itemsize and t.data_type not in (onnx.TensorProto.STRING,) and len(t.raw_data) != count * itemsize \
                and t.data_type not in _SUBBYTE:
            raise OnnxoptError(f"{name}: invalid model: initializer {t.name!r} declares {list(t.dims)} "
                               f"({count} elements) but holds {len(t.raw_data)} bytes")
        return
    field_name = _FIELD_OF.get(t.data_type, "int32_data")
    held = len(getattr(t, field_name))
    if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        held //= 2
    if held != count and t.data_type not in _SUBBYTE and t.data_type != onnx.TensorProto.UNDEFINED:
        raise OnnxoptError(f"{name}: invalid model: initializer {t.name!r} declares {list(t.dims)} "
                           f"({count} elements) but holds {held}")


_SUBBYTE = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2") if hasattr(onnx.TensorProto, n)}


def _check_text(graph: onnx.GraphProto, name: str) -> None:
    """Names must be text: onnx.proto is proto2, whose string fields come back as bytes when not UTF-8."""
    def bad(value) -> bool:
        return isinstance(value, bytes)

    for vi in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if bad(vi.name):
            raise OnnxoptError(f"{name}: invalid model: a tensor name is not valid UTF-8 ({vi.name[:40]!r})")
    for node in graph.node:
        for value in (node.name, node.op_type, node.domain, *node.input, *node.output,
                      *(a.name for a in node.attribute)):
            if bad(value):
                raise OnnxoptError(f"{name}: invalid model: a node field is not valid UTF-8 ({value[:40]!r})")


def _check_structure(graph: onnx.GraphProto, name: str) -> None:
    """Every tensor produced once, every node input defined, no cycle (linear time; main graph only).

    Stricter checks (op schemas, types) are left to onnxruntime, which runs the model anyway; onnx's
    own checker also rejects models onnxruntime runs happily (an output without a shape field).
    """
    _check_text(graph, name)
    produced: dict[str, int] = {}
    for vi in graph.input:
        produced[vi.name] = -1
    for t in graph.initializer:
        produced[t.name] = -1
    for i, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in produced and produced[out] >= 0:
                raise OnnxoptError(f"{name}: invalid model: tensor {out!r} is produced by two nodes")
            produced[out] = i
    indegree = [0] * len(graph.node)
    users: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for inp in node.input:
            if not inp:
                continue
            if inp not in produced:
                raise OnnxoptError(f"{name}: invalid model: node {node.name or node.op_type!r} reads {inp!r}, "
                                   "which nothing produces")
            src = produced[inp]
            if src >= 0:
                indegree[i] += 1
                users.setdefault(src, []).append(i)
    for out in graph.output:
        if out.name not in produced:
            raise OnnxoptError(f"{name}: invalid model: graph output {out.name!r} is never produced")
    ready = [i for i, d in enumerate(indegree) if d == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for j in users.get(i, ()):
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if seen != len(graph.node):
        stuck = next(graph.node[i] for i, d in enumerate(indegree) if d > 0)
        raise OnnxoptError(f"{name}: invalid model: the graph has a cycle (through node "
                           f"{stuck.name or stuck.op_type!r})")


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.external_data_helper._get_all_tensors(model)
    )


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    base = path.resolve().parent
    for t in onnx.external_data_helper._get_all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or base not in target.parents:
            raise OnnxoptError(f"{path}: external data of tensor {t.name!r} points outside the model's folder ({loc!r})")
        if not target.is_file():
            raise OnnxoptError(f"{path}: external data file {loc!r} of tensor {t.name!r} is missing")
        size = target.stat().st_size
        offset, length = int(info.get("offset", 0)), int(info.get("length", size))
        if offset + length > size:
            raise OnnxoptError(f"{path}: external data of tensor {t.name!r} runs past the end of {loc!r}")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as e:  # noqa: BLE001 - onnx raises assorted errors here
        raise OnnxoptError(f"{path}: cannot load external data: {_first_line(e)}") from None


@functools.lru_cache(maxsize=1)
def runtime_max_ir_version() -> int:
    """Highest model IR version the installed onnxruntime accepts (probed once with a 1-node model)."""
    import onnxruntime as ort

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    for ir in range(onnx.IR_VERSION, 6, -1):
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])
        m.ir_version = ir
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # noqa: BLE001 - onnxruntime raises a generic Fail for a too-new IR
            continue
    return 7


def fit_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower the model's IR version in place to what the installed onnxruntime reads; returns it."""
    model.ir_version = min(model.ir_version or onnx.IR_VERSION, runtime_max_ir_version())
    return model


#: Initializers larger than this are left out of the copy that shape inference works on.
_LIGHT_LIMIT = 1 << 16


def light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without the data of its large initializers (they become typed graph inputs).

    Shape inference needs their types and shapes, not their values; this keeps it fast on big
    models and possible on models past protobuf's 2 GB limit.
    """
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    src, g = model.graph, m.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    declared = {vi.name for vi in src.input}
    for t in src.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and t.ByteSize() <= _LIGHT_LIMIT:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference (with data propagation) on :func:`light_copy` of the model.

    Returns the light copy with ``value_info`` filled in (not the full model); on failure the
    light copy is returned as it was.
    """
    light = light_copy(model)
    try:
        return onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - inference is best effort
        log.debug("shape inference failed: %s", e)
        return light


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    g = model.graph
    return {vi.name: vi for vi in [*g.input, *g.value_info, *g.output] if vi.type.HasField("tensor_type")}


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import a model into onnx-graphsurgeon, with inferred dtypes and shapes on its variables."""
    try:
        graph = gs.import_onnx(model)
    except Exception as e:  # noqa: BLE001 - malformed graphs fail in many ways inside the importer
        raise OnnxoptError(f"cannot import graph: {_first_line(e)}") from None
    known = _value_infos(infer_shapes(model))
    for name, t in graph.tensors().items():
        vi = known.get(name)
        if vi is None or not isinstance(t, gs.Variable):
            continue
        tt = vi.type.tensor_type
        if t.dtype is None and tt.elem_type:
            t.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if t.shape is None and tt.HasField("shape"):
            t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return graph


def uniquify_names(graph: gs.Graph) -> int:
    """Give distinct tensors distinct names (graph inputs and outputs keep theirs); returns renames.

    A pass may name a new tensor after its node (``conv/W``), and two unnamed or same-named nodes
    then collide: exported as is, one initializer would silently serve both. Renaming here, once,
    protects every pass.
    """
    owner: dict[str, int] = {}
    tensors = [*graph.inputs, *graph.outputs]
    for node in graph.nodes:
        tensors += [*node.inputs, *node.outputs]
    renamed = 0
    for t in tensors:
        if not t.name:
            continue
        first = owner.setdefault(t.name, id(t))
        if first == id(t):
            continue
        k, base = 1, t.name
        while f"{base}_{k}" in owner:
            k += 1
        t.name = f"{base}_{k}"
        owner[t.name] = id(t)
        renamed += 1
    return renamed


def to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph, keeping the original model's opsets, metadata and producer; IR fitted to the runtime."""
    uniquify_names(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    opsets = {o.domain: o.version for o in like.opset_import}
    opsets.update({o.domain: o.version for o in model.opset_import if o.domain not in opsets})
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    model.producer_name, model.producer_version = like.producer_name, like.producer_version
    model.domain, model.model_version, model.doc_string = like.domain, like.model_version, like.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    model.ir_version = like.ir_version or onnx.IR_VERSION
    return fit_ir_version(model)


def save_model(model: onnx.ModelProto, path: Union[str, os.PathLike]) -> Path:
    """Write a model atomically: temp files in the target folder, fsync, then rename over the target.

    Models too large for one protobuf (2 GB) are written with their tensors in ``<name>.data``
    beside the model (renamed into place before the model file itself).
    """
    path = Path(path)
    check_writable(path)
    folder = path.resolve().parent
    large = not _byte_size_ok(model) or model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    tmpdir = None
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
        tmp = tmpdir / path.name
        if large:
            data = path.name + ".data"
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # saving with external data rewrites the tensors it moves out
            onnx.save_model(copy, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
            _fsync(tmpdir / data)
            os.replace(tmpdir / data, folder / data)
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise OnnxoptError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def write_text_atomic(path: Union[str, os.PathLike], text: str) -> Path:
    """Write a text file (report, JSON, HTML) atomically: a unique temp file beside it, then rename."""
    path = Path(path)
    check_writable(path)
    fd, tmp = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
        with os.fdopen(fd, "w") as f:
            fd = None
            f.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise OnnxoptError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _fsync(p: Path) -> None:
    with open(p, "rb+") as f:
        os.fsync(f.fileno())


def _byte_size_ok(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001 - protobuf refuses sizes past 2 GB
        return False


def check_writable(path: Union[str, os.PathLike]) -> None:
    """Fail early, before any work, if ``path`` cannot be written."""
    path = Path(path)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OnnxoptError(f"{path}: output folder does not exist")
    if path.is_dir():
        raise OnnxoptError(f"{path}: is a folder")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OnnxoptError(f"{path}: not writable")


# --- node and tensor queries on the gs IR -------------------------------------------------------

def const_value(t: gs.Tensor) -> np.ndarray | None:
    """The value of a tensor that is an initializer or the output of a Constant node, else None."""
    if isinstance(t, gs.Constant):
        return t.values
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant" and (t.inputs[0].domain or "") in ("", "ai.onnx"):
        attrs = t.inputs[0].attrs
        if "value" in attrs and isinstance(attrs["value"], gs.Constant):
            return attrs["value"].values
        for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
            if key in attrs:
                return np.asarray(list(attrs[key]), dtype=dtype)
    return None


def const_through_identity(t: gs.Tensor) -> np.ndarray | None:
    """A constant's value, seen through Identity nodes (torchscript shares equal values that way)."""
    while (p := producer(t)) is not None and p.op == "Identity" and (p.domain or "") in ("", "ai.onnx"):
        t = p.inputs[0]
    return const_value(t)


def clip_bounds(node: gs.Node, ordered: bool = True) -> tuple[float, float] | None:
    """(min, max) of a Clip whose bounds are constant scalars (opset >= 11 inputs, seen through
    Identity nodes, or the older attributes; a missing bound is infinite), else None. With
    ``ordered`` also None where min > max (ONNX then sets every value to max: no clamp to fuse)."""
    lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    for i in (1, 2):
        if len(node.inputs) > i and node.inputs[i] is not None and node.inputs[i].name:
            v = const_through_identity(node.inputs[i])
            if v is None or v.size != 1:
                return None
            lo, hi = (float(v.reshape(())), hi) if i == 1 else (lo, float(v.reshape(())))
    if np.isnan(lo) or np.isnan(hi) or (ordered and lo > hi):
        return None
    return float(lo), float(hi)


def activation_bounds(node: gs.Node) -> tuple[float, float] | None:
    """The clamp a conv can fuse for ``node``: (0, inf) for a Relu, the bounds of a Clip with constant
    scalar bounds, else None."""
    if (node.domain or "") not in ("", "ai.onnx"):
        return None
    if node.op == "Relu":
        return 0.0, float("inf")
    return clip_bounds(node) if node.op == "Clip" else None


def fuse_activation(node: gs.Node, user: gs.Node) -> bool:
    """Fold ``user``, the one consumer of ``node``'s output, into ``node``'s ``clip_min``/``clip_max``
    attributes when it is a Relu or a Clip with constant bounds (:func:`activation_bounds`)."""
    bounds = activation_bounds(user)
    if bounds is None:
        return False
    node.attrs["clip_min"], node.attrs["clip_max"] = bounds
    absorb_consumer(node, user)
    return True


def absorb_consumer(node: gs.Node, user: gs.Node) -> None:
    """Fold ``user`` (the one consumer of ``node``'s output) into ``node``: ``node`` now produces
    ``user``'s outputs and ``user`` is detached for cleanup to remove."""
    node.outputs = list(user.outputs)
    user.outputs.clear()
    user.inputs.clear()


def producer(t: gs.Tensor) -> gs.Node | None:
    """The node producing ``t`` (None for graph inputs and initializers)."""
    return t.inputs[0] if len(t.inputs) == 1 else None


def consumers(t: gs.Tensor) -> list[gs.Node]:
    return list(t.outputs)


def is_graph_output(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(o is t for o in graph.outputs)


def only_consumer(graph: gs.Graph, t: gs.Tensor) -> gs.Node | None:
    """The one node reading ``t`` (once), when nothing else reads it and it is not a graph output."""
    users = consumers(t)
    return users[0] if len(users) == 1 and not is_graph_output(graph, t) else None


def nodes_of(graph: gs.Graph, *ops: str, domain: str = "") -> Iterable[gs.Node]:
    """Nodes of the given op types (standard domain unless ``domain`` says otherwise)."""
    doms = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
    return (n for n in graph.nodes if n.op in ops and (n.domain or "") in doms)


def replace_tensor(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph) -> None:
    """Point every consumer of ``old`` (and any graph output naming it) at ``new``."""
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    for i, t in enumerate(graph.outputs):
        if t is old:
            graph.outputs[i] = new
