"""Benchmark: node count after ``onnxopt.apply(passes=["fold"])`` vs ``onnxslim.slim`` on the same files.

    python tests/bench_fold_vs_onnxslim.py [--quick]

Nets: a WeightAlign CIFAR ResNet-20 (and its WS and scaled-WS variants) and BN ResNet-18/50, each
exported with the torchscript exporter (opset 17, ``do_constant_folding=False`` so BN and the
weight chains stay in the graph) and the dynamo exporter (opset 18, ``optimize=False`` for the
same reason; with its optimizer on, dynamo already folds them). Prints, per model and exporter:
nodes in the original / after onnxslim / after onnxopt fold, each result's max error relative to
the original's output magnitude, and the fold pass's own time. Not collected by pytest.
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


# --- models: onnxopt.models when it is installed, minimal inline versions otherwise ------------------

def _inline_models():
    import torch.nn.functional as F

    class NormalizedConv2d(nn.Conv2d):
        def __init__(self, *a, variant="weightalign", eps=1e-5, **k):
            super().__init__(*a, **k)
            self.variant, self.eps = variant, eps
            self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

        def forward(self, x):
            w = self.weight
            n = w[0].numel()
            mean = w.mean(dim=(1, 2, 3), keepdim=True)
            c = w - mean
            var = c.pow(2).mean(dim=(1, 2, 3), keepdim=True)
            if self.variant == "ws":
                w = c / (torch.sqrt(var * (n / (n - 1))) + self.eps)
            elif self.variant == "scaled_ws":
                w = self.gain * c / torch.sqrt(torch.clamp(var * n, min=self.eps))
            else:
                w = self.gain * c / (n ** 0.5 * torch.sqrt(var + self.eps))
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, conv, norm):
            super().__init__()
            self.c1, self.n1 = conv(cin, cout, 3, stride, 1), norm(cout)
            self.c2, self.n2 = conv(cout, cout, 3, 1, 1), norm(cout)
            self.sc = nn.Sequential() if stride == 1 and cin == cout else \
                nn.Sequential(conv(cin, cout, 1, stride, 0), norm(cout))

        def forward(self, x):
            y = torch.relu(self.n1(self.c1(x)))
            return torch.relu(self.n2(self.c2(y)) + self.sc(x))

    class Bottleneck(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            cout = planes * 4
            self.body = nn.Sequential(nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
                                      nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes),
                                      nn.ReLU(), nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.sc = nn.Sequential() if stride == 1 and cin == cout else \
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + self.sc(x))

    def bn_conv(cin, cout, k, s, p):
        return nn.Conv2d(cin, cout, k, s, p, bias=False)

    def resnet(blocks, bottleneck):
        layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
        for i, n in enumerate(blocks):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                if bottleneck:
                    layers.append(Bottleneck(cin, 64 * 2 ** i, stride))
                    cin = 64 * 2 ** i * 4
                else:
                    layers.append(Block(cin, 64 * 2 ** i, stride, bn_conv, nn.BatchNorm2d))
                    cin = 64 * 2 ** i
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))

    def weightalign_resnet(variant="weightalign"):
        def conv(cin, cout, k, s, p):
            return NormalizedConv2d(cin, cout, k, s, p, bias=k == 3, variant=variant)

        norm = (lambda c: nn.GroupNorm(min(8, c), c)) if variant == "ws" else (lambda c: nn.Identity())
        layers, cin = [conv(3, 16, 3, 1, 1), nn.ReLU()], 16
        for i in range(3):
            for j in range(3):
                layers.append(Block(cin, 16 * 2 ** i, 2 if i > 0 and j == 0 else 1, conv, norm))
                cin = 16 * 2 ** i
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))

    return {
        "resnet18": lambda: resnet([2, 2, 2, 2], False),
        "resnet50": lambda: resnet([3, 4, 6, 3], True),
        "weightalign_resnet20": lambda: weightalign_resnet("weightalign"),
        "ws_resnet20": lambda: weightalign_resnet("ws"),
        "scaled_ws_resnet20": lambda: weightalign_resnet("scaled_ws"),
    }


def build_models() -> tuple[dict, str]:
    try:
        from onnxopt.models import resnet18, resnet50, weightalign_resnet

        return {
            "resnet18": resnet18, "resnet50": resnet50,
            "weightalign_resnet20": lambda: weightalign_resnet(variant="weightalign"),
            "ws_resnet20": lambda: weightalign_resnet(variant="ws"),
            "scaled_ws_resnet20": lambda: weightalign_resnet(variant="scaled_ws"),
        }, "onnxopt.models"
    except ImportError:
        return _inline_models(), "inline definitions"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip ResNet-50")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    import onnxslim

    builders, source = build_models()
    print(f"models from {source}; onnxslim {onnxslim.__version__}; onnxruntime CPU")
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
