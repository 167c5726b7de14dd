"""AlexNet-style net (Krizhevsky et al. 2012, one-tower layout as in torchvision).

Five convs: 11x11/4, 5x5, then three 3x3, with 3x3/2 max pools after the first, second and fifth;
adaptive average pool to ``pool_size`` squared, then three FC layers with dropout. ``width``
multiplies every conv width (64, 192, 384, 256, 256) and ``hidden`` sets the FC width, so a small
variant runs on 64x64 inputs. No BatchNorm: the convs carry biases. Convs are ``features[i]``.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import init_weights, scaled, seeded

CONV_WIDTHS = (64, 192, 384, 256, 256)


class AlexNet(nn.Module):
    """Five conv-ReLU layers with three max pools, adaptive average pool, three FC layers."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, pool_size: int = 6, hidden: int = 4096):
        super().__init__()
        c1, c2, c3, c4, c5 = (scaled(c, width) for c in CONV_WIDTHS)
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(c5 * pool_size * pool_size, hidden), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def alexnet(num_classes: int = 1000, width: float = 1.0, pool_size: int = 6, hidden: int = 4096,
            seed: int | None = 0) -> AlexNet:
    """AlexNet; ``width=0.25, pool_size=1, hidden=256`` give a small net that runs on 64x64 inputs."""
    return seeded(seed, lambda: AlexNet(num_classes, width, pool_size, hidden))
