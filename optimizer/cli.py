"""The ``onnxopt`` command line: apply, inspect, verify.

Exit codes: 0 success; 1 verification failed (nothing written); 2 bad input or usage (one line on
stderr, nothing written); 3 an internal error (a bug: one line, ``--debug`` shows the traceback).
"""
from __future__ import annotations

import json
import logging
import os
import sys

import click

from . import api
from .errors import OnnxoptError
from .passmanager import default_pipeline
from .report import human

log = logging.getLogger("onnxopt")


def _parse_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    """``name:1x3x224x224`` (repeatable) -> {name: [1, 3, 224, 224]}."""
    shapes = {}
    for v in values:
        name, sep, dims = v.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise OnnxoptError(f"--input-shape {v!r}: expected NAME:DxDx... (e.g. input:1x3x224x224)") from None
    return shapes


def _parse_options(values: tuple[str, ...]) -> dict[str, dict]:
    """``strip-near.threshold=0.01`` (repeatable) -> {"strip-near": {"threshold": 0.01}}; values are JSON or text."""
    options: dict[str, dict] = {}
    for v in values:
        key, sep, raw = v.partition("=")
        pass_name, dot, opt = key.partition(".")
        if not sep or not dot or not pass_name or not opt:
            raise OnnxoptError(f"--option {v!r}: expected PASS.KEY=VALUE (e.g. strip-near.threshold=0.01)")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        options.setdefault(pass_name, {})[opt] = value
    return options


def _parse_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [p.strip() for p in value.split(",") if p.strip()]


shape_option = click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DxD...",
                            help="Concrete shape for an input with dynamic dims (repeatable). Default: dynamic dims = 1.")
rtol_option = click.option("--rtol", type=float, default=api.DEFAULT_RTOL, show_default=True,
                           help="Verification tolerance, relative to each output's largest magnitude.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log pass decisions (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(package_name="onnxopt")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """onnxopt: make CNNs exported to ONNX smaller and faster, verified against the original."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"debug": debug}


@cli.command("apply")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output path. Default: <stem>.opt.onnx beside MODEL.")
@click.option("--passes", help="Comma-separated passes to run, in order. Default: every exact pass.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a JSON report here.")
@click.option("--inputs", type=click.Path(dir_okay=False), help=".npz of verification inputs (default: random).")
@click.option("--target", help="Optimise for this target and measure before/after latency on it (e.g. mobile-cpu, "
                                "cpu, cuda, profile.toml); a target this machine cannot run is optimised for, not measured.")
@click.option("--perforate", "perforate", metavar="SPEC",
              help="Perforate convs (lossy): LAYER=RATE,... or STRATEGY:RATE for every eligible conv, or STRATEGY "
                   "with a budget (strategies grid, uniform, pooling, impact).")
@click.option("--calibration", type=click.Path(dir_okay=False), help=".npz of calibration inputs (+ optional 'labels').")
@click.option("--budget-deviation", type=float, help="Perforate automatically up to this max output deviation (relative).")
@click.option("--budget-accuracy-drop", type=float, help="Perforate automatically up to this top-1 accuracy drop (0.01 = 1%).")
@click.option("--budget-latency-ms", type=float, help="Perforate automatically until the network is estimated this fast.")
@click.option("--option", "pass_options", multiple=True, metavar="PASS.KEY=VALUE",
              help="A pass option (repeatable), e.g. strip-near.threshold=0.01 or strip.bias_map=true.")
@shape_option
@rtol_option
def apply_cmd(model, output, passes, report_path, inputs, input_shapes, rtol, target, perforate, calibration,
              budget_deviation, budget_accuracy_drop, budget_latency_ms, pass_options):
    """Optimise MODEL, verify it against the original, write the result."""
    out = output or str(api.default_output(model))
    # the target shapes the model (e.g. no CPU-only layout for cuda) even where it cannot be
    # measured here; the latency line then says why it is missing
    tgt = _target(target, require_provider=False) if target else None
    budgets = {k: v for k, v in (("budget_deviation", budget_deviation), ("budget_accuracy_drop", budget_accuracy_drop),
                                 ("budget_latency_ms", budget_latency_ms)) if v is not None}
    pass_list, options, cal, labels = _parse_list(passes), _parse_options(pass_options), None, None
    if calibration:
        cal, labels = _load_calibration(calibration, model)
    if perforate or budgets:
        if budgets and cal is None:
            raise OnnxoptError("automatic perforation (--budget-*) needs --calibration NPZ (inputs, optional labels)")
        options["perforate"] = {**options.get("perforate", {}), **_parse_perforate(perforate), **budgets}
        pass_list = pass_list if pass_list is not None else default_pipeline()
        pass_list += [] if "perforate" in pass_list else ["perforate"]
    _, report = api.apply(model, passes=pass_list, output=out, inputs=inputs, target=tgt, options=options,
                          calibration=cal, labels=labels,
                          input_shapes=_parse_shapes(input_shapes), rtol=rtol, report_path=report_path)
    click.echo(f"onnxopt apply: {model} -> {out}")
    click.echo(report.summary())
    perf = next((p for p in report.passes if p.name == "perforate" and p.details.get("layers")), None)
    if perf is not None:
        from onnxopt.passes.perforate import format_layers

        click.echo(format_layers(perf.details["layers"]))
    if report_path:
        click.echo(f"report: {report_path}")


@cli.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@shape_option
def inspect_cmd(model, as_json, input_shapes):
    """Show MODEL's inputs, ops, parameters, MACs per layer and zeroed filters."""
    info = api.inspect(model, _parse_shapes(input_shapes))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{model}: IR {info['ir_version']}, opsets "
               + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()))
    for kind in ("inputs", "outputs"):
        for io in info[kind]:
            click.echo(f"  {kind[:-1]:6} {io['name']}: {io['type']} {io['shape']}")
    click.echo(f"nodes {info['nodes']}, parameters {human(info['params'])}, conv/gemm MACs {human(info['macs'])}"
               + (f" ({info['unknown_macs']} layers with unknown shapes)" if info["unknown_macs"] else ""))
    click.echo("ops: " + ", ".join(f"{op} {n}" for op, n in sorted(info["ops"].items(), key=lambda kv: -kv[1])))
    if info["custom_ops"]:
        click.echo("custom-domain ops: " + ", ".join(f"{op} {n}" for op, n in info["custom_ops"].items()))
    if info["functions"]:
        click.echo("model-local functions: " + ", ".join(info["functions"]))
    layers = info["layers"]
    if layers:
        click.echo(f"{'layer':40} {'op':14} {'MACs':>10} {'out ch':>7} {'zeroed':>7}")
        for layer in layers:
            oc = layer["out_channels"]
            zf = layer["zero_filters"]
            click.echo(f"{layer['name'][:40]:40} {layer['op'][:14]:14} {human(layer['macs']):>10} "
                       f"{'' if oc is None else oc:>7} {'' if zf is None else zf:>7}")
        dead = sum(layer["zero_filters"] or 0 for layer in layers)
        click.echo(f"zeroed filters (strip opportunity): {dead}")


@cli.command("verify")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("--inputs", type=click.Path(dir_okay=False), help=".npz of inputs (default: random, seeded).")
@shape_option
@rtol_option
def verify_cmd(a, b, inputs, input_shapes, rtol):
    """Run A and B on the same inputs and compare every output; exit 1 beyond tolerance."""
    result = api.verify(a, b, inputs=inputs, input_shapes=_parse_shapes(input_shapes), rtol=rtol)
    for o in result.outputs:
        state = "ok" if o.ok else "FAIL"
        click.echo(f"  {o.name}: max abs err {o.max_abs:.3g}, max rel err {o.max_rel:.3g} {state}"
                   + (f" ({o.reason})" if o.reason else ""))
    click.echo(f"{'match' if result.ok else 'MISMATCH'} (rtol {rtol:g})")
    if not result.ok:
        sys.exit(1)


def _parse_perforate(spec: str | None) -> dict:
    """``conv1=0.5,conv3=0.25`` | ``grid:0.5`` | ``uniform:conv1=0.5`` | ``impact`` -> perforate options."""
    if not spec:
        return {}
    strategy, sep, rest = spec.partition(":")
    if not sep:
        strategy, rest = ("", spec) if "=" in spec or _is_number(spec) else (spec, "")
    opts: dict = {"strategy": strategy} if strategy else {}
    rest = rest.strip()
    try:
        if not rest:
            pass
        elif "=" not in rest:
            opts["rate"] = float(rest)
        else:
            opts["rates"] = {}
            for item in _parse_list(rest) or []:
                name, eq, value = item.rpartition("=")
                if not eq or not name:
                    raise ValueError
                opts["rates"][name.strip()] = float(value)
    except ValueError:
        raise OnnxoptError(f"--perforate {spec!r}: expected LAYER=RATE,... or STRATEGY:RATE (e.g. grid:0.5)") from None
    for r in ([opts["rate"]] if "rate" in opts else []) + list(opts.get("rates", {}).values()):
        if not 0 < r <= 1:
            raise OnnxoptError(f"--perforate {spec!r}: a rate is the kept fraction, in (0, 1]; got {r:g}")
    return opts


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _load_calibration(path: str, model: str):
    """Inputs by name (a single input may use any key) and the optional ``labels`` array."""
    import numpy as np

    from . import ir
    from .verify import graph_inputs

    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise OnnxoptError(f"--calibration {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - np.load raises several error types for bad files
        raise OnnxoptError(f"--calibration {path}: not a readable .npz file ({type(e).__name__})") from None
    labels = data.pop("labels", None)
    names = [vi.name for vi in graph_inputs(ir.load_model(model))]
    if len(names) == 1 and len(data) == 1 and names[0] not in data:
        data = {names[0]: next(iter(data.values()))}
    missing = [n for n in names if n not in data]
    if missing:
        raise OnnxoptError(f"--calibration {path}: no array for input {missing[0]!r} (has {', '.join(data) or 'nothing'})")
    return {n: data[n] for n in names}, labels


def _target(name, require_provider: bool = True):
    from onnxopt.runtime.targets import load_target

    return load_target(name, require_provider=require_provider)


def _progress(label: str, enabled: bool):
    """A progress callback drawing a bar on stderr for long runs (None when not wanted)."""
    if not enabled:
        return None, lambda: None
    bar = click.progressbar(length=1, label=label, file=sys.stderr)
    bar.__enter__()

    def update(i, n):
        bar.length = n
        bar.update(i - bar.pos)

    return update, lambda: bar.__exit__(None, None, None)


@cli.command("bench")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--vs", "other", type=click.Path(dir_okay=False), help="Compare with OTHER, interleaved pair by pair.")
@click.option("--target", default="mobile-cpu", show_default=True, help="Target name or profile file.")
@click.option("--runs", type=click.IntRange(min=1), help="Measured runs (default: the target's).")
@click.option("--warmup", type=click.IntRange(min=0), help="Warm-up runs (default: the target's).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the statistics as JSON here.")
@shape_option
def bench_cmd(model, other, target, runs, warmup, json_path, input_shapes):
    """Measure MODEL's latency on a target (median, p90, min, max); with --vs, the ratio per pair."""
    from onnxopt import ir
    from onnxopt.runtime.latency import bench, bench_pair, environment

    tgt = _target(target)
    shapes = _parse_shapes(input_shapes)
    a = ir.load_model(model)
    b = ir.load_model(other) if other else None
    if json_path:
        ir.check_writable(json_path)
    click.echo(f"target {tgt.describe()}" + "".join(f" [{n}]" for n in tgt.notes))
    env = environment()
    click.echo(f"cpu {env['cpu']}, onnxruntime {env['onnxruntime']}")
    n = runs or tgt.runs
    update, done = _progress("measuring", sys.stderr.isatty() and n >= 20)
    try:
        if b is None:
            stats = bench(a, tgt, input_shapes=shapes, runs=runs, warmup=warmup, progress=update)
            result = {"model": model, "target": tgt.name, "environment": env, "latency": stats.to_json()}
        else:
            cmp = bench_pair(a, b, tgt, input_shapes=shapes, runs=runs, warmup=warmup, progress=update)
            result = {"model": model, "vs": other, "target": tgt.name, "environment": env, **cmp.to_json()}
    finally:
        done()
    rows = [(model, stats)] if b is None else [(model, cmp.a), (other, cmp.b)]
    click.echo(f"{'model':40}{'median ms':>11}{'p90 ms':>10}{'min ms':>10}{'max ms':>10}{'runs':>6}")
    for name, st in rows:
        click.echo(f"{str(name)[-40:]:40}{st.median_ms:>11.3f}{st.p90_ms:>10.3f}{st.min_ms:>10.3f}{st.max_ms:>10.3f}"
                   f"{st.runs:>6}")
    if b is not None:
        click.echo(f"ratio {other} / {model}: {cmp.ratio:.3f} (p10 {cmp.ratio_p10:.3f}, p90 {cmp.ratio_p90:.3f}), "
                   f"speed-up {cmp.speedup:.2f}x")
    if json_path:
        ir.write_text_atomic(json_path, json.dumps(result, indent=2))


@cli.command("profile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--vs", "other", type=click.Path(dir_okay=False), help="Profile OTHER too and show both side by side.")
@click.option("--target", default="mobile-cpu", show_default=True, help="Target name or profile file.")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write an HTML report with plots here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write per-node times as JSON here.")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True, help="Slowest nodes to list.")
@shape_option
def profile_cmd(model, other, target, runs, html_path, json_path, top, input_shapes):
    """Per-node and per-op-type time from onnxruntime's profiler (before/after with --vs)."""
    from onnxopt import ir
    from onnxopt.runtime.latency import environment
    from onnxopt.runtime.profiling import op_table, profile_model, render_html

    tgt = _target(target)
    shapes = _parse_shapes(input_shapes)
    for p in (html_path, json_path):
        if p:
            ir.check_writable(p)
    before = profile_model(ir.load_model(model), tgt, input_shapes=shapes, runs=runs)
    after = profile_model(ir.load_model(other), tgt, input_shapes=shapes, runs=runs) if other else None
    click.echo(f"target {tgt.describe()}, {runs} runs, per-node medians")
    click.echo(op_table(before, after))
    click.echo(f"slowest nodes{' (before)' if after else ''}:")
    for n in before.nodes[:top]:
        click.echo(f"  {n.median_us:>10.1f} us  {n.op:16} {n.name}")
    if html_path:
        header = {"model": model, "vs": other or "-", "target": tgt.describe(), **environment()}
        ir.write_text_atomic(html_path, render_html(before, after, title=f"onnxopt profile: {os.path.basename(model)}",
                                                    header=header))
        click.echo(f"html: {html_path}")
    if json_path:
        ir.write_text_atomic(json_path, json.dumps({"before": before.to_json(),
                                                    "after": after.to_json() if after else None}, indent=2))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning errors into one line on stderr and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="onnxopt", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("onnxopt: aborted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"onnxopt: error: {e.format_message()}", err=True)
        return 2
    except OnnxoptError as e:
        click.echo(f"onnxopt: {'verification failed' if e.exit_code == 1 else 'error'}: "
                   f"{str(e).removeprefix('verification failed: ')}", err=True)
        return e.exit_code
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # noqa: BLE001 - never a traceback for the user
        if debug:
            raise
        click.echo(f"onnxopt: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
