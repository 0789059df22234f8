"""`train --preset`: named widths (issue 21 items 1-2). "paper" is ISDNet-SR at seed 000's widths
(its heads cost what the paper's heads cost) and AM-SegNet as seed 002's reference builds it (its
parameter count is Table 2's); both go the whole way (train, calibrate, export, quantize, pack,
the box) on a small input."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from bedsight_train.common import BadInput
from bedsight_train.models import PRESETS, Ensemble, build_model, make_config, preset_widths

# seed 000 §4.4: one member 165.1, five 299.4 (thop, multiply-adds): four more heads cost 134.3
PAPER_HEAD_GMAC = (299.4 - 165.1) / 4


def test_the_paper_preset_is_resnet18_and_three_sr_modules_per_head():
    from bedsight_train.export import count_flops

    config = make_config("isdnet-sr", 1, 6, preset_widths("isdnet-sr", "paper")).to_dict()
    model = build_model("isdnet-sr", config).eval()
    assert len(model.head.sr) == 3 and len(model.trunk.sr) == 0  # Eq. 14: S_i holds all three SR modules
    assert [len(getattr(model.trunk.deep, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]  # ResNet-18
    assert [getattr(model.trunk.deep, f"layer{i}")[0].conv2[0].out_channels for i in range(1, 5)] == [64, 128, 256, 512]
    # every conv's cost scales with the pixels: count at 256x256, compare at the paper's 1024x1024
    ensemble = Ensemble(model.trunk, [model.head]).eval()
    flops = count_flops(ensemble, torch.zeros(1, 1, 256, 256))
    head_gmac = flops["head"] * 16 / 2e9
    assert 0.8 * PAPER_HEAD_GMAC < head_gmac < 1.2 * PAPER_HEAD_GMAC, head_gmac
    small = build_model("isdnet-sr", make_config("isdnet-sr", 1, 6, {}).to_dict()).eval()
    small_flops = count_flops(Ensemble(small.trunk, [small.head]).eval(), torch.zeros(1, 1, 256, 256))
    assert flops["member"] > 15 * small_flops["member"]


def test_the_paper_am_segnet_is_the_reference_network():
    config = make_config("am-segnet", 1, 5, preset_widths("am-segnet", "paper")).to_dict()
    model = build_model("am-segnet", config).eval()
    n = 12  # the reference's filter_num
    assert [block.expand[0].out_channels * 4 for block in model.trunk.enc] == [4 * n, 8 * n, 16 * n, 32 * n]
    assert [conv[0].out_channels for conv in model.trunk.bottleneck] == [64 * n] * 3
    assert isinstance(model.head.classify[1], torch.nn.BatchNorm2d)  # batch norm on the logits
    # Table 2: AM-SegNet* (without the attention block) has 1.63e7 trainable parameters
    gate = sum(p.numel() for p in model.trunk.gate.parameters())
    without_gate = sum(p.numel() for p in model.parameters()) - gate
    assert abs(without_gate - 1.63e7) < 0.01 * 1.63e7, without_gate
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 5, 64, 64)


def test_unknown_presets_are_refused_by_name():
    assert preset_widths("isdnet-sr", "small") == {} and set(PRESETS["am-segnet"]) == {"small", "paper"}
    with pytest.raises(BadInput, match="--preset 'huge': isdnet-sr has small, paper"):
        preset_widths("isdnet-sr", "huge")


@pytest.mark.usefixtures("require_bin")
@pytest.mark.parametrize("arch", ["isdnet-sr", "am-segnet"])
def test_the_paper_preset_trains_exports_packs_and_runs_in_the_box(arch, tiny_data, tmp_path, require_bin):
    from bedsight_train.calibrate import calibrate
    from bedsight_train.export import export
    from bedsight_train.pack import pack
    from bedsight_train.quant import quantize
    from bedsight_train.train import TrainOptions, train

    run = tmp_path / "run"
    train(TrainOptions(arch=arch, data=tiny_data, epochs=2, out=run, batch_size=4, preset="paper", max_steps_per_epoch=2, progress=False))
    info = json.loads((run / "run.json").read_text())
    assert info["preset"] == "paper" and all(info["config"][k] == v for k, v in preset_widths(arch, "paper").items())
    calibrate(run, members=2, progress=False)
    model = tmp_path / "model" / "model.onnx"
    report = export(run, model, progress=False)
    assert report["members"] == 2
    quantize(model, tiny_data, model.parent / "model.int8.onnx", margin=1.0, calibration_images=4, progress=False)
    image = pack(model, tmp_path / "paper.bsimg", progress=False)
    layer = sorted((tiny_data / "images").glob("*.png"))[0]
    for precision in ("fp32", "int8"):
        result = subprocess.run([str(require_bin), "analyze", "--model", str(image), "--precision", precision, "--json", str(layer)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout.splitlines()[0])
        assert record["model"]["graph"] == precision and record["verdict"] in ("PASS", "RECOAT", "PAUSE", "REVIEW")
