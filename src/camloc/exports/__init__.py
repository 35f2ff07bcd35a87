"""Boxes of a run exported in the formats detectors are labelled and trained with: COCO
JSON (optionally with RLE masks), Ultralytics YOLO, Pascal VOC XML, Label Studio tasks.

Formats work on run records (``results.jsonl`` lines), so a finished run converts without
its model (``camloc convert``); each is one module registering an :class:`ExportFormat`.
Writers yield ``(relative path, bytes or Link)``; the folder job writes them atomically
(:func:`camloc.jobs.exporting.write_exports`). Plain Python, no torch: only the masks
(:mod:`camloc.exports.masks`, computed during a run) need numpy, scipy and pycocotools.
"""

from . import coco, labelstudio, voc, yolo  # noqa: F401 - the built-in formats register themselves
from .registry import (
    LABEL_STUDIO_LOCAL_FILES,
    Detection,
    ExportFormat,
    ExportImage,
    ExportOptions,
    ExportSet,
    Link,
    export_set,
    get_export,
    list_exports,
    parse_formats,
    register_export,
)

__all__ = ["LABEL_STUDIO_LOCAL_FILES", "Detection", "ExportFormat", "ExportImage", "ExportOptions", "ExportSet",
           "Link", "export_set", "get_export", "list_exports", "parse_formats", "register_export"]
