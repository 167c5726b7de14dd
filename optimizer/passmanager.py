"""The pass protocol, the registry and the pass manager.

A pass is a class with a ``name``, an ``exact`` flag (outputs unchanged up to float rounding) and
``run(graph, ctx) -> PassResult``. It mutates the onnx-graphsurgeon graph, never raw protobuf, and
when it meets a pattern it cannot handle it leaves it alone and says why (``PassResult.declined``);
it never raises on a model it merely does not understand.

Passes register themselves with :func:`register` in their own module under ``onnxopt.passes``;
importing that package imports every module in it, so adding a pass is adding one file. ``order``
sets the default pipeline position (fold 10, strip 20, shift 30, perforate 40).

The :class:`PassManager` runs passes in order on one graph, cleans up and toposorts after each,
and keeps the results. A pass that raises is a bug: the manager restores the graph as it was
before that pass, records the error as the pass's skip reason, and goes on.
"""
from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import onnx_graphsurgeon as gs

from .errors import OnnxoptError

log = logging.getLogger(__name__)


@dataclass
class PassContext:
    """What a pass may consult besides the graph."""

    options: Mapping[str, Any] = field(default_factory=dict)  # this pass's options
    calibration: Mapping[str, Any] | None = None  # input name -> array (batch of calibration inputs)
    labels: Any = None
    input_shapes: Mapping[str, list[int]] = field(default_factory=dict)
    target: Any = None  # a target profile (onnxopt.runtime.targets), when the user named one
    model: Any = None  # the original onnx.ModelProto, for passes that must run it (lossy budgets)
    logger: logging.Logger = log

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass
class PassResult:
    """What one pass did: a one-line summary, counters for the report, and what it declined."""

    name: str
    changed: bool = False
    summary: str = ""
    skipped: str | None = None  # why the pass did nothing at all, if it did nothing
    declined: list[tuple[str, str]] = field(default_factory=list)  # (node name, reason)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def decline(self, node: gs.Node | str, reason: str) -> None:
        self.declined.append((node if isinstance(node, str) else (node.name or node.op), reason))

    def to_json(self) -> dict:
        return {"name": self.name, "changed": self.changed, "summary": self.summary, "skipped": self.skipped,
                "declined": [{"node": n, "reason": r} for n, r in self.declined], "details": self.details,
                "seconds": round(self.seconds, 4)}


@runtime_checkable
class Pass(Protocol):
    name: ClassVar[str]
    exact: ClassVar[bool]
    order: ClassVar[int]

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult: ...


_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a pass available by its ``name``."""
    for attr in ("name", "exact", "order", "run"):
        if not hasattr(cls, attr):
            raise TypeError(f"pass class {cls.__name__} lacks {attr!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"two passes are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_passes() -> None:
    importlib.import_module("onnxopt.passes")


def available() -> dict[str, type]:
    """Every registered pass by name, in pipeline order."""
    _load_passes()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def default_pipeline() -> list[str]:
    """The passes ``apply`` runs when none are named: every exact pass."""
    return [name for name, cls in available().items() if cls.exact]


def resolve(names: "list[str | Pass] | None") -> list[Pass]:
    """Instantiate the named passes (in the order given), or the default pipeline.

    Pass instances are taken as they are (for tests and for callers with their own passes).
    """
    known = available()
    names = default_pipeline() if names is None else names
    unknown = [n for n in names if isinstance(n, str) and n not in known]
    if unknown:
        raise OnnxoptError(f"unknown pass {unknown[0]!r}; available: {', '.join(known) or 'none'}")
    return [known[n]() if isinstance(n, str) else n for n in names]


class PassManager:
    """Runs passes in order over one graph, cleaning up after each."""

    def __init__(self, passes: list[Pass]):
        self.passes = passes

    def run(self, graph: gs.Graph, contexts: Mapping[str, PassContext] | PassContext) -> list[PassResult]:
        results = []
        for p in self.passes:
            ctx = contexts if isinstance(contexts, PassContext) else contexts.get(p.name, PassContext())
            snapshot = graph.copy()
            t0 = time.perf_counter()
            try:
                result = p.run(graph, ctx)
                if not isinstance(result, PassResult):
                    raise TypeError(f"pass {p.name} returned {type(result).__name__}, not PassResult")
                graph.cleanup(remove_unused_graph_inputs=False).toposort()
            except Exception as e:  # noqa: BLE001 - a failing pass must not take the model down
                log.warning("pass %s failed (%s: %s); its changes were discarded", p.name, type(e).__name__, e)
                _restore(graph, snapshot)
                result = PassResult(p.name, skipped=f"internal error, changes discarded: {type(e).__name__}: {e}")
            result.seconds = time.perf_counter() - t0
            results.append(result)
            log.info("%s: %s", p.name, result.skipped or result.summary)
        return results


def _restore(graph: gs.Graph, snapshot: gs.Graph) -> None:
    """Put ``snapshot``'s contents back into ``graph`` (same object, so callers keep their handle)."""
    graph.nodes = snapshot.nodes
    graph.inputs = snapshot.inputs
    graph.outputs = snapshot.outputs
    graph.functions = snapshot.functions
