"""The two architectures, the checkpoint format and the ensemble with feature reuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..common import BadInput
from .am_segnet import AmSegNet, AmSegNetConfig
from .isdnet_sr import IsdnetConfig, IsdnetSr

ARCHS = ("isdnet-sr", "am-segnet")
# the input size must be a multiple of this (ISDNet-SR's deep branch works at 1/16, AM-SegNet's
# "paper" layout pools four times)
SIZE_MULTIPLE = {"isdnet-sr": 16, "am-segnet": 16}


# Named widths for `train --preset` (what --width then overrides).
# - "small": the widths the box runs on a CPU (the config dataclasses' defaults), about 1/20 of
#   seed 000's compute.
# - "paper": ISDNet-SR at the widths seed 000 §3.1 names: a ResNet-18 deep branch (64-128-256-512,
#   two basic blocks per stage, DeepLabv3's atrous rates 12-24-36 at output stride 8), STDC1's
#   stage widths (32, 64, 256) in the shallow branch, and all three SR modules in each head
#   (head_sr 3, Eq. 14's S_i). The paper does not give its fusion and SR widths; 128 and
#   64-64-32 put one head at 31 GMAC at 1024x1024 against the paper's 34 ((299.4 - 165.1) / 4,
#   §4.4). The trunk counts 63 GMAC against the paper's 132: the paper does not say where the
#   rest of its trunk's cost lies (fusion width, STDC stage 4); `export` prints both counts.
# - "paper" for AM-SegNet: seed 002's reference network (am_segnet.py, layout "paper", n = 12).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "isdnet-sr": {
        "small": {},
        "paper": {
            "shallow": [32, 64, 256],
            "deep": [64, 128, 256, 512],
            "deep_blocks": 2,
            "aspp_rates": [12, 24, 36],
            "fuse": 128,
            "groups": 8,
            "sr": [64, 64, 32],
            "head_sr": 3,
        },
    },
    "am-segnet": {"small": {}, "paper": {"layout": "paper", "filters": 12}},
}


def preset_widths(arch: str, preset: str) -> dict[str, Any]:
    """The widths of a named preset of `arch`; refused by name when there is no such preset."""
    presets = PRESETS.get(arch, {})
    if preset not in presets:
        raise BadInput(f"--preset {preset!r}: {arch} has {', '.join(presets)}")
    return dict(presets[preset])


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any): its inputs go there."""
    return next(model.parameters(), torch.empty(0)).device


def make_config(arch: str, in_channels: int, num_classes: int, overrides: dict[str, Any] | None = None):
    overrides = dict(overrides or {})
    overrides.update(in_channels=in_channels, num_classes=num_classes)
    if arch == "isdnet-sr":
        return IsdnetConfig.from_dict(overrides)
    if arch == "am-segnet":
        return AmSegNetConfig.from_dict(overrides)
    raise BadInput(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    if arch == "isdnet-sr":
        return IsdnetSr(IsdnetConfig.from_dict(config))
    if arch == "am-segnet":
        return AmSegNet(AmSegNetConfig.from_dict(config))
    raise BadInput(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")


class Ensemble(nn.Module):
    """One trunk, M heads (seed 000 Eq. 14): returns the members' logits [N, M, K, H, W], the
    appliance's model contract. Temperatures and the fusion (Eq. 21, 12, 13) stay outside the
    graph: they live in the manifest and `models::fuse` applies them.

    With a layer head (multi-task, seed 004) it returns (logits, layer_logits [N, L]): the
    contract's optional second output, its temperature in the manifest's [layer_head].

    With `with_features` set (export does, for a trunk with an encoder output) it also returns
    `features` [N, D], the fused encoder features averaged over the bed: what the domain check
    (domain.py) compares with the training layers'."""

    def __init__(self, trunk: nn.Module, heads: list[nn.Module], layer_head: nn.Module | None = None):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)
        self.layer_head = layer_head
        self.with_features = False
        self.grouped = None  # the heads as one branch (group_heads), for export

    def group_heads(self) -> None:
        """Compute the members with one grouped branch (grouped.py) instead of M heads in turn:
        the same logits, one pass. Eval mode only; the separate heads stay as they are."""
        from .grouped import GroupedHeads

        self.eval()
        self.grouped = GroupedHeads(list(self.heads))

    def members(self, features: torch.Tensor) -> torch.Tensor:
        """The members' logits [N, M, K, H, W] from the trunk's features."""
        if self.grouped is not None:
            return self.grouped(features)
        return torch.stack([head(features) for head in self.heads], dim=1)

    @property
    def has_encoder(self) -> bool:
        return hasattr(self.trunk, "forward_with_encoded")

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """The domain check's features alone: the encoder's output averaged over the bed."""
        return self.trunk.encode(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor):
        if self.layer_head is None and not self.with_features:
            return self.members(self.trunk(x))
        features, encoded = self.trunk.forward_with_encoded(x)
        outputs = [self.members(features)]
        if self.layer_head is not None:
            outputs.append(self.layer_head(encoded))
        if self.with_features:
            outputs.append(encoded.mean(dim=(2, 3)))
        return tuple(outputs)


def load_checkpoint(path: Path, expect_arch: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by `train` and check that it is one, of the expected architecture."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise BadInput(f"{path}: checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise BadInput(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or "arch" not in ckpt or "state_dict" not in ckpt or "config" not in ckpt:
        raise BadInput(f"{path}: not a bedsight-train checkpoint (no arch/config/state_dict)")
    if expect_arch is not None and ckpt["arch"] != expect_arch:
        raise BadInput(f"{path}: checkpoint is {ckpt['arch']}, but this run is {expect_arch}")
    return ckpt


def model_from_checkpoint(path: Path, ckpt: dict[str, Any]) -> nn.Module:
    model = build_model(ckpt["arch"], ckpt["config"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise BadInput(f"{path}: weights do not fit a {ckpt['arch']} of the recorded widths ({str(e).splitlines()[0]})") from None
    return model
