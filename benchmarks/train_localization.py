"""How well do CAM boxes of `camloc train` models find the object? (issue 11)

Generates the shapes set (examples/make_shapes.py), trains one model per recipe and
reports validation accuracy and the fraction of validation images whose CAM box (top
class, largest component) has IoU >= 0.5 with the true shape box, for several box rules.

    python benchmarks/train_localization.py --per-class 100 --recipes 0 1 2 --epochs 6 [--methods cam,walkcam]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from make_shapes import make_shapes  # noqa: E402

from camloc.boxes import box_iou, boxes_from_map  # noqa: E402
from camloc.models import dilate_last_stage
from camloc.models.checkpoint import load_checkpoint  # noqa: E402
from camloc.pipeline import explain  # noqa: E402
from camloc.train import TrainOptions, train  # noqa: E402

RULES = (0.2, 0.4, 0.6, 0.8, "mean", "otsu", "otsu2")


def localization(checkpoint: Path, data: Path, val_paths: list[str], dilate: bool, method: str = "cam") -> dict:
    """Fraction of validation images with a box IoU >= 0.5, per rule (``dilate``: with the
    last stage dilated, as ``camloc run --model CKPT`` runs it by default; ``method``: the
    map, e.g. ``cam`` or the default ``walkcam``)."""
    truth = {}
    with open(data / "boxes.csv") as stream:
        for row in csv.DictReader(stream):
            truth[row["image"]] = [float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
    model = load_checkpoint(checkpoint)
    if dilate:
        dilate_last_stage(model)
    results = explain(model, val_paths, batch_size=64, method=method)
    fractions = {}
    for rule in RULES:
        hits = 0
        for path, result in zip(val_paths, results, strict=True):
            boxes = boxes_from_map(result.normalized[0], rule)
            key = Path(path).relative_to(data).as_posix()
            hits += bool(boxes) and box_iou(boxes[:1], [truth[key]])[0, 0] >= 0.5
        fractions[str(rule)] = hits / len(val_paths)
    return fractions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="bench-shapes")
    parser.add_argument("--out", default="bench-train")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--recipes", nargs="+", type=int, default=[0, 1, 2, 3],
                        help="--unfreeze values")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--methods", default="cam,walkcam", help="maps to box, separated by commas")
    args = parser.parse_args()
    data = Path(args.data).resolve()
    if not (data / "boxes.csv").exists():
        make_shapes(data, args.per_class, args.size, seed=1)
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}; data: {data}")
    print("unfreeze  epochs  val_acc  " + "  ".join(f"iou50@{r}" for r in RULES) + "  seconds  network  method")
    for unfreeze in args.recipes:
        started = time.perf_counter()
        epochs = args.epochs if unfreeze else max(args.epochs, 30)
        result = train(TrainOptions(data=data, out=Path(args.out) / f"unfreeze{unfreeze}",
                                    unfreeze=unfreeze, epochs=epochs, image_size=args.image_size,
                                    augment=not args.no_augment, examples=6))
        seconds = time.perf_counter() - started
        for method in args.methods.split(","):
            for dilate in (False, True):
                fractions = localization(result.checkpoint, data, result.val_paths, dilate, method)
                cells = "  ".join(f"{fractions[str(r)]:9.3f}" for r in RULES)
                print(f"{unfreeze:8d}  {epochs:6d}  {result.best_accuracy:7.3f}  {cells}  {seconds:7.1f}"
                      f"  {'dilated' if dilate else 'as trained'}  {method}", flush=True)


if __name__ == "__main__":
    main()
