"""Cost of the gradient methods against the plain forward pass and exact CAM, same run.

    PYTHONPATH=src python benchmarks/bench_gradcam.py [--model resnet18] [--batch 8] [--topk 3]

Prints seconds per batch and the ratio to one forward pass of the batch (no grad).
Random weights: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch

import camloc


def timed(call, repeats: int) -> float:
    call()  # warm up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scorecam", action="store_true", help="also time Score-CAM (slow)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = camloc.load_model(args.model, weights="random", device=device)
    x = torch.randn(args.batch, 3, *model.input_size, device=device)
    selection = camloc.ClassSelection(topk=args.topk)

    def forward():
        with torch.no_grad():
            model.model.eval()(x)

    base = timed(forward, args.repeats)
    print(f"{args.model} on {device}, batch {args.batch}, top-{args.topk}")
    print(f"{'forward (no grad)':>18}: {base * 1000:8.1f} ms   1.00x")
    names = (["cam"] if model.head_error is None else []) + ["gradcam", "gradcam++", "layercam"]
    names += ["scorecam"] if args.scorecam else []
    for name in names:
        method = camloc.get_method(name, model)
        seconds = timed(lambda method=method: method(x, selection), args.repeats)
        print(f"{name:>18}: {seconds * 1000:8.1f} ms  {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
