"""`camloc run` per runtime: images/s, ratio to eager torch, top-1 and box agreement.

    python benchmarks/bench_runtime.py [--images DIR] [--batch 16] [--runtimes torch,onnxruntime,openvino]

Every contender is the folder job behind `camloc run` (decode in threads ahead of the model, CAM,
boxes, overlays and results.jsonl written) on the same photos, model (the default, dilated
as `camloc run` loads it) and batch size, run round-robin chunk by chunk (``--chunk`` photos
a turn, so a shared machine's drift hits every contender alike); the baselines of the same run
are `--runtime torch` (today's `camloc run`) and an eager forward-only loop (decode,
preprocess, forward). Besides wall images/s, the CPU time per image (this process and
its decoding workers) is printed: on a machine shared with other work it is the steadier
figure (an idle machine's images/s is about cores / CPU seconds per image). `auto` is what
`camloc run` uses by default: the row says which runtime it chose. Agreement is against
`--runtime torch` on every photo: identical top-1, and the IoU of the top-1 box >= 0.9.

``--earlier SRC`` adds an earlier camloc as a contender: the ``src`` folder of a checkout of
the commit to compare with (``git worktree add /tmp/earlier COMMIT``, then
``--earlier /tmp/earlier/src``). Its `camloc run` runs in a child process over the same
chunks with the same batch size (start-up not counted: the rate is the one it prints for
its job; its CPU time includes its start-up), and the default (``auto``) is also given as
a ratio to it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import allocator_option, apply_allocator

import camloc
from camloc.boxes import box_iou
from camloc.jobs.local import RunOptions, run

ROOT = Path(__file__).resolve().parents[1]
DEV = Path("/work/shared/data/imagenet-val-dev/images")
sys.path.insert(0, str(Path(__file__).parent))
from bench_run import forward_only  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (decoding workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def records(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {Path(r["image"]).name: r for r in map(json.loads, lines)}


def agreement(reference: dict[str, dict], other: dict[str, dict]) -> tuple[float, float]:
    same_top1 = good_boxes = 0
    for name, ref in reference.items():
        got = other[name]
        same_top1 += ref["predictions"][0]["index"] == got["predictions"][0]["index"]
        a, b = ref["cams"][0]["boxes"], got["cams"][0]["boxes"]
        good_boxes += bool(a and b and box_iou(a[0], b[0]) >= 0.9) or (not a and not b)
    return same_top1 / len(reference), good_boxes / len(reference)


def earlier_run(src: Path, chunk: list[Path], out: Path, batch: int) -> float:
    """Seconds of an earlier camloc's `camloc run` job over ``chunk`` (its own printed rate)."""
    folder = out.with_name(out.name + "-in")
    folder.mkdir(parents=True)
    for path in chunk:
        (folder / path.name).symlink_to(path.resolve())
    command = [sys.executable, "-c", "import sys; sys.argv[0] = 'camloc'; from camloc.cli import main; main()",
               "run", str(folder), "--out", str(out), "--batch-size", str(batch)]
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)
    shutil.rmtree(folder)
    match = re.search(r"(\d+) done.*\(([\d.]+) images/s\)", done.stdout + done.stderr)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"the earlier camloc failed on a chunk:\n{done.stderr[-2000:]}")
    return int(match[1]) / float(match[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEV if DEV.is_dir() else ROOT / "examples" / "images")
    parser.add_argument("--batch", default="16", help="batch sizes, comma-separated")
    parser.add_argument("--runtimes", default="torch,onnxruntime,openvino,auto")
    parser.add_argument("--chunk", type=int, default=60, help="photos per turn of the round-robin")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--earlier", type=Path, default=None,
                        help="src folder of an earlier camloc checkout, run as a contender")
    allocator_option(parser)
    args = parser.parse_args()
    print(f"allocator: {apply_allocator(args)}; {torch.get_num_threads()} threads; {os.cpu_count()} cores")
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    runtimes = args.runtimes.split(",")
    if "torch" not in runtimes:
        runtimes.insert(0, "torch")
    started = time.perf_counter()
    models = {name: camloc.load_model(dilate=True, runtime=name, log=print) for name in runtimes}
    chose = f"; auto chose {models['auto'].runtime}" if "auto" in models else ""
    print(f"loaded {len(models)} models in {time.perf_counter() - started:.1f}s{chose}")
    scratch = Path(tempfile.mkdtemp(prefix="camloc-bench-runtime-"))
    table = []
    versus_earlier = []
    chunks = [paths[i : i + args.chunk] for i in range(0, len(paths), args.chunk)]
    contenders = [*runtimes, *(["earlier"] if args.earlier else []), "forward-only"]
    try:
        for batch in [int(b) for b in args.batch.split(",")]:
            seconds = dict.fromkeys(contenders, 0.0)
            cpu = dict.fromkeys(contenders, 0.0)
            done = dict.fromkeys(contenders, 0)
            results: dict[str, dict] = {name: {} for name in contenders if name != "forward-only"}
            # chunk by chunk, every contender in turn: the machine's drift hits all alike
            for index, chunk in enumerate(chunks):
                for name in contenders:
                    cpu_before = cpu_seconds()
                    if name == "forward-only":
                        rate = forward_only(models["torch"], chunk, batch, args.workers)  # decoded as camloc run
                        seconds[name] += len(chunk) / rate
                        done[name] += len(chunk)
                    elif name == "earlier":
                        out = scratch / f"{name}-{batch}-{index}"
                        seconds[name] += earlier_run(args.earlier, chunk, out, batch)
                        done[name] += len(chunk)
                        results[name].update(records(out))
                        shutil.rmtree(out, ignore_errors=True)
                    else:
                        out = scratch / f"{name}-{batch}-{index}"
                        options = RunOptions.build(out=out, batch_size=batch, workers=args.workers)
                        summary = run(models[name], [str(p) for p in chunk], options)
                        seconds[name] += summary.seconds
                        done[name] += summary.done
                        results[name].update(records(out))
                        shutil.rmtree(out, ignore_errors=True)
                    cpu[name] += cpu_seconds() - cpu_before
                print(f"  batch {batch}, {sum(map(len, chunks[: index + 1]))} photos: " + ", ".join(
                    f"{name} {done[name] / seconds[name]:.2f} images/s ({cpu[name] / done[name]:.3f} CPU s/image)"
                    for name in contenders), flush=True)
            rate = {name: done[name] / seconds[name] for name in contenders}
            for name in contenders:
                top1, boxes = agreement(results["torch"], results[name]) if name in results else (None, None)
                label = f"auto ({models['auto'].runtime})" if name == "auto" else name
                label = f"earlier camloc ({args.earlier})" if name == "earlier" else label
                per_image = cpu[name] / done[name]
                table.append((label, batch, rate[name], rate[name] / rate["torch"], per_image,
                              (cpu["torch"] / done["torch"]) / per_image, top1, boxes))
            if "earlier" in rate and "auto" in rate:
                versus_earlier.append(f"batch {batch}: the default (auto) runs {rate['auto'] / rate['earlier']:.2f}x "
                                      f"the earlier camloc's images/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{len(paths)} photos from {args.images}; `camloc run` job (overlays + results.jsonl), "
          "agreement vs --runtime torch")
    print("| runtime | batch | images/s | × torch | CPU s / image | × torch (CPU) | top-1 agreement | "
          "boxes IoU ≥ 0.9 |\n|---|---|---|---|---|---|---|---|")
    for label, batch, rate, ratio, per_image, cpu_ratio, top1, boxes in table:
        fmt = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        print(f"| {label} | {batch} | {rate:.2f} | {ratio:.2f} | {per_image:.3f} | {cpu_ratio:.2f} | "
              f"{fmt(top1)} | {fmt(boxes)} |")
    for line in versus_earlier:
        print(line)

if __name__ == "__main__":
    main()
