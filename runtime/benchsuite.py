"""The benchmark suite: every performance target named in the issues, printed in one run.

    python -m onnxopt.runtime.benchsuite [--quick] [--only NAME,...] [--out BENCHMARKS.txt]

Each section is a benchmark module of its own (``onnxopt.runtime.bench_*``) with a ``main(argv)``
that builds its cases from ``onnxopt.models``, measures them on one pinned thread with A/B runs
interleaved pair by pair, and prints ratios with the baseline beside them. The suite prints the
machine, thread count and versions first, then each section; a section whose module or optional
peer is missing says so and the suite goes on. BENCHMARKS.md records its output.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import sys
import time

from .latency import environment

#: (name, module, what it checks, argv, argv for --quick)
SECTIONS = [
    ("fold", "bench_fold", "node counts after fold vs onnxslim, max rel error", [], ["--quick"]),
    ("strip", "bench_strip", "stripped zeroed nets vs the same nets built narrow, onnxsim beside", [], ["--quick"]),
    ("address_conv", "bench_address_conv", "AddressConv vs onnxruntime's 1x1 Conv", [], ["--runs", "50"]),
    ("shift", "bench_shift", "ShiftNet and ShuffleNetV2 before/after apply", [], ["--quick"]),
    ("perforate", "bench_perforate", "PerforatedConv vs Conv at several rates; perforated VGG-16", [], ["--quick"]),
    ("cuda", "bench_cuda", "whole nets before/after apply --target cuda, fp32 and TF32 (needs a GPU and the "
     "CUDA build; says why not otherwise)", ["--nets"], ["--nets", "--runs", "20", "--batches", "1"]),
]


def header() -> str:
    env = environment()
    return "\n".join([
        f"onnxopt benchmark suite, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"machine: {env['machine']}, {env['cores']} cores, CPU {env['cpu']}",
        f"versions: python {env['python']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, numpy {env['numpy']}",
        "latency: 1 pinned thread (mobile-cpu) unless a section says otherwise; A/B interleaved pair by pair; "
        "medians; ratio < 1 means the first-named is faster",
    ])


def run_section(module: str, argv: list[str]) -> str:
    """Run one benchmark module's main(argv), returning what it printed."""
    try:
        mod = importlib.import_module(f"onnxopt.runtime.{module}")
    except ImportError as e:
        return f"(not available: {e})\n"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            mod.main(argv)
        except SystemExit as e:
            if e.code not in (0, None):
                print(f"(section exited with {e.code})")
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
            print(f"(section failed: {type(e).__name__}: {e})")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes and few runs (a smoke test)")
    ap.add_argument("--only", help="comma-separated section names")
    ap.add_argument("--out", help="also write the output to this file")
    args = ap.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    chunks = [header()]
    print(chunks[0], flush=True)
    for name, module, what, full_argv, quick_argv in SECTIONS:
        if wanted and name not in wanted:
            continue
        t0 = time.perf_counter()
        title = f"\n== {name}: {what} =="
        print(title, flush=True)
        text = run_section(module, quick_argv if args.quick else full_argv)
        text += f"({time.perf_counter() - t0:.0f} s)\n"
        print(text, end="", flush=True)
        chunks += [title, text]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(chunks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
