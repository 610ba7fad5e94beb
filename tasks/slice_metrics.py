"""Per-slice statistics for all three axes in one pass over a volume.

Slices along axes 1 and 2 are not contiguous in memory, so they are not cut
out one by one. Instead, blocks of consecutive axis-0 slices are reduced into
small 2D projections (one value per row of voxels), and the per-slice values
are read off those projections at the end.
The Laplacians are taken plane by plane with OpenCV, so that temporaries stay
one slice in size and in cache.
"""

from __future__ import annotations

import cv2
import numpy as np

from tasks.chunks import chunks

# Slices per block for the projections; 4 slices of 512^2 float32 stay in cache.
BLOCK_SLICES = 4
# Tile of the axis-2 transposition: TRANSPOSE_ROWS x Y x TRANSPOSE_SLICES voxels.
TRANSPOSE_SLICES = 64
TRANSPOSE_ROWS = 8


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


class _Projections:
    """Reductions of a masked volume along axis 2 (``*_ij``) and axis 0 (``*_jk``).

    Any per-slice sum, minimum or maximum of the three axes is a reduction of
    one of these two arrays, and the ``ik`` occupancy gives the rest of the
    bounding boxes.
    """

    def __init__(self, shape: tuple[int, int, int]):
        nx, ny, nz = shape
        self.count_ij = np.zeros((nx, ny), dtype=np.int64)
        self.count_jk = np.zeros((ny, nz), dtype=np.int64)
        self.occupancy_ik = np.zeros((nx, nz), dtype=bool)
        self.total_ij = np.zeros((nx, ny))
        self.total_jk = np.zeros((ny, nz))
        self.squares_ij = np.zeros((nx, ny))
        self.squares_jk = np.zeros((ny, nz))
        self.min_ij = np.full((nx, ny), np.inf)
        self.min_jk = np.full((ny, nz), np.inf)
        self.max_ij = np.full((nx, ny), -np.inf)
        self.max_jk = np.full((ny, nz), -np.inf)

    def add_block(self, start: int, stop: int, block: np.ndarray, block_mask: np.ndarray) -> None:
        rows = slice(start, stop)
        counts = block_mask.view(np.uint8)
        self.count_ij[rows] = counts.sum(axis=2, dtype=np.int64)
        self.count_jk += counts.sum(axis=0, dtype=np.int64)
        self.occupancy_ik[rows] = block_mask.any(axis=1)

        self.total_ij[rows] = block.sum(axis=2, dtype=np.float64)
        self.total_jk += block.sum(axis=0, dtype=np.float64)
        square = block * block
        self.squares_ij[rows] = square.sum(axis=2, dtype=np.float64)
        self.squares_jk += square.sum(axis=0, dtype=np.float64)

        # Extremes inside the mask only: voxels outside become +-inf first.
        inside = np.where(block_mask, block, np.float32(np.inf))
        self.min_ij[rows] = inside.min(axis=2)
        np.minimum(self.min_jk, inside.min(axis=0), out=self.min_jk)
        np.copyto(inside, block)
        inside[~block_mask] = -np.inf
        self.max_ij[rows] = inside.max(axis=2)
        np.maximum(self.max_jk, inside.max(axis=0), out=self.max_jk)

    def axis_sums(self, axis: int) -> tuple[np.ndarray, ...]:
        """Return (area, total, squares, min, max) per slice along ``axis``."""
        if axis == 2:
            return (self.count_jk.sum(axis=0), self.total_jk.sum(axis=0), self.squares_jk.sum(axis=0),
                    self.min_jk.min(axis=0), self.max_jk.max(axis=0))
        other = 1 - axis  # reduce the ij projections over the other in-plane axis
        return (self.count_ij.sum(axis=other), self.total_ij.sum(axis=other), self.squares_ij.sum(axis=other),
                self.min_ij.min(axis=other), self.max_ij.max(axis=other))

    def bboxes(self) -> list[np.ndarray]:
        occupancy_ij = self.count_ij > 0
        occupancy_jk = self.count_jk > 0
        return [
            np.concatenate([_first_last(occupancy_ij), _first_last(self.occupancy_ik)], axis=1),
            np.concatenate([_first_last(occupancy_ij.T), _first_last(occupancy_jk)], axis=1),
            np.concatenate([_first_last(self.occupancy_ik.T), _first_last(occupancy_jk.T)], axis=1),
        ]


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
    -1 when empty) and ``n_components`` (8-connected).
    """
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    mask = np.ascontiguousarray(mask, dtype=bool)
    projections = _Projections(volume.shape)
    components = [np.zeros(n, dtype=np.int32) for n in volume.shape]
    for start, stop in chunks(volume.shape[0], BLOCK_SLICES):
        projections.add_block(start, stop, volume[start:stop], mask[start:stop])
        components[0][start:stop] = _count_components(mask[start:stop])
    laplacian = laplacian_moments(volume)
    _count_components_along(mask, 1, components[1])
    _count_components_along(mask, 2, components[2])

    bboxes = projections.bboxes()
    results = []
    for axis in range(3):
        area, total, squares, minimum, maximum = projections.axis_sums(axis)
        count = np.maximum(area, 1)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
        empty = area == 0
        results.append(
            {
                "mask_pixels": area,
                "mean": np.where(empty, np.nan, mean),
                "std": np.where(empty, np.nan, std),
                "min": np.where(empty, np.nan, minimum),
                "max": np.where(empty, np.nan, maximum),
                "sharpness": laplacian[axis].variance(),
                "bbox": bboxes[axis].astype(np.int32),
                "n_components": components[axis],
            }
        )
    return results


def laplacian_moments(volume: np.ndarray) -> list[_Moments]:
    """Moments of the 5-point Laplacian over each slice's interior pixels, for the three axes.

    A slice along axis ``a`` has the Laplacian ``d_b + d_c``, the sum of the
    central second differences along its own two axes. Each is taken at the
    slice's interior pixels (not on its border rows and columns).

    Parameters
    ----------
    volume : ndarray of float32, shape (X, Y, Z), C-contiguous

    Returns
    -------
    list of 3 ``_Moments``, one per axis, with one entry per slice.
    """
    nx, ny, nz = volume.shape
    moments = [_Moments(n) for n in volume.shape]
    has_rows, has_cols = ny >= 3, nz >= 3
    for i in range(nx):
        plane = volume[i]
        d_rows = cv2.Sobel(plane, cv2.CV_32F, 0, 2, ksize=1) if has_rows else None  # along axis 1
        d_cols = cv2.Sobel(plane, cv2.CV_32F, 2, 0, ksize=1) if has_cols else None  # along axis 2
        if has_rows and has_cols:
            _add_plane(moments[0], i, cv2.add(d_rows, d_cols)[1:-1, 1:-1])
        if not 0 < i < nx - 1:
            continue
        d_depth = cv2.scaleAdd(plane, -2.0, cv2.add(volume[i - 1], volume[i + 1]))  # along axis 0
        if has_cols:
            # Axis-1 slices are (i, k) planes: one row of this plane per slice.
            _add_rows(moments[1], cv2.add(d_depth, d_cols)[:, 1:-1], axis=1)
        if has_rows:
            # Axis-2 slices are (i, j) planes: one column of this plane per slice.
            _add_rows(moments[2], cv2.add(d_depth, d_rows)[1:-1, :], axis=0)
    return moments


def _add_plane(moments: _Moments, index: int, values: np.ndarray) -> None:
    mean, std = cv2.meanStdDev(values)
    n = values.size
    moments.count[index] += n
    moments.total[index] += float(mean[0, 0]) * n
    moments.squares[index] += (float(std[0, 0]) ** 2 + float(mean[0, 0]) ** 2) * n


def _add_rows(moments: _Moments, values: np.ndarray, axis: int) -> None:
    """Add the sums of ``values`` along ``axis`` to the slices indexed by the other axis."""
    dim = 1 if axis == 1 else 0
    moments.count += values.shape[axis]
    moments.total += cv2.reduce(values, dim, cv2.REDUCE_SUM, dtype=cv2.CV_64F).ravel()
    moments.squares += cv2.reduce(cv2.multiply(values, values), dim, cv2.REDUCE_SUM, dtype=cv2.CV_64F).ravel()


def _count_components_along(mask: np.ndarray, axis: int, out: np.ndarray) -> None:
    """Count 2D components of the slices along axis 1 or 2 of a C-ordered mask."""
    if axis == 1:
        # (i, k) planes have contiguous rows, which OpenCV reads in place.
        for j in range(mask.shape[1]):
            out[j] = _count_components(mask[:, j, :][None])[0]
        return
    # (i, j) planes are gathered TRANSPOSE_SLICES at a time, in tiles of
    # TRANSPOSE_ROWS x-rows, so that each cache line read is used fully.
    nx, ny, nz = mask.shape
    for start, stop in chunks(nz, TRANSPOSE_SLICES):
        planes = np.empty((stop - start, nx, ny), dtype=bool)
        for row, row_stop in chunks(nx, TRANSPOSE_ROWS):
            planes[:, row:row_stop, :] = mask[row:row_stop, :, start:stop].transpose(2, 0, 1)
        out[start:stop] = _count_components(planes)
