"""Shared fixtures: the embedded default model (loaded once), real photos, small models."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
# the installed command, as users run it (its script sits beside the interpreter of the venv)
_SCRIPT = Path(sys.executable).with_name("camloc")
CAMLOC = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "camloc.cli"]

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
# camloc's on-disk cache (heads found, runtime choices, exported graphs): one fresh folder per
# test session, shared with the `camloc` commands the tests run
os.environ["CAMLOC_CACHE"] = tempfile.mkdtemp(prefix="camloc-test-cache-")


@pytest.fixture(scope="session")
def default_model():
    import camloc

    return camloc.load_model()


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """The bundled real photos (copies of scikit-image's sample data)."""
    return {p.stem: p for p in sorted(EXAMPLES.glob("*.jpg"))}
