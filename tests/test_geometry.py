"""Resize policies and geometry: maps land on the original pixels for every policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import camloc
from camloc.boxes import box_iou
from camloc.images import coverage_mask, maps_to_original, preprocess, resize_geometry


class RedDetector(nn.Module):
    """Feature map = redness, pooled by 8: the CAM of class 0 is high exactly on red pixels."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False), nn.AvgPool2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@pytest.fixture(scope="module")
def red_model():
    return camloc.adapt(RedDetector(), class_names=["red", "not red"], input_size=224,
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def picture_with_square(width, height, box):
    array = np.full((height, width, 3), 128, dtype=np.uint8)
    xmin, ymin, xmax, ymax = box
    array[ymin:ymax, xmin:xmax] = (255, 0, 0)
    return Image.fromarray(array)


@pytest.mark.parametrize("policy", ["squash", "center-crop", "pad"])
@pytest.mark.parametrize("width, height, square", [
    (400, 200, (230, 50, 290, 130)),   # wide: square right of centre, inside the central crop
    (150, 330, (30, 150, 100, 220)),   # tall: square left, middle height
    (640, 480, (260, 300, 380, 420)),  # bottom middle
])
def test_square_lands_where_it_is(red_model, policy, width, height, square):
    image = picture_with_square(width, height, square)
    [result] = camloc.explain(red_model, image, classes=["red"], policy=policy, threshold=0.5)
    assert result.normalized.shape == (1, height, width)
    peak = np.unravel_index(int(result.normalized[0].argmax()), (height, width))
    xmin, ymin, xmax, ymax = square
    assert xmin <= peak[1] < xmax and ymin <= peak[0] < ymax
    [box] = result.boxes[0]
    assert box_iou([box], [square])[0, 0] > 0.75, box


def test_center_crop_marks_uncovered_pixels(red_model):
    image = picture_with_square(400, 200, (230, 50, 290, 130))
    [result] = camloc.explain(red_model, image, classes=["red"], policy="center-crop")
    covered = result.coverage
    assert covered is not None
    assert not covered[:, :100].any() and not covered[:, 300:].any() and covered[:, 100:300].all()
    assert float(result.normalized[0][:, :100].abs().max()) == 0.0


def test_squash_resampling_equals_interpolate():
    maps = torch.randn(3, 7, 7)
    _, _, geometry = resize_geometry((123, 301), 224, "squash")
    expected = F.interpolate(maps[None], size=(123, 301), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(maps_to_original(maps, geometry), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["squash", "center-crop", "pad"])
def test_geometry_round_trip(policy):
    tensor, geometry = preprocess(Image.new("RGB", (333, 177)), (224, 256), policy, (0.5,) * 3, (0.5,) * 3)
    assert tuple(tensor.shape) == (3, 224, 256)
    boxes = np.array([[10, 20, 300, 170]])
    np.testing.assert_allclose(geometry.to_original(geometry.to_input(boxes)), boxes)
    mask = coverage_mask(geometry)
    assert mask.shape == (177, 333)
    assert bool(mask.all()) == (policy != "center-crop")


def test_pad_fills_with_the_mean_colour():
    tensor, geometry = preprocess(Image.new("RGB", (300, 100), (255, 255, 255)), 224, "pad",
                                  (0.5,) * 3, (0.5,) * 3)
    assert geometry.offset == (74.0, 0.0)  # 75 rows pasted at (224 - 75) // 2
    assert float(tensor[:, :70].abs().max()) < 0.01  # padding normalises to ~0
    assert float(tensor[:, 80:140].min()) > 0.99  # white image normalises to ~1


def test_batched_resampling_equals_per_image():
    from camloc.images import maps_to_original_batch

    maps = torch.randn(4, 2, 7, 7)
    sizes = [(123, 301), (50, 60), (123, 301), (200, 100)]
    geometries = [resize_geometry(size, 224, policy)[2] for size, policy in
                  zip(sizes, ["squash", "pad", "squash", "center-crop"], strict=True)]
    for single, batched in zip([maps_to_original(maps[i], g) for i, g in enumerate(geometries)],
                               maps_to_original_batch(maps, geometries), strict=True):
        torch.testing.assert_close(batched, single)
