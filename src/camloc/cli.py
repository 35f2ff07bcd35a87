"""The ``camloc`` command: a thin shell over the library.

Every command builds the one :class:`camloc.config.ExplainConfig` from its options and calls
the shared pipeline. User errors print one line (``error: ...``) and exit with status 2,
before any model is loaded where they can be known then; a run with failed inputs exits
with status 1 after processing everything else. Only ``typer``, ``rich`` and camloc's
torch-free modules are imported here, so ``camloc --help`` answers at once; each command
imports what it needs.
"""

from __future__ import annotations

import atexit
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Protocol, TypeGuard

import typer
from rich.console import Console
from rich.text import Text

from . import __version__
from .config import (
    DEFAULT_FLIP,
    DEFAULT_METHOD,
    DEFAULT_NORMALIZATION,
    DEFAULT_POLICY,
    DEFAULT_RUNTIME,
    DEFAULT_SCALES,
    GRADIENT_FREE_METHODS,
    NORMALIZATIONS,
    RESIZE_POLICIES,
    RUNTIMES,
    ExplainConfig,
    parse_scales,
)
from .errors import CamlocError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from .exports import ExportOptions
    from .models import ClassifierAdapter

err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

INPUTS, MODEL, METHOD, BOXES, LOOK, SPEED, EXPORTS = (
    "Inputs and outputs", "Model", "Method and views", "Boxes", "Rendering", "Performance", "Detection exports")


def _version(value: bool) -> None:
    if value:
        print(f"camloc {__version__}")
        raise typer.Exit(0)


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Class Activation Maps: where an image classifier looks, and object boxes from it.",
)


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print camloc's version and exit")] = False) -> None:
    """Class Activation Maps: where an image classifier looks, and object boxes from it."""


def say(message: str, style: str | None = None, prefix: str = "") -> None:
    """One line on stderr, printed verbatim (no markup is read from ``message``)."""
    line = Text(prefix, style=style or "") if prefix else Text()
    line.append(message.replace("\n", "\\n").replace("\r", "\\r"))
    err.print(line)


def fail(message: str, code: int = 2) -> NoReturn:
    say(message, "bold red", "error: ")
    raise typer.Exit(code)


# --------------------------------------------------------------------------- shared options

# Choices built from the config's tuples (one list of names); mypy cannot list such members.
Policy = Enum("Policy", {name.replace("-", "_"): name for name in RESIZE_POLICIES}, type=str)  # type: ignore[misc]
Normalization = Enum("Normalization", {name: name for name in NORMALIZATIONS}, type=str)  # type: ignore[misc]
Runtime = Enum("Runtime", {name: name for name in RUNTIMES}, type=str)  # type: ignore[misc]


class ImageFormat(str, Enum):
    png = "png"
    jpg = "jpg"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", rich_help_panel=MODEL, help="efficientnet_lite0 (default, embedded), a timm/torchvision "
    "name, a camloc checkpoint, or a .keras/.h5/.onnx file")]
WeightsOption = Annotated[Path | None, typer.Option(
    "--weights", rich_help_panel=MODEL, help="local weights file for a named model ('random' for untrained "
    "weights)")]
DeviceOption = Annotated[str, typer.Option("--device", rich_help_panel=MODEL, help="auto, cpu, cuda, cuda:1 ...")]
PreprocessOption = Annotated[str | None, typer.Option(
    "--preprocess", rich_help_panel=MODEL, help="input convention of a .keras/.onnx model: caffe, tf, torch "
    "or none (default: the file's metadata, else the Keras application's, else none for Keras, torch for ONNX)")]
DilateOption = Annotated[bool, typer.Option(
    "--dilate/--no-dilate", rich_help_panel=MODEL, help="run the network's last stage at 2x resolution (its "
    "stride replaced by dilation): 2x finer maps, better boxes; --no-dilate: the network as trained")]
RuntimeOption = Annotated[Runtime, typer.Option(
    "--runtime", rich_help_panel=SPEED, help="where plain CAM's forward pass runs: auto (the fastest runtime that "
    "agrees with PyTorch here, chosen once per model and cached), torch (eager), onnxruntime, openvino; "
    "gradient methods and --amp always run in eager PyTorch")]
MethodOption = Annotated[str, typer.Option(
    "--method", rich_help_panel=METHOD, help="auto (walkcam when the CAM is exact, cam for ONNX/Keras "
    "models, else gradcam), cam (the paper's), walkcam (CAM walked over feature affinities; --layer: its guide "
    "layer), gradcam, gradcam++, layercam, scorecam")]
LayerOption = Annotated[str | None, typer.Option(
    "--layer", rich_help_panel=METHOD, help="target layer of the gradient methods (default: last spatial layer), "
    "guide layer of walkcam (default: the stage before the last)")]
PolicyOption = Annotated[Policy, typer.Option(
    "--policy", rich_help_panel=METHOD, help="how images are resized for the network")]
InputSizeOption = Annotated[int | None, typer.Option(
    "--input-size", min=16, rich_help_panel=METHOD, help="side of the image fed to the network (default: the "
    "model's)")]
FlipOption = Annotated[bool, typer.Option(
    "--flip/--no-flip", rich_help_panel=METHOD, help="average the maps of the image and its mirror")]
ScalesOption = Annotated[str, typer.Option(
    "--scales", rich_help_panel=METHOD, help="also average views resized by these factors of --input-size "
    "(e.g. 1,2; 1 = none)")]
AmpOption = Annotated[bool, typer.Option(
    "--amp", rich_help_panel=SPEED, help="bfloat16 autocast for the network (maps stay float32)")]
ThresholdOption = Annotated[str | None, typer.Option(
    "--threshold", "-t", rich_help_panel=BOXES, help="box threshold: fraction of the map's range, or otsu / "
    "otsu2 / mean (default: the model's stored rule, else otsu for walkcam, 0.25 for the others)")]
NormalizeOption = Annotated[Normalization, typer.Option(
    "--normalize", rich_help_panel=BOXES, help="maps to [0, 1] before --threshold: min-max (the paper) or "
    "relu/max")]
AllComponentsOption = Annotated[bool, typer.Option(
    "--all-components", rich_help_panel=BOXES, help="a box per component, not only the largest")]
MinAreaOption = Annotated[float, typer.Option(
    "--min-area", rich_help_panel=BOXES, help="with --all-components: smallest box, fraction of the image")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", min=1, rich_help_panel=SPEED)]
WorkersOption = Annotated[int | None, typer.Option("--workers", min=0, rich_help_panel=SPEED, help=(
    "image decoding threads (default: automatic, 0: in turn with the model); with --engine ray: model actors "
    "(default 1)"))]
MaxPixelsOption = Annotated[int, typer.Option(
    "--max-pixels", min=1, rich_help_panel=INPUTS, help="refuse larger images (checked before decoding)")]
DEFAULT_SCALES_TEXT = ",".join(f"{s:g}" for s in DEFAULT_SCALES)
EXPORT_FORMATS_TEXT = "coco, yolo, voc, labelstudio"
MasksOption = Annotated[bool, typer.Option(
    "--masks", rich_help_panel=EXPORTS, help="COCO export: each box's thresholded region as RLE segmentation "
    "(pip install 'camloc\\[export]')")]
LabelStudioUrlOption = Annotated[str | None, typer.Option(
    "--labelstudio-url", rich_help_panel=EXPORTS, help="prefix of the image URLs in labelstudio.json, before "
    "each image's path relative to the images' common folder (default: /data/local-files/?d=)")]


def export_options(formats: str | None, masks: bool, labelstudio_url: str | None) -> ExportOptions:
    """``--export``/``--to``, ``--masks``, ``--labelstudio-url`` → the exports' options (checked)."""
    from .exports import ExportOptions, parse_formats

    if masks and not formats:
        fail("--masks needs --export coco (the masks are COCO segmentation)")
    return ExportOptions(formats=parse_formats(formats), masks=masks,
                         **({"image_url": labelstudio_url} if labelstudio_url is not None else {}))


def explain_config(*, topk: int = 1, rank: int | None = None, classes: list[str] | None = None,
                   method: str = DEFAULT_METHOD, layer: str | None = None, policy: Any = DEFAULT_POLICY,
                   input_size: int | None = None, flip: bool = DEFAULT_FLIP, scales: str = DEFAULT_SCALES_TEXT,
                   normalize: Any = DEFAULT_NORMALIZATION, threshold: str | None = None,
                   all_components: bool = False, min_area: float = 0.0, amp: bool = False) -> ExplainConfig:
    """The command's options → the one config every door uses (checked before any work)."""
    return ExplainConfig(
        topk=topk, rank=rank, classes=tuple(classes or ()), method=method, layer=layer,
        policy=getattr(policy, "value", policy), input_size=input_size, flip=flip, scales=parse_scales(scales),
        normalization=getattr(normalize, "value", normalize), threshold=threshold,
        largest_only=not all_components, min_area=min_area, amp=amp)


def load(model: str | None, weights: Path | None, device: str, preprocess: str | None = None,
         dilate: bool = True, runtime: Any = "torch", method: str = DEFAULT_METHOD, layer: str | None = None,
         amp: bool = False) -> ClassifierAdapter:
    from .models import load_model

    runtime = getattr(runtime, "value", runtime)
    eager_only = None  # what needs the eager PyTorch network
    if method not in GRADIENT_FREE_METHODS:
        eager_only = f"--method {method} hooks PyTorch modules and needs autograd"
    elif layer is not None and method != "walkcam":
        eager_only = "--layer picks a gradient method's layer, and gradient methods need autograd"
    elif amp:
        eager_only = "--amp is bfloat16 autocast of the PyTorch network"
    if eager_only and runtime != "torch":
        if runtime != "auto":
            fail(f"--runtime {runtime}: {eager_only}; use --runtime torch (or auto)")
        runtime = "torch"  # auto: the network runs in eager PyTorch
    return load_model(model, weights=str(weights) if weights is not None else None, device=device,
                      preprocess=preprocess, dilate=dilate, runtime=runtime,
                      log=lambda line: say(line, prefix="camloc: "))


def need(module: str, extra: str, what: str) -> None:
    """A missing optional dependency: one line naming the extra, before any model is loaded."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        fail(f"{what} needs the {extra} extra: pip install 'camloc[{extra}]'")


def progress_bar(label: str) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, disable=not err.is_terminal, transient=True)


# --------------------------------------------------------------------------- run


@app.command()
def run(
    inputs: Annotated[list[str] | None, typer.Argument(
        help="image files, folders (recursive) or glob patterns", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", rich_help_panel=INPUTS, help="output folder")] = Path(
        "camloc-out"),
    resume: Annotated[bool, typer.Option(
        "--resume", rich_help_panel=INPUTS, help="skip images already in results.jsonl (same file, unchanged)")
    ] = False,
    max_pixels: MaxPixelsOption = 80_000_000,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
    preprocess: PreprocessOption = None,
    dilate: DilateOption = True,
    runtime: RuntimeOption = Runtime(DEFAULT_RUNTIME),
    topk: Annotated[int, typer.Option(
        "--topk", "-k", min=1, rich_help_panel=METHOD, help="explain the k most likely classes")] = 1,
    rank: Annotated[int | None, typer.Option(
        "--rank", min=1, rich_help_panel=METHOD, help="explain only the n-th most likely class (1 = top)")] = None,
    classes: Annotated[list[str] | None, typer.Option(
        "--class", "-c", rich_help_panel=METHOD, help="explain this class (name or index); repeatable")] = None,
    method: MethodOption = DEFAULT_METHOD,
    layer: LayerOption = None,
    policy: PolicyOption = Policy(DEFAULT_POLICY),
    input_size: InputSizeOption = None,
    flip: FlipOption = DEFAULT_FLIP,
    scales: ScalesOption = DEFAULT_SCALES_TEXT,
    threshold: ThresholdOption = None,
    normalize: NormalizeOption = Normalization(DEFAULT_NORMALIZATION),
    all_components: AllComponentsOption = False,
    min_area: MinAreaOption = 0.0,
    colormap: Annotated[str, typer.Option("--colormap", rich_help_panel=LOOK, help="matplotlib colormap")] = "jet",
    alpha: Annotated[float, typer.Option(
        "--alpha", "--opacity", min=0.0, max=1.0, rich_help_panel=LOOK, help="map opacity")] = 0.5,
    image_format: Annotated[ImageFormat, typer.Option(
        "--format", rich_help_panel=LOOK, help="rendered image format")] = ImageFormat.png,
    panels: Annotated[bool, typer.Option(
        "--panels", rich_help_panel=LOOK, help="also write overlay | image | map panels")] = False,
    grid: Annotated[bool | None, typer.Option(
        "--grid/--no-grid", rich_help_panel=LOOK, help="top-k grid (default: when k > 1)")] = None,
    save_maps: Annotated[bool, typer.Option(
        "--save-maps", rich_help_panel=LOOK, help="write normalised maps as .npy")] = False,
    batch_size: BatchSizeOption = 16,
    workers: WorkersOption = None,
    amp: AmpOption = False,
    engine: Annotated[Engine, typer.Option("--engine", rich_help_panel=SPEED, help=(
        "local: this process; ray: Ray Data, local or on a cluster (pip install 'camloc\\[ray]')"))
    ] = Engine.local,
    ray_address: Annotated[str | None, typer.Option("--ray-address", rich_help_panel=SPEED, help=(
        "with --engine ray: a running cluster ('auto', 'ray://head:10001'); default: a local Ray"))
    ] = None,
    export: Annotated[str | None, typer.Option(
        "--export", rich_help_panel=EXPORTS, help=f"also export the boxes for detectors, comma-separated: "
        f"{EXPORT_FORMATS_TEXT} (coco.json, yolo/, voc/, labelstudio.json in --out)")] = None,
    masks: MasksOption = False,
    labelstudio_url: LabelStudioUrlOption = None,
) -> None:
    """Explain images: overlays, boxes and results.jsonl in --out (and detection exports with --export)."""
    if not inputs:
        fail("camloc run needs at least one image, folder or glob pattern (camloc run --help)")
    if ray_address and engine is not Engine.ray:
        fail("--ray-address needs --engine ray")
    config = explain_config(topk=topk, rank=rank, classes=classes, method=method, layer=layer, policy=policy,
                            input_size=input_size, flip=flip, scales=scales, normalize=normalize,
                            threshold=threshold, all_components=all_components, min_area=min_area, amp=amp)
    exports = export_options(export, masks, labelstudio_url)
    if engine is Engine.ray:
        need("ray", "ray", "--engine ray")
    if masks:
        need("pycocotools", "export", "--masks")
    from .jobs.files import OutputLock, check_out_dir
    from .jobs.local import OutputOptions, RunOptions

    options = RunOptions(out=out, config=config, outputs=OutputOptions(
        colormap=colormap, alpha=alpha, image_format=image_format.value, panels=panels, grid=grid,
        save_maps=save_maps), batch_size=batch_size, workers=workers, resume=resume, max_pixels=max_pixels,
        exports=exports)
    check_out_dir(out)
    with OutputLock(out):  # an --out in use by another run is refused before the model loads
        pass
    adapter = load(model, weights, "cpu" if engine is Engine.ray else device, preprocess, dilate, runtime,
                   method, layer, amp)
    progress = progress_bar("explaining")
    task: TaskID | None = None
    finished = 0

    def on_start(total: int) -> None:
        nonlocal task
        task = progress.add_task("run", total=total)

    def on_image(record: dict) -> None:
        nonlocal finished
        finished += 1
        if record["error"]:
            progress.console.print(Text("warning: ", style="yellow") + Text(
                "skipped " + record["error"].replace("\n", "\\n").replace("\r", "\\r")), soft_wrap=True)
        if task is not None:
            progress.advance(task)

    try:
        with progress:
            if engine is Engine.ray:
                from .jobs.ray import RayOptions
                from .jobs.ray import run as run_ray

                ray_options = RayOptions(address=ray_address, workers=max(1, workers or 1))
                summary = run_ray(adapter, inputs, options, ray_options, device=device,
                                  on_start=on_start, on_image=on_image)
            else:
                from .jobs.local import run as run_local

                summary = run_local(adapter, inputs, options, on_start=on_start, on_image=on_image)
    except KeyboardInterrupt:
        say(f"interrupted after {finished} image(s), recorded in {out / 'results.jsonl'}; "
            "run the same command with --resume to continue", "yellow", "camloc: ")
        raise typer.Exit(130) from None
    say(f"{summary.line()} → {out / 'results.jsonl'}", prefix="camloc: ")
    if summary.exports is not None:
        say(summary.exports.line(), prefix="camloc: ")
    if summary.failed:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- convert


@app.command()
def convert(
    run_dir: Annotated[Path | None, typer.Argument(
        help="the --out folder of a finished camloc run (its results.jsonl)", show_default=False)] = None,
    to: Annotated[str | None, typer.Option(
        "--to", "-t", rich_help_panel=EXPORTS, help=f"formats, comma-separated: {EXPORT_FORMATS_TEXT}")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", rich_help_panel=INPUTS, help="write the exports here (default: the run's folder)")] = None,
    masks: Annotated[bool, typer.Option(
        "--masks", rich_help_panel=EXPORTS, help="COCO segmentation from the masks the run stored (they are made "
        "from the maps during camloc run --export coco --masks, not here)")] = False,
    labelstudio_url: LabelStudioUrlOption = None,
) -> None:
    """Export a finished run's boxes (results.jsonl) as COCO, YOLO, VOC or Label Studio, without rerunning it."""
    if run_dir is None:
        fail("camloc convert needs the --out folder of a camloc run (camloc convert --help)")
    if not to:
        fail(f"camloc convert needs --to with one or more of {EXPORT_FORMATS_TEXT}")
    options = export_options(to, masks, labelstudio_url)
    from .jobs.exporting import convert as convert_run

    report = convert_run(run_dir, options.formats, out, masks=options.masks, image_url=options.image_url)
    for error in report.failed:
        say("left out " + error, "yellow", "warning: ")
    say(report.line(), prefix="camloc: ")


# --------------------------------------------------------------------------- eval


@app.command("eval")
def evaluate(
    images: Annotated[Path, typer.Option("--images", rich_help_panel=INPUTS, help="folder of images (recursive)")],
    boxes: Annotated[Path, typer.Option("--boxes", rich_help_panel=INPUTS, help="ground truth: CSV "
                                        "(image,label,xmin,ymin,xmax,ymax), VOC XML folder or COCO JSON")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", rich_help_panel=INPUTS, help="write the report (plot, gallery, report.md) here")] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", rich_help_panel=INPUTS, help="write the metrics here")] = None,
    max_pixels: MaxPixelsOption = 80_000_000,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
    preprocess: PreprocessOption = None,
    dilate: DilateOption = True,
    runtime: RuntimeOption = Runtime(DEFAULT_RUNTIME),
    method: MethodOption = DEFAULT_METHOD,
    layer: LayerOption = None,
    policy: PolicyOption = Policy(DEFAULT_POLICY),
    input_size: InputSizeOption = None,
    flip: FlipOption = DEFAULT_FLIP,
    scales: ScalesOption = DEFAULT_SCALES_TEXT,
    threshold: ThresholdOption = None,
    normalize: NormalizeOption = Normalization(DEFAULT_NORMALIZATION),
    all_components: AllComponentsOption = False,
    min_area: MinAreaOption = 0.0,
    choose_rule: Annotated[bool, typer.Option(
        "--choose-rule", rich_help_panel=BOXES, help="score the candidate box rules on these images and "
        "name the one that localizes best")] = False,
    save_rule: Annotated[bool, typer.Option(
        "--save-rule", rich_help_panel=BOXES, help="with --choose-rule: store the chosen rule with the model "
        "file (in a checkpoint, else in MODEL.json) so every door uses it")] = False,
    batch_size: BatchSizeOption = 16,
    workers: WorkersOption = None,
    amp: AmpOption = False,
) -> None:
    """Measure localization against ground-truth boxes: top-1/GT-known loc, MaxBoxAccV2.

    With --choose-rule, also choose the box rule from these boxed images (25 or more make a
    stable choice) and, with --save-rule, store it with the model."""
    config = explain_config(method=method, layer=layer, policy=policy, input_size=input_size, flip=flip,
                            scales=scales, normalize=normalize, threshold=threshold,
                            all_components=all_components, min_area=min_area, amp=amp)
    if save_rule and not choose_rule:
        fail("--save-rule needs --choose-rule")
    if save_rule and (model is None or not Path(model).is_file()):
        fail("--save-rule stores the rule with a model file (--model CHECKPOINT or a .onnx/.keras file); "
             "for the embedded and named models pass --threshold RULE")
    if not images.is_dir():
        fail(f"--images {images}: not a folder")
    if not boxes.exists():
        fail(f"--boxes {boxes}: no such file or folder")
    from .jobs.files import check_out_dir

    if out is not None:
        check_out_dir(out)
    if json_path is not None:
        if json_path.is_dir():
            fail(f"--json {json_path}: is a folder")
        check_out_dir(json_path.parent, "--json")
    adapter = load(model, weights, device, preprocess, dilate, runtime, method, layer, amp)
    from .evaluate.job import evaluate as run_eval
    from .evaluate.rules import SHORTLIST

    progress = progress_bar("evaluating")
    task = progress.add_task("eval", total=None)

    def on_start(total: int) -> None:
        progress.update(task, total=total)

    def on_image(path: str, error: str | None) -> None:
        if error:
            progress.console.print(Text("warning: ", style="yellow") + Text("skipped " + error), soft_wrap=True)
        progress.advance(task)

    with progress:
        result = run_eval(adapter, images, boxes, config, batch_size=batch_size, workers=workers,
                          max_pixels=max_pixels, rules=SHORTLIST if choose_rule else (),
                          on_start=on_start, on_image=on_image)
    metrics = result.metrics()
    print_metrics(metrics)
    if choose_rule:
        metrics["box_rules"] = report_rules(result, model if save_rule else None)
    if json_path is not None:
        import json

        from .jobs.files import write_atomic

        write_atomic(json_path, (json.dumps(metrics, indent=2) + "\n").encode())
    if out is not None:
        from .evaluate.report import write_report

        written = write_report(result, out, adapter, config)
        say(f"report → {written['report']}", prefix="camloc: ")


def report_rules(result: Any, save_to: str | None) -> dict[str, Any]:
    """Score the candidate box rules, print them and the choice; store it with ``save_to``."""
    import numpy as np

    from .evaluate.rules import MIN_IMAGES, SHORTLIST, best_rule, score_rules

    scores = score_rules(np.array([image.rule_ious for image in result.images]).reshape(-1, len(SHORTLIST)),
                         SHORTLIST)
    chosen = best_rule(scores)
    print("box rules:     IoU>=0.5   mean IoU   (the map of the ground-truth class, largest box)")
    for score in scores:
        mark = "  <- chosen" if score is chosen else ""
        print(f"  {_tau(score.rule):11s} {score.hits:8.4f} {score.mean_iou:10.4f}{mark}")
    if len(result.images) < MIN_IMAGES:
        say(f"{len(result.images)} boxed images: {MIN_IMAGES} or more make a stable choice", "yellow", "warning: ")
    if save_to is not None:
        from .models.registry import save_box_rule

        written = save_box_rule(save_to, chosen.rule)
        say(f"box rule {_tau(chosen.rule)} stored in {written}; every door uses it with --model {save_to}",
            prefix="camloc: ")
    return {"chosen": chosen.rule, "candidates": [
        {"rule": s.rule, "hits": s.hits, "mean_iou": s.mean_iou} for s in scores]}


def _tau(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def print_metrics(metrics: dict) -> None:
    """The figures on stdout, one per line."""
    counts = metrics["counts"]
    print(f"images:        {metrics['num_images']} evaluated of {counts['images']} "
          f"({counts['without_ground_truth']} without ground truth, {counts['unknown_labels']} "
          f"with unknown labels, {counts['unreadable']} unreadable)")
    for key in ("top1_cls", "top5_cls", "top1_loc", "gt_known_loc", "maxboxacc_v2"):
        print(f"{key + ':':14s} {metrics[key]:.4f}")
    if metrics.get("coco_ap") is not None:
        print(f"coco AP:       {metrics['coco_ap']:.4f} (AP50 {metrics['coco_ap50']:.4f}, "
              f"AP75 {metrics['coco_ap75']:.4f}; boxes of the ground-truth class, scored by its probability)")
    else:
        print("coco AP:       n/a (needs pycocotools: pip install 'camloc[export]')")
    per_iou = ", ".join(f"δ={d}: {v:.4f} (τ={metrics['maxboxacc_v2_best_tau'][d]:g})"
                        for d, v in metrics["maxboxacc_v2_per_iou"].items())
    print(f"  per IoU:     {per_iou}")
    print(f"default τ:     {_tau(metrics['default_tau'])}")
    print(f"best τ:        {metrics['best_tau']:g} "
          f"(top1_loc {metrics['top1_loc_at_best_tau']:.4f}, gt_known_loc {metrics['gt_known_loc_at_best_tau']:.4f})")


# --------------------------------------------------------------------------- info


@app.command()
def info(model: ModelOption = None, weights: WeightsOption = None, device: DeviceOption = "auto",
         preprocess: PreprocessOption = None, dilate: DilateOption = True,
         runtime: RuntimeOption = Runtime(DEFAULT_RUNTIME)) -> None:
    """Show what camloc found in a model: feature layer, head, classes, preprocessing, runtime."""
    adapter = load(model, weights, device, preprocess, dilate, runtime)
    from .methods import find_spatial_layer

    print(f"model:         {adapter.name} ({adapter.source})")
    print(f"classes:       {adapter.num_classes}")
    print(f"input size:    {adapter.input_size[0]}x{adapter.input_size[1]}")
    print(f"normalisation: mean={adapter.mean} std={adapter.std}")
    print(f"feature layer: {adapter.feature_layer}")
    print(f"runtime:       {adapter.runtime} (plain CAM's forward pass; gradient methods: eager PyTorch)")
    if adapter.dilated:
        print("last stage:    dilated (stride 2 → 1, maps at 1/16 of the input instead of 1/32)")
    print(f"gradient layer: {find_spatial_layer(adapter).name} (default --layer of gradcam ...)")
    if adapter.head_error:
        print(f"plain CAM:     not exact: {adapter.head_error}")
    else:
        assert adapter.weight is not None  # an exact head has its classifier
        neck = ", ".join(step.kind for step in adapter.neck) or "none"
        print(f"head:          GAP → [{neck}] → linear {tuple(adapter.weight.shape)} (exact CAM)")
    if adapter.box_threshold is not None:
        print(f"box rule:      {adapter.box_threshold} (recommended by the checkpoint)")


# --------------------------------------------------------------------------- train


@app.command()
def train(
    data: Annotated[Path | None, typer.Argument(help="folder with one sub-folder of images per class")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", rich_help_panel=INPUTS, help="output folder (or a .pt checkpoint path)")] = Path(
        "camloc-train"),
    train_dir: Annotated[Path | None, typer.Option(
        "--train", rich_help_panel=INPUTS, help="training folder (with --val)")] = None,
    val_dir: Annotated[Path | None, typer.Option(
        "--val", rich_help_panel=INPUTS, help="validation folder (with --train)")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", rich_help_panel=INPUTS, help="continue an interrupted run in --out")] = False,
    examples: Annotated[int, typer.Option(
        "--examples", min=0, rich_help_panel=INPUTS, help="validation images drawn with their CAMs")] = 6,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
    unfreeze: Annotated[int, typer.Option(
        "--unfreeze", min=0, help="fine-tune the last N backbone stages (0: frozen, cached features)")] = 0,
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1)] = 12,
    lr: Annotated[float, typer.Option("--lr", help="head learning rate (AdamW)")] = 3e-3,
    backbone_lr_factor: Annotated[float, typer.Option("--backbone-lr-factor", help="backbone lr = lr × this")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 1e-4,
    schedule: Annotated[str, typer.Option("--schedule", help="cosine, step or constant")] = "cosine",
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", min=0.0, max=0.99)] = 0.0,
    balance: Annotated[bool, typer.Option("--balance", help="weight classes by inverse frequency")] = False,
    input_size: Annotated[int | None, typer.Option(
        "--input-size", "--image-size", min=16, help="network input side (default: the backbone's)")] = None,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="validation share per class without --val")] = 0.2,
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment", help="random resized crops and flips when fine-tuning")] = True,
    patience: Annotated[int | None, typer.Option(
        "--patience", help="early stop after N epochs without a better val accuracy")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    box_threshold: Annotated[str | None, typer.Option(
        "--threshold", "--box-threshold", "-t", rich_help_panel=BOXES, help="box rule to store in the checkpoint "
        "for every door (default: none, so camloc's default applies)")] = None,
    batch_size: BatchSizeOption = 32,
    workers: WorkersOption = None,
) -> None:
    """Train a GAP + linear classifier on labelled folders; its CAMs work everywhere camloc does."""
    if box_threshold is not None:
        explain_config(threshold=box_threshold)  # a bad rule fails before any work
    from .jobs.files import check_out_dir

    check_out_dir(out.parent if out.suffix in (".pt", ".pth", ".ckpt") else out)
    from .train import TrainOptions
    from .train import train as train_job

    options = TrainOptions(
        data=data, out=out, train_dir=train_dir, val_dir=val_dir, model=model,
        weights=str(weights) if weights is not None else None, unfreeze=unfreeze, epochs=epochs,
        batch_size=batch_size, lr=lr, backbone_lr_factor=backbone_lr_factor, weight_decay=weight_decay,
        schedule=schedule, label_smoothing=label_smoothing, balance=balance, image_size=input_size,
        val_fraction=val_fraction, augment=augment, patience=patience, seed=seed, workers=workers,
        device=device, resume=resume, examples=examples, box_threshold=box_threshold,
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err, disable=not err.is_terminal, transient=True)
    tasks: dict[str, Any] = {}

    def on_step(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(label, total=total)
        progress.update(tasks[label], completed=done, visible=done < total)

    with progress:
        result = train_job(options, log=lambda line: progress.console.print(Text(line), soft_wrap=True),
                           progress=on_step)
    skipped = f", {len(result.skipped)} unreadable image(s) skipped" if result.skipped else ""
    say(f"best val accuracy {result.best_accuracy:.3f} at epoch {result.best_epoch}{skipped} → "
        f"{result.checkpoint}", prefix="camloc: ")


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
    preprocess: PreprocessOption = None,
    dilate: DilateOption = True,
    runtime: RuntimeOption = Runtime(DEFAULT_RUNTIME),
    host: Annotated[str, typer.Option(
        "--host", help="address to bind (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 8000,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", min=0.001, help="largest upload in MB")] = 20.0,
    max_pixels: MaxPixelsOption = 40_000_000,
    allowed_hosts: Annotated[str | None, typer.Option(
        "--allowed-hosts", help="Host headers answered, comma-separated (e.g. camloc.example.org; "
        "'*' any); default localhost, 127.0.0.1, ::1 and the --host address")] = None,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", min=0, help="explain requests that may wait for the model; more get 503")] = 64,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", min=1, max=256, rich_help_panel=SPEED, help="concurrent requests that share one forward "
        "pass (1: each request alone)")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(
        "--batch-wait-ms", min=0.0, max=1000.0, rich_help_panel=SPEED, help="how long a request waits for others "
        "to share its forward pass, at most (0: only those already waiting)")] = 5.0,
    method: MethodOption = DEFAULT_METHOD,
    layer: LayerOption = None,
    policy: PolicyOption = Policy(DEFAULT_POLICY),
    input_size: InputSizeOption = None,
    flip: FlipOption = DEFAULT_FLIP,
    scales: ScalesOption = DEFAULT_SCALES_TEXT,
    threshold: ThresholdOption = None,
    normalize: NormalizeOption = Normalization(DEFAULT_NORMALIZATION),
    all_components: AllComponentsOption = False,
    min_area: MinAreaOption = 0.0,
    amp: AmpOption = False,
) -> None:
    """Serve a web page to try camloc and a JSON API (POST /api/explain, docs at /docs).

    The method, box and view options are the server's defaults; a request may choose its own
    method, policy, threshold and classes."""
    config = explain_config(method=method, layer=layer, policy=policy, input_size=input_size, flip=flip,
                            scales=scales, normalize=normalize, threshold=threshold,
                            all_components=all_components, min_area=min_area, amp=amp)
    hosts = [h.strip() for h in allowed_hosts.split(",") if h.strip()] if allowed_hosts else None
    for pattern in hosts or ():
        if "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")):
            fail(f"--allowed-hosts: {pattern!r} is not a host name; a wildcard is '*' or '*.example.com'")
    for module in ("fastapi", "uvicorn", "multipart"):
        need(module, "serve", "camloc serve")
    adapter = load(model, weights, device, preprocess, dilate, runtime, method, layer, amp)
    from .serve import serve as run_server

    run_server(adapter, host, port, max_upload=int(max_upload_mb * 1e6), max_pixels=max_pixels, config=config,
               on_ready=lambda url: say(f"serving {adapter.name} at {url}", prefix="camloc: "),
               allowed_hosts=hosts, max_queue=max_queue, max_batch=max_batch, batch_wait_ms=batch_wait_ms)


# --------------------------------------------------------------------------- export


@app.command()
def export(
    onnx: Annotated[Path, typer.Option("--onnx", help="write the model as ONNX to this file")],
    model: Annotated[str | None, typer.Option(
        "--model", "-m", rich_help_panel=MODEL, help="efficientnet_lite0 (default, embedded), a timm/torchvision "
        "name or a camloc checkpoint (a PyTorch model)")] = None,
    weights: WeightsOption = None,
    dilate: DilateOption = True,
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, help="CAMs of the top k classes")] = 5,
    opset: Annotated[int, typer.Option("--opset", min=7, help="ONNX opset version")] = 17,
) -> None:
    """Export a PyTorch model as ONNX whose outputs are logits, top-k classes and their CAMs."""
    need("onnx", "onnx", "camloc export")
    if model is not None and Path(model).suffix.lower() in (".onnx", ".keras", ".h5", ".hdf5"):
        fail(f"camloc export writes PyTorch models; {model} is already a {Path(model).suffix} file")
    from .jobs.files import check_out_dir

    check_out_dir(onnx.parent, "--onnx")
    adapter = load(model, weights, "cpu", dilate=dilate)
    from .onnx_export import export_onnx

    path = export_onnx(adapter, onnx, topk=topk, opset=opset)
    h, w = adapter.input_size
    say(f"wrote {path} (input (N, 3, {h}, {w}) normalised with mean={adapter.mean} std={adapter.std}; "
        f"outputs logits, classes (N, {topk}), cams (N, {topk}, h, w))", prefix="camloc: ")


# --------------------------------------------------------------------------- entry point


class _UsageError(Protocol):
    exit_code: int

    def format_message(self) -> str: ...

    def show(self) -> None: ...


def _usage_error(error: BaseException) -> TypeGuard[_UsageError]:
    """A click/typer usage or parameter error (typer bundles its own click)."""
    return hasattr(error, "format_message") and hasattr(error, "exit_code")


def main() -> None:
    """Console entry point: one clear line for user errors, never a traceback."""
    from .allocator import tune_allocator

    tune_allocator()
    try:
        from PIL import Image

        # the command enforces its own pixel limit (--max-pixels) before decoding
        Image.MAX_IMAGE_PIXELS = None
        code = app(standalone_mode=False, prog_name="camloc")
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        say("interrupted", prefix="camloc: ")
        sys.exit(130)
    except CamlocError as error:
        say(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
            "bold red", "error: ")
        sys.exit(2)
    except Exception as error:  # click usage errors, then real bugs
        if not _usage_error(error):
            raise
        if type(error).__name__ == "NoArgsIsHelpError":
            error.show()  # bare `camloc` or `camloc CMD`: the help
            sys.exit(2)
        command = getattr(getattr(error, "ctx", None), "command_path", "camloc")
        say(f"{error.format_message()} (see {command} --help)", "bold red", "error: ")
        sys.exit(error.exit_code if isinstance(error.exit_code, int) and error.exit_code else 2)


def console() -> None:
    """The ``camloc`` command: :func:`main`, then a quick exit.

    Once the command's own work is done and written, Python's teardown (freeing torch's
    and the runtimes' objects one by one, stopping their thread pools) adds about a second
    to a one-photo run and changes nothing on disk. So the exit handlers run (Ray's
    shutdown, temporary folders, logging), the standard streams are flushed, and the
    process ends there. Bugs (anything but an exit) still end with their traceback.
    """
    code: str | int | None = 0
    try:
        main()
    except SystemExit as done:
        code = done.code
    if isinstance(code, str):
        sys.exit(code)  # a message to print: the usual way
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (camloc ... | head) or stream
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    console()
