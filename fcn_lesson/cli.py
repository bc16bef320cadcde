"""Command line: python -m fcn_lesson COMMAND --help, for the commands train-classifier, train,
transfer-experiment, retrain (the in-class chain), learn-upsampling, tune-shift, evaluate and
predict.

The benchmark lives outside the lesson: `python -m benchmarks --help` from the repository.

Two datasets: the classroom shapes (the default: offline, minutes on a laptop CPU) and
PASCAL VOC with the paper's recipe (`--dataset voc`). Every command also runs under
`torchrun --nproc_per_node=N` (several GPUs, or several CPU processes) unchanged.
"""

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

from fcn_lesson import classroom
from fcn_lesson.core.models import VARIANTS
from fcn_lesson.engine import distributed
from fcn_lesson.engine.loop import PAPER_RECIPE

EPILOG = """examples (classroom shapes, offline; the shipped checkpoints' recipe is in data/README.md):
  python -m fcn_lesson train-classifier --out checkpoints/classifier.pt
  python -m fcn_lesson train --variant fcn32s --init data/classifier.pt --out checkpoints/fcn32s.pt
  python -m fcn_lesson train --variant fcn16s --init checkpoints/fcn32s.pt --out checkpoints/fcn16s.pt
  python -m fcn_lesson tune-shift --checkpoint checkpoints/fcn16s.pt --out checkpoints/fcn16s_tuned.pt
  python -m fcn_lesson learn-upsampling --checkpoint checkpoints/fcn8s.pt --out checkpoints/fcn8s_up.pt
  python -m fcn_lesson evaluate --checkpoint data/fcn8s.pt --image-size 150
  python -m fcn_lesson predict photo.png --variant fcn8s --out photo_mask.png

examples (full mode: ImageNet VGG16 + PASCAL VOC, the paper's recipe, stage-wise):
  python -m fcn_lesson train --dataset voc --data-root ~/data/voc --download \\
      --variant fcn32s --init imagenet --out runs/fcn32s.pt
  python -m fcn_lesson train --dataset voc --variant fcn16s --init runs/fcn32s.pt --out runs/fcn16s.pt
  torchrun --nproc_per_node=4 -m fcn_lesson train --dataset voc \\
      --variant fcn8s --init runs/fcn16s.pt --out runs/fcn8s.pt
  python -m fcn_lesson evaluate --dataset voc --checkpoint runs/fcn8s.pt
"""

# Defaults that differ between the classroom and the paper's recipe (flags left unset take these).
RECIPES = {
    "shapes": {"optimizer": "adam", "lr": 3e-3, "schedule": "cosine", "weight_decay": 0.0,
               "batch_size": 16, "epochs": 10, "dropout": 0.0, "width": classroom.WIDTH,
               "train_images": 2000, "val_images": 200, "num_workers": 0},
    "voc": {**PAPER_RECIPE, "epochs": 50, "dropout": 0.5, "width": 1.0,
            "train_images": None, "val_images": None, "num_workers": 4},
}
EVAL_DEFAULTS = {"shapes": {"images": 200, "batch_size": 16}, "voc": {"images": None, "batch_size": 1}}

# The in-class retrain (`retrain`): the whole stage-wise chain from the shipped classroom
# classifier, for a lesson (the target is 10 minutes on a 2-core laptop; data/README.md has what
# it takes). Per stage: the variant, its passes over the training images and how many images it
# draws; the flags all stages share; the validation images scored after every epoch.
IN_CLASS_CHAIN = (("fcn32s", 1, 4500), ("fcn16s", 2, 4500), ("fcn8s", 7, 4500))
IN_CLASS_FLAGS = ["--train-sizes", "96,128", "--batch-by-size", "--photo", "0.3", "--lr", "3e-3"]
IN_CLASS_VAL_IMAGES = 100

LR_HELP = f"""learning rate (default: {RECIPES['shapes']['lr']:g} for shapes, with cosine decay; for voc,
fixed, {RECIPES['voc']['lr']:g} for a net started from ImageNet and 100x smaller per stage when started
from a coarser FCN: 1e-6 for fcn16s, 1e-8 for fcn8s, as the paper). The loss is the per-pixel MEAN;
why the reference solvers' 1e-10 means about this: help(fcn_lesson.engine.loop.mean_loss_lr)"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those depend on --dataset and say so in their help)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _resolve(args, defaults: dict) -> None:
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _say(*args, **kwargs) -> None:
    if distributed.is_main():
        print(*args, **kwargs)


# --- train -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mixed_size_training_set(num_images: int, sizes: tuple[int, ...], seed: int, photo: float):
    # Kept between calls in one process: the stages of `retrain` train on the same images, and
    # rendering them again for every stage would cost each stage its first seconds.
    from fcn_lesson.datasets.shapes import mixed_size_shapes

    return mixed_size_shapes(num_images, sizes, seed=seed, photo=photo)


def _shapes_data(args):
    from fcn_lesson.datasets.shapes import ShapesDataset

    val = ShapesDataset(args.val_images, args.image_size, seed=args.val_seed)
    dataset = {"name": "shapes", "image_size": args.image_size,
               "train_images": args.train_images, "train_seed": args.seed,
               "val_images": args.val_images, "val_seed": args.val_seed}
    if args.photo:
        dataset["photo"] = args.photo
    if args.train_sizes:
        from fcn_lesson.datasets.common import replicate_pad_collate

        sizes = tuple(int(s) for s in args.train_sizes.split(","))
        train = _mixed_size_training_set(args.train_images, sizes, args.seed, args.photo)
        dataset["train_sizes"] = list(sizes)
        if args.batch_by_size:  # one size per batch: nothing to pad
            return train, val, list(val.classes), dataset, {"batch_by_size": True}
        return train, val, list(val.classes), dataset, {"collate_fn": replicate_pad_collate}
    train = ShapesDataset(args.train_images, args.image_size, seed=args.seed, photo=args.photo)
    return train, val, list(train.classes), dataset, {}


def _voc_data(args):
    from fcn_lesson.datasets import voc

    root = Path(args.data_root).expanduser()
    if args.download:
        if distributed.is_main():  # one download, then everybody reads it
            voc.download_voc(root, args.year)
        distributed.barrier()
    for split in (args.train_split, args.val_split):
        voc.check_voc_root(root, args.year, split)  # what is missing and how to get it
    # crop-size 0: whole images without augmentation, as the paper (use --batch-size 1 then).
    augment = (voc.train_transforms(args.crop_size, tuple(args.scale)) if args.crop_size
               else voc.eval_transforms())
    train = voc.VOCSegmentation(root, args.year, args.train_split, transforms=augment, seed=args.seed,
                                num_images=args.train_images)
    val = voc.VOCSegmentation(root, args.year, args.val_split, num_images=args.val_images)
    dataset = {"name": "voc", "year": args.year, "root": str(root), "train_split": args.train_split,
               "val_split": args.val_split, "train_images": len(train), "val_images": len(val),
               "crop_size": args.crop_size, "scale": list(args.scale)}
    # Validation one image at a time: padding to a common size would change the predictions.
    return train, val, list(voc.VOC_CLASSES), dataset, {"collate_fn": voc.pad_collate, "val_batch_size": 1}


def _train(args) -> int:
    if args.batch_by_size and not (args.dataset == "shapes" and args.train_sizes):
        print("error: --batch-by-size batches the sizes of --train-sizes (shapes only): add "
              "--train-sizes, e.g. 96,128,160, or drop --batch-by-size", file=sys.stderr)
        return 2
    if args.dataset == "voc" and args.lr is None and args.init not in (None, "imagenet"):
        # Stage-wise (paper, Sec. 4.2): a net started from a coarser FCN learns 100x slower.
        args.lr = RECIPES["voc"]["lr"] * 0.01 ** VARIANTS[args.variant].skips
    _resolve(args, RECIPES[args.dataset])
    with distributed.process_group(args.device) as device:
        return _train_on(args, device)


def _train_on(args, device) -> int:
    import torch

    from fcn_lesson.core.backbone import imagenet_vgg16
    from fcn_lesson.engine.checkpoint import is_classifier_checkpoint, load_checkpoint, load_classifier
    from fcn_lesson.engine.loop import train_or_load

    batch_norm = args.dataset == "shapes" and classroom.BATCH_NORM
    if args.init == "imagenet" and (args.width != 1.0 or batch_norm):
        print("error: --init imagenet needs the full VGG16 without BatchNorm: use --dataset voc and "
              f"--width 1 (got --dataset {args.dataset}, --width {args.width})", file=sys.stderr)
        return 2
    train, val, classes, dataset, data_kwargs = (_voc_data if args.dataset == "voc" else _shapes_data)(args)
    out = Path(args.out or f"checkpoints/{args.variant}.pt")
    state_path = out.with_name(f"{out.stem}.resume{out.suffix}")
    resuming = args.resume and state_path.exists()  # the saved state replaces any initialisation

    torch.manual_seed(args.seed)
    init = vgg = clf = None
    if args.init and not resuming:
        if args.init == "imagenet":
            if not distributed.is_main():
                distributed.barrier()  # rank 0 downloads the weights (once) into the cache
            vgg = imagenet_vgg16(progress=distributed.is_main())
            if distributed.is_main():
                distributed.barrier()
        elif is_classifier_checkpoint(args.init):  # the paper's transfer, from the classroom classifier
            clf, _ = load_classifier(args.init)
        else:
            init, init_meta = load_checkpoint(args.init)
            if init.skips > VARIANTS[args.variant].skips:
                print(f"error: --init must be a coarser net than {args.variant} (fcn32s -> fcn16s -> "
                      f"fcn8s) or another {args.variant}, {args.init} holds a {init.variant}",
                      file=sys.stderr)
                return 2

    def make_model():
        model = VARIANTS[args.variant](num_classes=len(classes), width=args.width,
                                       dropout=args.dropout, batch_norm=batch_norm,
                                       learn_final_upsampling=args.learn_final_upsampling)
        if vgg is not None:
            return model.init_from_imagenet(vgg)
        if clf is not None:
            return model.init_from_classifier(clf)
        return model.init_from(init) if init is not None else model

    meta = {"classes": classes, "dataset": dataset,
            "training": {"init": args.init or "scratch", "processes": distributed.world_size(),
                         "command": "python -m fcn_lesson " + " ".join(sys.argv[1:])},
            "half": args.half}
    if init is not None and init.variant == args.variant:  # trained further: keep how it was made
        meta["training"]["continued_from"] = {k: init_meta[k] for k in ("training", "final_upsampling")
                                              if k in init_meta}
    start = time.perf_counter()
    model, meta = train_or_load(
        out, make_model, train, val, retrain=True, checkpoint_meta=meta, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed, device=device,
        num_workers=args.num_workers, state_path=state_path, save_every=args.save_every,
        resume=args.resume, **data_kwargs)
    _say(f"saved {out} after {time.perf_counter() - start:.0f} s")
    _say(json.dumps({k: round(v, 4) for k, v in meta["metrics"].items() if isinstance(v, float)}, indent=1))
    return 0


# --- train-classifier ------------------------------------------------------------------

def _train_classifier(args) -> int:
    import torch

    from fcn_lesson.core.classifier import classroom_vgg16
    from fcn_lesson.datasets.shapes import ShapesClassification
    from fcn_lesson.engine.checkpoint import save_classifier
    from fcn_lesson.engine.classify import classifier_accuracy, fit_classifier, render_all
    from fcn_lesson.engine.device import pick_device

    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model = classroom_vgg16(len(ShapesClassification.classes), width=args.width,
                            batch_norm=classroom.BATCH_NORM, dropout=args.dropout)
    if args.init:  # continue training a classifier checkpoint (same width)
        from fcn_lesson.engine.checkpoint import load_classifier

        model.load_state_dict(load_classifier(args.init)[0].state_dict())
    start = time.perf_counter()
    train = render_all(ShapesClassification(args.train_images, args.image_size, seed=args.seed),
                       progress=True, desc="render training images")
    val = render_all(ShapesClassification(args.val_images, args.image_size, seed=args.val_seed))
    history = fit_classifier(model, train, val, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=device)
    seconds = time.perf_counter() - start
    metrics = {"val_acc": history[-1]["val_acc"]}
    if args.test_images:
        fresh = ShapesClassification(args.test_images, args.image_size, seed=classroom.EVAL_SEED)
        metrics["fresh_acc"] = classifier_accuracy(model, fresh, device=device)
        metrics["fresh_seed"] = classroom.EVAL_SEED
        metrics["fresh_images"] = args.test_images
    out = Path(args.out)
    save_classifier(
        out, model, classes=ShapesClassification.classes, metrics=metrics, history=history,
        half=args.half,
        dataset={"name": "shapes_classification", "image_size": args.image_size,
                 "train_images": args.train_images, "train_seed": args.seed,
                 "val_images": args.val_images, "val_seed": args.val_seed},
        training={"command": "python -m fcn_lesson " + " ".join(sys.argv[1:]), "init": args.init or "scratch",
                  "seconds": round(seconds, 1), "epochs": args.epochs, "batch_size": args.batch_size,
                  "lr": args.lr, "optimizer": "adam", "schedule": "cosine",
                  "weight_decay": args.weight_decay, "dropout": args.dropout,
                  "threads": torch.get_num_threads(), "device": str(device)})
    print(f"saved {out} after {seconds:.0f} s ({out.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=1))
    return 0


def _transfer_experiment(args) -> int:
    import torch

    from fcn_lesson.engine import transfer
    from fcn_lesson.engine.checkpoint import load_classifier

    torch.manual_seed(args.seed)
    clf = (load_classifier(args.classifier)[0] if args.classifier
           else classroom.load_classroom_classifier(device="cpu"))
    counts = tuple(int(n) for n in args.masks.split(","))
    start = time.perf_counter()
    rows = transfer.run(clf, counts, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        eval_images=args.eval_images, eval_seed=args.eval_seed, train_seed=args.seed,
                        width=clf.width, batch_norm=clf.batch_norm)
    settings = {"command": "python -m fcn_lesson " + " ".join(sys.argv[1:]), "steps": args.steps,
                "batch_size": args.batch_size, "lr": args.lr, "optimizer": "adam", "schedule": "cosine",
                "image_size": 128, "train_seed": args.seed, "eval_images": args.eval_images,
                "eval_seed": args.eval_seed, "variant": "fcn32s", "threads": torch.get_num_threads(),
                "seconds": round(time.perf_counter() - start, 1)}
    transfer.save(args.out, rows, settings)
    print(transfer.table(rows))
    print(f"wrote {args.out}")
    return 0


# --- retrain (in class) ----------------------------------------------------------------

def in_class_commands(out_dir: Path, scale: float = 1.0) -> list[list[str]]:
    """The `train` command lines of the in-class retrain, stage by stage, each stage started from
    the one before and the first from the shipped classifier. `scale` multiplies the numbers of
    training and validation images (a quick run to see that it works; its models are then
    untrained)."""
    commands, init = [], str(classroom.classifier_path())
    val_images = max(8, round(IN_CLASS_VAL_IMAGES * scale))
    for variant, epochs, images in IN_CLASS_CHAIN:
        out = Path(out_dir) / f"{variant}.pt"
        commands.append(["train", "--variant", variant, "--init", init, "--out", str(out),
                         "--epochs", str(epochs), "--train-images", str(max(16, round(images * scale))),
                         "--val-images", str(val_images), *IN_CLASS_FLAGS])
        init = str(out)
    return commands


def command_line(command: list[str], width: int = 88) -> str:
    """`python -m fcn_lesson COMMAND ...` as shell lines of at most about `width` characters,
    continued with backslashes, each flag kept with its value (a notebook wraps a long line
    wherever the width runs out, often mid-word)."""
    groups = []
    for word in ["python", "-m", "fcn_lesson", *command]:
        if groups and not word.startswith("--") and groups[-1].startswith("--") and " " not in groups[-1]:
            groups[-1] += " " + word
        else:
            groups.append(word)
    lines = [groups[0]]
    for group in groups[1:]:
        if len(lines[-1]) + 1 + len(group) > width - 2:
            lines.append("    " + group)
        else:
            lines[-1] += " " + group
    return " \\\n".join(lines)


def retrain_chain(out_dir: Path, scale: float = 1.0, eval_images: int = 100, say=print) -> dict:
    """Run the in-class retrain into `out_dir`; then score each stage's net on `eval_images`
    fresh images at 128 px (`classroom.validation_set`). Returns seconds and mean IoU per stage,
    and the total training seconds (scoring not included)."""
    from fcn_lesson.engine.checkpoint import load_checkpoint
    from fcn_lesson.engine.loop import evaluate

    stages = []
    for command in in_class_commands(out_dir, scale):
        say(command_line(command))
        start = time.perf_counter()
        if main(command) != 0:
            raise RuntimeError(f"the in-class retrain stopped at {command[2]}; see the error above")
        stages.append({"variant": command[2], "seconds": round(time.perf_counter() - start, 1),
                       "checkpoint": command[command.index("--out") + 1]})
    data = classroom.validation_set(eval_images)
    for stage in stages:
        model, _ = load_checkpoint(stage["checkpoint"], device="cpu")
        stage["mean_iou_128"] = round(evaluate(model, data, device="cpu")["mean_iou"], 4)
    return {"stages": stages, "train_seconds": round(sum(s["seconds"] for s in stages), 1),
            "eval_images": eval_images, "scale": scale}


def _retrain(args) -> int:
    result = retrain_chain(Path(args.out_dir), args.scale, args.eval_images)
    for s in result["stages"]:
        print(f"{s['variant']}: {s['seconds']:.0f} s, mean IoU {s['mean_iou_128']:.3f} on "
              f"{args.eval_images} fresh 128-px images ({s['checkpoint']})")
    print(f"the whole chain trained in {result['train_seconds'] / 60:.1f} min")
    return 0


# --- steps after training: learn-upsampling, tune-shift ---------------------------------

# What a step after training carries over from the checkpoint it rewrites: how the net was made
# (the step adds its own record).
_MADE_BY = ("classes", "dataset", "metrics", "history", "training", "final_upsampling", "class_shift")


def _trained_shapes_net(args, command: str, seeds: tuple[int, ...]):
    """(model on the CPU, metadata) of `args.checkpoint`, refused unless it was trained on the
    classroom shapes and none of `seeds` is the evaluation seed."""
    from fcn_lesson.engine.checkpoint import load_checkpoint

    model, meta = load_checkpoint(args.checkpoint, device="cpu")
    if meta.get("dataset", {}).get("name", "shapes") != "shapes":
        raise ValueError(f"{args.checkpoint} was trained on {meta['dataset']['name']}; {command} "
                         "works on classroom shapes images only")
    if classroom.EVAL_SEED in seeds:
        raise ValueError(f"seed {classroom.EVAL_SEED} is the evaluation seed (tests and notebooks score "
                         "on it); use held-out images the evaluation never sees, e.g. the defaults "
                         f"(validation seed {classroom.VAL_SEED})")
    return model, meta


def _made_by(meta: dict, replaced: str) -> dict:
    """The `_MADE_BY` records of `meta`, but `replaced`, which the step writes anew."""
    return {k: meta[k] for k in _MADE_BY if k in meta and k != replaced}



def _learn_upsampling(args) -> int:
    import torch

    from fcn_lesson.datasets.shapes import ShapesDataset
    from fcn_lesson.engine.calibrate import learn_final_upsampling
    from fcn_lesson.engine.checkpoint import save_checkpoint
    from fcn_lesson.engine.loop import evaluate

    model, meta = _trained_shapes_net(args, "learn-upsampling", (args.seed, args.val_seed))
    shift = meta.pop("class_shift", None)
    if shift is not None:  # tuned for the old upsampling: back to the net as trained
        model.shift_class_scores(-torch.tensor(shift["shift"]))
    torch.manual_seed(args.seed)
    data = ShapesDataset(args.train_images, args.image_size, seed=args.seed, photo=args.photo)
    val = ShapesDataset(args.val_images, args.image_size, seed=args.val_seed)
    start = time.perf_counter()
    learned = learn_final_upsampling(model, data, steps=args.steps, batch_size=16, lr=args.lr,
                                     seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    before, after = evaluate(model, val)["mean_iou"], evaluate(learned, val)["mean_iou"]
    record = {"data": repr(data), "steps": args.steps, "batch_size": 16, "lr": args.lr,
              "seconds": round(seconds, 1), "val": repr(val), "mean_iou_before": before,
              "mean_iou_after": after, "command": "python -m fcn_lesson " + " ".join(sys.argv[1:])}
    save_checkpoint(args.out, learned, half=meta["half"], final_upsampling=record,
                    **_made_by(meta, "final_upsampling"))
    print(f"learned upscore_final ({learned.upscore_final.weight.numel():,} weights) in {seconds:.0f} s")
    print(f"mean IoU on {val!r}: {before:.4f} -> {after:.4f}"
          + (" (score offsets taken off; tune them again with tune-shift)" if shift is not None else ""))
    print(f"wrote {args.out}")
    return 0


def _tune_shift(args) -> int:
    from fcn_lesson.datasets.shapes import ShapesDataset
    from fcn_lesson.engine.calibrate import tune_class_shift
    from fcn_lesson.engine.checkpoint import save_checkpoint

    model, meta = _trained_shapes_net(args, "tune-shift", (args.seed,))
    data = ShapesDataset(args.images, args.image_size, seed=args.seed)
    result = tune_class_shift(model, data)
    model.shift_class_scores(result["shift"])
    earlier = meta.get("class_shift", {}).get("shift", [0.0] * model.num_classes)
    record = {"shift": [a + b for a, b in zip(earlier, result["shift"].tolist(), strict=True)],
              "data": repr(data), "mean_iou_before": result["mean_iou_before"],
              "mean_iou_after": result["mean_iou_after"],
              "command": "python -m fcn_lesson " + " ".join(sys.argv[1:])}
    save_checkpoint(args.out, model, half=meta["half"], class_shift=record, **_made_by(meta, "class_shift"))
    classes = meta.get("classes") or [str(c) for c in range(model.num_classes)]
    print("score offsets per class: " + ", ".join(
        f"{c} {v:+.3f}" for c, v in zip(classes, result["shift"].tolist(), strict=True)))
    print(f"mean IoU on {data!r}: {result['mean_iou_before']:.4f} -> {result['mean_iou_after']:.4f}")
    print(f"wrote {args.out}")
    return 0


# --- evaluate, predict -----------------------------------------------------------------

def _load(args, device=None):
    """(model, dataset name it was trained on)."""
    from fcn_lesson.engine.checkpoint import load_checkpoint

    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint, device=device or args.device)
        return model, meta.get("dataset", {}).get("name", "shapes")
    return classroom.load_classroom_model(args.variant, device=device or args.device), "shapes"


def _evaluate(args) -> int:
    _resolve(args, EVAL_DEFAULTS[args.dataset])
    with distributed.process_group(args.device) as device:
        return _evaluate_on(args, device)


def _evaluate_on(args, device) -> int:
    from fcn_lesson.engine.loop import evaluate

    model, _ = _load(args, device)
    if args.dataset == "voc":
        from fcn_lesson.datasets import voc

        data = voc.VOCSegmentation(Path(args.data_root).expanduser(), args.year, args.split,
                                   num_images=args.images)
        classes, about = voc.VOC_CLASSES, {"split": args.split, "year": args.year}
    else:
        from fcn_lesson.datasets.shapes import ShapesDataset

        data = ShapesDataset(args.images, args.image_size, seed=args.seed)
        classes, about = data.classes, {"image_size": args.image_size, "seed": args.seed}
    if model.num_classes != len(classes):
        print(f"error: the model predicts {model.num_classes} classes, the {args.dataset} data has "
              f"{len(classes)}; pass --dataset for the data it was trained on", file=sys.stderr)
        return 2
    from fcn_lesson.datasets.common import pad_collate

    scores = evaluate(model, data, batch_size=args.batch_size, progress=True,
                      collate_fn=pad_collate if args.dataset == "voc" else None)
    row = {k: round(scores[k], 4) for k in
           ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc")}
    # null, not NaN (invalid JSON), for a class in neither the ground truth nor the predictions
    row["iou"] = {c: None if math.isnan(v) else round(v, 4)
                  for c, v in zip(classes, scores["iou"].tolist(), strict=True)}
    _say(json.dumps({"variant": model.variant, "dataset": args.dataset, **about,
                     "images": len(data), **row}, indent=1))
    return 0


# A photo larger than this (on its longer side) is shrunk for the model, and its mask scaled back
# up to the photo's size: a 6000 x 4000 photo at full size peaks at 3 GB and takes a minute even
# with the classroom FCN-8s on a CPU (1.4 GB and 20 s shrunk to 2048 px).
PREDICT_MAX_SIDE = 2048
# Pillow's modes for 16-bit greyscale (PNG, TIFF); its own conversion to RGB clips them at 255.
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _read_rgb(path: Path):
    """An image file as an RGB PIL image; ValueError with a one-line reason if it is not one.

    Greyscale is repeated over the three channels, 16-bit greyscale scaled to 8 bits, and
    transparent pixels shown over white (as an image viewer shows them).
    """
    import numpy as np
    from PIL import Image

    if path.is_dir():
        raise ValueError(f"{path} is a folder; give one image file")
    if not path.is_file():
        raise ValueError(f"no image file at {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated or corrupt file fails here, not later
            if image.mode in _SIXTEEN_BIT_MODES:
                grey = np.asarray(image, dtype=np.float64) * (255 / 65535)
                return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
            if "A" in image.getbands() or "transparency" in image.info:
                rgba = image.convert("RGBA")
                return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
            return image.convert("RGB")
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read {path} as an image: {err}") from None


def _predict(args) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from fcn_lesson.engine.checkpoint import atomic_write
    from fcn_lesson.engine.loop import predict
    from fcn_lesson.lessons.viz import colorize

    if args.max_side < 1:
        raise ValueError(f"--max-side must be at least 1, got {args.max_side}")
    path = Path(args.image)
    image = _read_rgb(path)
    model, dataset = _load(args)
    out = Path(args.out or path.with_name(f"{path.stem}_{model.variant}_mask.png"))
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / 'mask.png'}")
    if not out.parent.is_dir():
        raise ValueError(f"no folder {out.parent} to write {out.name} into")
    size = image.size
    if max(size) > args.max_side:
        scale = args.max_side / max(size)
        image = image.resize((max(1, round(size[0] * scale)), max(1, round(size[1] * scale))),
                             Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    if dataset == "voc":  # ImageNet normalisation and the VOC palette
        from torchvision import tv_tensors

        from fcn_lesson.datasets.voc import VOC_CLASSES, VOC_PALETTE, eval_transforms

        x = eval_transforms()(tv_tensors.Image(pixels)).as_subclass(torch.Tensor)[None]
        classes, palette = VOC_CLASSES, VOC_PALETTE[:len(VOC_CLASSES)]
    else:  # the classroom models take [0, 1] images
        from fcn_lesson.datasets.shapes import CLASSES, PALETTE

        x = pixels.float()[None] / 255
        classes, palette = CLASSES, PALETTE
    mask = predict(model, x)[0]
    if image.size != size:  # back to the photo's size, one class per pixel
        mask = F.interpolate(mask[None, None].float(), size=size[::-1], mode="nearest")[0, 0].long()
    coloured = Image.fromarray(colorize(mask, palette))
    try:
        atomic_write(out, lambda f: coloured.save(f, format="PNG"))
    except OSError as err:  # a full disk, a read-only folder: say so, and leave no partial file
        raise ValueError(f"cannot write {out}: {err}") from None
    counts = torch.bincount(mask.flatten(), minlength=model.num_classes)
    found = ", ".join(f"{classes[c]} {100 * n / mask.numel():.1f}%"
                      for c, n in enumerate(counts.tolist()) if n)
    shrunk = f", predicted at {image.width}x{image.height}" if image.size != size else ""
    print(f"wrote {out} ({size[0]}x{size[1]}{shrunk}): {found}")
    return 0


# --- parser ----------------------------------------------------------------------------

def _voc_arguments(p: argparse.ArgumentParser, download: bool = False) -> argparse._ArgumentGroup:
    g = p.add_argument_group("PASCAL VOC (--dataset voc)")
    g.add_argument("--data-root", default=os.environ.get("FCN_LESSON_VOC", "~/data/voc"),
                   help="the folder that contains VOCdevkit/ (default from $FCN_LESSON_VOC if set)"
                        + (" (see --download)" if download else ""))
    g.add_argument("--year", default="2012", help="VOC year (2007-2012)")
    if download:
        g.add_argument("--download", action="store_true",
                       help="download the VOC archive (about 2 GB, MD5-checked) into --data-root if missing")
    return g


def _add_train(sub) -> None:
    """`train`: an FCN, from scratch, ImageNet, the classroom classifier or a coarser FCN."""
    t = sub.add_parser("train", formatter_class=_HelpFormatter,
                       help="train an FCN and save a checkpoint",
                       description="Train an FCN and save a checkpoint (written atomically; loads back "
                                   "with load_checkpoint). Stage-wise as in the paper: train fcn32s, then "
                                   "fcn16s --init fcn32s.pt, then fcn8s --init fcn16s.pt. The training "
                                   "state is saved to OUT's .resume.pt after every epoch (and every "
                                   "--save-every steps): an interrupted run continues where it stopped "
                                   "when the same command is run again. Under torchrun the same command "
                                   "trains data-parallel (DDP; --batch-size stays the global batch).")
    t.add_argument("--variant", choices=list(VARIANTS), required=True, help="which FCN")
    t.add_argument("--dataset", choices=list(RECIPES), default="shapes",
                   help="classroom shapes, or PASCAL VOC with the paper's recipe (SGD, momentum 0.9, "
                        "weight decay 5e-4, fixed learning rate)")
    t.add_argument("--init", help="'imagenet' (VGG16_Weights.IMAGENET1K_V1 from the torch cache, for "
                                  "fcn32s on voc), a classroom classifier checkpoint (data/classifier.pt, "
                                  "from train-classifier: the paper's transfer), or a checkpoint of a "
                                  "coarser FCN (stage-wise); default: from scratch")
    t.add_argument("--out", help="where to write the checkpoint (default checkpoints/VARIANT.pt)")
    t.add_argument("--epochs", type=int, help="passes over the training images (default: 10 shapes, 50 voc)")
    t.add_argument("--batch-size", type=int,
                   help="images per optimizer step, over all processes (default: 16 shapes, 20 voc)")
    t.add_argument("--lr", type=float, help=LR_HELP)
    t.add_argument("--optimizer", choices=["adam", "sgd"], help="default: adam shapes, sgd voc")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument("--schedule", choices=["cosine", "constant"],
                   help="learning-rate schedule (default: cosine shapes, constant voc)")
    t.add_argument("--weight-decay", type=float, help="default: 0 shapes, 5e-4 voc")
    t.add_argument("--dropout", type=float, help="dropout after fc6 and fc7 (default: 0 shapes, 0.5 voc)")
    t.add_argument("--learn-final-upsampling", action="store_true",
                   help="learn the final upsampling too, starting from bilinear (the paper keeps it "
                        "fixed, Sec. 4.3; the classroom FCN-8s learns it)")
    t.add_argument("--width", type=float,
                   help=f"channel multiplier of VGG16 (default: {classroom.WIDTH} shapes, 1 voc)")
    t.add_argument("--train-images", type=int, help="training images (default: 2000 shapes, all voc)")
    t.add_argument("--val-images", type=int, help="validation images (default: 200 shapes, all voc)")
    t.add_argument("--image-size", type=int, default=classroom.IMAGE_SIZE, help="shapes image size")
    t.add_argument("--train-sizes", help="shapes: train on several canvas sizes, e.g. 96,128,160 "
                   "(validation stays at --image-size)")
    t.add_argument("--batch-by-size", action="store_true",
                   help="with --train-sizes: put images of one size only in each batch (no padding "
                        "to the largest: about 2/3 of the step time for 96,128,160)")
    t.add_argument("--photo", type=float, default=0.0,
                   help="shapes: share of photo-style training images (greyscale or colour, photograph-"
                        "like textures, scaled objects; ShapesDataset(photo=...)); validation stays plain")
    t.add_argument("--seed", type=int, default=classroom.TRAIN_SEED,
                   help="initialisation, data order and augmentation seed (and shapes training data)")
    t.add_argument("--val-seed", type=int, default=classroom.VAL_SEED, help="shapes validation data seed")
    t.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    t.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    t.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT's .resume.pt if an earlier run of this command was interrupted")
    t.add_argument("--save-every", type=int,
                   help="also save the training state every N steps within an epoch (default: per epoch)")
    t.add_argument("--num-workers", type=int, help="data-loading processes (default: 0 shapes, 4 voc)")
    g = _voc_arguments(t, download=True)
    g.add_argument("--train-split", default="train", help="ImageSets/Segmentation/<name>.txt to train on")
    g.add_argument("--val-split", default="val", help="split to validate on after every epoch")
    g.add_argument("--crop-size", type=int, default=320,
                   help="random crop after random scaling (0: whole images, no augmentation, as the paper)")
    g.add_argument("--scale", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
                   help="random scale range before cropping")
    t.set_defaults(func=_train)


def _add_train_classifier(sub) -> None:
    """`train-classifier`: the classroom classifier, on image-level labels."""
    c = sub.add_parser("train-classifier", formatter_class=_HelpFormatter,
                       help="train the classroom classifier on image-level labels",
                       description="Train the classroom classifier (VGG16 at classroom width with VGG's "
                                   "fc6/fc7/fc8 over a 7x7 pool5, 224-px inputs) on image-level labels "
                                   "only: the shape at the centre of a ShapesClassification image. The "
                                   "classroom FCNs start from it: train --variant fcn32s --init CLASSIFIER.")
    c.add_argument("--out", default="checkpoints/classifier.pt", help="where to write it")
    c.add_argument("--init", help="a classifier checkpoint to continue from (default: from scratch)")
    c.add_argument("--train-images", type=int, default=2400,
                   help="training images (rendered once, flipped and turned each epoch)")
    c.add_argument("--val-images", type=int, default=500, help="validation images (seed --val-seed)")
    c.add_argument("--test-images", type=int, default=500,
                   help=f"fresh images (seed {classroom.EVAL_SEED}) scored at the end (0: none)")
    c.add_argument("--epochs", type=int, default=3)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--lr", type=float, default=2e-3, help="Adam, cosine decay to zero")
    c.add_argument("--weight-decay", type=float, default=0.0)
    c.add_argument("--dropout", type=float, default=0.3, help="after fc6 and fc7")
    c.add_argument("--width", type=float, default=classroom.WIDTH, help="channel multiplier of VGG16")
    c.add_argument("--image-size", type=int, default=224)
    c.add_argument("--seed", type=int, default=classroom.TRAIN_SEED)
    c.add_argument("--val-seed", type=int, default=classroom.VAL_SEED)
    c.add_argument("--half", action="store_true", help="store weights as float16")
    c.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    c.set_defaults(func=_train_classifier)


def _add_transfer_experiment(sub) -> None:
    """`transfer-experiment`: scratch vs transplant vs frozen features."""
    x = sub.add_parser("transfer-experiment", formatter_class=_HelpFormatter,
                       help="scratch vs transplant + fine-tune vs frozen features (FCN-32s)",
                       description="FCN-32s three ways at equal training steps, over several numbers of "
                                   "labelled masks: from scratch; the classroom classifier transplanted, "
                                   "everything fine-tuned; transplanted with frozen features, only the "
                                   "score layer trained. Writes a JSON table of mean IoU on fresh images.")
    x.add_argument("--out", default="checkpoints/transfer_experiment.json")
    x.add_argument("--classifier", help="classifier checkpoint (default: the shipped one)")
    x.add_argument("--masks", default="25,100,400,1600", help="numbers of labelled masks")
    x.add_argument("--steps", type=int, default=300, help="training steps, the same for every run")
    x.add_argument("--batch-size", type=int, default=16)
    x.add_argument("--lr", type=float, default=1e-3)
    x.add_argument("--eval-images", type=int, default=100)
    x.add_argument("--eval-seed", type=int, default=3, help="fresh images, used nowhere else")
    x.add_argument("--seed", type=int, default=classroom.TRAIN_SEED)
    x.set_defaults(func=_transfer_experiment)


def _add_retrain(sub) -> None:
    """`retrain`: the in-class chain, in one command."""
    r = sub.add_parser("retrain", formatter_class=_HelpFormatter,
                       help="retrain FCN-32s -> 16s -> 8s from the shipped classifier (in class)",
                       description="The in-class retrain: the stage-wise chain FCN-32s -> FCN-16s -> "
                                   "FCN-8s, the first started from the shipped classroom classifier, "
                                   "12-14 minutes on a 2-core laptop. Prints each stage's "
                                   "`train` command (copy and change it to experiment), then each net's "
                                   "mean IoU on fresh 128-px images. An interrupted run continues where "
                                   "it stopped when run again.")
    r.add_argument("--out-dir", default="checkpoints/class", help="where the three checkpoints go")
    r.add_argument("--scale", type=float, default=1.0,
                   help="multiply every stage's training images (e.g. 0.05 for a quick check that it runs)")
    r.add_argument("--eval-images", type=int, default=100, help="fresh images to score each net on")
    r.set_defaults(func=_retrain)


def _add_learn_upsampling(sub) -> None:
    """`learn-upsampling`: a trained net's final upsampling learned, the rest frozen."""
    u = sub.add_parser("learn-upsampling", formatter_class=_HelpFormatter,
                       help="learn a trained net's final upsampling, everything else frozen",
                       description="The paper keeps the final upsampling fixed to bilinear (Sec. 4.3) "
                                   "though it 'can be learned' (Sec. 3.3). This learns it for a "
                                   "trained checkpoint: its last score map is computed once per "
                                   "training image and only the upsampling kernel trains "
                                   "(fcn_lesson.engine.calibrate). Recorded score offsets are taken "
                                   "off first; run tune-shift on the result.")
    u.add_argument("--checkpoint", required=True, help="the trained checkpoint")
    u.add_argument("--out", required=True, help="where to write the result (may be the same file)")
    u.add_argument("--train-images", type=int, default=2000, help="training images (seed --seed)")
    u.add_argument("--photo", type=float, default=0.3, help="share of photo-style training images")
    u.add_argument("--steps", type=int, default=1500, help="Adam steps of 16 images, cosine decay")
    u.add_argument("--lr", type=float, default=3e-3)
    u.add_argument("--image-size", type=int, default=classroom.IMAGE_SIZE)
    u.add_argument("--val-images", type=int, default=200, help="validation images, scored before and after")
    u.add_argument("--seed", type=int, default=classroom.TRAIN_SEED, help="training data seed")
    u.add_argument("--val-seed", type=int, default=classroom.VAL_SEED, help="validation data seed")
    u.set_defaults(func=_learn_upsampling)


def _add_tune_shift(sub) -> None:
    """`tune-shift`: per-class score offsets for mean IoU, after training."""
    t = sub.add_parser("tune-shift", formatter_class=_HelpFormatter,
                       help="tune each class's score offset for mean IoU on held-out images",
                       description="Cross-entropy counts pixels, mean IoU counts classes: a net "
                                   "trained on cross-entropy names too few pixels after its rare "
                                   "classes. This adds one constant per class to the scores, chosen "
                                   "to maximise mean IoU on held-out shapes images, folded into the "
                                   "bias of the net's last score layer "
                                   "(fcn_lesson.engine.calibrate), and writes the checkpoint again.")
    t.add_argument("--checkpoint", required=True, help="the trained checkpoint to tune")
    t.add_argument("--out", required=True, help="where to write the tuned checkpoint (may be the same file)")
    t.add_argument("--images", type=int, default=200, help="held-out images to tune on")
    t.add_argument("--image-size", type=int, default=classroom.IMAGE_SIZE)
    t.add_argument("--seed", type=int, default=classroom.VAL_SEED,
                   help="their seed: the validation seed, never the evaluation one")
    t.set_defaults(func=_tune_shift)


def _add_evaluate_and_predict(sub) -> None:
    """`evaluate` and `predict`, which share how a model is chosen."""
    for name, func, text in (("evaluate", _evaluate, "score a checkpoint on fresh shapes images or VOC"),
                             ("predict", _predict, "write a coloured mask PNG for an image file")):
        p = sub.add_parser(name, formatter_class=_HelpFormatter, help=text,
                           description=text[0].upper() + text[1:] + ". Uses the shipped classroom "
                           "checkpoint of --variant unless --checkpoint is given.")
        if name == "predict":
            p.add_argument("image", help="an image file (PNG, JPEG, ...)")
            p.add_argument("--out", help="mask PNG to write (default IMAGE_VARIANT_mask.png)")
            p.add_argument("--max-side", type=int, default=PREDICT_MAX_SIDE,
                           help="shrink larger images to this many pixels on their longer side for the "
                                "model (memory); the mask is scaled back to the image's size")
        else:
            p.add_argument("--dataset", choices=list(RECIPES), default="shapes")
            p.add_argument("--images", type=int, help="how many images (default: 200 shapes, all voc)")
            p.add_argument("--image-size", type=int, default=classroom.IMAGE_SIZE, help="shapes image size")
            p.add_argument("--seed", type=int, default=classroom.EVAL_SEED,
                           help="shapes data seed (default: one never used in training)")
            p.add_argument("--batch-size", type=int,
                           help="default: 16 shapes; 1 voc (images of different sizes are not padded)")
            _voc_arguments(p).add_argument("--split", default="val", help="VOC split to score")
        p.add_argument("--variant", choices=list(VARIANTS), default="fcn8s")
        p.add_argument("--checkpoint", help="a checkpoint file instead of the shipped one")
        p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
        p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fcn_lesson", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train, evaluate and run the lesson's FCNs: classroom shapes data by default, "
                    "PASCAL VOC with --dataset voc. Every command also runs under "
                    "torchrun --nproc_per_node=N.",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)

    for add in (_add_train, _add_train_classifier, _add_transfer_experiment, _add_retrain,
                _add_learn_upsampling, _add_tune_shift, _add_evaluate_and_predict):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        # Every process hits the same error (no data, no weights): the first one explains it.
        rank = distributed.launch_rank()
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        else:
            print(f"error (rank {rank}): {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
