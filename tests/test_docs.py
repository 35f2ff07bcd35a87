"""The runnable examples in the public docstrings run and give what they say."""

from __future__ import annotations

import doctest
import importlib
import os

import pytest
from conftest import ROOT

MODULES = ["camloc", "camloc.config", "camloc.images", "camloc.models", "camloc.models.adapter",
           "camloc.models.registry", "camloc.models.dilation", "camloc.models.cache", "camloc.models.runtime",
           "camloc.methods", "camloc.methods.cam",
           "camloc.methods.views", "camloc.methods.registry", "camloc.maps", "camloc.boxes", "camloc.pipeline",
           "camloc.dataset", "camloc.render", "camloc.jobs.files", "camloc.jobs.local", "camloc.evaluate.ground_truth",
           "camloc.evaluate.metrics", "camloc.evaluate.job", "camloc.allocator", "camloc.serve.batching", "camloc.lazy"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples use paths relative to the repository root
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
    assert os.getcwd() == str(ROOT)
