"""Benchmark of the strip pass on one pinned thread (``python -m onnxopt.runtime.bench_strip [--quick]``).

For each case, in one run: the sparsity-trained export (channels zeroed the way SSL leaves them,
:mod:`onnxopt.models.prune`), our stripped model (``onnxopt.apply(passes=["strip"])``), the same
network built narrow with :mod:`onnxopt.models`, and onnx-simplifier's ``apply_structured_pruning``
(uniform 50% L2 filter pruning) of the zeroed export. Sessions are made for the ``mobile-cpu``
target (:data:`onnxopt.runtime.targets.BUILTIN`: CPU EP, one thread pinned to one core, spinning
off, all graph optimisations). After warm-up the four models run in interleaved rounds (every
round runs each model once; the order rotates and alternates direction, so slow drift on a noisy
machine hits all of them alike); ``ms`` columns are medians over rounds and ``strip/narrow`` is the
median over rounds of the per-round ratio (target <= 1.05), with its 10th/90th percentiles. Errors
are max |diff| / max |reference| against the zeroed original on one random input (target <= 1e-5).
``shapes`` says whether the stripped and narrow nets have the same Conv/Gemm weight shapes.
onnxsim cuts 50% of every producer/consumer chain it matches by L2 norm, live channels included
(the VGG classifier, convs nobody zeroed, coupled streams it ranks differently), so its error is
large wherever it cuts more than the zeroed channels. Options: ``--rounds N``, ``--size S``,
``--only 1,3`` (case numbers).

Cases (224x224; ``--quick``: 64x64 and fewer rounds, a smoke run):

1. ResNet-50 with half of every bottleneck's inner channels zeroed (``zero_bottleneck_inner``)
   vs ``resnet50(inner_width=0.5)``.
2. VGG-16 (BN) with half the channels of every conv but the last zeroed (``zero_vgg``) vs
   ``vgg16(cfg=...)`` with those convs built at half width (the last conv stays 512, so the
   classifier is unchanged). The head is the real one (7x7 pool, two 4096-unit FCs, 138M params,
   ~550 MB a model); ``--quick`` uses a 1x1 pool and 512 hidden units (64x64 inputs leave a 2x2
   map, which the exporter cannot pool adaptively to 7x7).
3. MobileNetV2 with half of every expansion zeroed (``zero_mobilenet_expansion``, expansion only:
   the depthwise conv after it then emits a per-channel constant the projection absorbs) vs
   ``mobilenetv2(expand_ratio=3)``.
4. ResNet-50 with half of each stage's residual stream zeroed, coupled across every producer of
   the stage's sums (``zero_residual_stage`` on stages 1-4), plus half of the stem's channels
   (independent: the stem only feeds layer1's first conv and its downsample) vs
   ``resnet50(width=32, inner_width=2.0)``: width 32 halves the stem and every stream (planes 32,
   64, 128, 256 -> streams 128..1024), inner_width 2.0 keeps the inner widths at ResNet-50's 64..512.
   The stem is zeroed too because ``width`` sets stem and streams together; with it the stripped
   net has exactly the narrow net's shapes.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from .latency import LatencyStats, environment, make_session, pinned
from .targets import BUILTIN, Target

FRACTION = 0.5
KEYS = ("zeroed", "strip", "narrow", "onnxsim")


@dataclass
class Row:
    label: str
    ms: dict[str, float]
    ratio: float
    ratio_p10: float
    ratio_p90: float
    err: float
    sim_err: float
    shapes_match: bool
    notes: list[str]


# --- cases: (zeroed net, narrow net), both built by onnxopt.models -----------------------------------

def resnet_inner_case(quick: bool):
    from onnxopt.models import resnet50, zero_bottleneck_inner

    zeroed = resnet50()
    zero_bottleneck_inner(zeroed, FRACTION, seed=1)
    return zeroed, resnet50(inner_width=FRACTION)


def vgg_case(quick: bool):
    from onnxopt.models import vgg16, zero_vgg
    from onnxopt.models.vgg import VGG16_CFG

    head = dict(pool_size=1, hidden=512) if quick else dict(pool_size=7, hidden=4096)
    last = max(i for i, v in enumerate(VGG16_CFG) if v != "M")
    narrow_cfg = [v if v == "M" or i == last else int(round(int(v) * (1 - FRACTION))) for i, v in enumerate(VGG16_CFG)]
    zeroed = vgg16(**head)
    zero_vgg(zeroed, FRACTION, seed=2)
    return zeroed, vgg16(cfg=narrow_cfg, **head)


def mobilenet_case(quick: bool):
    from onnxopt.models import mobilenetv2, zero_mobilenet_expansion

    zeroed = mobilenetv2()
    zero_mobilenet_expansion(zeroed, FRACTION, seed=3)
    return zeroed, mobilenetv2(expand_ratio=6 * (1 - FRACTION))


def resnet_stream_case(quick: bool):
    import torch

    from onnxopt.models import pick_channels, resnet50, zero_channels, zero_residual_stage

    zeroed = resnet50()
    for stage in (1, 2, 3, 4):
        zero_residual_stage(zeroed, stage, FRACTION, seed=10 + stage)
    zero_channels(zeroed.conv1, zeroed.bn1,
                  pick_channels(zeroed.conv1.out_channels, FRACTION, torch.Generator().manual_seed(4)))
    return zeroed, resnet50(width=32, inner_width=2.0)


CASES: list[tuple[str, Callable]] = [
    ("ResNet-50 inner 1/2 zeroed", resnet_inner_case),
    ("VGG-16 convs 1/2 zeroed", vgg_case),
    ("MobileNetV2 expansion 1/2", mobilenet_case),
    ("ResNet-50 streams 1/2 (coupled)", resnet_stream_case),
]


# --- measurement -------------------------------------------------------------------------------------

def rel_err(ref: np.ndarray, got: np.ndarray | None) -> float:
    if got is None or got.shape != ref.shape:
        return float("nan")
    return float(np.abs(ref.astype(np.float64) - got).max() / max(float(np.abs(ref).max()), 1e-12))


def weight_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    """Sorted shapes of every Conv/Gemm weight (the layer widths, whatever the node order)."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return sorted(inits[n.input[1]] for n in model.graph.node
                  if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in inits)


def onnxsim_prune(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str]:
    try:
        import onnxsim
    except ImportError as e:
        return None, f"onnxsim not installed ({e})"
    try:  # it resizes tensors in place: give it a copy
        return onnxsim.apply_structured_pruning(onnx.ModelProto.FromString(model.SerializeToString()),
                                                sparsity=FRACTION), ""
    except Exception as e:  # noqa: BLE001 - the peer may refuse a model; report why
        return None, f"onnxsim refused: {type(e).__name__}: {str(e).splitlines()[0][:80]}"


def interleaved(sessions: dict, feeds: dict, target: Target, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per run of each session over ``rounds`` rounds (rotating order, alternating direction)."""
    keys = list(sessions)
    times: dict[str, list[float]] = {k: [] for k in keys}
    with pinned(target):
        for _ in range(warmup):
            for k in keys:
                sessions[k].run(None, feeds)
        for r in range(rounds):
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            for k in (order if r % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                sessions[k].run(None, feeds)
                times[k].append(time.perf_counter() - t0)
    return times


def bench_case(label: str, build: Callable, size: int, quick: bool, target: Target, rounds: int,
               warmup: int) -> Row:
    import torch

    import onnxopt
    from onnxopt.models import export_onnx

    zeroed_net, narrow_net = build(quick)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    zeroed, narrow = export_onnx(zeroed_net, x), export_onnx(narrow_net, x)
    del zeroed_net, narrow_net
    feeds = {zeroed.graph.input[0].name: x.numpy()}
    stripped, report = onnxopt.apply(zeroed, passes=["strip"], inputs=feeds)
    sim, sim_note = onnxsim_prune(zeroed)
    models = {"zeroed": zeroed, "strip": stripped, "narrow": narrow}
    if sim is not None:
        models["onnxsim"] = sim
    shapes_match = weight_shapes(stripped) == weight_shapes(narrow)
    params = {k: onnxopt.cost.count_params(m) for k, m in models.items()}
    sessions = {k: make_session(m, target) for k, m in models.items()}
    del models, zeroed, stripped, narrow, sim
    outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
    times = interleaved(sessions, feeds, target, rounds, warmup)
    del sessions
    stats = {k: LatencyStats.from_seconds(v) for k, v in times.items()}
    ratios = np.asarray(times["strip"]) / np.asarray(times["narrow"])
    res = report.passes[0]
    notes = [f"strip: {res.summary} ({res.seconds:.1f} s)",
             "params (M): " + ", ".join(f"{k} {p / 1e6:.2f}" for k, p in params.items())]
    if not shapes_match:
        notes.append("stripped and narrow Conv/Gemm weight shapes DIFFER")
    if sim_note:
        notes.append(sim_note)
    return Row(label, {k: s.median_ms for k, s in stats.items()}, float(np.median(ratios)),
               float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90)),
               rel_err(outs["zeroed"], outs["strip"]), rel_err(outs["zeroed"], outs.get("onnxsim")),
               shapes_match, notes)


def _ms(v: float | None) -> str:
    return f"{v:>9.2f}" if v is not None else f"{'-':>9}"


def _err(v: float) -> str:
    return f"{v:>11.1e}" if not np.isnan(v) else f"{'-':>11}"


HEADER = (f"{'case':<33}{'zeroed':>9}{'strip':>9}{'narrow':>9}{'onnxsim':>9}{'strip/narrow':>13}"
          f"{'[p10, p90]':>16}{'shapes':>8}{'our err':>11}{'sim err':>11}")


def format_row(r: Row) -> str:
    return (f"{r.label:<33}" + "".join(_ms(r.ms.get(k)) for k in KEYS) + f"{r.ratio:>13.3f}"
            + f"{f'[{r.ratio_p10:.3f}, {r.ratio_p90:.3f}]':>16}" + f"{'same' if r.shapes_match else 'DIFF':>8}"
            + _err(r.err) + _err(r.sim_err))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64x64 inputs, a small VGG head, few rounds (smoke run)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 30, quick 15)")
    ap.add_argument("--size", type=int, default=None, help="input height and width (default 224, quick 64)")
    ap.add_argument("--only", help="comma-separated case numbers (1-4)")
    args = ap.parse_args(argv)
    logging.getLogger("onnxopt").setLevel(logging.ERROR)

    target = BUILTIN["mobile-cpu"]
    size = args.size or (64 if args.quick else 224)
    rounds = args.rounds or (15 if args.quick else 30)
    warmup = 1 if args.quick else 3
    wanted = {int(i) for i in args.only.split(",")} if args.only else None
    env = environment()
    print(f"{target.describe()}; {env['cpu']}; onnxruntime {env['onnxruntime']}")
    print(f"{size}x{size} input, {rounds} interleaved rounds after {warmup} warm-up; medians in ms; "
          f"strip/narrow = per-round ratio, median (target <= 1.05); errors = max rel err vs zeroed (target <= 1e-5)")
    print(HEADER)
    print("-" * len(HEADER), flush=True)
    rows = []
    for i, (label, build) in enumerate(CASES, 1):
        if wanted and i not in wanted:
            continue
        t0 = time.perf_counter()
        row = bench_case(f"{i}. {label}", build, size, args.quick, target, rounds, warmup)
        row.notes.append(f"case took {time.perf_counter() - t0:.0f} s")
        rows.append(row)
        print(format_row(row), flush=True)
    print()
    for r in rows:
        print(f"{r.label}: " + "; ".join(r.notes))
    missed = [r.label for r in rows if not (r.ratio <= 1.05 and r.err <= 1e-5 and r.shapes_match)]
    print("target (strip/narrow <= 1.05, our err <= 1e-5, same shapes):",
          "met" if not missed else f"MISSED: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
