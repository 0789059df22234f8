"""The `bedsight-train` command: argument parsing and error reporting only; the work is in the
modules named after each subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import BadInput


def _widths(items: list[str] | None) -> dict:
    """--width key=v[,v...] -> {key: int or [ints] or float}"""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise BadInput(f"--width {item!r}: expected KEY=VALUE, e.g. --width shallow=8,16,32")
        key, value = item.split("=", 1)
        try:
            values = [float(v) if "." in v else int(v) for v in value.split(",") if v]
        except ValueError:
            raise BadInput(f"--width {item!r}: values must be numbers") from None
        out[key.strip()] = values if len(values) > 1 else values[0]
    return out


def _class_shares(value: str) -> dict[str, float]:
    """--presence-top-k NAME=SHARE[,NAME=SHARE..] -> {name: share}"""
    out: dict[str, float] = {}
    for item in (v for v in value.split(",") if v):
        name, _, share = item.partition("=")
        try:
            out[name.strip()] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=SHARE, e.g. super-elevation=0.0001") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bedsight-train",
        description="Train, calibrate, export, quantize, evaluate and pack bedsight's powder-bed defect models.",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write a synthetic labelled powder-bed dataset (or the demo's sample build)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--layers", type=int, default=100)
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sample-build", action="store_true", help="write the demo's sample build (a fixed plan of layers) instead")
    s.add_argument("--generator", choices=["main", "alt"], default="main", help="alt: the second generator (synth_alt.py), for test sets only: never train on it")

    t = sub.add_parser("train", help="train ISDNet-SR or AM-SegNet from scratch, a checkpoint per epoch")
    t.add_argument("--arch", required=True, choices=["isdnet-sr", "am-segnet"])
    t.add_argument("--data", required=True, type=Path)
    t.add_argument("--epochs", type=int, required=True)
    t.add_argument("--out", required=True, type=Path, help="the run folder")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--lr-schedule", choices=["cosine", "constant", "snapshot"], default=None, help="cosine: fall to 5 %% of --lr over the run (default for am-segnet); constant (default for isdnet-sr); snapshot: --cycles cosine cycles, each restarting at --lr (snapshot ensembles: calibrate takes each member from another cycle)")
    t.add_argument("--cycles", type=int, default=1, help="with --lr-schedule snapshot: how many cycles (--epochs a multiple of it; at least calibrate's --members)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--split-seed", type=int, default=0)
    t.add_argument("--crop", type=int, default=None, help="train on random square crops of this size")
    t.add_argument("--class-weights", choices=["none", "inverse-sqrt"], default="none")
    t.add_argument("--focal-tversky", action="store_true", help="add seed 001's Focal Tversky loss (alpha 0.633, beta 0.1, gamma 1) to the architecture's loss")
    t.add_argument("--sr-weight", type=float, default=0.1, help="weight of ISDNet-SR's MSE (SR) loss")
    t.add_argument("--overwrite", action="store_true", help="replace the checkpoints of an earlier run in --out")
    t.add_argument("--resume", action="store_true", help="carry on the interrupted run in --out from its last checkpoint (weights, optimiser, learning-rate schedule, random state, history); give the run's own options")
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to train: cpu, cuda, or auto (cuda where PyTorch sees one)")
    t.add_argument("--foreground-share", type=float, default=0.0, help="with --crop: this share of the crops is placed over a pixel of a class the layer holds, each class present equally likely (nnU-Net's foreground oversampling); 0: uniform crops")
    t.add_argument("--photometric", type=float, default=0.15, help="random grey-level gain/offset augmentation strength (0: off)")
    t.add_argument("--preset", default="small", choices=["small", "paper"], help="named widths: small (the CPU box's, default) or paper (ISDNet-SR at seed 000's widths); --width overrides them")
    t.add_argument("--width", action="append", metavar="KEY=V[,V..]", help="architecture widths, e.g. shallow=16,32,64 fuse=64 sr=24,16,8 head_sr=1")
    t.add_argument("--layers", type=Path, default=None, help="multi-task mode: folder of label folders of image-level labelled layers (e.g. pblm/)")
    t.add_argument("--label-map", type=Path, default=None, help="label folder -> layer classes (TOML; `pblm` = the shipped label_maps/pblm.toml)")
    t.add_argument("--layer-weight", type=float, default=0.5, help="w in L = L_seg + w L_layer (multi-task mode)")
    t.add_argument("--layer-batch-size", type=int, default=4)
    t.add_argument("--max-layers-per-label", type=int, default=None, help="use at most this many layers of each label per split")
    t.add_argument("--mixed-sizes", choices=["resize", "refuse"], default="resize", help="layers whose size differs from the first: resize them, or stop")
    t.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights (same architecture)")
    t.add_argument("--freeze-batch-norm", action="store_true", help="BatchNorm normalises with its running statistics and does not update them (fine-tuning from --init with small mixed batches)")
    t.add_argument("--freeze-trunk", action="store_true", help="with --init: keep its trunk exactly as it is and train the head alone (an ensemble member for calibrate --head-runs)")
    t.add_argument("--fresh-head", action="store_true", help="with --init: draw the head afresh from --seed instead of starting from the checkpoint's")
    t.add_argument("--min-scale", type=float, default=1.0, help="with --crop: half the crops come from windows up to crop/MIN_SCALE wide shrunk to the crop (scale log-uniform in [MIN_SCALE, 1]): multi-scale training; 1: every crop at the layer's own scale")
    t.add_argument("--real-layers", type=Path, default=None, help="real-bed mode: folder of label folders of real layers (e.g. pblm/) under weak pixel losses, with planted defects on their clean layers (realbed.py); needs --label-map and --crop")
    t.add_argument("--plant-batch", type=int, default=2, help="real-bed mode: crops of clean real layers with planted defects per step")
    t.add_argument("--real-batch", type=int, default=2, help="real-bed mode: crops of real layers under the absence loss per step")
    t.add_argument("--mil-every", type=int, default=4, help="real-bed mode: one whole defective real layer (presence loss) every this many steps")
    t.add_argument("--weak-layers", choices=["all", "clean"], default="all", help="real-bed mode: the real layers under the weak losses: all (absence and presence by their labels), or the clean ones only (absence everywhere)")
    t.add_argument("--weak-weight", type=float, default=1.0, help="real-bed mode: weight of the weak losses (0: planted defects on real beds only, the real layers are not passed)")
    t.add_argument("--weak-classes", type=lambda v: [c for c in v.split(",") if c], default=None, metavar="NAME[,NAME..]", help="real-bed mode: the defect classes the weak losses speak of on the defective layers (default: all; a clean layer keeps every class absent); the others are left to the pixel losses, for labels that cannot be trusted on them")
    t.add_argument("--weak-absent-classes", type=lambda v: [c for c in v.split(",") if c], default=None, metavar="NAME[,NAME..]", help="real-bed mode: classes besides --weak-classes whose absence alone the weak losses speak of on the defective layers whose label lacks them (a label that names a class may be unsure where it is, and still be sure where it is not)")
    t.add_argument("--presence-top-k", type=_class_shares, default=None, metavar="NAME=SHARE[,NAME=SHARE..]", help="real-bed mode: the presence loss's k for these classes, as a share of a whole layer's pixels (default for every class: realbed.TOP_K_SHARE, 0.002); give a class whose instances are smaller than that its own, e.g. super-elevation=0.0001")
    t.add_argument("--mask-absence-weight", type=float, default=0.0, help="real-bed mode: weight of the absence of every class a synthetic crop's mask does not hold, on its mean and its top k pixels (realbed.mask_absence_loss; 0: off)")
    t.add_argument("--real-val-layers", type=int, default=12, help="real-bed mode: validation real layers judged whole after each epoch")

    c = sub.add_parser("calibrate", help="pick the top-M checkpoints and fit a temperature per member")
    c.add_argument("--run", required=True, type=Path)
    c.add_argument("--members", type=int, default=5)
    c.add_argument("--head-runs", type=Path, nargs="+", default=[], metavar="RUN", help="one more member from the best checkpoint of each RUN: heads trained on the run's best trunk (train --init BEST --freeze-trunk --fresh-head)")

    e = sub.add_parser("export", help="export the ensemble to one ONNX graph plus manifest.toml, checked against PyTorch")
    e.add_argument("--run", required=True, type=Path)
    e.add_argument("-o", "--out", required=True, type=Path)
    e.add_argument("--name", default="bedsight-synthetic")
    e.add_argument("--version", default=None, help="model version (default: today's date)")
    e.add_argument("--description", default=None)

    q = sub.add_parser("quantize", help="static INT8 QDQ quantization, fp32 vs INT8 on the test split")
    q.add_argument("--model", required=True, type=Path)
    q.add_argument("--data", required=True, type=Path)
    q.add_argument("-o", "--out", required=True, type=Path)
    q.add_argument("--margin", type=float, default=0.02, help="largest allowed MIoU drop (default 0.02)")
    q.add_argument("--calibration-images", type=int, default=32)
    q.add_argument("--split-seed", type=int, default=0)

    v = sub.add_parser("evaluate", help="CPA, IoU, MPA, MIoU, ECE and uncertainty AUROC of a model on a dataset")
    v.add_argument("--model", required=True, type=Path, help=".onnx (manifest.toml beside it) or .bsimg")
    v.add_argument("--data", required=True, type=Path)
    v.add_argument("--out", type=Path, default=Path("evaluation"), help="folder for metrics.json and PNGs")
    v.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    v.add_argument("--split-seed", type=int, default=0)

    g = sub.add_parser("evaluate-layers", help="the layer head's precision, recall, F1 and confusion matrix on the held-out split of labelled layer folders")
    g.add_argument("--model", required=True, type=Path, help="model.onnx with manifest.toml beside it (a multi-task export)")
    g.add_argument("--layers", required=True, type=Path, help="folder of label folders (e.g. pblm/)")
    g.add_argument("--label-map", required=True, type=Path)
    g.add_argument("--split", default="test", choices=["train", "val", "test"])
    g.add_argument("--threshold", type=float, default=0.5, help="probability from which a layer class counts as present (the box's layer_classifier.review_threshold)")
    g.add_argument("--mixed-sizes", choices=["resize", "refuse"], default="resize")
    g.add_argument("--out", type=Path, default=Path("evaluation-layers"))

    k = sub.add_parser("pack", help="build a .bsimg model image with `bedsight image pack`")
    k.add_argument("--model", required=True, type=Path, help="the fp32 graph (model.onnx)")
    k.add_argument("--int8", type=Path, default=None, help="the INT8 graph (default: model.int8.onnx beside --model)")
    k.add_argument("--manifest", type=Path, default=None, help="default: manifest.toml beside --model")
    k.add_argument("--key", type=Path, default=None, help="ed25519 signing key")
    k.add_argument("--selftest-input", type=Path, default=None)
    k.add_argument("--selftest-mask", type=Path, default=None)
    k.add_argument("-o", "--out", required=True, type=Path)

    lb = sub.add_parser("labels", help="a site's pixel labels in the formats of labelling tools (COCO for CVAT, labelme)")
    lb_sub = lb.add_subparsers(dest="labels_command", required=True)
    le = lb_sub.add_parser("export", help="write a label store as COCO (one JSON file) or labelme (a folder of JSON files)")
    le.add_argument("--labels", required=True, type=Path, help="the label store: NAME.mask.png + NAME.labels.json per layer")
    le.add_argument("--format", required=True, choices=["coco", "labelme"])
    le.add_argument("--out", required=True, type=Path, help="coco: the JSON file; labelme: a folder")
    li = lb_sub.add_parser("import", help="read COCO or labelme files into a label store")
    li.add_argument("--format", required=True, choices=["coco", "labelme"])
    li.add_argument("--from", dest="source", required=True, type=Path, help="coco: the JSON file; labelme: the folder of JSON files")
    li.add_argument("--out", required=True, type=Path, help="the label store to write")
    li.add_argument("--by", default="", help="who labelled them (kept where the files do not say)")
    ld = lb_sub.add_parser("dataset", help="a dataset `train` reads from a label store and the layer images it labels")
    ld.add_argument("--labels", required=True, type=Path, help="the label store")
    ld.add_argument("--images", type=Path, default=None, help="the folder the labels' image paths are relative to (default: images/ beside the store, as on a box)")
    ld.add_argument("--out", required=True, type=Path, help="the dataset folder to write (new)")

    f = sub.add_parser("finetune", help="fine-tune a model image on a site's labels (with replay), recalibrate, refit its domain check, report before/after, pack")
    f.add_argument("--from", dest="source", required=True, type=Path, help="the model image the box runs (.bsimg, format 1.3 with its training weights)")
    f.add_argument("--labels", required=True, type=Path, help="the label store (the box's labels/ folder, or `labels import`'s)")
    f.add_argument("--images", type=Path, default=None, help="the folder the labels' image paths are relative to (default: images/ beside the store, as on a box)")
    f.add_argument("--out", required=True, type=Path, help="the fine-tune's folder (new, or the one to --resume)")
    f.add_argument("--replay", type=Path, default=None, help="a dataset of the model's original training data (default: --replay-layers layers of the project's generator at the model's size)")
    f.add_argument("--replay-layers", type=int, default=40)
    f.add_argument("--replay-ratio", type=float, default=1.0, help="replayed training layers per site training layer")
    f.add_argument("--held-out", type=float, default=0.25, help="share of the site's layers, the last run of them, held out to compare before and after")
    f.add_argument("--epochs", type=int, default=4)
    f.add_argument("--lr", type=float, default=3e-4, help="at the start; it falls along a cosine")
    f.add_argument("--batch-size", type=int, default=2)
    f.add_argument("--crop", type=int, default=None, help="training crops (default 256 for models larger than that)")
    f.add_argument("--steps-per-epoch", type=int, default=None, help="cap each epoch at this many steps (a quick trial)")
    f.add_argument("--members", type=int, default=None, help="ensemble members (default: the image's), its heads of their own draw among them, at least one checkpoint of the fine-tune")
    f.add_argument("--int8-margin", type=float, default=0.02, help="largest MIoU drop of the INT8 graph on the held-out run")
    f.add_argument("--key", type=Path, default=None, help="ed25519 key to sign the image with (flash.sh installs signed images)")
    f.add_argument("--trusted-keys", type=Path, default=None, help="folder of public keys the --from image must be signed by")
    f.add_argument("--version", default=None)
    f.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    f.add_argument("--resume", action="store_true", help="carry on the fine-tune in --out from its last checkpoint")
    f.add_argument("--seed", type=int, default=0)

    l = sub.add_parser("select", help="pick the layers most worth labelling next")
    l.add_argument("--journal", required=True, type=Path, help="folder of REVIEW layers (or any images)")
    l.add_argument("--strategy", choices=["uncertainty", "smile"], default="uncertainty")
    l.add_argument("--count", type=int, default=10)
    l.add_argument("--model", type=Path, default=None, help=".onnx or .bsimg (needed for uncertainty)")
    l.add_argument("--out", type=Path, default=Path("to-label"))
    l.add_argument("--seed", type=int, default=0)
    l.add_argument("--verdict", default=None, help="only layers with this verdict in the folder's *.jsonl records (e.g. REVIEW)")
    return p


def run(args: argparse.Namespace) -> None:
    progress = not args.quiet
    if args.command == "synth":
        from . import synth

        if args.sample_build:
            if args.generator != "main":
                raise BadInput("--sample-build comes from the main generator")
            synth.write_sample_build(args.out, args.size, args.seed)
            print(f"wrote the sample build to {args.out}")
        else:
            if args.layers < 1 or args.size < 32:
                raise BadInput("--layers must be >= 1 and --size >= 32")
            if args.generator == "alt":
                from . import synth_alt

                synth_alt.write_dataset(args.out, args.layers, args.size, args.seed, progress=progress)
            else:
                synth.write_dataset(args.out, args.layers, args.size, args.seed, progress=progress)
            print(f"wrote {args.layers} layers of {args.size}x{args.size} ({args.generator} generator) to {args.out}")
    elif args.command == "train":
        from .train import TrainOptions, train

        history = train(
            TrainOptions(
                arch=args.arch, data=args.data, epochs=args.epochs, out=args.out, batch_size=args.batch_size, lr=args.lr,
                seed=args.seed, split_seed=args.split_seed, widths=_widths(args.width), preset=args.preset, crop=args.crop,
                class_weights=args.class_weights, focal_tversky=args.focal_tversky, sr_weight=args.sr_weight, photometric=args.photometric, foreground_share=args.foreground_share, min_scale=args.min_scale, freeze_batch_norm=args.freeze_batch_norm, freeze_trunk=args.freeze_trunk, fresh_head=args.fresh_head, overwrite=args.overwrite, progress=progress,
                layers=args.layers, label_map=args.label_map, layer_weight=args.layer_weight, layer_batch_size=args.layer_batch_size,
                max_layers_per_label=args.max_layers_per_label, mixed_sizes=args.mixed_sizes, init=args.init,
                real_layers=args.real_layers, plant_batch=args.plant_batch, real_batch=args.real_batch, mil_every=args.mil_every, weak_layers=args.weak_layers,
                weak_weight=args.weak_weight, weak_classes=args.weak_classes, weak_absent_classes=args.weak_absent_classes, presence_top_k=args.presence_top_k, mask_absence_weight=args.mask_absence_weight, real_val_layers=args.real_val_layers, lr_schedule=args.lr_schedule, cycles=args.cycles,
                device=args.device, resume=args.resume,
            )
        )
        best = max(history["epochs"], key=lambda e: e["score"])
        print(f"trained {args.epochs} epochs in {history['train_seconds']:.0f} s; best epoch {best['epoch']}: Score {best['score']:.4f} (MPA {best['mpa']:.4f}, MIoU {best['miou']:.4f}); curves in {args.out / 'curves.png'}")
    elif args.command == "calibrate":
        from .calibrate import calibrate

        calibrate(args.run, args.members, args.head_runs, progress=progress)
    elif args.command == "export":
        from .export import export

        export(args.run, args.out, name=args.name, version=args.version, description=args.description, progress=progress)
    elif args.command == "quantize":
        from .quant import quantize

        quantize(args.model, args.data, args.out, margin=args.margin, calibration_images=args.calibration_images, split_seed=args.split_seed, progress=progress)
    elif args.command == "evaluate":
        from .evaluate import evaluate

        evaluate(args.model, args.data, args.out, split=args.split, split_seed=args.split_seed, progress=progress)
    elif args.command == "evaluate-layers":
        from .layer_report import evaluate_layers

        evaluate_layers(args.model, args.layers, args.label_map, args.out, split=args.split, threshold=args.threshold, mixed_sizes=args.mixed_sizes, progress=progress)
    elif args.command == "pack":
        from .pack import pack

        pack(args.model, args.out, int8=args.int8, manifest=args.manifest, key=args.key, selftest_input=args.selftest_input, selftest_mask=args.selftest_mask, progress=progress)
    elif args.command == "labels":
        from . import labels

        if args.labels_command == "dataset":
            count = labels.make_dataset(args.labels, args.images, args.out)
            print(f"wrote a dataset of {count} labelled layer(s) to {args.out}: `bedsight-train evaluate --model MODEL --data {args.out} --split all` measures a model on the site's labels")
        elif args.labels_command == "export":
            written = labels.export_labels(args.labels, args.format, args.out)
            print(f"wrote {args.format} labels to {written}")
        else:
            layers = labels.import_labels(args.source, args.format, args.out, labelled_by=args.by)
            print(f"imported {len(layers)} labelled layer(s) into {args.out}")
    elif args.command == "finetune":
        from .finetune import finetune

        finetune(
            args.source, args.labels, args.out, images=args.images, replay=args.replay, replay_ratio=args.replay_ratio,
            replay_layers=args.replay_layers, held_out=args.held_out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            crop=args.crop, members=args.members, int8_margin=args.int8_margin, key=args.key, trusted_keys=args.trusted_keys,
            version=args.version, device=args.device, resume=args.resume, seed=args.seed, max_steps_per_epoch=args.steps_per_epoch,
            progress=progress,
        )
    elif args.command == "select":
        from .select import select

        select(args.journal, args.strategy, args.count, args.out, model=args.model, seed=args.seed, progress=progress, verdict=args.verdict)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .export import ExportMismatch
    from .pack import PackError
    from .quant import QuantizationRegression

    try:
        run(args)
    except BadInput as e:
        print(f"bedsight-train {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (QuantizationRegression, ExportMismatch, PackError) as e:
        print(f"bedsight-train {args.command}: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bedsight-train {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
