"""The M heads of an ensemble as one branch that computes every member at once (issue 17).

Seed 000's point of a shared trunk (Eq. 14) is that M heads cost far less than M networks. Run one
after another, M heads at full resolution with few channels each are M small, memory-bound passes
over the largest feature maps of the graph. Grouped, they are one pass:

- the first layer of every head reads the same trunk features (upsampled x2 once), so the M
  convolutions become one convolution with M times the output channels (their weights stacked);
- every later layer reads only its own head's channels, so the M convolutions become one grouped
  convolution with M times the groups (head i's channels are block i of the input and the output);
- batch normalisation, ReLU and (eval-mode) dropout act per channel: their parameters are stacked.

The result is the same arithmetic in the same order per output pixel, so the members' logits agree
with the separate heads' to rounding (a test holds them within 1e-5). The graph's contract is
unchanged: logits [N, M, K, H, W] (docs/model-image.md).

The layers at the output's resolution run a band of rows at a time (`Banded`): the same logits,
but the largest feature maps of the graph are never whole. At 1024x1024 the last SR module's two
full-resolution layers held 96 + 72 MiB at once and ONNX Runtime's convolution scratch beside
them; in bands of 64 rows the box holds 389 MiB instead of 632 and infers 10 % faster
(docs/performance.md).

Built at export, from the heads of a calibrated ensemble in eval mode; training keeps the separate
heads (each is trained alone, seed 000's checkpoint ensemble).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .am_segnet import AmSegNetHead, LightBlock, PaperHead
from .blocks import ConvBNReLU, up2
from .isdnet_sr import IsdnetHead, SrModule


def _conv(convs: list[nn.Conv2d], shared_input: bool) -> nn.Conv2d:
    """One convolution doing what `convs` do: on one shared input (stacked outputs, the groups of
    one), or each on its own block of the input channels (M times the groups)."""
    first = convs[0]
    m = len(convs)
    for conv in convs[1:]:
        same = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias is None)
        if same != (first.in_channels, first.out_channels, first.kernel_size, first.stride, first.padding, first.dilation, first.groups, first.bias is None):
            raise ValueError("the heads' convolutions differ in shape: they cannot be grouped")
    if shared_input and first.groups != 1:
        raise ValueError("a grouped convolution on the shared trunk features cannot be stacked")
    groups = first.groups if shared_input else first.groups * m
    in_channels = first.in_channels if shared_input else first.in_channels * m
    out = nn.Conv2d(
        in_channels,
        first.out_channels * m,
        first.kernel_size,
        stride=first.stride,
        padding=first.padding,
        dilation=first.dilation,
        groups=groups,
        bias=first.bias is not None,
    )
    with torch.no_grad():
        out.weight.copy_(torch.cat([c.weight for c in convs], dim=0))
        if first.bias is not None:
            out.bias.copy_(torch.cat([c.bias for c in convs], dim=0))
    return out


def _batch_norm(norms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    if any(n.eps != norms[0].eps for n in norms):
        raise ValueError("the heads' batch norms differ in eps: they cannot be grouped")
    out = nn.BatchNorm2d(sum(n.num_features for n in norms), eps=norms[0].eps)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).copy_(torch.cat([getattr(n, name) for n in norms]))
    return out


def _conv_bn_relu(blocks: list[ConvBNReLU], shared_input: bool) -> nn.Sequential:
    layers: list[nn.Module] = [_conv([b[0] for b in blocks], shared_input), _batch_norm([b[1] for b in blocks])]
    if len(blocks[0]) > 2:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GroupedSr(nn.Module):
    """M SR modules (seed 000 §3.1: nearest x2, conv3x3, BN, ReLU, dropout, conv3x3) as one."""

    def __init__(self, modules: list[SrModule], shared_input: bool):
        super().__init__()
        self.conv1 = _conv_bn_relu([m.conv1 for m in modules], shared_input)
        self.conv2 = _conv([m.conv2 for m in modules], shared_input=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # dropout is the identity in eval mode, the only mode a grouped head runs in
        return self.conv2(self.conv1(up2(x, "nearest")))


class GroupedLightBlock(nn.Module):
    """M AM-SegNet light blocks (seed 002 Fig. 1(b)) as one. Each block concatenates its three
    branches; grouped, the branches come out as [all heads' separable | all heads' residual | ...],
    so the concatenation is done per head to keep head i's channels in block i."""

    def __init__(self, blocks: list[LightBlock], shared_input: bool):
        super().__init__()
        self.m = len(blocks)
        self.squeeze = _conv_bn_relu([b.squeeze for b in blocks], shared_input)
        self.depthwise = _conv_bn_relu([b.separable[0] for b in blocks], shared_input=False)
        self.pointwise = _conv_bn_relu([b.separable[1] for b in blocks], shared_input=False)
        self.residual = _conv_bn_relu([b.residual for b in blocks], shared_input=False)
        self.expand = _conv_bn_relu([b.expand for b in blocks], shared_input=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        parts = [self.pointwise(self.depthwise(s)), self.residual(s), self.expand(s)]
        return torch.cat([block for i in range(self.m) for block in _blocks(parts, i, self.m)], dim=1)


# Output rows per band of the full-resolution layers: 16 bands at 1024 rows. Fewer, larger bands
# hold more memory (8 bands: 36 MiB more); more, smaller ones recompute more halo rows.
BAND_ROWS = 64


class Banded(nn.Module):
    """The heads' last `layers` (stride-1 convolutions and per-pixel operations, after an
    upsampling by `scale`), whose output is the members' logits [N, M*K, H, W] head-major,
    computed on overlapping bands of input rows: each band's halo cropped away, its channels split
    into the members' [N, M, K, rows, W], and the bands concatenated along the rows. The result is
    `layers`' output unflattened to [N, M, K, H, W].

    A band's input reaches past its own rows by `halo` rows on each side, where the image has
    them: the convolutions' zero padding at a band's cut edge spoils at most their summed reach
    (sum of dilation * (k - 1) / 2 output rows), which is what is cropped. Nearest upsampling copies
    each input row alone, so it spoils nothing more. At the image's own edges the band's edge is
    the image's, and the padding is the real one.

    The members are split per band, not after the concatenation, because in the exported graph a
    Reshape of the whole logits into the graph's output is a copy of all of them (16 ms at
    1024x1024 with 3 members), where the Concat that is the graph's output writes each band once,
    into the output. The shapes are Python ints: constants in the traced graph, no Shape ops."""

    def __init__(self, layers: nn.Module, scale: int, members: int, band_rows: int = BAND_ROWS):
        super().__init__()
        convs = [m for m in layers.modules() if isinstance(m, nn.Conv2d)]
        reaches = [c.dilation[0] * (c.kernel_size[0] - 1) // 2 for c in convs]  # output rows each
        if any(c.stride != (1, 1) or c.padding[0] != r for c, r in zip(convs, reaches)):
            raise ValueError("only stride-1 convolutions padded to their input's size can be computed in bands")
        if band_rows % scale:
            raise ValueError(f"bands of {band_rows} rows do not split into whole input rows at x{scale}")
        reach = sum(reaches)
        self.layers = layers
        self.scale = scale
        self.m = members
        self.step = band_rows // scale  # input rows per band
        self.halo = math.ceil(reach / scale)

    def _members(self, y: torch.Tensor, first: int, rows: int) -> torch.Tensor:
        """Output rows [first, first + rows) of `y` [N, M*K, r, W] as [N, M, K, rows, W]."""
        n, channels, _, width = (int(d) for d in y.shape)
        return y[:, :, first : first + rows].reshape(n, self.m, channels // self.m, rows, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = int(x.shape[2])
        if rows <= self.step:  # one band: no Slice of the input in the graph
            return self._members(self.layers(x), 0, rows * self.scale)
        bands = []
        for start in range(0, rows, self.step):
            stop = min(rows, start + self.step)
            low, high = max(0, start - self.halo), min(rows, stop + self.halo)
            y = self.layers(x[:, :, low:high])
            bands.append(self._members(y, (start - low) * self.scale, (stop - start) * self.scale))
        return torch.cat(bands, dim=3)


class GroupedHeads(nn.Module):
    """The M heads of an ensemble as one branch: trunk features [N, C, h, w] -> the members'
    logits [N, M, K, H, W], as torch.stack([head(f) for head in heads], dim=1) gives them."""

    def __init__(self, heads: list[nn.Module]):
        super().__init__()
        if not heads:
            raise ValueError("no heads to group")
        m = len(heads)
        if all(isinstance(h, IsdnetHead) for h in heads):
            depth = len(heads[0].sr)
            layers: list[nn.Module] = [GroupedSr([h.sr[i] for h in heads], shared_input=i == 0) for i in range(depth)]
            # only the last SR module runs at full resolution (its input is half of it)
            layers[-1] = Banded(layers[-1], scale=2, members=m)
        elif all(isinstance(h, AmSegNetHead) for h in heads):
            # the head reads full-resolution decoder features: all of it runs in bands
            layers = [Banded(nn.Sequential(
                GroupedLightBlock([h.dec1 for h in heads], shared_input=True),
                _conv([h.classify for h in heads], shared_input=False),
            ), scale=1, members=m)]
        elif all(isinstance(h, PaperHead) for h in heads):
            layers = [Banded(nn.Sequential(
                _conv_bn_relu([h.dec1 for h in heads], shared_input=True),
                _conv([h.classify[0] for h in heads], shared_input=False),
                _batch_norm([h.classify[1] for h in heads]),
            ), scale=1, members=m)]
        else:
            raise ValueError(f"heads of type {type(heads[0]).__name__} cannot be grouped")
        self.layers = nn.ModuleList(layers)
        self.eval()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y = features
        for layer in self.layers:
            y = layer(y)
        return y  # the last layer is Banded: [N, M, K, H, W]


def _blocks(tensors: list[torch.Tensor], i: int, m: int) -> list[torch.Tensor]:
    """Head i's block of channels of each tensor (head-major channels, M equal blocks)."""
    out = []
    for t in tensors:
        size = t.shape[1] // m
        out.append(t[:, i * size : (i + 1) * size])
    return out
