"""Seed 001's Focal Tversky loss (Eq. 1) on values worked out by hand."""
import math

import torch

from bedsight_train.losses import FTL_ALPHA, FTL_BETA, FTL_GAMMA, focal_tversky_loss


def test_the_paper_s_parameters():
    assert (FTL_ALPHA, FTL_BETA, FTL_GAMMA) == (0.633, 0.1, 1.0)


def test_focal_tversky_by_hand():
    # two pixels, two classes; softmax of (0, ln 3) is (0.25, 0.75), of (ln 3, 0) is (0.75, 0.25)
    logits = torch.tensor([[[[0.0, math.log(3)]], [[math.log(3), 0.0]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[1, 0]]])  # pixel 0 is class 1, pixel 1 is class 0
    # class 0: p = (0.25, 0.75), y = (0, 1): TP 0.75, FN 0.25, FP 0.25
    # class 1: p = (0.75, 0.25), y = (1, 0): TP 0.75, FN 0.25, FP 0.25
    alpha, beta, gamma, eps = 0.633, 0.1, 2.0, 1.0
    tversky = (0.75 + eps) / (0.75 + alpha * 0.25 + beta * 0.25 + eps)
    expected = (1 - tversky) ** gamma
    got = focal_tversky_loss(logits, target, alpha=alpha, beta=beta, gamma=gamma, eps=eps)
    assert math.isclose(float(got), expected, rel_tol=1e-6)


def test_a_missed_defect_pixel_costs_more_than_an_invented_one():
    # ten pixels, one of them a defect (class 1); one pixel wrong in each case, confidently
    target = torch.zeros((1, 1, 10), dtype=torch.long)
    target[0, 0, 0] = 1

    def logits_calling(defect_pixels):
        x = torch.zeros((1, 2, 1, 10))
        x[0, 0] = 20.0
        for i in defect_pixels:
            x[0, 0, 0, i], x[0, 1, 0, i] = 0.0, 20.0
        return x

    miss = float(focal_tversky_loss(logits_calling([]), target, eps=1e-9))
    invent = float(focal_tversky_loss(logits_calling([0, 5]), target, eps=1e-9))
    # miss: defect TP 0 -> 1; background TP 9, FP 1 -> 1 - 9 / 9.1. invent: defect TP 1, FP 1 ->
    # 1 - 1 / 1.1; background TP 8, FN 1 -> 1 - 8 / 8.633
    assert math.isclose(miss, (1 + (1 - 9 / 9.1)) / 2, rel_tol=1e-4)
    assert math.isclose(invent, ((1 - 1 / 1.1) + (1 - 8 / 8.633)) / 2, rel_tol=1e-4)
    assert miss > 5 * invent
