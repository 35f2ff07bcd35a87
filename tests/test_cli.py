"""`camloc run` end to end: a folder of good and broken files, outputs read back and opened."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CAMLOC, EXAMPLES
from PIL import Image


def camloc_cli(*args, cwd=None):
    return subprocess.run([*CAMLOC, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def make_inputs(folder: Path) -> dict[str, str]:
    """Real photos in many modes plus broken files; returns name → what it is."""
    folder.mkdir()
    (folder / "sub").mkdir()
    cat = Image.open(EXAMPLES / "chelsea_cat.jpg")
    shutil.copy(EXAMPLES / "coffee.jpg", folder / "coffee.jpg")
    cat.save(folder / "sub" / "cat.png")
    cat.convert("L").save(folder / "gray.png")
    rgba = cat.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    cat.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    cat.convert("CMYK").save(folder / "cmyk.jpg")
    sixteen = (np.asarray(cat.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "gray16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    cat.save(folder / "rotated.jpg", exif=exif)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is text, not an image")
    (folder / "truncated.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes()[:4000])
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return {"bad": ["empty.jpg", "notes.jpg", "truncated.jpg"]}


def test_run_folder_end_to_end(tmp_path):
    inputs = tmp_path / "in"
    make_inputs(inputs)
    out = tmp_path / "out"
    done = camloc_cli("run", inputs, "--out", out, "--topk", "3", "--panels", "--save-maps")
    assert done.returncode == 1, done.stderr  # some inputs failed
    assert "Traceback" not in done.stderr
    assert "8 done, 3 failed" in done.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 11
    by_name = {Path(r["image"]).name: r for r in records}
    for name in ("empty.jpg", "notes.jpg", "truncated.jpg"):
        assert by_name[name]["error"] and "\n" not in by_name[name]["error"]
        assert f"warning: skipped {inputs / name}" in done.stderr.replace("\n", "")
    good = [r for r in records if r["error"] is None]
    for record in good:
        assert len(record["predictions"]) >= 5
        assert [c["index"] for c in record["cams"]] == [p["index"] for p in record["predictions"][:3]]
        scores = [p["score"] for p in record["predictions"]]
        assert scores == sorted(scores, reverse=True)
        for cam in record["cams"]:
            for xmin, ymin, xmax, ymax in cam["boxes"]:
                assert 0 <= xmin < xmax <= record["width"] and 0 <= ymin < ymax <= record["height"]
        overlay = Image.open(out / record["outputs"]["overlay"])
        assert overlay.size == (record["width"], record["height"])
        assert Image.open(out / record["outputs"]["panels"]).width > 2 * record["width"]
        assert Image.open(out / record["outputs"]["grid"]).width > 2 * record["width"]
        maps = np.load(out / record["outputs"]["maps"])
        assert maps.shape == (3, record["height"], record["width"])
        assert 0.0 <= maps.min() and maps.max() == pytest.approx(1.0)
    # the cat is a cat in every colour mode; EXIF rotation swaps width and height
    cats = ["cat.png", "gray.png", "rgba.png", "palette.gif", "cmyk.jpg", "gray16.png", "rotated.jpg"]
    for name in cats:
        assert "cat" in by_name[name]["predictions"][0]["label"], (name, by_name[name]["predictions"][0])
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (300, 451)
    assert by_name["cat.png"]["outputs"]["overlay"] == "sub/cat_overlay.png"
    # the box of the cat, drawn in white, is where the map is hot
    cam = by_name["cat.png"]["cams"][0]
    maps = np.load(out / by_name["cat.png"]["outputs"]["maps"])
    xmin, ymin, xmax, ymax = cam["boxes"][0]
    assert maps[0, ymin:ymax, xmin:xmax].mean() > maps[0].mean()

    # resume: the good images are skipped, the failed ones retried
    again = camloc_cli("run", inputs, "--out", out, "--resume", "--topk", "3")
    assert again.returncode == 1
    assert "0 done, 3 failed, 8 skipped" in again.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 11 and sum(r["error"] is not None for r in records) == 3


def test_run_options_and_jpeg(tmp_path):
    out = tmp_path / "out"
    done = camloc_cli("run", EXAMPLES / "coffee.jpg", "--out", out, "--class", "cup", "--class", "967",
                      "--format", "jpg", "--policy", "center-crop", "--all-components", "--threshold", "0.5",
                      "--colormap", "viridis", "--alpha", "0.7")
    assert done.returncode == 0, done.stderr
    [record] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [c["label"] for c in record["cams"]] == ["cup", "espresso"]
    assert Image.open(out / record["outputs"]["overlay"]).format == "JPEG"
    ranked = camloc_cli("run", EXAMPLES / "coffee.jpg", "--out", tmp_path / "r", "--rank", "2")
    assert ranked.returncode == 0, ranked.stderr
    [record] = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert record["cams"][0]["index"] == record["predictions"][1]["index"]


@pytest.mark.parametrize("args, message", [
    (["run", EXAMPLES / "coffee.jpg", "--class", "tabbby"], "unknown class 'tabbby'"),
    (["run", "no/such/folder/*.jpg"], "no images found"),
    (["run", "no/such/file.jpg"], "no/such/file.jpg: no such file"),
    (["run", "{empty}"], "no images found"),
    (["run", EXAMPLES / "coffee.jpg", "--model", "resnt50"], "close matches: resnet50"),
    (["run", EXAMPLES / "coffee.jpg", "--colormap", "nope"], "unknown colormap"),
    (["run", EXAMPLES / "coffee.jpg", "--max-pixels", "1000"], "over the limit"),
    (["run", EXAMPLES / "coffee.jpg", "--threshold", "2"], "threshold must be in [0, 1]"),
])
def test_bad_arguments_give_one_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(a).replace("{empty}", str(tmp_path / "empty")) for a in args]
    done = camloc_cli(*args, "--out", tmp_path / "out")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert message in done.stderr.replace("\n", "")


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "camloc"
    assert script.exists()
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "run" in done.stdout


def test_outputs_get_the_permissions_of_ordinary_files(tmp_path):
    from camloc.jobs.files import write_atomic

    write_atomic(tmp_path / "atomic.bin", b"data")
    (tmp_path / "plain.bin").write_bytes(b"data")
    assert (tmp_path / "atomic.bin").stat().st_mode == (tmp_path / "plain.bin").stat().st_mode
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
