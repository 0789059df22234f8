"""The ensemble's heads grouped into one branch (models/grouped.py, issue 17): the members' logits
are the separate heads' within 1e-5, for both architectures, and the export carries the grouped
branch (fewer convolutions than M separate heads) with onnxruntime agreeing with PyTorch."""
import numpy as np
import onnx
import pytest
import torch

from bedsight_train.models import Ensemble, build_model, make_config, preset_widths


def _ensemble(arch: str, members: int, seed: int, **widths) -> Ensemble:
    """An ensemble of `members` heads with random weights and random batch-norm statistics (a
    freshly built network's statistics are 0 and 1, which would hide a stacking mistake)."""
    torch.manual_seed(seed)
    model = build_model(arch, make_config(arch, 1, 6, widths).to_dict())
    heads = [build_model(arch, make_config(arch, 1, 6, widths).to_dict()).head for _ in range(members)]
    for module in [*model.modules(), *(m for h in heads for m in h.modules())]:
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return Ensemble(model.trunk, heads).eval()


def _separate_then_grouped(ensemble: Ensemble, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The members' logits from the separate heads, then from the heads grouped (in place)."""
    with torch.no_grad():
        features = ensemble.trunk(x)
        separate = torch.stack([head(features) for head in ensemble.heads], dim=1)
        ensemble.group_heads()
        return separate, ensemble(x)


@pytest.mark.parametrize(
    "arch, widths",
    [("isdnet-sr", {}), ("isdnet-sr", {"head_sr": 2}), ("am-segnet", {})],
    ids=["isdnet-sr", "isdnet-sr-two-sr-modules-per-head", "am-segnet"],
)
def test_grouped_heads_give_the_separate_heads_logits(arch, widths):
    ensemble = _ensemble(arch, members=5, seed=3, **widths)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 1, 64, 64)).astype(np.float32))
    separate, grouped = _separate_then_grouped(ensemble, x)
    assert grouped.shape == (2, 5, 6, 64, 64)
    assert float((grouped - separate).abs().max()) <= 1e-5
    # member i is head i: a swapped block would still pass a loose test of the mean
    assert float((grouped[:, 1] - separate[:, 2]).abs().max()) > 1e-2


def test_the_export_runs_the_members_as_one_branch(tmp_path):
    from bedsight_train.export import check_against_torch, export_onnx, group_heads_checked

    ensemble = _ensemble("isdnet-sr", members=5, seed=4)
    x = np.random.default_rng(2).normal(size=(1, 1, 64, 64)).astype(np.float32)
    separate_path = tmp_path / "separate.onnx"
    export_onnx(ensemble, torch.from_numpy(x), separate_path)
    assert group_heads_checked(ensemble, x) <= 1e-5
    grouped_path = tmp_path / "grouped.onnx"
    export_onnx(ensemble, torch.from_numpy(x), grouped_path)
    assert check_against_torch(ensemble, grouped_path, x) < 1e-4

    def convs(path):
        return [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]

    # one ISDNet-SR head is one SR module: two convolutions. Separate: 5 x 2; grouped: 2, the
    # second with 5 groups
    assert len(convs(separate_path)) - len(convs(grouped_path)) == 5 * 2 - 2
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs(grouped_path)]
    assert groups[-1] == 5
    ops = {n.op_type for n in onnx.load(str(grouped_path)).graph.node}
    assert not ops & {"Dropout", "Shape", "NonZero", "Loop", "If"}


def test_the_export_check_scales_with_the_logits_and_still_catches_a_wrong_grouping(monkeypatch):
    """A trained model's logits reach tens, where float32 summed in another order differs by
    about 1e-5 alone: the check is relative to the largest logit. Logits made 1e4 times larger
    pass it; a grouping that swaps two members does not."""
    from bedsight_train.export import ExportMismatch, group_heads_checked

    ensemble = _ensemble("isdnet-sr", members=3, seed=5)
    for head in ensemble.heads:
        # the convolution that gives the 6 classes' logits (the SR module's reconstruction is another)
        last = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 6][-1]
        last.weight.data *= 1e4
        if last.bias is not None:
            last.bias.data *= 1e4
    x = np.random.default_rng(3).normal(size=(1, 1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        largest = float(ensemble.members(ensemble.trunk(torch.from_numpy(x))).abs().max())
    assert largest > 1e3
    assert group_heads_checked(ensemble, x) <= 1e-5

    swapped = _ensemble("isdnet-sr", members=3, seed=5)
    group = swapped.group_heads

    def group_then_swap():
        group()
        members = swapped.members
        swapped.members = lambda features: members(features)[:, [1, 0, 2]]

    monkeypatch.setattr(swapped, "group_heads", group_then_swap)
    with pytest.raises(ExportMismatch, match="the grouping is wrong"):
        group_heads_checked(swapped, x)


@pytest.mark.parametrize(
    "arch, widths",
    [("isdnet-sr", {}), ("isdnet-sr", {"head_sr": 3}), ("am-segnet", {}), ("am-segnet", preset_widths("am-segnet", "paper"))],
    ids=["isdnet-sr", "isdnet-sr-three-sr-modules-per-head", "am-segnet", "am-segnet-paper"],
)
def test_the_full_resolution_layers_in_bands_give_the_whole_images_logits(arch, widths):
    """160 rows are bands of 64, 64 and 32 output rows (the last one short): every band's edge
    away from the image's lies inside the image, where a wrong halo would show."""
    from bedsight_train.models.grouped import BAND_ROWS, Banded

    ensemble = _ensemble(arch, members=3, seed=6, **widths)
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(1, 1, 160, 96)).astype(np.float32))
    separate, grouped = _separate_then_grouped(ensemble, x)
    banded = [m for m in ensemble.grouped.modules() if isinstance(m, Banded)]
    assert len(banded) == 1 and BAND_ROWS == 64
    assert grouped.shape == (1, 3, 6, 160, 96)
    assert float((grouped - separate).abs().max()) <= 1e-5 * max(1.0, float(separate.abs().max()))


def test_a_band_needs_its_convolutions_halo_and_no_more():
    """Two 3x3 convolutions after a nearest x2 upsampling reach 2 output rows, 1 input row; a
    dilated 3x3 (dilation 2) reaches 2 rows alone. A strided convolution cannot be banded."""
    from torch import nn

    from bedsight_train.models.grouped import Banded

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 2, 3, padding=1)
            self.b = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.b(self.a(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")))

    assert Banded(Up(), scale=2, members=1, band_rows=8).halo == 1
    assert Banded(nn.Conv2d(2, 2, 3, padding=2, dilation=2), scale=1, members=1, band_rows=8).halo == 2
    with pytest.raises(ValueError, match="stride-1"):
        Banded(nn.Conv2d(2, 2, 3, padding=1, stride=2), scale=1, members=1)
    torch.manual_seed(0)
    up, x = Up().eval(), torch.randn(1, 2, 13, 5)
    with torch.no_grad():
        # 2 members of 1 class each: channel i is member i
        whole = up(x).unflatten(1, (2, 1))
        assert float((Banded(up, scale=2, members=2, band_rows=4)(x) - whole).abs().max()) <= 1e-6


def test_the_export_computes_the_banded_layers_with_static_slices(tmp_path):
    """The bands are fixed at export: constant Slices and Reshapes and one Concat, no Shape ops
    (the model contract leaves them out), and onnxruntime agrees with PyTorch."""
    from bedsight_train.export import check_against_torch, export_onnx, group_heads_checked

    ensemble = _ensemble("isdnet-sr", members=3, seed=7)
    x = np.random.default_rng(5).normal(size=(1, 1, 160, 64)).astype(np.float32)
    assert group_heads_checked(ensemble, x) <= 1e-5
    path = tmp_path / "banded.onnx"
    export_onnx(ensemble, torch.from_numpy(x), path)
    assert check_against_torch(ensemble, path, x) < 1e-4
    nodes = onnx.load(str(path)).graph.node
    # the bands are concatenated straight into the output: no Reshape copies the whole logits
    assert [n.op_type for n in nodes if "logits" in n.output] == ["Concat"]
    # 3 bands of the last SR module's two convolutions
    assert sum(n.op_type == "Conv" and any(a.name == "group" and a.i == 3 for a in n.attribute) for n in nodes) == 3
    assert not {n.op_type for n in nodes} & {"Shape", "Dropout", "NonZero", "Loop", "If"}
    # the quantizer keeps the logits' convolutions in fp32: it must find every band's
    from bedsight_train.quant import logit_producers

    assert sorted(logit_producers(path)) == sorted(n.name for n in nodes if n.op_type == "Conv" and any(a.name == "group" and a.i == 3 for a in n.attribute))
