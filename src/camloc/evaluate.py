"""Localization metrics with the field's definitions, and the ``camloc eval`` job.

Ground truth comes as a CSV (``image,label,xmin,ymin,xmax,ymax``), a folder of Pascal VOC
XML files or a COCO instances JSON (:func:`read_ground_truth`). Each image is explained with
the same pipeline as ``camloc run``; the map of its ground-truth class is swept over CAM
thresholds τ (all at once: one ``(T, H, W)`` mask stack, one connected-component labelling)
to give MaxBoxAccV2 (Choe et al., CVPR 2020) next to top-1 / GT-known localization.

>>> import numpy as np, torch
>>> heat = torch.zeros(20, 20); heat[5:15, 5:15] = 1.0
>>> sweep = sweep_ious(heat, np.array([[5, 5, 15, 15]]), torch.tensor([0.5]))
>>> sweep.best.tolist(), sweep.largest.tolist()
([1.0], [1.0])
"""

from __future__ import annotations

import csv
import json
import os
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .boxes import box_iou, level_components, stack_components
from .errors import CamlocError, ClassError
from .models import ClassifierAdapter

IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
LOC_IOU = 0.5
SWEEP_STEP = 0.01
SWEEP_MAX_SIDE = 448  # larger maps are swept at this size (IoU does not change with scale)


class GroundTruthError(CamlocError):
    """A ground-truth file camloc cannot read."""


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class GTBox:
    """One ground-truth box: ``label`` as written in the file (index or name), pixel edges."""

    label: str
    box: tuple[float, float, float, float]


GroundTruth = dict[str, list[GTBox]]  # image key (as written in the file) → its boxes


def read_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Boxes per image from a CSV file, a Pascal VOC folder, or a COCO instances JSON.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "boxes.csv"
    >>> _ = f.write_text("image,label,xmin,ymin,xmax,ymax\\na.jpg,3,0,0,10,20\\n")
    >>> read_ground_truth(f)
    {'a.jpg': [GTBox(label='3', box=(0.0, 0.0, 10.0, 20.0))]}
    """
    path = Path(path)
    if path.is_dir():
        return read_voc_folder(path)
    if not path.is_file():
        raise GroundTruthError(f"{path}: no such ground-truth file or folder")
    if path.suffix.lower() == ".json":
        return read_coco_json(path)
    if path.suffix.lower() == ".xml":
        return read_voc_files([path])
    return read_csv_boxes(path)


def _box(values: Sequence[str | float], where: str) -> tuple[float, float, float, float]:
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in values)
    except (TypeError, ValueError):
        raise GroundTruthError(f"{where}: box {list(values)} is not four numbers") from None
    if xmax < xmin or ymax < ymin:
        raise GroundTruthError(f"{where}: box {list(values)} has xmax < xmin or ymax < ymin")
    return xmin, ymin, xmax, ymax


def read_csv_boxes(path: Path) -> GroundTruth:
    """``image,label,xmin,ymin,xmax,ymax`` rows (header required), one row per box."""
    columns = ("image", "label", "xmin", "ymin", "xmax", "ymax")
    boxes: GroundTruth = defaultdict(list)
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise GroundTruthError(
                    f"{path}: CSV needs the columns {','.join(columns)}; "
                    f"missing {','.join(missing)}"
                )
            for line, row in enumerate(reader, start=2):
                where = f"{path}:{line}"
                boxes[row["image"].strip()].append(
                    GTBox(row["label"].strip(), _box([row[c] for c in columns[2:]], where))
                )
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise GroundTruthError(f"{path}: unreadable CSV ({error})") from None
    return dict(boxes)


def read_voc_files(files: Sequence[Path]) -> GroundTruth:
    """Pascal VOC annotation files: ``<filename>`` and ``<object><name>/<bndbox>``.

    VOC boxes are 1-based inclusive pixels; they become pixel edges ``[xmin - 1, ymin - 1,
    xmax, ymax]``.
    """
    boxes: GroundTruth = {}
    for file in files:
        try:
            root = ElementTree.parse(file).getroot()
        except (OSError, ElementTree.ParseError) as error:
            raise GroundTruthError(f"{file}: unreadable VOC XML ({error})") from None
        image = (root.findtext("filename") or file.with_suffix(".jpg").name).strip()
        entries = boxes.setdefault(image, [])
        for item in root.iter("object"):
            box = item.find("bndbox")
            if box is None:
                continue
            xmin, ymin, xmax, ymax = _box(
                [box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")], str(file)
            )
            entries.append(
                GTBox((item.findtext("name") or "").strip(), (xmin - 1, ymin - 1, xmax, ymax))
            )
    return boxes


def read_voc_folder(folder: Path) -> GroundTruth:
    """Every ``*.xml`` under ``folder`` (recursively)."""
    files = sorted(folder.rglob("*.xml"))
    if not files:
        raise GroundTruthError(f"{folder}: no Pascal VOC .xml files in this folder")
    return read_voc_files(files)


def read_coco_json(path: Path) -> GroundTruth:
    """COCO instances: ``images[].file_name``, ``annotations[].bbox = [x, y, w, h]``,
    labels are the category names."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
        files = {image["id"]: str(image["file_name"]) for image in data["images"]}
        boxes: GroundTruth = {name: [] for name in files.values()}
        for note in data.get("annotations", []):
            x, y, w, h = note["bbox"]
            label = names.get(note["category_id"], str(note["category_id"]))
            boxes[files[note["image_id"]]].append(
                GTBox(label, _box([x, y, x + w, y + h], str(path)))
            )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GroundTruthError(f"{path}: unreadable COCO JSON ({error})") from None
    except (KeyError, TypeError, ValueError) as error:
        raise GroundTruthError(
            f"{path}: not a COCO instances file (bad or missing {error})"
        ) from None
    return boxes


def match_images(paths: Sequence[Path], root: Path | None, truth: GroundTruth) -> dict[Path, str]:
    """Which ground-truth key each image has: its path relative to ``root``, else its name,
    else its name without extension. Images without ground truth are left out."""
    by_name: dict[str, str] = {}
    by_stem: dict[str, str] = {}
    for key in truth:
        by_name.setdefault(Path(key).name, key)
        by_stem.setdefault(Path(key).stem, key)
    found = {}
    for path in paths:
        relative = None
        if root is not None:
            try:
                relative = path.relative_to(root).as_posix()
            except ValueError:
                relative = None
        key = (
            (relative if relative in truth else None)
            or by_name.get(path.name)
            or by_stem.get(path.stem)
        )
        if key is not None:
            found[path] = key
    return found


def class_of(label: str, model: ClassifierAdapter) -> int | None:
    """The model's class index of a label (index or name), ``None`` when unknown."""
    try:
        return model.class_index(label)
    except ClassError:
        return None


# --------------------------------------------------------------------------- metrics on one map


def sweep_thresholds(step: float = SWEEP_STEP) -> torch.Tensor:
    """The τ grid of the sweep: ``0, step, ..., < 1`` (wsolevaluation's ``cam_curve_interval``)."""
    return torch.arange(0.0, 1.0 - 1e-9, step, dtype=torch.float64).float()


@dataclass
class Sweep:
    """IoUs of one map against its ground-truth boxes, for each τ of a sweep.

    ``best[t]``: the best IoU of any component's box at τ_t (MaxBoxAccV2's rule);
    ``largest[t]``: the IoU of the largest component's box (camloc's box, top-1 / GT-known).
    """

    best: np.ndarray  # (T,)
    largest: np.ndarray  # (T,)


def component_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of every mask of a ``(T, H, W)`` stack, in one pass.

    Returns ``(layer (M,), boxes (M, 4), areas (M,))``: which mask each component is in, its
    box in pixel edges and its pixel count (in each mask, numbered by its first pixel).

    >>> masks = np.zeros((2, 4, 6), bool); masks[0, 1:3, 0:2] = masks[0, 0, 5] = True
    >>> layer, boxes, areas = component_boxes(masks)
    >>> layer.tolist(), boxes.tolist(), areas.tolist()
    ([0, 0], [[5.0, 0.0, 6.0, 1.0], [0.0, 1.0, 2.0, 3.0]], [1, 4])
    """
    return _flatten_components(stack_components(np.asarray(masks, dtype=bool)))


def _flatten_components(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layer = np.repeat(np.arange(len(found)), [len(areas) for areas, _ in found])
    if layer.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float64), np.zeros(0, np.int64)
    boxes = np.concatenate([boxes for _, boxes in found]).astype(np.float64)
    return layer, boxes, np.concatenate([areas for areas, _ in found])


def sweep_ious(normalized: torch.Tensor, gt_boxes: np.ndarray, thresholds: torch.Tensor) -> Sweep:
    """Box IoUs of a normalised ``(H, W)`` map at every τ in ``thresholds`` (pixels ``>= τ``).

    Pixel counts at every τ come from one binary search per pixel; masks equal to the
    previous one (same count: the masks are nested) and empty masks are not labelled again,
    the others are labelled in one pass (:func:`camloc.boxes.level_components`).

    >>> heat = torch.zeros(10, 30); heat[2:8, 2:8] = 1.0; heat[2:8, 20:28] = 0.5
    >>> s = sweep_ious(heat, np.array([[20, 2, 28, 8]]), torch.tensor([0.4, 0.9]))
    >>> s.best.round(2).tolist(), s.largest.round(2).tolist()
    ([1.0, 0.0], [1.0, 0.0])
    """
    order = torch.argsort(thresholds)
    values = normalized.detach().float().cpu().numpy()
    levels = thresholds[order].numpy().astype(np.float32)
    # pixels >= each τ: each pixel counts for the τ's at or below it (one binary search a pixel)
    below = np.bincount(np.searchsorted(levels, values.ravel(), side="right"), minlength=len(levels) + 1)
    counts = below[::-1].cumsum()[::-1][1:]
    fresh = (counts > 0) & np.concatenate([[True], counts[1:] != counts[:-1]])
    distinct = np.flatnonzero(fresh)
    # each τ reuses the components of the last distinct mask at or before it
    source = np.maximum.accumulate(np.where(fresh, np.arange(len(counts)), -1))
    best_distinct = np.zeros(len(distinct))
    largest_distinct = np.zeros(len(distinct))
    if len(distinct) and len(gt_boxes):
        layer, boxes, areas = _flatten_components(level_components(values, levels[distinct]))
        ious = box_iou(boxes, gt_boxes).max(1) if len(boxes) else np.zeros(0)
        np.maximum.at(best_distinct, layer, ious)
        pick = np.lexsort((-areas, layer))  # by layer, largest area first
        first = pick[np.r_[True, layer[pick][1:] != layer[pick][:-1]]]
        largest_distinct[layer[first]] = ious[first]
    best, largest = np.zeros(len(counts)), np.zeros(len(counts))
    valid = counts > 0  # the first non-empty mask is always fresh, so source >= 0 there
    position = np.searchsorted(distinct, source[valid])
    best[valid], largest[valid] = best_distinct[position], largest_distinct[position]
    unsorted_best, unsorted_largest = np.empty_like(best), np.empty_like(largest)
    unsorted_best[order.numpy()] = best
    unsorted_largest[order.numpy()] = largest
    return Sweep(unsorted_best, unsorted_largest)


def working_resolution(
    normalized: torch.Tensor, boxes: np.ndarray, max_side: int = SWEEP_MAX_SIDE
) -> tuple[torch.Tensor, np.ndarray]:
    """A map larger than ``max_side`` resized (bilinear) to fit it, and its boxes scaled alike.

    >>> m, b = working_resolution(torch.zeros(1000, 500), np.array([[0, 0, 100, 100]]), 448)
    >>> tuple(m.shape), b.round(2).tolist()
    ((448, 224), [[0.0, 0.0, 44.8, 44.8]])
    """
    height, width = normalized.shape
    if max(height, width) <= max_side:
        return normalized, boxes
    factor = max_side / max(height, width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    resized = torch.nn.functional.interpolate(
        normalized[None, None].float(), size=size, mode="bilinear", align_corners=False
    )[0, 0]
    scale = np.array([size[1] / width, size[0] / height] * 2)
    return resized, np.asarray(boxes, dtype=np.float64) * scale


def max_box_acc(
    best_ious: np.ndarray, thresholds: np.ndarray, iou_thresholds: Sequence[float] = IOU_THRESHOLDS
) -> dict[str, Any]:
    """MaxBoxAccV2 from ``(N, T)`` best-box IoUs: per δ, the best over τ of the fraction of
    maps with IoU ≥ δ; their mean, and the τ that gave each.

    >>> ious = np.array([[0.2, 0.6, 0.8], [0.1, 0.4, 0.35]])
    >>> result = max_box_acc(ious, np.array([0.1, 0.2, 0.3]))
    >>> result["per_iou"], result["value"]
    ({'0.3': 1.0, '0.5': 0.5, '0.7': 0.5}, 0.6666666666666666)
    """
    per_iou, best_tau = {}, {}
    for delta in iou_thresholds:
        accuracy = (best_ious >= delta).mean(0) if len(best_ious) else np.zeros(len(thresholds))
        index = int(np.argmax(accuracy))
        per_iou[f"{delta:g}"] = float(accuracy[index])
        best_tau[f"{delta:g}"] = float(round(float(thresholds[index]), 6))
    return {
        "value": float(np.mean(list(per_iou.values()))),
        "per_iou": per_iou,
        "best_tau": best_tau,
    }


# --------------------------------------------------------------------------- the eval job


@dataclass
class ImageResult:
    """What evaluation kept of one image (one row per image in the report)."""

    path: str
    key: str
    gt_classes: list[int]
    gt_boxes: list[list[float]]
    predicted: list[int]  # top-5 class indices
    box: list[int] | None  # camloc's box (default settings) of the ground-truth class's map
    iou: float  # its IoU with the boxes of that class
    top1_correct: bool
    top5_correct: bool


@dataclass
class Counts:
    images: int = 0
    evaluated: int = 0
    without_ground_truth: int = 0
    unknown_labels: int = 0
    unreadable: int = 0
    ground_truth_without_image: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    """Everything ``camloc eval`` measured. :meth:`metrics` is the ``--json`` payload."""

    settings: dict[str, Any]
    counts: Counts
    thresholds: np.ndarray  # (T,)
    images: list[ImageResult]
    best_ious: np.ndarray  # (N, T): best box among all components per τ
    largest_ious: np.ndarray  # (N, T): camloc's box (largest component) per τ
    class_names: list[str]
    seconds: float = 0.0

    def curves(self) -> dict[str, np.ndarray]:
        """Metrics as functions of τ: ``top1_loc``, ``gt_known_loc`` and box accuracy per δ."""
        top1 = np.array([r.top1_correct for r in self.images], dtype=bool)
        found = {
            "gt_known_loc": (self.largest_ious >= LOC_IOU).mean(0),
            "top1_loc": ((self.largest_ious >= LOC_IOU) & top1[:, None]).mean(0),
        }
        for delta in IOU_THRESHOLDS:
            found[f"box_acc@{delta:g}"] = (self.best_ious >= delta).mean(0)
        return found

    def metrics(self) -> dict[str, Any]:
        count = len(self.images)
        if count == 0:
            raise CamlocError(
                "no image could be evaluated (none had readable ground truth "
                "with labels the model knows)"
            )
        top1 = np.array([r.top1_correct for r in self.images])
        ious = np.array([r.iou for r in self.images])
        located = ious >= LOC_IOU
        curves = self.curves()
        best_index = int(np.argmax(curves["gt_known_loc"]))
        box = max_box_acc(self.best_ious, self.thresholds)
        return {
            "top1_cls": float(top1.mean()),
            "top5_cls": float(np.mean([r.top5_correct for r in self.images])),
            "top1_loc": float((located & top1).mean()),
            "gt_known_loc": float(located.mean()),
            "maxboxacc_v2": box["value"],
            "maxboxacc_v2_per_iou": box["per_iou"],
            "maxboxacc_v2_best_tau": box["best_tau"],
            "best_tau": float(round(float(self.thresholds[best_index]), 6)),
            "top1_loc_at_best_tau": float(curves["top1_loc"][best_index]),
            "gt_known_loc_at_best_tau": float(curves["gt_known_loc"][best_index]),
            "default_tau": self.settings.get("threshold"),
            "mean_iou": float(ious.mean()),
            "num_images": count,
            "counts": {k: v for k, v in asdict(self.counts).items() if k != "errors"},
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
        }

    def per_class(self) -> list[dict[str, Any]]:
        """Accuracy per ground-truth class (the first class of each image), most frequent first."""
        groups: dict[int, list[ImageResult]] = defaultdict(list)
        for result in self.images:
            groups[result.gt_classes[0]].append(result)
        rows = [
            {
                "class": self.class_names[index],
                "index": index,
                "images": len(members),
                "top1_cls": float(np.mean([m.top1_correct for m in members])),
                "top1_loc": float(np.mean([m.top1_correct and m.iou >= LOC_IOU for m in members])),
                "gt_known_loc": float(np.mean([m.iou >= LOC_IOU for m in members])),
            }
            for index, members in groups.items()
        ]
        return sorted(rows, key=lambda row: (-row["images"], row["class"]))


class GroundTruthSelection:
    """Explain the ground-truth classes of each image (``(N, k)`` fixed per batch)."""

    def __init__(self, classes: torch.Tensor):
        self.classes = classes

    def resolve(self, model: ClassifierAdapter) -> None:
        return None

    def indices(self, logits: torch.Tensor, model: ClassifierAdapter) -> torch.Tensor:
        return self.classes.to(logits.device)


def evaluate(
    model: ClassifierAdapter,
    images: str | os.PathLike,
    ground_truth: str | os.PathLike,
    options: Any = None,
    *,
    step: float = SWEEP_STEP,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[str, str | None], None] | None = None,
) -> EvalResult:
    """Explain every image of the folder ``images`` that has ground truth, and measure.

    ``options`` is a :class:`camloc.runner.RunOptions` (model input, method, box rule);
    ``on_start(total)`` and ``on_image(path, error)`` report progress.
    """
    from .cam import explain_batch, finish, get_method
    from .images import collect_images
    from .runner import RunOptions, batches

    started = time.perf_counter()
    options = options or RunOptions()
    truth = read_ground_truth(ground_truth)
    root = Path(images)
    paths = collect_images([str(root)])
    if not paths:
        raise CamlocError(f"no images found in {root}")
    keys = match_images(paths, root if root.is_dir() else None, truth)
    counts = Counts(images=len(paths), without_ground_truth=len(paths) - len(keys))
    counts.ground_truth_without_image = len(set(truth) - set(keys.values()))
    targets: dict[Path, tuple[list[int], list[int], list[list[float]]]] = {}
    for path, key in keys.items():
        known = [(class_of(b.label, model), b.box) for b in truth[key]]
        if not known or any(index is None for index, _ in known):
            counts.unknown_labels += 1
            bad = sorted({b.label for b in truth[key] if class_of(b.label, model) is None})
            counts.errors.append(
                f"{path}: "
                + (f"unknown label(s) {', '.join(bad)}" if bad else "no ground-truth box")
            )
            continue
        box_classes = [index for index, _ in known]
        targets[path] = (
            list(dict.fromkeys(box_classes)),
            box_classes,
            [list(box) for _, box in known],
        )
    todo = [p for p in paths if p in targets]
    method = get_method(options.method, model)
    box_options = options.box_options()
    thresholds = sweep_thresholds(step)
    results: list[ImageResult] = []
    best_rows, largest_rows = [], []
    if on_start:
        on_start(len(todo))
    for items in batches(todo, model, options):
        good = [item for item in items if item.error is None]
        for item in items:
            if item.error is not None:
                counts.unreadable += 1
                counts.errors.append(item.error)
                if on_image:
                    on_image(item.path, item.error)
        if not good:
            continue
        gt = torch.tensor([targets[Path(item.path)][0][:1] for item in good])
        batch = torch.stack([item.tensor for item in good]).to(model.device)
        output = explain_batch(
            method, batch, GroundTruthSelection(gt), flip=options.flip, scales=options.scales
        )
        top5 = output.logits.topk(min(5, output.logits.shape[1]), dim=1).indices.cpu().tolist()
        explained = finish(output, [item.geometry for item in good], model, box_options)
        for item, explanation, predicted in zip(good, explained, top5, strict=True):
            classes, box_classes, boxes = targets[Path(item.path)]
            own = np.array([b for b, c in zip(boxes, box_classes, strict=True) if c == classes[0]])
            sweep = sweep_ious(*working_resolution(explanation.normalized[0], own), thresholds)
            box = explanation.boxes[0][0] if explanation.boxes[0] else None
            iou = float(box_iou([box], own).max()) if box is not None else 0.0
            results.append(
                ImageResult(
                    path=item.path,
                    key=keys[Path(item.path)],
                    gt_classes=classes,
                    gt_boxes=boxes,
                    predicted=predicted,
                    box=list(box) if box is not None else None,
                    iou=iou,
                    top1_correct=predicted[0] in classes,
                    top5_correct=bool(set(predicted) & set(classes)),
                )
            )
            best_rows.append(sweep.best)
            largest_rows.append(sweep.largest)
            if on_image:
                on_image(item.path, None)
    counts.evaluated = len(results)
    empty = np.zeros((0, len(thresholds)))
    return EvalResult(
        settings=settings_of(model, options),
        counts=counts,
        thresholds=thresholds.numpy().astype(np.float64),
        images=results,
        best_ious=np.stack(best_rows) if best_rows else empty,
        largest_ious=np.stack(largest_rows) if largest_rows else empty,
        class_names=model.class_names,
        seconds=time.perf_counter() - started,
    )


def settings_of(model: ClassifierAdapter, options: Any) -> dict[str, Any]:
    """The settings that produced the figures (for the JSON and the report)."""
    size = options.network_size(model)
    return {
        "model": model.name,
        "dilated": bool(getattr(model, "dilated", False)),
        "method": options.method,
        "policy": options.policy,
        "input_size": list(size),
        "flip": bool(options.flip),
        "scales": [float(s) for s in options.scales],
        "normalization": options.normalization,
        "threshold": float(options.threshold),
        "box": "largest component" if options.largest_only else "all components",
        "iou_thresholds": list(IOU_THRESHOLDS),
        "sweep_step": SWEEP_STEP,
    }
