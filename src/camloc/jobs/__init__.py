"""Folder jobs: ``camloc run`` in this process (:mod:`camloc.jobs.local`) or on Ray Data
(:mod:`camloc.jobs.ray`, needs the ``ray`` extra), and the files they write
(:mod:`camloc.jobs.files`).

The names below are imported on first use, so that ``camloc.jobs.exporting`` (``camloc
convert``: results.jsonl into detection sets) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "RESULTS_FILE": "files", "read_results": "files", "write_atomic": "files",
    "OutputOptions": "local", "RunOptions": "local", "RunSummary": "local", "run": "local",
}

__all__ = ["RESULTS_FILE", "OutputOptions", "RunOptions", "RunSummary", "read_results", "run", "write_atomic"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'camloc.jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .files import RESULTS_FILE, read_results, write_atomic
    from .local import OutputOptions, RunOptions, RunSummary, run
