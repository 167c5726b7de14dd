"""Shared building blocks of the reference nets: deterministic initialisation and seeded construction.

Every builder constructs its net under a fixed seed and returns it in eval mode. BatchNorm layers
get random affine parameters and running statistics (not the identity defaults), so that exported
graphs and folded BN carry real numbers and a BN that is silently dropped shows up in parity tests.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, small-normal linears, randomised BatchNorm parameters and statistics."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            randomize_bn(m)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.05)
            nn.init.uniform_(m.bias, -0.1, 0.1)


def randomize_bn(bn: nn.BatchNorm2d) -> None:
    """Gamma in [0.5, 1.5], beta and running mean in [-0.2, 0.2], running variance in [0.5, 1.5]."""
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)


def seeded(seed: int | None, make: Callable[[], M]) -> M:
    """Build ``make()`` under ``torch.manual_seed(seed)`` (global RNG state restored), in eval mode."""
    if seed is None:
        return make().eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().eval()


def scaled(channels: int, mult: float, divisor: int = 1) -> int:
    """``channels * mult`` rounded to a multiple of ``divisor``, at least ``divisor``."""
    return max(divisor, int(round(channels * mult / divisor)) * divisor)
