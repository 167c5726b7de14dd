"""A small CNN trained on scikit-learn's bundled digits (real data for honest accuracy numbers).

``load_digits`` has 1,797 8x8 grey images of the digits 0-9. They are scaled to [0, 1] and
upsampled (bilinear) to ``size`` x ``size`` (32 by default) so that perforation has positions
to skip. The split is stratified and seeded: 1,197 training and 600 test images.

    conv1 3x3 1->16, ReLU                 32x32
    conv2 3x3 16->32, ReLU, MaxPool 2     32x32 -> 16x16
    conv3 3x3 32->64, ReLU, MaxPool 2     16x16 -> 8x8
    fc 64*8*8 -> 10

Training (Adam, 10 epochs, batch 32, seeded) takes a few seconds on one CPU core and reaches
about 98% test accuracy. Exported ONNX convs are named ``conv1``, ``conv2``, ``conv3``.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

TEST_SIZE = 600


def load_data(size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): float32 [N, 1, size, size] in [0, 1], int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.numpy()
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in range(10):  # stratified: the same share of every class in the test set
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, round(len(idx) * TEST_SIZE / len(y)), replace=False)] = True
    return x[~test], y[~test], x[test], y[test]


class DigitsCNN(nn.Module):
    def __init__(self, size: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (size // 4) ** 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc(torch.flatten(x, 1))


def train(size: int = 32, epochs: int = 10, seed: int = 0, batch: int = 32) -> tuple[DigitsCNN, float]:
    """Train under a fixed seed; returns the model (eval mode) and its test accuracy."""
    x_train, y_train, x_test, y_test = load_data(size, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN(size)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(xt), generator=gen).split(batch):
                opt.zero_grad()
                F.cross_entropy(model(xt[idx]), yt[idx]).backward()
                opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    return model, acc


def export(model: DigitsCNN, size: int = 32, path=None) -> onnx.ModelProto:
    """ONNX (opset 17, dynamic batch) with the convs named conv1..conv3."""
    from .export import export_onnx

    proto = export_onnx(model, torch.zeros(1, 1, size, size), path=None, dynamic_batch=True)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    for i, n in enumerate(convs, 1):
        n.name = f"conv{i}"
    if path is not None:
        onnx.save_model(proto, str(path))
    return proto
