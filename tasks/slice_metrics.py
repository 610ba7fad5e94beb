"""Per-slice statistics for all three axes in one chunked pass over a volume.

Slices along axes 1 and 2 are not contiguous in memory, so instead of cutting
them out one by one, each statistic is accumulated from blocks of consecutive
axis-0 slices. Temporary arrays are only a block in size.
"""

from __future__ import annotations

import cv2
import numpy as np

from tasks.chunks import CHUNK_SLICES, chunks


def _first_last(occupancy: np.ndarray) -> np.ndarray:
    """Return (first, last) True index along the last axis of a 2D bool array; -1 where none."""
    any_true = occupancy.any(axis=1)
    first = np.argmax(occupancy, axis=1)
    last = occupancy.shape[1] - 1 - np.argmax(occupancy[:, ::-1], axis=1)
    return np.stack([np.where(any_true, first, -1), np.where(any_true, last, -1)], axis=1)


def _count_components(mask_slices: np.ndarray) -> np.ndarray:
    """Return the number of 8-connected components in each 2D slice of a (n, H, W) bool stack."""
    counts = np.zeros(mask_slices.shape[0], dtype=np.int32)
    for i, plane in enumerate(mask_slices):
        if plane.any():
            n_labels, _ = cv2.connectedComponents(plane.view(np.uint8), connectivity=8)
            counts[i] = n_labels - 1
    return counts


def _second_difference(block: np.ndarray, axis: int) -> np.ndarray:
    """Central second difference along ``axis``, trimmed by one voxel at each end of that axis."""
    n = block.shape[axis]
    lower = np.take(block, range(0, n - 2), axis=axis)
    middle = np.take(block, range(1, n - 1), axis=axis)
    upper = np.take(block, range(2, n), axis=axis)
    return lower + upper - 2.0 * middle


class _Moments:
    """Running sums of a quantity per slice: count, sum and sum of squares."""

    def __init__(self, n: int):
        self.count = np.zeros(n, dtype=np.float64)
        self.total = np.zeros(n, dtype=np.float64)
        self.squares = np.zeros(n, dtype=np.float64)

    def variance(self) -> np.ndarray:
        safe = np.maximum(self.count, 1)
        mean = self.total / safe
        return np.maximum(self.squares / safe - mean * mean, 0.0)


def accumulate_axis_metrics(volume: np.ndarray, mask: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Measure every slice along axes 0, 1 and 2.

    Parameters
    ----------
    volume : ndarray of float32, shape (X, Y, Z)
        Normalised intensities, zero outside ``mask``.
    mask : ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    list of 3 dicts, one per axis, with arrays of one value per slice:
    ``mask_pixels``, ``mean``, ``std``, ``min``, ``max`` (inside the mask),
    ``sharpness`` (variance of the 5-point Laplacian over the slice's
    interior pixels), ``bbox`` (n, 4: row0, row1, col0, col1, inclusive,
    -1 when empty) and ``n_components``.
    """
    shape = volume.shape
    area = [np.zeros(n, dtype=np.int64) for n in shape]
    total = [np.zeros(n, dtype=np.float64) for n in shape]
    squares = [np.zeros(n, dtype=np.float64) for n in shape]
    minimum = [np.full(n, np.inf) for n in shape]
    maximum = [np.full(n, -np.inf) for n in shape]
    laplacian = [_Moments(n) for n in shape]
    components = [np.zeros(n, dtype=np.int32) for n in shape]

    # Occupancy projections: any_k[i, j], any_j[i, k] and any_i[j, k].
    occupancy_ij = np.zeros(shape[:2], dtype=bool)
    occupancy_ik = np.zeros((shape[0], shape[2]), dtype=bool)
    occupancy_jk = np.zeros(shape[1:], dtype=bool)

    for start, stop in chunks(shape[0]):
        block = volume[start:stop]
        block_mask = mask[start:stop]
        square = block * block
        inside_min = np.where(block_mask, block, np.inf)

        sums = [(1, 2), (0, 2), (0, 1)]
        for axis, axes in enumerate(sums):
            target = slice(start, stop) if axis == 0 else slice(None)
            area[axis][target] += np.count_nonzero(block_mask, axis=axes)
            total[axis][target] += block.sum(axis=axes, dtype=np.float64)
            squares[axis][target] += square.sum(axis=axes, dtype=np.float64)
            minimum[axis][target] = np.minimum(minimum[axis][target], inside_min.min(axis=axes))
            maximum[axis][target] = np.maximum(maximum[axis][target], np.where(block_mask, block, -np.inf).max(axis=axes))

        occupancy_ij[start:stop] = block_mask.any(axis=2)
        occupancy_ik[start:stop] = block_mask.any(axis=1)
        occupancy_jk |= block_mask.any(axis=0)

        components[0][start:stop] = _count_components(block_mask)
        _accumulate_laplacian(volume, start, stop, laplacian)

    _count_components_along(mask, 1, components[1])
    _count_components_along(mask, 2, components[2])

    bboxes = [
        np.concatenate([_first_last(occupancy_ij), _first_last(occupancy_ik)], axis=1),
        np.concatenate([_first_last(occupancy_ij.T), _first_last(occupancy_jk)], axis=1),
        np.concatenate([_first_last(occupancy_ik.T), _first_last(occupancy_jk.T)], axis=1),
    ]

    results = []
    for axis in range(3):
        count = np.maximum(area[axis], 1)
        mean = total[axis] / count
        std = np.sqrt(np.maximum(squares[axis] / count - mean * mean, 0.0))
        empty = area[axis] == 0
        results.append(
            {
                "mask_pixels": area[axis],
                "mean": np.where(empty, np.nan, mean),
                "std": np.where(empty, np.nan, std),
                "min": np.where(empty, np.nan, minimum[axis]),
                "max": np.where(empty, np.nan, maximum[axis]),
                "sharpness": laplacian[axis].variance(),
                "bbox": bboxes[axis].astype(np.int32),
                "n_components": components[axis],
            }
        )
    return results


def _accumulate_laplacian(volume: np.ndarray, start: int, stop: int, moments: list[_Moments]) -> None:
    """Add the 5-point Laplacians of the slices that cross rows [start, stop) of axis 0.

    Each slice's Laplacian is the sum of the second differences along the
    slice's own two axes, taken at the slice's interior pixels.
    """
    nx = volume.shape[0]
    halo_start, halo_stop = max(start - 1, 0), min(stop + 1, nx)
    block = volume[halo_start:halo_stop]
    # Rows of ``block`` whose axis-0 neighbours both exist, limited to [start, stop).
    inner0 = slice(max(start, 1) - halo_start, min(stop, nx - 1) - halo_start)
    own = slice(start - halo_start, stop - halo_start)

    d1 = _second_difference(block[own], 1)[:, :, 1:-1]
    d2 = _second_difference(block[own], 2)[:, 1:-1, :]
    plane0 = d1 + d2
    moments[0].count[start:stop] += plane0[0].size
    moments[0].total[start:stop] += plane0.sum(axis=(1, 2), dtype=np.float64)
    moments[0].squares[start:stop] += np.square(plane0).sum(axis=(1, 2), dtype=np.float64)

    if inner0.stop <= inner0.start:
        return
    d0 = _second_difference(block, 0)[inner0.start - 1 : inner0.stop - 1]
    centre = block[inner0]
    # Slices along axis 1 lie in the (0, 2) plane.
    plane1 = d0[:, :, 1:-1] + _second_difference(centre, 2)
    moments[1].count += plane1.shape[0] * plane1.shape[2]
    moments[1].total += plane1.sum(axis=(0, 2), dtype=np.float64)
    moments[1].squares += np.square(plane1).sum(axis=(0, 2), dtype=np.float64)
    # Slices along axis 2 lie in the (0, 1) plane.
    plane2 = d0[:, 1:-1, :] + _second_difference(centre, 1)
    moments[2].count += plane2.shape[0] * plane2.shape[1]
    moments[2].total += plane2.sum(axis=(0, 1), dtype=np.float64)
    moments[2].squares += np.square(plane2).sum(axis=(0, 1), dtype=np.float64)


def _count_components_along(mask: np.ndarray, axis: int, out: np.ndarray) -> None:
    """Count 2D components of the slices along axis 1 or 2, copying a block of slices at a time."""
    for start, stop in chunks(mask.shape[axis], CHUNK_SLICES):
        index = [slice(None)] * 3
        index[axis] = slice(start, stop)
        block = np.ascontiguousarray(np.moveaxis(mask[tuple(index)], axis, 0))
        out[start:stop] = _count_components(block)
