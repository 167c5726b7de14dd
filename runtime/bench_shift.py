"""Benchmark of the shift pass on one pinned thread (``python -m onnxopt.runtime.bench_shift``).

Three comparisons, each measured in interleaved pairs (:func:`onnxopt.runtime.latency.bench_pair`) on
the ``mobile-cpu`` target, so the ratios printed side by side come from the same run:

* AddressConv (a ShiftNet address table) against onnxruntime's own 1x1 Conv of the same shape;
* a ShiftNet (1x1 → one-hot depthwise → 1x1 blocks) after ``apply`` against the original and
  against the same net built with ``with_shift=False`` (the shifts deleted);
* ShuffleNetV2 1.0x at 224x224 after ``apply`` against the original.

A ratio is time(B) / time(A), the median over pairs; below 1 means B is faster.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import library_path
from .functions import address_conv_model
from .latency import bench_pair, environment
from .targets import BUILTIN


def conv1x1_model(x_shape, weight, bias, strides=(1, 1), opset: int = 17) -> onnx.ModelProto:
    n, c, h, w = x_shape
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=[1, 1], strides=list(strides))
    graph = helper.make_graph([node], "conv1x1", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n, c, h, w])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _row(label: str, a_ms: float, b_ms: float, ratio: float, p10: float, p90: float) -> str:
    return f"{label:<52}{a_ms:>10.3f}{b_ms:>10.3f}{ratio:>9.3f}  [{p10:.3f}, {p90:.3f}]"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="fewer runs and no ShuffleNetV2 at 224")
    args = parser.parse_args(argv)
    logging.getLogger("onnxopt").setLevel(logging.ERROR)

    import torch

    import onnxopt
    from onnxopt.models import export_onnx, shiftnet, shufflenetv2
    from onnxopt.models.shiftnet import shift_offsets

    target = BUILTIN["mobile-cpu"]
    runs = 30 if args.quick else args.runs
    env = environment()
    print(f"{target.describe()}; {env['cpu']}; onnxruntime {env['onnxruntime']}; "
          f"custom-op library: {library_path() or 'absent (ONNX-function fallback)'}")
    print(f"{'comparison (A vs B)':<52}{'A ms':>10}{'B ms':>10}{'B/A':>9}  [p10, p90]")

    rng = np.random.default_rng(0)
    for c, cout, hw, stride in ((96, 96, 32, 1), (192, 64, 56, 1), (144, 144, 28, 2)):
        w = rng.standard_normal((cout, c, 1, 1)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        address = np.array([(k, ky - 1, kx - 1) for k, (ky, kx) in enumerate(shift_offsets(c))], np.int32)
        shape = (1, c, hw, hw)
        cmp = bench_pair(conv1x1_model(shape, w, b, (stride, stride)),
                         address_conv_model(shape, w, b, address, strides=(stride, stride)), target, runs=runs * 2)
        print(_row(f"1x1 Conv vs AddressConv {c}->{cout} @{hw} s{stride}", cmp.a.median_ms, cmp.b.median_ms,
                   cmp.ratio, cmp.ratio_p10, cmp.ratio_p90))

    for width, size in ((32, 32), (64, 56)):
        x = torch.randn(1, 3, size, size)
        original = export_onnx(shiftnet(width=width), x)
        no_shift = export_onnx(shiftnet(width=width, with_shift=False), x)
        applied, _ = onnxopt.apply(original, passes=["shift"])
        label = f"ShiftNet w{width} @{size}"
        for name, a, b in (("original vs applied", original, applied), ("no-shift vs applied", no_shift, applied),
                           ("original vs no-shift", original, no_shift)):
            cmp = bench_pair(a, b, target, runs=runs)
            print(_row(f"{label}: {name}", cmp.a.median_ms, cmp.b.median_ms, cmp.ratio, cmp.ratio_p10,
                       cmp.ratio_p90))

    sizes = ((0.5, 64),) if args.quick else ((1.0, 224),)
    for width, size in sizes:
        original = export_onnx(shufflenetv2(width=width), torch.randn(1, 3, size, size))
        applied, _ = onnxopt.apply(original, passes=["shift"])
        cmp = bench_pair(original, applied, target, runs=max(runs // 2, 20))
        print(_row(f"ShuffleNetV2 {width}x @{size}: original vs applied", cmp.a.median_ms, cmp.b.median_ms,
                   cmp.ratio, cmp.ratio_p10, cmp.ratio_p90))


if __name__ == "__main__":
    main()
