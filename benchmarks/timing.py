"""Timing shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this
module is importable as ``timing``)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from camloc.allocator import tune_allocator


def allocator_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (the camloc command tunes it: camloc.allocator)")


def apply_allocator(args: argparse.Namespace) -> str:
    """Tune the allocator as the ``camloc`` command does (for every contender of the run
    alike), unless ``--default-malloc``; returns which one is in use."""
    if args.default_malloc:
        os.environ["CAMLOC_MALLOC"] = "default"  # child `camloc` processes too
        return "glibc default"
    return "tuned (camloc.allocator)" if tune_allocator() else "default (no mallopt)"


def synchronize() -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_time(function: Callable[[], Any]) -> float:
    """Seconds of one call, GPU work included."""
    synchronize()
    start = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - start


def best_times(functions: Sequence[Callable[[], Any]], repeats: int = 3) -> list[tuple[float, Any]]:
    """Best of ``repeats`` for each function, run round-robin (a slow drift of a shared machine
    hits every contender alike), after one warm-up call each. Returns ``[(seconds, result of
    the warm-up call)]``."""
    results = [function() for function in functions]
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            best[index] = min(best[index], run_time(function))
    return list(zip(best, results, strict=True))
