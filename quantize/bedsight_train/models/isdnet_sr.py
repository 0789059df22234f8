"""ISDNet-SR: the improved ISDNet of seed 000 §3.1 (Fig. 2).

Feature extraction H (two branches) -> relation-aware feature fusion F -> segmentation head S:

- Shallow branch: the first four stages of STDC (seed 000 §2.1, ref. [32]) on the full-resolution
  image concatenated with its Laplacian high-frequency residual ("high-frequency residuals, computed
  from full-resolution images through Laplacian pyramid, are concatenated with full-resolution
  images as the input to the shallow branch"), output at 1/8 resolution.
- Deep branch: ResNet-18 with DeepLabv3 (dilated last stages and ASPP) on the image downsampled by
  2 instead of 4 (seed 000 §3.1), output at 1/16 resolution.
- Relation-aware fusion (seed 000 Eq. 1-7): channel attention of each branch, a relation matrix
  between their grouped attention weights, feature interaction weights, and a weighted sum with the
  deep features upsampled bilinearly.
- Three x2 super-resolution modules (seed 000 §3.1: nearest x2, conv3x3, BN, ReLU, dropout 0.2,
  conv3x3) replace ISDNet's x8 bilinear upsampling; the last conv gives the K class logits.
- Losses (seed 000 §3.1): cross-entropy on the mask plus an MSE loss for the SR modules. Our SR loss
  reconstructs the (normalised) input image from the last SR module's features through a 1x1 conv,
  as ISDNet's super-resolution loss reconstructs the image; the reconstruction is training-only and
  is not exported. The deep branch's auxiliary head is left out, as seed 000 §3.1 does.

Where the SR modules sit. Seed 000 §3.2.1 splits the network into feature extraction H, fusion F and
segmentation head S, and builds the ensemble from one trunk F(H(x)) and M heads S_i (Eq. 14). The SR
modules come after fusion, so they are part of S. But at CPU-sized widths the three SR modules are
comparable to the whole trunk (the last one runs at full resolution), and M heads of three SR
modules each would cost more than M/2 whole networks. We therefore make the number of SR modules
inside each head a parameter (`head_sr`, 1..3) and default to 1: the first two SR modules (1/8 -> 1/4
-> 1/2) are shared in the trunk and each head S_i is the last SR module, at full resolution, ending
in the K-class conv. With the default widths an ensemble of 5 then costs under 2x one member (the
paper reports 165.1 vs 299.4 GFLOPs at 1024x1024, seed 000 §4.4); `bedsight-train export` prints both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBNReLU, up2


@dataclass
class IsdnetConfig:
    in_channels: int = 1
    num_classes: int = 6
    shallow: tuple[int, int, int] = (16, 32, 64)  # STDC stage widths: stage 1, stage 2, stages 3-4
    deep: tuple[int, int, int, int] = (16, 32, 64, 64)  # ResNet stage widths
    deep_blocks: int = 1  # basic blocks per ResNet stage (ResNet-18 has 2)
    aspp_rates: tuple[int, int, int] = (2, 4, 6)  # DeepLabv3 atrous rates, scaled to the small map
    fuse: int = 64  # channels of F_s and F_d entering the fusion
    groups: int = 8  # k: groups of channel attention weights in the relation matrix (Eq. 2)
    sr: tuple[int, int, int] = (24, 16, 8)  # widths entering SR modules 1, 2, 3
    head_sr: int = 1  # how many of the three SR modules each ensemble head holds (1..3)
    dropout: float = 0.2  # seed 000 §3.1

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "IsdnetConfig":
        fields = cls.__dataclass_fields__
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
        return cls(**kwargs)


def laplacian_residual(x: torch.Tensor) -> torch.Tensor:
    """One level of the Laplacian pyramid: the image minus its blurred, down- and up-sampled copy
    (the high-frequency residual that ISDNet feeds the shallow branch; seed 000 §2.1)."""
    low = F.avg_pool2d(x, 2)
    return x - up2(low, "bilinear")


class StdcModule(nn.Module):
    """Short-Term Dense Concatenate module (STDC, seed 000 ref. [32]): four convs with halving
    widths, their outputs concatenated; with stride 2 a depthwise conv downsamples and the first
    block's output is average-pooled into the concatenation."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        c1, c2, c3, c4 = cout // 2, cout // 4, cout // 8, cout - cout // 2 - cout // 4 - cout // 8
        self.b1 = ConvBNReLU(cin, c1, 1)
        self.stride = stride
        if stride == 2:
            self.down = ConvBNReLU(c1, c1, 3, stride=2, groups=c1, relu=False)
            self.skip = nn.AvgPool2d(3, stride=2, padding=1)
        self.b2 = ConvBNReLU(c1, c2, 3)
        self.b3 = ConvBNReLU(c2, c3, 3)
        self.b4 = ConvBNReLU(c3, c4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.b1(x)
        if self.stride == 2:
            skip, t = self.skip(o1), self.down(o1)
        else:
            skip, t = o1, o1
        o2 = self.b2(t)
        o3 = self.b3(o2)
        o4 = self.b4(o3)
        return torch.cat([skip, o2, o3, o4], dim=1)


class ShallowBranch(nn.Module):
    """STDC stages 1-4 on [x, Laplacian residual]: 1/2, 1/4, 1/8, 1/8."""

    def __init__(self, cfg: IsdnetConfig):
        super().__init__()
        s1, s2, s3 = cfg.shallow
        self.stage1 = ConvBNReLU(2 * cfg.in_channels, s1, 3, stride=2)
        self.stage2 = ConvBNReLU(s1, s2, 3, stride=2)
        self.stage3 = StdcModule(s2, s3, stride=2)
        self.stage4 = StdcModule(s3, s3, stride=1)
        self.out = ConvBNReLU(s3, cfg.fuse, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, laplacian_residual(x)], dim=1)
        return self.out(self.stage4(self.stage3(self.stage2(self.stage1(x)))))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = ConvBNReLU(cin, cout, 3, stride=stride, dilation=dilation)
        self.conv2 = ConvBNReLU(cout, cout, 3, dilation=dilation, relu=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = ConvBNReLU(cin, cout, 1, stride=stride, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv2(self.conv1(x)) + identity)


class Aspp(nn.Module):
    """DeepLabv3's atrous spatial pyramid pooling: 1x1, three atrous 3x3 and image pooling."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int]):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(cin, cout, 1)] + [ConvBNReLU(cin, cout, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = ConvBNReLU(4 * cout, cout, 1)
        self.pool_project = nn.Conv2d(cout, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(torch.cat([b(x) for b in self.branches], dim=1))
        # the image-pooling branch, added by broadcasting (equivalent to upsampling a 1x1 map and
        # projecting it with the others; keeps the graph free of shape-dependent ops)
        return F.relu(y + self.pool_project(self.pool(x)))


class DeepBranch(nn.Module):
    """ResNet-18-style stages with DeepLabv3 dilation (output stride 8) on the image downsampled
    by 2: features at 1/16 of the full resolution."""

    def __init__(self, cfg: IsdnetConfig):
        super().__init__()
        d1, d2, d3, d4 = cfg.deep
        n = cfg.deep_blocks
        self.stem = nn.Sequential(ConvBNReLU(cfg.in_channels, d1, 3, stride=2), nn.MaxPool2d(3, stride=2, padding=1))

        def stage(cin: int, cout: int, stride: int, dilation: int) -> nn.Sequential:
            blocks = [BasicBlock(cin, cout, stride, dilation)] + [BasicBlock(cout, cout, 1, dilation) for _ in range(n - 1)]
            return nn.Sequential(*blocks)

        self.layer1 = stage(d1, d1, 1, 1)
        self.layer2 = stage(d1, d2, 2, 1)
        self.layer3 = stage(d2, d3, 1, 2)
        self.layer4 = stage(d3, d4, 1, 4)
        self.aspp = Aspp(d4, cfg.fuse, cfg.aspp_rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 2)  # the deep branch sees the image at 1/2 (seed 000 §3.1)
        return self.aspp(self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x))))))


class RelationAwareFusion(nn.Module):
    """Relation-aware feature fusion (seed 000 Eq. 1-7)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        if channels % groups:
            raise ValueError(f"fusion channels {channels} must be divisible by groups {groups}")
        self.k, self.r = groups, channels // groups
        hidden = max(4, channels // 4)

        def mlp(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1))

        self.ca_s = mlp(channels, channels)  # Eq. 1, shallow
        self.ca_d = mlp(channels, channels)  # Eq. 1, deep
        self.fi = mlp(groups * groups, 2 * channels)  # Eq. 4, giving w_s^FI and w_d^FI
        self.alpha_s = nn.Parameter(torch.tensor(0.1))  # Eq. 5
        self.alpha_d = nn.Parameter(torch.tensor(0.1))  # Eq. 6
        self.channels = channels

    def forward(self, f_s: torch.Tensor, f_d: torch.Tensor) -> torch.Tensor:
        w_s_ca = self.ca_s(F.adaptive_avg_pool2d(f_s, 1))  # Eq. 1: w^CA = MLP(GAP(F))
        w_d_ca = self.ca_d(F.adaptive_avg_pool2d(f_d, 1))
        g_s = w_s_ca.reshape(-1, self.k, self.r)  # G_s in R^{k x r}
        g_d = w_d_ca.reshape(-1, self.k, self.r)  # G_d in R^{k x r}
        relation = torch.matmul(g_s, g_d.transpose(1, 2))  # Eq. 2-3: R = G_s G_d^T
        w_fi = self.fi(relation.reshape(-1, self.k * self.k, 1, 1))  # Eq. 4: MLP(Flatten(R))
        w_s_fi, w_d_fi = w_fi[:, : self.channels], w_fi[:, self.channels :]
        w_s = torch.sigmoid(w_s_ca + self.alpha_s * w_s_fi)  # Eq. 5
        w_d = torch.sigmoid(w_d_ca + self.alpha_d * w_d_fi)  # Eq. 6
        return w_s * f_s + up2(w_d * f_d, "bilinear")  # Eq. 7, bilinear upsampling


class SrModule(nn.Module):
    """Super-resolution module (seed 000 §3.1): nearest x2, conv3x3 (stride 1), BN, ReLU, dropout 0.2,
    conv3x3 (stride 1)."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.conv1 = ConvBNReLU(cin, cin, 3)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        hidden = self.dropout(self.conv1(up2(x, "nearest")))
        out = self.conv2(hidden)
        return (out, hidden) if return_hidden else out


class IsdnetTrunk(nn.Module):
    """F(H(x)) plus the SR modules that are shared (3 - head_sr of them)."""

    def __init__(self, cfg: IsdnetConfig):
        super().__init__()
        self.shallow = ShallowBranch(cfg)
        self.deep = DeepBranch(cfg)
        self.fusion = RelationAwareFusion(cfg.fuse, cfg.groups)
        # ISDNet's channel-adjusting conv after fusion (seed 000 §2.1: "a convolutional layer with
        # 64 kernels to adjust the feature map channels"), here to the first SR module's width.
        self.adjust = ConvBNReLU(cfg.fuse, cfg.sr[0], 3)
        widths = list(cfg.sr) + [cfg.num_classes]
        shared = 3 - cfg.head_sr
        self.sr = nn.ModuleList([SrModule(widths[i], widths[i + 1], cfg.dropout) for i in range(shared)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_encoded(x)[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The fused encoder features at 1/8 alone (a layer without a mask needs no decoder)."""
        return self.adjust(self.fusion(self.shallow(x), self.deep(x)))

    def forward_with_encoded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' features and the fused encoder features at 1/8 (what a layer-level
        classification head reads; seed 004's shared encoder)."""
        encoded = self.encode(x)
        y = encoded
        for module in self.sr:
            y = module(y)
        return y, encoded


class IsdnetHead(nn.Module):
    """Segmentation head S_i: the last `head_sr` SR modules, ending in the K-class conv at full
    resolution; in training it also returns the image reconstruction for the SR loss."""

    def __init__(self, cfg: IsdnetConfig):
        super().__init__()
        widths = list(cfg.sr) + [cfg.num_classes]
        first = 3 - cfg.head_sr
        self.sr = nn.ModuleList([SrModule(widths[i], widths[i + 1], cfg.dropout) for i in range(first, 3)])
        self.reconstruct = nn.Conv2d(widths[2], cfg.in_channels, 1)  # training only (L_MSE)

    def forward(self, features: torch.Tensor, return_aux: bool = False):
        y = features
        for module in self.sr[:-1]:
            y = module(y)
        logits, hidden = self.sr[-1](y, return_hidden=True)
        if return_aux:
            return logits, {"reconstruction": self.reconstruct(hidden)}
        return logits


class IsdnetSr(nn.Module):
    arch = "isdnet-sr"

    def __init__(self, cfg: IsdnetConfig):
        super().__init__()
        if not 1 <= cfg.head_sr <= 3:
            raise ValueError("head_sr must be 1, 2 or 3")
        self.cfg = cfg
        self.trunk = IsdnetTrunk(cfg)
        self.head = IsdnetHead(cfg)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        return self.head(self.trunk(x), return_aux=return_aux)
