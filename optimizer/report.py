"""The apply report: before/after statistics, what each pass did, verification; text and JSON."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .cost import ModelStats
from .passmanager import PassResult
from .verify import VerifyResult


def human(n: float | None) -> str:
    """1234567 -> '1.23M'."""
    if n is None:
        return "?"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"


def _change(a: float, b: float) -> str:
    return f"{(b - a) / a * 100:+.1f}%" if a else "n/a"


@dataclass
class Report:
    source: str
    output: str | None
    before: ModelStats
    after: ModelStats
    passes: list[PassResult]
    verification: VerifyResult | None
    lossy: bool = False  # a lossy pass changed the model: the verification measures its deviation
    latency: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "source": self.source, "output": self.output,
            "before": self.before.to_json(), "after": self.after.to_json(),
            "passes": [p.to_json() for p in self.passes],
            "verification": self.verification.to_json() if self.verification else None,
            "lossy": self.lossy, "latency": self.latency, **self.extra,
        }

    def write_json(self, path: str | os.PathLike) -> None:
        from .ir import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_json(), indent=2, default=str))

    def summary(self) -> str:
        b, a = self.before, self.after
        lines = [f"{'':18}{'before':>12}{'after':>12}{'change':>10}"]
        for label, x, y in (("nodes", b.nodes, a.nodes), ("parameters", b.params, a.params),
                            ("conv/gemm MACs", b.macs, a.macs)):
            lines.append(f"  {label:16}{human(x):>12}{human(y):>12}{_change(x, y):>10}")
        if self.latency and "error" in self.latency:
            lines.append(f"  latency: not measured ({self.latency['error']})")
        elif self.latency:
            lat = self.latency
            lines.append(f"  {'latency (ms)':16}{lat['before_ms']:>12.3f}{lat['after_ms']:>12.3f}"
                         f"{lat['speedup']:>9.2f}x   [{lat['describe']}; speed-up = median of paired ratios]")
        lines.append("passes:")
        for p in self.passes:
            text = f"skipped: {p.skipped}" if p.skipped else (p.summary or ("changed" if p.changed else "no change"))
            lines.append(f"  {p.name:10} {text}")
            reasons: dict[str, int] = {}
            for _, reason in p.declined:
                reasons[reason] = reasons.get(reason, 0) + 1
            for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
                lines.append(f"  {'':10}   declined x{count}: {reason}")
        if not self.passes:
            lines.append("  (none)")
        v = self.verification
        if v is not None and self.lossy:
            for check in self.extra.get("checks", []):
                if check["exact"]:
                    lines.append(f"verification of {', '.join(check['passes'])} (exact): max rel err "
                                 f"{check['max_rel']:.3g} (rtol {v.rtol:g}) OK")
            lines.append(f"deviation from the original (lossy passes ran): {len(v.outputs)} output(s), "
                         f"max abs {v.max_abs:.3g}, max rel {v.max_rel:.3g}")
        elif v is not None:
            state = "OK" if v.ok else "FAILED"
            lines.append(f"verification: {len(v.outputs)} output(s), max abs err {v.max_abs:.3g}, "
                         f"max rel err {v.max_rel:.3g} (rtol {v.rtol:g}) {state}")
        return "\n".join(lines)
