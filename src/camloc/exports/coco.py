"""COCO detection JSON (``coco.json``): ``images`` (id, file_name relative to the images'
common folder, width, height), ``annotations`` (``bbox = [x, y, w, h]`` in pixels, ``area``,
``score``, ``category_id`` = the model's class index + 1, ``iscrowd`` 0, and with ``--masks``
the thresholded region as ``segmentation`` in compressed RLE), ``categories`` (the classes
that occur, by the model's names). It loads with ``pycocotools.coco.COCO``; its annotations
are also a COCO results list for ``COCO.loadRes`` / ``COCOeval``.

>>> from camloc.exports.registry import ExportOptions, export_set
>>> data = export_set([{"image": "/d/x.png", "width": 10, "height": 8, "error": None,
...     "cams": [{"index": 7, "label": "cock", "score": 0.9, "boxes": [[1, 2, 5, 6]]}]}])
>>> [(path, payload)] = write_coco(data, ExportOptions())
>>> import json; json.loads(payload)["annotations"][0]["bbox"]
[1, 2, 4, 4]
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from .registry import ExportFiles, ExportFormat, ExportOptions, ExportSet, register_export

COCO_FILE = "coco.json"


def coco_dataset(data: ExportSet, masks: bool = False) -> dict[str, Any]:
    """The COCO dictionary of an export set (``masks``: add each box's RLE segmentation)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(data.images, start=1):
        images.append({"id": image_id, "file_name": image.relative, "width": image.width,
                       "height": image.height})
        for detection in image.detections:
            xmin, ymin, xmax, ymax = detection.box
            note: dict[str, Any] = {
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": data.coco_id(detection.index),
                "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                "area": (xmax - xmin) * (ymax - ymin),
                "score": round(detection.score, 6), "iscrowd": 0,
            }
            if masks and detection.mask is not None:
                note["segmentation"] = detection.mask
                note["area"] = int(detection.mask.get("area", note["area"]))
            annotations.append(note)
    for note in annotations:  # the RLE's own area is only needed for "area"
        if isinstance(note.get("segmentation"), dict):
            note["segmentation"] = {"size": note["segmentation"]["size"], "counts": note["segmentation"]["counts"]}
    return {
        "info": {"description": f"camloc boxes ({data.model_version})", "version": "1.0",
                 "date_created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "images_root": data.root},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": data.coco_id(index), "name": name, "supercategory": "object"}
                       for index, name in data.classes],
    }


def write_coco(data: ExportSet, options: ExportOptions, folder: str = ".") -> ExportFiles:
    yield COCO_FILE, (json.dumps(coco_dataset(data, options.masks)) + "\n").encode()


register_export(ExportFormat("coco", write_coco, COCO_FILE, "COCO detection JSON (with --masks: RLE segmentation)",
                             masks=True))
