"""AM-SegNet (seed 002 §2.1, Fig. 1): an encoder-decoder built from a lightweight squeeze/expand
convolution block, standard convolutions at the last encoder stage, and an attention gate there.

- Lightweight block (seed 002 §2.1, Fig. 1(b)): a squeeze conv (1x1) down to n1 channels, then an
  expand module of (1) a separable conv (depthwise 3x3 + pointwise 1x1), (2) a residual 1x1 conv and
  (3) an expand 3x3 conv, whose outputs are concatenated, "increasing the channel number from n1 to
  4 x n1" (the separable conv gives 2 n1, the other two n1 each).
- "In the last encoder step, standard convolutional layers are retained."
- Attention gate (seed 002 Eq. 1-2): x' = x * alpha, alpha = sigma_2(phi(sigma_1(theta(x) + theta(g)))),
  theta and phi 1x1 convs, sigma_1 ReLU, sigma_2 sigmoid; it gates the skip features of the last
  encoder stage with the bottleneck's features g.
- Loss: Dice plus categorical focal loss (seed 002 §3.1, ref. [44]); see losses.py.

For the checkpoint ensemble with feature reuse (seed 000 Eq. 14) the trunk is the encoder and the
decoder up to the last skip concatenation; each head S_i is the last decoder block and the 1x1
classifier, at full resolution.

Two layouts (`AmSegNetConfig.layout`):
- "paper": seed 002's network as its reference implementation builds it (facts read from the
  authors' published notebook, code ours): with n filters (12 there), four light blocks of 4n, 8n,
  16n and 32n channels, each followed by max pooling; at 1/16 three standard convs of 64n; the
  attention gate at that last encoding stage, gating the first of them with the third (Eq. 1-2),
  batch-normalised and added back to the third; a decoder of standard convs (16n, 8n, 4n, each
  followed by a plain 3x3 conv, and 2n at full resolution) on nearest x2 upsampling and skip
  concatenation; a 1x1 classifier with batch norm on its logits. In its light blocks the squeeze
  conv has no batch norm and the depth-wise conv doubles the channels (depth multiplier 2). About
  16 M parameters at n = 12 (Table 2: 1.63e7).
- "small" (the box's CPU default): a level fewer (three light blocks, two standard convs at 1/8),
  16 to 128 channels (about 1/70 of the parameters), the attention gate on the last skip instead
  of at the bottleneck, light blocks in the decoder and no batch norm on the logits: each choice
  cuts compute on the full-resolution bed where the paper's 256x512 X-ray frames did not need to.

Measured against each other (quantize/scripts/measure-am-segnet-layouts.sh: the same 160 synthetic
layers at 256 px, seed, loss and 12 epochs, 3 members): "paper" 17.5 M parameters (3 heads), 23.6
min of training, MIoU 0.629 on the test split and 0.471 on the second generator, super-elevation
IoU 0.43 and streaking 0.15; "small" 0.24 M, 4.1 min, MIoU 0.576 and 0.491, super-elevation and
streaking 0.00. At this budget the departures cost the two small classes; the faithful network
costs 4x the inference time (359 against 90 ms per 256x256 layer in onnxruntime, both timed on a
machine busy with other training: read the ratio, not the times).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .blocks import ConvBNReLU, up2


@dataclass
class AmSegNetConfig:
    in_channels: int = 1
    num_classes: int = 6
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)  # "small": encoder stages 1-3 (light blocks), 4 (standard)
    layout: str = "small"  # "small" or "paper" (the module docstring)
    filters: int = 12  # "paper": n, the reference's filter_num

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AmSegNetConfig":
        fields = cls.__dataclass_fields__
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


class LightBlock(nn.Module):
    """Squeeze/expand block (seed 002 Fig. 1(b)); cout must be a multiple of 4 (= 4 n1). `paper`:
    the reference's squeeze conv without batch norm and depth-wise conv with depth multiplier 2."""

    def __init__(self, cin: int, cout: int, paper: bool = False):
        super().__init__()
        if cout % 4:
            raise ValueError(f"AM-SegNet block width {cout} must be a multiple of 4")
        n1 = cout // 4
        if paper:
            self.squeeze = nn.Sequential(nn.Conv2d(cin, n1, 1), nn.ReLU(inplace=True))
            self.separable = nn.Sequential(
                nn.Conv2d(n1, 2 * n1, 3, padding=1, groups=n1),  # depth-wise, multiplier 2
                ConvBNReLU(2 * n1, 2 * n1, 1),  # point-wise
            )
        else:
            self.squeeze = ConvBNReLU(cin, n1, 1)
            self.separable = nn.Sequential(
                ConvBNReLU(n1, n1, 3, groups=n1, relu=False),  # depth-wise
                ConvBNReLU(n1, 2 * n1, 1),  # point-wise
            )
        self.residual = ConvBNReLU(n1, n1, 1)
        self.expand = ConvBNReLU(n1, n1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.separable(s), self.residual(s), self.expand(s)], dim=1)


class AttentionGate(nn.Module):
    """seed 002 Eq. 1-2."""

    def __init__(self, x_channels: int, g_channels: int, inter: int):
        super().__init__()
        self.theta_x = nn.Conv2d(x_channels, inter, 1)
        self.theta_g = nn.Conv2d(g_channels, inter, 1)
        self.phi = nn.Conv2d(inter, 1, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.phi(torch.relu(self.theta_x(x) + self.theta_g(g))))  # Eq. 2
        return x * alpha  # Eq. 1


class AmSegNetTrunk(nn.Module):
    def __init__(self, cfg: AmSegNetConfig):
        super().__init__()
        w1, w2, w3, w4 = cfg.widths
        self.enc1 = LightBlock(cfg.in_channels, w1)
        self.enc2 = LightBlock(w1, w2)
        self.enc3 = LightBlock(w2, w3)
        self.pool = nn.MaxPool2d(2)
        self.enc4 = nn.Sequential(ConvBNReLU(w3, w4, 3), ConvBNReLU(w4, w4, 3))  # standard convs
        self.gate = AttentionGate(w3, w4, max(4, w3 // 2))
        self.dec3 = LightBlock(w4 + w3, w3)
        self.dec2 = LightBlock(w3 + w2, w2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # 1
        e2 = self.enc2(self.pool(e1))  # 1/2
        e3 = self.enc3(self.pool(e2))  # 1/4
        bottleneck = self.enc4(self.pool(e3))  # 1/8
        g = up2(bottleneck, "nearest")
        d3 = self.dec3(torch.cat([g, self.gate(e3, g)], dim=1))  # attention-gated skip
        d2 = self.dec2(torch.cat([up2(d3, "nearest"), e2], dim=1))
        return torch.cat([up2(d2, "nearest"), e1], dim=1)


class AmSegNetHead(nn.Module):
    def __init__(self, cfg: AmSegNetConfig):
        super().__init__()
        w1, w2 = cfg.widths[0], cfg.widths[1]
        self.dec1 = LightBlock(w2 + w1, w1)
        self.classify = nn.Conv2d(w1, cfg.num_classes, 1)

    def forward(self, features: torch.Tensor, return_aux: bool = False):
        logits = self.classify(self.dec1(features))
        return (logits, {}) if return_aux else logits


class PaperTrunk(nn.Module):
    """The "paper" layout's encoder, bottleneck and decoder up to the last skip concatenation."""

    def __init__(self, cfg: AmSegNetConfig):
        super().__init__()
        n = cfg.filters
        self.pool = nn.MaxPool2d(2)
        self.enc = nn.ModuleList([LightBlock(cin, cout, paper=True) for cin, cout in ((cfg.in_channels, 4 * n), (4 * n, 8 * n), (8 * n, 16 * n), (16 * n, 32 * n))])
        self.bottleneck = nn.ModuleList([ConvBNReLU(32 * n, 64 * n, 3), ConvBNReLU(64 * n, 64 * n, 3), ConvBNReLU(64 * n, 64 * n, 3)])
        self.gate = AttentionGate(64 * n, 64 * n, 64 * n)
        self.gate_bn = nn.BatchNorm2d(64 * n)
        # (input channels after the skip concatenation, output channels) of the decoder steps at 1/8, 1/4, 1/2
        steps = ((64 * n + 32 * n, 16 * n), (16 * n + 16 * n, 8 * n), (8 * n + 8 * n, 4 * n))
        self.dec = nn.ModuleList([nn.Sequential(ConvBNReLU(cin, cout, 3), nn.Conv2d(cout, cout, 3, padding=1)) for cin, cout in steps])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        s1 = self.bottleneck[0](x)
        s3 = self.bottleneck[2](self.bottleneck[1](s1))
        y = s3 + self.gate_bn(self.gate(s1, s3))  # Eq. 1-2 at the last encoding stage, added to it
        for step, skip in zip(self.dec, reversed(skips[1:])):
            y = step(torch.cat([up2(y, "nearest"), skip], dim=1))
        return torch.cat([up2(y, "nearest"), skips[0]], dim=1)


class PaperHead(nn.Module):
    """The "paper" layout's last decoder step (2n at full resolution) and the 1x1 classifier with
    batch norm on the logits (the reference's softmax is the fusion's, outside the graph)."""

    def __init__(self, cfg: AmSegNetConfig):
        super().__init__()
        n = cfg.filters
        self.dec1 = ConvBNReLU(8 * n, 2 * n, 3)
        self.classify = nn.Sequential(nn.Conv2d(2 * n, cfg.num_classes, 1), nn.BatchNorm2d(cfg.num_classes))

    def forward(self, features: torch.Tensor, return_aux: bool = False):
        logits = self.classify(self.dec1(features))
        return (logits, {}) if return_aux else logits


class AmSegNet(nn.Module):
    arch = "am-segnet"

    def __init__(self, cfg: AmSegNetConfig):
        super().__init__()
        if cfg.layout not in ("small", "paper"):
            raise ValueError(f"layout {cfg.layout!r}: small or paper")
        self.cfg = cfg
        self.trunk = PaperTrunk(cfg) if cfg.layout == "paper" else AmSegNetTrunk(cfg)
        self.head = PaperHead(cfg) if cfg.layout == "paper" else AmSegNetHead(cfg)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        return self.head(self.trunk(x), return_aux=return_aux)
