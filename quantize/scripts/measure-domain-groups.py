"""Measures the domain check's fit (bedsight_train.domain) on a trained run, with one mean and by
group, the way `bedsight-train export` fits it: the share of each held-out real folder that is
familiar, and, with a camera left out of the fit (its layers play a camera the statistics never
saw; the network did see them in training), the share of that camera's layers called unfamiliar.

    cd quantize && python scripts/measure-domain-groups.py RUN [--leave-out Plateform_Powder_Uneven]

RUN is a run folder with ensemble.pt (after `calibrate`) that trained with --real-layers."""
import argparse
from pathlib import Path

import numpy as np

from bedsight_train import domain
from bedsight_train.calibrate import load_ensemble, read_run, run_split
from bedsight_train.common import limit_threads
from bedsight_train.layers import load_label_map, load_layer_folders


def features(run: Path) -> dict[str, np.ndarray]:
    info = read_run(run)
    ensemble, saved = load_ensemble(run / "ensemble.pt")
    ensemble.with_features = True
    mean, std = saved["input"]["mean"][0], saved["input"]["std"][0]
    real = info["real_layers"]
    label_map = load_label_map(Path(real["label_map"]))
    out = {
        "syn_train": domain.features_of(ensemble, run_split(run, info, "train").images, mean, std),
        "syn_val": domain.features_of(ensemble, run_split(run, info, "val").images, mean, std),
    }
    for split in ("train", "val", "test"):
        # as export reads them: train and val bounded as the run was; the test split whole
        bound = real.get("max_per_label") if split != "test" else None
        layers = load_layer_folders(Path(real["root"]), label_map, int(info["input"]["width"]), splits=(split,), max_per_label=bound)
        out[f"real_{split}"] = domain.features_of(ensemble, layers.images, mean, std)
        out[f"real_{split}_labels"] = np.array(layers.labels)
    return out


def report(z: dict[str, np.ndarray], leave_out: str | None) -> None:
    fitted = z["real_train_labels"] != leave_out
    fitted_val = z["real_val_labels"] != leave_out
    train = np.concatenate([z["syn_train"], z["real_train"][fitted]])
    val = np.concatenate([z["syn_val"], z["real_val"][fitted_val]])
    groups = ["synthetic"] * len(z["syn_train"]) + [f"real {label}" for label in z["real_train_labels"][fitted]]
    test_labels = z["real_test_labels"]
    for name, names in (("one mean", None), ("by group", groups)):
        table = domain.fit(train, val, train_groups=names)
        scores = domain.table_scores(z["real_test"], table)
        print(f"{name}: threshold {table['threshold']:.3f}")
        own = test_labels != leave_out
        for label in sorted(set(test_labels[own])):
            mine = test_labels == label
            print(f"  {label:28s} {int((scores[mine] <= table['threshold']).sum()):3d} of {int(mine.sum()):3d} familiar (median score {np.median(scores[mine]):.2f})")
        print(f"  held-out layers of the fitted folders: {(scores[own] <= table['threshold']).mean():.1%} familiar")
        if leave_out:
            unseen = np.concatenate([z["real_train"][~fitted], z["real_val"][~fitted_val], z["real_test"][~own]])
            print(f"  {leave_out} (left out of the fit): {(domain.table_scores(unseen, table) > table['threshold']).mean():.1%} of {len(unseen)} unfamiliar")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--leave-out", help="a real label folder to leave out of the fit (a camera it never saw)")
    args = parser.parse_args()
    limit_threads()
    z = features(args.run)
    report(z, None)
    if args.leave_out:
        print(f"\nwith {args.leave_out} left out of the fit")
        report(z, args.leave_out)


if __name__ == "__main__":
    main()
