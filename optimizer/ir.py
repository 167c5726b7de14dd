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


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _check_model(model: onnx.ModelProto, name: str) -> None:
    if not model.HasField("graph") or model.ir_version <= 0:
        raise OnnxoptError(f"{name}: not an ONNX model (no graph or IR version)")
    if not model.opset_import:
        raise OnnxoptError(f"{name}: model declares no opset")
    if len(model.graph.output) == 0:
        raise OnnxoptError(f"{name}: graph has no outputs")


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


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference with data propagation; on failure the model is returned unchanged."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - inference is best effort
        log.debug("shape inference failed: %s", e)
        return model


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import a model into onnx-graphsurgeon, with shapes inferred."""
    try:
        return gs.import_onnx(infer_shapes(model))
    except Exception as e:  # noqa: BLE001 - malformed graphs fail in many ways inside the importer
        raise OnnxoptError(f"cannot import graph: {_first_line(e)}") from None


def to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph, keeping the original model's opsets, metadata and producer; IR fitted to the runtime."""
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
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
    try:
        tmp = tmpdir / path.name
        if large:
            data = path.name + ".data"
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
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
        shutil.rmtree(tmpdir, ignore_errors=True)
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


def producer(t: gs.Tensor) -> gs.Node | None:
    """The node producing ``t`` (None for graph inputs and initializers)."""
    return t.inputs[0] if len(t.inputs) == 1 else None


def consumers(t: gs.Tensor) -> list[gs.Node]:
    return list(t.outputs)


def is_graph_output(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(o is t for o in graph.outputs)


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
