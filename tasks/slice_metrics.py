"""Per-slice statistics for all three axes in one pass over a volume.

Slices along axes 1 and 2 are not contiguous in memory, so they are not cut
out one by one. Instead, each axis-0 plane is reduced along its rows and
along its columns into small 2D projections (one value per row of voxels),
and the per-slice values are read off those projections at the end.

The volume is zero outside the mask, so only the mask's bounding box is
read: every sum, extreme and component count outside it is known to be
empty, and the Laplacian vanishes more than one voxel away from it. The
work therefore scales with the size of the specimen, not of the scan.
OpenCV does the per-plane work; its reductions accumulate in float64 and
its temporaries stay one plane in size, in cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tasks.chunks import chunks

# Rows per tile of the Laplacian: 64 rows of 512 float32 voxels (128 KiB)
# keep its temporaries in the CPU cache, which halves its time at 512^3.
LAPLACIAN_ROWS = 64
# Axis-2 slices gathered per transposition of the mask: COMPONENT_SLICES
# planes of (X, Y) bytes, small enough to stay in cache.
COMPONENT_SLICES = 32


@dataclass(frozen=True)
class MaskExtent:
    """The bounding box of a 3D mask and its occupancy along axis 0.

    Attributes
    ----------
    box : tuple of 3 (first, last) pairs, or None
        Inclusive index range of the mask along each axis; None when empty.
    occupancy_jk : ndarray of bool, shape (Y, Z)
        Whether any voxel along axis 0 is in the mask.
    """

    box: tuple[tuple[int, int], ...] | None
    occupancy_jk: np.ndarray


def mask_extent(mask: np.ndarray) -> MaskExtent:
    """Return the bounding box of a C-ordered bool mask of shape (X, Y, Z)."""
    planes = mask.view(np.uint8)
    filled = np.flatnonzero([cv2.countNonZero(plane) for plane in planes])
    occupancy = np.zeros(mask.shape[1:], dtype=np.uint8)
    if filled.size == 0:
        return MaskExtent(None, occupancy.astype(bool))
    for i in range(filled[0], filled[-1] + 1):
        cv2.bitwise_or(occupancy, planes[i], dst=occupancy)
    occupancy = occupancy.astype(bool)
    rows, cols = np.flatnonzero(occupancy.any(axis=1)), np.flatnonzero(occupancy.any(axis=0))
    box = ((int(filled[0]), int(filled[-1])), (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])))
    return MaskExtent(box, occupancy)


def _first_last(occupancy: np.ndarray) -> np.ndarray:
    """Return (first, last) True index along the last axis of a 2D bool array; -1 where none."""
    any_true = occupancy.any(axis=1)
    first = np.argmax(occupancy, axis=1)
    last = occupancy.shape[1] - 1 - np.argmax(occupancy[:, ::-1], axis=1)
    return np.stack([np.where(any_true, first, -1), np.where(any_true, last, -1)], axis=1)


def _row_col_sums(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the float64 sums of a 2D float32 array along its rows and along its columns."""
    return (cv2.reduce(values, 1, cv2.REDUCE_SUM, dtype=cv2.CV_64F).ravel(),
            cv2.reduce(values, 0, cv2.REDUCE_SUM, dtype=cv2.CV_64F).ravel())


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
    """Reductions of the masked volume inside its bounding box, along axis 2 (``*_ij``) and axis 1 (``*_ik``).

    Any per-slice sum, minimum or maximum of the three axes is a reduction of
    one of these two arrays. Indices are relative to the box.
    """

    def __init__(self, shape: tuple[int, int, int]):
        nx, ny, nz = shape
        self.count_ij = np.zeros((nx, ny), dtype=np.int64)
        self.count_ik = np.zeros((nx, nz), dtype=np.int64)
        self.total_ij, self.total_ik = np.zeros((nx, ny)), np.zeros((nx, nz))
        self.squares_ij, self.squares_ik = np.zeros((nx, ny)), np.zeros((nx, nz))
        self.min_ij, self.min_ik = np.zeros((nx, ny)), np.zeros((nx, nz))
        self.max_ij, self.max_ik = np.zeros((nx, ny)), np.zeros((nx, nz))
        self._masked = np.empty((ny, nz), dtype=np.float32)

    def add_plane(self, index: int, values: np.ndarray, inside: np.ndarray) -> None:
        """Reduce one (Y, Z) plane of float32 values and its uint8 mask."""
        self.count_ij[index] = cv2.reduce(inside, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
        self.count_ik[index] = cv2.reduce(inside, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
        # Voxels outside the mask are zero, so plain sums are sums inside it.
        self.total_ij[index], self.total_ik[index] = _row_col_sums(values)
        # NOTE: the squares are rounded to float32 before the float64 sums, so the std of a
        # near-constant slice can be off by up to about 2.5e-4 of its mean (estimate).
        self.squares_ij[index], self.squares_ik[index] = _row_col_sums(cv2.multiply(values, values))

        # Voxels inside the mask are >= 0 and those outside are 0, so the plain
        # maximum is the maximum inside wherever the mask is not empty.
        # NumPy reduces along rows and OpenCV along columns, each the faster one.
        self.max_ij[index] = values.max(axis=1)
        self.max_ik[index] = cv2.reduce(values, 0, cv2.REDUCE_MAX).ravel()
        # The minimum inside the mask: voxels outside become +inf first.
        masked = self._masked
        masked.fill(np.inf)
        cv2.copyTo(values, inside, masked)
        self.min_ij[index] = masked.min(axis=1)
        self.min_ik[index] = cv2.reduce(masked, 0, cv2.REDUCE_MIN).ravel()

    def axis_sums(self, axis: int) -> tuple[np.ndarray, ...]:
        """Return (area, total, squares, min, max) per slice of the box along ``axis``."""
        if axis == 2:
            return (self.count_ik.sum(axis=0), self.total_ik.sum(axis=0), self.squares_ik.sum(axis=0),
                    self.min_ik.min(axis=0), self.max_ik.max(axis=0))
        other = 1 - axis  # reduce the ij projections over the other in-plane axis
        return (self.count_ij.sum(axis=other), self.total_ij.sum(axis=other), self.squares_ij.sum(axis=other),
                self.min_ij.min(axis=other), self.max_ij.max(axis=other))

    def bboxes(self, occupancy_jk: np.ndarray) -> list[np.ndarray]:
        """Return (row0, row1, col0, col1) per slice of the box along each axis, relative to the box."""
        occupancy_ij = self.count_ij > 0
        occupancy_ik = self.count_ik > 0
        return [
            np.concatenate([_first_last(occupancy_ij), _first_last(occupancy_ik)], axis=1),
            np.concatenate([_first_last(occupancy_ij.T), _first_last(occupancy_jk)], axis=1),
            np.concatenate([_first_last(occupancy_ik.T), _first_last(occupancy_jk.T)], axis=1),
        ]


def accumulate_axis_metrics(volume: np.ndarray, mask: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Measure every slice along axes 0, 1 and 2.

    Parameters
    ----------
    volume : ndarray of float32, shape (X, Y, Z)
        Normalised intensities (>= 0), zero outside ``mask``.
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
    extent = mask_extent(mask)
    stats = _box_statistics(volume, mask, extent)
    laplacian = laplacian_moments(volume, extent.box)
    planes = mask.view(np.uint8)
    components = [
        _count_components_axis0(planes, stats[0]["mask_pixels"], stats[0]["bbox"]),
        _count_components_axis1(planes, stats[1]["mask_pixels"], stats[1]["bbox"]),
        _count_components_axis2(planes, stats[2]["mask_pixels"], stats[2]["bbox"], extent.box),
    ]
    for axis in range(3):
        stats[axis]["sharpness"] = laplacian[axis].variance()
        stats[axis]["n_components"] = components[axis]
    return stats


def _box_statistics(volume: np.ndarray, mask: np.ndarray, extent: MaskExtent) -> list[dict[str, np.ndarray]]:
    """Return the per-slice area, mean, std, min, max and bbox of the three axes."""
    results = [_empty_statistics(n) for n in volume.shape]
    if extent.box is None:
        return results
    window = tuple(slice(first, last + 1) for first, last in extent.box)
    values, inside = volume[window], mask[window].view(np.uint8)
    projections = _Projections(values.shape)
    for index in range(values.shape[0]):
        projections.add_plane(index, values[index], inside[index])

    bboxes = projections.bboxes(extent.occupancy_jk[window[1], window[2]])
    for axis in range(3):
        area, total, squares, minimum, maximum = projections.axis_sums(axis)
        count = np.maximum(area, 1)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
        filled = area > 0
        row_offset, col_offset = [extent.box[a][0] for a in range(3) if a != axis]
        bbox = bboxes[axis] + np.array([row_offset, row_offset, col_offset, col_offset])
        columns = {"mask_pixels": area, "mean": mean, "std": std, "min": minimum, "max": maximum,
                   "bbox": np.where(filled[:, None], bbox, -1)}
        for name, column in columns.items():
            target = results[axis][name][window[axis]]
            target[filled] = column[filled]
    return results


def _empty_statistics(n: int) -> dict[str, np.ndarray]:
    """Statistics of ``n`` slices with empty masks."""
    return {
        "mask_pixels": np.zeros(n, dtype=np.int64),
        "mean": np.full(n, np.nan),
        "std": np.full(n, np.nan),
        "min": np.full(n, np.nan),
        "max": np.full(n, np.nan),
        "bbox": np.full((n, 4), -1, dtype=np.int32),
    }


def laplacian_moments(volume: np.ndarray, box=None) -> list[_Moments]:
    """Moments of the 5-point Laplacian over each slice's interior pixels, for the three axes.

    A slice along axis ``a`` has the Laplacian ``d_b + d_c``, the sum of the
    central second differences along its own two axes. Each is taken at the
    slice's interior pixels (not on its border rows and columns).

    Parameters
    ----------
    volume : ndarray of float32, shape (X, Y, Z), C-contiguous
    box : tuple of 3 (first, last) pairs, optional
        Inclusive index ranges outside which the volume is zero. The
        Laplacian is zero more than one voxel outside the box, so only the
        box grown by two voxels (the stencil's reach) is read. Default: the
        whole volume.

    Returns
    -------
    list of 3 ``_Moments``, one per axis, with one entry per slice.
    """
    nx, ny, nz = volume.shape
    moments = [_Moments(n) for n in volume.shape]
    # Every slice counts all its interior pixels, including those where the
    # Laplacian is known to be zero.
    for axis, (size_b, size_c) in enumerate([(ny, nz), (nx, nz), (nx, ny)]):
        moments[axis].count[:] = (size_b - 2) * (size_c - 2) if size_b >= 3 and size_c >= 3 else 0
    if box is None:
        box = ((0, nx - 1), (0, ny - 1), (0, nz - 1))
    (i0, i1), (j0, j1), (k0, k1) = box
    rows = slice(max(j0 - 2, 0), min(j1 + 2, ny - 1) + 1)
    cols = slice(max(k0 - 2, 0), min(k1 + 2, nz - 1) + 1)
    for i in range(max(i0 - 1, 0), min(i1 + 1, nx - 1) + 1):
        for start, stop in chunks(rows.stop - rows.start, LAPLACIAN_ROWS):
            _add_laplacian_tile(volume, moments, i, rows, cols, start, stop, in_box=i0 <= i <= i1)
    return moments


def _add_laplacian_tile(volume: np.ndarray, moments: list[_Moments], i: int, rows: slice, cols: slice,
                        start: int, stop: int, *, in_box: bool) -> None:
    """Add the Laplacian moments of rows ``start:stop`` of the window ``rows, cols`` of plane ``i``.

    Rows are taken in tiles so that the temporaries stay in the CPU cache.
    The tile is read with one extra row on each side, for the second
    difference along axis 1.
    """
    nx, ny, nz = volume.shape
    height = rows.stop - rows.start
    low, high = max(start - 1, 0), min(stop + 1, height)
    tile_rows = slice(rows.start + low, rows.start + high)
    own = slice(start - low, stop - low)
    # Own rows that are interior rows of the window (the window's first and
    # last rows are either the volume's border or zero).
    inner = slice(max(start, 1) - low, min(stop, height - 1) - low)
    # The window has at least 3 rows (columns) exactly when the volume has.
    has_rows, has_cols = ny >= 3, nz >= 3

    plane = volume[i, tile_rows, cols]
    d_rows = cv2.Sobel(plane, cv2.CV_32F, 0, 2, ksize=1) if has_rows else None  # along axis 1
    d_cols = cv2.Sobel(plane, cv2.CV_32F, 2, 0, ksize=1) if has_cols else None  # along axis 2
    if has_rows and has_cols and in_box:
        _add_plane(moments[0], i, cv2.add(d_rows, d_cols)[inner, 1:-1])
    if not 0 < i < nx - 1:
        return
    neighbours = cv2.add(volume[i - 1, tile_rows, cols], volume[i + 1, tile_rows, cols])
    d_depth = cv2.scaleAdd(plane, -2.0, neighbours)  # along axis 0
    if has_cols:
        # Axis-1 slices are (i, k) planes: one row of this plane per slice.
        _add_rows(moments[1], cv2.add(d_depth, d_cols)[own, 1:-1], axis=1, first=rows.start + start)
    if has_rows:
        # Axis-2 slices are (i, j) planes: one column of this plane per slice.
        _add_rows(moments[2], cv2.add(d_depth, d_rows)[inner, :], axis=0, first=cols.start)


def _add_plane(moments: _Moments, index: int, values: np.ndarray) -> None:
    """Add the sum and the sum of squares of ``values`` to slice ``index``."""
    if values.size == 0:
        return
    mean, std = cv2.meanStdDev(values)
    n = values.size
    moments.total[index] += float(mean[0, 0]) * n
    moments.squares[index] += (float(std[0, 0]) ** 2 + float(mean[0, 0]) ** 2) * n


def _add_rows(moments: _Moments, values: np.ndarray, axis: int, first: int) -> None:
    """Add the sums of ``values`` along ``axis`` to the slices ``first``, ``first + 1``, ... of the other axis."""
    if values.size == 0:
        return
    dim = 1 if axis == 1 else 0
    covered = slice(first, first + values.shape[1 - axis])
    moments.total[covered] += cv2.reduce(values, dim, cv2.REDUCE_SUM, dtype=cv2.CV_64F).ravel()
    moments.squares[covered] += cv2.reduce(cv2.multiply(values, values), dim, cv2.REDUCE_SUM,
                                           dtype=cv2.CV_64F).ravel()


def _components(image: np.ndarray) -> int:
    """Return the number of 8-connected components of a 2D uint8 mask."""
    n_labels, _ = cv2.connectedComponents(image, connectivity=8)
    return n_labels - 1


def _count_components_axis0(planes: np.ndarray, areas: np.ndarray, bboxes: np.ndarray) -> np.ndarray:
    """Count components of the (j, k) planes, each cut to its bounding box.

    Cutting to the bounding box keeps every mask pixel, so the count is the
    same, and the labelling reads far fewer pixels.
    """
    counts = np.zeros(planes.shape[0], dtype=np.int32)
    for i in np.flatnonzero(areas):
        row0, row1, col0, col1 = bboxes[i]
        counts[i] = _components(planes[i, row0:row1 + 1, col0:col1 + 1])
    return counts


def _count_components_axis1(planes: np.ndarray, areas: np.ndarray, bboxes: np.ndarray) -> np.ndarray:
    """Count components of the (i, k) planes, which OpenCV reads in place (their rows are contiguous)."""
    counts = np.zeros(planes.shape[1], dtype=np.int32)
    for j in np.flatnonzero(areas):
        row0, row1, col0, col1 = bboxes[j]
        counts[j] = _components(planes[row0:row1 + 1, j, col0:col1 + 1])
    return counts


def _count_components_axis2(planes: np.ndarray, areas: np.ndarray, bboxes: np.ndarray, box) -> np.ndarray:
    """Count components of the (i, j) planes, gathered a few at a time by transposing (j, k) tiles."""
    counts = np.zeros(planes.shape[2], dtype=np.int32)
    if box is None:
        return counts
    (i0, i1), (j0, j1), (k0, k1) = box
    gathered = np.empty((COMPONENT_SLICES, i1 - i0 + 1, j1 - j0 + 1), dtype=np.uint8)
    for start, stop in chunks(k1 - k0 + 1, COMPONENT_SLICES):
        for i in range(i0, i1 + 1):
            gathered[:stop - start, i - i0] = cv2.transpose(planes[i, j0:j1 + 1, k0 + start:k0 + stop])
        for offset in range(stop - start):
            k = k0 + start + offset
            if areas[k]:
                row0, row1, col0, col1 = bboxes[k]
                counts[k] = _components(gathered[offset, row0 - i0:row1 - i0 + 1, col0 - j0:col1 - j0 + 1])
    return counts
