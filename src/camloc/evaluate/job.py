r"""The ``camloc eval`` job: every image with ground truth explained by the one pipeline
(for its ground-truth class), then measured (:mod:`camloc.evaluate.metrics`).

>>> import camloc, tempfile, pathlib
>>> folder = pathlib.Path("examples/images")
>>> csv = pathlib.Path(tempfile.mkdtemp()) / "boxes.csv"
>>> _ = csv.write_text("image,label,xmin,ymin,xmax,ymax\nchelsea_cat.jpg,285,50,20,400,300\n")
>>> result = evaluate(camloc.load_model(), folder, csv)
>>> result.counts.evaluated
1
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..boxes import box_iou
from ..config import Threshold
from ..dataset import batches
from ..errors import CamlocError
from ..images import DEFAULT_MAX_PIXELS, collect_images, stack_images
from ..methods import resolve_method
from ..models import ClassifierAdapter
from ..pipeline import ExplainConfig, Pipeline
from .ground_truth import class_of, match_images, read_ground_truth
from .metrics import (
    IOU_THRESHOLDS,
    SWEEP_STEP,
    Counts,
    EvalResult,
    ImageResult,
    sweep_ious,
    sweep_thresholds,
    working_resolution,
)
from .rules import rule_ious


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
    config: ExplainConfig | None = None,
    *,
    batch_size: int = 16,
    workers: int | None = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    step: float = SWEEP_STEP,
    rules: Sequence[Threshold] = (),
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[str, str | None], None] | None = None,
) -> EvalResult:
    """Explain every image of the folder ``images`` that has ground truth, and measure.

    ``config`` decides the explanation as for every door (its class selection aside: each
    image is explained for its ground-truth class); ``on_start(total)`` and
    ``on_image(path, error)`` report progress. ``rules``: box rules to score on each image
    (:mod:`camloc.evaluate.rules`; ``EvalResult.images[i].rule_ious``).
    """
    started = time.perf_counter()
    config = config or ExplainConfig()
    pipeline = Pipeline(model, config.replace(topk=1, rank=None, classes=()))
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
        box_classes = [index for index, _ in known if index is not None]  # all known (checked above)
        targets[path] = (
            list(dict.fromkeys(box_classes)),
            box_classes,
            [list(box) for _, box in known],
        )
    todo = [p for p in paths if p in targets]
    thresholds = sweep_thresholds(step)
    results: list[ImageResult] = []
    best_rows, largest_rows = [], []
    if on_start:
        on_start(len(todo))
    for items in batches(todo, model, config.policy, max_pixels, pipeline.size, batch_size, workers):
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
        output = pipeline.forward(stack_images([item.loaded().tensor for item in good]), GroundTruthSelection(gt))
        top5 = output.logits.topk(min(5, output.logits.shape[1]), dim=1).indices.cpu().tolist()
        explained = pipeline.finish(output, [item.loaded().geometry for item in good], [item.path for item in good])
        for item, explanation, predicted in zip(good, explained, top5, strict=True):
            classes, box_classes, boxes = targets[Path(item.path)]
            width, height = explanation.size
            inside = [overlaps_image(b, width, height) for b in boxes]
            if not all(inside):
                counts.boxes_outside_image += inside.count(False)
                counts.errors.append(f"{item.path}: {inside.count(False)} ground-truth box(es) outside the "
                                     f"{width}x{height} image, ignored")
                if on_image:
                    on_image(item.path, counts.errors[-1])
            own = np.array([b for b, c, ok in zip(boxes, box_classes, inside, strict=True) if c == classes[0] and ok])
            if not len(own):
                counts.without_ground_truth += 1
                continue
            sweep = sweep_ious(*working_resolution(explanation.normalized[0], own), thresholds)
            box = explanation.boxes[0][0] if explanation.boxes[0] else None
            iou = float(box_iou([box], own).max()) if box is not None else 0.0
            per_rule = rule_ious([explanation.normalized[0]], [own], rules)[0].tolist() if rules else []
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
                    rule_ious=per_rule,
                    boxes=[list(b) for b in explanation.boxes[0]],
                    score=float(explanation.targets[0].score),
                    gt_box_classes=box_classes,
                )
            )
            best_rows.append(sweep.best)
            largest_rows.append(sweep.largest)
            if on_image:
                on_image(item.path, None)
    counts.evaluated = len(results)
    empty = np.zeros((0, len(thresholds)))
    return EvalResult(
        settings=settings_of(model, config, step),
        counts=counts,
        thresholds=thresholds.numpy().astype(np.float64),
        images=results,
        best_ious=np.stack(best_rows) if best_rows else empty,
        largest_ious=np.stack(largest_rows) if largest_rows else empty,
        class_names=model.class_names,
        seconds=time.perf_counter() - started,
    )


def overlaps_image(box: list[float], width: int, height: int) -> bool:
    """Whether a ``[xmin, ymin, xmax, ymax]`` box covers some of a ``width × height`` image."""
    xmin, ymin, xmax, ymax = box
    return xmin < width and ymin < height and xmax > 0 and ymax > 0


def settings_of(model: ClassifierAdapter, config: ExplainConfig, step: float = SWEEP_STEP) -> dict[str, Any]:
    """The settings that produced the figures (for the JSON and the report)."""
    method = resolve_method(config.method, model, config.layer)
    threshold = config.box_threshold(model, method)
    return {
        "model": model.name,
        "dilated": bool(getattr(model, "dilated", False)),
        "method": method,
        "layer": config.layer,
        "policy": config.policy,
        "input_size": list(config.network_size(model)),
        "flip": bool(config.flip),
        "scales": [float(s) for s in config.scales],
        "normalization": config.normalization,
        "threshold": threshold if isinstance(threshold, str) else float(threshold),
        "box": "largest component" if config.largest_only else "all components",
        "min_area": config.min_area,
        "amp": config.amp,
        "iou_thresholds": list(IOU_THRESHOLDS),
        "sweep_step": step,
    }
