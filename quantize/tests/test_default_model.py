"""The real-bed gate of the default model's build (default_model.check_real_beds): a model
replaces the shipped one only if every clean held-out real layer is PASS with under 1 % of its
bed flagged on average, and at least 90 % of the defective held-out real layers are not PASS."""

from bedsight_train.default_model import check_real_beds


def folder(label_classes: list[str], layers: int, passed: int) -> dict:
    """One folder of real_eval.py's `per_folder` block, as it writes it (the rest of its
    verdicts RECOAT)."""
    return {"label_classes": label_classes, "layers": layers, "verdicts": {"PASS": passed, "RECOAT": layers - passed, "REVIEW": 0, "PAUSE": 0, "FAULT": 0}}


def figures(clean_layers: int, clean_not_pass: int, clean_flagged: float | None, defective: dict[str, tuple[int, int]] | None = None) -> dict:
    """real_eval.py's report as the gate reads it: the `clean` block and `per_folder`, with the
    defective folders given as {name: (layers, PASS)} (default: the held-out split's folders, every
    layer stopped)."""
    if defective is None:
        defective = {"Powder_Uneven": (129, 0), "Powder_Uneven_With_Scratch": (141, 0), "Deformation_With_Scratch": (32, 0), "Plateform_Powder_Uneven": (12, 0)}
    per_folder = {"No_Defect": folder([], clean_layers, clean_layers - clean_not_pass)}
    for name, (layers, passed) in defective.items():
        per_folder[name] = folder(["incompleteness"], layers, passed)
    return {"clean": {"folders": ["No_Defect"], "layers": clean_layers, "not_pass": clean_not_pass, "mean_flagged_share": clean_flagged}, "per_folder": per_folder}


def test_clean_layers_passed_and_defective_layers_stopped_open_the_gate():
    assert check_real_beds(figures(4, 0, 0.0004)) == {
        "ok": True,
        "why": "4 of 4 clean real layers PASS, 0.04 % flagged on average; 314 of 314 defective real layers not PASS (100.0 %)",
    }
    # 283 of 314 stopped is 90.1 %
    assert check_real_beds(figures(4, 0, 0.0, {"Powder_Uneven": (129, 31), "Powder_Uneven_With_Scratch": (185, 0)}))["ok"] is True


def test_one_clean_real_layer_stopped_closes_the_gate():
    # the 2026-12-04 candidate: the synthetic sample build all found, the 4 clean real layers RECOAT
    assert check_real_beds(figures(4, 4, 0.014)) == {"ok": False, "why": "4 of 4 clean real layers not PASS"}
    assert check_real_beds(figures(4, 1, 0.0)) == {"ok": False, "why": "1 of 4 clean real layers not PASS"}


def test_clean_real_layers_that_pass_but_are_flagged_one_percent_close_the_gate():
    # PASS because every flagged component is below min_defect_area_mm2, yet 1 % of the bed painted
    assert check_real_beds(figures(4, 0, 0.01)) == {"ok": False, "why": "clean real layers 1.00 % flagged on average (at most 1 %)"}


def test_a_model_quiet_on_clean_beds_and_on_real_defects_closes_the_gate():
    """The curriculum run with the clean beds as background (quantize/README.md, "Real beds"):
    every clean layer PASS with nothing flagged, and the uneven beds PASS too. Quiet is not right."""
    quiet = figures(4, 0, 0.0, {"Powder_Uneven": (129, 129), "Powder_Uneven_With_Scratch": (141, 141), "Deformation_With_Scratch": (32, 10), "Plateform_Powder_Uneven": (12, 0)})
    assert check_real_beds(quiet) == {
        "ok": False,
        "why": "4 of 4 clean real layers PASS, 0.00 % flagged on average, but 34 of 314 defective real layers not PASS (10.8 %, at least 90 %); Powder_Uneven: 0 of 129",
    }
    # one folder missed whole is enough: 282 of 314 stopped is 89.8 %
    assert check_real_beds(figures(4, 0, 0.0, {"Powder_Uneven": (129, 0), "Powder_Uneven_With_Scratch": (141, 0), "Deformation_With_Scratch": (32, 32), "Plateform_Powder_Uneven": (12, 0)}))["why"].endswith(
        "(89.8 %, at least 90 %); Deformation_With_Scratch: 0 of 32"
    )


def test_no_real_evaluation_or_no_clean_or_defective_layer_closes_the_gate():
    """Safe by default: a build that judged no real bed, no clean one or no defective one does
    not ship."""
    assert check_real_beds(None)["ok"] is False
    assert "not judged on real beds" in check_real_beds(None)["why"]
    assert check_real_beds(figures(0, 0, None)) == {"ok": False, "why": "the real-layer evaluation holds no clean layer"}
    # clean layers judged PASS but none with a mask: nothing says how much of them is flagged
    assert check_real_beds(figures(2, 0, None)) == {"ok": False, "why": "no clean real layer has a mask to measure its flagged share"}
    assert check_real_beds(figures(4, 0, 0.0, {})) == {"ok": False, "why": "the real-layer evaluation holds no defective layer"}
