"""The ``onnxopt`` command line: apply, inspect, verify.

Exit codes: 0 success; 1 verification failed (nothing written); 2 bad input or usage (one line on
stderr, nothing written); 3 an internal error (a bug: one line, ``--debug`` shows the traceback).
"""
from __future__ import annotations

import json
import logging
import sys

import click

from . import api
from .errors import OnnxoptError
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
@shape_option
@rtol_option
def apply_cmd(model, output, passes, report_path, inputs, input_shapes, rtol):
    """Optimise MODEL, verify it against the original, write the result."""
    out = output or str(api.default_output(model))
    _, report = api.apply(model, passes=_parse_list(passes), output=out, inputs=inputs,
                          input_shapes=_parse_shapes(input_shapes), rtol=rtol, report_path=report_path)
    click.echo(f"onnxopt apply: {model} -> {out}")
    click.echo(report.summary())
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
