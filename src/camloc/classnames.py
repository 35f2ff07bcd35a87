"""Class names that ship with camloc (package data, read offline)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def _imagenet_class_names() -> tuple[str, ...]:
    text = resources.files("camloc").joinpath("data", "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in the order of the classifiers' outputs.

    Read once from ``camloc/data/imagenet_classes.txt`` (one name per line), which the
    package ships, so no download and no private torchvision module is needed. The names
    and their order are torchvision's.

    Returns
    -------
    list of str
        A new list on every call (the file is read only on the first), so callers may
        change it freely.

    Examples
    --------
    >>> from camloc.classnames import imagenet_class_names
    >>> names = imagenet_class_names()
    >>> len(names), names[0], names[285]
    (1000, 'tench', 'Egyptian cat')
    """
    return list(_imagenet_class_names())
