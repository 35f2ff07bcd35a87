"""COCO-style average precision of camloc's boxes (``pycocotools``' ``COCOeval``, the
``export`` extra): AP (IoU 0.5:0.95), AP50 and AP75, beside top-1 / GT-known loc and
MaxBoxAccV2.

The detections of an image are camloc's boxes (the box rule of the run: largest component,
or all components of at least ``min_area``) of the map of its ground-truth class, each
scored by the model's probability of that class; the ground truth is the image's boxes of
that class. So it is the detection counterpart of GT-known loc: the class is given, the
score ranks the boxes across images (a confidently misclassified image ranks its box low),
extra components are false positives and missed objects of that class false negatives.
Category ids are the model's class index + 1, as in camloc's COCO export.

>>> from camloc.evaluate.metrics import ImageResult
>>> found = ImageResult("a.png", "a.png", [0], [[0, 0, 10, 10]], [0], [0, 0, 10, 10], 1.0, True, True,
...                     boxes=[[0, 0, 10, 10]], score=0.9)
>>> coco_ap([found])
{'coco_ap': 1.0, 'coco_ap50': 1.0, 'coco_ap75': 1.0}
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

AP_KEYS = ("coco_ap", "coco_ap50", "coco_ap75")
EXTRA_HINT = "pip install 'camloc[export]'"


def coco_available() -> bool:
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        return False
    return True


def coco_dicts(images: Sequence[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ground truth (a COCO dataset) and detections (a COCO results list) of evaluated
    images (:class:`camloc.evaluate.metrics.ImageResult`)."""
    truth: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    detections: list[dict[str, Any]] = []
    classes: set[int] = set()
    for image_id, image in enumerate(images, start=1):
        truth["images"].append({"id": image_id, "file_name": image.key})
        target = image.gt_classes[0]
        classes.add(target)
        for box, label in zip(image.gt_boxes, _box_classes(image), strict=True):
            if label != target:
                continue
            xmin, ymin, xmax, ymax = (float(v) for v in box)
            truth["annotations"].append({"id": len(truth["annotations"]) + 1, "image_id": image_id,
                                         "category_id": target + 1, "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                                         "area": (xmax - xmin) * (ymax - ymin), "iscrowd": 0})
        for box in image.boxes:
            xmin, ymin, xmax, ymax = (float(v) for v in box)
            detections.append({"image_id": image_id, "category_id": target + 1,
                               "bbox": [xmin, ymin, xmax - xmin, ymax - ymin], "score": float(image.score)})
    truth["categories"] = [{"id": index + 1, "name": str(index)} for index in sorted(classes)]
    return truth, detections


def _box_classes(image: Any) -> list[int]:
    classes = getattr(image, "gt_box_classes", None)
    return list(classes) if classes else [image.gt_classes[0]] * len(image.gt_boxes)


def coco_ap(images: Sequence[Any]) -> dict[str, float | None]:
    """``{"coco_ap", "coco_ap50", "coco_ap75"}`` of the evaluated images (``None`` each
    without pycocotools, or without ground-truth boxes)."""
    if not coco_available() or not images:
        return dict.fromkeys(AP_KEYS)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth, detections = coco_dicts(images)
    if not truth["annotations"]:
        return dict.fromkeys(AP_KEYS)
    if not detections:
        return dict.fromkeys(AP_KEYS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground = COCO()
        ground.dataset = truth  # type: ignore[assignment]  # the stubs' TypedDict asks for fields bbox AP does not read
        ground.createIndex()
        scorer = COCOeval(ground, ground.loadRes(detections), "bbox")
        scorer.evaluate()
        scorer.accumulate()
        scorer.summarize()
    return {key: (round(float(value), 6) if value >= 0 else None)
            for key, value in zip(AP_KEYS, scorer.stats[:3], strict=True)}
