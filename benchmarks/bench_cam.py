"""CAM overhead over the forward pass, and against the naive notebook way.

Same model, same images, same batch, one run. Prints times and ratios:

    python benchmarks/bench_cam.py [--batch 1,8,32] [--model efficientnet_lite0] [--repeats 3] [--amp]

- forward:        the model's forward pass alone (no_grad)
- camloc top-1:   forward + camloc's CAM of the top class, resampled to each image's
                  original size, normalised, boxes and predictions (``camloc.pipeline.finish``:
                  what ``camloc.explain`` returns, without decoding)
- camloc top-5:   the same for the five most likely classes
- naive (Keras notebook): forward, then per image upsample the K feature channels to the
  input size (224x224, as the notebook did) and dot them with the class weights

``--amp`` runs every contender's network under bfloat16 autocast (``camloc run --amp``;
on CPUs with AMX or AVX512-BF16 that is 2-3x faster than float32).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import allocator_option, apply_allocator, best_times

import camloc
from camloc.images import load_image, preprocess
from camloc.methods import CAMMethod, ClassSelection
from camloc.models import inference_mode
from camloc.pipeline import finish

ROOT = Path(__file__).resolve().parents[1]


def load_batch(model, batch_size):
    paths = sorted((ROOT / "examples" / "images").glob("*.jpg"))
    images = [load_image(paths[i % len(paths)]) for i in range(batch_size)]
    tensors, geometries = zip(*(preprocess(im, model.input_size, "squash", model.mean, model.std) for im in images),
                              strict=True)
    return torch.stack(tensors), list(geometries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="32", help="batch sizes, comma-separated (1,8,32)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for every contender")
    allocator_option(parser)
    args = parser.parse_args()
    malloc = apply_allocator(args)
    print(f"allocator: {malloc}")
    model = camloc.load_model(args.model, weights=args.weights, device=args.device)
    reports = [measure(model, int(size), args.repeats, args.amp) for size in args.batch.split(",")]
    if args.json:
        args.json.write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))


def measure(model, batch_size: int, repeats: int, amp: bool = False) -> dict:
    batch, geometries = load_batch(model, batch_size)
    batch = batch.to(model.device)
    if model.device.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last)

    def forward():
        with inference_mode(model.model):
            model.model(batch)

    def camloc_cams(k):
        method = CAMMethod(model)

        def go():
            return finish(method(batch, ClassSelection(topk=k)), geometries, model)
        return go

    def naive():
        with inference_mode(model.model):
            logits, features = model.forward_with_features(batch)
            top = logits.argmax(1)
            weight = model.weight.detach()
            for i, geometry in enumerate(geometries):
                big = F.interpolate(features[i : i + 1], size=model.input_size, mode="bilinear", align_corners=False)
                cam = torch.einsum("k,khw->hw", weight[top[i]], big[0])
                F.interpolate(cam[None, None], size=geometry.original_size, mode="bilinear", align_corners=False)

    contenders = {"forward": forward, "camloc top-1": camloc_cams(1), "camloc top-5": camloc_cams(5),
                  "naive (notebook)": naive}
    if amp:
        contenders = {name: autocast(function, model.device.type) for name, function in contenders.items()}
    timings = best_times(list(contenders.values()), repeats)
    rows = {name: seconds for name, (seconds, _) in zip(contenders, timings, strict=True)}
    base = rows["forward"]
    print(f"model {model.name}, batch {batch_size}, device {model.device}, {torch.get_num_threads()} threads, "
          f"{'bfloat16 autocast, ' if amp else ''}images {geometries[0].original_size}... (original sizes vary)")
    print(f"{'':20s} {'seconds':>9s} {'× forward':>10s} {'overhead':>9s}")
    for name, seconds in rows.items():
        print(f"{name:20s} {seconds:9.4f} {seconds / base:10.3f} {100 * (seconds / base - 1):8.1f}%")
    print(f"naive / camloc top-1: {rows['naive (notebook)'] / rows['camloc top-1']:.1f}×\n")
    return {"model": model.name, "batch": batch_size, "device": str(model.device), "amp": amp, "seconds": rows}


def autocast(function, device_type: str):
    def go():
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return function()
    return go


if __name__ == "__main__":
    main()
