"""Training-free refinements of camloc's default CAM, on two halves of a boxed folder.

    python benchmarks/bench_refine.py --images DIR/images --boxes DIR/boxes.csv \
        --cache /tmp/loc-cache-refine [--bootstrap 1000] [--jitter] [--splits 100] [--grid] \
        [--markdown tables.md]

Same protocol as ``bench_localization.py`` (whose helpers it reuses): the images are split into
even / odd positions of the sorted list; every free constant of a family (and the box
threshold τ) is chosen on one half, the figures are reported on the other, both ways round,
with bootstrap 95% intervals and paired intervals of the difference to camloc's default
(EfficientNet-Lite0 with the last stage dilated, 14×14 maps, bilinear, min-max, τ 0.25). A
family's constants are chosen by MaxBoxAccV2 on the other half, then τ by GT-known loc there.
The pooled row joins the two cross-fitted halves (each half with the constants of the other).

Families (``m`` the class's CAM at feature resolution, ``f`` a layer's features there):

* ``rw <layer>``: random walk with the frozen network's own affinities,
  ``a_ij = max(cos(f_i, f_j), 0)^β`` for grid cells within Chebyshev distance ``r`` (or all),
  ``a_ii = 1``, ``T = D⁻¹A`` (rows summing to one), refined map ``Tᵗ m``; layers ``head`` (the
  1280 channels the CAM is made of), ``b6`` (320, before the 1×1 head convolution), ``b4``
  (112, 14×14: the input of the dilated last stages) and ``b2`` (40, 28×28: ``m`` is first
  resampled bilinearly to that grid). Grid: β 1/4/16, r 2 (4 on the 28 grid) or all, t 2/8.
* ``guided grey`` / ``guided rgb``: the bilinear min-max map at image pixels filtered by a guided
  filter (He et al. 2010) with the photo (grey level, or the three channels) as guide, box
  radius ``ρ`` pixels and regulariser ``ε``, then min-max again.
* ``softmax contrast``: ``m_c − λ Σ_k p_k m_k`` with ``p = softmax(logits)`` (``λ = 1``: the map
  of ``∂ log p_c / ∂ features`` · features, as one weight vector ``W_c − Σ_k p_k W_k``).
* ``jitter`` (``--jitter``): the input also shifted by half a cell (8 px) right, down and
  both; each map resampled to the input grid, shifted back, averaged (4 forward passes).

Costs are the extra milliseconds per image on one thread, next to the forward's, in the same run.
The forward passes with the intermediate features are cached under ``--cache``.
``--grid`` prints every candidate on each half (to judge robustness, not to choose);
``--splits N`` reruns the choose-on-one-fold protocol on N random 2-fold splits. On 2 shared
cores the whole run takes ~10 minutes (each candidate's τ sweep ~10 s for 298 photos).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_localization import (  # noqa: E402
    DEFAULT_TAU,
    DELTAS,
    IOU,
    Boot,
    Variant,
    cached,
    ci,
    mba,
    minmax,
    read_items,
    tau_index,
    tensors_of,
    upsample,
)

from camloc.evaluate.metrics import sweep_thresholds  # noqa: E402
from camloc.images import load_image  # noqa: E402
from camloc.models import inference_mode, load_model  # noqa: E402

TAPS = {"b2": "blocks.2", "b4": "blocks.4", "b6": "blocks.6"}


# =========================================================================== forward passes


def forward_features(adapter, tensors: list[torch.Tensor], batch: int = 16) -> dict:
    """Logits, head features (the CAM's) and the taps' outputs (float16), and the seconds of
    the plain forward (forward + einsum of the class's CAM, as camloc does)."""
    out = {"logits": [], "head": [], **{k: [] for k in TAPS}}
    captured: dict[str, torch.Tensor] = {}
    hooks = [adapter.module(name).register_forward_hook(
        lambda mod, i, o, k=key: captured.__setitem__(k, o)) for key, name in TAPS.items()]
    seconds = 0.0
    try:
        for start in range(0, len(tensors), batch):
            x = torch.stack(tensors[start:start + batch]).contiguous(memory_format=torch.channels_last)
            with inference_mode(adapter.model):
                started = time.perf_counter()
                logits, features = adapter.forward_with_features(x)
                torch.einsum("nk,nkhw->nhw", adapter.weight[logits.argmax(1)], features)
                seconds += time.perf_counter() - started
            out["logits"].append(logits.float())
            out["head"].append(features.half())
            for k in TAPS:
                out[k].append(captured[k].half())
    finally:
        for h in hooks:
            h.remove()
    result = {k: torch.cat(v) for k, v in out.items()}
    result["seconds_forward"] = seconds
    return result


def jitter_cams(adapter, tensors: list[torch.Tensor], classes: list[int], shift: int = 8,
                batch: int = 16) -> dict:
    """The class's map averaged over the input and its copies shifted by ``shift`` pixels
    (right, down, both; edge pixels replicated), each map resampled bilinearly to the input
    grid and shifted back; returned at the input grid (224×224), with the seconds it took."""
    size = tensors[0].shape[-1]
    weight = adapter.weight
    maps, seconds = [], 0.0
    for start in range(0, len(tensors), batch):
        x = torch.stack(tensors[start:start + batch])
        c = torch.tensor(classes[start:start + batch])
        with inference_mode(adapter.model):
            started = time.perf_counter()
            total = torch.zeros(len(x), size, size)
            count = torch.zeros(1, size, size)
            for dy, dx in ((0, 0), (0, shift), (shift, 0), (shift, shift)):
                # content moves by (dy, dx): pad on the top/left, crop on the bottom/right
                moved = F.pad(x, (dx, 0, dy, 0), mode="replicate")[..., :size, :size]
                _, features = adapter.forward_with_features(moved.contiguous(memory_format=torch.channels_last))
                cam = torch.einsum("nk,nkhw->nhw", weight[c], features)
                full = F.interpolate(cam[:, None].float(), size=(size, size), mode="bilinear",
                                     align_corners=False)[:, 0]
                back = torch.zeros_like(full)
                back[:, :size - dy, :size - dx] = full[:, dy:, dx:]
                total += back
                valid = torch.zeros(1, size, size)
                valid[:, :size - dy, :size - dx] = 1
                count += valid
            maps.append(total / count)
            seconds += time.perf_counter() - started
    return {"maps": torch.cat(maps), "seconds": seconds}


# =========================================================================== refinements


def transition(features: torch.Tensor, beta: float, radius: int | None) -> torch.Tensor:
    """``(K, h, w)`` → ``(hw, hw)`` row-stochastic ``D⁻¹A``, ``a_ij = max(cos, 0)^β`` within
    Chebyshev distance ``radius`` on the grid (``None``: all pairs), ``a_ii = 1``."""
    k, h, w = features.shape
    f = F.normalize(features.float().flatten(1), dim=0)  # (K, hw), unit columns
    a = (f.T @ f).clamp_min(0).pow(beta)
    a.diagonal().fill_(1.0)  # a cell is its own neighbour, even where its features are all zero
    if radius is not None:
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        yy, xx = yy.flatten(), xx.flatten()
        near = ((yy[:, None] - yy[None]).abs() <= radius) & ((xx[:, None] - xx[None]).abs() <= radius)
        a = a * near
    return a / a.sum(1, keepdim=True)


def random_walk(cam: torch.Tensor, features: torch.Tensor, beta: float, radius: int | None,
                steps: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """``Tᵗ m`` for each t in ``steps`` (``m`` resampled to the features' grid first)."""
    h, w = features.shape[-2:]
    m = cam.float()
    if m.shape != (h, w):
        m = F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    t_matrix = transition(features, beta, radius)
    v, out = m.flatten(), {}
    for t in range(1, max(steps) + 1):
        v = t_matrix @ v
        if t in steps:
            out[t] = v.view(h, w)
    return out


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the ``(2r+1)²`` window (fewer pixels at the borders) of ``(C, H, W)``, from an
    integral image: O(1) per pixel whatever the radius."""
    c, h, w = x.shape
    s = F.pad(x.double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # (C, H+1, W+1)
    y0, y1 = (torch.arange(h) - radius).clamp(0, h), (torch.arange(h) + radius + 1).clamp(0, h)
    x0, x1 = (torch.arange(w) - radius).clamp(0, w), (torch.arange(w) + radius + 1).clamp(0, w)
    total = s[:, y1][:, :, x1] - s[:, y0][:, :, x1] - s[:, y1][:, :, x0] + s[:, y0][:, :, x0]
    return (total / ((y1 - y0)[:, None] * (x1 - x0)[None])).to(x.dtype)


def guided_filter_grey(p: torch.Tensor, guide: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter, one grey guide ``(H, W)`` in [0, 1], input ``p (H, W)``."""
    i, p = guide[None], p[None]
    mean_i, mean_p = box_filter(i, radius), box_filter(p, radius)
    cov = box_filter(i * p, radius) - mean_i * mean_p
    var = box_filter(i * i, radius) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return (box_filter(a, radius) * i + box_filter(b, radius))[0]


def guided_filter_rgb(p: torch.Tensor, guide: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter with a colour guide ``(3, H, W)`` in [0, 1]."""
    mean_i = box_filter(guide, radius)  # (3, H, W)
    mean_p = box_filter(p[None], radius)[0]
    cov_ip = box_filter(guide * p[None], radius) - mean_i * mean_p[None]  # (3, H, W)
    products = box_filter(torch.stack([guide[a] * guide[b] for a in range(3) for b in range(3)]), radius)
    sigma = (products - torch.stack([mean_i[a] * mean_i[b] for a in range(3) for b in range(3)]))
    sigma = sigma.permute(1, 2, 0).reshape(*p.shape, 3, 3) + eps * torch.eye(3)
    a = torch.linalg.solve(sigma, cov_ip.permute(1, 2, 0)[..., None])[..., 0].permute(2, 0, 1)  # (3, H, W)
    b = mean_p - (a * mean_i).sum(0)
    return (box_filter(a, radius) * guide).sum(0) + box_filter(b[None], radius)[0]


# =========================================================================== report


class Report:
    """Per half, a family's constants chosen by MaxBoxAccV2 on the other half, τ by GT-known
    loc there; rows with bootstrap and paired intervals to the default."""

    def __init__(self, default: Variant, taus: np.ndarray, halves, draws: int, grid: bool = False):
        self.taus, self.halves, self.draws, self.grid = taus, halves, draws, grid
        self.default = default
        self.rows: list[dict] = []
        self.families: dict[str, tuple[dict[str, Variant], float | None]] = {}
        self.base = self.figures(default, DEFAULT_TAU)

    def figures(self, v: Variant, tau: float | np.ndarray) -> dict:
        """Per-image hits at τ (a scalar, or per image) and best IoUs."""
        cols = np.broadcast_to(np.array([tau_index(self.taus, t) for t in np.atleast_1d(tau)]), len(v.correct))
        hit = v.largest[np.arange(len(v.correct)), cols] >= IOU
        return {"top1": hit & v.correct, "gt": hit, "mba": v.best}

    def print_grid(self, family: str, candidates: dict[str, Variant]) -> None:
        """Every candidate on each half (for robustness only; the rows choose on the other half):
        MaxBoxAccV2 and its δ 0.3/0.5/0.7 parts, GT-known loc at τ 0.25 and at the half's best τ."""
        print(f"  grid of {family}: per half, MBAv2 (δ .3/.5/.7)  GT-known@0.25  best-τ GT-known")
        t25 = tau_index(self.taus, DEFAULT_TAU)
        for key, v in [("default", self.default), *candidates.items()]:
            cells = []
            for idx, _ in self.halves:
                parts = [(v.best[idx] >= d).mean(0).max() for d in DELTAS]
                hits = (v.largest[idx] >= IOU).mean(0)
                k = int(np.argmax(hits))
                cells.append(f"{np.mean(parts):.3f} ({'/'.join(f'{p:.3f}' for p in parts)})  {hits[t25]:.3f}  "
                             f"{self.taus[k]:.2f}: {hits[k]:.3f}")
            print(f"    {key:26s} A {cells[0]}   B {cells[1]}", flush=True)

    def add(self, family: str, candidates: dict[str, Variant], cost_ms: float, fixed_tau: float | None = None):
        if self.grid and len(candidates) > 1:
            self.print_grid(family, candidates)
        self.families[family] = (candidates, fixed_tau)
        chosen, taus_used, per_image = [], [], {}
        tau_of_image = np.zeros(len(self.default.correct))
        best_of_image = np.zeros_like(self.default.best)
        for idx, other in self.halves:
            key = max(candidates, key=lambda k: mba(candidates[k].best[other]))
            v = candidates[key]
            tau = fixed_tau if fixed_tau is not None else \
                self.taus[int(np.argmax((v.largest[other] >= IOU).mean(0)))]
            chosen.append(key)
            taus_used.append(tau)
            tau_of_image[idx] = tau
            best_of_image[idx] = v.best[idx]
            per_image.setdefault("correct", np.zeros(len(v.correct), bool))[idx] = v.correct[idx]
            per_image.setdefault("largest", np.zeros_like(v.largest))[idx] = v.largest[idx]
        pooled = Variant.__new__(Variant)
        pooled.name, pooled.correct, pooled.best, pooled.largest = family, per_image["correct"], best_of_image, \
            per_image["largest"]
        fig = self.figures(pooled, tau_of_image)
        row = {"family": family, "chosen": chosen, "tau": taus_used, "cost": cost_ms}
        everyone = np.arange(len(fig["gt"]))
        for h, (idx, _) in enumerate(list(self.halves) + [(everyone, None)]):
            boot = Boot(len(idx), self.draws, seed=h)
            cells = {}
            for key in ("top1", "gt", "mba"):
                if key == "mba":
                    value, base_value = mba(fig[key][idx]), mba(self.base[key][idx])
                    sample, base_sample = boot.mba(fig[key][idx]), boot.mba(self.base[key][idx])
                else:
                    value, base_value = fig[key][idx].mean(), self.base[key][idx].mean()
                    sample = boot.mean(fig[key][idx].astype(float))
                    base_sample = boot.mean(self.base[key][idx].astype(float))
                cells[key] = (value, *ci(sample))
                cells["d" + key] = (value - base_value, *ci(sample - base_sample))
            row["AB*"[h]] = cells
        self.rows.append(row)
        print(self.format(row), flush=True)

    @staticmethod
    def format(row: dict) -> str:
        lines = []
        for h, label in enumerate(("A", "B", "pooled")):
            c = row["AB*"[h]]
            if h < 2:
                const = f"{row['chosen'][h]} (on {'BA'[h]}), τ {row['tau'][h]:.2f}"
            else:
                const = "each half with the other's constants"
            lines.append(f"{row['family']:18s} {label:6s} {const:44s} "
                         + "  ".join(f"{c[k][0]:.3f} [{c[k][1]:.3f},{c[k][2]:.3f}]" for k in ("top1", "gt", "mba"))
                         + "  " + "  ".join(f"{c[k][0]:+.3f} [{c[k][1]:+.3f},{c[k][2]:+.3f}]"
                                            for k in ("dtop1", "dgt", "dmba"))
                         + (f"  +{row['cost']:.2f} ms" if h == 0 else ""))
        return "\n".join(lines)


def resplit(report: Report, splits: int, seed: int = 11) -> str:
    """The whole protocol again on random 2-fold splits: per split, each fold gets the
    constants (and τ) chosen on the other fold; the pooled differences to the default (τ 0.25)
    are summarised over the splits (mean, 5th-95th percentile, share of splits where both
    folds gain MaxBoxAccV2)."""
    n = len(report.default.correct)
    rng = np.random.default_rng(seed)
    folds = []
    for _ in range(splits):
        perm = rng.permutation(n)
        a, b = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
        folds.append(((a, b), (b, a)))
    t25 = tau_index(report.taus, DEFAULT_TAU)
    base_hit = report.default.largest[:, t25] >= IOU
    lines = [f"random 2-fold splits ({splits}): Δ to the default, pooled over both folds; mean [5th, 95th pct]",
             f"{'family':20s} {'Δ top-1 loc':>22s} {'Δ GT-known':>22s} {'Δ MBAv2':>22s}  both folds +MBA  picks"]
    for family, (candidates, fixed_tau) in report.families.items():
        deltas, both, picks = [], 0, {}
        for pair in folds:
            hit = np.zeros(n, bool)
            correct = np.zeros(n, bool)
            fold_gain = []
            d_mba = 0.0
            for idx, other in pair:
                key = max(candidates, key=lambda k: mba(candidates[k].best[other]))
                picks[key] = picks.get(key, 0) + 1
                v = candidates[key]
                k = t25 if fixed_tau is not None else int(np.argmax((v.largest[other] >= IOU).mean(0)))
                hit[idx] = v.largest[idx, k] >= IOU
                correct[idx] = v.correct[idx]
                gain = mba(v.best[idx]) - mba(report.default.best[idx])
                fold_gain.append(gain)
                d_mba += gain * len(idx) / n
            both += all(g > 0 for g in fold_gain)
            deltas.append(((hit & correct).mean() - (base_hit & report.default.correct).mean(),
                           hit.mean() - base_hit.mean(), d_mba))
        d = 100 * np.array(deltas)
        top = ", ".join(f"{k} {c / (2 * splits):.0%}" for k, c in sorted(picks.items(), key=lambda x: -x[1])[:2])
        lines.append(f"{family:20s} " + " ".join(
            f"{d[:, j].mean():+6.1f} [{np.percentile(d[:, j], 5):+5.1f},{np.percentile(d[:, j], 95):+5.1f}]"
            for j in range(3)) + f"  {both / splits:6.0%}  {top}")
    return "\n".join(lines)


def markdown(report: Report, forward_ms: float) -> str:
    out = [f"forward (Lite0 dilated + CAM, batch 16, 1 thread): {forward_ms:.1f} ms/image", ""]
    for h, title in enumerate(("half A (even; constants chosen on B)", "half B (odd; constants chosen on A)",
                               "pooled (298; each half with the other's constants)")):
        out += [f"### {title}", "",
                "| variant | constants | top-1 loc | GT-known loc | MaxBoxAccV2 | Δ top-1 | Δ GT-known | Δ MBAv2 "
                "| extra cost |", "|---|---|---|---|---|---|---|---|---|"]
        for row in report.rows:
            c = row["AB*"[h]]
            const = f"{row['chosen'][h]}, τ {row['tau'][h]:.2f}" if h < 2 else "cross-fitted"
            out.append(f"| {row['family']} | {const} | "
                       + " | ".join(f"{c[k][0]:.3f} [{c[k][1]:.3f}, {c[k][2]:.3f}]" for k in ("top1", "gt", "mba"))
                       + " | " + " | ".join(f"{100 * c[k][0]:+.1f} [{100 * c[k][1]:+.1f}, {100 * c[k][2]:+.1f}]"
                                            for k in ("dtop1", "dgt", "dmba"))
                       + f" | {row['cost']:.2f} ms ({row['cost'] / forward_ms:.2f}×) |")
        out.append("")
    return "\n".join(out)


# =========================================================================== main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--boxes", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--families", default="contrast,guided,rw", help="comma list: contrast, guided, rw")
    parser.add_argument("--rw-layers", default="head,b6,b4,b2")
    parser.add_argument("--jitter", action="store_true")
    parser.add_argument("--splits", type=int, default=0, help="also rerun the protocol on N random 2-fold splits")
    parser.add_argument("--grid", action="store_true", help="also print every candidate's figures on each half")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables there")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model()  # camloc's default: Lite0, last stage dilated
    items = read_items(args.images, args.boxes, model)[:args.limit]
    n = len(items)
    classes = [i["class"] for i in items]
    boxes = [i["boxes"] for i in items]
    taus = sweep_thresholds(0.01).numpy()
    grid = torch.tensor(taus, dtype=torch.float32)
    halves = [(np.arange(0, n, 2), np.arange(1, n, 2)), (np.arange(1, n, 2), np.arange(0, n, 2))]
    tensors, geometries = tensors_of(items, 224, model)
    record = cached(args.cache, f"refine-features-{n}", lambda: forward_features(model, tensors))
    forward_ms = 1000 * record["seconds_forward"] / n
    correct = (record["logits"].argmax(1) == torch.tensor(classes)).numpy()
    weight = model.weight.detach().float()
    c = torch.tensor(classes)
    cam = torch.einsum("nk,nkhw->nhw", weight[c], record["head"].float())
    print(f"{n} images; top-1 cls {correct.mean():.3f}; forward {forward_ms:.1f} ms/image", flush=True)

    def variant(name, maps):
        return Variant(name, maps, boxes, correct, grid)

    def timed(fn):
        started = time.perf_counter()
        value = fn()
        return value, 1000 * (time.perf_counter() - started) / n

    default = variant("default", [minmax(m) for m in upsample(cam, geometries)])
    report = Report(default, taus, halves, args.bootstrap, args.grid)
    report.add("default", {"-": default}, 0.0, fixed_tau=DEFAULT_TAU)
    report.add("default, τ re-chosen", {"-": default}, 0.0)
    families = args.families.split(",")

    if "contrast" in families:
        candidates, cost = {}, 0.0
        for lam in (0.25, 0.5, 0.75, 1.0):
            # Σ_k p_k m_k = (Σ_k p_k W_k) · f: one weight vector per image
            maps, ms = timed(lambda lam=lam: torch.einsum(
                "nk,nkhw->nhw", weight[c] - lam * (record["logits"].softmax(1) @ weight), record["head"].float()))
            cost = max(cost, ms)
            candidates[f"λ {lam:g}"] = variant(f"contrast λ{lam}", [minmax(m) for m in upsample(maps, geometries)])
        report.add("softmax contrast", candidates, cost)

    if "guided" in families:
        photos = [torch.from_numpy(np.asarray(load_image(i["path"]), dtype=np.float32) / 255).permute(2, 0, 1)
                  for i in items]
        base = [minmax(m) for m in upsample(cam, geometries)]
        for kind, filt in (("grey", guided_filter_grey), ("rgb", guided_filter_rgb)):
            candidates, cost = {}, 0.0
            for radius in (8, 16):
                for eps in ((1e-3, 1e-2, 1e-1) if kind == "grey" else (1e-2, 1e-1)):
                    def run(radius=radius, eps=eps, kind=kind, filt=filt):
                        out = []
                        for m, photo in zip(base, photos, strict=True):
                            guide = photo.mean(0) if kind == "grey" else photo
                            out.append(minmax(filt(m, guide, radius, eps)))
                        return out
                    maps, ms = timed(run)
                    cost = max(cost, ms)
                    candidates[f"ρ {radius} ε {eps:g}"] = variant(f"guided {kind}", maps)
            print(f"  guided {kind}: {len(candidates)} candidates swept", flush=True)
            report.add(f"guided {kind}", candidates, cost)

    if "rw" in families:
        everything, dearest = {}, 0.0
        for layer in args.rw_layers.split(","):
            feats = record[layer]
            candidates, cost = {}, 0.0
            radii = (2, None) if layer != "b2" else (4, None)  # 5×5 cells (4 on the 28 grid), or all
            for beta in (1, 4, 16):  # median neighbour cosine: head 0.88, b6 0.94, b4 0.53, b2 0.48
                for radius in radii:
                    steps = (2, 8)
                    results, ms = timed(lambda beta=beta, radius=radius, steps=steps, feats=feats: [
                        random_walk(m, f, beta, radius, steps) for m, f in zip(cam, feats, strict=True)])
                    cost = max(cost, ms)
                    for t in steps:
                        maps = upsample(torch.stack([r[t] for r in results]), geometries)
                        key = f"{layer} β {beta} r {radius if radius is not None else 'all'} t {t}"
                        candidates[key] = variant(key, [minmax(m) for m in maps])
            print(f"  rw {layer}: {len(candidates)} candidates swept", flush=True)
            report.add(f"random walk {layer}", candidates, cost)
            everything.update(candidates)
            dearest = max(dearest, cost)
        if len(args.rw_layers.split(",")) > 1:
            report.add("random walk, any", everything, dearest)  # cost: the dearest layer's

    if args.jitter:
        jitter = cached(args.cache, f"refine-jitter-{n}",
                        lambda: jitter_cams(model, tensors, classes))
        # maps at the 224 input grid: resampled to the photo like a feature map on that grid
        maps = upsample(jitter["maps"], geometries)
        report.add("jitter 8 px ×4", {"-": variant("jitter", [minmax(m) for m in maps])},
                   1000 * jitter["seconds"] / n - forward_ms)

    text = markdown(report, forward_ms)
    if args.splits:
        summary = resplit(report, args.splits)
        print("\n" + summary)
        text += "\n```\n" + summary + "\n```\n"
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
