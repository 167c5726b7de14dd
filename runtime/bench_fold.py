"""Benchmark: node count after ``onnxopt.apply(passes=["fold"])`` vs ``onnxslim.slim`` on the same files.

    python -m onnxopt.runtime.bench_fold [--quick]

Nets: a WeightAlign CIFAR ResNet-20 (and its WS and scaled-WS variants) and BN ResNet-18/50, each
exported with the torchscript exporter (opset 17, ``do_constant_folding=False`` so BN and the
weight chains stay in the graph) and the dynamo exporter (opset 18, ``optimize=False`` for the
same reason; with its optimizer on, dynamo already folds them). Prints, per model and exporter:
nodes in the original / after onnxslim / after onnxopt fold, each result's max error relative to
the original's output magnitude, and the fold pass's own time.
"""
from __future__ import annotations

import argparse
import io
import logging
import warnings

import onnx
import torch
from torch import nn

import onnxopt
from onnxopt import ir


def build_models() -> dict:
    from onnxopt.models import resnet18, resnet50, weightalign_resnet

    return {
        "resnet18": resnet18, "resnet50": resnet50,
        "weightalign_resnet20": lambda: weightalign_resnet(variant="weightalign"),
        "ws_resnet20": lambda: weightalign_resnet(variant="ws"),
        "scaled_ws_resnet20": lambda: weightalign_resnet(variant="scaled_ws"),
    }


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, as after training (fresh ones would make BN nearly the identity)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return model.eval()


def export(model: nn.Module, x: torch.Tensor, exporter: str) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            proto = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, optimize=False,
                                      verbose=False).model_proto
        else:
            f = io.BytesIO()
            torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, do_constant_folding=False)
            proto = onnx.load_from_string(f.getvalue())
    return ir.fit_ir_version(proto)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip ResNet-50")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    import onnxslim

    builders = build_models()
    print(f"onnxslim {onnxslim.__version__}; errors on onnxruntime CPU, same random input for all")
    head = f"{'model':22}{'exporter':12}{'original':>9}{'onnxslim':>9}{'fold':>6}{'slim rel err':>14}" \
           f"{'fold rel err':>14}{'fold s':>8}  fold summary"
    print(head)
    print("-" * len(head))
    worse = []
    for name, build in builders.items():
        if args.quick and name == "resnet50":
            continue
        torch.manual_seed(0)
        model = randomise_bn(build())
        size = 32 if "resnet20" in name else 224
        x = torch.randn(1, 3, size, size)
        for exporter in ("torchscript", "dynamo"):
            original = export(model, x, exporter)
            feeds = {original.graph.input[0].name: x.numpy()}
            slim = onnxslim.slim(onnx.ModelProto.FromString(original.SerializeToString()))
            slim_err = onnxopt.verify(original, ir.fit_ir_version(slim), inputs=feeds).max_rel
            folded, report = onnxopt.apply(original, passes=["fold"], inputs=feeds)
            fold_err = onnxopt.verify(original, folded, inputs=feeds).max_rel
            res = report.passes[0]
            n0, ns, nf = len(original.graph.node), len(slim.graph.node), len(folded.graph.node)
            if nf > ns or fold_err > 1e-5:
                worse.append(f"{name}/{exporter}")
            print(f"{name:22}{exporter:12}{n0:>9}{ns:>9}{nf:>6}{slim_err:>14.2e}{fold_err:>14.2e}"
                  f"{res.seconds:>8.3f}  {res.summary}")
    print("target (fold nodes <= onnxslim nodes, rel err <= 1e-5):", "met" if not worse else f"MISSED: {worse}")


if __name__ == "__main__":
    main()
