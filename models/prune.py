"""Zero channels the way structured-sparsity training leaves them, so the strip pass has real inputs.

The primitive is :func:`zero_channels` on a Conv2d and the BatchNorm2d after it. ``mode="exact"``
is what SSL leaves (filter, conv bias and BN gamma exactly zero; beta zero unless ``keep_beta``);
``mode="near"`` is what network slimming leaves (filter, conv bias and gamma multiplied by
``scale``, default 1e-6, so small but not zero; beta kept unless ``keep_beta=False``). The
higher-level helpers pick channels with a seeded generator, apply the primitive to every layer
they name, and return ``{conv module name: sorted zeroed indices}``. :func:`zero_residual_stage`
is coupled: it zeroes the same indices in every producer of one residual stream, so the channel is
dead across the whole sum; the others zero independent random channels per layer.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

Zeroed = dict[str, list[int]]


def zero_channels(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, indices: Iterable[int], *, mode: str = "exact",
                  keep_beta: bool | None = None, scale: float = 1e-6) -> list[int]:
    """Zero (``exact``) or shrink by ``scale`` (``near``) output channels ``indices`` of ``conv`` and ``bn``.

    ``keep_beta`` defaults to False in exact mode and True in near mode. Returns the sorted indices.
    """
    if mode not in ("exact", "near"):
        raise ValueError(f"mode must be 'exact' or 'near', got {mode!r}")
    idx = sorted({int(i) for i in indices})
    factor = 0.0 if mode == "exact" else scale
    keep_beta = mode == "near" if keep_beta is None else keep_beta
    with torch.no_grad():
        conv.weight[idx] *= factor
        if conv.bias is not None:
            conv.bias[idx] *= factor
        if bn is not None:
            bn.weight[idx] *= factor
            if not keep_beta:
                bn.bias[idx] = 0.0
    return idx


def pick_channels(channels: int, fraction: float, generator: torch.Generator) -> list[int]:
    """``round(fraction * channels)`` distinct channel indices drawn with ``generator``, sorted."""
    count = int(round(fraction * channels))
    return sorted(torch.randperm(channels, generator=generator)[:count].tolist())


def conv_bn_pairs(model: nn.Module) -> Iterator[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]]:
    """Every Conv2d with the BatchNorm2d registered right after it (None if the next module is not one)."""
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    for i, (name, m) in enumerate(modules):
        if not isinstance(m, nn.Conv2d):
            continue
        nxt = modules[i + 1][1] if i + 1 < len(modules) else None
        bn = nxt if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels else None
        yield name, m, bn


def _zero_layers(model: nn.Module, layers: Sequence[tuple[nn.Conv2d, nn.BatchNorm2d | None]], fraction: float,
                 seed: int, **kwargs) -> Zeroed:
    names = {id(m): n for n, m in model.named_modules()}
    gen = torch.Generator().manual_seed(seed)
    out: Zeroed = {}
    for conv, bn in layers:
        out[names[id(conv)]] = zero_channels(conv, bn, pick_channels(conv.out_channels, fraction, gen), **kwargs)
    return out


def zero_block_inner(model: nn.Module, fraction: float, seed: int = 0, **kwargs) -> Zeroed:
    """Zero ``fraction`` of the inner channels of every residual block (conv1/bn1, and conv2/bn2 of a bottleneck).

    Works on the CIFAR ResNets, ResNet-18/50 and ShiftNet: any module with ``conv1/bn1`` and a
    ``shortcut`` or ``downsample`` attribute is a block; ``conv2`` counts as inner when a ``conv3``
    follows it. Keyword arguments go to :func:`zero_channels`.
    """
    layers = []
    for block in _blocks(model):
        layers.append((block.conv1, block.bn1))
        if hasattr(block, "conv3"):
            layers.append((block.conv2, block.bn2))
    return _zero_layers(model, layers, fraction, seed, **kwargs)


def zero_bottleneck_inner(resnet50: nn.Module, fraction: float, seed: int = 0, **kwargs) -> Zeroed:
    """Zero the same ``fraction`` of each bottleneck's inner channels (conv1/bn1 and conv2/bn2), random indices."""
    return zero_block_inner(resnet50, fraction, seed, **kwargs)


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if hasattr(m, "conv1") and hasattr(m, "bn1") and (hasattr(m, "shortcut") or hasattr(m, "downsample"))]


def zero_vgg(vgg: nn.Module, fraction: float, seed: int = 0, **kwargs) -> Zeroed:
    """Zero ``fraction`` of the output channels of every conv in ``vgg.features`` but the last."""
    layers = [(conv, bn) for _, conv, bn in conv_bn_pairs(vgg.features)][:-1]
    return _zero_layers(vgg, layers, fraction, seed, **kwargs)


def zero_mobilenet_expansion(mbv2: nn.Module, fraction: float, seed: int = 0, include_depthwise: bool = False,
                             **kwargs) -> Zeroed:
    """Zero ``fraction`` of each inverted residual's expansion (1x1 conv) channels.

    With ``include_depthwise`` the depthwise conv/BN after it is zeroed at the same indices
    (the returned dict then names both convs with the same list).
    """
    names = {id(m): n for n, m in mbv2.named_modules()}
    gen = torch.Generator().manual_seed(seed)
    out: Zeroed = {}
    for block in (m for m in mbv2.modules() if hasattr(m, "use_res") and len(m.conv) == 4):
        expand, depthwise = block.conv[0], block.conv[1]
        idx = pick_channels(expand[0].out_channels, fraction, gen)
        out[names[id(expand[0])]] = zero_channels(expand[0], expand[1], idx, **kwargs)
        if include_depthwise:
            out[names[id(depthwise[0])]] = zero_channels(depthwise[0], depthwise[1], idx, **kwargs)
    return out


def residual_producers(resnet: nn.Module, stage: int) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every Conv→BN pair that writes into the residual stream of ``layer{stage}`` (1-based).

    That is each block's last conv/BN, each block's shortcut (or downsample) conv/BN, and, where the
    stage's first block has an identity shortcut, the stem (``conv1/bn1``) whose output feeds the sum.
    """
    blocks = list(getattr(resnet, f"layer{stage}"))
    pairs = [_last_conv_bn(b) for b in blocks]
    pairs += [(s[0], s[1]) for s in map(_shortcut, blocks) if s is not None]
    if _shortcut(blocks[0]) is None:
        if stage != 1:
            raise ValueError(f"layer{stage} starts with an identity shortcut: its stream comes from layer{stage - 1}")
        pairs.append((resnet.conv1, resnet.bn1))
    return pairs


def _last_conv_bn(block: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return (block.conv3, block.bn3) if hasattr(block, "conv3") else (block.conv2, block.bn2)


def _shortcut(block: nn.Module) -> nn.Sequential | None:
    """The block's projection shortcut (conv, BN), or None for an identity (an empty Sequential is falsy)."""
    return getattr(block, "shortcut", None) or getattr(block, "downsample", None) or None


def zero_residual_stage(resnet: nn.Module, stage: int, fraction: float, seed: int = 0, **kwargs) -> Zeroed:
    """Coupled zeroing: the same ``fraction`` of channels in every producer of ``layer{stage}``'s residual stream.

    For the CIFAR ResNets, ShiftNet and ResNet-18/50 (see :func:`residual_producers`). Every returned
    list is the same; in exact mode with beta zeroed those channels are zero throughout the stage.
    """
    pairs = residual_producers(resnet, stage)
    gen = torch.Generator().manual_seed(seed)
    idx = pick_channels(pairs[0][0].out_channels, fraction, gen)
    names = {id(m): n for n, m in resnet.named_modules()}
    return {names[id(conv)]: zero_channels(conv, bn, idx, **kwargs) for conv, bn in pairs}


def zero_random_channels(model: nn.Module, fraction: float, seed: int = 0, **kwargs) -> Zeroed:
    """Zero independent random ``fraction`` of the output channels of every non-grouped Conv2d (and its BN).

    Ignores coupling on purpose: channels in residual or concat groups end up zero in one producer
    only, which is the non-uniform pattern a correct strip pass must leave alone.
    """
    layers = [(conv, bn) for _, conv, bn in conv_bn_pairs(model) if conv.groups == 1]
    return _zero_layers(model, layers, fraction, seed, **kwargs)
