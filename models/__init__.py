"""PyTorch reference CNNs, structured-pruning helpers and ONNX export for onnxopt's tests and benchmarks.

Builders return a seeded net in eval mode; ``BUILDERS`` maps the names the CLI and benchmarks use
to them. The pruning helpers (:mod:`.prune`) zero channels the way sparsity training leaves them,
:func:`export_onnx` turns a net into a self-contained ModelProto, and :mod:`.make_examples` builds
the bundled example models under ``examples/``. Importing this package needs torch.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .alexnet import AlexNet, alexnet
from .cifar_resnet import CifarResNet, resnet20, resnet56
from .export import export_onnx
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .prune import (conv_bn_pairs, pick_channels, residual_producers, zero_block_inner, zero_bottleneck_inner,
                    zero_channels, zero_mobilenet_expansion, zero_random_channels, zero_residual_stage, zero_vgg)
from .resnet import ResNet, resnet18, resnet50
from .shiftnet import Shift, ShiftNet, shiftnet
from .shufflenetv2 import ShuffleNetV2, channel_shuffle, shufflenetv2
from .vgg import VGG, vgg16
from .weightalign import NormalizedConv2d, WeightAlignResNet, weightalign_resnet

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "alexnet": alexnet,
    "mobilenetv2": mobilenetv2,
    "shufflenetv2": shufflenetv2,
    "shiftnet": shiftnet,
    "weightalign_resnet": weightalign_resnet,
}

__all__ = [
    "BUILDERS", "AlexNet", "CifarResNet", "MobileNetV2", "NormalizedConv2d", "ResNet", "Shift", "ShiftNet",
    "ShuffleNetV2", "VGG", "WeightAlignResNet", "alexnet", "channel_shuffle", "conv_bn_pairs", "export_onnx",
    "mobilenetv2", "pick_channels", "residual_producers", "resnet18", "resnet20", "resnet50", "resnet56",
    "shiftnet", "shufflenetv2", "vgg16", "weightalign_resnet", "zero_block_inner", "zero_bottleneck_inner",
    "zero_channels", "zero_mobilenet_expansion", "zero_random_channels", "zero_residual_stage", "zero_vgg",
]
