"""Command line: python -m fcn_lesson {train,evaluate,predict} --help."""

import argparse
import json
import sys
import time
from pathlib import Path

from fcn_lesson import classroom
from fcn_lesson.models import VARIANTS

EPILOG = """examples:
  python -m fcn_lesson train --variant fcn32s --epochs 12 --out data/fcn32s.pt
  python -m fcn_lesson train --variant fcn16s --init data/fcn32s.pt --out data/fcn16s.pt
  python -m fcn_lesson evaluate --checkpoint data/fcn8s.pt --image-size 150
  python -m fcn_lesson predict photo.png --variant fcn8s --out photo_mask.png
"""


def _train(args) -> int:
    import torch

    from fcn_lesson.shapes import ShapesDataset
    from fcn_lesson.train import load_checkpoint, train_or_load

    torch.manual_seed(args.seed)
    init = None
    if args.init:
        init, _ = load_checkpoint(args.init)
        if init.skips >= VARIANTS[args.variant].skips:
            print(f"error: --init must be a coarser net than {args.variant} "
                  f"(fcn32s -> fcn16s -> fcn8s), {args.init} holds a {init.variant}", file=sys.stderr)
            return 2

    def make_model():
        model = classroom.make_classroom_model(args.variant, dropout=args.dropout)
        if args.width is not None and args.width != classroom.WIDTH:
            model = VARIANTS[args.variant](num_classes=model.num_classes, width=args.width,
                                           dropout=args.dropout, batch_norm=classroom.BATCH_NORM)
        return model.init_from(init) if init is not None else model

    train = ShapesDataset(args.train_images, args.image_size, seed=args.seed)
    val = ShapesDataset(args.val_images, args.image_size, seed=args.val_seed)
    out = Path(args.out or f"checkpoints/{args.variant}.pt")
    meta = {"classes": list(train.classes),
            "dataset": {"name": "shapes", "image_size": args.image_size,
                        "train_images": args.train_images, "train_seed": args.seed,
                        "val_images": args.val_images, "val_seed": args.val_seed},
            "training": {"init": args.init or "scratch", "command": " ".join(sys.argv)},
            "half": args.half}
    start = time.perf_counter()
    model, meta = train_or_load(
        out, make_model, train, val, retrain=True, checkpoint_meta=meta, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, seed=args.seed, device=args.device)
    print(f"saved {out} after {time.perf_counter() - start:.0f} s")
    print(json.dumps({k: round(v, 4) for k, v in meta["metrics"].items()
                      if isinstance(v, float)}, indent=1))
    return 0


def _load(args):
    from fcn_lesson.train import load_checkpoint

    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, device=args.device)
        return model
    return classroom.load_classroom_model(args.variant, device=args.device)


def _evaluate(args) -> int:
    from fcn_lesson.shapes import ShapesDataset
    from fcn_lesson.train import evaluate

    model = _load(args)
    data = ShapesDataset(args.images, args.image_size, seed=args.seed)
    scores = evaluate(model, data, batch_size=args.batch_size, progress=True)
    row = {k: round(scores[k], 4) for k in
           ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc")}
    row["iou"] = {c: round(v, 4) for c, v in zip(data.classes, scores["iou"].tolist(), strict=True)}
    print(json.dumps({"variant": model.variant, "image_size": args.image_size,
                      "images": args.images, "seed": args.seed, **row}, indent=1))
    return 0


def _predict(args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from fcn_lesson.train import predict
    from fcn_lesson.viz import colorize

    path = Path(args.image)
    if not path.is_file():
        print(f"error: no image file at {path}", file=sys.stderr)
        return 2
    try:
        image = Image.open(path).convert("RGB")
    except OSError as err:
        print(f"error: cannot read {path} as an image ({err})", file=sys.stderr)
        return 2
    model = _load(args)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    mask = predict(model, x)[0]
    out = Path(args.out or path.with_name(f"{path.stem}_{model.variant}_mask.png"))
    Image.fromarray(colorize(mask)).save(out)
    counts = torch.bincount(mask.flatten(), minlength=model.num_classes)
    from fcn_lesson.shapes import CLASSES

    found = ", ".join(f"{CLASSES[c]} {100 * n / mask.numel():.1f}%"
                      for c, n in enumerate(counts.tolist()) if n)
    print(f"wrote {out} ({image.width}x{image.height}): {found}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fcn_lesson", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train, evaluate and run the lesson's FCNs (classroom shapes data by default).",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="train an FCN and save a checkpoint",
                       description="Train an FCN on the classroom shapes data and save a checkpoint "
                                   "(written atomically; loads back with load_checkpoint). Stage-wise as "
                                   "in the paper: train fcn32s, then fcn16s --init fcn32s.pt, then fcn8s "
                                   "--init fcn16s.pt.")
    t.add_argument("--variant", choices=list(VARIANTS), required=True, help="which FCN")
    t.add_argument("--init", help="checkpoint of a coarser FCN to start from (stage-wise training)")
    t.add_argument("--out", help="where to write the checkpoint (default checkpoints/VARIANT.pt)")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine decay)")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--dropout", type=float, default=0.0, help="dropout after fc6 and fc7")
    t.add_argument("--width", type=float, default=None,
                   help=f"channel multiplier of VGG16 (classroom: {classroom.WIDTH})")
    t.add_argument("--train-images", type=int, default=2000)
    t.add_argument("--val-images", type=int, default=200)
    t.add_argument("--image-size", type=int, default=classroom.IMAGE_SIZE)
    t.add_argument("--seed", type=int, default=classroom.TRAIN_SEED, help="training data + init seed")
    t.add_argument("--val-seed", type=int, default=classroom.VAL_SEED)
    t.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    t.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    t.set_defaults(func=_train)

    for name, func, text in (("evaluate", _evaluate, "score a checkpoint on fresh shapes images"),
                             ("predict", _predict, "write a coloured mask PNG for an image file")):
        p = sub.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter, help=text,
                           description=text[0].upper() + text[1:] + ". Uses the shipped classroom "
                           "checkpoint of --variant unless --checkpoint is given.")
        if name == "predict":
            p.add_argument("image", help="an image file (PNG, JPEG, ...)")
            p.add_argument("--out", help="mask PNG to write (default IMAGE_VARIANT_mask.png)")
        else:
            p.add_argument("--images", type=int, default=200, help="how many validation images")
            p.add_argument("--image-size", type=int, default=classroom.IMAGE_SIZE)
            p.add_argument("--seed", type=int, default=classroom.EVAL_SEED,
                           help="data seed (default: one never used in training)")
            p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--variant", choices=list(VARIANTS), default="fcn8s")
        p.add_argument("--checkpoint", help="a checkpoint file instead of the shipped one")
        p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
