"""YOLO labels laid out as Ultralytics reads them::

    yolo/data.yaml           path: <this folder, absolute>, train/val: images, names: {0: ...}
    yolo/images/<name>.jpg   symbolic links to the original images (copies where links fail)
    yolo/labels/<name>.txt   one line per box: class cx cy w h, normalised to [0, 1]

Ultralytics finds each image's labels by replacing ``images`` with ``labels`` in its path,
so the images are linked into ``yolo/images`` rather than listed where they are (a
``train.txt`` of the original paths would make it look for labels beside the originals).
``path`` is absolute because Ultralytics reads a relative one under its own datasets folder.
Class ids are contiguous over the classes found (see :mod:`camloc.exports.registry`);
an image without boxes gets an empty label file (a background image). ``val`` names the
same images: split them before training for a real validation score.

>>> from camloc.exports.registry import ExportOptions, export_set
>>> data = export_set([{"image": "/d/x.png", "width": 10, "height": 8, "error": None,
...     "cams": [{"index": 7, "label": "cock", "score": 0.9, "boxes": [[1, 2, 5, 6]]}]}])
>>> files = dict(write_yolo(data, ExportOptions()))
>>> files["yolo/labels/x.txt"]
b'0 0.3 0.5 0.4 0.5\\n'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import PurePath

from .registry import Detection, ExportFiles, ExportFormat, ExportOptions, ExportSet, Link, register_export

FOLDER = "yolo"


def _number(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"


def label_lines(detections: Iterable[Detection], width: int, height: int, yolo_id: Callable[[int], int]) -> str:
    """``class cx cy w h`` lines, coordinates as fractions of the image's width and height."""
    lines = []
    for detection in detections:
        xmin, ymin, xmax, ymax = detection.box
        values = ((xmin + xmax) / 2 / width, (ymin + ymax) / 2 / height, (xmax - xmin) / width,
                  (ymax - ymin) / height)
        lines.append(" ".join([str(yolo_id(detection.index)), *(_number(min(max(v, 0.0), 1.0)) for v in values)]))
    return "".join(line + "\n" for line in lines)


def data_yaml(data: ExportSet, folder: str) -> str:
    """Ultralytics' dataset file (YAML; names quoted as JSON strings, which YAML reads alike)."""
    names = "".join(f"  {i}: {json.dumps(name)}\n" for i, (_, name) in enumerate(data.classes)) or "  {}\n"
    return (f"# camloc boxes ({data.model_version}); val repeats train: split the images before training\n"
            f"path: {json.dumps(folder)}\ntrain: images\nval: images\nnc: {len(data.classes)}\n"
            f"names:\n{names}")


def write_yolo(data: ExportSet, options: ExportOptions, folder: str = ".") -> ExportFiles:
    for image in data.images:
        suffix = PurePath(image.path).suffix.lower()
        yield f"{FOLDER}/images/{image.name}{suffix}", Link(image.path)
        yield (f"{FOLDER}/labels/{image.name}.txt",
               label_lines(image.detections, image.width, image.height, data.yolo_id).encode())
    yield f"{FOLDER}/data.yaml", data_yaml(data, os.path.join(os.path.abspath(folder), FOLDER)).encode()


register_export(ExportFormat(
    "yolo", write_yolo, f"{FOLDER}/data.yaml", "Ultralytics YOLO: data.yaml, images/ (links), labels/*.txt",
    owned=((f"{FOLDER}/labels", "*.txt"), (f"{FOLDER}/images", "*"))))
