"""End to end: `camloc run` (overlays + results.jsonl written) vs a forward-only loop.

    python benchmarks/bench_run.py [--images 1000] [--batch 32] [--device cpu] [--memory 500,5000]

Both sides read the same JPEG folder with the same batch size and decoding threads
(``camloc.dataset.batches``, as `camloc run` decodes):
the baseline only decodes, preprocesses and runs the forward pass; camloc also computes
CAMs, boxes, renders an overlay per image and writes it with results.jsonl. Prints
images/s and the ratio. With --memory, also runs the `camloc run` command as a child
process over each count of images and reports its peak RSS (it must not grow with the
folder size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from timing import allocator_option, apply_allocator

import camloc
from camloc.dataset import batches
from camloc.images import stack_images
from camloc.jobs.local import RunOptions, run
from camloc.models import inference_mode, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, count: int) -> Path:
    """``count`` distinct JPEG photos: crops and sizes varied from the bundled photos."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sorted((ROOT / "examples" / "images").glob("*.jpg"))]
    existing = len(list(folder.glob("*.jpg")))
    for i in range(existing, count):
        image = sources[i % len(sources)]
        w, h = image.size
        f = 0.6 + 0.4 * ((i * 37) % 100) / 100
        left, top = int((w - w * f) * ((i * 13) % 10) / 10), int((h - h * f) * ((i * 7) % 10) / 10)
        crop = image.crop((left, top, left + int(w * f), top + int(h * f)))
        crop.resize((max(64, int(crop.width * 1.1)), max(64, int(crop.height * 1.1)))).save(
            folder / f"img{i:05d}.jpg", quality=90)
    return folder


def forward_only(model, paths, batch, workers, amp=False) -> float:
    """Images/s of decode + preprocess + forward (under bfloat16 autocast with ``amp``, as
    ``camloc run --amp``)."""
    start = time.perf_counter()
    with inference_mode(model.model), torch.autocast(model.device.type, torch.bfloat16, enabled=amp):
        for items in batches([Path(p) for p in paths], model, "squash", 80_000_000, model.input_size, batch, workers):
            x = stack_images([item.tensor for item in items]).to(model.device)
            model.model(x).cpu()
    return len(paths) / (time.perf_counter() - start)


def peak_rss_of_run(folder: Path, out: Path, device: str) -> float:
    """Peak RSS (MiB) of one `camloc run` child process, from its own rusage."""
    child = subprocess.Popen([sys.executable, "-m", "camloc.cli", "run", str(folder), "--out", str(out),
                              "--device", device], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"camloc run over {folder} exited with {child.returncode}")
    return usage.ru_maxrss / 1024  # MiB (ru_maxrss is in KiB on Linux)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--memory", default="", help="comma-separated image counts for the peak-RSS runs")
    parser.add_argument("--json", type=Path, default=None)
    allocator_option(parser)
    args = parser.parse_args()
    malloc = apply_allocator(args)
    print(f"allocator: {malloc}")
    scratch = Path(tempfile.mkdtemp(prefix="camloc-bench-"))
    try:
        folder = make_folder(scratch / "images", args.images)
        paths = sorted(folder.glob("*.jpg"))
        model = camloc.load_model(device=resolve_device(args.device))
        options = RunOptions.build(out=scratch / "out", batch_size=args.batch, workers=args.workers, amp=args.amp)
        workers = options.workers if options.workers is not None else min(4, os.cpu_count() or 1)
        forward_only(model, paths[: args.batch * 2], args.batch, 0, args.amp)  # warm up
        baseline = forward_only(model, paths, args.batch, workers, args.amp)
        summary = run(model, [str(folder)], options)
        camloc_rate = summary.done / summary.seconds
        report = {"device": str(model.device), "images": len(paths), "batch": args.batch, "workers": workers,
                  "threads": torch.get_num_threads(), "amp": args.amp, "forward_only_images_per_s": baseline,
                  "camloc_run_images_per_s": camloc_rate, "ratio": camloc_rate / baseline}
        print(f"{len(paths)} images, batch {args.batch}, {workers} workers, device {model.device}, "
              f"{torch.get_num_threads()} threads{', bfloat16 autocast (both sides)' if args.amp else ''}")
        print(f"forward-only loop : {baseline:8.1f} images/s")
        print(f"camloc run        : {camloc_rate:8.1f} images/s  (overlays + results.jsonl written)")
        print(f"ratio             : {camloc_rate / baseline:8.2f}")
        for count in [int(c) for c in args.memory.split(",") if c]:
            subset = make_folder(scratch / f"mem{count}", count)
            rss = peak_rss_of_run(subset, scratch / f"memout{count}", args.device)
            report[f"peak_rss_mib_{count}"] = rss
            print(f"peak RSS of `camloc run` over {count:5d} images: {rss:7.0f} MiB")
            shutil.rmtree(scratch / f"memout{count}", ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
