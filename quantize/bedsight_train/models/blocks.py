"""Building blocks shared by the architectures. Only ops that export to plain ONNX (Conv, BN folded
into Conv, Relu, pooling, Resize with fixed scales, Concat) so that both onnxruntime and tract run
the graph."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1, relu: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def up2(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """x2 upsampling with a fixed scale (ONNX Resize with scales)."""
    if mode == "nearest":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
