"""onnxopt's runtime side: the custom-op library, onnxruntime sessions that know it, latency profiling.

:func:`library_path` says where the compiled custom-op library is (None when the package was
installed without it); :func:`session` builds an onnxruntime session with the library registered
when it exists, so models that use ``ai.onnxopt`` ops run on our kernels, and otherwise on the
ONNX functions embedded in the model.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence, Union

import onnx

_LIB_NAMES = ("libonnxopt_ops.so", "libonnxopt_ops.dylib", "onnxopt_ops.dll")


def library_path() -> Path | None:
    """Path of the compiled custom-op library, or None if this install has none.

    ``ONNXOPT_OPS_LIBRARY`` overrides the search (for a library built outside the package).
    """
    env = os.environ.get("ONNXOPT_OPS_LIBRARY")
    if env:
        return Path(env) if Path(env).is_file() else None
    here = Path(__file__).resolve().parent
    for name in _LIB_NAMES:
        if (here / name).is_file():
            return here / name
    return None


def ops_info() -> dict[str, str]:
    """The library's self-description (``onnxopt_ops_info``) as a dict, e.g. ``{"domain": "ai.onnxopt",
    "version": "1", "ops": "AddressConv", "gemm": "avx512f", "cuda": "off"}``; empty without a library."""
    lib = library_path()
    if lib is None:
        return {}
    import ctypes

    fn = ctypes.CDLL(str(lib)).onnxopt_ops_info
    fn.restype = ctypes.c_char_p
    return dict(kv.split("=", 1) for kv in fn().decode().split(";"))


def cuda_enabled() -> bool:
    """Whether the library was built with its CUDA kernels (``ONNXOPT_CUDA=1``). Says nothing about
    whether a GPU or onnxruntime's CUDAExecutionProvider is there."""
    return ops_info().get("cuda") == "on"


def session_options(threads: int | None = None, opt_level: str = "all", custom_ops: bool = True,
                    spinning: bool | None = None, profile_prefix: str | None = None):
    """onnxruntime SessionOptions with our library registered (when present and ``custom_ops``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    so.log_severity_level = 4  # failures reach the caller as exceptions; no log lines on stderr
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    lib = library_path() if custom_ops else None
    if lib is not None:
        so.register_custom_ops_library(str(lib))
    return so


def session(model: Union[onnx.ModelProto, bytes, str, os.PathLike], providers: Sequence[str] | None = None,
            **options):
    """An onnxruntime InferenceSession for ``model`` (proto, serialized bytes or path)."""
    import onnxruntime as ort

    tmp = None
    if isinstance(model, onnx.ModelProto):
        if _serializable(model):
            model = model.SerializeToString()
        else:  # past protobuf's 2 GB: onnxruntime reads it from a file with external data
            tmp = tempfile.TemporaryDirectory(prefix="onnxopt-session-")
            path = os.path.join(tmp.name, "model.onnx")
            big = onnx.ModelProto()
            big.CopyFrom(model)
            onnx.save_model(big, path, save_as_external_data=True, location="model.onnx.data")
            model = path
    elif isinstance(model, os.PathLike):
        model = str(model)
    ort.set_default_logger_severity(4)
    sess = ort.InferenceSession(model, sess_options=session_options(**options),
                                providers=list(providers or ["CPUExecutionProvider"]))
    if tmp is not None:
        sess._onnxopt_tmp = tmp  # the external data lives as long as the session
    return sess


#: protobuf refuses to serialize messages of 2 GB or more.
_PROTOBUF_LIMIT = (1 << 31) - 1


def _serializable(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() < _PROTOBUF_LIMIT
    except Exception:  # noqa: BLE001 - some protobuf builds raise on oversized messages
        return False
