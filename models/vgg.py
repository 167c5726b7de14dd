"""VGG with BatchNorm (Simonyan & Zisserman 2015): a channel list of 3x3 convs and 2x2 max pools, then FCs.

``cfg`` lists conv widths with ``"M"`` for a max pool (VGG-16's list by default); ``width``
multiplies every conv width. The classifier pools adaptively to ``pool_size`` x ``pool_size`` (7
for the 224x224 original, 1 for small inputs) and has ``hidden`` units in its two hidden FC layers,
so tests can build a tiny VGG-16 that runs on 32x32 inputs. Conv layers are ``features[i]``.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from ._common import init_weights, scaled, seeded

VGG16_CFG: tuple[Union[int, str], ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                          512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """Conv-BN-ReLU features per ``cfg``, adaptive average pool, three-layer classifier with dropout."""

    def __init__(self, cfg: Sequence[Union[int, str]] = VGG16_CFG, num_classes: int = 1000, width: float = 1.0,
                 pool_size: int = 7, hidden: int = 4096):
        super().__init__()
        self.features, out_ch = _features(cfg, width)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Linear(out_ch * pool_size * pool_size, hidden), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(hidden, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _features(cfg: Sequence[Union[int, str]], width: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out_ch = scaled(int(v), width)
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        in_ch = out_ch
    return nn.Sequential(*layers), in_ch


def vgg16(num_classes: int = 1000, width: float = 1.0, pool_size: int = 7, hidden: int = 4096,
          cfg: Sequence[Union[int, str]] = VGG16_CFG, seed: int | None = 0) -> VGG:
    """VGG-16-BN; ``pool_size=1, hidden=512`` (and a small ``width``) give a net for 32x32 inputs."""
    return seeded(seed, lambda: VGG(cfg, num_classes, width, pool_size, hidden))
