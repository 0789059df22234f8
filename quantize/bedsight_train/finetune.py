"""`bedsight-train finetune`: fit the model a box runs to that site's own labels (issue 15).

    bedsight-train finetune --from default.bsimg --labels STATE/labels --out site-model [--key KEY]

1. The model image is checked by `bedsight image verify` (every file's sha256; the signature too
   with --trusted-keys) and its members' PyTorch weights are read from it (training/ensemble.pt,
   which `export` and `pack` put there). Training starts from its best member: the trunk and the
   first head, the checkpoint `calibrate` ranked first.
2. The site's labelled layers (the label store the dashboard's labelling page writes, or one
   `labels import` made) are split by runs of layers, never interleaved: the box names a layer's
   folder by its sequence number, so the names in order are the layers in time. The last share
   (--held-out) is the test run, the run before it validation, the rest training. Neighbouring
   layers are near-copies; a test layer between two training layers would measure memory.
3. Replay, so that the model does not forget what it knew: layers of the generator it was trained
   on, at its input size (or --replay DATA, a dataset of the original training data), as many as
   the site's training layers times --replay-ratio (at least the domain check's minimum), trained
   on beside them; a tenth as many again validate beside the site's validation run.
4. `train` (--init from the image, the image's input normalisation kept); each of the image's
   heads of their own random draw (`calibrate --head-runs`) carried on alone on the fine-tuned
   trunk from its own weights (`train --freeze-trunk`); `calibrate` (the image's member count and
   make-up, temperatures refitted), `export` (the domain statistics refitted on the new
   training layers), `quantize` (INT8 checked on the held-out run), the box's own install
   self-test on a spare state folder (an INT8 graph that fails it is left out of the image,
   `selftested_int8`), `pack` (signed with --key).
5. Before and after, on the held-out run: the image as it was and the fine-tuned one, per class
   (IoU, precision, recall, labelled and predicted pixels), in OUT/finetune.md and finetune.json.

OUT holds data/ (the dataset with its split.json), run/, model/, eval-before/, eval-after/,
model.bsimg and the report. --resume carries on an interrupted fine-tune (train --resume).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .common import BadInput, load_grey, read_toml, save_png_grey, toml_dumps
from .labels import labelled_images

WEIGHTS_ENTRY = "training/ensemble.pt"  # images/src/archive.rs ENTRY_TRAINING_WEIGHTS


# A configuration for the spare box of `box_selftest`: the bed is irrelevant to the self-test, and
# the image is checked before it is signed.
SPARE_BOX_CONFIG = "[bed]\nwidth_mm = 250.0\nheight_mm = 250.0\n\n[images]\nallow_unsigned = true\n"


def own_draw_heads(saved: dict[str, Any]) -> list[int]:
    """The members that `calibrate --head-runs` added (heads of their own random draw on the
    trunk), by index: the ensemble names them HEAD-RUN/epoch-NNNN.pt, a checkpoint of the run
    itself by its file alone (calibrate.member_name). Images from before head runs name none."""
    return [i for i, name in enumerate(saved.get("head_checkpoints", [])) if "/" in name]


def box_selftest(image: Path) -> tuple[bool, str]:
    """Install `image` on a spare, empty state folder with `bedsight image install`: the box's own
    self-test of every graph it may run (the same agreement and per-class IoU that `flash.sh`
    will ask for). (passed, what install said)."""
    import tempfile

    from .pack import PackError, find_bedsight_bin

    binary = find_bedsight_bin()
    if binary is None:
        raise PackError("no `bedsight` binary to self-test the image with: set BEDSIGHT_BIN or build it")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "spare.toml"
        config.write_text(SPARE_BOX_CONFIG)
        cmd = [str(binary), "image", "install", str(image), "--state-dir", str(Path(tmp) / "box"), "--config", str(config)]
        result = subprocess.run(cmd, capture_output=True, text=True)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def read_image_weights(image: Path, trusted_keys: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, ensemble.pt's content) of a model image, after `bedsight image verify`."""
    from .pack import PackError, find_bedsight_bin

    image = Path(image)
    if not image.is_file():
        raise BadInput(f"--from {image}: no such model image")
    binary = find_bedsight_bin()
    if binary is None:
        raise PackError("no `bedsight` binary to verify the image with: set BEDSIGHT_BIN or build it")
    cmd = [str(binary), "image", "verify", str(image)]
    if trusted_keys is not None:
        cmd += ["--trusted-keys", str(trusted_keys)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BadInput(f"--from {image}: {(result.stderr or result.stdout).strip()}")
    with tarfile.open(image, "r") as tar:
        manifest = tomllib.loads(tar.extractfile("manifest.toml").read().decode())
        try:
            member = tar.getmember(WEIGHTS_ENTRY)
        except KeyError:
            raise BadInput(
                f"--from {image}: the image carries no training weights ({WEIGHTS_ENTRY}); it was packed before "
                "format 1.3 or without them: export and pack its training run again"
            ) from None
        blob = tar.extractfile(member).read()
    # verify checked the bytes against the manifest; weights_only: plain tensors and numbers
    saved = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "trunk_state" not in saved or "head_states" not in saved:
        raise BadInput(f"--from {image}: {WEIGHTS_ENTRY} is not an ensemble saved by `bedsight-train calibrate`")
    if saved.get("layer_head") is not None:
        raise BadInput(
            f"--from {image}: the model has a layer-level head (multi-task); finetune trains the segmentation "
            "only and would leave that head judging features it was not trained on"
        )
    return manifest, saved


def split_by_runs(names: list[str], held_out: float) -> dict[str, list[str]]:
    """Train, validation and test runs of consecutive layers (names in order are layers in time):
    test the last `held_out` share (at least one layer), validation the run of half that size
    before it (at least one), training the rest (at least one)."""
    n = len(names)
    if n < 3:
        raise BadInput(f"{n} labelled layer(s): fine-tuning needs at least 3 (training, validation and a held-out run)")
    if not 0.0 < held_out < 1.0:
        raise BadInput(f"--held-out {held_out}: a share, between 0 and 1")
    ordered = sorted(names)
    n_test = max(1, round(n * held_out))
    n_val = max(1, round(n * held_out / 2))
    if n - n_test - n_val < 1:
        n_test, n_val = 1, 1
    return {
        "train": ordered[: n - n_test - n_val],
        "val": ordered[n - n_test - n_val : n - n_test],
        "test": ordered[n - n_test :],
    }


def _resize(image: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    from PIL import Image

    if image.shape == (size, size):
        return image
    method = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((size, size), method), dtype=np.uint8)


def site_layers(store: Path, images: Path | None, classes: list[str], size: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, mask) of every labelled layer, at the model's input size, its classes the
    model's. Refused by name: another class table, a missing image, an image whose size is not
    its mask's."""
    out = []
    for layer, image in labelled_images(Path(store), images):
        if layer.classes != classes:
            raise BadInput(f"{Path(store) / (layer.name + '.labels.json')}: classes {layer.classes}, but the model's are {classes}")
        if image.shape[0] != image.shape[1]:
            raise BadInput(f"{layer.name}: {image.shape[1]}x{image.shape[0]}; the box's rectified bed is square")
        out.append((layer.name, _resize(image, size, False), _resize(layer.mask, size, True)))
    return out


def selftested_int8(out: Path) -> Path | None:
    """The INT8 graph to pack, after the box's own self-test (`box_selftest`) of an unsigned image
    holding both graphs: the fine-tune's `--int8-margin` is a mean over the held-out run, the
    self-test asks 99 % of one layer's pixels, so an INT8 graph can pass the one and fail the
    other, and `flash.sh` would refuse the image at the box. Such an INT8 graph is left out (the
    image is fp32 only: the box runs fp32 on every backend, TensorRT included, slower there),
    and said. An fp32 graph that fails its own self-test stops the fine-tune."""
    from .pack import pack

    model = out / "model"
    log = model / "selftest.log"
    check = out / "selftest-check.bsimg"
    pack(model / "model.onnx", check, progress=False)
    passed, said = box_selftest(check)
    log.write_text(said + "\n")
    if passed:
        check.unlink()
        return model / "model.int8.onnx"
    pack(model / "model.onnx", check, fp32_only=True, progress=False)
    fp32_passed, fp32_said = box_selftest(check)
    check.unlink()
    log.write_text(said + "\n\nwithout the INT8 graph:\n" + fp32_said + "\n")
    if not fp32_passed:
        raise BadInput(f"{model}: the fine-tuned graph fails the box's self-test; nothing packed ({log}):\n{fp32_said}")
    print(f"finetune: the INT8 graph fails the box's self-test, so the image carries the fp32 graph alone ({log})")
    return None


def write_dataset(out: Path, saved: dict[str, Any], site: list[tuple[str, np.ndarray, np.ndarray]], replay: data_mod.Dataset,
                  held_out: float, replay_ratio: float, seed: int) -> dict[str, list[str]]:
    """OUT/data: the site's layers (prefixed `site-`) and the replay layers (`replay-`), with
    split.json fixing the split (`data.dataset_split`); and OUT/site-test, the held-out run alone."""
    from .domain import MIN_FIT_LAYERS, MIN_VALIDATION_LAYERS

    runs = split_by_runs([name for name, _, _ in site], held_out)
    rng = np.random.default_rng(seed)
    # at least as many training and validation layers as the domain check's refit needs
    n_train = max(round(len(runs["train"]) * replay_ratio), MIN_FIT_LAYERS)
    n_val = max(MIN_VALIDATION_LAYERS - len(runs["val"]), round(n_train / 10))
    if n_train + n_val > len(replay.names):
        raise BadInput(f"--replay {replay.root}: {len(replay.names)} layers, {n_train + n_val} are needed ({n_train} to train, {n_val} to validate)")
    picked = rng.permutation(len(replay.names))[: n_train + n_val].tolist()
    replay_train, replay_val = sorted(picked[:n_train]), sorted(picked[n_train:])
    picked = sorted(picked)
    split = {
        "train": [f"site-{n}" for n in runs["train"]] + [f"replay-{replay.names[i]}" for i in replay_train],
        "val": [f"site-{n}" for n in runs["val"]] + [f"replay-{replay.names[i]}" for i in replay_val],
        "test": [f"site-{n}" for n in runs["test"]],
    }
    by_name = {name: (image, mask) for name, image, mask in site}
    for folder, names in ((out / "data", runs["train"] + runs["val"] + runs["test"]), (out / "site-test", runs["test"])):
        for name in names:
            image, mask = by_name[name]
            save_png_grey(folder / "images" / f"site-{name}.png", image)
            save_png_grey(folder / "masks" / f"site-{name}.png", mask)
    for i in picked:
        save_png_grey(out / "data" / "images" / f"replay-{replay.names[i]}.png", replay.images[i])
        save_png_grey(out / "data" / "masks" / f"replay-{replay.names[i]}.png", replay.masks[i])
    size = int(saved["input"]["width"])
    for folder, what in ((out / "data", "a site's labelled layers and replayed training layers"), (out / "site-test", "the held-out run of a site's labelled layers")):
        doc = {
            "name": f"finetune: {what}",
            "size": size,
            "channels": 1,
            "recoater_direction": replay.recoater_direction,
            "classes": [{"index": i, "name": c["name"], "colour": c["colour"], "defect": bool(c["defect"])} for i, c in enumerate(saved["classes"])],
        }
        if replay.mm_per_px is not None:
            doc["mm_per_px"] = replay.mm_per_px
        (folder / "dataset.toml").write_text(f"# bedsight-train finetune: {what}\n" + toml_dumps(doc))
    (out / "data" / "split.json").write_text(json.dumps(split, indent=1))
    return split


def replay_dataset(replay: Path | None, out: Path, size: int, layers: int, seed: int, progress: bool) -> data_mod.Dataset:
    """--replay DATA, or `layers` layers of the project's generator (the model's original
    training data) written to OUT/replay at the model's size."""
    if replay is None:
        from .synth import write_dataset as synth_dataset

        replay = out / "replay"
        if not (replay / "dataset.toml").is_file():
            synth_dataset(replay, layers, size, seed, progress=progress)
    ds = data_mod.load_dataset(Path(replay), progress=progress)
    if ds.size != (size, size):
        raise BadInput(f"--replay {replay}: {ds.size[1]}x{ds.size[0]} layers, the model judges {size}x{size}")
    return ds


def _class_table(conf: np.ndarray) -> list[dict[str, Any]]:
    tp = np.diag(conf).astype(np.float64)
    labelled, predicted = conf.sum(1), conf.sum(0)

    def ratio(a, b):
        return None if b == 0 else float(a / b)

    return [
        {"iou": ratio(tp[k], labelled[k] + predicted[k] - tp[k]), "precision": ratio(tp[k], predicted[k]), "recall": ratio(tp[k], labelled[k]),
         "labelled_px": int(labelled[k]), "predicted_px": int(predicted[k])}
        for k in range(len(conf))
    ]


def before_after(names: list[str], before: dict[str, Any], after: dict[str, Any], layers: list[str]) -> tuple[str, dict[str, Any]]:
    """The report: per class, the image as it was and the fine-tuned one on the held-out run."""
    rows_before, rows_after = _class_table(np.array(before["confusion"])), _class_table(np.array(after["confusion"]))

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [
        f"# Fine-tuned on the site's labels: before and after, on the held-out run ({len(layers)} layer(s): {', '.join(layers)})",
        "",
        "Per class over every pixel of the held-out layers. A class neither labelled nor predicted shows -.",
        "",
        "| class | labelled px | IoU before | IoU after | precision before | precision after | recall before | recall after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, b, a in zip(names, rows_before, rows_after):
        lines.append(f"| {name} | {b['labelled_px']} | {f(b['iou'])} | {f(a['iou'])} | {f(b['precision'])} | {f(a['precision'])} | {f(b['recall'])} | {f(a['recall'])} |")
    lines += ["", f"MIoU before {before['miou']:.3f}, after {after['miou']:.3f}."]
    doc = {"held_out_layers": layers, "classes": names, "before": rows_before, "after": rows_after,
           "miou_before": before["miou"], "miou_after": after["miou"]}
    return "\n".join(lines) + "\n", doc


def finetune(
    source: Path,
    labels: Path,
    out: Path,
    images: Path | None = None,
    replay: Path | None = None,
    replay_ratio: float = 1.0,
    replay_layers: int = 40,
    held_out: float = 0.25,
    epochs: int = 4,
    lr: float = 3e-4,
    batch_size: int = 2,
    crop: int | None = None,
    members: int | None = None,
    int8_margin: float = 0.02,
    key: Path | None = None,
    trusted_keys: Path | None = None,
    version: str | None = None,
    device: str = "cpu",
    resume: bool = False,
    seed: int = 0,
    max_steps_per_epoch: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from .calibrate import calibrate, ranked_checkpoints
    from .evaluate import evaluate
    from .export import export
    from .models import build_model
    from .pack import pack
    from .quant import quantize
    from .train import TrainOptions, train

    out = Path(out)
    if key is not None and not Path(key).is_file():
        raise BadInput(f"--key {key}: signing key not found")
    manifest, saved = read_image_weights(Path(source), trusted_keys)
    size = int(saved["input"]["width"])
    classes = [c["name"] for c in saved["classes"]]
    site = site_layers(Path(labels), images, classes, size)  # every label checked before anything is written
    split_by_runs([name for name, _, _ in site], held_out)  # enough layers for the three runs
    if out.exists() and any(out.iterdir()) and not resume:
        raise BadInput(f"--out {out}: already holds a fine-tune; --resume carries it on, or pick a new folder")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "data" / "split.json").is_file():
        replay_ds = replay_dataset(replay, out, size, replay_layers, seed + 1, progress)
        split = write_dataset(out, saved, site, replay_ds, held_out, replay_ratio, seed)
    else:
        split = json.loads((out / "data" / "split.json").read_text())
    held_out_layers = [n[len("site-"):] for n in split["test"]]

    # the image's best member, as `train --init` reads a checkpoint; its normalisation is kept
    model = build_model(saved["arch"], saved["config"])
    model.trunk.load_state_dict(saved["trunk_state"])
    model.head.load_state_dict(saved["head_states"][0])
    init = out / "init.pt"
    torch.save({"arch": saved["arch"], "config": saved["config"], "state_dict": model.state_dict(), "input": saved["input"]}, init)

    if crop is None and size > 256:
        crop = 256
    def fit(run: Path, init: Path, seed: int, freeze_trunk: bool) -> None:
        train(TrainOptions(
            arch=saved["arch"], data=out / "data", epochs=epochs, out=run, batch_size=batch_size, lr=lr, seed=seed,
            crop=crop, class_weights="inverse-sqrt", foreground_share=0.5 if crop else 0.0, init=init, lr_schedule="cosine",
            freeze_trunk=freeze_trunk, device=device, resume=resume and (run / "checkpoints").is_dir(),
            max_steps_per_epoch=max_steps_per_epoch, progress=progress,
        ))

    fit(out / "run", init, seed, freeze_trunk=False)
    # Members as the image made them: checkpoints of the run, and heads of their own random draw
    # (calibrate --head-runs). A fine-tune's checkpoints differ in one head trained a few epochs
    # at a low rate and never disagree; each own-draw head is carried on, alone, on the
    # fine-tuned trunk from the image's weights, so that it stays in the minimum its own start
    # settled in and the box's uncertainty keeps saying where the model is wrong.
    own_draw = own_draw_heads(saved)
    m = members or len(saved["head_states"])
    checkpoints = min(max(1, m - len(own_draw)), epochs)
    head_runs = []
    if own_draw:
        _, best = ranked_checkpoints(out / "run", saved["arch"])[0]  # the trunk calibrate will keep
        for n, i in enumerate(own_draw, start=1):
            head = {f"head.{k}": v for k, v in saved["head_states"][i].items()}
            torch.save({**best, "state_dict": {**best["state_dict"], **head}}, out / f"init-head-{n}.pt")
            fit(out / f"run-head-{n}", out / f"init-head-{n}.pt", seed + n, freeze_trunk=True)
            head_runs.append(out / f"run-head-{n}")
    calibrate(out / "run", members=checkpoints, head_runs=head_runs, progress=progress)
    name = manifest.get("name", "bedsight")
    description = f"{manifest.get('description', name)}; fine-tuned on {len(site)} labelled layers of this site ({len(split['train'])} training layers with replay)"
    export(out / "run", out / "model" / "model.onnx", name=f"{name}-site", version=version, description=description, progress=progress)
    if "domain" in manifest and "domain" not in read_toml(out / "model" / "manifest.toml"):
        raise BadInput(f"{out / 'model'}: the domain check could not be refitted (see above); the box would run without one")
    quantize(out / "model" / "model.onnx", out / "data", out / "model" / "model.int8.onnx", margin=int8_margin,
             calibration_images=min(16, len(split["train"])), progress=progress)
    int8 = selftested_int8(out)
    pack(out / "model" / "model.onnx", out / "model.bsimg", int8=int8, fp32_only=int8 is None, key=key, progress=progress)

    before = evaluate(Path(source), out / "site-test", out / "eval-before", progress=progress)
    after = evaluate(out / "model.bsimg", out / "site-test", out / "eval-after", progress=progress)
    text, doc = before_after(classes, before, after, held_out_layers)
    doc.update(source=str(source), labels=str(labels), site_layers=len(site), split={k: len(v) for k, v in split.items()}, model=str(out / "model.bsimg"),
               int8_graph="packed" if int8 else "left out: it failed the box's self-test (model/selftest.log)")
    (out / "finetune.md").write_text(text)
    (out / "finetune.json").write_text(json.dumps(doc, indent=1))
    if progress:
        print(text)
        print(f"fine-tuned image: {out / 'model.bsimg'}{' (signed)' if key else ' (unsigned: give --key to sign it for flash.sh)'}")
    return doc
