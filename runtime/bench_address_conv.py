"""AddressConv (our kernel) against onnxruntime's own 1x1 Conv of the same shape, one thread.

    python -m onnxopt.runtime.bench_address_conv [--runs 200] [--threads 1]

Runs of the two sessions are interleaved (A, B, A, B, ...) so that drift on a noisy machine hits
both; the table gives each one's median and the ratio AddressConv / Conv (below 1: ours is faster).
The address table shifts every channel by one of the nine 3x3 displacements (ShiftNet's shift).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import library_path, session
from .functions import address_conv_model

# (N, Cin, Cout, H, W, stride, group)
SHAPES = [
    (1, 256, 256, 28, 28, 1, 1),
    (1, 128, 128, 56, 56, 1, 1),
    (1, 512, 512, 14, 14, 1, 1),
    (1, 256, 256, 28, 28, 2, 1),
    (1, 256, 256, 28, 28, 1, 2),
    (1, 64, 256, 56, 56, 1, 1),
    (1, 1024, 1024, 7, 7, 1, 1),
]


def conv_model(n, cin, h, w, weight, bias, stride, group) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=[1, 1], strides=[stride, stride],
                            group=group)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n, cin, h, w])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(weight, "W"), onnx.numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def shift_address(cin: int) -> np.ndarray:
    d = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.array([(k, *d[k * 9 // cin]) for k in range(cin)], np.int32)


def bench_shape(n, cin, cout, h, w, stride, group, runs, threads):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((cout, cin // group, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    ours = session(address_conv_model(x.shape, weight, bias, shift_address(cin), group, (stride, stride)),
                   threads=threads)
    theirs = session(conv_model(n, cin, h, w, weight, bias, stride, group), threads=threads)
    feed = {"X": x}
    for _ in range(10):
        ours.run(None, feed)
        theirs.run(None, feed)
    t_ours, t_theirs = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        ours.run(None, feed)
        t1 = time.perf_counter()
        theirs.run(None, feed)
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_theirs.append(t2 - t1)
    ho, wo = -(-h // stride), -(-w // stride)
    flops = 2.0 * n * cout * (cin // group) * ho * wo
    return float(np.median(t_ours)), float(np.median(t_theirs)), flops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if library_path() is None:
        print("no native library (onnxopt.runtime.library_path() is None): nothing to benchmark")
        return 1
    print(f"threads={args.threads} runs={args.runs} (interleaved, medians)")
    print(f"{'N Cin->Cout HxW s g':<28}{'AddressConv ms':>15}{'GFLOP/s':>9}{'Conv ms':>10}{'GFLOP/s':>9}{'ratio':>7}")
    for shape in SHAPES:
        n, cin, cout, h, w, stride, group = shape
        ours, theirs, flops = bench_shape(*shape, args.runs, args.threads)
        label = f"{n} {cin}->{cout} {h}x{w} s{stride} g{group}"
        print(f"{label:<28}{ours * 1e3:>15.3f}{flops / ours / 1e9:>9.1f}{theirs * 1e3:>10.3f}"
              f"{flops / theirs / 1e9:>9.1f}{ours / theirs:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
