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


class Engine(str, Enum):
    local = "local"
    ray = "ray"


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
    threshold: Annotated[float, typer.Option("--threshold", "-t", help="box threshold, fraction of the map's range")] = 0.2,
    all_components: Annotated[bool, typer.Option("--all-components", help="a box per component, not only the largest")] = False,
    min_area: Annotated[float, typer.Option("--min-area", help="with --all-components: smallest box, fraction of image")] = 0.0,
    colormap: Annotated[str, typer.Option("--colormap", help="matplotlib colormap")] = "jet",
    alpha: Annotated[float, typer.Option("--alpha", "--opacity", min=0.0, max=1.0, help="map opacity")] = 0.5,
    image_format: Annotated[ImageFormat, typer.Option("--format", help="rendered image format")] = ImageFormat.png,
    panels: Annotated[bool, typer.Option("--panels", help="also write overlay | image | map panels")] = False,
    grid: Annotated[bool | None, typer.Option("--grid/--no-grid", help="top-k grid (default: when k > 1)")] = None,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="write normalised maps as .npy")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 16,
    workers: Annotated[int, typer.Option("--workers", min=0, help=(
        "local engine: image decoding processes (0: in the main process); "
        "ray engine: model actors in the pool (0 counts as 1)"))] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="skip images already in results.jsonl")] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="refuse larger images")] = 80_000_000,
    device: DeviceOption = "auto",
    engine: Annotated[Engine, typer.Option("--engine", help=(
        "local: this process; ray: Ray Data, local or on a cluster (pip install 'camloc\\[ray]')"))
    ] = Engine.local,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help=(
        "with --engine ray: a running cluster ('auto', 'ray://head:10001'); default: a local Ray"))
    ] = None,
) -> None:
    """Explain images: overlays, boxes and results.jsonl in --out."""
    from .runner import RunOptions, run as run_job

    options = RunOptions(
        out=out, topk=topk, rank=rank, classes=tuple(classes or ()), method=method,
        policy=policy.value, threshold=threshold, largest_only=not all_components, min_area=min_area,
        colormap=colormap, alpha=alpha, image_format=image_format.value, panels=panels, grid=grid,
        save_maps=save_maps, batch_size=batch_size, workers=workers, resume=resume,
        max_pixels=max_pixels,
    )
    from .render import colormap_lut

    colormap_lut(colormap)  # an unknown colormap fails before any work
    if engine is Engine.ray:
        from .ray_engine import import_ray

        import_ray()  # without Ray installed: one line naming the extra, before loading anything
    elif ray_address:
        fail("--ray-address needs --engine ray")
    adapter = load(model, weights, "cpu" if engine is Engine.ray else device)
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
        if engine is Engine.ray:
            from .ray_engine import RayOptions
            from .ray_engine import run as run_ray

            ray_options = RayOptions(address=ray_address, workers=max(1, workers))
            summary = run_ray(adapter, inputs, options, ray_options, device=device,
                              on_start=on_start, on_image=on_image)
        else:
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
