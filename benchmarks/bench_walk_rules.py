"""Box rules on plain CAM and on walkcam maps, for small objects: synthetic scenes with exact boxes.

    python benchmarks/bench_walk_rules.py [--train 50] [--test 40] [--seed 1] \
        [--photos DIR --boxes CSV] [--draws 200]

The scenes of ``bench_localization.py`` part 2 (1-3 shapes of one class, each 5-60% of the
frame, clutter, a texture background), a linear head trained on the frozen default
backbone's pooled features (as ``camloc train`` does by default), then each test scene's map
of its class: plain CAM (``--method cam``) and the same CAM walked over the features of
``blocks.4`` (``--method walkcam``, :func:`camloc.methods.feature_walk`). For each box rule,
the fraction of scenes whose largest-component box has IoU >= 0.5 with one of the shapes'
boxes, on each half of the test scenes (even / odd). The real-photo side of the same table
is ``camloc eval --method walkcam --threshold RULE`` on the two halves of a boxed folder
(docs/localization.md).

Then the stability of ``camloc eval --choose-rule`` on walked maps (the default): n boxed
scenes drawn from one half choose a rule among its short list
(:func:`camloc.evaluate.rules.best_rule`), which is scored on the other half, ``--draws``
times each way; with ``--photos DIR --boxes CSV`` the same for real photos, whose per-rule
IoUs come from :func:`camloc.evaluate.evaluate` with the default config, as the command
computes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_localization as scenes  # noqa: E402  (the scene generator and the rule sweep)

from camloc.config import ExplainConfig  # noqa: E402
from camloc.evaluate import evaluate  # noqa: E402
from camloc.evaluate.rules import SHORTLIST, best_rule, rule_ious, score_rules  # noqa: E402
from camloc.images import preprocess  # noqa: E402
from camloc.methods import feature_walk, guide_layer  # noqa: E402
from camloc.models import inference_mode, load_model  # noqa: E402

RULES = ("0.25", "0.35", "0.40", "0.50", "otsu", "mean*1")
MARGINS = (-1.0, 0.0, 0.05, 0.10)  # the chooser as it is (-1), or keeping Otsu unless beaten by this share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50, help="training scenes per class")
    parser.add_argument("--test", type=int, default=40, help="test scenes per class")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--photos", type=Path, default=None, help="a folder of photos with boxes (--boxes)")
    parser.add_argument("--boxes", type=Path, default=None, help="their ground truth (CSV, VOC or COCO)")
    parser.add_argument("--draws", type=int, default=200, help="draws of n scenes each way, for the chooser")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    train_images, _, train_labels = scenes.make_scenes(rng, args.train)
    test_images, test_boxes, test_labels = scenes.make_scenes(rng, args.test)
    head, _ = scenes.train_frozen_head(train_images, train_labels, args.seed)

    model = load_model(runtime="torch")  # dilated, as `camloc run --model CKPT` loads it
    size, layer = model.input_size[0], guide_layer(model)
    weight = head.weight.detach()
    cams, walked, geometries = [], [], []
    with inference_mode(model.model):
        for start in range(0, len(test_images), 32):
            chunk = [preprocess(im, size, "squash", model.mean, model.std) for im in test_images[start:start + 32]]
            _, features, guide = model.forward_with_guide(torch.stack([t for t, _ in chunk]), layer)
            cam = torch.einsum("nk,nkhw->nhw", weight[torch.tensor(test_labels[start:start + 32])], features)
            cams.append(cam)
            walked.append(feature_walk(cam[:, None], guide)[:, 0])
            geometries += [g for _, g in chunk]

    half = np.arange(len(test_boxes)) % 2
    print(f"{len(test_boxes)} test scenes ({args.test} per class), head trained on {len(train_images)}; "
          f"guide layer {layer}; boxes IoU >= 0.5, even / odd half\n")
    print("| map | " + " | ".join(RULES) + " |")
    print("|---|" + "---|" * len(RULES))
    for name, maps in (("cam", torch.cat(cams)), ("walkcam", torch.cat(walked))):
        normalized = [scenes.minmax(m) for m in scenes.upsample(maps, geometries)]
        hits = scenes.rule_ious(normalized, test_boxes, list(RULES)) >= 0.5
        print(f"| {name} | " + " | ".join(f"{hits[half == 0, i].mean():.3f} / {hits[half == 1, i].mean():.3f}"
                                         for i in range(len(RULES))) + " |")
    domains = {"small synthetic objects": rule_ious(
        [scenes.minmax(m) for m in scenes.upsample(torch.cat(walked), geometries)], test_boxes)}
    if args.photos is not None:
        result = evaluate(model, args.photos, args.boxes, ExplainConfig(), rules=SHORTLIST)
        domains["real photos"] = np.array([image.rule_ious for image in result.images])
    chooser_stability(domains, args.draws, np.random.default_rng(args.seed))


def chooser_stability(domains: dict[str, np.ndarray], draws: int, rng: np.random.Generator) -> None:
    """For each domain's ``(N, R)`` IoUs at the short list's rules: the rule chosen on n images of
    one half, scored on the other half (mean and 1-in-20 worst over the draws, both ways), and
    the best rule there."""
    print(f"\nwalked maps, rule chosen on n images of one half and scored on the other ({draws} draws each way;"
          " mean / 1-in-20 worst; best rule there)\n")
    print("| images with boxes | n = 10 | n = 25 | n = 50 | best rule | Otsu (the default) |")
    print("|---|---|---|---|---|---|")
    otsu_at = list(SHORTLIST).index("otsu")
    for domain, ious in domains.items():
        halves = (np.arange(0, len(ious), 2), np.arange(1, len(ious), 2))
        on_halves = [(ious[h] >= 0.5).mean(0) for h in halves]
        best = np.mean([h.max() for h in on_halves])
        otsu = np.mean([h[otsu_at] for h in on_halves])
        for margin in MARGINS:
            cells = []
            for count in (10, 25, 50):
                scores = []
                for source, target in (halves, halves[::-1]):
                    on_target = (ious[target] >= 0.5).mean(0)
                    for _ in range(draws):
                        sample = rng.choice(source, size=min(count, len(source)), replace=False)
                        scored = score_rules(ious[sample])
                        chosen = best_rule(scored)
                        if chosen.hits - scored[otsu_at].hits <= margin:
                            chosen = scored[otsu_at]
                        scores.append(on_target[list(SHORTLIST).index(chosen.rule)])
                cells.append(f"{np.mean(scores):.3f} / {np.percentile(scores, 5):.3f}")
            label = domain if margin < 0 else f"{domain}, Otsu kept unless beaten by > {margin:.0%}"
            print(f"| {label} | " + " | ".join(cells) + f" | {best:.3f} | {otsu:.3f} |", flush=True)


if __name__ == "__main__":
    main()
