"""Build the bundled example models: ``python -m onnxopt.models.make_examples OUTDIR``.

``resnet20_pruned.onnx``: a CIFAR ResNet-20 (width 16, seed 0) as structured-sparsity training
leaves it: half of every block's inner (conv1) channels exactly zero (filter, BN gamma and beta),
and a quarter of the channels of the second stage's residual stream zeroed in every producer of
that stream (coupled), exported with the TorchScript exporter at opset 17 for 1x3x32x32 inputs with
a dynamic batch axis. Fixed seeds make the file reproducible; a JSON sidecar lists the zeroed
indices per conv.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .cifar_resnet import resnet20
from .export import export_onnx
from .prune import zero_block_inner, zero_residual_stage

EXAMPLES = ("resnet20_pruned",)


def resnet20_pruned(outdir: Path) -> Path:
    """Write ``resnet20_pruned.onnx`` and ``resnet20_pruned.zeroed.json`` into ``outdir``; return the model path."""
    model = resnet20(num_classes=10, width=16, seed=0)
    zeroed = zero_block_inner(model, 0.5, seed=1, mode="exact", keep_beta=False)
    zeroed.update(zero_residual_stage(model, 2, 0.25, seed=2, mode="exact", keep_beta=False))
    path = outdir / "resnet20_pruned.onnx"
    example = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    export_onnx(model, example, path, exporter="torchscript", opset=17, dynamic_batch=True)
    (outdir / "resnet20_pruned.zeroed.json").write_text(json.dumps(zeroed, indent=1, sort_keys=True) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Build every example into the folder named by the single argument (created if missing)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m onnxopt.models.make_examples OUTDIR\n")
        return 2
    outdir = Path(args[0])
    outdir.mkdir(parents=True, exist_ok=True)
    for path in (resnet20_pruned(outdir),):
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
