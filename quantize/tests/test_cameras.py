"""Where the bed is and how it is lit, per camera of a label map ([cameras.*] in layers.py): the
label map's checks, the homography against points worked out by hand, the flat field against its
formula, and a layer folder read through its camera as the box would see it."""

import numpy as np
import pytest
from PIL import Image

from bedsight_train import flat_field
from bedsight_train.common import BadInput
from bedsight_train.layers import CameraViews, bed_square, flat_field_references, homography, load_label_map, load_layer_folders, map_points, rectify, scan_layer_folders

HEAD = 'classes = ["incompleteness"]\n[labels]\nClean = []\nUneven = ["incompleteness"]\n'


def label_map(tmp_path, cameras: str):
    path = tmp_path / "map.toml"
    path.write_text(HEAD + cameras)
    return load_label_map(path)


def test_a_camera_names_its_folders_corners_and_clean_reference(tmp_path):
    lm = label_map(tmp_path, '[cameras.a]\nfolders = ["Clean", "Uneven"]\nbed_corners = [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]]\nflat_field_from = "Clean"\n')
    assert lm.camera("Uneven").name == "a" and lm.camera("Clean").bed_corners[2] == (0.9, 0.9)
    assert lm.camera("Uneven").flat_field_from == "Clean"


@pytest.mark.parametrize(
    "cameras, says",
    [
        ('[cameras.a]\nfolders = ["Nope"]\n', "cameras.a.folders names Nope, which [labels] does not list"),
        ('[cameras.a]\nfolders = ["Clean"]\n[cameras.b]\nfolders = ["Clean"]\n', "cameras.b.folders names Clean, which cameras.a already holds"),
        ('[cameras.a]\nfolders = ["Clean"]\nbed_corners = [[0, 0], [1, 0], [1, 1]]\n', "cameras.a.bed_corners must be four [x, y] shares"),
        ('[cameras.a]\nfolders = ["Clean"]\nbed_corners = [[0, 1], [1, 1], [1, 0], [0, 0]]\n', "cameras.a.bed_corners are not a bed"),
        ('[cameras.a]\nfolders = ["Clean", "Uneven"]\nflat_field_from = "Uneven"\n', "a flat field is measured on a clean bed, and this folder's layers carry incompleteness"),
        ('[cameras.a]\nfolders = ["Uneven"]\nflat_field_from = "Clean"\n', "not one of this camera's folders"),
        ('[cameras.a]\nfolders = ["Clean"]\nlens = "wide"\n', "cameras.a: unknown key(s) lens"),
        ('[cameras.a]\nfolders = ["Clean", "Uneven"]\nflat_field_from = "Clean"\nflat_field_median_of = "Uneven"\n', "cameras.a: flat_field_from and flat_field_median_of both set"),
        ('[cameras.a]\nfolders = ["Uneven"]\nflat_field_median_of = "Clean"\n', "cameras.a.flat_field_median_of = 'Clean': not one of this camera's folders"),
    ],
)
def test_a_bad_camera_is_refused_by_name(tmp_path, cameras, says):
    with pytest.raises(BadInput) as e:
        label_map(tmp_path, cameras)
    assert says in str(e.value) and str(tmp_path / "map.toml") in str(e.value)


def test_the_homography_takes_the_corners_to_the_square_and_keeps_straight_lines():
    # a trapezoid: the top edge 40..60 of 100, the bottom edge the whole width
    corners = np.array([[40, 0], [60, 0], [100, 100], [0, 100]], float)
    # onto the centres of a 10x10 bed's corner pixels, (0, 0) to (9, 9)
    assert bed_square(10).tolist() == [[0, 0], [9, 0], [9, 9], [0, 9]]
    h = homography(corners, bed_square(10))
    np.testing.assert_allclose(map_points(h, corners), bed_square(10), atol=1e-9)
    # the middle of the bottom edge is the middle of the square's bottom edge
    np.testing.assert_allclose(map_points(h, [[50, 100]]), [[4.5, 9]], atol=1e-9)
    # the trapezoid's axis of symmetry x = 50 stays the square's x = 4.5 at every height
    np.testing.assert_allclose(map_points(h, [[50, 25], [50, 75]])[:, 0], [4.5, 4.5], atol=1e-9)


def test_rectify_cuts_the_bed_out_of_the_photograph():
    # a bed of 200 inside a 100x80 photograph at x 20..70, y 10..60, walls of 0 around it
    photo = np.zeros((80, 100), np.uint8)
    photo[10:60, 20:70] = 200
    # the corners are the centres of the bed's corner pixels
    bed = rectify(photo, np.array([[20, 10], [69, 10], [69, 59], [20, 59]], float), 25)
    assert bed.shape == (25, 25)
    # (the corner pixels sample their centres to within rounding: 199 or 200)
    assert bed.min() >= 199 and bed.max() == 200 and (bed[1:-1, 1:-1] == 200).all()
    # one pixel further out on every side, the bed's edge pixels take in the wall
    wider = rectify(photo, np.array([[19, 9], [70, 9], [70, 60], [19, 60]], float), 25)
    assert wider[0].max() == 0 and wider[12, 12] == 200


def test_the_flat_field_evens_a_bed_lit_three_to_one():
    # an evenly spread bed (100) under light that rises 3x from left to right
    light = np.linspace(0.5, 1.5, 256, dtype=np.float32)[None, :].repeat(128, 0)
    frame = np.round(100 * light).astype(np.uint8)
    gains = flat_field.gain(flat_field.lighting_reference(frame), "test frame")
    # gain = mean(reference) / reference: the corrected bed is the reference's mean everywhere,
    # away from the borders where the low-pass leans on the nearest edge
    corrected = flat_field.apply(frame, gains, "test frame")
    assert np.abs(corrected[:, 32:-32].astype(int) - 100).max() <= 2
    assert 1.8 < gains[:, 0].mean() / gains[:, -1].mean() < 3.2


def test_a_flat_field_of_another_size_or_from_a_dark_frame_is_refused():
    gains = flat_field.gain(np.full((4, 4), 0.5, np.float32), "ref")
    with pytest.raises(BadInput, match="layer.png: 8x4 px but the flat field is 4x4 px|layer.png: 8x4 px but the flat field is 4x4"):
        flat_field.apply(np.zeros((4, 8), np.uint8), gains, "layer.png")
    dark = np.full((4, 4), 0.01, np.float32)
    dark[0, 0] = 10.0
    with pytest.raises(BadInput, match="dark frame: 15 of 16 pixels are below 0.2 of the mean"):
        flat_field.gain(dark, "dark frame")


def write_folder(root, label, n, value, size=(120, 100), lit=None):
    (root / label).mkdir(parents=True)
    for i in range(n):
        image = np.full((size[1], size[0]), value, np.float32)
        image[:10] = 0  # a wall along the top of the photograph
        if lit is not None:
            image *= lit
        Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(root / label / f"{i:04d}.png")


def test_layers_are_read_through_their_camera_flat_fielded_and_rectified(tmp_path):
    root = tmp_path / "layers"
    light = np.linspace(0.6, 1.2, 120, dtype=np.float32)[None, :]
    write_folder(root, "Clean", 10, 100, lit=light)
    write_folder(root, "Uneven", 10, 60, lit=light)
    lm = label_map(tmp_path, '[cameras.a]\nfolders = ["Clean", "Uneven"]\nbed_corners = [[0.0, 0.2], [1.0, 0.2], [1.0, 1.0], [0.0, 1.0]]\nflat_field_from = "Clean"\n')
    found = scan_layer_folders(root, lm)
    # the commissioning frame: the first training-split layer of the clean folder
    assert flat_field_references(lm, found) == {"a": [root / "Clean" / "0000.png"]}
    layers = load_layer_folders(root, lm, 32, splits=("train",))
    clean = layers.images[[i for i, label in enumerate(layers.labels) if label == "Clean"]]
    uneven = layers.images[[i for i, label in enumerate(layers.labels) if label == "Uneven"]]
    # no wall (the corners leave it out), no lighting gradient (the flat field divides it out):
    # the clean bed is even, and the darker powder stays darker by its own ratio
    left, right = clean[:, :, 4:8].mean(), clean[:, :, -8:-4].mean()
    assert abs(left - right) < 3, (left, right)
    assert clean.min() > 60
    assert abs(uneven.mean() / clean.mean() - 0.6) < 0.03


def test_a_reference_of_another_size_than_its_cameras_layers_is_refused(tmp_path):
    root = tmp_path / "layers"
    write_folder(root, "Clean", 10, 100, size=(60, 50))
    write_folder(root, "Uneven", 10, 60)
    lm = label_map(tmp_path, '[cameras.a]\nfolders = ["Clean", "Uneven"]\nflat_field_from = "Clean"\n')
    views = CameraViews(lm, flat_field_references(lm, scan_layer_folders(root, lm)))
    with pytest.raises(BadInput, match=r"flat field of camera a \(.*Clean/0000.png\): 60x50 px, but its camera's layers are 120x100"):
        views.bed("Uneven", root / "Uneven" / "0003.png", 32)


def test_a_camera_without_a_clean_folder_is_lit_by_the_median_of_its_training_layers(tmp_path):
    """flat_field_median_of: every layer has its dark patch at another place; the median of the
    training layers is the lighting alone, so a layer comes out even but for its own patch."""
    root = tmp_path / "layers"
    light = np.linspace(0.6, 1.2, 120, dtype=np.float32)[None, :]
    (root / "Uneven").mkdir(parents=True)
    for i in range(10):
        image = np.full((100, 120), 100.0, np.float32)
        image[10 * i : 10 * i + 8, 20:100] = 50  # a patch of uncovered powder, lower each layer
        Image.fromarray(np.round(image * light).astype(np.uint8)).save(root / "Uneven" / f"{i:04d}.png")
    lm = label_map(tmp_path, '[cameras.a]\nfolders = ["Uneven"]\nflat_field_median_of = "Uneven"\n')
    found = scan_layer_folders(root, lm)
    # the training split: the first 7 of 10 layers (the last 20 % test, the 10 % before them validation)
    assert flat_field_references(lm, found) == {"a": [root / "Uneven" / f"{i:04d}.png" for i in range(7)]}
    layers = load_layer_folders(root, lm, 120, splits=("test",))
    bed = layers.images[-1].astype(np.float32)  # layer 0009: its patch in rows 90-97, 108-116 in the square bed
    # even but for its own patch, which keeps its ratio to the powder (0.5)
    assert abs(bed[40:80, 4:10].mean() - bed[40:80, -10:-4].mean()) < 3
    assert abs(bed[110:115, 30:90].mean() / bed[40:80, 30:90].mean() - 0.5) < 0.05


def test_a_median_of_too_few_training_layers_is_refused(tmp_path):
    root = tmp_path / "layers"
    write_folder(root, "Uneven", 6, 60)  # 4 training layers
    lm = label_map(tmp_path, '[cameras.a]\nfolders = ["Uneven"]\nflat_field_median_of = "Uneven"\n')
    with pytest.raises(BadInput, match=r"cameras.a.flat_field_median_of = 'Uneven': 4 training layer\(s\); the median needs at least 5"):
        flat_field_references(lm, scan_layer_folders(root, lm))


def test_an_evaluation_of_few_layers_takes_the_median_of_every_layer_it_has_or_none(tmp_path):
    """real_eval judges folder sets of any size (any_split): with fewer than 5 training layers the
    median is taken over all the folder's layers, and with fewer than 5 in all there is none."""
    root = tmp_path / "layers"
    write_folder(root, "Uneven", 6, 60)  # 4 training layers, 1 validation, 1 test
    lm = label_map(tmp_path, '[cameras.a]\nfolders = ["Uneven"]\nflat_field_median_of = "Uneven"\n')
    found = scan_layer_folders(root, lm)
    assert flat_field_references(lm, found, any_split=True) == {"a": [root / "Uneven" / f"{i:04d}.png" for i in range(6)]}
    few = [f for f in found if f[1].name < "0004"]
    assert flat_field_references(lm, few, any_split=True) == {}
