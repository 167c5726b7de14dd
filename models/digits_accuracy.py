"""Accuracy vs speed of perforation on real data: the digits CNN (``onnxopt.models.digits``).

    python -m onnxopt.models.digits_accuracy [--runs 30] [--rates 0.75,0.5,0.25] [--quick]

Trains the CNN (seeded, a few seconds to a minute on one core), exports it, then perforates every
eligible conv (conv1..conv3, all 3x3) with each strategy at each rate, plus the greedy selection
under a 1% accuracy-drop budget, and prints a Markdown table: test accuracy (600 held-out images)
and the speed-up of the whole network over the unperforated one on the mobile-cpu target (one
pinned thread; interleaved pairs, median of per-pair ratios) at batch 1 and at batch 64.
Calibration data for the impact strategy and for the greedy search are 300 *training* images
(the test images are used only for the accuracy column).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="interleaved pairs per speed measurement")
    ap.add_argument("--rates", default="0.75,0.5,0.25")
    ap.add_argument("--strategies", default="grid,uniform,pooling,impact")
    ap.add_argument("--quick", action="store_true", help="fewer epochs and runs (a smoke test)")
    args = ap.parse_args(argv)

    import onnxopt
    from onnxopt.runtime import library_path, session
    from onnxopt.runtime.latency import bench_pair, environment
    from onnxopt.runtime.targets import load_target

    from . import digits

    t0 = time.perf_counter()
    net, torch_acc = digits.train(epochs=3 if args.quick else 10)
    model = digits.export(net)
    x_train, y_train, x_test, y_test = digits.load_data()
    calib, calib_labels = {"input": x_train[-300:]}, y_train[-300:]
    runs = 5 if args.quick else args.runs
    target = load_target("mobile-cpu")
    env = environment()
    print(f"digits CNN trained in {time.perf_counter() - t0:.0f} s, test accuracy {torch_acc:.2%} (PyTorch); "
          f"cpu {env['cpu']}, onnxruntime {env['onnxruntime']}, native library: "
          f"{'yes' if library_path() else 'no'}; speed on {target.describe()}, {runs} interleaved pairs")

    def accuracy(m) -> float:
        return float((session(m).run(None, {"input": x_test})[0].argmax(1) == y_test).mean())

    def speed(m) -> tuple[float, float]:
        one = bench_pair(model, m, target, feeds={"input": x_test[:1]}, runs=runs).speedup
        many = bench_pair(model, m, target, feeds={"input": x_test[:64]}, runs=max(5, runs // 3)).speedup
        return one, many

    base_acc = accuracy(model)
    rows = [("none", "1.0 (dense)", base_acc, 1.0, 1.0, "")]
    for strategy in args.strategies.split(","):
        for rate in (float(r) for r in args.rates.split(",")):
            opts = {"strategy": strategy, "rate": rate, "measure_time": False}
            out, report = onnxopt.apply(model, passes=["perforate"], options={"perforate": opts},
                                        calibration=calib, labels=calib_labels, verify=False)
            res = report.passes[0]
            if res.skipped:
                print(f"{strategy} {rate}: skipped: {res.skipped}")
                continue
            kept = ", ".join(f"{r['kept_fraction']:.2f}" for r in res.details["layers"])
            how = "/".join(sorted({r["realisation"] for r in res.details["layers"]}))
            rows.append((strategy, f"{rate:g} (kept {kept})", accuracy(out), *speed(out), how))
    for strategy in ("grid", "impact"):
        opts = {"strategy": strategy, "budget_accuracy_drop": 0.01, "lut_runs": 10}
        out, report = onnxopt.apply(model, passes=["perforate"], options={"perforate": opts},
                                    calibration=calib, labels=calib_labels, verify=False)
        res = report.passes[0]
        chosen = ", ".join(f"{r['layer']}={r['rate']:g}" for r in res.details.get("layers", [])) or "none"
        how = "/".join(sorted({r["realisation"] for r in res.details.get("layers", [])}))
        rows.append((f"{strategy}, greedy", f"budget 1% drop: {chosen}", accuracy(out), *speed(out), how))

    print()
    print("| strategy | rate per conv | test accuracy | speed-up batch 1 | speed-up batch 64 | realisation |")
    print("|---|---|---:|---:|---:|---|")
    for strategy, rate, acc, one, many, how in rows:
        print(f"| {strategy} | {rate} | {acc:.2%} | {one:.2f}x | {many:.2f}x | {how} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
