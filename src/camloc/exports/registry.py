"""The export formats: a registry (a new format is one module that registers itself), the
options of an export, and the records of a run read into the plain structure every format
writes from (:class:`ExportSet`).

Records are the ``results.jsonl`` lines of a run (``camloc run``); formats never see maps
or models, so a finished run can be exported again (``camloc convert``) without the model.
The only per-pixel output, COCO segmentation masks, is computed during the run and carried
in the records (``cams[].masks``, COCO RLE, one per box).

Category numbering, the same whatever the format:

- the classes are those that occur among the exported boxes, in the model's index order,
  named by the model's class names (the records' labels);
- COCO ``category_id`` is the model's class index + 1 (stable across runs and models with
  the same classes; COCO ids need not be contiguous);
- YOLO class ids are contiguous, ``0 .. nc - 1`` over those classes (Ultralytics trains a
  head of ``nc`` outputs), named in ``data.yaml``; VOC and Label Studio use the names.

>>> data = export_set([{"image": "a/x.png", "width": 10, "height": 8, "error": None,
...     "cams": [{"index": 7, "label": "cock", "score": 0.9, "boxes": [[1, 2, 5, 6]]}]}])
>>> [(d.label, d.box, data.coco_id(d.index), data.yolo_id(d.index)) for d in data.images[0].detections]
[('cock', (1, 2, 5, 6), 8, 0)]
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from ..errors import CamlocError

# Label Studio serves local files under this URL, relative to LOCAL_FILES_DOCUMENT_ROOT
LABEL_STUDIO_LOCAL_FILES = "/data/local-files/?d="


@dataclass(frozen=True)
class Link:
    """A file of an export that is a symbolic link to ``target`` (copied where links fail)."""

    target: str


Payload = bytes | Link
ExportFiles = Iterator[tuple[str, Payload]]  # (path relative to the export folder, content)


@dataclass(frozen=True)
class ExportFormat:
    """One export format: ``write(data, options, folder)`` yields its files (paths relative
    to ``folder``, the absolute export folder, which a format may name inside a file); ``main`` is the file a
    user opens first; ``owned`` are ``(folder, glob)`` pairs whose files the format alone
    writes, so files of images no longer in the run are removed there."""

    name: str
    write: Callable[[ExportSet, ExportOptions, str], ExportFiles]
    main: str
    description: str
    owned: tuple[tuple[str, str], ...] = ()
    masks: bool = False  # can carry segmentation masks (--masks)


_FORMATS: dict[str, ExportFormat] = {}


def register_export(export_format: ExportFormat) -> ExportFormat:
    """Add a format (by its name) to ``--export`` and ``camloc convert --to``."""
    _FORMATS[export_format.name] = export_format
    return export_format


def list_exports() -> list[str]:
    return sorted(_FORMATS)


def get_export(name: str) -> ExportFormat:
    try:
        return _FORMATS[name]
    except KeyError:
        raise CamlocError(f"unknown export format {name!r}; choose from {', '.join(list_exports())}") from None


def parse_formats(formats: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"coco,yolo"`` or ``["coco", "yolo"]`` → ``("coco", "yolo")`` (checked, duplicates dropped).

    >>> parse_formats("COCO, yolo,coco")
    ('coco', 'yolo')
    """
    if formats is None:
        return ()
    parts = formats.split(",") if isinstance(formats, str) else [p for f in formats for p in str(f).split(",")]
    names = tuple(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    for name in names:
        get_export(name)
    return names


@dataclass(frozen=True)
class ExportOptions:
    """What a run or ``camloc convert`` exports: ``formats`` (names in the registry),
    ``masks`` (COCO segmentation of each box's thresholded region; computed during a run),
    ``image_url`` (the prefix of Label Studio's image URLs, before the image's path relative
    to the images' common folder) and ``model_version`` (Label Studio's prediction tag)."""

    formats: tuple[str, ...] = ()
    masks: bool = False
    image_url: str = LABEL_STUDIO_LOCAL_FILES
    model_version: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        if self.masks and not any(get_export(name).masks for name in self.formats):
            able = ", ".join(name for name in list_exports() if get_export(name).masks)
            raise CamlocError(f"--masks adds segmentation to an export that carries masks ({able}); "
                              f"add one to the formats")

    def __bool__(self) -> bool:
        return bool(self.formats)


# --------------------------------------------------------------------------- records → export set


@dataclass(frozen=True)
class Detection:
    """One box of one explained class: ``box`` in pixel edges ``[xmin, ymin, xmax, ymax]``,
    ``score`` the class probability, ``mask`` its COCO RLE when the run computed masks."""

    index: int
    label: str
    score: float
    box: tuple[int, int, int, int]
    mask: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExportImage:
    """One image of an export: ``name`` (unique, for per-image files), the file's absolute
    ``path``, its path ``relative`` to the images' common folder, its size, its boxes."""

    name: str
    path: str
    relative: str
    width: int
    height: int
    detections: list[Detection]


@dataclass
class ExportSet:
    """The successful images of a run (sorted by path), the classes that occur, and the
    images left out because they failed."""

    images: list[ExportImage]
    classes: list[tuple[int, str]]  # (model index, name), by index
    root: str  # the images' common folder (absolute)
    model_version: str = "camloc"
    failed: list[str] = field(default_factory=list)  # error messages of the failed images
    _yolo: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._yolo = {index: i for i, (index, _) in enumerate(self.classes)}

    def coco_id(self, index: int) -> int:
        """COCO category id of the model's class ``index``: index + 1."""
        return index + 1

    def yolo_id(self, index: int) -> int:
        """YOLO class id of the model's class ``index``: its rank among the classes found."""
        return self._yolo[index]

    @property
    def boxes(self) -> int:
        return sum(len(image.detections) for image in self.images)

    @property
    def has_masks(self) -> bool:
        return all(d.mask is not None for image in self.images for d in image.detections)


def _absolute(record: dict[str, Any]) -> str:
    identity = record.get("file")
    if isinstance(identity, dict) and identity.get("path"):
        return str(identity["path"])
    return os.path.abspath(str(record["image"]))


def export_names(paths: Sequence[str]) -> list[str]:
    """A unique file-name stem per image (its name without extension; a repeated name gets
    ``-2``, ``-3`` ... in path order), safe in every format's folder.

    >>> export_names(["/a/cat.jpg", "/b/cat.png", "/a/dog 1.jpg"])
    ['cat', 'cat-2', 'dog_1']
    """
    used: set[str] = set()
    names = []
    for path in paths:
        stem = re.sub(r"[^\w\-.]", "_", PurePath(path).stem).lstrip(".") or "image"
        unique, n = stem, 2
        while unique.lower() in used:  # case-insensitive file systems
            unique, n = f"{stem}-{n}", n + 1
        used.add(unique.lower())
        names.append(unique)
    return names


def common_root(paths: Sequence[str]) -> str:
    """The deepest folder containing every path (absolute)."""
    if not paths:
        return os.path.abspath(".")
    return os.path.commonpath([os.path.dirname(p) for p in paths])


def export_set(records: Iterable[dict[str, Any]], model_version: str | None = None) -> ExportSet:
    """The successful records of a run → :class:`ExportSet` (failed records are left out and
    their errors kept); images sorted by path so numbering does not depend on the order in
    which a (resumed, parallel) run finished them. A later record of the same file wins."""
    by_path: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for record in records:
        if record.get("error") is not None:
            failed.append(str(record["error"]))
            continue
        by_path[_absolute(record)] = record
    paths = sorted(by_path)
    root = common_root(paths)
    classes: dict[int, str] = {}
    images = []
    for path, name in zip(paths, export_names(paths), strict=True):
        record = by_path[path]
        detections = []
        for cam in record.get("cams", []):
            index, label = int(cam["index"]), str(cam["label"])
            masks = cam.get("masks") or [None] * len(cam.get("boxes", []))
            for box, mask in zip(cam.get("boxes", []), masks, strict=True):
                xmin, ymin, xmax, ymax = (int(round(v)) for v in box)
                detections.append(Detection(index, label, float(cam["score"]), (xmin, ymin, xmax, ymax), mask))
                classes.setdefault(index, label)
        images.append(ExportImage(name, path, Path(os.path.relpath(path, root)).as_posix(),
                                  int(record["width"]), int(record["height"]), detections))
    methods = sorted({str(by_path[p].get("method")) for p in paths if by_path[p].get("method")})
    version = model_version or " ".join(["camloc", *methods])
    return ExportSet(images, sorted(classes.items()), root, version, failed)
