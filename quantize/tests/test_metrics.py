import numpy as np

from bedsight_train.metrics import EceAccumulator, auroc, confusion, fuse, segmentation_metrics, softmax


def test_cpa_iou_follow_seed000_eq24_25():
    truth = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    m = segmentation_metrics(confusion(pred, truth, 3))
    # class 1: TP 2, FP 1 (a 0 called 1), FN 1 (a 1 called 0)
    assert np.isclose(m["cpa"][1], 2 / 3)  # Eq. 24: TP / (TP + FP)
    assert np.isclose(m["iou"][1], 2 / 4)  # Eq. 25: TP / (TP + FP + FN)
    assert np.isclose(m["mpa"], np.mean(m["cpa"]))  # Eq. 26
    assert np.isclose(m["miou"], np.mean(m["iou"]))  # Eq. 27
    assert np.isclose(m["score"], 0.5 * m["mpa"] + 0.5 * m["miou"])  # Eq. 28


def test_ece_zero_when_confidence_matches_accuracy():
    # 10 pixels at confidence 0.8 (in bin (0.7, 0.8]), 8 of them right
    probs = np.zeros((1, 2, 1, 10))
    probs[0, 0] = 0.8
    probs[0, 1] = 0.2
    truth = np.array([[[0] * 8 + [1] * 2]])
    acc = EceAccumulator(10)
    acc.add(probs, truth)
    assert acc.ece() < 1e-9
    acc2 = EceAccumulator(10)
    acc2.add(probs, np.zeros((1, 1, 10), dtype=int))  # all right at confidence 0.8
    assert np.isclose(acc2.ece(), 0.2)


def test_fuse_is_mean_of_tempered_softmax_and_variance():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5, 5)).astype(np.float32)
    temps = [0.5, 1.0, 2.0]
    mean, mask, unc = fuse(logits, temps)
    members = np.stack([softmax(logits[i] / temps[i], 0) for i in range(3)])
    assert np.allclose(mean, members.mean(0), atol=1e-6)  # Eq. 21
    assert (mask == members.mean(0).argmax(0)).all()  # Eq. 12
    assert np.allclose(unc, members.var(0).sum(0), atol=1e-6)  # Eq. 13, summed over classes


def test_auroc():
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
