"""A site's labels in the formats labelling tools read (labels.py, issue 15 item 3): export to COCO
and labelme and import back gives the same masks pixel for pixel, whatever drew them (polygons, a
brush, an eraser that cut into a polygon); the polygons come back as polygons; bad files are
refused by name before anything is written."""
import json

import numpy as np
import pytest

from bedsight_train.common import DEFAULT_CLASSES, BadInput
from bedsight_train.labels import LayerLabels, export_labels, import_labels, rasterise, read_store, write_layer

CLASSES = [c.name for c in DEFAULT_CLASSES]
STREAKING, INCOMPLETENESS, SUPER = CLASSES.index("streaking"), CLASSES.index("incompleteness"), CLASSES.index("super-elevation")


def _store(tmp_path):
    """Two layers as a labeller leaves them: a streak outlined as a polygon; an incompleteness
    polygon that the eraser then cut into (no longer its region's outline); a brushed
    super-elevation blob with no polygon; a second layer with a polygon only."""
    store = tmp_path / "labels"
    w, h = 96, 64
    streak = [[4, 20], [90, 22], [90, 25], [4, 23]]
    tongue = [[60, 30], [95, 30], [95, 63], [70, 63]]
    mask = np.zeros((h, w), np.uint8)
    mask[rasterise(streak, w, h)] = STREAKING
    mask[rasterise(tongue, w, h)] = INCOMPLETENESS
    mask[40:44, 80:90] = 0  # the eraser
    yy, xx = np.mgrid[0:h, 0:w]
    mask[(yy - 10) ** 2 + (xx - 30) ** 2 <= 9] = SUPER  # the brush
    first = LayerLabels("layer-0007", "layer-0007.png", mask, CLASSES,
                        [{"class": "streaking", "points": streak}, {"class": "incompleteness", "points": tongue}], "ana", "2026-12-03T10:00:00Z")
    second_mask = np.zeros((h, w), np.uint8)
    square = [[10, 10], [30, 10], [30, 30], [10, 30]]
    second_mask[rasterise(square, w, h)] = INCOMPLETENESS
    second = LayerLabels("layer-0008", "layer-0008.png", second_mask, CLASSES, [{"class": "incompleteness", "points": square}], "ben", "2026-12-03T10:05:00Z")
    for layer in (first, second):
        write_layer(store, layer)
    return store


@pytest.mark.parametrize("fmt", ["coco", "labelme"])
def test_export_then_import_gives_the_same_masks(tmp_path, fmt):
    store = _store(tmp_path)
    before = {layer.name: layer for layer in read_store(store)}
    out = tmp_path / ("coco.json" if fmt == "coco" else "labelme")
    export_labels(store, fmt, out)
    back = tmp_path / "back"
    import_labels(out, fmt, back)
    after = {layer.name: layer for layer in read_store(back)}
    assert set(after) == set(before)
    for name, layer in before.items():
        assert np.array_equal(after[name].mask, layer.mask), name
        assert after[name].labelled_by == layer.labelled_by and after[name].labelled_at == layer.labelled_at
    # the streak's outline survives as a polygon; the erased tongue is pixels only
    polygons = [p["class"] for p in after["layer-0007"].polygons]
    assert polygons == ["streaking"], polygons
    assert after["layer-0008"].polygons[0]["points"] == [[10.0, 10.0], [30.0, 10.0], [30.0, 30.0], [10.0, 30.0]]


def test_the_coco_file_has_what_cvat_reads(tmp_path):
    store = _store(tmp_path)
    doc = json.loads(export_labels(store, "coco", tmp_path / "coco.json").read_text())
    assert [c["name"] for c in doc["categories"]] == CLASSES[1:]
    assert [(i["file_name"], i["width"], i["height"]) for i in doc["images"]] == [("layer-0007.png", 96, 64), ("layer-0008.png", 96, 64)]
    first = [a for a in doc["annotations"] if a["image_id"] == 1]
    # the streak as a polygon; the eroded tongue and the brushed blob as run-length encoded masks
    assert sorted((CLASSES[a["category_id"]], a["iscrowd"]) for a in first) == [("incompleteness", 1), ("streaking", 0), ("super-elevation", 1)]
    blob = next(a for a in first if CLASSES[a["category_id"]] == "super-elevation")
    assert blob["area"] == 29.0 and blob["bbox"] == [27.0, 7.0, 7.0, 7.0]  # a disc of radius 3: 29 pixels


def test_labelme_files_carry_polygons_and_mask_shapes(tmp_path):
    store = _store(tmp_path)
    folder = export_labels(store, "labelme", tmp_path / "labelme")
    doc = json.loads((folder / "layer-0007.json").read_text())
    assert (doc["imageWidth"], doc["imageHeight"], doc["imagePath"]) == (96, 64, "layer-0007.png")
    assert sorted((s["label"], s["shape_type"]) for s in doc["shapes"]) == [("incompleteness", "mask"), ("streaking", "polygon"), ("super-elevation", "mask")]


def test_bad_files_are_refused_by_name_and_nothing_is_written(tmp_path):
    store = _store(tmp_path)
    folder = export_labels(store, "labelme", tmp_path / "labelme")
    doc = json.loads((folder / "layer-0008.json").read_text())
    doc["shapes"][0]["label"] = "scratch"
    (folder / "layer-0008.json").write_text(json.dumps(doc))
    with pytest.raises(BadInput, match=r"layer-0008\.json: shape 0: label 'scratch' is not one of super-elevation, incompleteness"):
        import_labels(folder, "labelme", tmp_path / "back")
    assert not (tmp_path / "back").exists()

    coco = json.loads(export_labels(store, "coco", tmp_path / "coco.json").read_text())
    coco["annotations"][0]["image_id"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(BadInput, match=r"bad\.json: annotation 1: image_id 99 is not an image of the file"):
        import_labels(tmp_path / "bad.json", "coco", tmp_path / "back")

    # two classes on one pixel
    coco = json.loads((tmp_path / "coco.json").read_text())
    streak = next(a for a in coco["annotations"] if a["category_id"] == STREAKING)
    clash = dict(streak, id=999, category_id=SUPER)
    coco["annotations"].append(clash)
    (tmp_path / "clash.json").write_text(json.dumps(coco))
    with pytest.raises(BadInput, match=r"annotation 999: \d+ of its pixels are already labelled streaking"):
        import_labels(tmp_path / "clash.json", "coco", tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_a_store_whose_mask_disagrees_with_its_labels_file_is_refused(tmp_path):
    from PIL import Image

    store = _store(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(store / "layer-0008.mask.png")
    with pytest.raises(BadInput, match=r"layer-0008\.mask\.png: 10x10, but layer-0008\.labels\.json says 96x64"):
        read_store(store)
    (store / "layer-0008.mask.png").unlink()
    with pytest.raises(BadInput, match=r"layer-0008\.labels\.json: its mask layer-0008\.mask\.png is missing"):
        read_store(store)


def test_a_store_becomes_a_dataset_the_model_is_measured_on(tmp_path, tiny_isdnet_model):
    """The box's layout (labels/ beside images/NNNNNN-LNNNNN-VERDICT/rectified.png): the store and
    its layer images make a dataset that load_dataset reads with the store's masks, and that
    `evaluate --split all` measures a model on: the figures on the site's own labels."""
    from bedsight_train import data as data_mod
    from bedsight_train.labels import make_dataset
    from bedsight_train.common import save_png_grey
    from bedsight_train.evaluate import evaluate

    state = tmp_path / "state"
    rng = np.random.default_rng(0)
    for i in range(6):
        name = f"{i:06d}-L{i + 1:05d}-PASS"
        save_png_grey(state / "images" / name / "rectified.png", rng.integers(90, 110, (64, 64)).astype(np.uint8))
        mask = np.zeros((64, 64), np.uint8)
        mask[10 + i : 14 + i, 5:60] = STREAKING
        write_layer(state / "labels", LayerLabels(name, f"{name}/rectified.png", mask, CLASSES, [], "ana", "2026-12-03T10:00:00Z"))
    assert make_dataset(state / "labels", None, tmp_path / "site") == 6
    ds = data_mod.load_dataset(tmp_path / "site", progress=False)
    assert [c.name for c in ds.classes] == CLASSES and ds.images.shape == (6, 64, 64)
    assert sorted(int((m == STREAKING).sum()) for m in ds.masks) == [220] * 6  # 4 rows x 55 columns each
    with pytest.raises(BadInput, match="already there"):
        make_dataset(state / "labels", None, tmp_path / "site")
    (state / "images" / "000003-L00004-PASS" / "rectified.png").unlink()
    with pytest.raises(BadInput, match=r"000003-L00004-PASS: its image .* is not there"):
        make_dataset(state / "labels", None, tmp_path / "other")
    metrics = evaluate(tiny_isdnet_model, tmp_path / "site", tmp_path / "eval", split="all", progress=False)
    assert len(metrics["iou"]) == len(CLASSES) and 0.0 <= metrics["iou"][STREAKING] <= 1.0
    # every labelled pixel is counted once: background and streaking, 64 x 64 x 6
    assert sum(map(sum, metrics["confusion"])) == 6 * 64 * 64
    assert sum(metrics["confusion"][STREAKING]) == 6 * 220
