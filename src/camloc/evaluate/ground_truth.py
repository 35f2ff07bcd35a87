r"""Ground-truth boxes: a CSV (``image,label,xmin,ymin,xmax,ymax``), a folder of Pascal VOC
XML files, or a COCO instances JSON, read into ``{image key: [GTBox, ...]}``.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "boxes.csv"
>>> _ = path.write_text("image,label,xmin,ymin,xmax,ymax\ncat.jpg,285,1,2,30,40\n")
>>> read_ground_truth(path)["cat.jpg"][0].box
(1.0, 2.0, 30.0, 40.0)
"""

from __future__ import annotations

import csv
import json
import math
import os
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CamlocError, ClassError
from ..models import ClassifierAdapter


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


def _box(values: Sequence[str | float | None], where: str) -> tuple[float, float, float, float]:
    present = [v for v in values if v is not None]  # a missing XML coordinate is None
    try:
        if len(present) < len(values):
            raise ValueError("a coordinate is missing")
        xmin, ymin, xmax, ymax = (float(v) for v in present)
    except (TypeError, ValueError):
        raise GroundTruthError(f"{where}: box {list(values)} is not four numbers") from None
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):  # nan, inf: no box
        raise GroundTruthError(f"{where}: box {list(values)} is not four finite numbers")
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
                if any(row.get(c) is None for c in columns):  # csv gives None for missing fields
                    raise GroundTruthError(f"{where}: a row needs the {len(columns)} fields {','.join(columns)}")
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:  # too deeply nested
        raise GroundTruthError(f"{path}: unreadable COCO JSON ({error})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:  # AttributeError: not an object
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
        relative: str | None = None
        if root is not None:
            try:
                relative = path.relative_to(root).as_posix()
            except ValueError:
                relative = None
        matched = (
            (relative if relative in truth else None)
            or by_name.get(path.name)
            or by_stem.get(path.stem)
        )
        if matched is not None:
            found[path] = matched
    return found


def class_of(label: str, model: ClassifierAdapter) -> int | None:
    """The model's class index of a label (index or name), ``None`` when unknown."""
    try:
        return model.class_index(label)
    except ClassError:
        return None


# --------------------------------------------------------------------------- metrics on one map
