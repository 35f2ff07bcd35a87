"""Folder jobs: ``camloc run`` in this process (:mod:`camloc.jobs.local`) or on Ray Data
(:mod:`camloc.jobs.ray`, needs the ``ray`` extra), and the files they write
(:mod:`camloc.jobs.files`).

The names below are imported on first use, so that ``camloc.jobs.exporting`` (``camloc
convert``: results.jsonl into detection sets) loads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "RESULTS_FILE": "files", "read_results": "files", "write_atomic": "files",
    "OutputOptions": "local", "RunOptions": "local", "RunSummary": "local", "run": "local",
}

__all__ = ["RESULTS_FILE", "OutputOptions", "RunOptions", "RunSummary", "read_results", "run", "write_atomic"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__, globals())


if TYPE_CHECKING:
    from .files import RESULTS_FILE, read_results, write_atomic
    from .local import OutputOptions, RunOptions, RunSummary, run
