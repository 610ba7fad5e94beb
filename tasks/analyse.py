"""Normalise, threshold and mask a scan, then measure every axis-aligned slice.

All functions here take and return numpy arrays or Arrow tables and know
nothing about Prefect or the catalogue files.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import cv2
import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.filters import threshold_otsu

from catalog.schema import SLICE_SCHEMA
from tasks.chunks import chunks as _chunks
from tasks.oblique import measure_oblique_slices
from tasks.slice_metrics import accumulate_axis_metrics, mask_extent
from tasks.volume import ValueCounts

# Bump when a change to this module changes any analysis output, so cached
# analyses from older code are not reused.
ANALYSIS_CODE_VERSION = "analysis-2"

HISTOGRAM_BINS = 1 << 16
OTSU_BINS = 256
OTSU_MIN_VOXELS = 10
FALLBACK_FRACTION = 0.4
OTSU_MAX_FRACTION = 0.8
# Slices per slab when labelling components; labels are kept a slab at a time.
COMPONENT_SLAB = 64
# Slices per block when normalising; small blocks stay in cache between the steps.
NORMALISE_SLICES = 2


@dataclass(frozen=True)
class Threshold:
    """A foreground threshold on the normalised volume and how it was chosen."""

    value: float
    method: str


@dataclass
class Analysis:
    """The result of analysing one volume.

    ``mask`` is None when the status is not ``"analysed"``; then ``slices`` is
    empty and ``reason`` gives the cause.
    """

    status: str
    reason: str
    clip_low: float
    clip_high: float
    threshold: float
    threshold_method: str
    nonfinite_voxels: int
    mask_voxels: int
    mask: np.ndarray | None
    slices: pa.Table


def finite_percentiles(volume: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float, int, int]:
    """Return exact percentiles of the finite voxels without copying the volume.

    The values match ``np.percentile(volume[np.isfinite(volume)], q)`` (linear
    interpolation). A 65,536-bin histogram finds the bin of each requested
    order statistic, then a second pass sorts only the voxels of those bins.

    Returns
    -------
    low, high : float
        The two percentiles, NaN when no voxel is finite.
    n_finite, n_nonfinite : int
    """
    vmin, vmax, n_finite = np.inf, -np.inf, 0
    for start, stop in _chunks(volume.shape[0]):
        block = volume[start:stop]
        finite = block[np.isfinite(block)]
        if finite.size:
            vmin = min(vmin, float(finite.min()))
            vmax = max(vmax, float(finite.max()))
            n_finite += finite.size
    n_nonfinite = volume.size - n_finite
    if n_finite == 0:
        return float("nan"), float("nan"), 0, n_nonfinite
    if vmin == vmax:
        return vmin, vmax, n_finite, n_nonfinite

    scale = HISTOGRAM_BINS / (vmax - vmin)

    def bin_index(values: np.ndarray) -> np.ndarray:
        return np.minimum(((values - vmin) * scale).astype(np.int64), HISTOGRAM_BINS - 1)

    counts = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    for start, stop in _chunks(volume.shape[0]):
        block = volume[start:stop]
        counts += np.bincount(bin_index(block[np.isfinite(block)]), minlength=HISTOGRAM_BINS)
    cumulative = np.cumsum(counts)

    # Order statistics needed by linear interpolation between neighbours.
    positions = [q / 100.0 * (n_finite - 1) for q in percentiles]
    ranks = sorted({int(np.floor(p)) for p in positions} | {int(np.ceil(p)) for p in positions})
    bins = {rank: int(np.searchsorted(cumulative, rank, side="right")) for rank in ranks}
    wanted = np.array(sorted(set(bins.values())))
    members: dict[int, list[np.ndarray]] = {b: [] for b in wanted}
    for start, stop in _chunks(volume.shape[0]):
        block = volume[start:stop]
        finite = block[np.isfinite(block)]
        index = bin_index(finite)
        for b in wanted:
            members[b].append(finite[index == b])
    sorted_members = {b: np.sort(np.concatenate(parts)) for b, parts in members.items()}

    def order_statistic(rank: int) -> float:
        b = bins[rank]
        before = int(cumulative[b - 1]) if b > 0 else 0
        return float(sorted_members[b][rank - before])

    results = []
    for position in positions:
        lower, upper = int(np.floor(position)), int(np.ceil(position))
        low_value, high_value = order_statistic(lower), order_statistic(upper)
        results.append(low_value + (high_value - low_value) * (position - lower))
    return results[0], results[1], n_finite, n_nonfinite


def counted_percentiles(histogram: ValueCounts, percentiles: tuple[float, float]) -> tuple[float, float, int, int]:
    """Return exact percentiles from a table of distinct values and their counts.

    Gives the same numbers as :func:`finite_percentiles` on the volume the
    table describes, without reading the volume again.
    """
    counts = histogram.counts
    n_finite = int(counts.sum())
    if n_finite == 0:
        return float("nan"), float("nan"), 0, 0
    cumulative = np.cumsum(counts)

    def order_statistic(rank: int) -> float:
        return float(histogram.values[int(np.searchsorted(cumulative, rank, side="right"))])

    results = []
    for q in percentiles:
        position = q / 100.0 * (n_finite - 1)
        lower, upper = int(np.floor(position)), int(np.ceil(position))
        low_value, high_value = order_statistic(lower), order_statistic(upper)
        results.append(low_value + (high_value - low_value) * (position - lower))
    return results[0], results[1], n_finite, 0


def normalise_inplace(volume: np.ndarray, low: float, high: float, *, all_finite: bool = False) -> None:
    """Clip to [low, high] and scale to [0, 1] in place; non-finite voxels become 0.

    ``all_finite=True`` promises that no voxel is NaN or infinite (as for
    scans stored as integers), which skips the search for them.
    """
    scale = np.float32(1.0 / (high - low))
    for start, stop in _chunks(volume.shape[0], NORMALISE_SLICES):
        block = volume[start:stop]
        if not all_finite:
            finite = np.isfinite(block)
            if not finite.all():
                block[~finite] = low
        np.clip(block, low, high, out=block)
        block -= np.float32(low)
        block *= scale


def choose_threshold(volume: np.ndarray, histogram: ValueCounts | None = None) -> Threshold | None:
    """Choose the foreground threshold of a volume normalised to [0, 1].

    Otsu's method runs on the voxels above the volume minimum. It falls back
    to 0.4 x max when fewer than 10 voxels are above the minimum, when Otsu
    fails, or when Otsu lands above 0.8 x max. A threshold that high means
    Otsu split the bright tail of the fossil instead of fossil from background.

    Parameters
    ----------
    volume : ndarray of float32, shape (X, Y, Z)
    histogram : ValueCounts, optional
        The normalised volume's distinct values and counts. When given, the
        volume is not read, and the result is the same.

    Returns
    -------
    Threshold or None
        None for a constant volume, which has no foreground.
    """
    if histogram is None:
        vmin = min(float(volume[start:stop].min()) for start, stop in _chunks(volume.shape[0]))
        vmax = max(float(volume[start:stop].max()) for start, stop in _chunks(volume.shape[0]))
    else:
        vmin, vmax = float(histogram.values.min()), float(histogram.values.max())
    if vmax <= vmin:
        return None
    fallback = Threshold(FALLBACK_FRACTION * vmax, "fallback 0.4 x max")

    # Histogram of the voxels above the minimum, as Otsu's input.
    edges = np.linspace(vmin, vmax, OTSU_BINS + 1)
    if histogram is None:
        counts = np.zeros(OTSU_BINS, dtype=np.int64)
        for start, stop in _chunks(volume.shape[0]):
            block = volume[start:stop]
            counts += np.histogram(block[block > vmin], bins=edges)[0]
    else:
        above = histogram.values > vmin
        weighted = np.histogram(histogram.values[above], bins=edges, weights=histogram.counts[above])[0]
        counts = np.rint(weighted).astype(np.int64)
    if counts.sum() < OTSU_MIN_VOXELS:
        return fallback

    centers = (edges[:-1] + edges[1:]) / 2
    try:
        otsu = float(threshold_otsu(hist=(counts, centers)))
    except ValueError:
        return fallback
    if not np.isfinite(otsu) or otsu > OTSU_MAX_FRACTION * vmax:
        return fallback
    return Threshold(otsu, "otsu")


def largest_component(volume: np.ndarray, threshold: float) -> np.ndarray:
    """Return the largest 26-connected component of ``volume > threshold`` as a bool mask.

    Components are labelled one slab of slices at a time and joined across
    slab faces, so that the labels never need a full-size uint32 array. Each
    slab is labelled only inside the bounding box of its foreground, which is
    often much smaller than the slab. Ties go to the component that starts
    first in memory order, as with ``cc3d.largest_k`` on the whole volume.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
    threshold : float

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
    """
    mask = np.zeros(volume.shape, dtype=bool)
    foreground = np.empty((min(COMPONENT_SLAB, volume.shape[0]),) + volume.shape[1:], dtype=bool)
    slabs = [_label_slab(np.greater(volume[start:stop], threshold, out=foreground[:stop - start]), start, mask)
             for start, stop in _chunks(volume.shape[0], COMPONENT_SLAB)]
    del foreground
    offsets = np.cumsum([0] + [slab.sizes.size for slab in slabs])
    sizes = np.concatenate([slab.sizes for slab in slabs])
    if not sizes.any():
        return mask

    # Components of the whole volume: slab labels joined where they touch across a face.
    plane_shape = volume.shape[1:]
    pairs = [_touching_labels(slabs[s - 1].face(slabs[s].start - 1, plane_shape),
                              slabs[s].face(slabs[s].start, plane_shape), offsets[s - 1], offsets[s])
             for s in range(1, len(slabs))]
    pairs = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), dtype=np.int64)
    graph = coo_matrix((np.ones(pairs.shape[1], dtype=np.int8), (pairs[0], pairs[1])), shape=(sizes.size,) * 2)
    _, component = connected_components(graph, directed=False)
    totals = np.bincount(component, weights=sizes)
    first_node = np.full(totals.size, sizes.size)
    np.minimum.at(first_node, component, np.arange(sizes.size))
    # Largest total, then the earliest first label (node order is memory order).
    best = np.lexsort((first_node, -totals))[0]
    keep = (component == best) & (sizes > 0)

    for index, slab in enumerate(slabs):
        _write_kept(slab.labels, keep[offsets[index]:offsets[index + 1]], mask[slab.window])
        slabs[index] = None  # free the slab's labels as soon as they are used
    return mask


@dataclass
class _Slab:
    """Component labels of one slab, inside the bounding box of its foreground.

    ``window`` places ``labels`` in the volume; ``sizes`` has the voxels per
    label, with label 0 (background) counted as 0.
    """

    start: int
    window: tuple[slice, slice, slice]
    labels: np.ndarray
    sizes: np.ndarray

    def face(self, index: int, plane_shape: tuple[int, int]) -> np.ndarray:
        """Return the labels of volume plane ``index`` at full plane size; zero outside the window."""
        plane = np.zeros(plane_shape, dtype=self.labels.dtype)
        local = index - self.window[0].start
        if 0 <= local < self.labels.shape[0]:
            plane[self.window[1], self.window[2]] = self.labels[local]
        return plane


def _label_slab(foreground: np.ndarray, start: int, mask: np.ndarray) -> _Slab:
    """Label the foreground of the slab that begins at volume plane ``start``.

    The labels are kept in the smallest unsigned type that can store them,
    because every slab's labels stay in memory until the components are
    joined. Byte labels are kept in the zeroed ``mask`` itself, which has
    the same size and is overwritten with the kept components at the end,
    so that they need no memory of their own.
    """
    box = mask_extent(foreground).box
    if box is None:
        empty = (slice(start, start), slice(0, 0), slice(0, 0))
        return _Slab(start, empty, np.zeros((0, 0, 0), dtype=np.uint8), np.zeros(1, dtype=np.int64))
    local = tuple(slice(first, last + 1) for first, last in box)
    inside = foreground[local]
    labels, n = cc3d.connected_components(inside, connectivity=26, return_N=True, binary_image=True)
    labels = labels.astype(np.min_scalar_type(n), copy=False)
    sizes = _label_sizes(labels, inside, n)
    window = (slice(start + local[0].start, start + local[0].stop), local[1], local[2])
    if labels.dtype == np.uint8:
        stored = mask[window].view(np.uint8)
        stored[...] = labels
        labels = stored
    return _Slab(start, window, labels, sizes)


def _label_sizes(labels: np.ndarray, foreground: np.ndarray, n: int) -> np.ndarray:
    """Return the voxels per label 0..n, with label 0 (background) counted as 0."""
    # Counting only the foreground voxels skips the background, usually most of the slab.
    return np.bincount(labels[foreground], minlength=n + 1).astype(np.int64)


def _write_kept(labels: np.ndarray, kept: np.ndarray, out: np.ndarray) -> None:
    """Set ``out`` to whether each voxel's label is marked in the bool table ``kept``.

    ``labels`` may share its memory with ``out``, so every voxel of ``out``
    is written.
    """
    kept_labels = np.flatnonzero(kept)
    if kept_labels.size == 0:
        out[...] = False
    elif kept_labels.size == 1:
        np.equal(labels, kept_labels[0], out=out)
    elif kept_labels.size > 1 and labels.dtype == np.uint8:
        # OpenCV's table lookup for bytes is about three times faster than indexing.
        table = np.zeros(256, dtype=np.uint8)
        table[:kept.size] = kept
        out[...] = cv2.LUT(labels.reshape(-1, labels.shape[-1]), table).reshape(labels.shape).view(bool)
    else:
        # Indexing plane by plane keeps the intp copy of the labels small.
        for plane_labels, plane_out in zip(labels, out):
            plane_out[...] = kept[plane_labels]


def _touching_labels(last: np.ndarray, first: np.ndarray, last_offset: int, first_offset: int) -> np.ndarray:
    """Return (2, n) node ids of labels that touch across a slab face, with 26-connectivity."""
    rows, cols = last.shape
    found = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            a = last[max(dr, 0):rows + min(dr, 0), max(dc, 0):cols + min(dc, 0)]
            b = first[max(-dr, 0):rows + min(-dr, 0), max(-dc, 0):cols + min(-dc, 0)]
            both = (a > 0) & (b > 0)
            found.append(np.stack([a[both].astype(np.int64) + last_offset, b[both].astype(np.int64) + first_offset]))
    # Repeated pairs are fine: the sparse graph adds them up.
    return np.concatenate(found, axis=1)


def analyse_volume(volume: np.ndarray, *, clip_percentiles=(1.0, 99.0), min_area_fraction=0.02,
                   scan_hash: str = "", params_hash: str = "", oblique_views: bool = False,
                   histogram: ValueCounts | None = None) -> Analysis:
    """Analyse a float32 volume in place and measure its axis-aligned slices.

    Parameters
    ----------
    volume : ndarray of float32, shape (X, Y, Z)
        Canonical, isotropic intensities. It is overwritten with the
        normalised volume, zero outside the mask, so that no second working
        copy is needed.
    clip_percentiles : (float, float)
        Percentiles of the finite voxels mapped to 0 and 1.
    min_area_fraction : float
        A slice passes when its mask covers at least this fraction of it.
    oblique_views : bool
        Also measure the oblique views of :mod:`tasks.oblique`.
    histogram : ValueCounts, optional
        The volume's distinct values and counts (see :func:`tasks.volume.load_volume`).
        Percentiles and Otsu then come from this table instead of passes
        over the volume; the results are the same.

    Returns
    -------
    Analysis
        Status ``"analysed"``, or ``"degenerate"`` with the reason.
    """
    if histogram is not None:
        low, high, n_finite, n_nonfinite = counted_percentiles(histogram, clip_percentiles)
    else:
        low, high, n_finite, n_nonfinite = finite_percentiles(volume, clip_percentiles)
    empty = SLICE_SCHEMA.empty_table()

    def degenerate(reason: str, threshold=float("nan"), method="none") -> Analysis:
        return Analysis("degenerate", reason, low, high, threshold, method, n_nonfinite, 0, None, empty)

    if n_finite == 0:
        return degenerate("no finite voxel: every voxel is NaN or infinite")
    if not high > low:
        return degenerate(
            f"no contrast: percentiles {clip_percentiles[0]:g} and {clip_percentiles[1]:g} of the finite "
            f"voxels are both {low:g}, so every voxel equals the minimum after clipping (constant volume, or "
            f"too few voxels above the background to reach percentile {clip_percentiles[1]:g})"
        )

    normalise_inplace(volume, low, high, all_finite=n_nonfinite == 0)
    if histogram is not None:
        normalised = ValueCounts(histogram.values.copy(), histogram.counts)
        normalise_inplace(normalised.values, low, high)
        histogram = normalised
    threshold = choose_threshold(volume, histogram)
    if threshold is None:
        return degenerate("constant volume after normalisation: no voxel is above the minimum")

    mask = largest_component(volume, threshold.value)
    mask_voxels = int(np.count_nonzero(mask))
    if mask_voxels == 0:
        return degenerate(f"no voxel above the threshold {threshold.value:.4f} ({threshold.method})",
                          threshold.value, threshold.method)

    # Everything outside the mask is background in every later step.
    np.multiply(volume, mask, out=volume)
    slices = measure_slices(volume, mask, min_area_fraction=min_area_fraction,
                            scan_hash=scan_hash, params_hash=params_hash)
    if oblique_views:
        oblique = measure_oblique_slices(volume, mask, min_area_fraction=min_area_fraction,
                                         scan_hash=scan_hash, params_hash=params_hash)
        slices = pa.concat_tables([slices, oblique])
    return Analysis("analysed", "", low, high, threshold.value, threshold.method, n_nonfinite,
                    mask_voxels, mask, slices)


def measure_slices(volume: np.ndarray, mask: np.ndarray, *, min_area_fraction: float,
                   scan_hash: str = "", params_hash: str = "") -> pa.Table:
    """Measure every slice along the three axes of a masked volume.

    ``volume`` must be zero outside ``mask``. Returns one row per slice in
    ``SLICE_SCHEMA``, ordered by view then index.
    """
    metrics = accumulate_axis_metrics(volume, mask)
    tables = []
    for axis in range(3):
        height, width = [volume.shape[a] for a in range(3) if a != axis]
        view = f"axis{axis}"
        tables.append(slice_table(metrics[axis], view=view, plane=view, angle_deg=0, height=height, width=width,
                                  min_area_fraction=min_area_fraction, scan_hash=scan_hash, params_hash=params_hash))
    return pa.concat_tables(tables)


def slice_table(columns: dict[str, np.ndarray], *, view: str, plane: str, angle_deg: int, height: int, width: int,
                min_area_fraction: float, scan_hash: str, params_hash: str) -> pa.Table:
    """Build the ``SLICE_SCHEMA`` rows of one view from its per-slice metric arrays."""
    n = len(columns["mask_pixels"])
    area_fraction = columns["mask_pixels"] / float(max(height * width, 1))
    passed = area_fraction >= min_area_fraction
    below = np.char.add(np.char.add("mask area ", np.char.mod("%.4f", area_fraction)), f" below {min_area_fraction:g}")
    reason = np.where(columns["mask_pixels"] == 0, "empty mask", below)
    empty = columns["mask_pixels"] == 0
    bbox = columns["bbox"]
    return pa.table(
        {
            "scan_hash": pa.array([scan_hash] * n, pa.string()),
            "params_hash": pa.array([params_hash] * n, pa.string()),
            "code_version": pa.array([ANALYSIS_CODE_VERSION] * n, pa.string()),
            "view": pa.array([view] * n, pa.string()),
            "plane": pa.array([plane] * n, pa.string()),
            "angle_deg": pa.array(np.full(n, angle_deg, np.int16)),
            "slice_index": pa.array(np.arange(n, dtype=np.int32)),
            "height": pa.array(np.full(n, height, np.int32)),
            "width": pa.array(np.full(n, width, np.int32)),
            "mask_pixels": pa.array(columns["mask_pixels"].astype(np.int64)),
            "area_fraction": pa.array(area_fraction.astype(np.float64)),
            "intensity_mean": pa.array(columns["mean"], mask=empty),
            "intensity_std": pa.array(columns["std"], mask=empty),
            "intensity_min": pa.array(columns["min"], mask=empty),
            "intensity_max": pa.array(columns["max"], mask=empty),
            "sharpness": pa.array(columns["sharpness"].astype(np.float64)),
            "bbox_row0": pa.array(bbox[:, 0].astype(np.int32), mask=empty),
            "bbox_row1": pa.array(bbox[:, 1].astype(np.int32), mask=empty),
            "bbox_col0": pa.array(bbox[:, 2].astype(np.int32), mask=empty),
            "bbox_col1": pa.array(bbox[:, 3].astype(np.int32), mask=empty),
            "n_components": pa.array(columns["n_components"].astype(np.int32)),
            "passed": pa.array(passed),
            "reason": pa.array(reason.astype(object), mask=passed, type=pa.string()),
        },
        schema=SLICE_SCHEMA,
    )
