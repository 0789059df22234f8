"""The real-bed gate of the default model's build (default_model.check_clean_real): a model
replaces the shipped one only if every clean held-out real layer is PASS with under 1 % of its
bed flagged on average."""

from bedsight_train.default_model import check_clean_real


def clean_figures(layers: int, not_pass: int, mean_flagged: float | None) -> dict:
    """The `clean` block of real_eval.py's report, as it writes it."""
    return {"clean": {"folders": ["No_Defect"], "layers": layers, "not_pass": not_pass, "mean_flagged_share": mean_flagged}}


def test_clean_real_layers_that_all_pass_with_little_flagged_open_the_gate():
    assert check_clean_real(clean_figures(4, 0, 0.0004)) == {"ok": True, "why": "4 of 4 clean real layers PASS, 0.04 % flagged on average"}


def test_one_clean_real_layer_stopped_closes_the_gate():
    # the 2026-12-04 candidate: the synthetic sample build all found, the 4 clean real layers RECOAT
    assert check_clean_real(clean_figures(4, 4, 0.014)) == {"ok": False, "why": "4 of 4 clean real layers not PASS"}
    assert check_clean_real(clean_figures(4, 1, 0.0)) == {"ok": False, "why": "1 of 4 clean real layers not PASS"}


def test_clean_real_layers_that_pass_but_are_flagged_one_percent_close_the_gate():
    # PASS because every flagged component is below min_defect_area_mm2, yet 1 % of the bed painted
    assert check_clean_real(clean_figures(4, 0, 0.01)) == {"ok": False, "why": "clean real layers 1.00 % flagged on average (at most 1 %)"}


def test_no_real_evaluation_or_no_clean_layer_closes_the_gate():
    """Safe by default: a build that judged no real bed, or no clean one, does not ship."""
    assert check_clean_real(None)["ok"] is False
    assert "not judged on real beds" in check_clean_real(None)["why"]
    assert check_clean_real(clean_figures(0, 0, None)) == {"ok": False, "why": "the real-layer evaluation holds no clean layer"}
    # clean layers judged PASS but none with a mask: nothing says how much of them is flagged
    assert check_clean_real(clean_figures(2, 0, None)) == {"ok": False, "why": "no clean real layer has a mask to measure its flagged share"}
