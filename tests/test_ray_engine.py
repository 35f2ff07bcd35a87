"""The Ray engine gives the local runner's records: same labels, scores, boxes and errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

import camloc
from camloc.errors import CamlocError
from camloc.jobs.files import RESULTS_FILE, error_record, read_results
from camloc.jobs.local import RunOptions
from camloc.jobs.local import run as run_local
from camloc.jobs.ray import RayOptions, import_ray  # noqa: E402
from camloc.jobs.ray import run as run_ray  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Four small photos (one in a subfolder) and two broken files."""
    root = tmp_path_factory.mktemp("ray-inputs")
    (root / "sub").mkdir()
    for name, target in [("chelsea_cat.jpg", "cat.jpg"), ("coffee.jpg", "coffee.png"),
                         ("rocket.jpg", "sub/rocket.jpg"), ("astronaut.jpg", "done-before.jpg")]:
        image = Image.open(EXAMPLES / name).convert("RGB")
        image.thumbnail((256, 256))
        image.save(root / target)
    (root / "broken.jpg").write_bytes(b"this is not an image")
    (root / "sub" / "truncated.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes()[:2000])
    return root


@pytest.fixture(scope="module")
def model():
    return camloc.load_model(device="cpu")


def options(out: Path, **changes) -> RunOptions:
    return RunOptions.build(out=out, topk=2, batch_size=2, **changes)


def keyed(out: Path) -> dict[str, dict]:
    return {record["image"]: record for record in read_results(out / RESULTS_FILE)}


@pytest.fixture(scope="module")
def runs(folder, model, tmp_path_factory):
    """(local records, ray records, ray summary, ray output folder, local output folder).

    The Ray run resumes a results.jsonl holding one image done (to be skipped) and one
    failure (to be retried): one Ray start covers both the comparison and ``--resume``.
    """
    local_out, ray_out = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("ray")
    here = os.getcwd()
    os.chdir(folder.parent)  # relative inputs: Ray workers must open them from our directory
    try:
        run_local(model, [folder.name], options(local_out))
        local = keyed(local_out)
        done_before = local[f"{folder.name}/done-before.jpg"]
        stale_failure = error_record(f"{folder.name}/cat.jpg", "an earlier failure")
        (ray_out / RESULTS_FILE).write_text(json.dumps(done_before) + "\n"
                                            + json.dumps(stale_failure) + "\n")
        summary = run_ray(model, [folder.name], options(ray_out, resume=True),
                          RayOptions(workers=2, local_cpus=2), device="cpu")
    finally:
        os.chdir(here)
    assert not ray.is_initialized(), "the engine must shut down the Ray it started"
    return local, keyed(ray_out), summary, ray_out, local_out


@pytest.fixture(scope="module")
def name(folder):
    """A file of the folder as the runs name it (relative to the folder's parent)."""
    return lambda relative: f"{folder.name}/{relative}"


def test_same_images_and_counts(runs, name):
    local, remote, summary, _, _ = runs
    assert set(remote) == set(local) and len(remote) == 6
    assert (summary.found, summary.done, summary.failed, summary.skipped) == (6, 3, 2, 1)
    assert name("sub/rocket.jpg") in remote


def test_resume_skipped_done_and_retried_failed(runs, name):
    local, remote, _, out, _ = runs
    lines = (out / RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 6, "the stale failure is dropped, the retried image written once"
    assert json.loads(lines[0]) == local[name("done-before.jpg")]
    assert remote[name("cat.jpg")]["error"] is None
    assert not (out / "done-before_overlay.png").exists(), "a skipped image is not redone"


def test_same_predictions_scores_and_boxes(runs):
    local, remote, _, _, _ = runs
    for image, expected in local.items():
        if expected["error"] is not None:
            continue
        got = remote[image]
        assert got["error"] is None
        assert (got["width"], got["height"], got["method"]) == (
            expected["width"], expected["height"], expected["method"])
        labels = [[p["label"] for p in record["predictions"]] for record in (got, expected)]
        assert labels[0] == labels[1]
        for mine, theirs in zip(got["predictions"], expected["predictions"], strict=True):
            assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
        assert len(got["cams"]) == len(expected["cams"]) == 2
        for mine, theirs in zip(got["cams"], expected["cams"], strict=True):
            assert (mine["index"], mine["label"]) == (theirs["index"], theirs["label"])
            assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
            assert len(mine["boxes"]) == len(theirs["boxes"]) >= 1
            for box, other in zip(mine["boxes"], theirs["boxes"], strict=True):
                assert box == pytest.approx(other, abs=1.0)
        assert got["outputs"] == expected["outputs"]


def test_same_errors_for_broken_files(runs, name):
    local, remote, summary, _, _ = runs
    broken = {name("broken.jpg"), name("sub/truncated.jpg")}
    assert {image for image, record in remote.items() if record["error"]} == broken
    for image in broken:
        assert remote[image] == local[image]
        assert remote[image]["error"].startswith(image)
    assert sorted(summary.errors) == sorted(local[image]["error"] for image in broken)


def test_overlays_written_and_open(runs):
    local, remote, _, out, local_out = runs
    good = [record for record in remote.values()
            if record["error"] is None and "done-before" not in record["image"]]
    assert {record["outputs"]["overlay"] for record in good} == {
        "cat_overlay.png", "coffee_overlay.png", "sub/rocket_overlay.png"}
    for record in good:
        assert set(record["outputs"]) == {"overlay", "grid"}  # top-2: a grid too
        with Image.open(out / record["outputs"]["overlay"]) as overlay:
            overlay.load()
            assert overlay.size == (record["width"], record["height"])
            pixels = np.asarray(overlay.convert("RGB"), dtype=np.int16)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # a picture, not a blank
        with Image.open(local_out / record["outputs"]["overlay"]) as local_overlay:
            difference = np.abs(pixels - np.asarray(local_overlay.convert("RGB"), dtype=np.int16))
        boxes = [[cam["boxes"] for cam in r["cams"]] for r in (record, local[record["image"]])]
        if boxes[0] == boxes[1]:  # boxes drawn at the same place
            # the same picture as the local runner's, up to float rounding in a few pixels
            assert difference.max() <= 8 and (difference > 0).mean() < 1e-3


def test_everything_done_needs_no_ray(runs, folder, model, tmp_path, monkeypatch):
    local, _, _, _, _ = runs
    good = [record for record in local.values() if record["error"] is None]
    (tmp_path / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in good))
    monkeypatch.chdir(folder.parent)
    summary = run_ray(model, [record["image"] for record in good],
                      options(tmp_path, resume=True), RayOptions(workers=1))
    assert (summary.skipped, summary.done, summary.failed) == (4, 0, 0)
    assert not ray.is_initialized()


def test_without_ray_one_line_naming_the_extra(monkeypatch, capsys, folder):
    from camloc import cli

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(CamlocError, match=r"pip install 'camloc\[ray\]'"):
        import_ray()
    monkeypatch.setattr(sys, "argv", ["camloc", "run", str(folder), "--engine", "ray"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "pip install 'camloc[ray]'" in message


def test_ray_address_needs_ray_engine(monkeypatch, capsys, folder):
    from camloc import cli

    monkeypatch.setattr(sys, "argv", ["camloc", "run", str(folder), "--ray-address", "auto"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err


def test_zero_workers_refused():
    with pytest.raises(CamlocError, match="at least one worker"):
        RayOptions(workers=0)


def test_actor_resources_without_a_cluster():
    from camloc.jobs.ray import actor_resources, local_cpus

    assert actor_resources(RayOptions(gpus_per_actor=0.5), "auto") == (0.5, "cuda")
    assert actor_resources(RayOptions(gpus_per_actor=1), "cuda:1") == (1, "cuda")
    assert actor_resources(RayOptions(), "cpu") == (0.0, "cpu")  # no GPU asked, none looked up
    with pytest.raises(CamlocError, match="no GPUs"):
        actor_resources(RayOptions(gpus_per_actor=0), "cuda")
    # actors hold their CPUs for life: a local Ray keeps one more for loading tasks
    assert local_cpus(RayOptions(workers=2, local_cpus=2)) == 3
    assert local_cpus(RayOptions(workers=1, local_cpus=2)) == 2
