"""Adaptive box thresholds (``"otsu"``, ``"mean"``) next to the paper's fixed fraction."""

from __future__ import annotations

import pytest
import torch

from camloc.boxes import box_iou, boxes_from_map, otsu_level, parse_threshold
from camloc.errors import ClassError
from camloc.maps import normalize_maps
from camloc.pipeline import BoxOptions


def blob_on_a_floor() -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """A map whose background climbs to half the peak, object at x 30..70, y 20..50."""
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 0.5, 100).expand(80, 100)
    heat = ramp + 0.05 * torch.rand(80, 100, generator=generator)
    heat[20:50, 30:70] = 1.0 - 0.05 * torch.rand(30, 40, generator=generator)
    return normalize_maps(heat[None])[0], (30, 20, 70, 50)


def test_otsu_finds_the_object_where_the_paper_rule_takes_everything():
    heat, truth = blob_on_a_floor()
    [paper] = boxes_from_map(heat, 0.2)
    [otsu] = boxes_from_map(heat, "otsu")
    assert paper[2:] == (100, 80) and box_iou([paper], [truth])[0, 0] < 0.3
    assert box_iou([otsu], [truth])[0, 0] > 0.95


def test_mean_rule_and_levels():
    heat, truth = blob_on_a_floor()
    [mean_box] = boxes_from_map(heat, "mean")
    assert box_iou([mean_box], [truth])[0, 0] < 0.5  # the mean sits inside the ramp
    level = otsu_level(heat)
    assert 0.2 < level < 0.8


def test_parse_threshold():
    assert parse_threshold("0.35") == 0.35
    assert parse_threshold("OTSU") == "otsu"
    assert parse_threshold(0.2) == 0.2
    for bad in ("1.5", "median", -0.1):
        with pytest.raises(ValueError):
            parse_threshold(bad)


def test_box_options_take_rules():
    assert BoxOptions("otsu").threshold == "otsu"
    assert BoxOptions("0.6").threshold == 0.6
    with pytest.raises(ClassError, match="threshold"):
        BoxOptions("sometimes")
