"""Benchmark of the strip pass (not a test: run ``python tests/bench_strip.py [--quick]``).

For each case, side by side in one run: the sparsity-trained export (channels zeroed), our
stripped model, the same network built narrow, and onnx-simplifier's ``apply_structured_pruning``
(uniform 50% filter-norm pruning). onnxruntime on one thread (intra and inter op), all graph
optimisations, warm-up, then interleaved rounds (each round runs every model once, in rotating
order) so drift on a noisy machine cancels; median ms per model. ``strip/narrow`` is the ratio of
medians (target <= 1.05); errors are max |diff| / max |reference| against the zeroed original.

Cases: ResNet-50 with half of every bottleneck's inner channels zeroed; VGG-16 with half the
channels of every conv but the last zeroed; MobileNetV2 with half of every expansion zeroed; a
ResNet-50 whose residual-stream channels are zeroed coupled (every producer of each stage's sum).
The networks are built here (``onnxopt.models`` is used instead once it is importable).
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import onnxopt


# --- networks, with width parameters ------------------------------------------------------------

def _cbr(cin, cout, k=3, stride=1, groups=1, act=True, act_cls=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act_cls(inplace=True)) if act else nn.Sequential(*layers)


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride, inner, out):
        super().__init__()
        self.c1, self.c2, self.c3 = _cbr(cin, inner, 1), _cbr(inner, inner, 3, stride), _cbr(inner, out, 1, act=False)
        self.down = _cbr(cin, out, 1, stride, act=False) if stride != 1 or cin != out else None

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        return torch.relu(self.c3(self.c2(self.c1(x))) + idt)


class ResNet50(nn.Module):
    def __init__(self, inner_width=1.0, stream_width=1.0, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for planes, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            out = int(planes * 4 * stream_width)
            for i in range(n):
                blocks.append(Bottleneck(cin, planes, stride if i == 0 else 1, int(planes * inner_width), out))
                cin = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """VGG-16 features; classifier on globally pooled features (the 25088x4096 FC is left out)."""

    def __init__(self, width=1.0, classes=1000):
        super().__init__()
        layers, cin = [], 3
        convs = [c for c in VGG16_CFG if c != "M"]
        k = 0
        for c in VGG16_CFG:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            k += 1
            cout = c if k == len(convs) else int(c * width)
            layers.append(_cbr(cin, cout))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(cin, 4096), nn.ReLU(inplace=True), nn.Linear(4096, classes))

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, hidden):
        super().__init__()
        self.expand = _cbr(cin, hidden, 1, act_cls=nn.ReLU6) if hidden != cin else None
        self.dw = _cbr(hidden, hidden, 3, stride, groups=hidden, act_cls=nn.ReLU6)
        self.project = _cbr(hidden, cout, 1, act=False)
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.dw(self.expand(x) if self.expand is not None else x))
        return x + y if self.res else y


class MobileNetV2(nn.Module):
    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, expand_width=1.0, classes=1000):
        super().__init__()
        layers, cin = [_cbr(3, 32, 3, 2, act_cls=nn.ReLU6)], 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                hidden = cin * t if t == 1 else int(cin * t * expand_width)
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, hidden))
                cin = c
        layers.append(_cbr(cin, 1280, 1, act_cls=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


# --- zeroing (what SSL leaves: filter, gamma and beta exactly zero) ------------------------------

def _zero(seq, idx):
    with torch.no_grad():
        seq[0].weight[idx] = 0
        seq[1].weight[idx] = 0
        seq[1].bias[idx] = 0


def _half(n, rng):
    return sorted(rng.choice(n, n // 2, replace=False).tolist())


def _randomize(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return net.eval()


def zero_resnet_inner(net, rng):
    for b in net.blocks:
        _zero(b.c1, _half(b.c1[0].out_channels, rng))
        _zero(b.c2, _half(b.c2[0].out_channels, rng))


def zero_resnet_stream(net, rng):
    stage, idx = None, None
    for b in net.blocks:
        if b.down is not None:  # a new stage begins: new stream, new coupled indices
            idx = _half(b.c3[0].out_channels, rng)
            _zero(b.down, idx)
        _zero(b.c3, idx)


def zero_vgg(net, rng):
    convs = [m for m in net.features if isinstance(m, nn.Sequential)]
    for seq in convs[:-1]:
        _zero(seq, _half(seq[0].out_channels, rng))


def zero_mbv2(net, rng):
    for m in net.features:
        if isinstance(m, InvertedResidual) and m.expand is not None:
            _zero(m.expand, _half(m.expand[0].out_channels, rng))


# --- measurement ---------------------------------------------------------------------------------

def export(net, size):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.randn(1, 3, size, size), f, dynamo=False, opset_version=17)
    m = onnx.load_from_string(f.getvalue())
    return onnxopt.ir.fit_ir_version(m) if hasattr(onnxopt, "ir") else m


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def rel_err(ref, got):
    if got is None or got.shape != ref.shape:
        return float("nan")
    return float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-12))


def onnxsim_prune(model):
    try:
        import onnxsim
        return onnxsim.apply_structured_pruning(model, sparsity=0.5), ""
    except Exception as e:  # noqa: BLE001 - the peer may refuse a model; report why
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"


def bench_case(name, zeroed_net, narrow_net, size, rounds, warmup):
    t0 = time.perf_counter()
    zeroed, narrow = export(zeroed_net, size), export(narrow_net, size)
    stripped, report = onnxopt.apply(zeroed, passes=["strip"], input_shapes={})
    sim, sim_note = onnxsim_prune(zeroed)
    models = {"zeroed": zeroed, "strip": stripped, "narrow": narrow}
    if sim is not None:
        models["onnxsim"] = sim
    sessions = {k: session(m) for k, m in models.items()}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    outs = {k: s.run(None, feeds[k])[0] for k, s in sessions.items()}
    for _ in range(warmup):
        for k, s in sessions.items():
            s.run(None, feeds[k])
    times = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            t = time.perf_counter()
            sessions[k].run(None, feeds[k])
            times[k].append((time.perf_counter() - t) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = report.passes[0]
    print(f"\n{name}  ({size}x{size}, {rounds} interleaved rounds, setup {time.perf_counter() - t0:.0f}s)")
    print(f"  strip: {res.summary}; pass took {res.seconds:.2f}s")
    print(f"  {'model':10}{'median ms':>11}{'vs narrow':>11}{'params':>10}{'max rel err':>13}")
    for k in ("zeroed", "strip", "narrow", "onnxsim"):
        if k not in med:
            print(f"  {k:10}{'-':>11}{'-':>11}{'-':>10}{'-':>13}   {sim_note}")
            continue
        params = onnxopt.cost.count_params(models[k])
        err = rel_err(outs["zeroed"], outs[k]) if k in ("strip", "onnxsim") else float("nan")
        err_s = f"{err:.2e}" if not np.isnan(err) else "-"
        print(f"  {k:10}{med[k]:>11.2f}{med[k] / med['narrow']:>11.3f}{params / 1e6:>9.2f}M{err_s:>13}")
    ratio = med["strip"] / med["narrow"]
    print(f"  strip/narrow = {ratio:.3f}  ({'OK' if ratio <= 1.05 else 'over 5%'})")
    return ratio


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="112x112 inputs, fewer rounds")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    size = 112 if args.quick else 224
    rounds = args.rounds or (7 if args.quick else 15)
    warmup = 2 if args.quick else 3
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    try:
        import onnxopt.models  # noqa: F401  (switch the builders over once it is merged)
    except ImportError:
        pass
    print(f"onnxruntime {ort.__version__}, 1 thread, ORT_ENABLE_ALL; medians; errors vs the zeroed model")
    cases = []

    def resnet_inner():
        z = _randomize(ResNet50())
        zero_resnet_inner(z, rng)
        return z, _randomize(ResNet50(inner_width=0.5))

    def vgg():
        z = _randomize(VGG16())
        zero_vgg(z, rng)
        return z, _randomize(VGG16(width=0.5))

    def mbv2():
        z = _randomize(MobileNetV2())
        zero_mbv2(z, rng)
        return z, _randomize(MobileNetV2(expand_width=0.5))

    def resnet_stream():
        z = _randomize(ResNet50())
        zero_resnet_stream(z, rng)
        return z, _randomize(ResNet50(stream_width=0.5))

    for name, build in (("ResNet-50, half of every bottleneck's inner channels zeroed", resnet_inner),
                        ("VGG-16, half of every conv's channels but the last zeroed", vgg),
                        ("MobileNetV2, half of every expansion zeroed", mbv2),
                        ("ResNet-50, half of each stage's residual stream zeroed (coupled)", resnet_stream)):
        zeroed, narrow = build()
        cases.append((name, bench_case(name, zeroed, narrow, size, rounds, warmup)))
    print("\nsummary (strip/narrow, target <= 1.05):")
    for name, r in cases:
        print(f"  {r:6.3f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
