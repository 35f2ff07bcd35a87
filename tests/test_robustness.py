"""Nothing lost: concurrent runs on one --out, resume by the file itself, links that loop,
interrupts, odd limits, bad ground truth and bad weights files: each reported, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CAMLOC, EXAMPLES, ROOT

FAST = ["--model", "resnet18", "--weights", "random"]


def camloc_cli(*args, cwd=ROOT, timeout=600):
    return subprocess.run([*CAMLOC, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("coffee.jpg", "chelsea_cat.jpg", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


def test_second_run_on_an_out_in_use_is_refused(folder, tmp_path):
    from camloc.jobs.files import OutputLock

    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):
        done = camloc_cli("run", folder, "--out", out, *FAST)
    assert done.returncode == 2 and "is in use by another camloc run" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = camloc_cli("run", folder, "--out", out, *FAST)  # released on exit: the next run goes
    assert done.returncode == 0, done.stderr and len(records(out)) == 3


def test_lock_of_a_killed_run_is_recovered(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from camloc.jobs.files import OutputLock\n"
        f"with OutputLock({str(out)!r}):\n    print('locked', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    from camloc.jobs.files import OutputLock

    with OutputLock(out):  # the kernel released the dead run's lock
        pass


def test_resume_matches_the_file_not_the_spelling(folder, tmp_path):
    out = tmp_path / "out"
    relative = os.path.relpath(folder, tmp_path)
    assert camloc_cli("run", relative, "--out", out, *FAST, cwd=tmp_path).returncode == 0
    again = camloc_cli("run", folder.resolve(), "--out", out, "--resume", *FAST)
    assert again.returncode == 0, again.stderr
    assert "3 skipped (already done)" in again.stderr and len(records(out)) == 3
    changed = folder / "rocket.jpg"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # a changed file is redone
    third = camloc_cli("run", folder, "--out", out, "--resume", *FAST)
    assert "1 done" in third.stderr and "2 skipped" in third.stderr, third.stderr
    assert sorted(Path(r["image"]).name for r in records(out)) == ["chelsea_cat.jpg", "coffee.jpg", "rocket.jpg"]


def test_a_link_loop_gets_an_error_record(folder, tmp_path):
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    out = tmp_path / "out"
    done = camloc_cli("run", folder, "--out", out, *FAST)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [bad] = [r for r in records(out) if r["error"]]
    assert bad["image"].endswith("loop.jpg") and "loop" in bad["error"]
    assert "3 done, 1 failed" in done.stderr


def test_interrupt_says_what_was_done_and_how_to_resume(folder, tmp_path):
    for i in range(200):  # enough that the run is still at work when the first results are written
        shutil.copy(EXAMPLES / "coffee.jpg", folder / f"copy{i:03d}.jpg")
    out = tmp_path / "out"
    # Ctrl-C in a terminal: SIGINT at its default, even when this suite runs as a background job
    # (whose children inherit SIGINT ignored)
    run = subprocess.Popen([*CAMLOC, "run", str(folder), "--out", str(out), "--batch-size", "2", "--workers", "0",
                            *FAST], stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / "results.jsonl").exists():
        time.sleep(0.2)
    while time.monotonic() < deadline and not (out / "results.jsonl").read_text().strip():
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    stderr = run.communicate(timeout=120)[1]
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr and "interrupted after" in stderr


def test_max_pixels_must_be_positive(folder, tmp_path):
    done = camloc_cli("run", folder, "--out", tmp_path / "o", "--max-pixels", "0")
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_eval_reports_non_finite_and_outside_boxes(tmp_path):
    nan = tmp_path / "nan.csv"
    nan.write_text("image,label,xmin,ymin,xmax,ymax\ncoffee.jpg,967,nan,0,10,10\n")
    done = camloc_cli("eval", "--images", EXAMPLES, "--boxes", nan, *FAST)
    assert done.returncode == 2 and "not four finite numbers" in done.stderr and "Traceback" not in done.stderr
    outside = tmp_path / "outside.csv"
    outside.write_text("image,label,xmin,ymin,xmax,ymax\ncoffee.jpg,967,5000,5000,6000,6000\n"
                       "rocket.jpg,812,10,10,100,100\n")
    done = camloc_cli("eval", "--images", EXAMPLES, "--boxes", outside, *FAST, "--json", tmp_path / "m.json")
    assert done.returncode == 0, done.stderr
    assert "outside the 600x400 image" in done.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["counts"]["boxes_outside_image"] == 1 and metrics["num_images"] == 1


def test_garbage_weights_file_is_named_as_such(tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"\x80\x04 not a pickle at all" * 10)
    done = camloc_cli("info", "--model", "resnet18", "--weights", garbage)
    assert done.returncode == 2 and "not a weights file camloc can read" in done.stderr
    assert "weights_only" not in done.stderr and "Traceback" not in done.stderr
    done = camloc_cli("info", "--model", garbage)
    assert done.returncode == 2 and "is not a camloc checkpoint" in done.stderr and "weights_only" not in done.stderr


def _decoding_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("camloc-decode")]


def test_decoding_threads_keep_order_and_bad_files_and_stop_when_the_loop_does(tmp_path):
    from camloc import load_model
    from camloc.dataset import batches

    model = load_model("resnet18", weights="random")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    paths = [EXAMPLES / "coffee.jpg", tmp_path / "broken.jpg", EXAMPLES / "rocket.jpg", tmp_path / "missing.png",
             EXAMPLES / "chelsea_cat.jpg", EXAMPLES / "motorcycle.jpg", EXAMPLES / "astronaut.jpg"] * 2
    decode = lambda workers: list(batches(paths, model, "squash", 10**8, (224, 224), 3, workers))  # noqa: E731
    in_turn, ahead = decode(0), decode(2)
    assert [len(items) for items in ahead] == [3, 3, 3, 3, 2]
    flat = [item for items in ahead for item in items]
    assert [item.index for item in flat] == list(range(len(paths)))
    assert [item.path for item in flat] == [str(p) for p in paths]
    for got, want in zip(flat, (item for items in in_turn for item in items), strict=True):
        assert (got.error is None) == (want.error is None) and got.error == want.error
        if want.error is None:
            assert torch.equal(got.tensor, want.tensor) and torch.equal(got.image, want.image)
    assert "broken.jpg" in flat[1].error and "missing.png" in flat[3].error
    assert not _decoding_threads()

    stream = batches(paths * 20, model, "squash", 10**8, (224, 224), 2, 2)
    next(stream)
    assert _decoding_threads()
    stream.close()  # leaving the loop early: the decoding not started is cancelled, the threads end
    assert not _decoding_threads()
