"""`camloc train` on real photos: boxes of the trained model per rule, against the ImageNet model's.

    python benchmarks/train_photos.py --images DIR/images --boxes DIR/boxes.csv [--work /tmp/train-photos]

The development photos of four ImageNet super-classes (dog, bird, insect, reptile; the
photos whose ImageNet label falls in one) are split in two folds, alternating within each
super-class in the sorted file list. For each fold, `camloc train` (the installed command,
default recipe: frozen backbone, a new linear head) learns the four super-classes on it, and
`camloc run` with the checkpoint explains the other fold: with the default (no box rule
stored, so walkcam boxed by Otsu's split, as every model), and with plain CAM at τ 0.25,
Otsu and ``otsu2``. The ImageNet model itself explains the same photos (its top-1 class;
the default and plain CAM at τ 0.25). A box counts when the top-1 class's box has IoU ≥ 0.5
with a ground-truth box of the photo; each figure has a 95 % bootstrap interval (photos
resampled), over both folds together and over the photos the trained head classifies
correctly, and the paired difference of the trained model's default to the plain CAMs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from camloc.boxes import box_iou
from camloc.evaluate.ground_truth import read_ground_truth

SUPER_CLASSES = {  # ImageNet class indices of each super-class
    "bird": [*range(7, 25), *range(80, 101), *range(127, 147)],
    "reptile": list(range(33, 69)),
    "dog": list(range(151, 269)),
    "insect": list(range(300, 320)),
}
TRAINED = {"default": [], "cam, τ 0.25": ["--method", "cam", "--threshold", "0.25"],
           "cam, otsu": ["--method", "cam", "--threshold", "otsu"],
           "cam, otsu2": ["--method", "cam", "--threshold", "otsu2"]}
IMAGENET = {"ImageNet model, default": [], "ImageNet model, cam τ 0.25": ["--method", "cam"]}
CAMLOC = str(Path(sys.executable).with_name("camloc"))


def camloc(*args: str) -> None:
    """The installed command; its last line of output is echoed, a failure ends the benchmark."""
    done = subprocess.run([CAMLOC, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"camloc {' '.join(args)} failed:\n{done.stderr}")
    print("  " + (done.stderr.strip().splitlines() or [""])[-1], flush=True)


def split(images: Path, labels: dict[str, int], work: Path) -> dict[str, dict[str, str]]:
    """Two folds of super-class photos as folders of links: ``work/FOLD/train/CLASS``,
    ``work/FOLD/test``; returns photo name → super-class per fold."""
    folds: dict[str, dict[str, str]] = {"a": {}, "b": {}}
    seen = dict.fromkeys(SUPER_CLASSES, 0)
    for path in sorted(images.iterdir()):
        group = next((g for g, ids in SUPER_CLASSES.items() if labels.get(path.name) in ids), None)
        if group is None:
            continue
        fold = "ab"[seen[group] % 2]
        seen[group] += 1
        folds[fold][path.name] = group
        for folder in (work / fold / "train" / group, work / fold / "test"):
            folder.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), folder / path.name)
    return folds


def hits(out: Path, truth: dict[str, list]) -> dict[str, tuple[bool, str]]:
    """Photo name → (its top-1 box has IoU ≥ 0.5 with a true box, the top-1 label)."""
    found = {}
    for record in map(json.loads, (out / "results.jsonl").read_text().splitlines()):
        name = Path(record["image"]).name
        boxes = record["cams"][0]["boxes"]
        good = bool(boxes) and bool(box_iou(boxes[:1], [gt.box for gt in truth[name]]).max() >= 0.5)
        found[name] = (good, record["predictions"][0]["label"])
    return found


def interval(values: list[bool] | list[float], rng: np.random.Generator, draws: int = 2000) -> str:
    array = np.asarray(values, float)
    means = array[rng.integers(0, len(array), (draws, len(array)))].mean(axis=1)
    return f"{array.mean():.3f} [{np.percentile(means, 2.5):.3f}, {np.percentile(means, 97.5):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--boxes", type=Path, required=True, help="CSV with ImageNet class indices as labels")
    parser.add_argument("--work", type=Path, default=Path("/tmp/camloc-train-photos"))
    args = parser.parse_args()
    truth = read_ground_truth(args.boxes)
    labels = {name: int(boxes[0].label) for name, boxes in truth.items()}
    shutil.rmtree(args.work, ignore_errors=True)
    folds = split(args.images, labels, args.work)
    rows: dict[str, dict[str, tuple[bool, str]]] = {name: {} for name in [*TRAINED, *IMAGENET]}
    for fold, other in (("a", "b"), ("b", "a")):
        model = args.work / f"model-{fold}"
        print(f"fold {fold}: train on {len(folds[fold])} photos, explain {len(folds[other])}", flush=True)
        camloc("train", str(args.work / fold / "train"), "--out", str(model))
        trained = [(name, ["--model", str(model / "model.pt"), *flags]) for name, flags in TRAINED.items()]
        for index, (name, flags) in enumerate([*trained, *IMAGENET.items()]):
            out = args.work / f"out-{other}-{index}"
            camloc("run", str(args.work / other / "test"), "--out", str(out), *flags)
            rows[name].update(hits(out, truth))
    truth_class = {name: group for fold in folds.values() for name, group in fold.items()}
    correct = {name for name, (_, label) in rows["default"].items() if label == truth_class[name]}
    rng = np.random.default_rng(0)
    print(f"\n{len(truth_class)} photos; trained head's accuracy {len(correct) / len(truth_class):.3f}; "
          "boxes at IoU ≥ 0.5 [95% bootstrap]")
    print("| model, map and rule | all photos | photos the trained head classifies correctly |\n|---|---|---|")
    for name, found in rows.items():
        label = name if name in IMAGENET else f"trained, {name}"
        print(f"| {label} | {interval([g for g, _ in found.values()], rng)} | "
              f"{interval([found[n][0] for n in sorted(correct)], rng)} |")
    names = sorted(truth_class)
    for other in ("cam, τ 0.25", "ImageNet model, cam τ 0.25"):
        difference = [float(rows["default"][n][0]) - float(rows[other][n][0]) for n in names]
        print(f"trained default − {other}, paired, all photos: {interval(difference, rng)}")


if __name__ == "__main__":
    main()
