import json

import numpy as np
import pytest

from bt_helpers import train_tiny


@pytest.mark.parametrize("arch", ["isdnet-sr", "am-segnet"])
def test_tiny_training_lowers_the_loss(arch, tiny_data, tmp_path):
    history = train_tiny(arch, tiny_data, tmp_path / "run", epochs=4)
    losses = np.array(history["step_loss"])
    assert np.all(np.isfinite(losses))
    k = max(2, len(losses) // 4)
    assert losses[-k:].mean() < losses[:k].mean(), f"{arch}: loss did not fall: {losses}"
    # a checkpoint per epoch, each with its validation metrics (seed 000 Eq. 24-28)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("epoch-*.pt"))
    assert len(ckpts) == 4
    epochs = json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]
    for e in epochs:
        assert {"cpa", "iou", "mpa", "miou", "score"} <= set(e)
        assert np.isclose(e["score"], 0.5 * e["mpa"] + 0.5 * e["miou"])
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_split_has_every_class_in_every_split(tiny_isdnet_run, tiny_data):
    from bedsight_train import data

    split = json.loads((tiny_isdnet_run / "split.json").read_text())
    ds = data.load_dataset(tiny_data)
    index = {n: i for i, n in enumerate(ds.names)}
    assert set(split) == {"train", "val", "test"}
    assert sum(len(v) for v in split.values()) == len(ds.names)
    for name, names in split.items():
        classes = set(np.unique(ds.masks[[index[n] for n in names]]).tolist())
        assert classes == set(range(6)), f"{name} lacks {set(range(6)) - classes}"


def test_isdnet_sr_structure():
    """The pieces of seed 000 §3.1 are where the paper puts them."""
    import torch

    from bedsight_train.models import build_model
    from bedsight_train.models.isdnet_sr import IsdnetConfig, SrModule

    cfg = IsdnetConfig(head_sr=1)
    model = build_model("isdnet-sr", cfg.to_dict())
    srs = [m for m in model.modules() if isinstance(m, SrModule)]
    assert len(srs) == 3  # three x2 SR modules: 1/8 -> 1
    assert len([m for m in model.head.modules() if isinstance(m, SrModule)]) == 1
    x = torch.randn(2, 1, 64, 64)
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 6, 64, 64)
    assert aux["reconstruction"].shape == x.shape  # the SR (MSE) loss's output
    # the shallow branch sees the image and its Laplacian residual
    assert model.trunk.shallow.stage1[0].in_channels == 2


def test_focal_tversky_adds_its_term_to_the_loss(tiny_data, tmp_path):
    """`train --focal-tversky`: the same seed, model and first batch, so the first step's loss
    differs by the Focal Tversky term alone (seed 001 Eq. 1, > 0 for an untrained model)."""
    import json

    plain = train_tiny("isdnet-sr", tiny_data, tmp_path / "plain", epochs=1, max_steps_per_epoch=1)
    with_ftl = train_tiny("isdnet-sr", tiny_data, tmp_path / "ftl", epochs=1, max_steps_per_epoch=1, focal_tversky=True)
    gap = with_ftl["step_loss"][0] - plain["step_loss"][0]
    assert 0.01 < gap <= 1.0, (plain["step_loss"][0], with_ftl["step_loss"][0])  # FTL lies in [0, 1]
    assert json.loads((tmp_path / "ftl" / "run.json").read_text())["focal_tversky"] is True


def test_resume_carries_on_exactly_where_the_run_stopped(tiny_data, tmp_path):
    """A run cut after epoch 1 and resumed gives the uninterrupted run's epoch 2: the same weights,
    the same Adam moments and learning-rate schedule, the same random crops, the same history."""
    import shutil

    import torch

    whole = tmp_path / "whole"
    train_tiny("isdnet-sr", tiny_data, whole, epochs=2, crop=32, lr_schedule="cosine", max_steps_per_epoch=3)
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    (cut / "checkpoints" / "epoch-0002.pt").unlink()  # the power went off during epoch 2
    resumed = train_tiny("isdnet-sr", tiny_data, cut, epochs=2, crop=32, lr_schedule="cosine", max_steps_per_epoch=3, resume=True)
    a = torch.load(whole / "checkpoints" / "epoch-0002.pt", weights_only=False)
    b = torch.load(cut / "checkpoints" / "epoch-0002.pt", weights_only=False)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert len(resumed["step_loss"]) == 6
    assert resumed["epochs"][1]["miou"] == a["metrics"]["miou"]


def test_one_seed_gives_one_model_and_another_seed_another(tiny_data, tmp_path):
    """--seed fixes the starting weights as well as the training stream: two runs of one seed give
    the same weights bit for bit (the site loop's stand-in model and fine-tune depend on it), and
    another seed starts elsewhere."""
    import torch

    weights = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        train_tiny("isdnet-sr", tiny_data, tmp_path / name, epochs=1, crop=32, max_steps_per_epoch=2, seed=seed)
        weights[name] = torch.load(tmp_path / name / "checkpoints" / "epoch-0001.pt", weights_only=False)["state_dict"]
    for key, value in weights["a"].items():
        assert torch.equal(value, weights["b"][key]), key
    assert any(not torch.equal(value, weights["c"][key]) for key, value in weights["a"].items() if value.is_floating_point())


def test_resume_refuses_another_command_and_a_run_that_is_not_there(tiny_data, tmp_path):
    from bedsight_train.common import BadInput

    with pytest.raises(BadInput, match="holds no run"):
        train_tiny("isdnet-sr", tiny_data, tmp_path / "none", epochs=1, resume=True)
    run = tmp_path / "run"
    train_tiny("isdnet-sr", tiny_data, run, epochs=1, crop=32, max_steps_per_epoch=2)
    with pytest.raises(BadInput, match=r"not the run's .*crop: the run has 32, this command 48"):
        train_tiny("isdnet-sr", tiny_data, run, epochs=2, crop=48, max_steps_per_epoch=2, resume=True)
    with pytest.raises(BadInput, match="--overwrite would delete it"):
        train_tiny("isdnet-sr", tiny_data, run, epochs=2, crop=32, max_steps_per_epoch=2, resume=True, overwrite=True)


def test_the_device_is_the_one_asked_for_or_refused_by_name(tiny_data, tmp_path):
    """--device cuda trains on CUDA where PyTorch has it and is refused by name where it has not;
    auto takes CUDA where there is one, else the CPU; the checkpoints are on the CPU either way."""
    import torch

    from bedsight_train.common import BadInput

    if torch.cuda.is_available():
        history = train_tiny("isdnet-sr", tiny_data, tmp_path / "run", epochs=1, crop=32, max_steps_per_epoch=2, device="cuda")
        assert len(history["epochs"]) == 1
    else:
        with pytest.raises(BadInput, match="--device cuda: PyTorch sees no CUDA device"):
            train_tiny("isdnet-sr", tiny_data, tmp_path / "run", epochs=1, device="cuda")
    history = train_tiny("isdnet-sr", tiny_data, tmp_path / "auto", epochs=1, crop=32, max_steps_per_epoch=2, device="auto")
    assert len(history["epochs"]) == 1
    saved = torch.load(tmp_path / "auto" / "checkpoints" / "epoch-0001.pt", weights_only=False)
    assert all(v.device.type == "cpu" for v in saved["state_dict"].values())


def test_foreground_crops_land_on_the_classes_a_layer_holds():
    """--foreground-share 1: every crop holds a pixel of a class the layer has, each present class
    chosen evenly (a 3-px streak as often as a large patch); 0: uniform crops, which on this layer
    hold the streak in about one crop in seven, and the random stream of a run is unchanged."""
    from bedsight_train.train import _augment

    y = np.zeros((1, 256, 256), np.int64)
    y[0, 100:103, 200:256] = 4  # a short streak near the right edge
    y[0, 0:128, 0:128] = 2  # a large uncovered patch
    x = np.zeros((1, 1, 256, 256), np.float32)
    rng = np.random.default_rng(0)
    crops = [_augment(rng, x, y, 32, foreground=1.0)[1][0] for _ in range(400)]
    streak = np.mean([(c == 4).any() for c in crops])
    patch = np.mean([(c == 2).any() for c in crops])
    assert all((c != 0).any() for c in crops)
    assert streak == pytest.approx(0.5, abs=0.08) and patch == pytest.approx(0.5, abs=0.08)
    uniform = [_augment(rng, x, y, 32)[1][0] for _ in range(400)]
    # a 32-px crop holds part of the streak when its top is within 34 rows and its left within the last 87 columns
    assert np.mean([(c == 4).any() for c in uniform]) == pytest.approx((34 / 225) * (87 / 225), abs=0.04)
    # with the share 0 the draws are those of a run before the option existed
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(_augment(a, x, y, 32)[1], _augment(b, x, y, 32, foreground=0.0)[1])


def test_shrunk_crops_average_the_image_and_keep_the_mask_aligned():
    """--min-scale: a window twice the crop's side is brought to the crop by averaging each 2x2
    block (a camera with pixels twice as large) and the mask by the nearest pixel; with
    min_scale 0.25 about half the crops are shrunk, and a 64-px crop of a 128-px layer then shows
    at most the whole layer; with 1 the draws are those of a run before the option existed."""
    from bedsight_train.data import shrink
    from bedsight_train.train import _augment

    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    y = np.array([[0, 0, 3, 3], [0, 0, 3, 3], [1, 1, 0, 0], [1, 1, 0, 0]])
    image, mask = shrink(x, y, 2)
    assert np.array_equal(image, [[[2.5, 4.5], [10.5, 12.5]]])  # (0 + 1 + 4 + 5) / 4 = 2.5, ...
    assert np.array_equal(mask, [[0, 3], [1, 0]])

    # a layer whose columns count 0..127 and whose mask marks the columns from 64: in every crop,
    # shrunk or not, the mask's edge sits where the image crosses 63.5
    layer = np.tile(np.arange(128, dtype=np.float32), (128, 1))[None, None]
    labels = (layer[:, 0] >= 64).astype(np.int64)
    rng = np.random.default_rng(1)
    spans = []
    for _ in range(200):
        xb, yb = _augment(rng, layer, labels, 64, min_scale=0.25)
        row, marks = xb[0, 0, 0], yb[0, 0]
        # (flips included) a crop pixel averages at most 2 source columns (windows of up to
        # 128 px): the marked ones average columns from 64 on, give or take that pixel
        assert np.all(row[marks == 1] >= 63.5 - 1.0) and np.all(row[marks == 0] <= 63.5 + 1.0)
        spans.append(abs(row[-1] - row[0]))
    shrunk = np.mean([span > 63 for span in spans])  # a 64-px window unshrunk spans 63 columns
    assert shrunk == pytest.approx(0.5, abs=0.08)
    assert max(spans) <= 127
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(_augment(a, layer, labels, 64)[0], _augment(b, layer, labels, 64, min_scale=1.0)[0])


def test_frozen_batch_norm_keeps_the_running_statistics_and_still_trains(tiny_data, tmp_path):
    """--freeze-batch-norm: fine-tuned from a checkpoint, BatchNorm keeps the running statistics it
    came with (it normalises by them in training as on the box) while every weight still learns;
    without it they move."""
    import torch

    train_tiny("isdnet-sr", tiny_data, tmp_path / "init", epochs=1, crop=32, max_steps_per_epoch=2, seed=5)
    init = tmp_path / "init" / "checkpoints" / "epoch-0001.pt"
    before = torch.load(init, weights_only=False)["state_dict"]
    after = {}
    for name, freeze in (("frozen", True), ("free", False)):
        train_tiny("isdnet-sr", tiny_data, tmp_path / name, epochs=2, crop=32, max_steps_per_epoch=2, seed=5, init=init, freeze_batch_norm=freeze)
        after[name] = torch.load(tmp_path / name / "checkpoints" / "epoch-0002.pt", weights_only=False)["state_dict"]
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in before if k.endswith("weight") and k.replace("weight", "running_mean") not in before]
    assert statistics and weights
    assert all(torch.equal(after["frozen"][k], before[k]) for k in statistics)
    assert all(not torch.equal(after["free"][k], before[k]) for k in statistics)
    # the weights learn as they do with BatchNorm free (in 4 steps a few get no gradient either way:
    # the relation-aware fusion's fine branch waits for its alpha, zero at the start)
    moved = {name: sum(not torch.equal(a[k], before[k]) for k in weights) for name, a in after.items()}
    assert moved["frozen"] >= 0.9 * len(weights) and moved["free"] >= 0.9 * len(weights), (moved, len(weights))
    run = json.loads((tmp_path / "frozen" / "run.json").read_text())
    assert run["freeze_batch_norm"] is True and "freeze_batch_norm" not in json.loads((tmp_path / "free" / "run.json").read_text())


def test_snapshot_schedule_restarts_the_learning_rate_at_each_cycle(tiny_data, tmp_path):
    """--lr-schedule snapshot (Huang et al. 2017, Eq. 2): within a cycle of L steps the rate is
    alpha_0 / 2 (cos(pi t / L) + 1), back at alpha_0 when the next cycle starts. Four epochs of
    three steps in two cycles: L = 6; after epoch 1 (3 steps) the next step's rate is alpha_0 / 2,
    after epoch 2 (6 steps) alpha_0 again."""
    import math

    import torch

    from bedsight_train.train import snapshot_factor

    assert snapshot_factor(0, 6) == 1.0
    assert math.isclose(snapshot_factor(3, 6), 0.5)
    assert math.isclose(snapshot_factor(5, 6), 0.5 * (math.cos(5 * math.pi / 6) + 1))  # 0.067: the cycle's last step
    assert snapshot_factor(6, 6) == 1.0
    run = tmp_path / "run"
    train_tiny("isdnet-sr", tiny_data, run, epochs=4, lr=1e-3, lr_schedule="snapshot", cycles=2, max_steps_per_epoch=3)
    rates = [torch.load(run / "checkpoints" / f"epoch-{e:04d}.pt", weights_only=False)["optimiser"]["param_groups"][0]["lr"] for e in (1, 2, 3, 4)]
    assert rates == pytest.approx([5e-4, 1e-3, 5e-4, 1e-3])
    assert json.loads((run / "run.json").read_text())["cycles"] == 2


def test_a_snapshot_run_gives_each_member_from_another_cycle(tiny_data, tmp_path):
    """calibrate on a snapshot-schedule run: the best checkpoint of each cycle, not the top M of
    the whole run, which may all be neighbours in one cycle; more members than cycles is refused."""
    import torch

    from bedsight_train.calibrate import calibrate
    from bedsight_train.common import BadInput

    run = tmp_path / "run"
    train_tiny("isdnet-sr", tiny_data, run, epochs=4, lr_schedule="snapshot", cycles=2, max_steps_per_epoch=3)
    calibrate(run, members=2, progress=False)
    chosen = torch.load(run / "ensemble.pt", weights_only=False)["head_checkpoints"]
    cycles = sorted((int(name[6:10]) - 1) // 2 for name in chosen)  # epoch-NNNN.pt, two epochs a cycle
    assert cycles == [0, 1], chosen
    with pytest.raises(BadInput, match="--members 3: the run has 2 snapshot cycle"):
        calibrate(run, members=3, progress=False)


@pytest.mark.parametrize("name", ["chain-o.pt", "chain-q.pt"])
def test_the_kept_chain_checkpoints_are_starts_for_the_last_stages(tiny_data, tmp_path, name):
    """quantize/checkpoints/chain-o.pt and chain-q.pt (the build chain's O and Q, kept so that the
    last stages can be rerun without the chain before them) load as ISDNet-SR checkpoints of the
    small widths, run on any size the architecture takes, and `train --init` accepts them with
    their own input normalisation."""
    from pathlib import Path

    import torch

    from bedsight_train.models import load_checkpoint, model_from_checkpoint
    from bedsight_train.train import TrainOptions, train

    path = Path(__file__).resolve().parents[1] / "checkpoints" / name
    ckpt = load_checkpoint(path, expect_arch="isdnet-sr")
    assert ckpt["config"]["sr"] == [24, 16, 8] and ckpt["config"]["num_classes"] == 6
    assert ckpt["input"]["width"] == 1024
    model = model_from_checkpoint(path, ckpt).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 6, 64, 64)
    run = tmp_path / "run"
    train(TrainOptions(arch="isdnet-sr", data=tiny_data, epochs=1, out=run, batch_size=2, crop=32, max_steps_per_epoch=1, init=path, freeze_batch_norm=True, progress=False))
    assert json.loads((run / "run.json").read_text())["input"]["mean"] == ckpt["input"]["mean"]


def test_a_head_trained_on_a_frozen_trunk_joins_the_ensemble_as_a_member(tiny_data, tmp_path):
    """train --init C --freeze-trunk --fresh-head: the trunk comes out weight for weight as C's
    (BatchNorm statistics included), the head starts from its own draw (not C's head) and learns;
    calibrate --head-runs adds that head as one more member on C's run's best trunk."""
    import torch

    from bedsight_train.calibrate import calibrate

    run = tmp_path / "run"
    train_tiny("isdnet-sr", tiny_data, run, epochs=2, crop=32, max_steps_per_epoch=2, seed=5)
    calibrate(run, members=1, progress=False)
    best = run / "checkpoints" / torch.load(run / "ensemble.pt", weights_only=False)["trunk_checkpoint"]
    before = torch.load(best, weights_only=False)["state_dict"]
    heads = []
    for seed in (21, 22):
        head_run = tmp_path / f"head-{seed}"
        train_tiny("isdnet-sr", tiny_data, head_run, epochs=1, crop=32, max_steps_per_epoch=2, seed=seed, init=best, freeze_trunk=True, fresh_head=True)
        after = torch.load(head_run / "checkpoints" / "epoch-0001.pt", weights_only=False)["state_dict"]
        trunk = [k for k in before if k.startswith("trunk.")]
        assert trunk and all(torch.equal(after[k], before[k]) for k in trunk)
        assert not torch.equal(after["head.sr.0.conv2.weight"], before["head.sr.0.conv2.weight"])
        heads.append(after["head.sr.0.conv2.weight"])
        recorded = json.loads((head_run / "run.json").read_text())
        assert recorded["freeze_trunk"] is True and recorded["fresh_head"] is True
    assert not torch.equal(heads[0], heads[1])  # two seeds, two draws
    report = calibrate(run, members=1, head_runs=[tmp_path / "head-21", tmp_path / "head-22"], progress=False)
    assert [m["checkpoint"] for m in report["members"]] == [best.name, "head-21/epoch-0001.pt", "head-22/epoch-0001.pt"]
    saved = torch.load(run / "ensemble.pt", weights_only=False)
    assert len(saved["head_states"]) == len(saved["temperatures"]) == 3
    assert torch.equal(saved["head_states"][1]["sr.0.conv2.weight"], heads[0])


def test_a_head_run_on_another_trunk_is_refused_by_calibrate(tiny_data, tmp_path):
    """A head learnt on other features means nothing on this trunk: calibrate names the head run
    and the trunk weight that differs; and --freeze-trunk or --fresh-head without --init is refused."""
    from bedsight_train.calibrate import calibrate
    from bedsight_train.common import BadInput

    run, other = tmp_path / "run", tmp_path / "other"
    train_tiny("isdnet-sr", tiny_data, run, epochs=1, crop=32, max_steps_per_epoch=2, seed=5)
    train_tiny("isdnet-sr", tiny_data, other, epochs=1, crop=32, max_steps_per_epoch=2, seed=6)
    with pytest.raises(BadInput, match=r"--head-runs .*other: epoch-0001.pt's trunk is not .*run/checkpoints/epoch-0001.pt's \(trunk\.\S+ differs\)"):
        calibrate(run, members=1, head_runs=[other], progress=False)
    assert not (run / "ensemble.pt").exists()
    for flag in ("freeze_trunk", "fresh_head"):
        with pytest.raises(BadInput, match=f"--{flag.replace('_', '-')} trains a head on another checkpoint's trunk: give that checkpoint with --init"):
            train_tiny("isdnet-sr", tiny_data, tmp_path / flag, epochs=1, crop=32, max_steps_per_epoch=1, **{flag: True})
