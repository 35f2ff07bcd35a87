"""Memory allocator settings for fast CPU inference (glibc's malloc).

A forward pass allocates and frees many activation tensors of a few to tens of MB. With
glibc's defaults, freed blocks above the (dynamic) mmap threshold go back to the kernel
and the next pass gets fresh pages, which the kernel zeroes on first touch: on a 2-core
machine a forward pass of 32 images runs 1.2x faster without that
(``benchmarks/bench_allocator.py``). Serving blocks of up to 32 MB from the heap and
keeping up to 512 MB of freed memory for reuse removes most of it, as jemalloc or
tcmalloc would (PyTorch's CPU performance guide recommends those).

The ``camloc`` command applies this at start; a program using camloc as a library can call
:func:`tune_allocator` itself. ``CAMLOC_MALLOC=default`` in the environment leaves the
allocator alone. Where the C library has no ``mallopt`` (macOS, Windows, musl) nothing
changes.

>>> isinstance(tune_allocator(), bool)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 512 << 20


def tune_allocator() -> bool:
    """Apply the settings above to this process; ``True`` when they were applied."""
    if os.environ.get("CAMLOC_MALLOC", "").strip().lower() in ("default", "0", "off", "no"):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


def release_memory() -> bool:
    """Give the freed memory of every malloc arena back to the kernel (glibc's
    ``malloc_trim(0)``): what a long-running server calls when it goes idle, so the memory a
    large request used does not stay with the process (the settings above keep up to 512 MB
    of it per arena for reuse). ``True`` when memory was released; ``False`` elsewhere.

    >>> isinstance(release_memory(), bool)
    True
    """
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return malloc_trim(0) == 1


@functools.cache
def _libc_function(name: str) -> Any:
    """glibc's function ``name`` (looked up once per process), or ``None`` off Linux or when
    the C library has no such function (musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
