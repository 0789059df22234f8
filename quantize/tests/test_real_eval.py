"""bedsight_train.real_eval: the metric functions on hand-computed cases, the polygon turning,
and one end-to-end run of the real `bedsight` binary on three real layers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bedsight_train import real_eval as re_
from bedsight_train.common import config_with_keys
from bedsight_train.real_eval import (
    Region,
    aspect_matches,
    chance_inside_share,
    classification_metrics,
    config_with_bed_aspect,
    flagged_share,
    inside_counts,
    min_area_px,
    rasterise_polygon,
    region_detection,
    scale_points,
    turn_points,
    turned_size,
    wilson,
)

REPO = Path(__file__).resolve().parents[2]
# Three of the hand-labelled layers, kept in the repository (tests/data/pblm/README.md).
PBLM = Path(__file__).resolve().parent / "data" / "pblm"
LABELS = REPO / "quantize" / "real-eval" / "labels.json"
MODEL = REPO / "assets" / "default.bsimg"


# --- polygon turning -------------------------------------------------------------------------


def test_a_point_turned_a_quarter_counter_clockwise_by_hand():
    # A 10-wide, 8-high image; the point (x=2, y=3) turned by np.rot90(k=1) is (y, W-1-x) = (3, 7).
    assert turn_points([[2, 3]], 10, 8, 1).tolist() == [[3.0, 7.0]]
    # and it is where np.rot90 puts that pixel
    img = np.zeros((8, 10), dtype=np.uint8)
    img[3, 2] = 1
    rows, cols = np.nonzero(np.rot90(img, 1))
    assert (int(cols[0]), int(rows[0])) == (3, 7)
    assert turned_size(10, 8, 1) == (8, 10)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_turning_points_matches_np_rot90_for_every_quarter(k):
    img = np.zeros((8, 10), dtype=np.uint8)
    img[5, 1] = 1
    rows, cols = np.nonzero(np.rot90(img, k))
    assert turn_points([[1, 5]], 10, 8, k).tolist() == [[float(cols[0]), float(rows[0])]]


def test_a_turned_polygon_rasterises_to_the_turned_raster():
    # vertices on half pixels: no pixel centre lies on an edge, so the rasters must agree exactly
    poly = [[1.5, 1.5], [6.5, 1.5], [6.5, 4.5], [1.5, 4.5]]
    original = rasterise_polygon(np.asarray(poly), 12, 8)
    assert original.sum() == 5 * 3  # columns 2..6, rows 2..4
    turned = rasterise_polygon(turn_points(poly, 12, 8, 1), 8, 12)
    assert np.array_equal(turned, np.rot90(original, 1))


def test_scaling_keeps_the_image_edges_on_the_edges():
    # the left edge of pixel 0 (-0.5) and the right edge of the last pixel (1023.5) of a 1024-wide
    # image land on those of a 256-wide one; the centre of pixel 0 lands a 0.375 pixel inside
    pts = scale_points(np.array([[-0.5, -0.5], [1023.5, 895.5], [0.0, 0.0]]), (1024, 896), (256, 256))
    assert np.allclose(pts, [[-0.5, -0.5], [255.5, 255.5], [-0.375, (0.5 * 256 / 896) - 0.5]])


# --- metrics -----------------------------------------------------------------------------------


def test_a_square_polygon_covers_the_pixels_whose_centres_are_inside():
    inside = rasterise_polygon(np.array([[2, 2], [6, 2], [6, 6], [2, 6]]), 10, 10)
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:6, 2:6] = True  # left/top edges inside, right/bottom outside: 4 x 4
    assert np.array_equal(inside, expected)
    assert not rasterise_polygon(np.array([[0, 0], [1, 1]]), 10, 10).any()  # two points: nothing


CLASSES = ["background", "incompleteness", "streaking", "lattice"]
DEFECTS = [1, 2]


def _case():
    """10x10 mask: a streaking square region covering rows/columns 2..5 (16 px). Inside it,
    rows 2-3 are streaking (8 px) and rows 4-5 incompleteness (8 px); outside, 4 px of streaking
    on row 8 and a row of lattice (not a defect) on row 0."""
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:4, 2:6] = 2
    mask[4:6, 2:6] = 1
    mask[8, 0:4] = 2
    mask[0, :] = 3
    region = Region(cls="streaking", inside=rasterise_polygon(np.array([[2, 2], [6, 2], [6, 6], [2, 6]]), 10, 10))
    return mask, region


def test_flagged_share_counts_only_defect_classes():
    mask, _ = _case()
    assert flagged_share(mask, DEFECTS) == pytest.approx(20 / 100)  # lattice is not flagged


def test_inside_shares_by_hand():
    mask, region = _case()
    c = inside_counts(mask, CLASSES, DEFECTS, [region])
    assert (c["flagged"], c["inside_any"], c["inside_same"], c["labelled_pixels"]) == (20, 16, 8, 16)
    assert c["inside_any"] / c["flagged"] == pytest.approx(0.8)
    assert c["inside_same"] / c["flagged"] == pytest.approx(0.4)
    assert c["per_class"]["streaking"] == {"flagged": 12, "inside_any": 8, "inside_same": 8}
    assert c["per_class"]["incompleteness"] == {"flagged": 8, "inside_any": 8, "inside_same": 0}


def test_min_area_is_the_boxs_pixel_count_for_an_area_of_bed():
    # 250 mm over 256 px: 0.954 mm² a pixel, 5 mm² is 5.24 px; over 1024 px, 83.9 px
    assert min_area_px(5.0, (250.0, 250.0), (256, 256)) == 6
    assert min_area_px(5.0, (250.0, 250.0), (1024, 1024)) == 84
    # exactly four pixels' area is four pixels
    assert min_area_px(1.0, (1.0, 1.0), (2, 2)) == 4
    assert min_area_px(0.0, (250.0, 250.0), (256, 256)) == 0


def test_region_recall_by_hand():
    mask, region = _case()
    d = region_detection(mask, CLASSES, DEFECTS, region, 6)
    assert (d["area_px"], d["flagged_inside"], d["own_class_inside"]) == (16, 16, 8)
    assert d["detected_any"] and d["detected_same"] and not d["below_min_area"]
    d = region_detection(mask, CLASSES, DEFECTS, region, 10)  # 16 flagged, only 8 of its own class
    assert d["detected_any"] and not d["detected_same"]
    d = region_detection(mask, CLASSES, DEFECTS, region, 17)
    assert not d["detected_any"] and d["below_min_area"]
    # a class the model does not have is never detected as its own class
    d = region_detection(mask, CLASSES, DEFECTS, Region("super-elevation", region.inside), 6)
    assert d["detected_any"] and not d["detected_same"]


def test_chance_level_of_the_inside_share_by_hand():
    # layer 1: 20 flagged px, regions cover 16 % of its bed; layer 2: 60 flagged px, 50 %:
    # at random, (20 * 0.16 + 60 * 0.5) / 80 = 33.2 / 80 of the flagged pixels would be inside
    assert chance_inside_share([20, 60], [0.16, 0.5]) == pytest.approx(33.2 / 80)
    assert chance_inside_share([0, 0], [0.1, 0.2]) is None


def test_classification_by_hand():
    truth = [{"a"}, {"a", "b"}, set(), {"b"}]
    predicted = [{"a"}, {"b"}, {"a"}, set()]
    m = classification_metrics(truth, predicted, ["a", "b", "c"])
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["tp"], a["fp"], a["fn"], a["tn"]) == (1, 1, 1, 1)
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (1, 0, 1, 2)
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert (c["support"], c["f1"]) == (0, 0.0)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert m["exact_match"] == pytest.approx(1 / 4)  # only the first layer's set is right


def test_wilson_interval_by_hand():
    low, high = wilson(0, 4)
    assert low == 0.0 and high == pytest.approx(0.4899, abs=1e-4)  # 3.8416/4 / (1 + 3.8416/4)
    low, high = wilson(4, 4)
    assert high == 1.0 and low == pytest.approx(1 - 0.4899, abs=1e-4)
    assert wilson(0, 0) is None


def test_the_bed_is_fitted_to_a_frame_of_another_aspect():
    text = (REPO / "assets" / "bedsight.toml").read_text()
    assert aspect_matches((1024, 1024), (250.0, 250.0))
    assert not aspect_matches((896, 1024), (250.0, 250.0))  # the box would FAULT it
    new_text, bed = config_with_bed_aspect(text, (896, 1024))
    assert bed == pytest.approx((218.75, 250.0))
    import tomllib

    old, new = tomllib.loads(text), tomllib.loads(new_text)
    assert new["bed"]["width_mm"] == pytest.approx(218.75) and new["bed"]["height_mm"] == 250.0
    assert aspect_matches((896, 1024), (new["bed"]["width_mm"], new["bed"]["height_mm"]))
    del old["bed"], new["bed"]
    assert old == new  # nothing else changed
    assert new_text.count("\n") == text.count("\n")  # comments kept


def test_the_cameras_corners_and_flat_field_are_set_in_the_bed_table():
    import tomllib

    text = (REPO / "assets" / "bedsight.toml").read_text()
    corners = [[6.1, 58.3], [993.6, 16.4], [999.7, 984.1], [6.1, 984.1]]
    new_text = config_with_keys(text, "bed", {"corners_px": corners, "flat_field": "/cal/bed.flat-field.tiff"})
    old, new = tomllib.loads(text), tomllib.loads(new_text)
    assert new["bed"] == {**old["bed"], "corners_px": corners, "flat_field": "/cal/bed.flat-field.tiff"}
    del old["bed"], new["bed"]
    assert old == new  # nothing else changed
    # set again: the keys are replaced, not added twice
    again = config_with_keys(new_text, "bed", {"corners_px": corners, "flat_field": "/other.tiff"})
    assert tomllib.loads(again)["bed"]["flat_field"] == "/other.tiff" and again.count("\ncorners_px = [[") == 1


def test_a_labelled_polygon_reaches_the_bed_through_the_cameras_corners():
    # a 1000x1000 photograph (not turned) whose bed is the square 100..900; an 80x80 mask
    layer = re_.Layer(name="x", label="x", source=Path("x"), split="test", hand={"width": 1000, "height": 1000})
    layer.png_size = (1000, 1000)
    layer.corners_px = np.array([[100, 100], [900, 100], [900, 900], [100, 900]], float)
    # corners onto the corner pixels' centres: 100 -> 0 and 900 -> 79, so x -> (x - 100) * 79 / 800
    pts = re_.region_points(layer, [[100, 100], [500, 300], [900, 900]], (80, 80), 0)
    np.testing.assert_allclose(pts, [[0, 0], [39.5, 19.75], [79, 79]], atol=1e-9)
    # without corners the photograph is the bed, resized
    layer.corners_px = None
    np.testing.assert_allclose(re_.region_points(layer, [[499.5, 499.5]], (80, 80), 0), [[39.5, 39.5]], atol=1e-9)


# --- end to end through the real binary -------------------------------------------------------

E2E_LAYERS = [
    "No_Defect/converted_ 0018.jpg",
    "Powder_Uneven/converted_ 0646.jpg",
    "Plateform_Powder_Uneven/PowderRecoat_20211125_135551.jpg",
]


# The 1024 camera's commissioning frame: the first clean layer of the training split.
FLAT_FIELD_REFERENCE = "No_Defect/converted_ 0001.jpg"


def test_end_to_end_on_three_real_layers(tmp_path):
    binary = re_.find_binary()
    if binary is None:
        pytest.fail("no bedsight binary: run ./test.sh (it builds one and sets BEDSIGHT_BIN), or cargo build")
    layers = tmp_path / "pblm"
    for name in E2E_LAYERS + [FLAT_FIELD_REFERENCE]:
        (layers / name).parent.mkdir(parents=True, exist_ok=True)
        (layers / name).symlink_to(PBLM / name)
    doc = json.loads(LABELS.read_text())
    doc["layers"] = [entry for entry in doc["layers"] if entry["image"] in E2E_LAYERS]
    assert len(doc["layers"]) == 3
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(doc))
    out = tmp_path / "out"

    report = re_.evaluate_real(MODEL, layers, labels, out, split="test", bedsight_bin=binary, progress=False)

    assert json.loads((out / "real-eval.json").read_text()) == json.loads(json.dumps(report))
    assert "## Per folder" in (out / "real-eval.md").read_text()
    # one layer per folder: each is its folder's test layer, and hand-labelled
    assert set(report["per_folder"]) == {n.split("/")[0] for n in E2E_LAYERS}
    for folder in report["per_folder"].values():
        assert folder["layers"] == 1
        assert set(folder["verdicts"]) == set(re_.VERDICTS)
        assert sum(folder["verdicts"].values()) == folder["layers"]
        assert folder["not_pass_share"] == pytest.approx(1 - folder["verdicts"]["PASS"] / folder["layers"])
        assert isinstance(folder["mean_flagged_share"], float) and 0.0 <= folder["mean_flagged_share"] <= 1.0
        assert set(folder["class_found_share"]) == set(report["run"]["defect_classes"])
        assert all(0.0 <= v <= 1.0 for v in folder["class_found_share"].values())
    assert report["overall"]["layers"] == 3 == sum(report["overall"]["verdicts"].values())
    # every layer is judged as its camera's integrator set the box up: the label map's bed
    # corners as [bed] corners_px, and for the 1024 camera the flat field that `bedsight
    # calibrate --flat-field` measured on the reference layer; the Plateform layer (3772x3302) is
    # resized to a long side of 1024 and turned (896x1024), and its corners cut the plate out
    (plate,) = [l for l in report["layers"] if l["folder"] == "Plateform_Powder_Uneven"]
    assert plate["png_size"] == [896, 1024] and plate["resized"] and plate["verdict"] != "FAULT"
    assert report["run"]["bed_fitted_to_frame"] == []
    cameras = {c["camera"]: c for c in report["run"]["cameras"]}
    assert set(cameras) == {"pblm-1024", "pblm-plate"}
    assert cameras["pblm-1024"]["flat_field_reference"] == FLAT_FIELD_REFERENCE
    assert Path(cameras["pblm-1024"]["flat_field"]).is_file() and cameras["pblm-plate"]["flat_field"] is None
    # the Plateform camera is lit by the median of its layers, and one layer is too few: judged
    # without a flat field, and the report says so
    assert "camera pblm-plate: fewer than 5 layers of Plateform_Powder_Uneven to take the median of, so judged without a flat field" in report["run"]["notes"]
    assert cameras["pblm-plate"]["frame_px"] == [896, 1024]
    assert cameras["pblm-plate"]["corners_px"][1] == [pytest.approx(0.955 * 895, abs=0.01), pytest.approx(0.035 * 1023, abs=0.01)]
    import tomllib

    bed = tomllib.loads(Path(cameras["pblm-1024"]["config"]).read_text())["bed"]
    assert bed["corners_px"] == cameras["pblm-1024"]["corners_px"] and bed["flat_field"] == str(Path(cameras["pblm-1024"]["flat_field"]).resolve())
    clean = report["clean"]
    assert clean["layers"] == 1 and clean["folders"] == ["No_Defect"]
    assert clean["false_alarm_rate"] in (0.0, 1.0)
    cls = report["classification"]
    assert cls["layers"] + cls["left_out_fault"] == 3
    for m in cls["per_class"].values():
        assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == cls["layers"]
        assert all(0.0 <= m[k] <= 1.0 for k in ("precision", "recall", "f1"))
    assert 0.0 <= cls["macro_f1"] <= 1.0
    hand = report["hand_labelled"]
    assert hand["layers"] == 3 and hand["in_split"] == 3 and hand["not_judged"] == []
    n_regions = sum(len(entry["regions"]) for entry in doc["layers"])
    assert hand["regions"]["all"]["regions"] == n_regions
    assert sum(v["regions"] for k, v in hand["regions"].items() if k != "all") == n_regions
    assert isinstance(hand["flagged_pixels"], int)
    assert sum(v["flagged"] for v in hand["per_flagged_class"].values()) == hand["flagged_pixels"]
    # per folder: each of the three layers in its own, the pixels adding up to the whole
    assert {f: v["layers"] for f, v in hand["per_folder"].items()} == {n.split("/")[0]: 1 for n in E2E_LAYERS}
    for key in ("flagged", "inside_any", "inside_same"):
        assert sum(v[key] for v in hand["per_folder"].values()) == round(hand["flagged_pixels"] * (1 if key == "flagged" else hand[f"{key}_share"] or 0))
    if hand["flagged_pixels"]:
        assert 0.0 <= hand["inside_same_share"] <= hand["inside_any_share"] <= 1.0
        assert 0.0 <= hand["inside_any_chance"] <= 1.0
    assert hand["clean_layers"]["layers"] == 1
    assert isinstance(hand["clean_layers"]["mean_flagged_share"], float)
    for layer in report["layers"]:
        assert layer["verdict"] in re_.VERDICTS
        assert isinstance(layer["flagged_share"], float)
        assert isinstance(layer["classes_found"], list)
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(overlays) == 3
    from PIL import Image

    with Image.open(out / "overlays" / overlays[0]) as im:
        assert im.width == re_.OVERLAY_WIDTH


def test_layers_of_two_folders_with_one_file_name_keep_their_own_masks(tmp_path):
    """PBLM numbers each folder's layers on its own, so a clean layer and an uneven one can share
    a file name, and the box names its masks by it: each layer must be scored on its own mask."""
    binary = re_.find_binary()
    if binary is None:
        pytest.fail("no bedsight binary: run ./test.sh (it builds one and sets BEDSIGHT_BIN), or cargo build")
    layers = tmp_path / "pblm"
    same = "converted_ 0646.jpg"
    for name, source in ((f"No_Defect/{same}", "No_Defect/converted_ 0018.jpg"), (f"Powder_Uneven/{same}", f"Powder_Uneven/{same}"),
                         (FLAT_FIELD_REFERENCE, FLAT_FIELD_REFERENCE)):
        (layers / name).parent.mkdir(parents=True, exist_ok=True)
        (layers / name).symlink_to(PBLM / source)
    report = re_.evaluate_real(MODEL, layers, None, tmp_path / "out", split="test", bedsight_bin=binary, progress=False)
    by_folder = {l["folder"]: l for l in report["layers"]}
    assert set(by_folder) == {"No_Defect", "Powder_Uneven"}
    masks = {folder: re_.read_mask(next((tmp_path / "out" / "work" / "analysis").glob(f"*/{folder}/converted__0646.mask.png"))) for folder in by_folder}
    assert not np.array_equal(masks["No_Defect"], masks["Powder_Uneven"])
    for folder, layer in by_folder.items():
        defect = np.isin(masks[folder], [i for i, name in enumerate(["background", "super-elevation", "incompleteness", "hopping", "streaking", "lattice"]) if name in report["run"]["defect_classes"]])
        assert layer["flagged_share"] == pytest.approx(float(defect.mean()))


def test_the_uncertainty_is_summarised_against_the_layers_judged_wrong():
    """Four layers: a clean one PASS (right), an uneven one with incompleteness and hopping, which
    the label map has no class for (right), an uneven
    one called super-elevation too (wrong), an uneven one PASS (wrong). Scores 0.1, 0.2, 0.4,
    0.3: every wrong layer scores above every right one, AUROC 1; the means by hand."""
    def layer(folder, verdict, found, score):
        return {"split": "test", "folder": folder, "verdict": verdict, "classes_found": found, "uncertainty": score}

    layers = [
        layer("No_Defect", "PASS", ["hopping"], 0.1),  # found below the rules' limits: PASS, no class
        layer("Powder_Uneven", "RECOAT", ["hopping", "incompleteness"], 0.2),  # hopping: no label speaks of it
        layer("Powder_Uneven", "PAUSE", ["incompleteness", "super-elevation"], 0.4),
        layer("Powder_Uneven", "PASS", ["incompleteness"], 0.3),
        layer("Powder_Uneven", "FAULT", [], None),
        {**layer("Powder_Uneven", "RECOAT", ["incompleteness"], 0.9), "split": "train"},
    ]
    summary = re_.uncertainty_summary(layers, "test", {"No_Defect": [], "Powder_Uneven": ["incompleteness"]}, ["incompleteness", "super-elevation"])
    assert summary["judged"] == 4 and summary["wrong"] == 2
    assert summary["auroc_wrong"] == 1.0
    assert summary["mean_score_wrong"] == pytest.approx(0.35) and summary["mean_score_right"] == pytest.approx(0.15)
    assert summary["per_folder"]["Powder_Uneven"] == {"judged": 3, "wrong": 2, "mean_score": pytest.approx(0.3)}
    assert re_.uncertainty_summary([layers[4]], "test", {"Powder_Uneven": ["incompleteness"]}, ["incompleteness"]) is None


def test_the_domain_check_is_summarised_per_folder():
    from bedsight_train.real_eval import domain_summary

    def layer(folder, split, score, familiar):
        return {"folder": folder, "split": split, "domain": {"score": score, "threshold": 1.5, "familiar": familiar}}

    layers = [layer("No_Defect", "test", 0.5, True), layer("No_Defect", "test", 2.0, False), layer("No_Defect", "test", 1.0, True),
              layer("Powder_Uneven", "test", 0.7, True), layer("Powder_Uneven", "train", 9.0, False),
              {"folder": "Powder_Uneven", "split": "test", "domain": None}]
    summary = domain_summary(layers, "test")
    assert (summary["judged"], summary["familiar"], summary["threshold"]) == (4, 3, 1.5)
    assert summary["per_folder"]["No_Defect"] == {"judged": 3, "familiar": 2, "familiar_share": 2 / 3, "median_score": 1.0}
    assert summary["per_folder"]["Powder_Uneven"]["median_score"] == 0.7
    assert domain_summary([{"folder": "x", "split": "test", "domain": None}], "test") is None


def test_split_all_judges_every_layer_of_a_folder(tmp_path):
    """--split all: every layer of a camera the model never learnt from, whatever the held-out
    split would call it; the summaries count them all."""
    from bedsight_train.layers import load_label_map

    layers = tmp_path / "pblm"
    (layers / "Powder_Uneven").mkdir(parents=True)
    for n in range(10):
        (layers / "Powder_Uneven" / f"converted_ {n:04d}.jpg").symlink_to(PBLM / "Powder_Uneven" / "converted_ 0646.jpg")
    lmap = load_label_map(Path("pblm"))
    test = re_.pick_layers(layers, lmap, "test", None)
    every = re_.pick_layers(layers, lmap, "all", None)
    assert len(every) == 10 and {l.split for l in every} == {"train", "val", "test"}
    assert 0 < len(test) < 10 and all(l.split == "test" for l in test)
    scored = [{"folder": "Powder_Uneven", "split": l.split, "domain": {"score": 1.0, "threshold": 1.5, "familiar": True}} for l in every]
    assert re_.domain_summary(scored, "all")["judged"] == 10
    assert re_.domain_summary(scored, "test")["judged"] == len(test)
    with pytest.raises(re_.BadInput, match="--split 'some': expected one of train, val, test, all"):
        re_.pick_layers(layers, lmap, "some", None)


def _report(name, split, layers):
    return {"run": {"model": f"/x/{name}.bsimg", "model_name": name, "model_version": "1", "split": split}, "layers": layers}


def _foreign_layer(folder, split, uncertainty, domain_score, verdict="RECOAT"):
    domain = None if domain_score is None else {"score": domain_score, "threshold": 1.5, "familiar": domain_score <= 1.5}
    return {"folder": folder, "split": split, "verdict": verdict, "uncertainty": uncertainty, "domain": domain}


def test_foreign_layers_against_the_models_own_by_hand(tmp_path):
    """Own held-out layers score uncertainty 0.0, 0.1, 0.2 (domain 0.5, 1.0, 2.0: two familiar);
    foreign ones 0.15 and 0.3 (domain 1.2, 3.0: one unfamiliar). The uncertainty AUROC counts the
    own-foreign pairs a foreign layer wins: 0.15 beats 0.0 and 0.1, 0.3 beats all three, 5 of 6;
    the domain score's: 1.2 beats 0.5 and 1.0, 3.0 all three, 5 of 6. A training layer and a
    FAULT of the own report, and a foreign layer without a domain finding, count as said."""
    from bedsight_train import foreign

    own = _report("m", "test", [_foreign_layer("A", "test", 0.0, 0.5), _foreign_layer("A", "test", 0.1, 1.0, "PASS"),
                                _foreign_layer("A", "test", 0.2, 2.0, "REVIEW"), _foreign_layer("A", "train", 0.9, 9.0),
                                _foreign_layer("A", "test", None, None, "FAULT")])
    theirs = _report("m", "all", [_foreign_layer("B", "train", 0.15, 1.2), _foreign_layer("B", "test", 0.3, 3.0, "REVIEW")])
    r = foreign.compare(own, theirs)
    assert r["auroc_uncertainty"] == pytest.approx(5 / 6) and r["auroc_domain_score"] == pytest.approx(5 / 6)
    assert (r["own"]["layers"], r["own"]["familiar"], r["own"]["domain_scored"]) == (3, 2, 3)
    assert r["own"]["mean_uncertainty"] == pytest.approx(0.1) and r["own"]["verdicts"] == {"PASS": 1, "RECOAT": 1, "REVIEW": 1}
    assert r["foreign"]["unfamiliar_share"] == pytest.approx(0.5) and r["foreign"]["mean_uncertainty"] == pytest.approx(0.225)
    assert list(r["targets"].values()) == [False, False, True]
    text = foreign.markdown(r)
    assert "| own | 3 | 2/3 = 67 % (21-94) | 1.00e-01 |" in text and "the uncertainty score 0.833, the domain score 0.833" in text

    # written by the command, and refused by name: another model, a shared folder, a missing report
    (tmp_path / "own.json").write_text(json.dumps(own))
    (tmp_path / "foreign.json").write_text(json.dumps(theirs))
    assert foreign.main(["--own", str(tmp_path / "own.json"), "--foreign", str(tmp_path / "foreign.json"), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "foreign.json").read_text())["auroc_uncertainty"] == pytest.approx(5 / 6)
    with pytest.raises(re_.BadInput, match="different models \\(model_name: 'm' and 'n'\\)"):
        foreign.compare(own, {**theirs, "run": {**theirs["run"], "model_name": "n"}})
    with pytest.raises(re_.BadInput, match="both hold the folder\\(s\\) A"):
        foreign.compare(own, _report("m", "all", [_foreign_layer("A", "test", 0.3, 3.0)]))
    with pytest.raises(re_.BadInput, match="--foreign .*missing.json: not found"):
        foreign.load_report(tmp_path / "missing.json", "--foreign")
