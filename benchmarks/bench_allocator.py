"""glibc's default malloc vs camloc's settings (camloc.allocator), on the forward pass and on
camloc's CAMs + finishing (top-5: resample, normalise, boxes) of one batch.

    python benchmarks/bench_allocator.py [--model efficientnet_lite0] [--batch 32] [--rounds 3]

The allocator is set when a process starts, so each side runs in child processes, the two
alternating round by round (a slow drift of a shared machine hits both alike); each child
reports its best of 3 calls, and the table keeps each side's best over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, resource
from camloc.allocator import tune_allocator
applied = tune_allocator()
sys.path.insert(0, {benchmarks!r})
import camloc
from bench_cam import load_batch
from camloc.methods import CAMMethod, ClassSelection
from camloc.pipeline import finish
from camloc.models import inference_mode
from timing import best_times
model = camloc.load_model({model!r}, weights={weights!r})
batch, geometries = load_batch(model, {batch})
method = CAMMethod(model)
def forward():
    with inference_mode(model.model):
        model.model(batch)
def cams():
    return finish(method(batch, ClassSelection(topk=5)), geometries, model)
(f, _), (c, _) = best_times([forward, cams], 3)
print(json.dumps({{"applied": applied, "forward": f, "cam_top5": c,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def child(tuned: bool, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env.pop("CAMLOC_MALLOC", None)
    if not tuned:
        env["CAMLOC_MALLOC"] = "default"
    code = CHILD.format(benchmarks=str(Path(__file__).resolve().parent), model=args.model,
                        weights=args.weights, batch=args.batch)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for side, tuned in (("glibc default", False), ("camloc.allocator", True)):
            result = child(tuned, args)
            kept = best.setdefault(side, result)
            for key in ("forward", "cam_top5"):
                kept[key] = min(kept[key], result[key])
            kept["max_rss_mib"] = max(kept["max_rss_mib"], result["max_rss_mib"])
    print(f"model {args.model or 'efficientnet_lite0'}, batch {args.batch}, best of {args.rounds} rounds")
    print(f"{'allocator':18s} {'forward s':>10s} {'CAM top-5 s':>12s} {'overhead':>9s} {'peak RSS':>9s}")
    for side, row in best.items():
        overhead = 100 * (row["cam_top5"] / row["forward"] - 1)
        print(f"{side:18s} {row['forward']:10.3f} {row['cam_top5']:12.3f} {overhead:8.1f}% "
              f"{row['max_rss_mib']:6.0f} MiB")
    default, tuned = best["glibc default"], best["camloc.allocator"]
    print(f"forward: default / tuned = {default['forward'] / tuned['forward']:.2f}×; "
          f"CAM top-5: {default['cam_top5'] / tuned['cam_top5']:.2f}×")
    if args.json:
        args.json.write_text(json.dumps(best, indent=2))


if __name__ == "__main__":
    main()
