"""Rendering: colormaps and blending on tensors, captions and boxes with Pillow.

>>> import camloc
>>> model = camloc.load_model()
>>> [result] = camloc.explain(model, "examples/images/coffee.jpg")
>>> picture = overlay(camloc.load_image("examples/images/coffee.jpg"), result)
>>> picture.size
(600, 400)
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

try:  # ISA-L's deflate: ~4x faster than zlib at level 1, same format
    _deflate_library: ModuleType | None
    from isal import isal_zlib as _deflate_library
except ImportError:  # pragma: no cover - isal has wheels for the usual platforms
    _deflate_library = None

from .pipeline import Explanation

DEFAULT_COLORMAP = "jet"
DEFAULT_ALPHA = 0.5
BOX_COLOR = (255, 255, 255)
GT_BOX_COLOR = (0, 255, 0)


# matplotlib's "jet" (its segment data): the default colormap without importing matplotlib
# (half a second of every `camloc run`'s start); tests check it equals matplotlib's table
_JET = (((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
        ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
        ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)))


def _segment_lut(points: tuple, n: int = 256) -> np.ndarray:
    """One channel of a segmented colormap, with matplotlib's arithmetic (same rounding)."""
    x = np.array([p[0] for p in points]) * (n - 1)
    y = np.array([p[1] for p in points])
    at = (n - 1) * np.linspace(0, 1, n)
    ind = np.searchsorted(x, at)[1:-1]
    distance = (at[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    return np.clip(np.concatenate([[y[0]], distance * (y[ind] - y[ind - 1]) + y[ind - 1], [y[-1]]]), 0.0, 1.0)


@functools.lru_cache(maxsize=32)
def colormap_lut(name: str = DEFAULT_COLORMAP) -> torch.Tensor:
    """``(256, 3)`` uint8 lookup table of a matplotlib colormap."""
    if name == "jet":
        table = np.stack([_segment_lut(segments) for segments in _JET], axis=1)
        return torch.from_numpy((table * 255).round().astype(np.uint8))
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        from .errors import CamlocError

        raise CamlocError(f"unknown colormap {name!r} (any matplotlib name: jet, viridis, inferno, turbo...)") from None
    table = cmap(np.linspace(0.0, 1.0, 256))[:, :3]
    return torch.from_numpy((table * 255).round().astype(np.uint8))


def colorize(normalized: torch.Tensor, colormap: str = DEFAULT_COLORMAP) -> torch.Tensor:
    """``(..., H, W)`` maps in [0, 1] → ``(..., H, W, 3)`` uint8 colours."""
    lut = colormap_lut(colormap).to(normalized.device)
    return F.embedding(lut_index(normalized), lut)


def lut_index(normalized: torch.Tensor) -> torch.Tensor:
    """Maps in [0, 1] → the nearest of the 256 colormap entries (int64)."""
    return normalized.clamp(0, 1).mul_(255).round_().long()


def blend(
    image: torch.Tensor,
    normalized: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
    coverage: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(H, W, 3)`` uint8 image + ``(H, W)`` map → overlay ``(H, W, 3)`` uint8,
    ``round((1 - alpha) * image + alpha * colour)``.

    Pixels the network did not see (``coverage`` False) keep the plain image. The colours
    come pre-scaled by ``alpha`` from a 256-entry table, so a pixel costs one lookup and
    one multiply-add.

    >>> image = torch.zeros(2, 2, 3, dtype=torch.uint8)
    >>> blend(image, torch.ones(2, 2), alpha=0.5, colormap="gray")[0, 0].tolist()
    [128, 128, 128]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    scaled_lut = colormap_lut(colormap).to(normalized.device).float().mul_(alpha)
    mixed = image.float().mul_(1.0 - alpha).add_(F.embedding(lut_index(normalized), scaled_lut))
    blended = mixed.round_().clamp_(0, 255).to(torch.uint8)
    if coverage is not None:
        blended = torch.where(coverage.to(blended.device)[..., None], blended, image)
    return blended


def encode_png(picture: Image.Image | np.ndarray | torch.Tensor, level: int = 1) -> bytes:
    """A fast PNG encoder for 8-bit grey, RGB and RGBA pictures (``(H, W[, C])`` uint8).

    Every row gets PNG's "up" filter (the difference to the row above, one vectorised
    subtraction) and the stream is deflated by ISA-L (zlib when isal is missing) at
    ``level``. About 6x faster than Pillow's PNG writer (which tries five filters on each
    row) for files ~15% larger (``benchmarks/bench_render.py``); any PNG reader opens them.

    >>> import io
    >>> data = encode_png(np.full((4, 5, 3), 200, np.uint8))
    >>> Image.open(io.BytesIO(data)).getpixel((4, 3))
    (200, 200, 200)
    """
    if isinstance(picture, Image.Image):
        if picture.mode not in ("L", "RGB", "RGBA"):
            picture = picture.convert("RGBA" if "A" in picture.mode else "RGB")
        pixels = np.asarray(picture)
    elif isinstance(picture, torch.Tensor):
        pixels = picture.detach().cpu().numpy()
    else:
        pixels = np.asarray(picture)
    layout_ok = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))
    if pixels.dtype != np.uint8 or not layout_ok or pixels.size == 0:
        raise ValueError(f"encode_png takes (H, W), (H, W, 3) or (H, W, 4) uint8, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type "up"
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG wants
    if _deflate_library is not None:
        data = _deflate_library.compress(filtered, min(level, 3))
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        # numpy's stubs give arrays the buffer protocol from Python 3.12 on; arrays have it on 3.11 too
        data = compressor.compress(filtered) + compressor.flush()  # type: ignore[arg-type]
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    checksum = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", checksum)


def image_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's own data (has the em dash), else Pillow's default.

    The file is looked up where matplotlib keeps it without importing matplotlib (a fifth
    of a second of a one-photo `camloc run`); its font manager is the fallback."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        if os.path.isfile(path):
            return ImageFont.truetype(path, size)
    from matplotlib import font_manager

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except OSError:
        return ImageFont.load_default(size=size)


def caption_text(label: str, score: float) -> str:
    return f"{label} — {score:.2f}"


def draw_caption(picture: Image.Image, text: str, size: int | None = None) -> None:
    """Write ``text`` at the top left on a dark band, sized to the picture."""
    draw = ImageDraw.Draw(picture, "RGBA")
    size = size or max(12, min(picture.size) // 22)
    face = font(size)
    pad = max(2, size // 4)
    left, top, right, bottom = draw.textbbox((pad, pad), text, font=face)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=(0, 0, 0, 170))
    draw.text((pad, pad), text, font=face, fill=(255, 255, 255, 255))


def draw_boxes(
    picture: Image.Image,
    boxes: Sequence[Sequence[float]],
    color: tuple[int, int, int] = BOX_COLOR,
    width: int | None = None,
) -> None:
    """Draw ``[xmin, ymin, xmax, ymax]`` boxes (pixel edges), with a dark outline for contrast."""
    draw = ImageDraw.Draw(picture)
    width = width or max(2, round(min(picture.size) / 150))
    for xmin, ymin, xmax, ymax in boxes:
        inner = (xmin, ymin, max(xmin, xmax - 1), max(ymin, ymax - 1))
        draw.rectangle(inner, outline=(0, 0, 0), width=width + 2)
        draw.rectangle(inner, outline=color, width=width)


def overlay(
    image: Image.Image,
    result: Explanation,
    index: int = 0,
    *,
    alpha: float = DEFAULT_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
    boxes: bool = True,
    caption: bool = True,
    ground_truth: Sequence[Sequence[float]] = (),
) -> Image.Image:
    """The map of ``result.targets[index]`` over the image at its original resolution."""
    normalized = result.normalized[index]  # blended where the map lives (GPU or CPU)
    blended = blend(image_tensor(image).to(normalized.device), normalized, alpha, colormap, result.coverage)
    picture = Image.fromarray(blended.cpu().numpy())
    if ground_truth:
        draw_boxes(picture, ground_truth, GT_BOX_COLOR)
    if boxes:
        draw_boxes(picture, result.boxes[index])
    if caption:
        target = result.targets[index]
        draw_caption(picture, caption_text(target.label, target.score))
    return picture


def heatmap(result: Explanation, index: int = 0, colormap: str = DEFAULT_COLORMAP) -> Image.Image:
    """The normalised map alone, coloured."""
    return Image.fromarray(colorize(result.normalized[index].cpu(), colormap).numpy())


def titled(picture: Image.Image, title: str, size: int) -> Image.Image:
    """``picture`` under a white title band."""
    face = font(size)
    band = int(size * 1.6)
    canvas = Image.new("RGB", (picture.width, picture.height + band), (255, 255, 255))
    canvas.paste(picture, (0, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((picture.width / 2, band / 2), title, font=face, fill=(0, 0, 0), anchor="mm")
    return canvas


def tile(pictures: Sequence[Image.Image], columns: int, gap: int = 6) -> Image.Image:
    """Lay equally sized pictures out in a grid on white."""
    rows = math.ceil(len(pictures) / columns)
    width, height = pictures[0].size
    canvas = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap),
                       (255, 255, 255))
    for i, picture in enumerate(pictures):
        canvas.paste(picture, ((i % columns) * (width + gap), (i // columns) * (height + gap)))
    return canvas


def panels(
    image: Image.Image,
    result: Explanation,
    index: int = 0,
    *,
    alpha: float = DEFAULT_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
) -> Image.Image:
    """Three panels side by side: overlay (with boxes), the image, the map."""
    target = result.targets[index]
    size = max(12, min(image.size) // 18)
    parts = [
        titled(overlay(image, result, index, alpha=alpha, colormap=colormap, caption=False),
               caption_text(target.label, target.score), size),
        titled(image.convert("RGB"), "image", size),
        titled(heatmap(result, index, colormap), f"{result.method} map", size),
    ]
    return tile(parts, columns=3)


def grid(
    image: Image.Image,
    result: Explanation,
    *,
    alpha: float = DEFAULT_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
    columns: int | None = None,
) -> Image.Image:
    """One titled overlay per explained class (top-k grid)."""
    count = len(result.targets)
    columns = columns or min(count, 3)
    size = max(12, min(image.size) // 18)
    parts = [
        titled(overlay(image, result, i, alpha=alpha, colormap=colormap, caption=False),
               f"#{i + 1} " + caption_text(t.label, t.score), size)
        for i, t in enumerate(result.targets)
    ]
    return tile(parts, columns=columns)


def map_png(normalized: torch.Tensor) -> Image.Image:
    """A normalised map as an 8-bit grayscale image."""
    return Image.fromarray((normalized.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy(), mode="L")
