"""Real-bed training (realbed.py): the weak losses against values worked out by hand, the targets a
label gives, the planted defects and their masks, the lighting changes, and a short run."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from bedsight_train import realbed
from bedsight_train.layers import LABEL_MAPS
from bedsight_train.synth import BACKGROUND, HOPPING, INCOMPLETENESS, STREAKING, SUPER_ELEVATION

CLASSES = ["background", "super-elevation", "incompleteness", "hopping", "streaking", "lattice"]


def test_the_absence_loss_is_the_mean_of_minus_log_one_minus_p_and_of_its_top_k():
    # two classes, two pixels: class 1 has logits log 3 and 0 against class 0's 0 -> p1 = 0.75, 0.5
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])
    absent = torch.tensor([[False, True]])
    present = torch.tensor([[False, False]])
    loss_absent, loss_present = realbed.weak_losses(logits, present, absent, top_k_share=0.5)
    # the mean of -log(1 - p) = (log 4 + log 2) / 2, and the pooled term over k = 1 pixel (0.2 %
    # of 2 pixels, at least one): -log(1 - 0.75) = log 4
    assert loss_absent.item() == pytest.approx((math.log(4.0) + math.log(2.0)) / 2 + math.log(4.0), rel=1e-5)
    assert loss_present.item() == 0.0


def test_the_presence_loss_pools_the_top_k_pixels():
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])
    present = torch.tensor([[False, True]])
    absent = torch.tensor([[False, False]])
    # k = 1 of 2 pixels: the larger p, 0.75
    _, top1 = realbed.weak_losses(logits, present, absent, top_k_share=0.5)
    assert top1.item() == pytest.approx(-math.log(0.75), rel=1e-5)
    # k = 2: their mean, 0.625
    _, top2 = realbed.weak_losses(logits, present, absent, top_k_share=1.0)
    assert top2.item() == pytest.approx(-math.log(0.625), rel=1e-5)
    # crops: no presence term
    _, none = realbed.weak_losses(logits, present, absent, top_k_share=None)
    assert none.item() == 0.0


def test_the_presence_loss_takes_each_class_its_own_k():
    # three classes, four pixels: p1 = 0.6, 0.2, 0.2, 0.0 and p2 = 0.2, 0.6, 0.2, 0.0 (class 0
    # holds the rest, the last pixel all of it)
    p = torch.tensor([[[0.2, 0.2, 0.6, 1.0], [0.6, 0.2, 0.2, 0.0], [0.2, 0.6, 0.2, 0.0]]]).clamp(1e-9).log()
    logits = p.reshape(1, 3, 1, 4)
    present = torch.tensor([[False, True, True]])
    absent = torch.tensor([[False, False, False]])
    # class 1 pools its k = 1 pixel (0.25 of 4): 0.6; class 2 its k = 3 (0.75): (0.6 + 0.2 + 0.2) / 3
    _, loss = realbed.weak_losses(logits, present, absent, top_k_share=[0.5, 0.25, 0.75])
    assert loss.item() == pytest.approx((-math.log(0.6) - math.log(1.0 / 3.0)) / 2, rel=1e-5)
    # one share for every class is the same as the list of it
    _, one = realbed.weak_losses(logits, present, absent, top_k_share=0.25)
    _, listed = realbed.weak_losses(logits, present, absent, top_k_share=[0.25, 0.25, 0.25])
    assert one.item() == pytest.approx(listed.item()) == pytest.approx(-math.log(0.6), rel=1e-5)


def test_a_crops_mask_makes_absent_every_class_none_of_its_pixels_holds():
    # three classes, two pixels: class 1 has p 0.75 and 0.5 (logits log 3 and 0 against class 0's
    # 0), class 2 is all but impossible (p clamped to 1e-6)
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]], [[-100.0, -100.0]]]])
    both_absent = torch.tensor([[[0, 0]]])
    # class 1: (log 4 + log 2) / 2 + log 4 as in weak_losses; class 2: about 0; the mean of the two
    class1 = (math.log(4.0) + math.log(2.0)) / 2 + math.log(4.0)
    assert realbed.mask_absence_loss(logits, both_absent).item() == pytest.approx(class1 / 2, abs=1e-5)
    # a pixel of class 1 in the mask: class 1 is held, only class 2 is absent
    assert realbed.mask_absence_loss(logits, torch.tensor([[[0, 1]]])).item() == pytest.approx(0.0, abs=1e-5)
    # class 2 held: class 1 absent alone, its whole term
    assert realbed.mask_absence_loss(logits, torch.tensor([[[2, 0]]])).item() == pytest.approx(class1, abs=1e-5)


def test_a_label_makes_every_class_it_does_not_name_absent():
    present, absent = realbed.class_targets([[], ["incompleteness", "streaking"]], CLASSES)
    # a clean layer: every class but background absent, none present
    assert present[0].tolist() == [False] * 6
    assert absent[0].tolist() == [False, True, True, True, True, True]
    assert present[1].tolist() == [False, False, True, False, True, False]
    assert absent[1].tolist() == [False, True, False, True, False, True]


def _bed(seed=0, size=256):
    rng = np.random.default_rng(seed)
    return np.clip(120 + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("cls", [STREAKING, INCOMPLETENESS, HOPPING])
def test_a_planted_defect_is_where_its_mask_says(cls):
    bed = _bed()
    found = 0
    for seed in range(6):
        image, mask = realbed.plant(np.random.default_rng(seed), bed, [cls], parts=0)
        assert image.shape == bed.shape and mask.shape == bed.shape
        assert set(np.unique(mask)) <= {BACKGROUND, cls}
        inside = mask == cls
        if inside.sum() < 20:
            continue
        found += 1
        change = np.abs(image - bed.astype(np.float32))
        # the drawn change is inside the mask, not spread over the bed
        assert change[inside].mean() > 3 * change[~inside].mean()
        if cls == INCOMPLETENESS:
            assert image[inside].mean() < bed[inside].mean() - 5
    assert found >= 3


def test_clean_parts_are_brighter_background():
    bed = _bed()
    image, mask = realbed.plant(np.random.default_rng(1), bed, [], parts=2)
    assert (mask == BACKGROUND).all()
    brighter = image - bed.astype(np.float32) > 15  # 20-35 % of 120 on a part, noise elsewhere
    assert 0.02 < brighter.mean() < 0.98
    # the melted metal is smoother than the powder around it
    assert image[brighter].std() < bed.astype(np.float32).std()


def test_super_elevation_is_glare_on_a_part_edge():
    bed = _bed().astype(np.float32)
    for seed in range(4):
        image, mask = bed.copy(), np.full(bed.shape, BACKGROUND, np.uint8)
        parts = np.zeros(bed.shape, bool)
        realbed._plant_super_elevation(np.random.default_rng(seed), image, mask, np.full(bed.shape, 120.0, np.float32), parts)
        glare = mask == SUPER_ELEVATION
        assert glare.sum() > 100  # blobs of radius 13-29 px
        part = (image - bed > 15) & ~glare
        assert part.sum() > 1000  # the part it stands on was drawn (background)
        # far brighter than the part (about twice the powder), and touching it
        assert image[glare].mean() > image[part].mean() + 40
        assert (ndimage.binary_dilation(glare, iterations=3) & part).any()


def test_a_parts_tip_is_a_small_glint_with_the_scratch_it_dragged():
    bed = _bed().astype(np.float32)
    local = np.full(bed.shape, 120.0, np.float32)
    dragged = 0
    for seed in range(12):
        image, mask = bed.copy(), np.full(bed.shape, BACKGROUND, np.uint8)
        realbed._plant_tip(np.random.default_rng(seed), image, mask, local)
        glint = mask == SUPER_ELEVATION
        # a speck 5-12 px across (radius 2.5-6 px, rough), near twice the powder's brightness
        assert 8 <= glint.sum() <= 160, glint.sum()
        assert image[glint].mean() > 1.6 * 120
        streak = mask == STREAKING
        if streak.any():
            dragged += 1
            ys, xs = np.nonzero(glint)
            sy, sx = np.nonzero(streak)
            # downstream of the tip (the travel runs along +x), to the far edge, at its height
            assert sx.min() >= xs.min() and sx.max() == bed.shape[1] - 1
            assert abs(np.median(sy[sx < sx.min() + 10]) - ys.mean()) < 8
            assert abs(image[streak] - bed[streak]).mean() > 1  # a groove (or a ridge) 3-15 % deep
    assert 6 <= dragged <= 12  # most tips drag a scratch (8 in 10)


def test_a_streak_runs_along_the_recoater_travel_to_the_far_edge():
    image, mask = realbed.plant(np.random.default_rng(3), _bed(), [STREAKING])
    streak = mask == STREAKING
    assert streak[:, -1].any()  # dragged to the end of the travel (+x)
    # one or two lines a few pixels thin, each running along x: few pixels in any column, many in a row
    assert streak.sum(axis=0).max() <= 2 * 5
    assert streak.sum(axis=1).max() > 100


def test_a_short_feed_is_a_cracked_wedge_along_a_side_to_the_end_of_the_travel():
    bed = _bed()
    local = np.full(bed.shape, 120.0, np.float32)
    for seed in range(4):
        image, mask = bed.astype(np.float32), np.zeros(bed.shape, np.uint8)
        realbed._plant_short_feed(np.random.default_rng(seed), image, mask, local)
        wedge = mask == INCOMPLETENESS
        assert wedge.sum() > 200
        # on the top or the bottom side (along the travel), and reaching the end of the travel
        assert wedge[0].any() or wedge[-1].any()
        assert wedge[:, -1].any() and not wedge[:, 0].any()
        darker = bed.astype(np.float32) - image
        # a little darker as a whole (2-6 % of 120, mottled, and the cracks), and cracked: a
        # few pixels 15 % darker or more
        assert 2 < darker[wedge].mean() < 30
        assert 0.005 < (darker[wedge] > 0.15 * 120).mean() < 0.5
        # no step at the wedge's edge: the shade fades out over a few pixels beyond it (under 2.5
        # grey levels 6 px out, under the powder's grain), and under half a grey level 20 px out
        assert np.abs(darker[~ndimage.binary_dilation(wedge, iterations=6)]).max() < 2.5
        assert np.abs(darker[~ndimage.binary_dilation(wedge, iterations=20)]).max() < 0.5


def test_lighting_changes_brightness_not_the_size_and_stays_in_range():
    bed = _bed().astype(np.float32)
    for seed in range(5):
        lit = realbed.lighting(np.random.default_rng(seed), bed)
        assert lit.shape == bed.shape and lit.dtype == np.float32
        assert 0.0 <= lit.min() and lit.max() <= 255.0
    means = [realbed.lighting(np.random.default_rng(s), bed).mean() for s in range(20)]
    assert np.ptp(means) > 20  # exposure varies


def test_a_real_bed_run_trains_on_weak_labels_and_reports_real_figures(tmp_path, monkeypatch):
    from bedsight_train.synth import write_dataset
    from bedsight_train.train import TrainOptions, train

    write_dataset(tmp_path / "data", 20, 64, seed=1, progress=False)
    layers = tmp_path / "layers"
    rng = np.random.default_rng(0)
    from PIL import Image

    for label, n in [("No_Defect", 12), ("Powder_Uneven", 12)]:
        (layers / label).mkdir(parents=True)
        for i in range(n):
            image = _bed(i, 64)
            if label == "Powder_Uneven":
                image[40:, 30:] = (image[40:, 30:] * 0.6).astype(np.uint8)
            Image.fromarray(image).save(layers / label / f"layer_{i:04d}.png")
    history = train(
        TrainOptions(
            arch="isdnet-sr", data=tmp_path / "data", epochs=1, out=tmp_path / "run", batch_size=2, crop=32,
            progress=False, real_layers=layers, label_map="pblm", real_val_layers=3, mil_every=1,
        )
    )
    record = history["epochs"][0]
    assert {"real_layer_f1", "real_clean_flagged", "real_clean_false_alarms", "real_score", "rank"} <= set(record)
    assert 0.0 <= record["real_clean_flagged"] <= 1.0
    assert len(history["step_present_loss"]) == len(history["step_seg_loss"]) > 0
    assert all(np.isfinite(history["step_absent_loss"]))
    # the label map travels with the run: `calibrate` and `export` read the copy
    assert (tmp_path / "run" / "real-label-map.toml").read_text() == (LABEL_MAPS / "pblm.toml").read_text()
    assert "mask_absence_weight" not in json.loads((tmp_path / "run" / "run.json").read_text())["real_layers"]
    # with the masks' absence term the run trains and says so in run.json (a run resumes only with
    # it); the term reads the synthetic crops of each step (batch_size), not the planted real ones
    seen = []
    absence = realbed.mask_absence_loss

    def counted(logits, target):
        seen.append((logits.shape[0], target.shape[0]))
        return absence(logits, target)

    monkeypatch.setattr(realbed, "mask_absence_loss", counted)
    history = train(
        TrainOptions(
            arch="isdnet-sr", data=tmp_path / "data", epochs=1, out=tmp_path / "run-masks", batch_size=2, crop=32,
            progress=False, real_layers=layers, label_map="pblm", real_val_layers=3, mil_every=1, mask_absence_weight=0.5,
            max_steps_per_epoch=2,
        )
    )
    assert all(np.isfinite(history["step_loss"])) and len(history["step_loss"]) == 2
    assert seen == [(2, 2), (2, 2)]  # two steps of two synthetic crops (and two planted ones unread)
    assert json.loads((tmp_path / "run-masks" / "run.json").read_text())["real_layers"]["mask_absence_weight"] == 0.5

    # its domain check: each real training layer fitted twice (as photographed and with a camera's
    # drift, domain.camera_drift), in its folder's group
    import tomllib

    from bedsight_train.calibrate import calibrate
    from bedsight_train.export import export

    calibrate(tmp_path / "run-masks", members=1, progress=False)
    export(tmp_path / "run-masks", tmp_path / "model" / "model.onnx", progress=False)
    table = tomllib.loads((tmp_path / "model" / "manifest.toml").read_text())["domain"]
    info = json.loads((tmp_path / "run-masks" / "run.json").read_text())
    groups = {g["name"]: g["layers"] for g in table["groups"]}
    clean = info["real_layers"]["clean_train_layers"]
    uneven = info["real_layers"]["train_layers"] - clean
    assert groups["real No_Defect"] == 2 * clean and groups["real Powder_Uneven"] == 2 * uneven, groups
    assert table["fit_layers"] == sum(groups.values()) == groups["synthetic"] + 2 * info["real_layers"]["train_layers"]


def test_a_run_reads_its_own_copy_of_the_label_map_once_the_trained_one_is_gone(tmp_path):
    """A run trained in a checkout that is gone since (a worktree removed) still exports with its
    domain check: it carries its label map; a run from before copies were kept reads run.json's."""
    from bedsight_train.calibrate import run_label_map
    from bedsight_train.common import BadInput

    source = tmp_path / "maps" / "site.toml"
    source.parent.mkdir()
    source.write_text((LABEL_MAPS / "pblm.toml").read_text().replace("No_Defect = []", "No_Defect = []\nSite_Clean = []"))
    info = {"real_layers": {"label_map": str(source)}}
    run = tmp_path / "run"
    run.mkdir()
    assert "Site_Clean" in run_label_map(run, info, "real_layers").labels  # no copy: the recorded file
    (run / "real-label-map.toml").write_text(source.read_text())
    source.unlink()
    label_map = run_label_map(run, info, "real_layers")
    assert label_map.labels["Site_Clean"] == [] and label_map.path == run / "real-label-map.toml"
    (run / "real-label-map.toml").unlink()
    with pytest.raises(BadInput, match="site.toml"):
        run_label_map(run, info, "real_layers")


class _Constant(torch.nn.Module):
    """A 'network' that calls every pixel incompleteness with p = 0.9 (whatever the input)."""

    def forward(self, x):
        logits = torch.full((x.shape[0], len(CLASSES), x.shape[2], x.shape[3]), 0.0)
        logits[:, INCOMPLETENESS] = math.log(0.9 / 0.1 * (len(CLASSES) - 1))
        return logits


def test_whole_layers_are_clean_beds_as_well_as_defective_ones(monkeypatch):
    """A whole clean layer is under the absence loss of every class and no presence loss; a whole
    defective layer under both (the network pools globally, so whole beds are seen whole)."""
    from bedsight_train.layers import LayerSet, LabelMap
    from bedsight_train.common import ClassInfo

    label_map = LabelMap(path=None, classes=["incompleteness"], labels={"Clean": [], "Uneven": ["incompleteness"]})
    images = np.stack([_bed(s, 64) for s in range(4)])
    train = LayerSet(None, label_map, ["Clean/0", "Clean/1", "Uneven/0", "Uneven/1"], ["Clean", "Clean", "Uneven", "Uneven"], np.array([[0], [0], [1], [1]], np.float32), images)
    classes = [ClassInfo(name, "#000000", name not in ("background", "lattice")) for name in CLASSES]
    real = realbed.RealLayers(train, train.subset([0, 2]), classes, label_map)
    # p(incompleteness) = 0.9 everywhere: a whole clean layer has no class present (L_pres = 0),
    # a whole Uneven layer has it present, L_pres = -log(mean of the top k p) = -log 0.9
    for share, whole_present in ((1.0, 0.0), (0.0, -math.log(0.9))):
        monkeypatch.setattr(realbed, "WHOLE_CLEAN_SHARE", share)
        _, present = real.weak_step(np.random.default_rng(0), _Constant(), 2, 32, True, 0.5, 0.2)
        assert float(present) == pytest.approx(whole_present, abs=1e-4)


def test_clean_only_weak_losses_read_the_clean_layers_alone(monkeypatch):
    """--weak-layers clean: every crop and every whole layer comes from a clean layer, so the
    constant network's p(incompleteness) = 0.9 gives the absence loss of a clean bed and never a
    presence loss, even where whole layers would otherwise be defective."""
    from bedsight_train.layers import LayerSet, LabelMap
    from bedsight_train.common import ClassInfo

    label_map = LabelMap(path=None, classes=["incompleteness"], labels={"Clean": [], "Uneven": ["incompleteness"]})
    images = np.stack([_bed(s, 64) for s in range(4)])
    train = LayerSet(None, label_map, ["Clean/0", "Uneven/0", "Uneven/1", "Uneven/2"], ["Clean", "Uneven", "Uneven", "Uneven"], np.array([[0], [1], [1], [1]], np.float32), images)
    classes = [ClassInfo(name, "#000000", name not in ("background", "lattice")) for name in CLASSES]
    real = realbed.RealLayers(train, train.subset([0, 1]), classes, label_map)
    monkeypatch.setattr(realbed, "WHOLE_CLEAN_SHARE", 0.0)  # whole layers would all be defective
    seen = []
    original = realbed.RealLayers._crop
    monkeypatch.setattr(realbed.RealLayers, "_crop", lambda self, rng, image, crop, *edge: (seen.append(np.array_equal(image, self.train.images[0])), original(self, rng, image, crop, *edge))[1])
    for seed in range(5):
        absent, present = real.weak_step(np.random.default_rng(seed), _Constant(), 3, 32, True, 0.5, 0.2, clean_only=True)
        assert float(present) == 0.0
        # every class but background is absent on a clean bed (5 pairs): incompleteness at p = 0.9
        # costs -log(0.1) per pixel and again pooled, each other class at p = 0.02 -log(0.98) twice
        expected = (2 * -math.log(0.1) + 4 * 2 * -math.log(0.98)) / 5
        assert float(absent) == pytest.approx(expected, rel=1e-4)
    assert seen and all(seen)


def test_a_class_given_its_own_presence_k_pools_that_many_pixels_of_a_whole_layer(monkeypatch):
    """--presence-top-k incompleteness=SHARE: the whole Uneven layer's L_pres averages the top
    SHARE of its 64x64 pixels; under a network whose p(incompleteness) is 0.9 on one column and
    0.1 elsewhere, k = 64 px (1/64) is -log 0.9 and k = 128 px (1/32) -log 0.5. Every other class
    keeps TOP_K_SHARE."""
    from bedsight_train.layers import LayerSet, LabelMap
    from bedsight_train.common import ClassInfo

    class OneColumn(torch.nn.Module):
        def forward(self, x):
            p = torch.full((x.shape[0], len(CLASSES), x.shape[2], x.shape[3]), 1e-9)
            p[:, CLASSES.index("incompleteness")] = 0.1
            p[:, CLASSES.index("incompleteness"), :, 5] = 0.9
            p[:, 0] = 1.0 - p[:, CLASSES.index("incompleteness")]
            return p.log()

    label_map = LabelMap(path=None, classes=["incompleteness"], labels={"Clean": [], "Uneven": ["incompleteness"]})
    images = np.stack([_bed(s, 64) for s in range(2)])
    train = LayerSet(None, label_map, ["Clean/0", "Uneven/0"], ["Clean", "Uneven"], np.array([[0], [1]], np.float32), images)
    classes = [ClassInfo(name, "#000000", name not in ("background", "lattice")) for name in CLASSES]
    monkeypatch.setattr(realbed, "WHOLE_CLEAN_SHARE", 0.0)
    monkeypatch.setattr(realbed.RealLayers, "_crop", lambda self, rng, image, crop, *edge: image[:crop, :crop])
    for share, expected in ((1 / 64, -math.log(0.9)), (1 / 32, -math.log(0.5))):
        real = realbed.RealLayers(train, train.subset([0, 1]), classes, label_map, presence_top_k={"incompleteness": share})
        assert real.presence_shares == [realbed.TOP_K_SHARE, realbed.TOP_K_SHARE, share, realbed.TOP_K_SHARE, realbed.TOP_K_SHARE, realbed.TOP_K_SHARE]
        _, present = real.weak_step(np.random.default_rng(0), OneColumn(), 1, 32, True, 0.5, 0.2)
        assert float(present) == pytest.approx(expected, rel=1e-4)


def test_weak_classes_limit_the_weak_losses_on_defective_layers_and_clean_ones_stay_clean(monkeypatch):
    """--weak-classes super-elevation: on the Uneven layers only super-elevation (absent from the
    label, p = 0.02 under the constant network) is under the absence loss, and no class under the
    presence loss, so their p(incompleteness) = 0.9 costs nothing; a clean layer keeps every class
    absent (its label is a pixel label). Clean beds are never lit anew, the others always."""
    from bedsight_train.layers import LayerSet, LabelMap
    from bedsight_train.common import ClassInfo

    label_map = LabelMap(path=None, classes=["incompleteness"], labels={"Clean": [], "Uneven": ["incompleteness"]})
    images = np.stack([_bed(s, 64) for s in range(4)])
    train = LayerSet(None, label_map, ["Clean/0", "Clean/1", "Uneven/0", "Uneven/1"], ["Clean", "Clean", "Uneven", "Uneven"], np.array([[0], [0], [1], [1]], np.float32), images)
    classes = [ClassInfo(name, "#000000", name not in ("background", "lattice")) for name in CLASSES]
    real = realbed.RealLayers(train, train.subset([0, 2]), classes, label_map, weak_classes=["super-elevation"])
    assert real.weak_absent[:2].all(1).tolist() == [False, False] and real.weak_absent[:2, 1:].all()
    assert real.weak_absent[2:].sum() == 2 and real.weak_absent[2:, CLASSES.index("super-elevation")].all()
    assert not real.weak_present.any()
    assert list(real.clean) == [0, 1] and list(real.defective) == [2, 3]
    # per (layer, class) pair, per pixel and pooled: incompleteness on a clean bed -log(0.1) twice,
    # any other class -log(0.98) twice; a clean layer gives 5 pairs, an Uneven one 1
    clean_sum, other = 2 * -math.log(0.1) + 4 * 2 * -math.log(0.98), 2 * -math.log(0.98)
    relit = []
    lighting = realbed.lighting
    monkeypatch.setattr(realbed, "lighting", lambda rng, image: (relit.append(1), lighting(rng, image))[1])
    cropped = []
    original = realbed.RealLayers._crop
    monkeypatch.setattr(realbed.RealLayers, "_crop", lambda self, rng, image, crop, *edge: (cropped.append(next(i for i in range(4) if np.array_equal(image, images[i]))), original(self, rng, image, crop, *edge))[1])
    for seed, share in ((1, 1.0), (2, 0.0), (3, 0.0)):
        cropped.clear()
        monkeypatch.setattr(realbed, "WHOLE_CLEAN_SHARE", share)
        relit.clear()
        absent, present = real.weak_step(np.random.default_rng(seed), _Constant(), 3, 32, True, 0.5, 0.2)
        assert float(present) == 0.0
        clean_crops = sum(i < 2 for i in cropped)
        crops = (clean_crops * clean_sum + (3 - clean_crops) * other) / (clean_crops * 5 + 3 - clean_crops)
        whole = clean_sum / 5 if share == 1.0 else other
        assert float(absent) == pytest.approx(0.5 * (crops + whole), rel=1e-4)
        assert len(relit) == (3 - clean_crops) + (share == 0.0)


def test_weak_absent_classes_speak_only_of_absence_where_the_label_lacks_the_class():
    """--weak-classes streaking --weak-absent-classes incompleteness on a Scratch layer (label:
    streaking) and an Uneven one (label: incompleteness): incompleteness is absent on the Scratch
    layer and under no term on the Uneven one (its presence is never asked); streaking keeps both
    terms; the classes in neither list are under none on the defective layers."""
    from bedsight_train.layers import LayerSet, LabelMap
    from bedsight_train.common import ClassInfo

    label_map = LabelMap(path=None, classes=["incompleteness", "streaking"], labels={"Clean": [], "Uneven": ["incompleteness"], "Scratch": ["streaking"]})
    images = np.stack([_bed(s, 64) for s in range(3)])
    train = LayerSet(None, label_map, ["Clean/0", "Uneven/0", "Scratch/0"], ["Clean", "Uneven", "Scratch"], np.array([[0, 0], [1, 0], [0, 1]], np.float32), images)
    classes = [ClassInfo(name, "#000000", name not in ("background", "lattice")) for name in CLASSES]
    real = realbed.RealLayers(train, train.subset([0, 1]), classes, label_map, weak_classes=["streaking"], weak_absent_classes=["incompleteness"])
    inc, streak = CLASSES.index("incompleteness"), CLASSES.index("streaking")
    absent = {(layer, CLASSES[c]) for layer, c in zip(*np.nonzero(real.weak_absent[1:]))}
    present = {(layer, CLASSES[c]) for layer, c in zip(*np.nonzero(real.weak_present[1:]))}
    # layer 0 here is Uneven, 1 Scratch
    assert absent == {(0, "streaking"), (1, "incompleteness")}
    assert present == {(1, "streaking")}
    assert real.weak_absent[0, 1:].all() and not real.weak_present[0].any()  # the clean layer
    assert real.weak_absent[2, inc] and not real.weak_present[1, inc] and real.weak_present[2, streak]


def test_planted_crops_show_the_bed_rim_in_its_place():
    """One planted crop in EDGE_SHARE lies flush with a side of the bed: over many crops of a bed
    whose outermost column is marked, that column shows up in the crops flush with the left side
    (EDGE_SHARE / 4) and in the uniform ones that start at it (1 in 33 of the rest but the right
    side's), far more often than in uniform crops alone."""
    from bedsight_train.layers import LayerSet, LabelMap

    label_map = LabelMap(path=None, classes=["incompleteness"], labels={"Clean": []})
    bed = np.full((64, 64), 100, np.uint8)
    bed[:, 0] = 0  # the left rim
    train = LayerSet(None, label_map, ["Clean/0"], ["Clean"], np.array([[0]], np.float32), bed[None])
    real = realbed.RealLayers.__new__(realbed.RealLayers)
    real.train = train
    rng = np.random.default_rng(0)
    crops = [real._crop(rng, bed, 32, realbed.EDGE_SHARE) for _ in range(4000)]
    with_rim = np.mean([(c == 0).any() for c in crops])
    # flush with the left side, or left uniform (top, bottom, or no side) and starting at 0
    expected = realbed.EDGE_SHARE / 4 + (1 - realbed.EDGE_SHARE / 2) / 33
    assert with_rim == pytest.approx(expected, abs=0.015)
    uniform = np.mean([(real._crop(rng, bed, 32) == 0).any() for _ in range(4000)])
    assert uniform == pytest.approx(1 / 33, abs=0.01)


def test_planted_crops_are_shrunk_from_larger_windows_with_min_scale(monkeypatch):
    """--min-scale 0.25: half the planted crops come from windows of up to 4 crops' side, shrunk
    to the crop, as the synthetic crops are. On a bed whose grey level is its column number (and
    nothing planted, no relighting) a 32-px crop taken as it is spans 31 grey levels; a shrunk
    one spans more, at most the whole bed's 127; at min_scale 1 none is shrunk."""
    from bedsight_train.layers import LayerSet, LabelMap

    monkeypatch.setattr(realbed, "plant", lambda rng, bed: (bed.astype(np.float32), np.zeros(bed.shape, np.uint8)))
    monkeypatch.setattr(realbed, "lighting", lambda rng, image: image)
    label_map = LabelMap(path=None, classes=["incompleteness"], labels={"Clean": []})
    bed = np.tile(np.arange(128, dtype=np.uint8), (128, 1))
    train = LayerSet(None, label_map, ["Clean/0"], ["Clean"], np.array([[0]], np.float32), bed[None])
    real = realbed.RealLayers.__new__(realbed.RealLayers)
    real.train, real.clean = train, np.array([0])
    rng = np.random.default_rng(2)
    spans = []
    for _ in range(100):
        x, y = real.planted_batch(rng, 4, 32, 0.0, 1.0 / 255, min_scale=0.25)  # inputs = grey levels
        assert x.shape == (4, 1, 32, 32) and y.shape == (4, 32, 32) and not y.any()
        spans += [float(np.abs(row[0, 0, -1] - row[0, 0, 0])) for row in x]
    shrunk = np.mean([span > 31.5 for span in spans])
    assert shrunk == pytest.approx(0.5, abs=0.06) and max(spans) <= 127.0
    x, _ = real.planted_batch(rng, 50, 32, 0.0, 1.0 / 255)
    assert all(np.abs(c[0, 0, -1] - c[0, 0, 0]) == pytest.approx(31.0, abs=1e-3) for c in x)
