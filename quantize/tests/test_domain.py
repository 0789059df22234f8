"""The domain check's statistics (domain.py): the Mahalanobis score with a shrunk covariance, and
the threshold from validation layers, on values worked out by hand."""
import math

import numpy as np
import pytest

from bedsight_train import domain
from bedsight_train.common import BadInput

# eight training layers of two features: (+-1, 0) and (0, +-1), twice
TRAIN = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]] * 2, dtype=np.float64)


def test_the_score_is_the_mahalanobis_distance_per_feature():
    table = domain.fit(TRAIN, np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    # mean 0; sample covariance diag(4/7, 4/7) (4 squares per axis over n - 1 = 7); shrinking
    # toward (tr S / D) I = 4/7 I changes nothing; its inverse is diag(7/4, 7/4)
    assert table["feature_size"] == 2 and table["fit_layers"] == 8 and table["validation_layers"] == 3
    assert table["mean"] == [0.0, 0.0]
    assert np.allclose(table["inverse_covariance"], [1.75, 0.0, 0.0, 1.75])
    # score((1, 1)) = sqrt((1.75 + 1.75) / 2)
    assert math.isclose(domain.table_scores(np.array([[1.0, 1.0]]), table)[0], math.sqrt(1.75))
    # validation scores 0, sqrt(1.75 / 2), sqrt(1.75 * 4 / 2); the 99 % quantile interpolates
    # between the last two at 0.98 of the way
    a, b = math.sqrt(0.875), math.sqrt(3.5)
    assert math.isclose(table["threshold"], a + 0.98 * (b - a))
    assert table["threshold_quantile"] == 0.99
    assert np.allclose(table["validation_scores"], [0.0, a, b])


def test_the_threshold_covers_the_training_layers_when_few_validation_layers_sit_low():
    """Three validation layers at the mean (score 0) would put the threshold at 0 and call every
    layer the model learnt from unfamiliar; the training layers' own 99 % quantile holds instead.
    One feature: seven training layers at 0 and one at 8, mean 1, S = (7 + 49) / 7 = 8 (shrinking
    a single feature changes nothing), scores |f - 1| / sqrt(8): seven of 1/sqrt(8), one of
    7/sqrt(8); the 99 % quantile of the eight sits 0.93 of the way from the seventh to the eighth."""
    train = np.array([[0.0]] * 7 + [[8.0]])
    table = domain.fit(train, np.array([[1.0]] * 3))
    low, high = 1 / math.sqrt(8), 7 / math.sqrt(8)
    assert math.isclose(table["threshold"], low + 0.93 * (high - low))
    assert np.allclose(table["validation_scores"], [0.0, 0.0, 0.0])
    # every training layer but the farthest is familiar
    assert (domain.table_scores(train, table) <= table["threshold"]).sum() == 7


def test_the_covariance_is_shrunk_toward_a_scaled_identity():
    # all the spread on the first feature: S = diag(8/7, 0) is singular; shrunk by 0.1 toward
    # (tr S / 2) I = 4/7 I: diag(0.9 * 8/7 + 0.1 * 4/7, 0.1 * 4/7)
    train = np.array([[1, 0], [-1, 0]] * 4, dtype=np.float64)
    table = domain.fit(train, np.zeros((3, 2)))
    expected = np.diag([1 / (0.9 * 8 / 7 + 0.1 * 4 / 7), 1 / (0.1 * 4 / 7)])
    assert np.allclose(np.reshape(table["inverse_covariance"], (2, 2)), expected)


def test_too_few_layers_are_refused_by_name():
    with pytest.raises(BadInput, match="3 training layers; at least 8"):
        domain.fit(TRAIN[:3], TRAIN[:3])
    with pytest.raises(BadInput, match="2 validation layers; at least 3"):
        domain.fit(TRAIN, TRAIN[:2])


def test_groups_keep_their_own_means_under_one_tied_covariance():
    """Two groups of eight: TRAIN round (0, 0) and the same round (10, 0). Within each group the
    squares per axis sum to 4, 8 over both, over n - G = 14: S = diag(4/7, 4/7), inverse diag(7/4)
    (one mean over all sixteen would see a spread of 25 along the first axis). A layer is as far
    as its nearest group's mean; the midpoint between the groups, the overall mean, is far from
    both."""
    train = np.concatenate([TRAIN, TRAIN + [10.0, 0.0]])
    groups = ["synthetic"] * 8 + ["real No_Defect"] * 8
    table = domain.fit(train, np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 1.0]]), train_groups=groups)
    assert np.allclose(table["inverse_covariance"], [1.75, 0.0, 0.0, 1.75])
    assert [(g["name"], g["layers"], g["mean"]) for g in table["groups"]] == [("synthetic", 8, [0.0, 0.0]), ("real No_Defect", 8, [10.0, 0.0])]
    assert table["mean"] == [5.0, 0.0]
    # (10, 1): 1 from (10, 0), sqrt(1.75 / 2); (5, 0): 5 from both, sqrt(25 * 1.75 / 2)
    assert np.allclose(domain.table_scores(np.array([[10.0, 1.0], [5.0, 0.0]]), table), [math.sqrt(0.875), math.sqrt(21.875)])
    # validation scores 0, 0, sqrt(0.875)
    assert np.allclose(table["validation_scores"], [0.0, 0.0, math.sqrt(0.875)])


def test_a_group_too_small_for_a_mean_joins_the_largest():
    train = np.concatenate([TRAIN, [[0.0, 0.0]] * 3])
    table = domain.fit(train, TRAIN[:3], train_groups=["synthetic"] * 8 + ["real No_Defect"] * 3)
    # one group left: the table is the single-mean one over all eleven layers
    assert "groups" not in table and table["fit_layers"] == 11
    assert table == domain.fit(train, TRAIN[:3])
    with pytest.raises(BadInput, match="2 group names for 8 training layers"):
        domain.fit(TRAIN, TRAIN[:3], train_groups=["a", "b"])


def test_a_table_with_groups_is_written_as_domain_groups_and_reads_back_the_same():
    import tomllib

    from bedsight_train.common import toml_dumps

    train = np.concatenate([TRAIN, TRAIN + [10.0, 0.0]])
    table = domain.fit(train, TRAIN[:3], train_groups=["synthetic"] * 8 + ["real No_Defect"] * 8)
    text = toml_dumps({"format_version": "1.4", "domain": table, "training": {"miou": 0.5}})
    assert text.count("[[domain.groups]]") == 2 and text.index("[[domain.groups]]") < text.index("[training]")
    assert tomllib.loads(text) == {"format_version": "1.4", "domain": table, "training": {"miou": 0.5}}


def test_camera_drift_blurs_or_adds_noise_and_keeps_the_brightness():
    from bedsight_train.domain import camera_drift

    rng = np.random.default_rng(0)
    # a bed of fine texture (alternating columns 80 and 120): blur lowers its contrast, noise raises
    # the pixel differences of a flat bed; neither moves the mean by more than rounding
    texture = np.tile(np.array([80, 120], dtype=np.uint8), (64, 32))
    flat = np.full((64, 64), 100, dtype=np.uint8)
    blurred = noisy = 0
    for _ in range(40):
        out_texture, out_flat = camera_drift(rng, texture), camera_drift(rng, flat)
        assert out_texture.dtype == np.uint8 and out_texture.shape == texture.shape
        assert abs(float(out_texture.mean()) - 100.0) < 0.5 and abs(float(out_flat.mean()) - 100.0) < 0.5
        blurred += out_texture.std() < texture.std() - 1.0
        noisy += out_flat.std() > 0.3
    # one of the two each time, with equal odds: both come up in 40 draws
    assert 0 < blurred < 40 and 0 < noisy < 40
