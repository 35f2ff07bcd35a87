"""The fast rendering paths against straightforward references: colour blending on
tensors, the PNG encoder, and boxes of masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from camloc import render
from camloc.boxes import boxes_from_map, boxes_from_maps, boxes_from_mask, mask_components, threshold_level


def reference_blend(image, normalized, alpha, colormap, coverage=None):
    """The obvious way: each pixel's nearest colour (index rounded in the maps' float32),
    mixed in float64, rounded."""
    lut = render.colormap_lut(colormap).double()
    index = (normalized.clamp(0, 1) * 255).round().long().numpy()
    weight = np.full(normalized.shape, alpha)
    if coverage is not None:
        weight = weight * coverage.numpy()
    mixed = image.double().numpy() * (1 - weight[..., None]) + lut.numpy()[index] * weight[..., None]
    return torch.from_numpy(np.rint(mixed).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.5, 1.0])
@pytest.mark.parametrize("colormap", ["jet", "viridis", "gray"])
def test_blend_matches_the_reference(alpha, colormap):
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (37, 53, 3), dtype=torch.uint8, generator=generator)
    normalized = torch.rand(37, 53, generator=generator)
    normalized[0, :4] = torch.tensor([0.0, 1.0, 0.5, 0.999])  # the ends of the colormap
    fast = render.blend(image, normalized, alpha, colormap)
    difference = (fast.int() - reference_blend(image, normalized, alpha, colormap).int()).abs()
    assert fast.dtype == torch.uint8 and fast.shape == image.shape
    assert difference.max() <= 1 and (difference > 0).float().mean() < 0.01  # float32 vs float64 ties


def test_blend_keeps_the_image_outside_the_coverage():
    image = torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8)
    normalized = torch.rand(20, 30)
    coverage = torch.zeros(20, 30, dtype=torch.bool)
    coverage[:, 5:25] = True
    fast = render.blend(image, normalized, 0.6, "jet", coverage)
    assert torch.equal(fast[:, :5], image[:, :5]) and torch.equal(fast[:, 25:], image[:, 25:])
    reference = reference_blend(image, normalized, 0.6, "jet", coverage)
    assert (fast.int() - reference.int()).abs().max() <= 1


def test_blend_rejects_an_opacity_out_of_range():
    with pytest.raises(ValueError, match="alpha"):
        render.blend(torch.zeros(2, 2, 3, dtype=torch.uint8), torch.zeros(2, 2), alpha=1.5)


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (1, 40, 3), (33, 1, 3), (61, 47, 3), (16, 16, 4)])
def test_png_round_trips_exactly(shape):
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    decoded = Image.open(io.BytesIO(render.encode_png(pixels)))
    decoded.load()  # checks the CRCs and the deflate stream
    assert decoded.mode == {2: "L", 3: "RGB", 4: "RGBA"}[len(shape) if len(shape) == 2 else 3 + (shape[2] == 4)]
    assert np.array_equal(np.asarray(decoded), pixels)


def test_png_of_a_real_overlay_is_smaller_than_raw_and_opens_as_rgb(tmp_path):
    photo = Image.open("examples/images/chelsea_cat.jpg").convert("RGB")
    data = render.encode_png(photo)
    assert len(data) < 0.8 * photo.width * photo.height * 3
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(photo))
    palette = photo.convert("P")  # other modes are converted first
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(render.encode_png(palette)))),
                          np.asarray(palette.convert("RGB")))
    assert render.encode_png(torch.from_numpy(np.array(photo))) == data


def test_png_rejects_what_it_cannot_write():
    with pytest.raises(ValueError, match="uint8"):
        render.encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        render.encode_png(np.zeros((0, 4, 3), np.uint8))


def reference_boxes(mask, largest_only, min_area):
    """Every component's box from find_objects, ordered by area (ties by label)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    found = []
    for label, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        found.append((-(labels == label).sum(), label, (cols.start, rows.start, cols.stop, rows.stop)))
    found.sort()
    boxes = [box for _, _, box in found]
    if largest_only:
        return boxes[:1]
    return boxes[:1] + [box for area, _, box in found[1:] if -area >= min_area * mask.size]


@pytest.mark.parametrize("seed", range(40))
def test_boxes_of_masks_match_the_reference(seed):
    generator = np.random.default_rng(seed)
    height, width = generator.integers(1, 80, size=2)
    if seed % 4 == 3:  # salt and pepper: many tiny components, equal areas, diagonal contacts
        mask = generator.random((height, width)) < generator.uniform(0.1, 0.6)
    else:  # a smooth map thresholded, as CAMs are
        smooth = ndimage.gaussian_filter(generator.random((height, width)), sigma=generator.uniform(0.5, 6))
        mask = smooth >= np.quantile(smooth, generator.uniform(0.0, 0.97))
    for largest_only in (True, False):
        for min_area in (0.0, 0.01):
            assert boxes_from_mask(mask, largest_only, min_area) == reference_boxes(mask, largest_only, min_area)
    areas, _ = mask_components(mask)
    assert areas.sum() == mask.sum()


def test_components_of_edge_cases():
    assert boxes_from_mask(np.zeros((5, 5), bool)) == []
    assert boxes_from_mask(np.ones((1, 1), bool)) == [(0, 0, 1, 1)]
    assert boxes_from_mask(np.ones((3, 7), bool)) == [(0, 0, 7, 3)]
    diagonal = np.eye(6, dtype=bool)
    assert boxes_from_mask(diagonal) == [(0, 0, 6, 6)]  # 8-connected
    assert boxes_from_mask(np.fliplr(diagonal)) == [(0, 0, 6, 6)]
    stripes = np.zeros((5, 9), bool)
    stripes[:, ::2] = True  # five columns two pixels apart: five components
    assert len(boxes_from_mask(stripes, largest_only=False)) == 5


@pytest.mark.parametrize("threshold", [0.25, 0.6, "otsu", "mean"])
def test_a_stack_of_maps_gives_each_map_its_own_boxes(threshold):
    generator = np.random.default_rng(7)
    maps = torch.from_numpy(np.stack([ndimage.gaussian_filter(generator.random((40, 50)), 3) for _ in range(5)]))
    low, high = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    maps = (maps - low) / (high - low)
    maps[1, -1, :] = 1.0  # touches the next map's first row in the stack: must stay apart
    maps[2, 0, :] = 1.0
    for largest_only in (True, False):
        stacked = boxes_from_maps(maps.float(), threshold, largest_only)
        assert stacked == [boxes_from_map(m.float(), threshold, largest_only) for m in maps]
        one_by_one = [reference_boxes((m >= threshold_level(m, threshold)).numpy(), largest_only, 0.0)
                      for m in maps.float()]
        assert stacked == one_by_one


@pytest.mark.parametrize("mode", ["minmax", "max"])
def test_normalized_maps_match_float64_and_stay_in_range(mode):
    from camloc.maps import normalize_maps

    generator = torch.Generator().manual_seed(3)
    maps = torch.randn(4, 33, 47, generator=generator) * torch.tensor([1e-3, 1.0, 50.0, 1e4]).view(4, 1, 1)
    normalized = normalize_maps(maps, mode=mode)
    values = maps.double().flatten(1)
    if mode == "max":
        values = values.clamp_min(0)
        low = torch.zeros(4, 1, dtype=torch.float64)
    else:
        low = values.amin(1, keepdim=True)
    reference = ((values - low) / (values.amax(1, keepdim=True) - low)).view_as(maps)
    assert normalized.min() >= 0 and normalized.max() <= 1  # exactly, without a clamp
    assert (normalized.double() - reference).abs().max() < 1e-6
    assert torch.equal(normalized.amax((1, 2)), torch.ones(4))


def test_finishing_in_parallel_equals_finishing_in_line(monkeypatch):
    import camloc
    from camloc import methods
    from camloc import pipeline as cam
    from camloc.images import Geometry

    model = camloc.load_model("resnet18", weights="random")
    geometries = [Geometry((300 + 7 * i, 400 - 5 * i), (224, 224), ((224 / (300 + 7 * i)), 224 / (400 - 5 * i)),
                           (0.0, 0.0), "squash") for i in range(6)]
    output = methods.CAMMethod(model)(torch.randn(6, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
                                  methods.ClassSelection(topk=3))
    monkeypatch.setattr(cam, "PARALLEL_PIXELS", 0)
    parallel = cam.finish(output, geometries, model)
    monkeypatch.setattr(cam, "PARALLEL_PIXELS", 10**12)
    in_line = cam.finish(output, geometries, model)
    for a, b in zip(parallel, in_line, strict=True):
        assert a.boxes == b.boxes and a.to_record() == b.to_record()
        assert torch.equal(a.normalized, b.normalized)


def test_boxes_of_arrays_in_any_layout():
    heat = np.zeros((20, 30))
    heat[2:6, 20:28] = 1.0
    assert boxes_from_map(np.fliplr(heat), 0.5) == [(2, 2, 10, 6)]  # a negative-stride view
    assert boxes_from_map(heat.T, 0.5) == [(2, 20, 6, 28)]
    assert boxes_from_map(heat.astype(np.float32) > 0.5, 0.5) == [(20, 2, 28, 6)]  # a boolean mask
    assert boxes_from_maps(np.stack([heat, heat[::-1]]), 0.5) == [[(20, 2, 28, 6)], [(20, 14, 28, 18)]]
    assert boxes_from_maps(np.zeros((0, 20, 30)), 0.5) == [] == boxes_from_maps(np.zeros((0, 20, 30)), "otsu")


def random_geometry(rng: np.random.Generator, policy: str):
    from camloc.images import resize_geometry

    original = (int(rng.integers(5, 700)), int(rng.integers(5, 700)))  # down- and upsampling
    _, _, geometry = resize_geometry(original, (224, 224), policy)
    return geometry


def shaped_maps(rng: np.random.Generator, k: int, size: int) -> torch.Tensor:
    """Random maps with the features that matter: a sharp peak, negatives, one flat map."""
    maps = torch.from_numpy(rng.normal(size=(k, size, size)).astype(np.float32))
    maps[0] *= 1e-3
    maps[1, rng.integers(size), rng.integers(size)] += 40.0  # one sharp peak
    maps[2] = maps[2].abs().neg()  # all negative ("max" gives 0)
    maps[3] = 2.5  # flat
    return maps


@pytest.mark.parametrize("policy", ["squash", "center-crop", "pad"])
@pytest.mark.parametrize("mode", ["minmax", "max"])
def test_normalising_before_resampling_equals_normalising_after(policy, mode):
    """The fast path (normalise the small map, resample once) against the straightforward
    one (resample, then normalise every pixel): same maps to float rounding, extremes exact."""
    from camloc.images import coverage_mask, maps_to_original
    from camloc.maps import normalize_maps, normalized_to_original, normalized_to_original_batch

    rng = np.random.default_rng(7)
    for trial in range(12):
        geometry = random_geometry(rng, policy)
        maps = shaped_maps(rng, 5, int(rng.choice([7, 14])))
        covered = coverage_mask(geometry) if policy == "center-crop" else None
        reference = normalize_maps(maps_to_original(maps.double(), geometry).double(), covered, mode)
        fast = normalized_to_original(maps, geometry, mode)
        assert fast.shape == reference.shape and fast.dtype == torch.float32
        assert (fast.double() - reference).abs().max() < 1e-5, (trial, geometry)
        assert fast.min() >= 0 and fast.max() <= 1
        assert torch.equal(fast.amax((1, 2)), reference.float().amax((1, 2)))  # 1, or 0 when flat
        if mode == "minmax":
            seen = fast if covered is None else fast[:, covered]
            assert torch.equal(seen.flatten(1).amin(1), torch.zeros(5))
        if mode == "minmax":
            assert torch.equal(fast[3], torch.zeros_like(fast[3]))  # the flat map: 0, not noise
        if covered is not None:
            assert fast[:, ~covered].abs().max() == 0 if (~covered).any() else True
    geometries = [random_geometry(rng, policy) for _ in range(3)]
    batch = torch.stack([shaped_maps(rng, 5, 7) for _ in range(3)])
    together = normalized_to_original_batch(batch, [geometries[0], geometries[1], geometries[0]], mode)
    for maps, geometry, result in zip(batch, [geometries[0], geometries[1], geometries[0]], together, strict=True):
        assert torch.equal(result, normalized_to_original(maps, geometry, mode))


def test_extreme_samples_hold_the_extremes_of_every_resampled_signal():
    """Where a resampled map may peak: brute force over random 1-D signals and geometries."""
    from camloc.images import extreme_samples, interpolation_matrix

    rng = np.random.default_rng(11)
    for _ in range(200):
        n_feature, n_input = int(rng.integers(1, 20)), int(rng.integers(16, 400))
        n_out = int(rng.integers(1, 900))
        scale = n_input / n_out * float(rng.uniform(0.6, 1.6))
        offset = float(rng.uniform(-0.3, 0.3)) * n_input
        signal = torch.from_numpy(rng.normal(size=n_feature)).double()
        resampled = interpolation_matrix(n_out, n_feature, n_input, scale, offset).double() @ signal
        for seen_only in (False, True):
            chosen = extreme_samples(n_out, n_feature, n_input, scale, offset, seen_only)
            position = scale * (np.arange(n_out) + 0.5) + offset
            pool = np.flatnonzero((position >= 0) & (position <= n_input)) if seen_only else np.arange(n_out)
            if pool.size == 0:
                assert chosen.numel() == 0
                continue
            assert set(chosen.tolist()) <= set(pool.tolist())
            values = resampled[torch.from_numpy(pool)]
            assert torch.isclose(resampled[chosen].max(), values.max(), atol=1e-12)
            assert torch.isclose(resampled[chosen].min(), values.min(), atol=1e-12)
            assert chosen.numel() <= 2 * n_feature + 2
    assert extreme_samples(10, 3, 100, 1.0, 500.0, seen_only=True).numel() == 0  # none seen


def test_raw_maps_at_original_resolution_come_when_asked():
    import camloc
    from camloc.images import maps_to_original

    model = camloc.load_model("resnet18", weights="random")
    [result] = camloc.explain(model, [np.full((90, 130, 3), 120, np.uint8)], topk=2)
    assert tuple(result.feature_maps.shape) == (2, 14, 14) and "maps" not in vars(result)  # dilated
    assert tuple(result.maps.shape) == (2, 90, 130)
    assert torch.equal(result.maps, maps_to_original(result.feature_maps, result.geometry))
    assert result.maps is result.maps  # resampled once


def test_boxes_from_maps_compare_alike_on_every_dtype_and_device_path():
    rng = np.random.default_rng(5)
    maps = torch.from_numpy(rng.random((3, 41, 57)))
    expected = [boxes_from_map((m >= 0.6).numpy(), 0.5, largest_only=False) for m in maps]
    for variant in (maps, maps.float(), maps.half(), maps.bfloat16(), maps.numpy(), maps.float().numpy()):
        got = boxes_from_maps(variant, 0.6, largest_only=False)
        if variant.dtype in (torch.float16, torch.bfloat16):  # coarser values: compare to themselves
            expected_low = [boxes_from_map((m.float() >= 0.6).numpy(), 0.5, largest_only=False) for m in variant]
            assert got == expected_low
        else:
            assert got == expected


def test_finishing_inside_autocast_stays_float32():
    """A caller's bfloat16 autocast (``--amp``) must not make the maps bfloat16."""
    import camloc
    from camloc import methods
    from camloc import pipeline as cam

    model = camloc.load_model("resnet18", weights="random")
    geometries = [random_geometry(np.random.default_rng(i), "center-crop") for i in range(3)]
    output = methods.CAMMethod(model)(torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1)),
                                  methods.ClassSelection(topk=2))
    plain = cam.finish(output, geometries, model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = cam.finish(output, geometries, model)
        raw = [result.maps for result in inside]
    for a, b, maps in zip(plain, inside, raw, strict=True):
        assert b.normalized.dtype == torch.float32 and maps.dtype == torch.float32
        assert torch.equal(a.normalized, b.normalized) and a.boxes == b.boxes


def test_the_default_colormap_is_matplotlibs_jet_without_importing_it():
    """`jet` is built from its segment data (no matplotlib import at start-up), equal to matplotlib's."""
    import matplotlib

    table = matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3]
    assert torch.equal(render.colormap_lut("jet"), torch.from_numpy((table * 255).round().astype(np.uint8)))
