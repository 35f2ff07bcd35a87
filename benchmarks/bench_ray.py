"""Images/s of the local runner vs the Ray engine (1 and 2 workers) over the same images.

    python benchmarks/bench_ray.py                       # 1,000 images made in /tmp
    python benchmarks/bench_ray.py --count 200 --engines local,ray1

The images are the repository's example photos, rescaled (0.5-1.0) and mirrored so no two
files are the same; they are written once to ``--images`` and reused. Each engine writes
overlays and results.jsonl to its own temporary folder. Figures are wall time of the
whole ``run()`` call, Ray's start-up included, and the Ray start-up alone is reported
beside them (time from the call to the first record). On a shared machine wall time
depends on the other processes; the CPU seconds per image (this process and all its
descendants: Ray's GCS, raylet and workers, read from /proc when the last record arrives)
depend much less on them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

import camloc
from camloc.jobs.local import RunOptions
from camloc.jobs.local import run as run_local

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


def make_images(folder: Path, count: int) -> list[Path]:
    """``count`` distinct JPEGs made from the example photos (kept if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    sources = [Image.open(path).convert("RGB") for path in sorted(EXAMPLES.glob("*.jpg"))]
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        scale = 0.5 + 0.5 * ((i * 37) % 100) / 100
        size = (max(32, round(image.width * scale)), max(32, round(image.height * scale)))
        picture = image.resize(size, Image.Resampling.BILINEAR)
        if (i // len(sources)) % 2:
            picture = ImageOps.mirror(picture)
        path = folder / f"img{i:05d}.jpg"
        picture.save(path, quality=90)
        paths.append(path)
    return paths


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system, own + reaped children) of ``root`` and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = sum(int(value) for value in fields[11:15]) / tick
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(child for child, parent in parents.items() if parent == pid)
    return total


def timed(engine: str, model, folder: Path, batch_size: int, count: int):
    """(seconds, seconds to first record, CPU seconds, images done) of one run."""
    out = Path(tempfile.mkdtemp(prefix=f"camloc-bench-{engine}-"))
    options = RunOptions.build(out=out, batch_size=batch_size)
    first: list[float] = []
    cpu: list[float] = []
    seen = [0]
    started, cpu_before = time.perf_counter(), tree_cpu_seconds(os.getpid())

    def on_image(record: dict) -> None:
        if not first:
            first.append(time.perf_counter() - started)
        seen[0] += 1
        if seen[0] == count:  # before Ray shuts its workers down
            cpu.append(tree_cpu_seconds(os.getpid()) - cpu_before)

    try:
        if engine.startswith("local"):
            # "local1": torch on one thread, as in each Ray actor (RayOptions.cpus_per_actor)
            threads = torch.get_num_threads()
            torch.set_num_threads(1 if engine == "local1" else threads)
            try:
                summary = run_local(model, [str(folder)], options, on_image=on_image)
            finally:
                torch.set_num_threads(threads)
        else:
            from camloc.jobs.ray import RayOptions
            from camloc.jobs.ray import run as run_ray

            # "ray2": 2 actors; "ray2s": 2 actors, loading in separate tasks (not fused)
            workers = int(engine.removeprefix("ray").removesuffix("s"))
            load_cpus = 0.5 if engine.endswith("s") else None
            summary = run_ray(model, [str(folder)], options,
                              RayOptions(workers=workers, load_cpus=load_cpus),
                              device="cpu", on_image=on_image)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    seconds = time.perf_counter() - started
    nan = float("nan")
    return seconds, first[0] if first else nan, cpu[0] if cpu else nan, summary.done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path,
                        default=Path(tempfile.gettempdir()) / "camloc-bench-1000")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--engines", default="local,ray1,ray2")
    args = parser.parse_args()
    make_images(args.images, args.count)
    folder = args.images
    model = camloc.load_model(device="cpu")
    print(f"{args.count} images in {folder}, batch {args.batch_size}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    baseline = None
    for engine in args.engines.split(","):
        seconds, first, cpu, done = timed(engine, model, folder, args.batch_size, args.count)
        rate = done / seconds
        baseline = baseline or rate
        steady = (done - 1) / (seconds - first)  # after the start-up
        print(f"{engine:>6}: {done} images in {seconds:6.1f}s = {rate:5.2f} images/s "
              f"({rate / baseline:.2f}x the first), first record after {first:5.1f}s, "
              f"then {steady:5.2f} images/s, "
              f"{1000 * cpu / done:.0f} CPU ms/image, load average {os.getloadavg()[0]:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
