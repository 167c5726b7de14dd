"""Per-node and per-op-type time from onnxruntime's profiler, before/after tables and an HTML report.

onnxruntime's profiler writes one JSON event per kernel run (``cat == "Node"``, name
``<node>_kernel_time``, ``args.op_name``, ``dur`` in microseconds). We run the model ``runs``
times after warm-up, keep the kernel events of the measured runs, and take each node's median.
Nodes that onnxruntime fused away do not appear; fused kernels appear under their new names.
"""
from __future__ import annotations

import html
import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .latency import _feeds_for, make_session, pinned, run_once
from .targets import Target


@dataclass
class NodeTime:
    name: str
    op: str
    provider: str
    median_us: float
    calls: int


@dataclass
class Profile:
    nodes: list[NodeTime] = field(default_factory=list)

    @property
    def total_us(self) -> float:
        return sum(n.median_us for n in self.nodes)

    def by_op(self) -> dict[str, float]:
        ops: dict[str, float] = defaultdict(float)
        for n in self.nodes:
            ops[n.op] += n.median_us
        return dict(sorted(ops.items(), key=lambda kv: -kv[1]))

    def to_json(self) -> dict:
        return {"total_us": round(self.total_us, 2), "by_op": {k: round(v, 2) for k, v in self.by_op().items()},
                "nodes": [vars(n) for n in self.nodes]}


def parse_events(events: Sequence[dict], skip_runs: int = 0) -> Profile:
    """Aggregate onnxruntime profiler events into per-node medians (dropping each node's first ``skip_runs``)."""
    durations: dict[str, list[float]] = defaultdict(list)
    meta: dict[str, tuple[str, str]] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        name = ev["name"][: -len("_kernel_time")]
        args = ev.get("args", {})
        durations[name].append(float(ev.get("dur", 0)))
        meta[name] = (args.get("op_name", "?"), args.get("provider", "?"))
    nodes = []
    for name, ds in durations.items():
        kept = ds[skip_runs:] or ds
        nodes.append(NodeTime(name, meta[name][0], meta[name][1], float(np.median(kept)), len(kept)))
    nodes.sort(key=lambda n: -n.median_us)
    return Profile(nodes)


def profile_model(model, target: Target, feeds: Mapping[str, np.ndarray] | None = None,
                  input_shapes: Mapping[str, Sequence[int]] | None = None, runs: int = 20,
                  warmup: int = 3) -> Profile:
    """Run ``model`` under onnxruntime's profiler on ``target`` and aggregate per node."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-prof-") as tmp, pinned(target):
        sess = make_session(model, target, profile_prefix=os.path.join(tmp, "prof"))
        inputs = _feeds_for(model, feeds, input_shapes)
        for _ in range(warmup + runs):
            run_once(sess, inputs)
        path = sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
    return parse_events(events, skip_runs=warmup)


def op_table(before: Profile, after: Profile | None = None) -> str:
    """Per-op-type time, before and after side by side, as text."""
    ops = list(before.by_op())
    if after is not None:
        ops += [op for op in after.by_op() if op not in ops]
    b_ops, a_ops = before.by_op(), (after.by_op() if after else {})
    lines = [f"{'op type':28}{'before us':>12}" + (f"{'after us':>12}{'saved us':>12}" if after else "")]
    for op in ops:
        line = f"{op[:28]:28}{b_ops.get(op, 0):>12.1f}"
        if after is not None:
            line += f"{a_ops.get(op, 0):>12.1f}{b_ops.get(op, 0) - a_ops.get(op, 0):>12.1f}"
        lines.append(line)
    total = f"{'total (sum of kernels)':28}{before.total_us:>12.1f}"
    if after is not None:
        total += f"{after.total_us:>12.1f}{before.total_us - after.total_us:>12.1f}"
    return "\n".join([*lines, total])


def _bars(title: str, rows: list[tuple[str, list[float]]], series: list[str], unit: str = "us") -> str:
    """A horizontal grouped bar chart as inline SVG (one bar per series per row)."""
    colors = ["#4e79a7", "#f28e2b", "#59a14f"]
    bar_h, gap, label_w, width = 12, 8, 260, 520
    vmax = max([v for _, vals in rows for v in vals] + [1e-9])
    height = len(rows) * (bar_h * len(series) + gap) + 40
    out = [f'<h3>{html.escape(title)}</h3>',
           f'<svg width="{label_w + width + 120}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
           'font-family="sans-serif" font-size="11">']
    for i, s in enumerate(series):
        out.append(f'<rect x="{label_w + i * 120}" y="2" width="10" height="10" fill="{colors[i % 3]}"/>'
                   f'<text x="{label_w + i * 120 + 14}" y="11">{html.escape(s)}</text>')
    y = 24
    for label, vals in rows:
        out.append(f'<text x="{label_w - 6}" y="{y + bar_h * len(series) / 2 + 4}" text-anchor="end">'
                   f'{html.escape(label if len(label) <= 42 else "…" + label[-41:])}</text>')
        for i, v in enumerate(vals):
            w = max(1.0, width * v / vmax)
            out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 1}" fill="{colors[i % 3]}"/>'
                       f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 2}">{v:.1f} {unit}</text>')
            y += bar_h
        y += gap
    out.append("</svg>")
    return "\n".join(out)


def render_html(before: Profile, after: Profile | None = None, title: str = "onnxopt profile",
                header: Mapping[str, str] | None = None, top: int = 25) -> str:
    """A self-contained HTML page: where the time goes per op type and per node, before/after."""
    series = ["before", "after"] if after is not None else ["time"]
    b_ops, a_ops = before.by_op(), (after.by_op() if after is not None else {})
    ops = list(dict.fromkeys([*b_ops, *a_ops]))
    op_rows = [(op, [b_ops.get(op, 0.0)] + ([a_ops.get(op, 0.0)] if after is not None else [])) for op in ops]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child"
             "{text-align:left}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if header:
        parts.append("<p>" + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}" for k, v in header.items())
                     + "</p>")
    total = f"sum of kernel medians: before {before.total_us:.1f} us"
    if after is not None:
        total += f", after {after.total_us:.1f} us ({before.total_us / max(after.total_us, 1e-9):.2f}x)"
    parts.append(f"<p>{total}</p>")
    parts.append(_bars("Time per op type", op_rows, series))
    for label, prof in (("before", before), ("after", after)):
        if prof is None:
            continue
        rows = [(f"{n.name} ({n.op})", [n.median_us]) for n in prof.nodes[:top]]
        parts.append(_bars(f"Slowest {min(top, len(prof.nodes))} nodes, {label}", rows, [label]))
    parts.append("<h3>Per op type</h3><table><tr><th>op</th>" + "".join(f"<th>{s} us</th>" for s in series)
                 + "</tr>" + "".join("<tr><td>" + html.escape(op) + "</td>" + "".join(f"<td>{v:.1f}</td>" for v in vals)
                                     + "</tr>" for op, vals in op_rows) + "</table></body></html>")
    return "\n".join(parts)
