"""The cost of the dilated last stage: forward pass of the network as trained vs dilated.

    python benchmarks/bench_dilate.py [--model efficientnet_lite0] [--batch 32] [--device cpu]

Same weights, same random batch, best of 5; prints the feature grid of each and the ratio.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch
from timing import allocator_option, apply_allocator, best_times

import camloc
from camloc.models import inference_mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    allocator_option(parser)
    args = parser.parse_args()
    malloc = apply_allocator(args)
    print(f"allocator: {malloc}")
    report = {"batch": args.batch, "device": args.device}
    for dilate in (False, True):
        adapter = camloc.load_model(args.model, weights=args.weights, device=args.device, dilate=dilate)
        batch = torch.randn(args.batch, 3, *adapter.input_size, device=adapter.device)
        with inference_mode(adapter.model):
            grid = tuple(adapter.forward_with_features(batch[:1])[1].shape[-2:])
            [(seconds, _)] = best_times([partial(adapter.model, batch)], repeats=5)
        key = "dilated" if adapter.dilated else "as_trained"
        report[key] = {"seconds": seconds, "grid": grid}
        print(f"{adapter.name} {key:10s} grid {grid[0]}x{grid[1]}  forward {seconds * 1000:8.1f} ms")
    if "dilated" in report:
        ratio = report["dilated"]["seconds"] / report["as_trained"]["seconds"]
        report["ratio"] = ratio
        print(f"dilated / as trained: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
