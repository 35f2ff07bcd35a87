"""Loading images and the resize policies, with the geometry that maps maps back.

Every preprocessed image carries a :class:`Geometry`: the affine map from original
pixel coordinates to network-input coordinates, per axis (``u = scale * x + offset``,
continuous coordinates where pixel ``i`` spans ``[i, i + 1]``). Maps computed at feature
resolution are resampled through it, so they land on the original pixels whatever the
resize policy was.

>>> from PIL import Image
>>> image = Image.new("RGB", (400, 200))
>>> tensor, geometry = preprocess(image, 224, "center-crop", (0.5,) * 3, (0.5,) * 3)
>>> tuple(tensor.shape), geometry.original_size
((3, 224, 224), (200, 400))
"""

from __future__ import annotations

import errno
import functools
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import RESIZE_POLICIES
from .errors import ImageError

ResizePolicy = Literal["squash", "center-crop", "pad"]
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
)
DEFAULT_MAX_PIXELS = 80_000_000


@dataclass(frozen=True)
class Geometry:
    """Where an original image went in the network input.

    ``input = scale * original + offset`` per axis, in continuous pixel coordinates.
    """

    original_size: tuple[int, int]  # (height, width) of the image as loaded
    input_size: tuple[int, int]  # (height, width) of the network input
    scale: tuple[float, float]  # (sy, sx)
    offset: tuple[float, float]  # (oy, ox)
    policy: str = "squash"

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``[xmin, ymin, xmax, ymax]`` in original pixels → input pixels."""
        (sy, sx), (oy, ox) = self.scale, self.offset
        return np.asarray(boxes, dtype=np.float64) * [sx, sy, sx, sy] + [ox, oy, ox, oy]

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in input pixels → original pixels."""
        (sy, sx), (oy, ox) = self.scale, self.offset
        return (np.asarray(boxes, dtype=np.float64) - [ox, oy, ox, oy]) / [sx, sy, sx, sy]


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file as RGB with its EXIF orientation applied.

    Raises :class:`ImageError` with a one-line reason for anything that is not a readable
    image, and for images over ``max_pixels`` (checked from the header, before decoding).

    >>> load_image("examples/images/coffee.jpg").size
    (600, 400)
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageError(f"{path}: symbolic link loop") from None
        raise ImageError(f"{path}: cannot read ({error.strerror or error})") from None
    return _decode(path, str(path), max_pixels, " (raise it with --max-pixels)")


def read_image(stream: BinaryIO, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Like :func:`load_image`, from an open binary file (an upload, ``io.BytesIO``).

    The pixel count is checked from the header, before decoding; errors name ``name``.

    >>> import io
    >>> read_image(io.BytesIO(open("examples/images/coffee.jpg", "rb").read()), "coffee").size
    (600, 400)
    """
    return _decode(stream, name, max_pixels)


def _decode(source: Path | BinaryIO, name: str, max_pixels: int, hint: str = "") -> Image.Image:
    """Open, check the pixel count from the header, decode, convert; one-line errors naming ``name``.

    camloc enforces ``max_pixels`` itself, so Pillow's decompression-bomb warning is muted
    here; Pillow's own limit (``Image.MAX_IMAGE_PIXELS``) stays as the program set it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over "
                        f"the limit of {max_pixels / 1e6:.0f}{hint}"
                    )
                image.load()
                return to_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as error:  # over Pillow's own limit, refused on open
        size = claimed_size(source)
        if size is not None and size[0] * size[1] > max_pixels:
            width, height = size
            raise ImageError(f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over "
                             f"the limit of {max_pixels / 1e6:.0f}{hint}") from None
        raise ImageError(f"{name}: unreadable image ({error})") from None
    except Exception as error:  # noqa: BLE001 - whatever a decoder raises on bad bytes is the file's fault
        reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImageError(f"{name}: unreadable image ({reason})") from None


def claimed_size(source: Path | BinaryIO) -> tuple[int, int] | None:
    """``(width, height)`` from an image's header, also beyond Pillow's decompression-bomb
    limit (which makes ``Image.open`` refuse the file without saying its size); ``None``
    when no format reads the header."""
    stream = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
    try:
        stream.seek(0)
        prefix = stream.read(16)
        Image.init()
        for format_id in Image.ID:
            factory, accept = Image.OPEN[format_id]
            accepted = True if accept is None else accept(prefix)
            if not accepted or isinstance(accepted, str):  # a str: "maybe, with a warning"
                continue
            try:
                stream.seek(0)
                with factory(stream, "") as image:
                    return image.size
            except Exception:  # noqa: BLE001,S112 - not this format: try the next
                continue
        return None
    finally:
        if stream is not source:
            stream.close()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, EXIF orientation applied, transparency over white.

    16-bit and float images are scaled to 8 bits rather than clipped.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F" and array.max() <= 1.0:
            top = 1.0
        array = np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _as_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_geometry(
    original_size: tuple[int, int], input_size: int | tuple[int, int], policy: str
) -> tuple[tuple[int, int], tuple[int, int], Geometry]:
    """Plan a resize: (resized (h, w), paste/crop offset (y, x), geometry).

    For ``center-crop`` the offset is negative (the crop starts inside the resized image);
    for ``pad`` it is positive (the resized image is pasted inside the canvas).
    """
    height, width = original_size
    input_h, input_w = _as_pair(input_size)
    if policy == "squash":
        resized = (input_h, input_w)
    elif policy in ("center-crop", "pad"):
        pick = max if policy == "center-crop" else min
        factor = pick(input_h / height, input_w / width)
        resized = (max(1, round(height * factor)), max(1, round(width * factor)))
    else:
        raise ValueError(f"unknown resize policy {policy!r}; choose from {', '.join(RESIZE_POLICIES)}")
    offset = ((input_h - resized[0]) // 2, (input_w - resized[1]) // 2)
    geometry = Geometry(
        original_size=(height, width),
        input_size=(input_h, input_w),
        scale=(resized[0] / height, resized[1] / width),
        offset=(float(offset[0]), float(offset[1])),
        policy=policy,
    )
    return resized, offset, geometry


def preprocess(
    image: Image.Image,
    input_size: int | tuple[int, int],
    policy: str,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tuple[torch.Tensor, Geometry]:
    """Resize an RGB image by ``policy`` and normalise it: ``(3, h, w)`` float tensor + geometry.

    >>> from PIL import Image
    >>> tensor, geometry = preprocess(Image.new("RGB", (300, 100)), 224, "pad", (0.5,) * 3, (0.5,) * 3)
    >>> geometry.scale, geometry.offset
    ((0.75, 0.7466666666666667), (74.0, 0.0))
    """
    image = to_rgb(image)
    resized_hw, (off_y, off_x), geometry = resize_geometry((image.height, image.width), input_size, policy)
    input_h, input_w = geometry.input_size
    resized = image.resize((resized_hw[1], resized_hw[0]), Image.Resampling.BILINEAR, reducing_gap=None)
    if policy == "squash":
        canvas = resized
    elif policy == "center-crop":
        canvas = resized.crop((-off_x, -off_y, -off_x + input_w, -off_y + input_h))
    else:
        fill = tuple(int(round(m * 255)) for m in mean)
        canvas = Image.new("RGB", (input_w, input_h), fill)
        canvas.paste(resized, (off_x, off_y))
    tensor = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy()).permute(2, 0, 1)
    return normalize(tensor, mean, std), geometry


def stack_images(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Preprocessed ``(3, h, w)`` images → one ``(N, 3, h, w)`` batch stored channels_last
    (height × width × channel, as :func:`preprocess` stores each image and as camloc keeps
    PyTorch models), in one copy; a plain ``torch.stack`` would give channels-first storage and
    make the network convert every layer's input.

    >>> image = torch.rand(224, 224, 3).permute(2, 0, 1)
    >>> batch = stack_images([image, image])
    >>> batch.shape, batch.is_contiguous(memory_format=torch.channels_last)
    (torch.Size([2, 3, 224, 224]), True)
    """
    return torch.stack([tensor.permute(1, 2, 0) for tensor in tensors]).permute(0, 3, 1, 2)


def normalize(uint8_chw: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``(..., 3, h, w)`` → float, ``(x / 255 - mean) / std``, as one multiply-add per
    value (``x * scale + shift``: one pass instead of four, equal to float rounding).

    >>> normalize(torch.full((3, 1, 1), 255, dtype=torch.uint8), (0.5,) * 3, (0.25,) * 3).flatten().tolist()
    [2.0, 2.0, 2.0]
    """
    scale, shift = _affine(tuple(map(float, mean)), tuple(map(float, std)))
    return uint8_chw.float().mul_(scale).add_(shift)


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    mean_t = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    return (1.0 / (255.0 * std_t)).float(), (-mean_t / std_t).float()


def interpolation_matrix(
    n_out: int, n_feature: int, n_input: int, scale: float, offset: float, device: str | torch.device | None = None
) -> torch.Tensor:
    """``(n_out, n_feature)`` bilinear weights from a feature axis to an original axis.

    Original pixel centre ``x + 0.5`` → input coordinate ``u = scale * (x + 0.5) + offset``
    → feature coordinate ``u * n_feature / n_input - 0.5`` (align_corners=False), clamped at
    the borders like ``F.interpolate``. Cached per axis and device: images of the same size
    reuse their matrices, and a GPU gets one small copy instead of a dozen kernel launches.
    """
    return _interpolation_matrix(n_out, n_feature, n_input, float(scale), float(offset), str(device or "cpu"))


@functools.lru_cache(maxsize=512)
def _interpolation_matrix(n_out: int, n_feature: int, n_input: int, scale: float, offset: float,
                          device: str) -> torch.Tensor:
    p = ((scale * (np.arange(n_out) + 0.5) + offset) * (n_feature / n_input) - 0.5).clip(0, n_feature - 1)
    lower = np.floor(p).astype(np.int64)
    upper = np.minimum(lower + 1, n_feature - 1)
    frac = p - lower
    matrix = np.zeros((n_out, n_feature), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, lower), 1 - frac)
    np.add.at(matrix, (rows, upper), frac)
    return torch.from_numpy(matrix).to(device)


def resampling_matrices(geometry: Geometry, feature_hw: tuple[int, ...],
                        device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows (H, h_f), cols (W, w_f))``: original = ``rows @ map @ cols.T`` for this geometry."""
    (height, width), (input_h, input_w) = geometry.original_size, geometry.input_size
    (sy, sx), (oy, ox) = geometry.scale, geometry.offset
    return (interpolation_matrix(height, feature_hw[0], input_h, sy, oy, device),
            interpolation_matrix(width, feature_hw[1], input_w, sx, ox, device))


def maps_to_original(maps: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Resample ``(k, h_f, w_f)`` feature-resolution maps to ``(k, H, W)`` original pixels.

    One separable bilinear interpolation (two small matmuls), exact for every resize policy.
    """
    rows, cols = resampling_matrices(geometry, maps.shape[-2:], maps.device)
    with torch.autocast(maps.device.type, enabled=False):  # float32, even inside --amp
        return torch.einsum("Hh,khw,Ww->kHW", rows, maps.float(), cols)


def group_by_geometry(geometries: list[Geometry]) -> dict[Geometry, list[int]]:
    """Indices of the images of a batch by geometry (those that resample alike)."""
    groups: dict[Geometry, list[int]] = {}
    for index, geometry in enumerate(geometries):
        groups.setdefault(geometry, []).append(index)
    return groups


def maps_to_original_batch(maps: torch.Tensor, geometries: list[Geometry]) -> list[torch.Tensor]:
    """``(N, k, h_f, w_f)`` maps of a batch → one ``(k, H_i, W_i)`` tensor per image.

    Images that share a geometry (the same original size and policy, as in most data sets)
    are resampled together in one batched matmul instead of one call per image.
    """
    resampled: dict[int, torch.Tensor] = {}
    for geometry, indices in group_by_geometry(geometries).items():
        rows, cols = resampling_matrices(geometry, maps.shape[-2:], maps.device)
        chosen = maps[indices] if len(indices) < len(geometries) else maps
        with torch.autocast(maps.device.type, enabled=False):
            together = torch.einsum("Hh,nkhw,Ww->nkHW", rows, chosen.float(), cols)
        for index, result in zip(indices, together, strict=True):
            resampled[index] = result
    return [resampled[index] for index in range(len(geometries))]


def extreme_samples(n_out: int, n_feature: int, n_input: int, scale: float, offset: float,
                    seen_only: bool = False) -> torch.Tensor:
    """The output samples (indices) at which a bilinearly resampled signal can take its
    minimum or maximum: the first and last sample on each linear piece between two feature
    cells (the resampled signal is piecewise linear in the sample position, so its extremes
    over the samples of a piece are at their ends). ``seen_only``: among the samples inside
    the network's input (those :func:`coverage_mask` keeps).

    >>> extreme_samples(10, 2, 10, 1.0, 0.0).tolist()  # two cells: a ramp over samples 0-6, then flat
    [0, 6, 7, 9]
    """
    return _extreme_samples(n_out, n_feature, n_input, float(scale), float(offset), seen_only)


@functools.lru_cache(maxsize=512)
def _extreme_samples(n_out: int, n_feature: int, n_input: int, scale: float, offset: float,
                     seen_only: bool) -> torch.Tensor:
    position = scale * (np.arange(n_out) + 0.5) + offset  # on the network's input
    kept = np.flatnonzero((position >= 0) & (position <= n_input)) if seen_only else np.arange(n_out)
    if kept.size == 0:
        return torch.zeros(0, dtype=torch.int64)
    source = (position[kept] * (n_feature / n_input) - 0.5).clip(0, n_feature - 1)
    piece = np.floor(source)
    change = piece[1:] != piece[:-1]
    ends = np.concatenate([[True], change]) | np.concatenate([change, [True]])
    return torch.from_numpy(kept[ends])


def coverage_mask(geometry: Geometry, device: str | torch.device | None = None) -> torch.Tensor:
    """``(H, W)`` bool: which original pixels the network saw (False outside a center crop)."""
    rows, cols = coverage_axes(geometry, device)
    return rows[:, None] & cols[None, :]


def coverage_axes(geometry: Geometry, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows (H,), cols (W,))`` bool: :func:`coverage_mask` is their outer product."""
    (height, width), (input_h, input_w) = geometry.original_size, geometry.input_size
    (sy, sx), (oy, ox) = geometry.scale, geometry.offset
    ys = sy * (torch.arange(height, device=device) + 0.5) + oy
    xs = sx * (torch.arange(width, device=device) + 0.5) + ox
    return (ys >= 0) & (ys <= input_h), (xs >= 0) & (xs <= input_w)


def resized_geometry(geometry: Geometry, size: tuple[int, int]) -> Geometry:
    """The same placement seen from the original image resized to ``size = (height, width)``:
    maps resampled through it land on the pixels of the resized picture (``camloc serve``
    samples its maps at display size this way, never at full size).

    >>> g = resize_geometry((400, 600), 224, "squash")[2]
    >>> resized_geometry(g, (200, 300)).scale == (g.scale[0] * 2, g.scale[1] * 2)
    True
    """
    height, width = size
    (original_h, original_w), (sy, sx) = geometry.original_size, geometry.scale
    return Geometry((int(height), int(width)), geometry.input_size,
                    (sy * original_h / height, sx * original_w / width), geometry.offset, geometry.policy)


def collect_images(inputs: list[str]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into image paths, in order.

    Files named explicitly are kept whatever their extension (so a bad one is reported);
    inside folders and globs only common image extensions are taken.
    """
    import glob

    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        if path not in seen:
            seen.add(path)
            found.append(path)

    def add_folder(folder: Path) -> None:
        for child in sorted(folder.rglob("*")):
            if child.is_file():
                if is_image_path(child):
                    add(child)
            elif child.is_symlink() and not child.exists() and (is_image_path(child) or _is_link_loop(child)):
                add(child)  # a dangling link or a loop: reported by the loader, not dropped

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            add_folder(path)
        elif path.exists():
            add(path)
        elif glob.has_magic(item):
            for match in sorted(glob.glob(item, recursive=True)):
                match_path = Path(match)
                if match_path.is_file() and is_image_path(match_path):
                    add(match_path)
                elif match_path.is_dir():
                    add_folder(match_path)
        else:
            add(path)  # reported as missing by the loader, counted as failed
    return found


def _is_link_loop(path: Path) -> bool:
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 reports a loop as RuntimeError
        return True
    except OSError as error:
        return error.errno == errno.ELOOP
    return False
