"""Property-based tests (Hypothesis) of the code that reads what users send: the image
loader, the box and threshold code, the ground-truth readers. Whatever the input, the
answer is a valid result or a :class:`camloc.errors.CamlocError` with a one-line message,
never another exception. Bounded: a few hundred examples in all, well under a minute
(``CAMLOC_PROPERTY_SCALE=10`` in the environment: ten times as many)."""

from __future__ import annotations

import io
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402
from PIL import Image

from camloc.boxes import (  # noqa: E402
    band_levels,
    box_iou,
    boxes_from_bands,
    boxes_from_maps,
    map_levels,
    streamed_threshold_level,
    threshold_level,
)
from camloc.errors import CamlocError, ImageError  # noqa: E402
from camloc.evaluate.ground_truth import GTBox, read_coco_json, read_csv_boxes, read_voc_files  # noqa: E402
from camloc.images import load_image, read_image  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
SCALE = int(os.environ.get("CAMLOC_PROPERTY_SCALE", "1"))  # more examples for a deeper search
FAST = settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCRATCH = Path(tempfile.mkdtemp(prefix="camloc-properties-"))


def encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def real_files() -> dict[str, bytes]:
    """A real photo in each accepted format (small, so truncations stay fast)."""
    photo = Image.open(EXAMPLES / "coffee.jpg").convert("RGB").resize((60, 40))
    files = {kind: encoded(photo, kind) for kind in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")}
    files["JPEG (original)"] = (EXAMPLES / "coffee.jpg").read_bytes()
    return files


REAL = real_files()


def one_line(error: Exception) -> bool:
    return bool(str(error)) and "\n" not in str(error)


# --------------------------------------------------------------------------- the image loader


def check_read(data: bytes, max_pixels: int = 1_000_000) -> Image.Image | None:
    try:
        image = read_image(io.BytesIO(data), "upload", max_pixels)
    except ImageError as error:
        assert one_line(error) and str(error).startswith("upload: ")
        return None
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    assert image.width * image.height <= max_pixels
    return image


@FAST
@given(st.binary(max_size=2000))
def test_random_bytes_are_an_image_error_or_an_image(data):
    check_read(data)


@FAST
@given(st.sampled_from(sorted(REAL)), st.data())
def test_truncated_real_files(kind, data):
    whole = REAL[kind]
    cut = data.draw(st.integers(0, len(whole) - 1))
    check_read(whole[:cut])


@FAST
@given(st.sampled_from(sorted(REAL)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                min_size=1, max_size=8))
def test_corrupted_real_files(kind, flips):
    data = bytearray(REAL[kind])
    for where, value in flips:
        data[where % len(data)] = value
    check_read(bytes(data))


MODES = {  # mode → formats that store it
    "1": ("PNG", "BMP", "TIFF"), "L": ("PNG", "JPEG", "TIFF", "BMP", "WEBP"), "LA": ("PNG",),
    "P": ("PNG", "GIF", "BMP"), "RGB": ("PNG", "JPEG", "TIFF", "WEBP", "PPM"), "RGBA": ("PNG", "TIFF", "WEBP"),
    "CMYK": ("JPEG", "TIFF"), "I;16": ("PNG", "TIFF"), "I": ("TIFF",), "F": ("TIFF",),
}


@settings(max_examples=60 * SCALE, deadline=None)
@given(st.sampled_from(sorted(MODES)), st.data(), st.integers(1, 300), st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_every_mode_and_extreme_sizes_load_as_rgb(mode, data, width, height, seed):
    kind = data.draw(st.sampled_from(MODES[mode]))
    if data.draw(st.booleans()):
        width, height = (1, height) if data.draw(st.booleans()) else (width, 1)
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65535, (height, width)).astype(np.uint16 if mode == "I;16" else np.int32)
        image = Image.fromarray(values.astype(np.float32) if mode == "F" else values)  # I;16, I or F
        assert image.mode == mode
    else:
        image = Image.frombytes(mode, (width, height), rng.bytes(len(Image.new(mode, (width, height)).tobytes())))
    loaded = check_read(encoded(image, kind), max_pixels=width * height)
    assert loaded is not None and loaded.size == (width, height)


@settings(max_examples=30 * SCALE, deadline=None)
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_claimed_sizes_are_checked_before_decoding(width, height):
    """A 60-byte PNG may claim any size: refused from the header when over the limit."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))
    limit = 10_000
    image = check_read(data, max_pixels=limit)
    if width * height > limit:
        assert image is None
        with pytest.raises(ImageError, match=f"{width}x{height} is"):
            read_image(io.BytesIO(data), "upload", limit)


@settings(max_examples=20 * SCALE, deadline=None)
@given(st.binary(max_size=500))
def test_load_image_on_files(data):
    path = SCRATCH / "image.bin"
    path.write_bytes(data)
    try:
        assert load_image(path).mode == "RGB"
    except ImageError as error:
        assert one_line(error)


# --------------------------------------------------------------------------- boxes and thresholds


def maps_strategy(max_side: int = 24):
    shapes = st.tuples(st.integers(1, 3), st.integers(1, max_side), st.integers(1, max_side))
    values = st.one_of(st.floats(0, 1, width=32), st.sampled_from([0.0, 1.0, 0.5]))
    return shapes.flatmap(lambda shape: arrays(np.float32, shape, elements=values))


THRESHOLDS = st.one_of(st.floats(0, 1), st.sampled_from(["otsu", "otsu2", "mean", 0.0, 1.0]))


def assert_valid_boxes(found, count: int, height: int, width: int) -> None:
    assert isinstance(found, list) and len(found) == count
    for boxes in found:
        assert isinstance(boxes, list)
        for box in boxes:
            assert isinstance(box, tuple) and len(box) == 4 and all(type(v) is int for v in box)
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


@FAST
@given(maps_strategy(), THRESHOLDS, st.booleans(), st.floats(0, 0.99))
def test_boxes_from_maps_are_valid_and_cover_the_peak(maps, threshold, largest_only, min_area):
    count, height, width = maps.shape
    found = boxes_from_maps(torch.from_numpy(maps), threshold, largest_only, min_area)
    assert_valid_boxes(found, count, height, width)
    for index, boxes in enumerate(found):
        level = threshold_level(torch.from_numpy(maps[index]), threshold)
        assert math.isfinite(level)
        above = maps[index] >= level
        assert bool(boxes) == bool(above.any())  # a box when and only when a pixel passes
        if boxes:
            x0, y0, x1, y1 = boxes[0]
            assert above[y0:y1, x0:x1].any()
        if largest_only:
            assert len(boxes) <= 1
    assert found == boxes_from_maps(maps, threshold, largest_only, min_area)  # numpy in, same answer


@FAST
@given(maps_strategy(), THRESHOLDS, st.integers(1, 200))
def test_boxes_from_bands_equal_boxes_from_maps(maps, threshold, band_pixels):
    tensor = torch.from_numpy(maps)
    whole = boxes_from_maps(tensor, threshold, largest_only=False)
    banded = boxes_from_bands(lambda i, a, b: tensor[i, a:b], tuple(maps.shape), threshold,
                              largest_only=False, band_pixels=band_pixels)
    if isinstance(threshold, str) and threshold != "mean":
        assert banded == whole
    else:  # a mean summed in other chunks may differ in the last bit: compare the masks' levels
        assert len(banded) == len(whole)
    for index in range(len(maps)):
        values = tensor[index]
        level = streamed_threshold_level(lambda v=values: iter(v.split(3)), threshold, values.numel())
        assert abs(level - threshold_level(values, threshold)) <= 1e-6
    banded_levels = band_levels(lambda i, a, b: tensor[i, a:b], tuple(maps.shape), threshold, band_pixels)
    assert np.allclose(banded_levels, map_levels(tensor, threshold), rtol=0, atol=1e-6)
    # levels handed in give the same boxes as levels found
    assert boxes_from_maps(tensor, threshold, False, levels=map_levels(tensor, threshold)) == whole


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(1, 30), st.integers(1, 30),
       THRESHOLDS)
def test_flat_and_extreme_maps(value, height, width, threshold):
    maps = torch.full((1, height, width), value)
    found = boxes_from_maps(maps, threshold)
    assert_valid_boxes(found, 1, height, width)
    assert math.isfinite(threshold_level(maps[0], threshold))


BOX_VALUES = st.one_of(st.floats(-1e12, 1e12, allow_nan=False), st.integers(-5, 5).map(float))
BOXES = st.lists(st.tuples(BOX_VALUES, BOX_VALUES, BOX_VALUES, BOX_VALUES), max_size=6)


@FAST
@given(BOXES, BOXES)
def test_box_iou_is_a_symmetric_fraction(a, b):
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b)) and np.isfinite(iou).all()
    assert ((iou >= 0) & (iou <= 1 + 1e-9)).all()
    assert np.allclose(iou, box_iou(b, a).T)
    for i, (x0, y0, x1, y1) in enumerate(a):
        if x1 > x0 and y1 > y0 and (x1 - x0) * (y1 - y0) > 0:
            assert box_iou([a[i]], [a[i]])[0, 0] == pytest.approx(1.0)


# --------------------------------------------------------------------------- ground-truth readers


def check_truth(read, path: Path) -> None:
    try:
        truth = read(path)
    except CamlocError as error:
        assert one_line(error)
        return
    assert isinstance(truth, dict)
    for key, boxes in truth.items():
        assert isinstance(key, str) and isinstance(boxes, list)
        for box in boxes:
            assert isinstance(box, GTBox) and isinstance(box.label, str)
            assert len(box.box) == 4 and all(isinstance(v, float) for v in box.box)
            x0, y0, x1, y1 = box.box
            assert all(math.isfinite(v) for v in box.box) and x1 >= x0 and y1 >= y0


CSV_TEXT = "image,label,xmin,ymin,xmax,ymax\ncat.jpg,285,1,2,30,40\ndog.jpg,dog,0,0,10,10\n"
VOC_TEXT = ("<annotation><filename>cat.jpg</filename><object><name>cat</name><bndbox><xmin>1</xmin>"
            "<ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>")
COCO_TEXT = ('{"images": [{"id": 1, "file_name": "cat.jpg"}], "categories": [{"id": 3, "name": "cat"}], '
             '"annotations": [{"image_id": 1, "category_id": 3, "bbox": [1, 2, 29, 38]}]}')
READERS = {"csv": (read_csv_boxes, CSV_TEXT), "voc": (lambda p: read_voc_files([p]), VOC_TEXT),
           "coco": (read_coco_json, COCO_TEXT)}
FIELD_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


def write(data: bytes, name: str) -> Path:
    path = SCRATCH / name
    path.write_bytes(data)
    return path


@FAST
@given(st.sampled_from(sorted(READERS)), st.binary(max_size=300))
def test_readers_on_random_bytes(kind, data):
    read, _ = READERS[kind]
    check_truth(read, write(data, f"random.{kind}"))


@FAST
@given(st.sampled_from(sorted(READERS)), st.data())
def test_readers_on_truncations_and_edits(kind, data):
    read, text = READERS[kind]
    raw = text.encode()
    cut = data.draw(st.integers(0, len(raw)))
    edited = bytearray(raw[:cut])
    for _ in range(data.draw(st.integers(0, 3))):
        if edited:
            edited[data.draw(st.integers(0, len(edited) - 1))] = data.draw(st.sampled_from(b'"{}[],:<>/0-.e \n'))
    check_truth(read, write(bytes(edited), f"cut.{kind}"))


@FAST
@given(st.lists(st.tuples(FIELD_TEXT, FIELD_TEXT, *(st.one_of(FIELD_TEXT, st.floats().map(str)),) * 4), max_size=5))
def test_csv_rows_of_any_text(rows):
    lines = ["image,label,xmin,ymin,xmax,ymax"] + [",".join(f'"{v.replace(chr(34), "")}"' for v in row) for row in rows]
    check_truth(read_csv_boxes, write("\n".join(lines).encode(), "rows.csv"))


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True), FIELD_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(FIELD_TEXT, inner, max_size=4)),
    max_leaves=12,
)


@FAST
@given(st.fixed_dictionaries({}, optional={
    "images": st.one_of(JSON_VALUES, st.lists(st.fixed_dictionaries(
        {"id": st.one_of(st.integers(0, 3), JSON_VALUES), "file_name": JSON_VALUES}), max_size=3)),
    "categories": st.one_of(JSON_VALUES, st.lists(st.fixed_dictionaries(
        {"id": st.integers(0, 3), "name": JSON_VALUES}), max_size=3)),
    "annotations": st.one_of(JSON_VALUES, st.lists(st.fixed_dictionaries(
        {"image_id": st.integers(0, 3), "category_id": JSON_VALUES,
         "bbox": st.one_of(JSON_VALUES, st.lists(st.one_of(st.floats(), st.integers()), min_size=4, max_size=4))}),
        max_size=3)),
}))
def test_coco_json_of_any_shape(document):
    import json

    check_truth(read_coco_json, write(json.dumps(document).encode(), "any.json"))


@pytest.mark.parametrize("values", ["nan,0,10,10", "0,0,inf,10", "-inf,0,1,1", "0,0,1e400,1"])
def test_non_finite_boxes_are_refused(values):
    path = write(f"image,label,xmin,ymin,xmax,ymax\na.jpg,1,{values}\n".encode(), "nan.csv")
    with pytest.raises(CamlocError, match="not four finite numbers"):
        read_csv_boxes(path)


def test_deeply_nested_coco_json_is_refused():
    with pytest.raises(CamlocError, match="unreadable COCO JSON"):
        read_coco_json(write(b"[" * 100_000 + b"]" * 100_000, "deep.json"))
