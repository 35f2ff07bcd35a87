"""Memory layout: the model in PyTorch's default (NCHW, "contiguous") layout vs channels_last,
as ``load_model`` and ``ClassifierAdapter.to`` now lay it out on every device.

    python benchmarks/bench_layout.py [--model efficientnet_lite0] [--batch 1,8,32] [--repeats 4]
                                      [--train 16] [--json out.json]

Same model, same weights, same images (the bundled photos, cropped as camloc does): the
forward pass alone, and camloc's top-5 CAMs with finishing (resample to original size,
normalise, boxes), timed round-robin within the run; ``--train N`` adds one training step
(forward + backward through the whole network) on N images. The two layouts' logits are
checked equal to float tolerance before anything is timed.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from bench_cam import load_batch
from timing import allocator_option, apply_allocator, best_times

import camloc
from camloc.methods import CAMMethod, ClassSelection
from camloc.models import inference_mode
from camloc.pipeline import finish


def layouts(model: camloc.ClassifierAdapter) -> dict[str, camloc.ClassifierAdapter]:
    """The model twice: as PyTorch builds it and as camloc lays it out."""
    plain = copy.deepcopy(model)
    plain.model.to(memory_format=torch.contiguous_format)
    fast = copy.deepcopy(model)
    fast.model.to(memory_format=torch.channels_last)
    return {"contiguous": plain, "channels_last": fast}


def measure(models: dict, batch_size: int, repeats: int) -> dict:
    first = next(iter(models.values()))
    batch, geometries = load_batch(first, batch_size)
    logits = {}
    for name, model in models.items():
        with inference_mode(model.model):
            logits[name] = model.model(batch)
    difference = (logits["contiguous"] - logits["channels_last"]).abs().max().item()
    scale = logits["contiguous"].abs().max().item()
    if difference > 1e-4 * max(scale, 1.0):
        raise SystemExit(f"layouts disagree: max logit difference {difference:.2e}")

    def forward(model):
        def go():
            with inference_mode(model.model):
                model.model(batch)
        return go

    def cams(model):
        method = CAMMethod(model)
        return lambda: finish(method(batch, ClassSelection(topk=5)), geometries, model)

    contenders = [make(model) for make in (forward, cams) for model in models.values()]
    (f_plain, _), (f_fast, _), (c_plain, _), (c_fast, _) = best_times(contenders, repeats)
    return {"batch": batch_size, "max_logit_difference": difference,
            "forward_contiguous_s": f_plain, "forward_channels_last_s": f_fast,
            "forward_speedup": f_plain / f_fast,
            "cam_top5_contiguous_s": c_plain, "cam_top5_channels_last_s": c_fast,
            "cam_top5_speedup": c_plain / c_fast}


def measure_training(models: dict, batch_size: int, repeats: int) -> dict:
    batch, _ = load_batch(next(iter(models.values())), batch_size)

    def step(model):
        network = model.model

        def go():
            network.train()
            network.zero_grad(set_to_none=True)
            with torch.enable_grad():
                network(batch).logsumexp(dim=1).sum().backward()
            network.eval()
        for parameter in network.parameters():
            parameter.requires_grad_(True)
        return go

    (plain, _), (fast, _) = best_times([step(m) for m in models.values()], repeats)
    return {"batch": batch_size, "train_step_contiguous_s": plain,
            "train_step_channels_last_s": fast, "train_step_speedup": plain / fast}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="'random' for untrained weights")
    parser.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--train", type=int, default=0, help="also time a training step of N images")
    parser.add_argument("--json", type=Path)
    allocator_option(parser)
    args = parser.parse_args()
    print(f"allocator: {apply_allocator(args)}; threads: {torch.get_num_threads()}")
    models = layouts(camloc.load_model(args.model, weights=args.weights))
    print(f"{'batch':>5} {'forward NCHW':>13} {'channels_last':>14} {'×':>6} "
          f"{'CAM top-5 NCHW':>15} {'channels_last':>14} {'×':>6}")
    reports = []
    for size in args.batch.split(","):
        report = measure(models, int(size), args.repeats)
        reports.append(report)
        print(f"{report['batch']:>5} {report['forward_contiguous_s'] * 1e3:>10.1f} ms "
              f"{report['forward_channels_last_s'] * 1e3:>11.1f} ms {report['forward_speedup']:>5.2f}× "
              f"{report['cam_top5_contiguous_s'] * 1e3:>12.1f} ms "
              f"{report['cam_top5_channels_last_s'] * 1e3:>11.1f} ms {report['cam_top5_speedup']:>5.2f}×",
              flush=True)
    if args.train:
        report = measure_training(models, args.train, max(2, args.repeats // 2))
        reports.append(report)
        print(f"training step, batch {args.train}: NCHW {report['train_step_contiguous_s']:.2f} s, "
              f"channels_last {report['train_step_channels_last_s']:.2f} s, "
              f"{report['train_step_speedup']:.2f}×")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "results": reports}, indent=2))


if __name__ == "__main__":
    main()
