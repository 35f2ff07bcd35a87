"""Boxes from maps with known components, IoU, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camloc.boxes import box_iou, boxes_from_map, boxes_from_mask
from camloc.maps import normalize_maps


def two_blobs():
    heat = np.zeros((60, 100))
    heat[5:25, 10:50] = 1.0  # 20 x 40 = 800 px
    heat[40:50, 70:90] = 0.6  # 10 x 20 = 200 px
    heat[55:57, 2:4] = 0.9  # 4 px speck
    return heat


def test_largest_component_by_default():
    assert boxes_from_map(two_blobs(), threshold=0.2) == [(10, 5, 50, 25)]


def test_all_components_largest_first_with_min_area():
    heat = two_blobs()
    assert boxes_from_map(heat, 0.2, largest_only=False) == [(10, 5, 50, 25), (70, 40, 90, 50), (2, 55, 4, 57)]
    assert boxes_from_map(heat, 0.2, largest_only=False, min_area=0.01) == [(10, 5, 50, 25), (70, 40, 90, 50)]


def test_threshold_drops_weak_components():
    assert boxes_from_map(two_blobs(), threshold=0.7, largest_only=False) == [(10, 5, 50, 25), (2, 55, 4, 57)]
    assert boxes_from_map(np.zeros((5, 5)), threshold=0.2) == []


def test_diagonal_pixels_are_connected():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True
    assert boxes_from_mask(mask) == [(1, 1, 4, 4)]


def test_tensor_and_array_agree():
    heat = two_blobs()
    assert boxes_from_map(torch.from_numpy(heat), 0.5) == boxes_from_map(heat, 0.5)


def test_iou_cases():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 5, 15, 15], [10, 10, 20, 20], [2, 2, 4, 4]])
    np.testing.assert_allclose(iou[0], [1.0, 25 / 175, 0.0, 4 / 100])
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0


def test_normalize_with_mask():
    maps = torch.tensor([[[5.0, 1.0, 3.0], [100.0, 2.0, 4.0]]])
    mask = torch.tensor([[False, True, True], [False, True, True]])
    out = normalize_maps(maps, mask)
    assert out[0, :, 0].tolist() == [0.0, 0.0]
    assert out[0, 0, 1].item() == pytest.approx(0.0) and out[0, 1, 2].item() == pytest.approx(1.0)
    flat = normalize_maps(torch.ones(1, 3, 3))
    assert float(flat.abs().max()) == 0.0


def test_components_equal_scipys_numbering():
    """The boxes' own connected components (no scipy.sparse import) match scipy's, labels included."""
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    from camloc.boxes import _components

    rng = np.random.default_rng(0)
    for _ in range(200):
        nodes, edges = int(rng.integers(1, 200)), int(rng.integers(0, 300))
        source, target = rng.integers(0, nodes, edges), rng.integers(0, nodes, edges)
        found, label = connected_components(csr_matrix((np.ones(edges), (source, target)), shape=(nodes, nodes)),
                                            directed=False)
        ours, own_label = _components(nodes, source, target)
        assert ours == found and np.array_equal(own_label, label)
