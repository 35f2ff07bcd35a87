"""The ImageNet class names camloc ships are torchvision's, in the same order."""

from __future__ import annotations

import doctest

import camloc.classnames
from camloc.classnames import imagenet_class_names


def test_same_names_and_order_as_torchvision():
    meta = __import__("torchvision.models._meta", fromlist=["_IMAGENET_CATEGORIES"])
    assert imagenet_class_names() == list(meta._IMAGENET_CATEGORIES)


def test_a_fresh_list_each_call():
    names = imagenet_class_names()
    names.clear()
    assert len(imagenet_class_names()) == 1000


def test_docstring_example():
    result = doctest.testmod(camloc.classnames)
    assert result.attempted > 0 and result.failed == 0
