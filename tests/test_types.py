"""The package type-checks: mypy, with the configuration in pyproject.toml, finds nothing in
src/camloc (every function annotated), as part of the test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_nothing():
    # mypy reads [tool.mypy] from pyproject.toml (the files, the strictness); its cache is
    # .mypy_cache in the repository (git ignores it), so a second run takes seconds
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
