"""The ONNX backend node-test suite through `apply`: every case onnxruntime runs must survive unchanged.

Data: Debian's ``libonnx-testdata`` package (``/usr/share/libonnx-testdata/data/node``, ~930 cases:
a model, inputs and expected outputs each), or the folder named by ``ONNX_NODE_TESTDATA``. Each
case runs through ``onnxopt.apply`` with every exact pass, verified on the case's own inputs, and
the optimised model's outputs must match the expected ones with the backend suite's tolerance.
Cases onnxruntime itself cannot run (or runs wrongly) are skipped with the reason.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxopt
import onnxopt.ir
from onnxopt.errors import OnnxoptError

ROOT = Path(os.environ.get("ONNX_NODE_TESTDATA", "/usr/share/libonnx-testdata/data/node"))
CASES = sorted(p.name for p in ROOT.iterdir() if (p / "model.onnx").is_file()) if ROOT.is_dir() else []
RTOL, ATOL = 1e-3, 1e-7  # onnx's backend test defaults

pytestmark = pytest.mark.slow


def _read(pattern: str) -> list[np.ndarray] | None:
    arrays = []
    for path in sorted(glob.glob(pattern), key=lambda p: int(Path(p).stem.split("_")[-1])):
        t = onnx.TensorProto()
        try:
            t.ParseFromString(Path(path).read_bytes())
            if not t.name and not t.dims and not t.data_type:
                return None  # a sequence or optional, not a tensor
            arrays.append(numpy_helper.to_array(t))
        except Exception:  # noqa: BLE001 - non-tensor protos fail to convert
            return None
    return arrays


def _close(expected: list[np.ndarray], got: list) -> bool:
    if len(expected) != len(got):
        return False
    for e, g in zip(expected, got):
        g = np.asarray(g)
        if e.shape != g.shape:
            return False
        if e.dtype.kind in "fc":
            if not np.allclose(e, g, rtol=RTOL, atol=ATOL, equal_nan=True):
                return False
        elif not np.array_equal(e, g):
            return False
    return True


@pytest.mark.skipif(not CASES, reason=f"no ONNX node test data at {ROOT} (Debian package libonnx-testdata)")
@pytest.mark.parametrize("case", CASES)
def test_node_case_survives_apply(case):
    from onnxopt.runtime import session

    folder = ROOT / case
    model = onnx.load(folder / "model.onnx")
    data = folder / "test_data_set_0"
    inputs, expected = _read(str(data / "input_*.pb")), _read(str(data / "output_*.pb"))
    if inputs is None or expected is None:
        pytest.skip("sequence/optional inputs or outputs")
    names = [vi.name for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}]
    feeds = dict(zip(names, inputs))
    onnxopt.ir.fit_ir_version(model)
    try:
        reference = session(model).run(None, feeds)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"onnxruntime cannot run it: {' '.join(str(e).split())[:120]}")
    if not _close(expected, reference):
        pytest.skip("onnxruntime's own result differs from the expected outputs")
    try:
        optimised, report = onnxopt.apply(model, inputs=feeds, rtol=RTOL, atol=ATOL)
    except OnnxoptError as e:
        pytest.fail(f"apply refused a model onnxruntime runs: {e}")
    got = session(optimised).run(None, feeds)
    assert _close(expected, got), f"outputs changed; passes: {[p.summary or p.skipped for p in report.passes]}"
