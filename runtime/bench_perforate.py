"""Perforated convolutions against onnxruntime's dense Conv, one thread.

    python -m onnxopt.runtime.bench_perforate [--runs 40] [--skip-vgg] [--budgets 0.2,0.5]

1. One layer, 3x3 conv 256->256 at 56x56 (batch 1): onnxruntime's Conv (MLAS) against
   PerforatedConv (our kernel) at several rates and masks, the strided-Conv realisation of the
   25% grid (a lattice: Conv stride 2 + two Gathers), and a bare stride-2 Conv (the same 25% of
   positions, no fill) for reference. All sessions run round-robin in one loop, the order rotating
   every round; each variant's speed-up is the median over rounds of dense time / its time in the
   same round, so drift on a noisy machine cancels. Inputs and outputs are bound once (IOBinding),
   so no variant pays for copying its result into a new numpy array.
2. A VGG-16-style net (width 0.5, 112x112, random weights) perforated by the perforate pass to
   output-deviation budgets on random calibration inputs (greedy selection, grid masks), and its
   whole-network speed-up measured with interleaved pairs (``bench_pair``, target mobile-cpu).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import library_path, session
from .functions import perforated_conv_model

C, HW = 256, 56


def conv_model(weight, bias, stride=1) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                            strides=[stride, stride])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, C, HW, HW])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(weight, "W"), onnx.numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def strided_grid_model(weight, bias, rate=0.25, seed=0) -> onnx.ModelProto:
    """The perforate pass's strided realisation of a lattice grid mask, on a one-conv graph."""
    import onnx_graphsurgeon as gs

    from onnxopt.passes.perforate import Layer, _Perforator

    layer = Layer("conv", [1, C, HW, HW], list(weight.shape), (HW, HW), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    perf = _Perforator.__new__(_Perforator)
    perf.strategy, perf.realisation, perf.seed, perf._choice = "grid", "strided", seed, {}
    assert perf.strided_plan(layer, rate) is not None, "the grid is not a lattice at this rate"
    x = gs.Variable("X", np.float32, [1, C, HW, HW])
    y = gs.Variable("Y", np.float32)
    node = gs.Node("Conv", "conv", layer.attrs(), [x, gs.Constant("W", weight), gs.Constant("B", bias)], [y])
    g = gs.Graph([node], [x], [y], opset=17)
    perf.rewrite(g, layer, rate)
    model = gs.export_onnx(g.cleanup().toposort(), do_type_check=False)
    model.ir_version = 8
    return model


def perforated(weight, bias, strategy, rate, seed=0) -> tuple[onnx.ModelProto, int]:
    from onnxopt.passes._perforation import make_mask

    positions, fill = make_mask(strategy, HW, HW, rate, seed)
    return perforated_conv_model((1, C, HW, HW), weight, bias, positions, fill, pads=(1, 1, 1, 1)), len(positions)


def layer_table(runs: int) -> None:
    from onnxopt.ir import fit_ir_version

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((C, C, 3, 3)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32)
    x = rng.standard_normal((1, C, HW, HW)).astype(np.float32)
    variants: list[tuple[str, onnx.ModelProto, float]] = [("Conv (onnxruntime, dense)", conv_model(weight, bias), 1.0)]
    for strategy, rate in (("grid", 0.25), ("uniform", 0.25), ("grid", 0.5), ("uniform", 0.5), ("uniform", 0.75)):
        model, kept = perforated(weight, bias, strategy, rate)
        variants.append((f"PerforatedConv {strategy} {rate:.0%}", model, kept / HW / HW))
    variants.append(("grid 25% as strided Conv + Gathers", strided_grid_model(weight, bias), 0.25))
    variants.append(("Conv stride 2 (reference, no fill)", conv_model(weight, bias, 2), 0.25))
    import onnxruntime as ort

    sessions = [session(fit_ir_version(m), threads=1, spinning=False) for _, m, _ in variants]
    # Inputs and outputs bound once (IOBinding): a run then costs the graph, not the copy of a
    # 3.2 MB result into a fresh numpy array (which would add the same ~0.3 ms to every variant).
    x_value = ort.OrtValue.ortvalue_from_numpy(x)
    bindings = []
    for s in sessions:
        b = s.io_binding()
        b.bind_ortvalue_input("X", x_value)
        s.run(None, {"X": x})
        shape = s.run(None, {"X": x})[0].shape
        b.bind_ortvalue_output(s.get_outputs()[0].name,
                               ort.OrtValue.ortvalue_from_numpy(np.empty(shape, np.float32)))
        bindings.append(b)
    for s, b in zip(sessions, bindings):
        for _ in range(3):
            s.run_with_iobinding(b)
    times = np.zeros((runs, len(sessions)))
    for r in range(runs):
        order = np.roll(np.arange(len(sessions)), r)
        for i in order:
            t0 = time.perf_counter()
            sessions[i].run_with_iobinding(bindings[i])
            times[r, i] = time.perf_counter() - t0
    speedup = times[:, :1] / times
    flops = 2.0 * C * C * 9 * HW * HW
    print(f"3x3 conv {C}->{C} at {HW}x{HW}, batch 1, 1 thread, {runs} rounds (round-robin, rotating order); "
          "speed-up = median over rounds of dense/variant")
    print(f"{'variant':38}{'kept':>6}{'median ms':>11}{'speed-up':>10}{'p10':>7}{'p90':>7}{'dense-eq GFLOP/s':>18}")
    for i, (name, _, kept) in enumerate(variants):
        med = float(np.median(times[:, i]))
        print(f"{name:38}{kept:>6.0%}{med * 1e3:>11.2f}{np.median(speedup[:, i]):>9.2f}x"
              f"{np.percentile(speedup[:, i], 10):>7.2f}{np.percentile(speedup[:, i], 90):>7.2f}"
              f"{flops * kept / med / 1e9:>18.1f}")


def vgg_table(runs: int, budget: float, strategy: str, width: float, size: int) -> None:
    import onnxopt
    from onnxopt.models.export import export_onnx
    from onnxopt.models.vgg import vgg16
    from onnxopt.passes.perforate import format_layers
    from onnxopt.runtime.latency import bench_pair
    from onnxopt.runtime.targets import load_target

    import torch

    net = vgg16(num_classes=100, width=width, pool_size=1, hidden=256)
    model = export_onnx(net, torch.zeros(1, 3, size, size), dynamic_batch=False)
    calib = {"input": np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)}
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # layer times measured afresh, not from the user's cache
        out, report = onnxopt.apply(model, passes=["perforate"], calibration=calib, verify=False,
                                    options={"perforate": {"budget_deviation": budget, "strategy": strategy,
                                                           "lut_runs": 10, "lut_path": f"{tmp}/lut.json"}})
    res = report.passes[0]
    search = time.perf_counter() - t0
    print(f"\nVGG-16-style net (width {width}, {size}x{size}, random weights), perforated to output deviation "
          f"<= {budget} on 8 random calibration inputs ({strategy} masks, greedy; search {search:.0f} s)")
    print(f"perforate: {res.skipped or res.summary}")
    print(format_layers(res.details.get("layers", [])))
    target = load_target("mobile-cpu")
    cmp = bench_pair(model, out, target, feeds={"input": calib["input"][:1]}, runs=runs)
    print(f"whole network on {target.describe()}: dense {cmp.a.median_ms:.2f} ms, perforated {cmp.b.median_ms:.2f} ms, "
          f"speed-up {cmp.speedup:.2f}x (median of {runs} interleaved pairs; p10-p90 of ratio "
          f"{1 / cmp.ratio_p90:.2f}-{1 / cmp.ratio_p10:.2f}x); MACs {report.before.macs / 1e9:.2f}G -> "
          f"{report.after.macs / 1e9:.2f}G")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--skip-vgg", action="store_true")
    ap.add_argument("--budgets", default="0.2,0.5", help="VGG output-deviation budgets (comma-separated)")
    ap.add_argument("--strategy", default="grid")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=112)
    args = ap.parse_args(argv)
    if library_path() is None:
        print("no native library (onnxopt.runtime.library_path() is None): nothing to benchmark")
        return 1
    from .latency import environment

    env = environment()
    print(f"cpu {env['cpu']} ({env['cores']} cores), onnxruntime {env['onnxruntime']}")
    layer_table(args.runs)
    if not args.skip_vgg:
        for budget in (float(b) for b in args.budgets.split(",")):
            vgg_table(args.runs, budget, args.strategy, args.width, args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
