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
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .allocator import tune_allocator
from .cam import DEFAULT_BOX_THRESHOLD, DEFAULT_FLIP, DEFAULT_NORMALIZATION, DEFAULT_SCALES
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


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", help="efficientnet_lite0 (default, embedded), a timm/torchvision name, "
    "a camloc checkpoint, or a .keras/.h5/.onnx file")]
WeightsOption = Annotated[Path | None, typer.Option(
    "--weights", help="local weights file for a named model ('random' for untrained weights)")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")]
MethodOption = Annotated[str, typer.Option(
    "--method", help="auto (CAM when exact, else gradcam), cam, gradcam, gradcam++, layercam, scorecam")]
PolicyOption = Annotated[Policy, typer.Option("--policy", help="how images are resized for the network")]
AllComponentsOption = Annotated[bool, typer.Option(
    "--all-components", help="a box per component, not only the largest")]
MinAreaOption = Annotated[float, typer.Option(
    "--min-area", help="with --all-components: smallest box, fraction of image")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", min=1)]
PreprocessOption = Annotated[str | None, typer.Option(
    "--preprocess", help="input convention of a .keras/.onnx model: caffe, tf, torch or none "
    "(default: the file's metadata, else the Keras application's, else none for Keras, "
    "torch for ONNX)")]
InputSizeOption = Annotated[int | None, typer.Option(
    "--input-size", min=16,
    help="side of the image fed to the network (default: the model's, 224)")]
ThresholdOption = Annotated[float, typer.Option(
    "--threshold", "-t", help="box threshold τ, fraction of the normalised map")]
FlipOption = Annotated[bool, typer.Option(
    "--flip/--no-flip", help="average the maps of the image and its mirror")]
DEFAULT_SCALES_TEXT = ",".join(f"{s:g}" for s in DEFAULT_SCALES)
ScalesOption = Annotated[str, typer.Option(
    "--scales", help="also average views resized by these factors of --input-size (1 = none)")]


DilateOption = Annotated[bool, typer.Option(
    "--dilate/--no-dilate", help="run the network's last stage at 2x resolution (its stride "
    "replaced by dilation): 2x finer maps, better boxes; --no-dilate: the network as trained")]


class Normalization(str, Enum):
    max = "max"
    minmax = "minmax"


NormalizeOption = Annotated[Normalization, typer.Option(
    "--normalize", help="maps to [0, 1] before --threshold: relu/max, or min-max (the paper)")]


def parse_scales(text: str) -> tuple[float, ...]:
    """``"1,0.5"`` → ``(1.0, 0.5)``; the first scale is the input size itself."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CamlocError(
            f"--scales takes factors separated by commas (e.g. 1,0.5), got {text!r}") from None
    if not scales or any(not 0.1 <= s <= 4 for s in scales):
        raise CamlocError(f"--scales factors must be between 0.1 and 4, got {text!r}")
    return scales if scales[0] == 1.0 else (1.0, *[s for s in scales if s != 1.0])


def load(model: str | None, weights: Path | None, device: str, preprocess: str | None = None,
         dilate: bool = True):
    from .models import load_model

    return load_model(model, weights=str(weights) if weights is not None else None, device=device,
                      preprocess=preprocess, dilate=dilate)


@app.command()
def run(
    inputs: Annotated[list[str], typer.Argument(help="image files, folders (recursive) or glob patterns")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("camloc-out"),
    model: ModelOption = None,
    weights: WeightsOption = None,
    topk: Annotated[int, typer.Option("--topk", "-k", help="explain the k most likely classes")] = 1,
    rank: Annotated[int | None, typer.Option(
        "--rank", help="explain only the n-th most likely class (1 = top)")] = None,
    classes: Annotated[list[str] | None, typer.Option(
        "--class", "-c", help="explain this class (name or index); repeatable")] = None,
    method: MethodOption = "auto",
    layer: Annotated[str | None, typer.Option(
        "--layer", help="target layer of the gradient methods (default: last spatial layer)")] = None,
    policy: PolicyOption = Policy.squash,
    threshold: Annotated[str | None, typer.Option(
        "--threshold", "-t", help="box threshold: fraction of the map's range, or otsu / otsu2 / mean "
        "(default: the model's recommended rule, else 0.25)")] = None,
    input_size: InputSizeOption = None,
    flip: FlipOption = DEFAULT_FLIP,
    scales: ScalesOption = DEFAULT_SCALES_TEXT,
    normalize: NormalizeOption = Normalization(DEFAULT_NORMALIZATION),
    dilate: DilateOption = True,
    all_components: AllComponentsOption = False,
    min_area: MinAreaOption = 0.0,
    colormap: Annotated[str, typer.Option("--colormap", help="matplotlib colormap")] = "jet",
    alpha: Annotated[float, typer.Option("--alpha", "--opacity", min=0.0, max=1.0, help="map opacity")] = 0.5,
    image_format: Annotated[ImageFormat, typer.Option("--format", help="rendered image format")] = ImageFormat.png,
    panels: Annotated[bool, typer.Option("--panels", help="also write overlay | image | map panels")] = False,
    grid: Annotated[bool | None, typer.Option("--grid/--no-grid", help="top-k grid (default: when k > 1)")] = None,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="write normalised maps as .npy")] = False,
    batch_size: BatchSizeOption = 16,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help=(
        "local engine: image decoding processes (default: automatic, 0: in the main process); "
        "ray engine: model actors in the pool (default 1)"))] = None,
    amp: Annotated[bool, typer.Option("--amp", help="bfloat16 autocast for the model")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="skip images already in results.jsonl")] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="refuse larger images")] = 80_000_000,
    device: DeviceOption = "auto",
    preprocess: PreprocessOption = None,
    engine: Annotated[Engine, typer.Option("--engine", help=(
        "local: this process; ray: Ray Data, local or on a cluster (pip install 'camloc\\[ray]')"))
    ] = Engine.local,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help=(
        "with --engine ray: a running cluster ('auto', 'ray://head:10001'); default: a local Ray"))
    ] = None,
) -> None:
    """Explain images: overlays, boxes and results.jsonl in --out."""
    from .boxes import parse_threshold
    from .cam import DEFAULT_BOX_THRESHOLD
    from .render import colormap_lut
    from .runner import RunOptions
    from .runner import run as run_job

    try:
        box_threshold = parse_threshold(threshold) if threshold is not None else None
    except ValueError as error:
        fail(str(error))
    colormap_lut(colormap)  # an unknown colormap fails before any work
    if engine is Engine.ray:
        from .ray_engine import import_ray

        import_ray()  # without Ray installed: one line naming the extra, before loading anything
    elif ray_address:
        fail("--ray-address needs --engine ray")
    adapter = load(model, weights, "cpu" if engine is Engine.ray else device, preprocess, dilate)
    if box_threshold is None:  # an explicit flag, else the checkpoint's rule, else the paper's
        box_threshold = adapter.box_threshold if adapter.box_threshold is not None else DEFAULT_BOX_THRESHOLD
    options = RunOptions(
        out=out, topk=topk, rank=rank, classes=tuple(classes or ()), method=method,
        layer=layer,
        policy=policy.value, threshold=box_threshold, largest_only=not all_components, min_area=min_area,
        colormap=colormap, alpha=alpha, image_format=image_format.value, panels=panels, grid=grid,
        save_maps=save_maps, batch_size=batch_size, workers=workers, amp=amp, resume=resume,
        max_pixels=max_pixels, input_size=input_size, flip=flip,
        scales=parse_scales(scales), normalization=normalize.value,
    )
    show_bar = err.is_terminal
    progress = Progress(TextColumn("explaining"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err, disable=not show_bar, transient=True)
    task = None

    def on_start(total: int) -> None:
        nonlocal task
        task = progress.add_task("run", total=total)

    def on_image(record: dict) -> None:
        if record["error"]:
            progress.console.print(f"[yellow]warning:[/] skipped {escape(record['error'])}", soft_wrap=True)
        progress.advance(task)

    with progress:
        if engine is Engine.ray:
            from .ray_engine import RayOptions
            from .ray_engine import run as run_ray

            ray_options = RayOptions(address=ray_address, workers=max(1, workers or 1))
            summary = run_ray(adapter, inputs, options, ray_options, device=device,
                              on_start=on_start, on_image=on_image)
        else:
            summary = run_job(adapter, inputs, options, on_start=on_start, on_image=on_image)
    err.print(f"camloc: {summary.line()} → {out / 'results.jsonl'}")
    if summary.failed:
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    images: Annotated[Path, typer.Option("--images", help="folder of images (recursive)")],
    boxes: Annotated[Path, typer.Option("--boxes", help="ground truth: CSV "
                                        "(image,label,xmin,ymin,xmax,ymax), VOC XML folder or COCO JSON")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="write the report (plot, gallery, report.md) here")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the metrics here")] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    method: MethodOption = "auto",
    policy: PolicyOption = Policy.squash,
    threshold: ThresholdOption = DEFAULT_BOX_THRESHOLD,
    input_size: InputSizeOption = None,
    flip: FlipOption = DEFAULT_FLIP,
    scales: ScalesOption = DEFAULT_SCALES_TEXT,
    normalize: NormalizeOption = Normalization(DEFAULT_NORMALIZATION),
    dilate: DilateOption = True,
    all_components: AllComponentsOption = False,
    min_area: MinAreaOption = 0.0,
    batch_size: BatchSizeOption = 16,
    workers: Annotated[int, typer.Option("--workers", min=0, help="image decoding processes")] = 0,
    device: DeviceOption = "auto",
) -> None:
    """Measure localization against ground-truth boxes: top-1/GT-known loc, MaxBoxAccV2."""
    from .evaluate import evaluate as run_eval
    from .runner import RunOptions

    options = RunOptions(
        out=out or "camloc-eval", method=method, policy=policy.value, threshold=threshold,
        largest_only=not all_components, min_area=min_area, batch_size=batch_size, workers=workers,
        input_size=input_size, flip=flip,
        scales=parse_scales(scales), normalization=normalize.value,
    )
    options.box_options()  # bad thresholds fail before the model loads
    if not images.is_dir():
        fail(f"--images {images}: not a folder")
    adapter = load(model, weights, device, dilate=dilate)
    progress = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err, disable=not err.is_terminal,
                        transient=True)
    task = progress.add_task("eval", total=None)

    def on_start(total: int) -> None:
        progress.update(task, total=total)

    def on_image(path: str, error: str | None) -> None:
        if error:
            progress.console.print(f"[yellow]warning:[/] skipped {error}", soft_wrap=True)
        progress.advance(task)

    with progress:
        result = run_eval(adapter, images, boxes, options, on_start=on_start, on_image=on_image)
    metrics = result.metrics()
    print_metrics(metrics)
    if json_path is not None:
        import json

        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if out is not None:
        from .report import write_report

        written = write_report(result, out, adapter, options)
        err.print(f"camloc: report → {written['report']}")


def print_metrics(metrics: dict) -> None:
    """The figures on stdout, one per line."""
    counts = metrics["counts"]
    print(f"images:        {metrics['num_images']} evaluated of {counts['images']} "
          f"({counts['without_ground_truth']} without ground truth, {counts['unknown_labels']} "
          f"with unknown labels, {counts['unreadable']} unreadable)")
    for key in ("top1_cls", "top5_cls", "top1_loc", "gt_known_loc", "maxboxacc_v2"):
        print(f"{key + ':':14s} {metrics[key]:.4f}")
    per_iou = ", ".join(f"δ={d}: {v:.4f} (τ={metrics['maxboxacc_v2_best_tau'][d]:g})"
                        for d, v in metrics["maxboxacc_v2_per_iou"].items())
    print(f"  per IoU:     {per_iou}")
    print(f"default τ:     {metrics['default_tau']:g}")
    print(f"best τ:        {metrics['best_tau']:g} "
          f"(top1_loc {metrics['top1_loc_at_best_tau']:.4f}, gt_known_loc {metrics['gt_known_loc_at_best_tau']:.4f})")


@app.command()
def info(model: ModelOption = None, weights: WeightsOption = None, device: DeviceOption = "cpu",
         preprocess: PreprocessOption = None, dilate: DilateOption = True) -> None:
    """Show what camloc found in a model: feature layer, head, classes, preprocessing."""
    adapter = load(model, weights, device, preprocess, dilate)
    print(f"model:         {adapter.name} ({adapter.source})")
    print(f"classes:       {adapter.num_classes}")
    print(f"input size:    {adapter.input_size[0]}x{adapter.input_size[1]}")
    print(f"normalisation: mean={adapter.mean} std={adapter.std}")
    print(f"feature layer: {adapter.feature_layer}")
    if adapter.dilated:
        print("last stage:    dilated (stride 2 → 1, maps at 1/16 of the input instead of 1/32)")
    from .gradcam import find_spatial_layer

    print(f"gradient layer: {find_spatial_layer(adapter).name} (default --layer of gradcam ...)")
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
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="output folder (or a .pt checkpoint path)")] = Path("camloc-train"),
    train_dir: Annotated[Path | None, typer.Option("--train", help="training folder (with --val)")] = None,
    val_dir: Annotated[Path | None, typer.Option("--val", help="validation folder (with --train)")] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    unfreeze: Annotated[int, typer.Option(
        "--unfreeze", help="fine-tune the last N backbone stages (0: frozen, cached features)")] = 0,
    epochs: Annotated[int, typer.Option("--epochs", "-e")] = 12,
    batch_size: BatchSizeOption = 32,
    lr: Annotated[float, typer.Option("--lr", help="head learning rate (AdamW)")] = 3e-3,
    backbone_lr_factor: Annotated[float, typer.Option("--backbone-lr-factor", help="backbone lr = lr × this")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 1e-4,
    schedule: Annotated[str, typer.Option("--schedule", help="cosine, step or constant")] = "cosine",
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", min=0.0, max=0.99)] = 0.0,
    balance: Annotated[bool, typer.Option("--balance", help="weight classes by inverse frequency")] = False,
    image_size: Annotated[int | None, typer.Option(
        "--image-size", help="network input side (default: the backbone's)")] = None,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="validation share per class without --val")] = 0.2,
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment", help="random resized crops and flips when fine-tuning")] = True,
    patience: Annotated[int | None, typer.Option(
        "--patience", help="early stop after N epochs without a better val accuracy")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=0, help="image decoding processes")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run in --out")] = False,
    examples: Annotated[int, typer.Option("--examples", min=0, help="validation images drawn with their CAMs")] = 6,
    box_threshold: Annotated[str, typer.Option(
        "--box-threshold", help="box rule stored in the checkpoint for camloc run")] = "otsu2",
    device: DeviceOption = "auto",
) -> None:
    """Train a GAP + linear classifier on labelled folders; its CAMs work everywhere camloc does."""
    from .train import TrainOptions
    from .train import train as train_job

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


@app.command()
def serve(
    model: ModelOption = None,
    weights: WeightsOption = None,
    host: Annotated[str, typer.Option(
        "--host", help="address to bind (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 8000,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", min=0.001, help="largest upload in MB")] = 20.0,
    max_pixels: Annotated[int, typer.Option(
        "--max-pixels", min=1, help="refuse larger images")] = 40_000_000,
    device: DeviceOption = "auto",
    dilate: DilateOption = True,
) -> None:
    """Serve a web page to try camloc and a JSON API (POST /api/explain, docs at /docs)."""
    try:
        from .serve import serve as run_server
    except ImportError as error:
        fail(f"camloc serve needs the serve extra: pip install 'camloc[serve]' ({error})")
    adapter = load(model, weights, device, dilate=dilate)
    run_server(adapter, host, port, max_upload=int(max_upload_mb * 1e6), max_pixels=max_pixels,
               on_ready=lambda url: err.print(f"camloc: serving {adapter.name} at {url}"))


@app.command()
def export(
    onnx: Annotated[Path, typer.Option("--onnx", help="write the model as ONNX to this file")],
    model: ModelOption = None,
    weights: WeightsOption = None,
    topk: Annotated[int, typer.Option("--topk", "-k", help="CAMs of the top k classes")] = 5,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version")] = 17,
    dilate: DilateOption = True,
) -> None:
    """Export a PyTorch model as ONNX whose outputs are logits, top-k classes and their CAMs."""
    from .onnx_models import export_onnx

    adapter = load(model, weights, "cpu", dilate=dilate)
    path = export_onnx(adapter, onnx, topk=topk, opset=opset)
    h, w = adapter.input_size
    err.print(f"camloc: wrote {path} (input (N, 3, {h}, {w}) normalised with mean={adapter.mean} "
              f"std={adapter.std}; outputs logits, classes (N, {topk}), cams (N, {topk}, h, w))")


def main() -> None:
    """Console entry point: one clear line for user errors, never a traceback."""
    tune_allocator()
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except CamlocError as error:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        sys.exit(2)
    except Exception as error:  # click usage errors and the like
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
