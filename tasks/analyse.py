"""Normalise, threshold and mask a scan, then measure every axis-aligned slice.

All functions here take and return numpy arrays or Arrow tables and know
nothing about Prefect or the catalogue files.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
import pyarrow as pa
from skimage.filters import threshold_otsu

from catalog.schema import SLICE_SCHEMA
from tasks.chunks import chunks as _chunks
from tasks.oblique import measure_oblique_slices
from tasks.slice_metrics import accumulate_axis_metrics

# Bump when a change to this module changes any analysis output, so cached
# analyses from older code are not reused.
ANALYSIS_CODE_VERSION = "analysis-1"

HISTOGRAM_BINS = 1 << 16
OTSU_BINS = 256
OTSU_MIN_VOXELS = 10
FALLBACK_FRACTION = 0.4
OTSU_MAX_FRACTION = 0.8


@dataclass(frozen=True)
class Threshold:
    """A foreground threshold on the normalised volume and how it was chosen."""

    value: float
    method: str


@dataclass
class Analysis:
    """The result of analysing one volume.

    ``mask`` is None when the status is not ``"analysed"``; then ``slices`` is
    empty and ``reason`` says why.
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


def normalise_inplace(volume: np.ndarray, low: float, high: float) -> None:
    """Clip to [low, high] and scale to [0, 1] in place; non-finite voxels become 0."""
    scale = np.float32(1.0 / (high - low))
    for start, stop in _chunks(volume.shape[0]):
        block = volume[start:stop]
        np.nan_to_num(block, copy=False, nan=low, posinf=low, neginf=low)
        np.clip(block, low, high, out=block)
        block -= np.float32(low)
        block *= scale


def choose_threshold(volume: np.ndarray) -> Threshold | None:
    """Choose the foreground threshold of a volume normalised to [0, 1].

    Otsu's method runs on the voxels above the volume minimum. It falls back
    to 0.4 x max when fewer than 10 voxels are above the minimum, when Otsu
    fails, or when Otsu lands above 0.8 x max, because then it has split the
    bright tail of the fossil instead of fossil from background.

    Returns None for a constant volume, which has no foreground.
    """
    vmin = min(float(volume[start:stop].min()) for start, stop in _chunks(volume.shape[0]))
    vmax = max(float(volume[start:stop].max()) for start, stop in _chunks(volume.shape[0]))
    if vmax <= vmin:
        return None
    fallback = Threshold(FALLBACK_FRACTION * vmax, "fallback 0.4 x max")

    # Histogram of the voxels above the minimum, as Otsu's input.
    edges = np.linspace(vmin, vmax, OTSU_BINS + 1)
    counts = np.zeros(OTSU_BINS, dtype=np.int64)
    for start, stop in _chunks(volume.shape[0]):
        block = volume[start:stop]
        counts += np.histogram(block[block > vmin], bins=edges)[0]
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
    """Return the largest 26-connected component of ``volume > threshold`` as a bool mask."""
    foreground = volume > threshold
    if not foreground.any():
        return foreground
    return cc3d.largest_k(foreground, k=1, connectivity=26, binary_image=True).astype(bool, copy=False)


def analyse_volume(volume: np.ndarray, *, clip_percentiles=(1.0, 99.0), min_area_fraction=0.02,
                   scan_hash: str = "", params_hash: str = "", oblique_views: bool = False) -> Analysis:
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

    Returns
    -------
    Analysis
        Status ``"analysed"``, or ``"degenerate"`` with the reason.
    """
    low, high, n_finite, n_nonfinite = finite_percentiles(volume, clip_percentiles)
    empty = SLICE_SCHEMA.empty_table()
    if n_finite == 0:
        return Analysis("degenerate", "no finite voxel", low, high, float("nan"), "none", n_nonfinite, 0, None, empty)
    if not high > low:
        reason = f"constant volume: the {clip_percentiles[0]:g}th and {clip_percentiles[1]:g}th percentiles are both {low:g}"
        return Analysis("degenerate", reason, low, high, float("nan"), "none", n_nonfinite, 0, None, empty)

    normalise_inplace(volume, low, high)
    threshold = choose_threshold(volume)
    if threshold is None:
        reason = "constant volume after normalisation"
        return Analysis("degenerate", reason, low, high, float("nan"), "none", n_nonfinite, 0, None, empty)

    mask = largest_component(volume, threshold.value)
    mask_voxels = int(np.count_nonzero(mask))
    if mask_voxels == 0:
        reason = f"no voxel above the threshold {threshold.value:.4f} ({threshold.method})"
        return Analysis("degenerate", reason, low, high, threshold.value, threshold.method, n_nonfinite, 0, None, empty)

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
