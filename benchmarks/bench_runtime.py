"""`camloc run` per runtime: images/s, ratio to eager torch, top-1 and box agreement.

    python benchmarks/bench_runtime.py [--images DIR] [--batch 16] [--runtimes torch,onnxruntime,openvino,auto]
        [--earlier /tmp/earlier/src]

Every contender is the folder job behind `camloc run` (decoding in threads ahead of the model,
CAM, boxes, overlays and results.jsonl written) on the same photos, model (the default, dilated
as `camloc run` loads it) and batch size. Each contender runs in a process of its own
(``contender.py``: runtimes sharing a process share its thread pools, and one runtime's idle
threads slow another's), loaded once, and they take turns chunk by chunk, with a pause
before each turn (a runtime's threads spin for a while after their work) (``--chunk`` photos a
turn, so a shared machine's drift hits every contender alike). The baselines of the same run
are `--runtime torch` and an eager forward-only loop (decode, preprocess, forward). Besides
wall images/s (the job's own time, start-up excluded), the CPU time per image of each
contender's process and its children is printed: on a machine shared with other work it is
the steadier figure. `auto` is what `camloc run` uses by default: the row says which runtime
it chose. Agreement is against `--runtime torch` on every photo: identical top-1, and the IoU
of the top-1 box >= 0.9.

First, the forward pass alone (what the default method, walkcam, asks of the runtime: logits,
features and the guide layer) over one batch of the first photos, decoded once, each runtime
in turn for ``--repeats`` rounds after two warm-up rounds: best and median images/s and the ratio to
eager torch.

``--earlier SRC`` adds an earlier camloc as a contender: the ``src`` folder of a checkout of
the commit to compare with (``git worktree add /tmp/earlier COMMIT``, then
``--earlier /tmp/earlier/src``), with its own defaults (method, box rule, decoding), and the
default (``auto``) is also given as a ratio to it.
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

import numpy as np

from camloc.boxes import box_iou

ROOT = Path(__file__).resolve().parents[1]
DEV = Path("/work/shared/data/imagenet-val-dev/images")
SETTLE_S = 0.3  # a pause before each turn: the previous contender's threads stop spinning
WARM_UP_ROUNDS = 2  # eager torch (oneDNN) reaches its pace on its third call with a new shape


class Contender:
    """A ``contender.py`` process: one model, loaded once, answering requests in turn."""

    def __init__(self, name: str, workers: int | None, default_malloc: bool, earlier: Path | None):
        command = [sys.executable, str(Path(__file__).with_name("contender.py")), name]
        command += [] if workers is None else ["--workers", str(workers)]
        command += ["--default-malloc"] if default_malloc else []
        env = {**os.environ, "PYTHONPATH": str(earlier)} if name == "earlier" else None
        self.name = name
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.runtime = self._answer()["runtime"]

    def ask(self, **request) -> dict:
        assert self.process.stdin is not None
        time.sleep(SETTLE_S)
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def _answer(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"contender {self.name} ended (exit status {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


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


def forward_alone(contenders: dict[str, Contender], paths: list[str], batch: int, repeats: int) -> str:
    """The forward pass alone of each runtime, round-robin: one line of images/s and ratios."""
    runtimes = [c for name, c in contenders.items() if name not in ("earlier", "forward-only")]
    seconds: dict[str, list[float]] = {c.name: [] for c in runtimes}
    for round_ in range(WARM_UP_ROUNDS + repeats):
        for contender in runtimes:
            answer = contender.ask(forward=paths[:batch], batch=batch)
            if round_ >= WARM_UP_ROUNDS:
                seconds[contender.name].append(answer["seconds"])
    best, median = min(seconds["torch"]), float(np.median(seconds["torch"]))
    return f"forward pass alone, batch {batch} (images/s best / median, x eager torch): " + ", ".join(
        f"{name} {batch / min(times):.1f} / {batch / np.median(times):.1f} "
        f"({best / min(times):.2f}x / {median / np.median(times):.2f}x)" for name, times in seconds.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEV if DEV.is_dir() else ROOT / "examples" / "images")
    parser.add_argument("--batch", default="16", help="batch sizes, comma-separated")
    parser.add_argument("--runtimes", default="torch,onnxruntime,openvino,auto")
    parser.add_argument("--chunk", type=int, default=60, help="photos per turn of the round-robin")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=8, help="rounds of the forward-alone timing")
    parser.add_argument("--earlier", type=Path, default=None,
                        help="src folder of an earlier camloc checkout, run as a contender")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (the camloc command tunes it: camloc.allocator)")
    args = parser.parse_args()
    paths = sorted(str(p) for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    runtimes = args.runtimes.split(",")
    if "torch" not in runtimes:
        runtimes.insert(0, "torch")
    names = [*runtimes, *(["earlier"] if args.earlier else []), "forward-only"]
    contenders = {name: Contender(name, args.workers, args.default_malloc, args.earlier) for name in names}
    chose = f"; auto chose {contenders['auto'].runtime}" if "auto" in contenders else ""
    malloc = "glibc default" if args.default_malloc else "tuned as the camloc command tunes it"
    print(f"{os.cpu_count()} cores; allocator {malloc}; one process per contender{chose}")
    scratch = Path(tempfile.mkdtemp(prefix="camloc-bench-runtime-"))
    table, versus_earlier = [], []
    chunks = [paths[i : i + args.chunk] for i in range(0, len(paths), args.chunk)]
    try:
        for batch in [int(b) for b in args.batch.split(",")]:
            print(forward_alone(contenders, paths, batch, args.repeats), flush=True)
            seconds, cpu, done = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
            results: dict[str, dict] = {name: {} for name in names if name != "forward-only"}
            # chunk by chunk, every contender in turn: the machine's drift hits all alike
            for index, chunk in enumerate(chunks):
                for name, contender in contenders.items():
                    out = scratch / f"{name}-{batch}-{index}"
                    answer = contender.ask(run=chunk, out=str(out), batch=batch)
                    seconds[name] += answer["seconds"]
                    cpu[name] += answer["cpu"]
                    done[name] += answer["done"]
                    if name in results:
                        results[name].update(records(out))
                    shutil.rmtree(out, ignore_errors=True)
                print(f"  batch {batch}, {sum(map(len, chunks[: index + 1]))} photos: " + ", ".join(
                    f"{name} {done[name] / seconds[name]:.2f} images/s ({cpu[name] / done[name]:.3f} CPU s/image)"
                    for name in names), flush=True)
            rate = {name: done[name] / seconds[name] for name in names}
            for name in names:
                top1, boxes = agreement(results["torch"], results[name]) if name in results else (None, None)
                label = {"auto": f"auto ({contenders[name].runtime})",
                         "earlier": f"earlier camloc ({args.earlier})"}.get(name, name)
                per_image = cpu[name] / done[name]
                table.append((label, batch, rate[name], rate[name] / rate["torch"], per_image,
                              (cpu["torch"] / done["torch"]) / per_image, top1, boxes))
            if "earlier" in rate and "auto" in rate:
                versus_earlier.append(f"batch {batch}: the default (auto) runs {rate['auto'] / rate['earlier']:.2f}x "
                                      f"the earlier camloc's images/s")
    finally:
        for contender in contenders.values():
            contender.close()
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
