"""camloc against TorchCAM and pytorch-grad-cam: same maps, then times.

    python benchmarks/bench_peers.py [--model resnet18] [--batch 32] [--size 224] [--device cuda] [--scorecam]

Same model (random weights, or the trained default with ``--model efficientnet_lite0``),
same SIZExSIZE images (the bundled photos squashed to SIZE, taken as the originals, so every
map ends at that resolution), same batch, top-1 class, last stage as target layer.
``--batch 1 --size 32`` shows each implementation's fixed cost per call (hooks,
bookkeeping, kernel launches), which is what a GPU's batch 32 mostly measures. Each map
set is checked equal to camloc's after the same normalisation (ReLU, min-max) before the
times are compared. Peers are a benchmark extra (`pip install --group bench`), not
run-time dependencies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from timing import allocator_option, apply_allocator, best_times

import camloc
from camloc.images import maps_to_original_batch, preprocess
from camloc.methods import ClassSelection, ScoreCAM, get_method

ROOT = Path(__file__).resolve().parents[1]


def relu_minmax(maps: torch.Tensor) -> torch.Tensor:
    shape = maps.shape
    maps = maps.float().clamp_min(0).flatten(1)
    low, high = maps.amin(1, keepdim=True), maps.amax(1, keepdim=True)
    return ((maps - low) / (high - low).clamp_min(1e-8)).view(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18",
                        help="a timm/torchvision name (random weights), or efficientnet_lite0 (the embedded, "
                             "trained default: real activations, so Score-CAM meets its blank channels)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="side of the (square) images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scorecam", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    allocator_option(parser)
    args = parser.parse_args()
    malloc = apply_allocator(args)
    print(f"allocator: {malloc}")
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from pytorch_grad_cam import ScoreCAM as PgcScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import CAM as TcCAM
    from torchcam.methods import GradCAM as TcGradCAM
    from torchcam.methods import ScoreCAM as TcScoreCAM

    trained = args.model == "efficientnet_lite0"
    adapter = camloc.load_model(args.model, weights=None if trained else "random", device=args.device)
    net, layer, size = adapter.model.eval(), adapter.feature_layer, args.size
    classifier = next(name for name, module in net.named_modules() if getattr(module, "weight", None) is adapter.weight)
    paths = sorted((ROOT / "examples" / "images").glob("*.jpg"))
    images = [Image.open(paths[i % len(paths)]).convert("RGB").resize((size, size)) for i in range(args.batch)]
    tensors, geometries = zip(*(preprocess(im, size, "squash", adapter.mean, adapter.std) for im in images),
                              strict=True)
    batch = torch.stack(tensors).to(adapter.device)
    with torch.no_grad():
        classes = net(batch).argmax(1).tolist()

    def camloc_maps(name, **settings):
        method = get_method(name, adapter)
        for key, value in settings.items():
            setattr(method, key, value)

        def go():
            out = method(batch, ClassSelection(topk=1))
            return torch.stack(maps_to_original_batch(out.maps, list(geometries)))[:, 0]
        return go

    def torchcam_maps(kind, **kw):
        def go():
            with kind(net, target_layer=layer, **kw) as extractor:
                with torch.set_grad_enabled(kind is not TcCAM and kind is not TcScoreCAM):
                    scores = net(batch)
                [maps] = extractor(classes, scores)
            return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        return go

    def pgc_maps(kind, batch_size=None):
        target_layer = adapter.module(layer)

        def go():
            with kind(model=net, target_layers=[target_layer]) as extractor:
                if batch_size is not None:
                    extractor.batch_size = batch_size  # Score-CAM's masked images per forward
                return torch.from_numpy(extractor(batch, [ClassifierOutputTarget(c) for c in classes]))
        return go

    runs = {"cam": [("camloc", camloc_maps("cam")), ("torchcam", torchcam_maps(TcCAM, fc_layer=classifier))],
            "gradcam": [("camloc", camloc_maps("gradcam")), ("torchcam", torchcam_maps(TcGradCAM)),
                        ("pytorch-grad-cam", pgc_maps(PgcGradCAM))]}
    if args.scorecam:  # all three with the chunks camloc picks for the device
        chunk = ScoreCAM(adapter).chunk_size(batch)
        runs["scorecam"] = [("camloc", camloc_maps("scorecam", batch_size=chunk)),
                            ("torchcam", torchcam_maps(TcScoreCAM, batch_size=chunk)),
                            ("pytorch-grad-cam", pgc_maps(PgcScoreCAM, chunk))]
    report = {"model": args.model, "batch": args.batch, "size": size, "device": str(adapter.device)}
    print(f"{args.model} ({'trained' if trained else 'random'} weights), batch {args.batch}, {size}x{size}, "
          f"device {adapter.device}")
    print(f"{'method':10s} {'implementation':18s} {'ms':>10s} {'× camloc':>9s} {'max |Δ| vs camloc':>18s}")
    def forward_only():
        with torch.no_grad():
            return net(batch)

    forward_seconds = best_times([forward_only], repeats=args.repeats)[0][0]
    report["forward_seconds"] = forward_seconds
    print(f"{'forward':10s} {'(no maps)':18s} {forward_seconds * 1e3:10.3f}")
    for method, contenders in runs.items():
        reference = None
        timings = best_times([function for _, function in contenders],
                             repeats=1 if method == "scorecam" else args.repeats)
        for (name, _), (seconds, maps) in zip(contenders, timings, strict=True):
            maps = relu_minmax(maps.detach().cpu())
            if reference is None:
                reference, camloc_seconds, diff = maps, seconds, 0.0
            else:
                diff = float((maps - reference).abs().max())
            report[f"{method}/{name}"] = {"seconds": seconds, "max_abs_diff": diff}
            print(f"{method:10s} {name:18s} {seconds * 1e3:10.3f} {seconds / camloc_seconds:9.2f} {diff:18.2e}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
