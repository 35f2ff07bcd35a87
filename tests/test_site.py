"""The documentation site builds offline in strict mode (`make docs`), its generated
references are there, and the documents describe the product, not its development."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

# Documents a user reads (the site's pages and the repository's top-level documents).
DOCUMENTS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", ROOT / "CHANGELOG.md",
             ROOT / "CONTRIBUTING.md", ROOT / "SECURITY.md", ROOT / "benchmarks" / "README.md"]
DIARY = re.compile(r"\b(first|second|third|fourth|fifth|this|that|previous|next|earlier|later|each|every) "
                   r"sessions?\b|\bsession's\b|\bissues? ?#?\d+|\bissue notes?\b|docs/notes|\bthe lead\b",
                   re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


def test_site_pages(site):
    for page in ["index.html", "getting-started/index.html", "models/index.html", "train/index.html",
                 "evaluate/index.html", "serve/index.html", "scale-out/index.html", "gradcam/index.html",
                 "localization/index.html", "changelog/index.html", "cli/index.html", "api/index.html"]:
        assert (site / page).is_file(), page
    assert "0.1.0" in (site / "changelog" / "index.html").read_text()


def test_cli_reference_is_generated_from_the_commands(site):
    from typer.main import get_command

    from camloc.cli import app

    html = (site / "cli" / "index.html").read_text()
    commands = list(get_command(app).commands)
    assert {"run", "eval", "train", "info", "serve", "export"} <= set(commands)
    for name in commands:
        assert f"camloc {name}" in html
    assert "--threshold" in html and "--topk" in html


def test_api_reference_is_generated_from_the_docstrings(site):
    import camloc

    html = (site / "api" / "index.html").read_text()
    for name in ["explain", "load_model", "adapt", "Explanation", "render.overlay"]:
        assert f'id="camloc.{name}"' in html, name
    assert len([n for n in camloc.__all__ if f'id="camloc.{n}"' in html]) >= len(camloc.__all__) - 3


def test_site_loads_nothing_from_elsewhere(site):
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert not re.search(r"<(script|img)[^>]+src=\"(https?:)?//", text), page
        assert not re.search(r"<link[^>]+rel=\"stylesheet\"[^>]+href=\"(https?:)?//", text), page
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, page


def test_documents_describe_the_product_not_its_development():
    assert not (ROOT / "docs" / "notes").exists()
    found = [f"{path.relative_to(ROOT)}: {match.group(0)!r}" for path in DOCUMENTS if path.exists()
             for match in DIARY.finditer(path.read_text())]
    assert not found, found
