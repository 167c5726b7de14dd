"""Perforate: compute chosen convolutions only at a kept subset of output positions (lossy, opt-in).

Figurnov et al. 2016, "PerforatedCNNs". A perforated conv evaluates its output at the kept
positions I (|I| = r*H*W, r the rate = kept fraction) and gives every other position the value
of its nearest kept one. Only non-1x1 convs (2-D, constant 4-D weights, static output size)
are eligible. Masks (``strategy``): grid, uniform, pooling, impact; see ``_perforation.py``.

Realisation of one perforated conv:

* ``PerforatedConv`` (ai.onnxopt): X, W, B, positions, fill; our CPU kernel gathers the im2row
  rows of the kept positions, runs one GEMM and fills. Without the native library it runs as its
  ONNX function (the dense Conv and two Gathers): correct, but no faster than the original.
* ``strided``: where the kept set is a regular lattice (grid masks whose per-axis step is an
  integer), the same values come from standard ops: a Conv with stride step*stride and its top
  and left pads reduced by the lattice offset, then Gather rows, Gather columns (the separable
  nearest fill). onnxruntime runs the Conv at MLAS speed, but its two Gathers over the full-size
  output cost more than our kernel's fill (measured, ``python -m onnxopt.runtime.bench_perforate``:
  at 25% of 256->256 at 56x56 the kernel is ~3x faster than the dense Conv, strided+Gathers ~2.4x).
  ``realisation="auto"`` (default) takes the faster of the two by the layer-time table where times
  are measured, else the kernel when the native library is installed and the strided form when it
  is not (the kernel's ONNX-function fallback is the dense conv); ``"kernel"`` or ``"strided"``
  force one (strided where it applies).

Options (``options={"perforate": {...}}``):

* ``rates``: {conv node name: rate}, or ``strategy`` with one ``rate`` for every eligible conv.
* ``budget_deviation`` (max |y - y0| / max |y0| over calibration outputs), ``budget_accuracy_drop``
  (top-1 accuracy drop, absolute; against ``labels``, or against the unperforated predictions
  without labels) or ``budget_latency_ms`` (whole-network estimate on the target): automatic
  rate selection, the paper's greedy loop. It needs calibration data.
* ``seed`` (0), ``ladder`` (the rates the greedy loop steps through), ``realisation``,
  ``impact_probes`` (1024), ``impact_samples`` (64), ``lut_runs`` (20), ``measure_time`` (True).

Greedy selection: from rate 1 everywhere, repeatedly advance the one layer whose next rate has the
least (loss increase) / (time saved). The loss increase of a step is measured on the calibration
data with that layer alone perforated (cross-entropy with labels, else the mean squared output
deviation relative to the output's mean square); the time saved is the layer's measured time on
the target (per-layer latency table, ``onnxopt.runtime.lut``). After every step the whole
perforated network is checked against the budget; a step that breaks it is undone and that layer
is frozen; the loop ends when no layer can advance (or, for a latency budget, when the estimate
is met).

Impact (what is actually computed): no autograd here. For each layer, blocks of positions (one
position per block where the plane has at most ``impact_probes`` (1024), ``impact_samples`` (64) positions, else square blocks so
that there are at most that many) are switched off one at a time (all channels of the conv
output set to 0, the perturbation whose first-order effect the paper's |dL/dV * V| estimates)
and the mean loss increase over (the first ``impact_samples`` of) the calibration data is measured on onnxruntime: a finite
difference, not a Taylor term. A block's increase is split among its positions in proportion to
their mean |V|. The loss is cross-entropy with labels, else the squared deviation of the network
output from the unperforated output (whose gradient at V is zero, so the finite difference is
the meaningful quantity there).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from onnxopt import ir
from onnxopt.cost import concrete_shapes
from onnxopt.passmanager import PassContext, PassResult, register

from ._perforation import STRATEGIES, grid_axes, kept_count, lattice, make_mask, pooling_score

log = logging.getLogger(__name__)

DEFAULT_LADDER = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1)
OPTIONS = {"rates", "strategy", "rate", "budget_deviation", "budget_accuracy_drop", "budget_latency_ms", "seed",
           "ladder", "realisation", "impact_probes", "impact_samples", "lut_runs", "measure_time", "lut_path"}
#: Ops between a conv and the pooling layer whose windows the pooling strategy counts.
_PASS_THROUGH = {"Relu", "LeakyRelu", "Clip", "BatchNormalization", "Sigmoid", "HardSigmoid", "HardSwish", "Elu",
                 "Selu", "PRelu", "Tanh", "Identity"}


class Refusal(Exception):
    """The pass does nothing, for the reason given (becomes PassResult.skipped)."""


@dataclass
class Layer:
    """One eligible conv."""

    name: str
    x_shape: list[int]
    w_shape: list[int]
    out_hw: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int
    pool: dict | None = None
    score: np.ndarray | None = None  # impact score, [H*W]
    notes: list[str] = field(default_factory=list)

    @property
    def plane(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    def attrs(self) -> dict:
        return {"kernel_shape": list(self.w_shape[2:]), "strides": list(self.strides), "pads": list(self.pads),
                "dilations": list(self.dilations), "group": self.group}


@register
class PerforatePass:
    name = "perforate"
    exact = False
    order = 40

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.name)
        try:
            _Perforator(graph, ctx, result).run()
        except Refusal as e:
            return PassResult(self.name, skipped=str(e), declined=result.declined)
        return result


def _library_id() -> str:
    """Size and mtime of the native library (or 'nolib'): part of the layer-time key of kernel layers."""
    from onnxopt.runtime import library_path

    lib = library_path()
    if lib is None:
        return "nolib"
    st = lib.stat()
    return f"lib{st.st_size}-{int(st.st_mtime)}"


def _ints(node: gs.Node, key: str, default: list[int]) -> list[int]:
    value = node.attrs.get(key)
    return list(value) if value is not None else list(default)


def _float(options: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    if options.get(key) is None:
        return None
    try:
        v = float(options[key])
    except (TypeError, ValueError):
        raise Refusal(f"option {key} must be a number, got {options[key]!r}") from None
    if not lo <= v <= hi or math.isnan(v):
        raise Refusal(f"option {key} = {v:g} is outside [{lo:g}, {hi:g}]")
    return v


class _Perforator:
    def __init__(self, graph: gs.Graph, ctx: PassContext, result: PassResult):
        self.graph, self.ctx, self.result = graph, ctx, result
        self.opt = dict(ctx.options)
        self.seed = int(self.opt.get("seed", 0))
        self._choice: dict = {}

    # ---- options ---------------------------------------------------------------------------
    def _parse(self) -> None:
        unknown = set(self.opt) - OPTIONS
        if unknown:
            raise Refusal(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(OPTIONS))}")
        self.strategy = self.opt.get("strategy") or "grid"
        if self.strategy not in STRATEGIES:
            raise Refusal(f"unknown strategy {self.strategy!r}; one of {', '.join(STRATEGIES)}")
        self.realisation = self.opt.get("realisation", "auto")
        if self.realisation not in ("auto", "kernel", "strided"):
            raise Refusal(f"realisation must be auto, kernel or strided, not {self.realisation!r}")
        self.rates = dict(self.opt.get("rates") or {})
        for layer, r in self.rates.items():
            if not isinstance(r, (int, float)) or not 0 < r <= 1:
                raise Refusal(f"rate of {layer} must be in (0, 1], got {r!r}")
        self.rate = _float(self.opt, "rate", 1e-9, 1.0)
        self.budgets = {k: _float(self.opt, k, 0.0, 1e12) for k in
                        ("budget_deviation", "budget_accuracy_drop", "budget_latency_ms")}
        self.budgets = {k: v for k, v in self.budgets.items() if v is not None}
        if len(self.budgets) > 1:
            raise Refusal(f"give one budget, not {', '.join(sorted(self.budgets))}")
        if self.budgets and (self.rates or self.rate is not None):
            raise Refusal("give either explicit rates or a budget for automatic selection, not both")
        if not self.budgets and not self.rates and self.rate is None:
            raise Refusal("nothing to do: give rates {layer: rate}, a strategy and one rate, or a budget "
                          "(budget_deviation, budget_accuracy_drop, budget_latency_ms)")
        if (self.budgets or self.strategy == "impact") and self.ctx.calibration is None:
            what = "automatic rate selection" if self.budgets else "the impact strategy"
            raise Refusal(f"{what} needs calibration data (an .npz of inputs, --calibration); none was given")
        ladder = self.opt.get("ladder") or DEFAULT_LADDER
        self.ladder = sorted({1.0, *(float(r) for r in ladder if 0 < float(r) <= 1)}, reverse=True)

    # ---- the graph ------------------------------------------------------------------------
    def _base_model(self) -> onnx.ModelProto:
        return ir.to_model(self.graph, self.ctx.model if self.ctx.model is not None else onnx.ModelProto())

    def _input_shapes(self) -> dict[str, list[int]]:
        shapes = {k: list(v) for k, v in (self.ctx.input_shapes or {}).items()}
        for k, v in (self.ctx.calibration or {}).items():
            shapes.setdefault(k, list(np.shape(v)))
        return shapes

    def _layers(self, base: onnx.ModelProto) -> list[Layer]:
        shapes = concrete_shapes(base, self._input_shapes())
        layers = []
        for node in self.graph.nodes:
            if node.op != "Conv" or node.domain not in (None, "", "ai.onnx"):
                continue
            reason = self._ineligible(node, shapes)
            if reason:
                if reason != "1x1":
                    self.result.decline(node, reason)
                continue
            x = shapes[node.inputs[0].name]
            y = shapes[node.outputs[0].name]
            w = list(node.inputs[1].values.shape)
            pads = _ints(node, "pads", [0, 0, 0, 0])
            layer = Layer(node.name, x, w, (y[2], y[3]), tuple(_ints(node, "strides", [1, 1])), tuple(pads),
                          tuple(_ints(node, "dilations", [1, 1])), int(node.attrs.get("group", 1)))
            layer.pool = self._following_pool(node)
            layers.append(layer)
        return layers

    def _ineligible(self, node: gs.Node, shapes: Mapping[str, list[int]]) -> str | None:
        if not node.name:
            return "unnamed conv (rates are given by node name)"
        if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
            return "weights are not a constant initializer"
        w = node.inputs[1].values
        if w.ndim != 4:
            return f"not a 2-D conv (weights {list(w.shape)})"
        if w.shape[2] * w.shape[3] == 1:
            return "1x1"
        if w.dtype != np.float32:
            return f"weights are {w.dtype}, the kernel is float32"
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return f"auto_pad {node.attrs['auto_pad']}: perforation needs explicit pads"
        if len(node.inputs) > 2 and node.inputs[2].name and not isinstance(node.inputs[2], gs.Constant):
            return "bias is not a constant initializer"
        declared = node.inputs[0].shape
        if declared is None or len(declared) != 4 or not all(isinstance(d, (int, np.integer)) for d in declared[2:]):
            # a mask (and a strided plan's gathers) is made for one output size: baked into a model
            # whose H, W stay dynamic it would be wrong, or refused, at any other size
            return "spatial size is dynamic in the model (a mask is made for one size): export with a fixed H, W"
        x, y = shapes.get(node.inputs[0].name), shapes.get(node.outputs[0].name)
        if x is None or y is None or len(y) != 4:
            return "output shape unknown (give --input-shape or calibration data)"
        if y[2] * y[3] < 2:
            return "output plane has a single position"
        return None

    def _following_pool(self, node: gs.Node) -> dict | None:
        t = node.outputs[0]
        for _ in range(8):
            users = ir.consumers(t)
            if len(users) != 1:
                return None
            u = users[0]
            if u.op in ("MaxPool", "AveragePool"):
                if u.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                    return None
                k = _ints(u, "kernel_shape", [1, 1])
                return {"op": u.op, "kernel": tuple(k), "strides": tuple(_ints(u, "strides", [1, 1])),
                        "pads": tuple(_ints(u, "pads", [0, 0, 0, 0])), "dilations": tuple(_ints(u, "dilations", [1, 1]))}
            if u.op not in _PASS_THROUGH:
                return None
            t = u.outputs[0]
        return None

    # ---- masks and rewriting --------------------------------------------------------------
    def mask(self, layer: Layer, rate: float) -> tuple[np.ndarray, np.ndarray, str]:
        h, w = layer.out_hw
        strategy = self.strategy
        score = None
        if strategy == "pooling":
            if layer.pool is None:
                strategy = "uniform"
            else:
                p = layer.pool
                score = pooling_score(h, w, p["kernel"], p["strides"], p["pads"], p["dilations"])
        elif strategy == "impact":
            score = layer.score
        positions, fill = make_mask(strategy, h, w, rate, self.seed, score)
        label = strategy if strategy == self.strategy else f"{self.strategy}->{strategy} (no pooling follows)"
        return positions, fill, label

    def strided_plan(self, layer: Layer, rate: float, realisation: str | None = None) -> dict | None:
        """The strided-Conv realisation of a grid mask, where the grid is a lattice and it is chosen."""
        realisation = realisation or self.realisation
        if self.strategy != "grid" or realisation == "kernel" or rate >= 1.0:
            return None
        if realisation == "auto" and self.choose_realisation(layer, rate) != "strided":
            return None
        h, w = layer.out_hw
        rows, cols = grid_axes(h, w, rate, self.seed)
        ly, lx = lattice(rows), lattice(cols)
        if ly is None or lx is None:
            return None
        (a0, sy), (b0, sx) = ly, lx
        pt, pl, pb, pr = layer.pads
        top, left = pt - a0 * layer.strides[0], pl - b0 * layer.strides[1]
        if top < 0 or left < 0:
            return None
        _, fill = make_mask("grid", h, w, rate, self.seed)
        plane = fill.reshape(h, w)
        ncols = len(cols)
        return {"strides": [sy * layer.strides[0], sx * layer.strides[1]], "pads": [top, left, pb, pr],
                "rows": (plane[:, 0] // ncols).astype(np.int64), "cols": (plane[0, :] % ncols).astype(np.int64)}

    def choose_realisation(self, layer: Layer, rate: float) -> str:
        """``auto``: the faster of kernel and strided by measured layer times, else by library presence."""
        key = (layer.name, rate)
        if key not in self._choice:
            if self.strided_plan(layer, rate, "strided") is None:
                self._choice[key] = "kernel"
            elif getattr(self, "lut", None) is not None:
                kernel = self.layer_time(layer, rate, "kernel")
                strided = self.layer_time(layer, rate, "strided")
                self._choice[key] = "strided" if strided < kernel else "kernel"
            else:
                from onnxopt.runtime import library_path

                self._choice[key] = "kernel" if library_path() is not None else "strided"
        return self._choice[key]

    def rewrite(self, graph: gs.Graph, layer: Layer, rate: float,
                realisation: str | None = None) -> tuple[str, str, int]:
        """Perforate conv ``layer.name`` in ``graph``; returns (strategy label, realisation, kept count)."""
        from onnxopt.runtime import ops

        node = next(n for n in graph.nodes if n.name == layer.name)
        plan = self.strided_plan(layer, rate, realisation)
        if plan is not None:
            out = node.outputs[0]
            mid = gs.Variable(f"{layer.name}_strided", dtype=out.dtype)
            rows_out = gs.Variable(f"{layer.name}_rows", dtype=out.dtype)
            node.attrs.update(strides=plan["strides"], pads=plan["pads"])
            node.outputs = [mid]
            graph.nodes.append(gs.Node("Gather", f"{layer.name}_fill_rows", {"axis": 2},
                                       [mid, gs.Constant(f"{layer.name}_fill_rows_idx", plan["rows"])], [rows_out]))
            graph.nodes.append(gs.Node("Gather", f"{layer.name}_fill_cols", {"axis": 3},
                                       [rows_out, gs.Constant(f"{layer.name}_fill_cols_idx", plan["cols"])], [out]))
            return "grid", "strided", len(set(plan["rows"].tolist())) * len(set(plan["cols"].tolist()))
        positions, fill, label = self.mask(layer, rate)
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else gs.Variable.empty()
        node.op, node.domain = ops.PERFORATED_CONV, ops.DOMAIN
        node.inputs = [node.inputs[0], node.inputs[1], bias,
                       gs.Constant(f"{layer.name}_perf_positions", positions.astype(np.int32)),
                       gs.Constant(f"{layer.name}_perf_fill", fill.astype(np.int32))]
        node.attrs = layer.attrs()
        return label, "kernel", len(positions)

    def build(self, config: Mapping[str, float], probe: Layer | None = None) -> onnx.ModelProto:
        """The base graph with the layers of ``config`` perforated; with ``probe``, the output of that
        conv is multiplied by a new graph input ``__probe`` [1, 1, H, W] and also returned."""
        from onnxopt.runtime.functions import add_functions

        g = self.graph.copy()
        for layer in self.layers:
            rate = config.get(layer.name, 1.0)
            if rate < 1.0:
                self.rewrite(g, layer, rate)
        if probe is not None:
            node = next(n for n in g.nodes if n.name == probe.name)
            v = node.outputs[0]
            raw = gs.Variable(f"{probe.name}__raw", dtype=np.float32)
            node.outputs = [raw]
            mask = gs.Variable("__probe", dtype=np.float32, shape=[1, 1, *probe.out_hw])
            g.nodes.append(gs.Node("Mul", f"{probe.name}__probe_mul", inputs=[raw, mask], outputs=[v]))
            g.inputs.append(mask)
            g.outputs.append(raw)
        g.cleanup(remove_unused_graph_inputs=False).toposort()
        model = ir.to_model(g, self.base)
        if any(n.domain == "ai.onnxopt" for n in model.graph.node):
            add_functions(model)
        return model

    # ---- evaluation on calibration data ----------------------------------------------------
    def run_model(self, model, extra: Mapping[str, np.ndarray] | None = None,
                  feeds: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Run a model (or a session) on the calibration feeds, in chunks of a fixed model batch."""
        from onnxopt.runtime import session

        sess = model if hasattr(model, "get_inputs") else session(model, threads=self.threads)
        names = [i.name for i in sess.get_inputs()]
        feeds = {k: v for k, v in (self.feeds if feeds is None else feeds).items() if k in names}
        total = len(next(iter(feeds.values())))
        batch = self.batch or total
        outs: list[list[np.ndarray]] = []
        for s in range(0, total, batch):
            chunk = {k: v[s:s + batch] for k, v in feeds.items()}
            chunk.update(extra or {})
            outs.append(sess.run(None, chunk))
        return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]

    def metrics(self, outs: list[np.ndarray]) -> dict:
        ref = self.ref
        dev = max(float(np.abs(o.astype(np.float64) - r).max() / max(np.abs(r).max(), 1e-30))
                  for o, r in zip(outs, ref))
        mse = float(np.mean([np.mean((o.astype(np.float64) - r) ** 2) / max(np.mean(r ** 2), 1e-30)
                             for o, r in zip(outs, ref)]))
        m = {"deviation": dev, "rel_mse": mse}
        logits = outs[0].reshape(len(outs[0]), -1)
        ref_top = ref[0].reshape(len(ref[0]), -1).argmax(1)
        m["agreement"] = float(np.mean(logits.argmax(1) == ref_top))
        if self.labels is not None:
            m["accuracy"] = float(np.mean(logits.argmax(1) == self.labels))
            z = logits - logits.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            m["loss"] = float(-np.mean(logp[np.arange(len(logits)), self.labels]))
        else:
            m["loss"] = mse
        return m

    def evaluate(self, config: Mapping[str, float]) -> dict:
        key = tuple(sorted((k, v) for k, v in config.items() if v < 1.0))
        if key not in self._evals:
            self._evals[key] = self.metrics(self.run_model(self.build(config)))
        return self._evals[key]

    def accuracy_drop(self, m: dict) -> float:
        if self.labels is not None:
            return self.base_metrics["accuracy"] - m["accuracy"]
        return 1.0 - m["agreement"]

    def impact_scores(self, layer: Layer) -> np.ndarray:
        """Per-position impact of ``layer`` (see the module docstring), on the first ``impact_samples``."""
        from onnxopt.runtime import session

        h, w = layer.out_hw
        probes = int(self.opt.get("impact_probes", 1024))
        b = max(1, math.ceil(math.sqrt(h * w / max(1, probes))))
        sess = session(self.build({}, probe=layer), threads=self.threads)  # one session for every probe
        n = int(self.opt.get("impact_samples", 64))
        feeds = {k: v[:n] for k, v in self.feeds.items()}
        ref = [r[:n] for r in self.ref]
        labels = None if self.labels is None else self.labels[:n]
        ones = np.ones((1, 1, h, w), np.float32)

        def loss(mask: np.ndarray) -> tuple[float, np.ndarray]:
            outs = self.run_model(sess, {"__probe": mask}, feeds)
            return self.loss_of(outs[:-1], ref, labels), outs[-1]

        base, v = loss(ones)
        v_mag = np.abs(v).mean(axis=(0, 1))  # mean |V| per position
        score = np.zeros((h, w))
        for y0 in range(0, h, b):
            for x0 in range(0, w, b):
                m = ones.copy()
                m[..., y0:y0 + b, x0:x0 + b] = 0
                inc = max(0.0, loss(m)[0] - base)
                blk = v_mag[y0:y0 + b, x0:x0 + b]
                share = blk / blk.sum() if blk.sum() > 0 else np.full(blk.shape, 1.0 / blk.size)
                score[y0:y0 + b, x0:x0 + b] = inc * share
        return score.ravel()

    @staticmethod
    def loss_of(outs: list[np.ndarray], ref: list[np.ndarray], labels: np.ndarray | None) -> float:
        """Cross-entropy with labels, else the squared deviation from the unperforated outputs."""
        if labels is not None:
            logits = outs[0].reshape(len(outs[0]), -1).astype(np.float64)
            z = logits - logits.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            return float(-np.mean(logp[np.arange(len(logits)), labels]))
        return float(sum(np.mean((o.astype(np.float64) - r) ** 2) for o, r in zip(outs, ref)))

    # ---- layer times ----------------------------------------------------------------------
    def layer_time(self, layer: Layer, rate: float, realisation: str | None = None) -> float | None:
        if self.lut is None:
            return None
        from onnxopt.runtime.lut import layer_key

        if rate < 1.0 and realisation is None:
            realisation = "strided" if self.strided_plan(layer, rate) is not None else "kernel"
        op = "Conv" if rate >= 1.0 else f"PerforatedConv:{self.strategy}:{realisation}:seed{self.seed}"
        if realisation == "kernel":
            op += f":{_library_id()}"  # a rebuilt kernel is re-measured, not read from the cache
        key = layer_key(op, [[1, *layer.x_shape[1:]], layer.w_shape], layer.attrs(), rate)
        return self.lut.time_ms(key, lambda: self._layer_model(layer, rate, realisation))

    def _layer_model(self, layer: Layer, rate: float, realisation: str | None = None) -> onnx.ModelProto:
        from onnxopt.runtime.functions import add_functions

        rng = np.random.default_rng(0)
        x = gs.Variable("X", np.float32, [1, *layer.x_shape[1:]])  # layer times are per image
        y = gs.Variable("Y", np.float32)
        w = gs.Constant("W", rng.standard_normal(layer.w_shape).astype(np.float32))
        bias = gs.Constant("B", rng.standard_normal(layer.w_shape[0]).astype(np.float32))
        node = gs.Node("Conv", layer.name, layer.attrs(), [x, w, bias], [y])
        g = gs.Graph([node], [x], [y], opset=17)
        if rate < 1.0:
            self.rewrite(g, layer, rate, realisation)
        g.cleanup().toposort()
        model = gs.export_onnx(g, do_type_check=False)
        model.ir_version = 8
        if any(n.domain == "ai.onnxopt" for n in model.graph.node):
            add_functions(model)
        return ir.fit_ir_version(model)

    # ---- the pass -------------------------------------------------------------------------
    def run(self) -> None:
        from onnxopt.runtime import library_path

        self._parse()
        self.base = self._base_model()
        self.layers = self._layers(self.base)
        if not self.layers:
            raise Refusal("no eligible conv (non-1x1, constant weights, known output size)")
        by_name = {layer.name: layer for layer in self.layers}
        unknown = [k for k in self.rates if k not in by_name]
        if unknown:
            raise Refusal(f"no eligible conv named {unknown[0]!r}; eligible: {', '.join(by_name)}")
        self.threads = 1
        self._evals: dict = {}
        self._setup_data()
        self._setup_lut()
        if self.strategy == "impact":
            for layer in self.layers:
                layer.score = self.impact_scores(layer)

        if self.budgets:
            config, steps = self.greedy()
        else:
            config = dict(self.rates) if self.rates else {layer.name: self.rate for layer in self.layers}
            steps = []
        self.finish(config, steps, native=library_path() is not None)

    def _setup_data(self) -> None:
        if self.ctx.calibration is not None:
            self.feeds = {k: np.asarray(v) for k, v in self.ctx.calibration.items()}
            self.data_source = f"calibration data ({len(next(iter(self.feeds.values())))} samples)"
        else:
            from onnxopt.verify import make_inputs

            self.feeds = make_inputs(self.base, self._input_shapes())
            self.data_source = "random inputs (no calibration data)"
        sizes = {len(v) for v in self.feeds.values()}
        if len(sizes) != 1:
            raise Refusal(f"calibration arrays have different batch sizes: {sorted(sizes)}")
        self.labels = None
        if self.ctx.labels is not None:
            self.labels = np.asarray(self.ctx.labels).astype(np.int64).ravel()
            if len(self.labels) != sizes.pop():
                raise Refusal(f"{len(self.labels)} labels for {len(next(iter(self.feeds.values())))} calibration samples")
        # a model with a fixed batch runs the calibration data in chunks of that batch
        self.batch = None
        for vi in self.base.graph.input:
            if vi.name in self.feeds and vi.type.tensor_type.shape.dim:
                d = vi.type.tensor_type.shape.dim[0]
                if d.HasField("dim_value") and d.dim_value > 0:
                    self.batch = d.dim_value
        self.ref = [o.astype(np.float64) for o in self.run_model(self.base)]
        self.base_metrics = self.metrics([r.astype(np.float32) for r in self.ref])

    def _setup_lut(self) -> None:
        self.lut = None
        if not self.opt.get("measure_time", True) and "budget_latency_ms" not in self.budgets:
            return
        from onnxopt.errors import OnnxoptError
        from onnxopt.runtime.lut import LatencyTable
        from onnxopt.runtime.targets import Target, check_provider, load_target

        target = self.ctx.target
        self.target = target if isinstance(target, Target) else load_target(target or "mobile-cpu")
        try:
            check_provider(self.target)
        except OnnxoptError as e:  # a GPU target on a machine without one: explicit rates need no times
            if self.budgets:
                raise Refusal(f"automatic selection needs layer times on the target: {e}") from None
            self.result.details["time_source"] = f"none: {e}"
            return
        self.lut = LatencyTable(self.target, path=self.opt.get("lut_path"), runs=int(self.opt.get("lut_runs", 20)))

    def greedy(self) -> tuple[dict[str, float], list[dict]]:
        if self.lut is None:
            raise Refusal("automatic selection needs layer times (measure_time must stay on)")
        # per layer, the ladder's rungs that save time over the previous kept rung
        rungs: dict[str, list[tuple[float, float]]] = {}
        for layer in self.layers:
            kept = [(1.0, self.layer_time(layer, 1.0))]
            for r in self.ladder[1:]:
                t = self.layer_time(layer, r)
                if t < kept[-1][1]:
                    kept.append((r, t))
            rungs[layer.name] = kept
        level = {name: 0 for name in rungs}
        frozen: set[str] = set()
        config: dict[str, float] = {}
        steps: list[dict] = []
        budget_key, budget = next(iter(self.budgets.items()))
        base_ms = None
        if budget_key == "budget_latency_ms":
            from onnxopt.runtime.latency import bench

            base_ms = bench(self.base, self.target, feeds={k: v[:self.batch or len(v)] for k, v in self.feeds.items()},
                            runs=int(self.opt.get("lut_runs", 20))).median_ms
            self.result.details["latency_base_ms"] = round(base_ms, 4)
        saved = 0.0
        while True:
            if base_ms is not None and base_ms - saved <= budget:
                break
            best = None
            for name, rs in rungs.items():
                i = level[name]
                if name in frozen or i + 1 >= len(rs):
                    continue
                alone_now = self.evaluate({name: rs[i][0]})["loss"]
                alone_next = self.evaluate({name: rs[i + 1][0]})["loss"]
                dt = rs[i][1] - rs[i + 1][1]
                ratio = max(0.0, alone_next - alone_now) / dt
                if best is None or ratio < best[0]:
                    best = (ratio, name, dt)
            if best is None:
                break
            _, name, dt = best
            trial = {**config, name: rungs[name][level[name] + 1][0]}
            step = {"layer": name, "rate": trial[name], "time_saved_ms": round(dt, 4)}
            if base_ms is None:
                m = self.evaluate(trial)
                value = m["deviation"] if budget_key == "budget_deviation" else self.accuracy_drop(m)
                step["value"] = round(value, 6)
                if value > budget:
                    frozen.add(name)
                    step["accepted"] = False
                    steps.append(step)
                    continue
            step["accepted"] = True
            steps.append(step)
            config = trial
            level[name] += 1
            saved += dt
        if base_ms is not None:
            self.result.details["latency_estimate_ms"] = round(base_ms - saved, 4)
            if base_ms - saved > budget:
                self.result.decline("<network>", f"latency budget {budget:g} ms not reached: estimate "
                                                 f"{base_ms - saved:.3f} ms with every layer at its lowest rate")
        return config, steps

    def finish(self, config: Mapping[str, float], steps: list[dict], native: bool) -> None:
        config = {k: float(v) for k, v in config.items() if v < 1.0}
        rows = []
        by_name = {layer.name: layer for layer in self.layers}
        final = self.evaluate(config) if config else dict(self.base_metrics, deviation=0.0)
        alone = {name: self.evaluate({name: rate})["deviation"] for name, rate in config.items()}
        for name, rate in config.items():  # self.graph changes from here on: no evaluate() below
            layer = by_name[name]
            label, realisation, kept = self.rewrite(self.graph, layer, rate)
            row = {"layer": name, "strategy": label, "rate": rate, "kept": kept, "positions": layer.plane,
                   "kept_fraction": round(kept / layer.plane, 4), "realisation": realisation,
                   "deviation_alone": round(alone[name], 6)}
            if realisation == "kernel":
                fused = _fuse_activation(self.graph, next(n for n in self.graph.nodes if n.name == name))
                if fused:
                    row["fused_activation"] = fused
            if self.lut is not None:
                dense, perf = self.layer_time(layer, 1.0), self.layer_time(layer, rate)
                row.update(time_dense_ms=round(dense, 4), time_perforated_ms=round(perf, 4),
                           time_saved_ms=round(dense - perf, 4))
            rows.append(row)
        d = self.result.details
        d.update(layers=rows, data=self.data_source, deviation=round(final["deviation"], 6),
                 agreement=round(final["agreement"], 6), budget=dict(self.budgets) or None,
                 eligible=[layer.name for layer in self.layers], native_library=native)
        if self.labels is not None:
            d.update(accuracy_before=round(self.base_metrics["accuracy"], 6), accuracy=round(final["accuracy"], 6))
        if self.lut is not None:
            d["time_source"] = f"per-layer latency table on {self.target.describe()}"
            d["time_saved_ms"] = round(sum(r["time_saved_ms"] for r in rows), 4)
        if steps:
            d["greedy_steps"] = steps
        if not native and any(r["realisation"] == "kernel" for r in rows):
            d["warning"] = ("the native library is not installed: PerforatedConv runs as its ONNX function "
                            "(the dense conv plus gathers), no faster than the original")
        self.result.changed = bool(rows)
        saved = f", est. {d['time_saved_ms']:.3f} ms saved" if "time_saved_ms" in d else ""
        budget = ""
        if self.budgets:
            k, v = next(iter(self.budgets.items()))
            budget = f" (budget {k.removeprefix('budget_')} {v:g})"
        fused = sum("fused_activation" in r for r in rows)
        d["activations_fused"] = fused
        fused_text = f", {fused} activations fused" if fused else ""
        self.result.summary = (f"perforated {len(rows)} of {len(self.layers)} eligible convs{fused_text}; output "
                               f"deviation {final['deviation']:.3g}{budget}{saved}")
        for layer in self.layers:
            if layer.name not in config:
                self.result.decline(layer.name, "kept at rate 1" + (" (budget)" if self.budgets else ""))

    def table(self) -> str:  # pragma: no cover - convenience for interactive use
        return format_layers(self.result.details.get("layers", []))


def format_layers(rows: list[dict]) -> str:
    """The per-layer report as a text table (deviation: of the network output with that layer alone
    perforated; saved ms: the layer's measured time, dense minus perforated, on the target)."""
    lines = [f"{'layer':28}{'strategy':>10}{'rate':>7}{'kept':>8}{'realis.':>9}{'saved ms':>10}{'deviation':>11}"]
    for r in rows:
        saved = f"{r['time_saved_ms']:.3f}" if "time_saved_ms" in r else "-"
        lines.append(f"{r['layer'][-28:]:28}{r['strategy'][:10]:>10}{r['rate']:>7.3g}{r['kept_fraction']:>8.3f}"
                     f"{r['realisation']:>9}{saved:>10}{r['deviation_alone']:>11.3g}")
    return "\n".join(lines)


def _fuse_activation(graph: gs.Graph, node: gs.Node) -> str | None:
    """Fold the Relu / constant Clip that alone reads PerforatedConv ``node``'s output into its
    clip_min / clip_max (exact: the clamp commutes with the fill, which only copies values; onnxruntime
    would have fused it into the dense Conv). Returns the absorbed op type, or None."""
    user = ir.only_consumer(graph, node.outputs[0])
    return user.op if user is not None and ir.fuse_activation(node, user) else None
