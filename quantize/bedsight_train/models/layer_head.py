"""The layer-level classification head of the multi-task network (seed 004: one shared encoder
feeding a segmentation decoder and a classification head, trained together on disjoint data).

It reads the shared trunk's fused encoder features (ISDNet-SR's relation-aware fusion, adjusted to
the first SR module's width, at 1/8 of the input) and returns one logit per layer class: two
strided convs, global average and max pooling (a defect may cover a small part of the layer, which
the average alone would dilute), dropout and a linear layer. Multi-label: each class is its own
sigmoid, trained with binary cross-entropy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBNReLU


@dataclass
class LayerHeadConfig:
    in_channels: int
    num_classes: int
    width: int = 32
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class LayerHead(nn.Module):
    def __init__(self, cfg: LayerHeadConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.body = nn.Sequential(ConvBNReLU(cfg.in_channels, w, 3, stride=2), ConvBNReLU(w, 2 * w, 3, stride=2))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(4 * w, cfg.num_classes)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        y = self.body(encoded)
        pooled = torch.cat([F.adaptive_avg_pool2d(y, 1), F.adaptive_max_pool2d(y, 1)], dim=1).flatten(1)
        return self.fc(self.dropout(pooled))
