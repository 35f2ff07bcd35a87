"""Exports of a run written to disk: at the end of ``camloc run --export`` and by ``camloc
convert`` (a finished run's ``results.jsonl`` → COCO, YOLO, VOC, Label Studio).

The formats (:mod:`camloc.exports`) yield files; here they are written atomically (each
through a temporary file and a rename, links too), and files a format owns that belong to
images no longer in the run are removed, so an export always matches its results.jsonl.

>>> import json, tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> record = {"image": "/d/x.png", "width": 10, "height": 8, "error": None,
...           "cams": [{"index": 7, "label": "cock", "score": 0.9, "boxes": [[1, 2, 5, 6]]}]}
>>> _ = (out / "results.jsonl").write_text(json.dumps(record) + "\\n")
>>> report = convert(out, ["coco", "voc"])
>>> sorted(report.written), report.images, report.boxes
(['coco', 'voc'], 1, 1)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CamlocError
from ..exports import ExportOptions, Link, export_set, get_export, parse_formats
from .files import RESULTS_FILE, OutputLock, check_out_dir, read_results, write_atomic


@dataclass
class ExportReport:
    """What an export wrote: ``written[format]`` is the file (or folder) to open."""

    written: dict[str, Path] = field(default_factory=dict)
    images: int = 0
    boxes: int = 0
    failed: list[str] = field(default_factory=list)  # errors of the images left out

    def line(self) -> str:
        where = ", ".join(f"{name} → {path}" for name, path in self.written.items())
        left_out = f"; {len(self.failed)} failed image(s) left out" if self.failed else ""
        return f"exported {self.images} image(s), {self.boxes} box(es): {where}{left_out}"


def link_atomic(path: Path, target: str) -> None:
    """``path`` becomes a symbolic link to ``target`` (a copy where links are refused)."""
    if path.is_symlink() and os.readlink(path) == target:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        os.symlink(target, temporary)
    except OSError:
        write_atomic(path, Path(target).read_bytes())
        return
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _prune(folder: Path, pattern: str, keep: set[Path]) -> None:
    if not folder.is_dir():
        return
    for path in folder.glob(pattern):
        if path in keep or path.name.startswith("."):
            continue
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)


def write_exports(records: Iterable[dict[str, Any]], dest: str | os.PathLike, options: ExportOptions) -> ExportReport:
    """Write ``options.formats`` of the run ``records`` under ``dest``."""
    dest = Path(dest)
    data = export_set(records, options.model_version)
    if options.masks and not data.has_masks:
        missing = sum(1 for image in data.images if any(d.mask is None for d in image.detections))
        raise CamlocError(f"--masks: {missing} image(s) have no masks in {RESULTS_FILE} (masks come from the "
                          "maps, during a run: run camloc run ... --export coco --masks, without --resume)")
    report = ExportReport(images=len(data.images), boxes=data.boxes, failed=data.failed)
    folder = str(dest.resolve())
    for name in options.formats:
        export_format = get_export(name)
        keep: set[Path] = set()
        for relative, payload in export_format.write(data, options, folder):
            path = dest / relative
            if isinstance(payload, Link):
                link_atomic(path, payload.target)
            else:
                write_atomic(path, payload)
            keep.add(path)
        for owned, pattern in export_format.owned:
            _prune(dest / owned, pattern, keep)
        report.written[name] = dest / export_format.main
    return report


def convert(source: str | os.PathLike, formats: Sequence[str] | str, dest: str | os.PathLike | None = None,
            *, masks: bool = False, image_url: str | None = None, model_version: str | None = None) -> ExportReport:
    """Export the finished run in ``source`` (its ``results.jsonl``) to ``dest`` (default:
    ``source``). Refused while a run holds ``source``."""
    source = Path(source)
    options = ExportOptions(formats=parse_formats(formats), masks=masks, model_version=model_version,
                            **({"image_url": image_url} if image_url is not None else {}))
    if not options.formats:
        raise CamlocError("no export format given (--to coco,yolo,voc,labelstudio)")
    results = source / RESULTS_FILE
    if not results.is_file():
        raise CamlocError(f"{source}: no {RESULTS_FILE} here (the --out folder of a camloc run)")
    dest = check_out_dir(dest if dest is not None else source)
    with OutputLock(source):
        records = read_results(results)
        if dest.resolve() == source.resolve():
            return write_exports(records, dest, options)
        with OutputLock(dest):
            return write_exports(records, dest, options)


