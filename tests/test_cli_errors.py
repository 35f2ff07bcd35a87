"""Usage errors of the installed `camloc`, as users meet them: one line on stderr, exit status 2,
no traceback, for every subcommand, before any model is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import CAMLOC, EXAMPLES, ROOT

import camloc

PHOTO = str(EXAMPLES / "coffee.jpg")

CASES = {
    "unknown command": (["bogus"], "No such command 'bogus'"),
    "run without inputs": (["run"], "needs at least one image"),
    "run unknown policy": (["run", PHOTO, "--policy", "foo"], "'foo' is not one of"),
    "run bad threshold": (["run", PHOTO, "--threshold", "nope"], "threshold must be a fraction"),
    "run bad scales": (["run", PHOTO, "--scales", "9"], "--scales factors must be between"),
    "run topk zero": (["run", PHOTO, "--topk", "0"], "--topk"),
    "run unknown colormap": (["run", PHOTO, "--colormap", "nocolour"], "nocolour"),
    "run unknown option": (["run", PHOTO, "--frobnicate"], "No such option"),
    "run ray address without ray": (["run", PHOTO, "--ray-address", "auto"], "--ray-address needs --engine ray"),
    "eval without images": (["eval", "--boxes", "b.csv"], "Missing option '--images'"),
    "eval images not a folder": (["eval", "--images", "nowhere", "--boxes", "b.csv"], "--images nowhere: not a folder"),
    "eval bad rule": (["eval", "--images", str(EXAMPLES), "--boxes", "b.csv", "--threshold", "median"],
                      "threshold must be"),
    "export without --onnx": (["export"], "Missing option '--onnx'"),
    "export of an onnx file": (["export", "--onnx", "x.onnx", "--model", "m.onnx"], "already a .onnx file"),
    "serve bad threshold": (["serve", "--threshold", "2"], "threshold must be in [0, 1]"),
    "train bad rule": (["train", "data", "--threshold", "often"], "threshold must be"),
    "info unknown option": (["info", "--colour"], "No such option"),
}


def camloc_cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*CAMLOC, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("case", list(CASES))
def test_usage_error_is_one_line_and_status_2(case):
    args, expected = CASES[case]
    done = camloc_cli(*args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


def test_bad_out_is_refused_before_any_work(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    for args in (["run", PHOTO, "--out", str(a_file)], ["run", PHOTO, "--out", "/proc/camloc-out"],
                 ["eval", "--images", str(EXAMPLES), "--boxes", str(a_file), "--out", str(a_file)],
                 ["eval", "--images", str(EXAMPLES), "--boxes", str(a_file), "--json", "/proc/x/m.json"],
                 ["train", str(tmp_path), "--out", "/proc/camloc-train"]):
        done = camloc_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "--out" in done.stderr or "--json" in done.stderr


def test_messages_are_printed_verbatim(tmp_path):
    """Square brackets are not eaten as markup, and a newline in a name stays on one line."""
    done = camloc_cli("run", str(tmp_path / "photos[x]"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2  # nothing found: a glob pattern that matches no image
    assert "photos[x]" in done.stderr and "Traceback" not in done.stderr
    odd = tmp_path / "bad\nname.jpg"
    odd.write_bytes(b"not an image")
    done = camloc_cli("run", str(odd), "--out", str(tmp_path / "out2"))
    assert done.returncode == 1
    warning = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "bad\\nname.jpg" in warning[0], done.stderr


def test_version_and_bare_command():
    done = camloc_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"camloc {camloc.__version__}"
    bare = camloc_cli()
    assert bare.returncode == 2 and "Traceback" not in bare.stderr + bare.stdout
    assert "Usage" in bare.stdout + bare.stderr


def test_python_dash_m_is_the_same_command():
    module = subprocess.run([sys.executable, "-m", "camloc", "run", "--bogus"], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert module.returncode == 2 and module.stderr.startswith("error: No such option: --bogus")
    assert "(see camloc run --help)" in module.stderr
    version = subprocess.run([sys.executable, "-m", "camloc", "--version"], capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
    assert version.returncode == 0 and version.stdout.strip() == f"camloc {camloc.__version__}"


def test_the_quick_exit_still_runs_exit_handlers(tmp_path):
    """The command ends with os._exit once its work is done; handlers registered with atexit
    (Ray's shutdown, temporary folders) and buffered output must not be lost."""
    marker = tmp_path / "handler-ran"
    script = ("import atexit, pathlib, sys; from camloc.cli import console; "
              f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes')); "
              "sys.stdout.write('buffered, no newline'); sys.argv = ['camloc', '--version']; console()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("buffered, no newline") and "camloc " in done.stdout
    assert marker.read_text() == "yes"


def test_help_of_every_command():
    for command in ("run", "eval", "info", "train", "serve", "export"):
        done = camloc_cli(command, "--help")
        assert done.returncode == 0 and "Usage" in done.stdout, command
