"""Fine-tune a GAP + linear classifier on labelled image folders, then explain it.

The backbone is the embedded default (ImageNet EfficientNet-Lite0) or any model
``load_model`` accepts; its classifier is replaced by a new ``Linear`` with the user's
classes, so the model stays ``features → GAP → linear`` and its CAMs are exact.

Two recipes:

* ``unfreeze=0`` (default): the backbone is frozen; the classifier's inputs are computed
  once and cached, so epochs over the head take milliseconds.
* ``unfreeze=N``: the last N stages are fine-tuned too, at a lower learning rate, with
  augmentation that moves objects around (per-image random resized crops, flips).

A checkpoint carries a box rule only when one is given (``box_threshold``): with none, a
trained model uses the same default as every other model, in every door.

>>> import tempfile, sys; sys.path.insert(0, "examples")
>>> from make_shapes import make_shapes
>>> data = tempfile.mkdtemp(); _ = make_shapes(data, per_class=6, size=64)
>>> result = train(TrainOptions(data=data, out=tempfile.mkdtemp(), epochs=1, unfreeze=0,
...                             image_size=64, examples=0, plots=False))
>>> result.checkpoint.name, result.class_names
('model.pt', ['circle', 'square', 'triangle'])
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..boxes import parse_threshold
from ..dataset import decoding_threads, unexpected_error_line
from ..errors import CamlocError, ModelError
from ..images import is_image_path, load_image
from ..models import ClassifierAdapter, load_model, resolve_device
from ..models.checkpoint import (
    checkpoint_payload,
    classifier_name,
    load_checkpoint,
    new_head,
    save_atomic,
)
from . import plots

CHECKPOINT_NAME = "model.pt"
STATE_NAME = "last.pt"


class DataError(CamlocError):
    """A training data folder camloc cannot train on."""


# --------------------------------------------------------------------------- options


@dataclass
class TrainOptions:
    """Everything ``camloc train`` can be told. ``data`` (class folders, split into train and
    validation) or ``train_dir`` and ``val_dir``."""

    data: str | os.PathLike | None = None
    out: str | os.PathLike = "camloc-train"
    train_dir: str | os.PathLike | None = None
    val_dir: str | os.PathLike | None = None
    model: str | None = None
    weights: str | None = None
    unfreeze: int = 0
    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    backbone_lr_factor: float = 0.1
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    balance: bool = False
    image_size: int | None = None
    val_fraction: float = 0.2
    augment: bool = True
    patience: int | None = None
    seed: int = 0
    workers: int | None = None  # decoding threads; None: automatic
    device: str = "auto"
    resume: bool = False
    examples: int = 6
    plots: bool = True
    box_threshold: float | str | None = None  # stored in the checkpoint; None: camloc's default

    def checkpoint_path(self) -> Path:
        out = Path(self.out)
        return out if out.suffix in (".pt", ".pth", ".ckpt") else out / CHECKPOINT_NAME


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float

    def line(self) -> str:
        return (f"epoch {self.epoch}: train loss {self.train_loss:.4f}, "
                f"val loss {self.val_loss:.4f}, val acc {self.val_accuracy:.3f} "
                f"({self.seconds:.1f}s)")


@dataclass
class TrainResult:
    checkpoint: Path
    class_names: list[str]
    history: list[EpochRecord]
    best_epoch: int
    best_accuracy: float
    skipped: list[str] = field(default_factory=list)
    confusion: np.ndarray | None = None
    val_paths: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- data


@dataclass
class ImageSet:
    """Decoded images ``(N, 3, S, S)`` uint8 with labels, and the files that were skipped."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    skipped: list[str]


def scan_classes(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folder names) and ``(image path, class index)`` pairs.

    Raises :class:`DataError` for a missing or empty folder, a single class, or a class
    folder without image files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files_by_class = {f.name: sorted(p for p in f.rglob("*") if p.is_file() and is_image_path(p))
                      for f in folders}
    if not any(files_by_class.values()):
        raise DataError(f"{root}: no class folders with images (expected {root}/<class>/<image>)")
    empty = [name for name, files in files_by_class.items() if not files]
    if empty:
        raise DataError(f"{root}: class folder(s) without images: {', '.join(empty)}")
    if len(files_by_class) < 2:
        raise DataError(f"{root}: only one class ({next(iter(files_by_class))}); a classifier "
                        "needs at least two class folders")
    names = list(files_by_class)
    pairs = [(path, index) for index, name in enumerate(names) for path in files_by_class[name]]
    return names, pairs


def decode(path: Path, size: int) -> torch.Tensor:
    """One image file → ``(3, size, size)`` uint8 (squashed, like ``--policy squash``)."""
    from PIL import Image

    image = load_image(path).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_or_error(path: Path, size: int) -> tuple[torch.Tensor | None, str | None]:
    """:func:`decode`, with a file that cannot be read given as one error line instead."""
    try:
        return decode(path, size), None
    except CamlocError as error:
        return None, str(error)
    except Exception as error:  # noqa: BLE001 - a bad file is skipped and counted
        return None, unexpected_error_line(path, error)


def load_images(pairs: Sequence[tuple[Path, int]], names: Sequence[str], size: int,
                workers: int | None = None, where: str = "", every_class: bool = True) -> ImageSet:
    """Decode every image once (in ``workers`` threads; ``None``: up to 4 for more than a
    batch of images, ``0``: in turn); unreadable files are skipped.

    Raises :class:`DataError` when a class (``every_class``), or the whole set, is left
    without a readable image.
    """
    files = [path for path, _ in pairs]
    if workers is None:
        workers = decoding_threads(len(files), few=64)
    if workers:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camloc-decode") as pool:
            decoded = list(pool.map(decode_or_error, files, [size] * len(files)))
    else:
        decoded = [decode_or_error(path, size) for path in files]
    images, labels, paths, skipped = [], [], [], []
    for (path, label), (tensor, error) in zip(pairs, decoded, strict=True):
        if tensor is None:
            skipped.append(error or f"{path}: unreadable")
            continue
        images.append(tensor)
        labels.append(label)
        paths.append(str(path))
    missing = [name for index, name in enumerate(names) if index not in set(labels)]
    if missing and (every_class or not labels):
        raise DataError(f"{where or 'data'}: no readable image for class(es) {', '.join(missing)}"
                        f" ({len(skipped)} unreadable file(s) skipped)")
    return ImageSet(torch.stack(images), torch.tensor(labels), paths, skipped)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of indices: ``fraction`` of each class (at least one) goes to validation.

    >>> train_idx, val_idx = stratified_split(torch.tensor([0] * 10 + [1] * 5), 0.2, seed=0)
    >>> len(train_idx), len(val_idx)
    (12, 3)
    """
    generator = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        if len(members) < 2:
            raise DataError(f"class {int(label)} has only {len(members)} readable image(s); "
                            "a validation split needs at least two per class")
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        val_parts.append(members[:count])
        train_parts.append(members[count:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


def subset(data: ImageSet, indices: torch.Tensor) -> ImageSet:
    paths = [data.paths[i] for i in indices.tolist()]
    return ImageSet(data.images[indices], data.labels[indices], paths, [])


@dataclass
class DataPlan:
    """The files to train on, found before anything is decoded (``val_pairs`` None: split)."""

    names: list[str]
    train_pairs: list[tuple[Path, int]]
    val_pairs: list[tuple[Path, int]] | None


def scan_data(options: TrainOptions) -> DataPlan:
    """Find classes and files (no decoding): the cheap checks come before the model loads."""
    if options.train_dir is not None or options.val_dir is not None:
        if options.train_dir is None or options.val_dir is None:
            raise DataError("--train and --val go together")
        names, train_pairs = scan_classes(options.train_dir)
        val_names, val_pairs = scan_classes_lenient(options.val_dir)
        unknown = sorted(set(val_names) - set(names))
        if unknown:
            raise DataError(f"{options.val_dir}: validation classes not in the training set: "
                            f"{', '.join(unknown)}")
        remap = {index: names.index(name) for index, name in enumerate(val_names)}
        return DataPlan(names, train_pairs, [(path, remap[label]) for path, label in val_pairs])
    if options.data is None:
        raise DataError("give a data folder (one sub-folder per class), or --train and --val")
    if not 0.0 < options.val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1), got {options.val_fraction}")
    names, pairs = scan_classes(options.data)
    return DataPlan(names, pairs, None)


def prepare_data(options: TrainOptions, size: int, plan: DataPlan | None = None
                 ) -> tuple[list[str], ImageSet, ImageSet, list[str]]:
    """Class names, train and validation images, and the skipped files' messages."""
    plan = plan or scan_data(options)
    names, workers = plan.names, options.workers
    if plan.val_pairs is not None:
        train_set = load_images(plan.train_pairs, names, size, workers, str(options.train_dir))
        val_set = load_images(plan.val_pairs, names, size, workers, str(options.val_dir),
                              every_class=False)
        return names, train_set, val_set, train_set.skipped + val_set.skipped
    everything = load_images(plan.train_pairs, names, size, workers, str(options.data))
    train_idx, val_idx = stratified_split(everything.labels, options.val_fraction, options.seed)
    return names, subset(everything, train_idx), subset(everything, val_idx), everything.skipped


def scan_classes_lenient(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """Like :func:`scan_classes`, but a validation folder may hold one class or empty ones."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    pairs = [(path, index) for index, name in enumerate(names)
             for path in sorted((root / name).rglob("*")) if path.is_file() and is_image_path(path)]
    if not pairs:
        raise DataError(f"{root}: no class folders with images (expected {root}/<class>/<image>)")
    return names, pairs


# --------------------------------------------------------------------------- the network


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_block(module: nn.Module) -> bool:
    """A block of layers (more than a single layer with its norm or activation)."""
    return _has_parameters(module) and len(list(module.modules())) > 3


def stages(network: nn.Module, head: str) -> list[list[nn.Module]]:
    """The network's stages, input to output, the head excluded.

    Top-level children; when one top-level ``Sequential``/``ModuleList`` holds the blocks
    (timm's ``blocks`` or ``stages``, torchvision's ``features``) it is opened into its
    children. Single layers (stem conv, ``conv_head``, norms) join the stage before them
    (leading ones join the first stage).

    >>> import torchvision
    >>> len(stages(torchvision.models.resnet18(), "fc"))  # conv1+bn1+layer1, layer2..4
    4
    """
    children = [(name, child) for name, child in network.named_children()
                if name != head.split(".")[0] and _has_parameters(child)]
    containers = [name for name, child in children
                  if isinstance(child, (nn.Sequential, nn.ModuleList))
                  and sum(_is_block(c) for c in child.children()) > 1]
    units: list[nn.Module] = []
    for name, child in children:
        if len(containers) == 1 and name == containers[0]:
            units.extend(c for c in child.children() if _has_parameters(c))
        else:
            units.append(child)
    grouped: list[list[nn.Module]] = []
    pending: list[nn.Module] = []
    for module in units:
        if _is_block(module):
            grouped.append(pending + [module])
            pending = []
        elif grouped:
            grouped[-1].append(module)
        else:
            pending.append(module)
    if pending:
        grouped.append(pending)
    return grouped


def set_trainable(network: nn.Module, head: str, unfreeze: int) -> list[nn.Parameter]:
    """Freeze everything but the head and the last ``unfreeze`` stages; their parameters."""
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    chosen = stages(network, head)[-unfreeze:] if unfreeze > 0 else []
    backbone = [p for group in chosen for module in group for p in module.parameters()]
    for parameter in backbone:
        parameter.requires_grad_(True)
    network.get_submodule(head).requires_grad_(True)
    return backbone


def build_network(model: str | None, weights: str | None, num_classes: int
                  ) -> tuple[nn.Module, str, ClassifierAdapter]:
    """Backbone from ``load_model`` with a new ``num_classes`` linear head.

    Returns the network, the head's module name and the backbone's adapter (for its name,
    preprocessing and input size).
    """
    backbone = load_model(model, weights=weights, dilate=False)
    backbone.require_cam()
    head = classifier_name(backbone.model, backbone.weight)
    new_head(backbone.model, head, num_classes)
    return backbone.model, head, backbone


def architecture_of(backbone: ClassifierAdapter, model: str | None) -> str:
    """The name ``load_model`` rebuilds this backbone from."""
    if model is None or backbone.source.startswith("efficientnet-lite"):
        return backbone.name
    if backbone.source in ("timm", "torchvision"):
        return f"{backbone.source}/{backbone.name}"
    raise ModelError(f"camloc train needs a backbone it can rebuild by name (the default, a "
                     f"timm or torchvision name); {model!r} is not one")


# --------------------------------------------------------------------------- training steps


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def augment(images: torch.Tensor, size: int, generator: torch.Generator,
            scale: tuple[float, float] = (0.35, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
            ) -> torch.Tensor:
    """Random resized crops and horizontal flips of a uint8 batch, one ``roi_align`` call.

    Each image gets its own crop (area ``scale`` of the image, aspect ``ratio``), so objects
    move and change size; returns float ``(N, 3, size, size)`` in [0, 255].
    """
    from torchvision.ops import roi_align

    count, _, height, width = images.shape
    uniform = torch.rand(count, 5, generator=generator).to(images.device)
    area = (scale[0] + (scale[1] - scale[0]) * uniform[:, 0]) * height * width
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * uniform[:, 1]
    aspect = log_ratio.exp()
    crop_w = (area * aspect).sqrt().clamp(max=width)
    crop_h = (area / aspect).sqrt().clamp(max=height)
    x0 = (width - crop_w) * uniform[:, 2]
    y0 = (height - crop_h) * uniform[:, 3]
    boxes = torch.stack([torch.arange(count, device=images.device, dtype=torch.float32),
                         x0, y0, x0 + crop_w, y0 + crop_h], dim=1)
    crops = roi_align(images.float(), boxes, output_size=size, aligned=True, sampling_ratio=2)
    flip = uniform[:, 4] < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.float()
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def head_inputs(network: nn.Module, head: str, images: torch.Tensor, size: int, mean: Sequence[float],
                std: Sequence[float], batch_size: int, device: torch.device) -> torch.Tensor:
    """What the classifier sees (pooled features after any neck), for a frozen backbone."""
    captured: list[torch.Tensor] = []
    hook = network.get_submodule(head).register_forward_pre_hook(
        lambda _m, inputs: captured.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size].to(device)
                network(normalize_batch(resize_batch(chunk, size), mean, std))
    finally:
        hook.remove()
    return torch.cat(captured)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based): cosine to 0, or ×0.1 at 2/3 of the run."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    if schedule == "step":
        return 0.1 if epoch >= math.ceil(epochs * 2 / 3) else 1.0
    if schedule == "constant":
        return 1.0
    raise CamlocError(f"unknown schedule {schedule!r}; choose cosine, step or constant")


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1) for imbalanced classes."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
    weights = counts.sum() / counts
    return weights / weights.mean()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the job


class Trainer:
    """One training run; :func:`train` is the plain entry point."""

    def __init__(self, options: TrainOptions, log: Callable[[str], None] = lambda _: None,
                 progress: Callable[[str, int, int], None] | None = None):
        self.options, self.log, self.progress = options, log, progress

    # -- setup
    def setup(self) -> None:
        options = self.options
        if options.unfreeze < 0:
            raise CamlocError(f"--unfreeze must be 0 or more, got {options.unfreeze}")
        if options.epochs < 1 or options.batch_size < 1:
            raise CamlocError("--epochs and --batch-size must be at least 1")
        lr_factor(options.schedule, 0, 1)
        if options.box_threshold is not None:
            try:
                options.box_threshold = parse_threshold(options.box_threshold)
            except ValueError as error:
                raise CamlocError(str(error)) from None
        seed_everything(options.seed)
        self.device = resolve_device(options.device)
        plan = scan_data(options)
        if options.resume and not self.state_path().is_file():
            raise CamlocError(f"--resume: no training state {self.state_path()} to continue from")
        backbone = load_model(options.model, weights=options.weights, dilate=False)
        self.architecture = architecture_of(backbone, options.model)
        self.size = options.image_size or backbone.input_size[0]
        self.mean, self.std = backbone.mean, backbone.std
        self.names, self.train_set, self.val_set, self.skipped = prepare_data(options, self.size,
                                                                              plan)
        for message in self.skipped:
            self.log(f"warning: skipped {message}")
        backbone.require_cam()
        self.head = classifier_name(backbone.model, backbone.weight)
        new_head(backbone.model, self.head, len(self.names))
        self.network = backbone.model.to(self.device)
        if options.unfreeze > len(stages(self.network, self.head)):
            raise CamlocError(f"--unfreeze {options.unfreeze}: {self.architecture} has only "
                              f"{len(stages(self.network, self.head))} stages")
        backbone_params = set_trainable(self.network, self.head, options.unfreeze)
        head_params = list(self.network.get_submodule(self.head).parameters())
        groups = [{"params": head_params, "lr": options.lr}]
        if backbone_params:
            backbone_lr = options.lr * options.backbone_lr_factor
            groups.append({"params": backbone_params, "lr": backbone_lr})
        for group in groups:
            group["initial_lr"] = group["lr"]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=options.weight_decay)
        weights = class_weights(self.train_set.labels, len(self.names)) if options.balance else None
        self.loss = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(self.device),
                                        label_smoothing=options.label_smoothing)
        self.history: list[EpochRecord] = []
        self.start_epoch, self.best_accuracy, self.best_loss, self.best_epoch = 0, -1.0, math.inf, 0
        self.generator = torch.Generator().manual_seed(options.seed)
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None
        if options.unfreeze == 0:
            self.log("caching the frozen backbone's features")
            self.network.eval()
            train_inputs, val_inputs = (head_inputs(self.network, self.head, s.images, self.size, self.mean,
                                                    self.std, options.batch_size, self.device)
                                        for s in (self.train_set, self.val_set))
            self.cached = (train_inputs, val_inputs)

    @property
    def out(self) -> Path:
        return self.options.checkpoint_path().parent

    def state_path(self) -> Path:
        return self.out / STATE_NAME

    # -- resume
    def run_signature(self) -> dict:
        o = self.options
        return {"architecture": self.architecture, "classes": self.names, "size": self.size,
                "unfreeze": o.unfreeze, "seed": o.seed, "epochs": o.epochs}

    def resume(self) -> None:
        path = self.state_path()
        if not path.is_file():
            raise CamlocError(f"--resume: no training state {path} to continue from")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("signature") != self.run_signature():
            raise CamlocError(f"--resume: {path} belongs to a different run "
                              f"({state.get('signature')}); use another --out or drop --resume")
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = [EpochRecord(**record) for record in state["history"]]
        self.start_epoch = state["epoch"] + 1
        self.best_accuracy, self.best_loss, self.best_epoch = state["best"]
        self.log(f"resuming after epoch {state['epoch'] + 1}")

    def save_state(self, epoch: int) -> None:
        save_atomic({
            "signature": self.run_signature(), "epoch": epoch,
            "network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "history": [asdict(r) for r in self.history],
            "best": (self.best_accuracy, self.best_loss, self.best_epoch),
        }, self.state_path())

    def save_checkpoint(self, epoch: int, accuracy: float) -> None:
        options = {key: (str(value) if isinstance(value, Path) else value)
                   for key, value in asdict(self.options).items()}
        payload = checkpoint_payload(
            self.network, self.architecture, self.head, self.names, (self.size, self.size),
            self.mean, self.std, self.options.box_threshold,
            {"epoch": epoch + 1, "val_accuracy": accuracy, "training": options})
        save_atomic(payload, self.options.checkpoint_path())

    # -- epochs
    def set_mode(self) -> None:
        """Dropout on in the trained part; BatchNorm statistics stay frozen (small batches)."""
        self.network.eval()
        for module in self.network.modules():
            if isinstance(module, nn.Dropout):
                module.train()

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        options = self.options
        factor = lr_factor(options.schedule, epoch, options.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        count = len(self.train_set.labels)
        order = torch.randperm(count, generator=self.generator)
        total_loss, correct = 0.0, 0
        head_module = self.network.get_submodule(self.head)
        self.set_mode()
        steps = math.ceil(count / options.batch_size)
        for step in range(steps):
            index = order[step * options.batch_size : (step + 1) * options.batch_size]
            labels = self.train_set.labels[index].to(self.device)
            if self.cached is not None:
                logits = head_module(self.cached[0][index.to(self.cached[0].device)])
            else:
                images = self.train_set.images[index].to(self.device)
                pixels = (augment(images, self.size, self.generator) if options.augment
                          else resize_batch(images, self.size))
                logits = self.network(normalize_batch(pixels, self.mean, self.std))
            loss = self.loss(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(1) == labels).sum())
            if self.progress:
                self.progress(f"epoch {epoch + 1}/{options.epochs}", step + 1, steps)
        return total_loss / count, correct / count

    @torch.no_grad()
    def predict_val(self) -> torch.Tensor:
        """Validation logits ``(N, C)``."""
        if self.cached is not None:
            return self.network.get_submodule(self.head)(self.cached[1]).cpu()
        self.network.eval()
        outputs = []
        for start in range(0, len(self.val_set.labels), self.options.batch_size):
            chunk = self.val_set.images[start : start + self.options.batch_size].to(self.device)
            outputs.append(self.network(normalize_batch(resize_batch(chunk, self.size), self.mean,
                                                        self.std)).cpu())
        return torch.cat(outputs)

    def evaluate(self) -> tuple[float, float, torch.Tensor]:
        logits = self.predict_val()
        labels = self.val_set.labels
        loss = F.cross_entropy(logits, labels).item()
        return loss, float((logits.argmax(1) == labels).float().mean()), logits

    def fit(self) -> TrainResult:
        options = self.options
        self.setup()
        if options.resume:
            self.resume()
        stale = 0
        for epoch in range(self.start_epoch, options.epochs):
            started = time.perf_counter()
            train_loss, train_accuracy = self.train_epoch(epoch)
            val_loss, val_accuracy, _ = self.evaluate()
            record = EpochRecord(epoch + 1, train_loss, train_accuracy, val_loss, val_accuracy,
                                 time.perf_counter() - started)
            self.history.append(record)
            improved = (val_accuracy, -val_loss) > (self.best_accuracy, -self.best_loss)
            if improved:
                self.best_accuracy, self.best_loss = val_accuracy, val_loss
                self.best_epoch = epoch + 1
                self.save_checkpoint(epoch, val_accuracy)
                stale = 0
            else:
                stale += 1
            self.save_state(epoch)
            self.log(record.line() + ("  *best" if improved else ""))
            if options.patience is not None and stale >= options.patience:
                self.log(f"early stop: no better val accuracy for {options.patience} epochs")
                break
        return self.finish()

    def finish(self) -> TrainResult:
        checkpoint = self.options.checkpoint_path()
        result = TrainResult(checkpoint, self.names, self.history, self.best_epoch,
                             self.best_accuracy, self.skipped, val_paths=self.val_set.paths)
        best = load_checkpoint(checkpoint)
        labels = self.val_set.labels
        logits = predict_images(best, self.val_set.images)
        result.confusion = confusion_matrix(labels, logits.argmax(1), len(self.names))
        summary = {"checkpoint": str(checkpoint), "classes": self.names,
                   "best_epoch": self.best_epoch, "val_accuracy": self.best_accuracy,
                   "skipped": self.skipped,
                   "history": [asdict(r) for r in self.history], "val_images": self.val_set.paths,
                   "confusion": result.confusion.tolist()}
        (self.out / "training.json").write_text(json.dumps(summary, indent=1))
        if self.options.plots:
            augmented = self.options.augment and self.cached is None
            result.outputs += plots.write_plots(self.out, self.history, result.confusion,
                                                      self.names, augmented)
        if self.options.examples:
            result.outputs += plots.write_examples(self.out, best, self.val_set.paths,
                                                         self.options.examples)
        return result


@torch.no_grad()
def predict_images(model: ClassifierAdapter, images: torch.Tensor, batch_size: int = 64
                   ) -> torch.Tensor:
    """Logits of a uint8 ``(N, 3, S, S)`` batch through an adapter's own preprocessing."""
    model.model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].to(model.device)
        chunk = resize_batch(chunk, model.input_size[0])
        outputs.append(model.model(normalize_batch(chunk, model.mean, model.std)).cpu())
    return torch.cat(outputs)


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts, rows true class, columns predicted.

    >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2).tolist()
    [[1, 0], [1, 1]]
    """
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes).numpy()


def train(options: TrainOptions, log: Callable[[str], None] = lambda _: None,
          progress: Callable[[str, int, int], None] | None = None) -> TrainResult:
    """Train a GAP + linear classifier on ``options.data``; writes the checkpoint and plots."""
    return Trainer(options, log, progress).fit()
