"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class CamlocError(Exception):
    """Base class: a problem with the user's input, said in one line."""


class ImageError(CamlocError):
    """An input file that is not a readable image (or is too large)."""


class ModelError(CamlocError):
    """A model camloc cannot load or cannot explain with the requested method."""


class ClassError(CamlocError):
    """An unknown class name or index."""
