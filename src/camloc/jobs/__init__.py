"""Folder jobs: ``camloc run`` in this process (:mod:`camloc.jobs.local`) or on Ray Data
(:mod:`camloc.jobs.ray`, needs the ``ray`` extra), and the files they write
(:mod:`camloc.jobs.files`)."""

from .files import RESULTS_FILE, read_results, write_atomic
from .local import OutputOptions, RunOptions, RunSummary, run

__all__ = ["RESULTS_FILE", "OutputOptions", "RunOptions", "RunSummary", "read_results", "run", "write_atomic"]
