"""Segmentation masks of the boxes, during a run: the region of each box at the box rule's
level, as COCO run-length encoding (``pycocotools.mask``, the ``export`` extra).

A box is one connected component (8-connected) of ``normalised map >= level``, the level
being the box rule's (:func:`camloc.boxes.threshold_level`: the fraction itself, or the
Otsu/mean level of that map); its mask is that component, so box and mask always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
from scipy import ndimage

from ..boxes import Threshold, threshold_level
from ..errors import CamlocError

EXTRA_HINT = "pip install 'camloc[export]'"


def import_mask_api() -> ModuleType:
    """``pycocotools.mask``, or one line naming the extra."""
    try:
        from pycocotools import mask
    except ImportError:
        raise CamlocError(f"masks and COCO AP need pycocotools: {EXTRA_HINT}") from None
    return mask


def component_masks(normalized_map: Any, threshold: Threshold, boxes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The boolean ``(H, W)`` mask of each box: the component of ``map >= level`` it bounds
    (the largest such component when several share the box).

    >>> heat = np.zeros((6, 8), np.float32); heat[1:3, 1:3] = 1; heat[3:6, 4:8] = 0.6
    >>> [int(m.sum()) for m in component_masks(heat, 0.5, [(4, 3, 8, 6), (1, 1, 3, 3)])]
    [12, 4]
    """
    values = np.asarray(normalized_map.detach().float().cpu().numpy() if hasattr(normalized_map, "detach")
                        else normalized_map, dtype=np.float32)
    level = np.float32(threshold_level(values, threshold))
    labels, _ = ndimage.label(values >= level, structure=np.ones((3, 3), bool))
    slices = ndimage.find_objects(labels)
    areas = np.bincount(labels.ravel())
    by_box: dict[tuple[int, ...], int] = {}
    for number, where in enumerate(slices, start=1):
        if where is None:
            continue
        key = (where[1].start, where[0].start, where[1].stop, where[0].stop)
        if key not in by_box or areas[number] > areas[by_box[key]]:
            by_box[key] = number
    found = []
    for box in boxes:
        component = by_box.get(tuple(int(v) for v in box))
        found.append(labels == component if component is not None else _box_mask(values.shape, box))
    return found


def _box_mask(shape: tuple[int, ...], box: Sequence[int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    mask[ymin:ymax, xmin:xmax] = True
    return mask


def encode(mask: np.ndarray) -> dict[str, Any]:
    """A boolean mask → COCO compressed RLE ``{"size": [H, W], "counts": str, "area": int}``."""
    api = import_mask_api()
    rle = api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii"),
            "area": int(api.area(rle))}


def explanation_masks(normalized: Any, threshold: Threshold, boxes: Sequence[Sequence[Sequence[int]]]) -> list[list]:
    """RLE masks of every box of every explained class: ``normalized`` is ``(k, H, W)``,
    ``boxes[i]`` the boxes of class ``i``."""
    return [[encode(mask) for mask in component_masks(normalized[i], threshold, class_boxes)]
            for i, class_boxes in enumerate(boxes)]
