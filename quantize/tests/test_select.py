import csv
import shutil

import numpy as np


def test_uncertainty_selection_puts_the_most_uncertain_first(tiny_isdnet_model, tiny_data, tmp_path):
    from bedsight_train.select import model_predictions, select
    from bedsight_train.common import load_grey

    journal = tmp_path / "review"
    shutil.copytree(tiny_data / "images", journal)
    rows = select(journal, "uncertainty", 5, tmp_path / "out", model=tiny_isdnet_model, progress=False)
    assert len(rows) == 5
    files = sorted(journal.glob("*.png"))
    preds, _ = model_predictions(tiny_isdnet_model, [load_grey(p) for p in files], progress=False)
    ranked = sorted(zip(files, preds), key=lambda fp: fp[1]["mean_uncertainty"], reverse=True)
    assert [r["file"] for r in rows] == [str(f) for f, _ in ranked[:5]]
    values = [r["mean_uncertainty"] for r in rows]
    assert values == sorted(values, reverse=True)
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 5
    assert len(list((tmp_path / "out" / "prelabels").glob("*.png"))) == 5
    with open(tmp_path / "out" / "selection.csv") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_smile_selection_is_diverse(tiny_data, tmp_path):
    from bedsight_train.select import select, smile_order

    rows = select(tiny_data / "images", "smile", 6, tmp_path / "out", progress=False)
    assert len({r["file"] for r in rows}) == 6
    # on two well separated blobs the first two picks come from different clusters
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.3, (20, 2)), rng.normal(10, 1.0, (20, 2))])
    order, labels, spread = smile_order(points, 4)
    assert labels[order[0]] != labels[order[1]]
    assert spread[int(labels[order[0]])] >= spread[int(labels[order[1]])]  # widest cluster first


def test_select_only_review_layers(tiny_data, tmp_path):
    import json

    from bedsight_train.select import select

    journal = tmp_path / "journal"
    shutil.copytree(tiny_data / "images", journal)
    files = sorted(journal.glob("*.png"))
    with open(journal / "verdicts.jsonl", "w") as f:
        for i, p in enumerate(files):
            f.write(json.dumps({"image": p.name, "verdict": "REVIEW" if i % 3 == 0 else "PASS"}) + "\n")
    rows = select(journal, "smile", 100, tmp_path / "out", progress=False, verdict="REVIEW")
    assert sorted(r["file"] for r in rows) == sorted(str(p) for i, p in enumerate(files) if i % 3 == 0)
