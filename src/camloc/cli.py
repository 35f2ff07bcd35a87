"""The ``camloc`` command: a thin shell over the library.

User errors print one line (``error: ...``) and exit with status 2; a run with failed
inputs exits with status 1 after processing everything else.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .errors import CamlocError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Class Activation Maps: where an image classifier looks, and object boxes from it.",
)
err = Console(stderr=True, highlight=False)


class Policy(str, Enum):
    squash = "squash"
    center_crop = "center-crop"
    pad = "pad"


class ImageFormat(str, Enum):
    png = "png"
    jpg = "jpg"


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", help="efficientnet_lite0 (default, embedded), a timm/torchvision name, or a camloc checkpoint")]
WeightsOption = Annotated[Path | None, typer.Option(
    "--weights", help="local weights file for a named model ('random' for untrained weights)")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")]


def load(model: str | None, weights: Path | None, device: str):
    from .models import load_model

    return load_model(model, weights=str(weights) if weights is not None else None, device=device)


@app.command()
def run(
    inputs: Annotated[list[str], typer.Argument(help="image files, folders (recursive) or glob patterns")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("camloc-out"),
    model: ModelOption = None,
    weights: WeightsOption = None,
    topk: Annotated[int, typer.Option("--topk", "-k", help="explain the k most likely classes")] = 1,
    rank: Annotated[int | None, typer.Option("--rank", help="explain only the n-th most likely class (1 = top)")] = None,
    classes: Annotated[list[str] | None, typer.Option(
        "--class", "-c", help="explain this class (name or index); repeatable")] = None,
    method: Annotated[str, typer.Option("--method", help="auto or cam")] = "auto",
    policy: Annotated[Policy, typer.Option("--policy", help="how images are resized for the network")] = Policy.squash,
    threshold: Annotated[str | None, typer.Option(
        "--threshold", "-t", help="box threshold: fraction of the map's range, or otsu / otsu2 / mean "
        "(default: the model's recommended rule, else 0.2)")] = None,
    all_components: Annotated[bool, typer.Option("--all-components", help="a box per component, not only the largest")] = False,
    min_area: Annotated[float, typer.Option("--min-area", help="with --all-components: smallest box, fraction of image")] = 0.0,
    colormap: Annotated[str, typer.Option("--colormap", help="matplotlib colormap")] = "jet",
    alpha: Annotated[float, typer.Option("--alpha", "--opacity", min=0.0, max=1.0, help="map opacity")] = 0.5,
    image_format: Annotated[ImageFormat, typer.Option("--format", help="rendered image format")] = ImageFormat.png,
    panels: Annotated[bool, typer.Option("--panels", help="also write overlay | image | map panels")] = False,
    grid: Annotated[bool | None, typer.Option("--grid/--no-grid", help="top-k grid (default: when k > 1)")] = None,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="write normalised maps as .npy")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 16,
    workers: Annotated[int, typer.Option("--workers", min=0, help="image decoding processes")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="skip images already in results.jsonl")] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="refuse larger images")] = 80_000_000,
    device: DeviceOption = "auto",
) -> None:
    """Explain images: overlays, boxes and results.jsonl in --out."""
    from .boxes import DEFAULT_THRESHOLD, parse_threshold
    from .runner import RunOptions, run as run_job

    try:
        box_threshold = parse_threshold(threshold) if threshold is not None else None
    except ValueError as error:
        fail(str(error))
    adapter = load(model, weights, device)
    if box_threshold is None:
        box_threshold = adapter.box_threshold if adapter.box_threshold is not None else DEFAULT_THRESHOLD
    options = RunOptions(
        out=out, topk=topk, rank=rank, classes=tuple(classes or ()), method=method,
        policy=policy.value, threshold=box_threshold, largest_only=not all_components, min_area=min_area,
        colormap=colormap, alpha=alpha, image_format=image_format.value, panels=panels, grid=grid,
        save_maps=save_maps, batch_size=batch_size, workers=workers, resume=resume,
        max_pixels=max_pixels,
    )
    from .render import colormap_lut

    colormap_lut(colormap)  # an unknown colormap fails before any work
    show_bar = err.is_terminal
    progress = Progress(TextColumn("explaining"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err, disable=not show_bar, transient=True)
    task = None

    def on_start(total: int) -> None:
        nonlocal task
        task = progress.add_task("run", total=total)

    def on_image(record: dict) -> None:
        if record["error"]:
            progress.console.print(f"[yellow]warning:[/] skipped {record['error']}", soft_wrap=True)
        progress.advance(task)

    with progress:
        summary = run_job(adapter, inputs, options, on_start=on_start, on_image=on_image)
    err.print(f"camloc: {summary.line()} → {out / 'results.jsonl'}")
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def info(model: ModelOption = None, weights: WeightsOption = None, device: DeviceOption = "cpu") -> None:
    """Show what camloc found in a model: feature layer, head, classes, preprocessing."""
    adapter = load(model, weights, device)
    print(f"model:         {adapter.name} ({adapter.source})")
    print(f"classes:       {adapter.num_classes}")
    print(f"input size:    {adapter.input_size[0]}x{adapter.input_size[1]}")
    print(f"normalisation: mean={adapter.mean} std={adapter.std}")
    print(f"feature layer: {adapter.feature_layer}")
    if adapter.head_error:
        print(f"plain CAM:     not exact: {adapter.head_error}")
    else:
        neck = ", ".join(step.kind for step in adapter.neck) or "none"
        print(f"head:          GAP → [{neck}] → linear {tuple(adapter.weight.shape)} (exact CAM)")
    if adapter.box_threshold is not None:
        print(f"box rule:      {adapter.box_threshold} (recommended by the checkpoint)")


@app.command()
def train(
    data: Annotated[Path | None, typer.Argument(help="folder with one sub-folder of images per class")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (or a .pt checkpoint path)")] = Path("camloc-train"),
    train_dir: Annotated[Path | None, typer.Option("--train", help="training folder (with --val)")] = None,
    val_dir: Annotated[Path | None, typer.Option("--val", help="validation folder (with --train)")] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    unfreeze: Annotated[int, typer.Option(
        "--unfreeze", help="fine-tune the last N backbone stages (0: frozen, cached features)")] = 0,
    epochs: Annotated[int, typer.Option("--epochs", "-e")] = 12,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 32,
    lr: Annotated[float, typer.Option("--lr", help="head learning rate (AdamW)")] = 3e-3,
    backbone_lr_factor: Annotated[float, typer.Option("--backbone-lr-factor", help="backbone lr = lr × this")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 1e-4,
    schedule: Annotated[str, typer.Option("--schedule", help="cosine, step or constant")] = "cosine",
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", min=0.0, max=0.99)] = 0.0,
    balance: Annotated[bool, typer.Option("--balance", help="weight classes by inverse frequency")] = False,
    image_size: Annotated[int | None, typer.Option("--image-size", help="network input side (default: the backbone's)")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="validation share per class without --val")] = 0.2,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="random resized crops and flips when fine-tuning")] = True,
    patience: Annotated[int | None, typer.Option("--patience", help="early stop after N epochs without a better val accuracy")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=0, help="image decoding processes")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run in --out")] = False,
    examples: Annotated[int, typer.Option("--examples", min=0, help="validation images drawn with their CAMs")] = 6,
    box_threshold: Annotated[str, typer.Option(
        "--box-threshold", help="box rule stored in the checkpoint for camloc run")] = "otsu2",
    device: DeviceOption = "auto",
) -> None:
    """Train a GAP + linear classifier on labelled folders; its CAMs work everywhere camloc does."""
    from .train import TrainOptions, train as train_job

    options = TrainOptions(
        data=data, out=out, train_dir=train_dir, val_dir=val_dir, model=model,
        weights=str(weights) if weights is not None else None, unfreeze=unfreeze, epochs=epochs,
        batch_size=batch_size, lr=lr, backbone_lr_factor=backbone_lr_factor, weight_decay=weight_decay,
        schedule=schedule, label_smoothing=label_smoothing, balance=balance, image_size=image_size,
        val_fraction=val_fraction, augment=augment, patience=patience, seed=seed, workers=workers,
        device=device, resume=resume, examples=examples, box_threshold=box_threshold,
    )
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err, disable=not err.is_terminal, transient=True)
    tasks: dict[str, int] = {}

    def on_step(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(label, total=total)
        progress.update(tasks[label], completed=done, visible=done < total)

    with progress:
        result = train_job(options, log=lambda line: progress.console.print(line, soft_wrap=True,
                                                                           highlight=False),
                           progress=on_step)
    skipped = f", {len(result.skipped)} unreadable image(s) skipped" if result.skipped else ""
    err.print(f"camloc: best val accuracy {result.best_accuracy:.3f} at epoch {result.best_epoch}"
              f"{skipped} → {result.checkpoint}")


def main() -> None:
    """Console entry point: one clear line for user errors, never a traceback."""
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except CamlocError as error:
        err.print(f"[bold red]error:[/] {error}", soft_wrap=True)
        sys.exit(2)
    except Exception as error:  # click usage errors and the like
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
