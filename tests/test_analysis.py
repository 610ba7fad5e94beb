"""Analysis of loaded volumes: percentiles, threshold, mask, per-slice metrics and oblique views."""

from __future__ import annotations

import math

import cc3d
import cv2
import numpy as np
import pytest

from tasks.analyse import analyse_volume, largest_component
from tasks.oblique import OBLIQUE_ANGLES, OBLIQUE_PLANES, extract_slice, oblique_slice_count, oblique_view_name
from tasks.slice_metrics import accumulate_axis_metrics


def shells(shape=(30, 26, 22)) -> np.ndarray:
    """Constant background 100, a shell at 600 and a core at 1000, as float32."""
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    volume = np.full(shape, 100, np.float32)
    volume[radius < 9] = 600
    volume[radius < 5] = 1000
    return volume


def brute_force(volume: np.ndarray, mask: np.ndarray, axis: int, index: int) -> dict:
    image = np.take(volume, index, axis=axis).astype(np.float64)
    plane = np.take(mask, index, axis=axis)
    inside = image[plane]
    lap = image[:-2, 1:-1] + image[2:, 1:-1] + image[1:-1, :-2] + image[1:-1, 2:] - 4 * image[1:-1, 1:-1]
    rows, cols = np.flatnonzero(plane.any(1)), np.flatnonzero(plane.any(0))
    n_labels = cv2.connectedComponents(plane.astype(np.uint8), connectivity=8)[0] - 1
    return {
        "mask_pixels": int(plane.sum()), "sharpness": float(lap.var()) if lap.size else 0.0,
        "mean": inside.mean() if inside.size else np.nan, "std": inside.std() if inside.size else np.nan,
        "min": inside.min() if inside.size else np.nan, "max": inside.max() if inside.size else np.nan,
        "bbox": (rows[0], rows[-1], cols[0], cols[-1]) if inside.size else (-1, -1, -1, -1),
        "n_components": n_labels,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 24, 3))
    mask = rng.random(shape) < 0.3
    volume = np.where(mask, rng.random(shape), 0).astype(np.float32)
    metrics = accumulate_axis_metrics(volume, mask)
    for axis in range(3):
        for index in range(shape[axis]):
            expected = brute_force(volume, mask, axis, index)
            for key in ("mask_pixels", "n_components"):
                assert metrics[axis][key][index] == expected[key], (axis, index, key)
            assert tuple(metrics[axis]["bbox"][index]) == expected["bbox"], (axis, index)
            for key in ("mean", "std", "min", "max", "sharpness"):
                np.testing.assert_allclose(metrics[axis][key][index], expected[key], rtol=1e-5, atol=1e-6,
                                           err_msg=f"axis {axis} slice {index} {key}")


def test_largest_component_like_cc3d():
    rng = np.random.default_rng(5)
    for shape in [(150, 9, 11), (70, 30, 3), (1, 5, 5), (130, 12, 12)]:
        volume = rng.random(shape).astype(np.float32)
        expected = cc3d.largest_k(volume > 0.6, k=1, connectivity=26, binary_image=True).astype(bool)
        np.testing.assert_array_equal(largest_component(volume, 0.6), expected)
    # Two equal cubes in different slabs: the first in memory order wins, as in cc3d.
    volume = np.zeros((140, 10, 10), np.float32)
    volume[100:104, 1:4, 1:4] = 1
    volume[10:14, 5:8, 5:8] = 1
    mask = largest_component(volume, 0.5)
    assert mask[10:14].sum() == 36
    assert mask[100:].sum() == 0


def test_histogram_path_same():
    volume = (shells() + np.random.default_rng(3).integers(0, 40, shells().shape)).astype(np.int16)
    from tasks.volume import ValueCounts

    values, counts = np.unique(volume.astype(np.float32), return_counts=True)
    a = analyse_volume(volume.astype(np.float32), histogram=ValueCounts(values, counts))
    b = analyse_volume(volume.astype(np.float32))
    assert (a.clip_low, a.clip_high, a.threshold) == (b.clip_low, b.clip_high, b.threshold)
    assert a.slices.equals(b.slices)


def test_nonfinite_left_out():
    volume = shells()
    bad = np.zeros(volume.shape, bool)
    bad[0, :5, :5] = True  # background corner
    bad[15, 13, 11] = True  # inside the core
    bad[10, 13, 11] = True  # inside the shell
    with_nan = volume.copy()
    with_nan[bad] = np.array([np.nan, np.inf, -np.inf] * 20)[: bad.sum()]
    replaced = volume.copy()
    replaced[bad] = 100  # the background value: percentiles stay the same
    a = analyse_volume(with_nan)
    b = analyse_volume(replaced)
    assert a.nonfinite_voxels == bad.sum()
    assert b.nonfinite_voxels == 0
    finite = volume[~bad]
    assert (a.clip_low, a.clip_high) == (np.percentile(finite, 1), np.percentile(finite, 99))
    assert a.threshold == b.threshold
    assert a.mask_voxels == b.mask_voxels
    assert not a.mask[bad].any()
    assert a.slices.equals(b.slices)


@pytest.mark.parametrize("make", [
    lambda v: np.full_like(v, 7.0),
    lambda v: np.where(np.arange(v.size).reshape(v.shape) == 0, 50.0, 0.0).astype(np.float32),
    lambda v: np.where(np.arange(v.size).reshape(v.shape) % 3 == 0, np.inf, 4.0).astype(np.float32),
    lambda v: np.full_like(v, np.nan),
])
def test_degenerate(make):
    analysis = analyse_volume(make(shells()))
    assert analysis.status == "degenerate"
    assert analysis.reason
    assert analysis.mask is None
    assert analysis.slices.num_rows == 0


def test_oblique_views():
    volume = shells()
    analysis = analyse_volume(volume.copy(), oblique_views=True)
    table = analysis.slices.to_pydict()
    views = set(table["view"])
    assert len(views) == 3 + 24
    for plane in OBLIQUE_PLANES:
        for angle in OBLIQUE_ANGLES:
            name = oblique_view_name(plane, angle)
            rows = [i for i, view in enumerate(table["view"]) if view == name]
            assert len(rows) == oblique_slice_count(volume.shape, plane, angle)
            assert {table["plane"][i] for i in rows} == {plane}
            assert {table["angle_deg"][i] for i in rows} == {angle}
            assert [table["slice_index"][i] for i in rows] == list(range(len(rows)))
    # 90 degrees in the xy plane cuts along y, so the count is the y extent.
    assert oblique_slice_count(volume.shape, "xy", 90) == volume.shape[1]
    # Near 90 degrees (80 and 100) the slice count is close to the y extent.
    a, b, _ = OBLIQUE_PLANES["xy"]
    expected = math.ceil(volume.shape[a] * abs(math.cos(math.radians(80))) + volume.shape[b] * math.sin(math.radians(80)))
    assert oblique_slice_count(volume.shape, "xy", 80) == expected
    # The centre slice of every view crosses the core, so its mask is not empty.
    for view in views:
        rows = [i for i, v in enumerate(table["view"]) if v == view]
        centre = rows[len(rows) // 2]
        assert table["mask_pixels"][centre] > 0, view
        image, mask = extract_slice(analysis_volume(volume), analysis.mask, view, len(rows) // 2)
        assert mask.sum() == table["mask_pixels"][centre]


def analysis_volume(volume: np.ndarray) -> np.ndarray:
    normalised = volume.copy()
    analysis = analyse_volume(normalised)
    return normalised * analysis.mask
