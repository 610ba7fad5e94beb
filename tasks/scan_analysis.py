"""Analyse one scan file end to end and store its slice rows and mask.

The stored files are named by the scan's content hash and the analysis
parameters hash, so a renamed file finds its earlier analysis and a changed
parameter never reads a stale one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tasks.analyse import analyse_volume, normalise_inplace
from tasks.volume import ScanReadError, load_volume

SLICES_FOLDER = "slices"
MASKS_FOLDER = "masks"


def analysis_files(storage_dir: Path, scan_hash: str, params_hash: str) -> tuple[Path, Path]:
    """Return the Parquet and mask paths of one scan analysis."""
    stem = f"{scan_hash}-{params_hash}"
    return (
        Path(storage_dir) / SLICES_FOLDER / f"{stem}.parquet",
        Path(storage_dir) / MASKS_FOLDER / f"{stem}.npz",
    )


def _replace_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def one_line(text: str) -> str:
    """Join a multi-line message into one line, so it fits a table cell and a log line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def run_scan_analysis(path: str, scan_hash: str, params: dict, params_hash: str, storage_dir: str) -> dict:
    """Load, analyse and store one scan; return a JSON-ready summary.

    Parameters
    ----------
    path : str
        The scan file.
    scan_hash : str
        SHA-256 of the file's content.
    params : dict
        ``clip_percentiles``, ``min_area_fraction``, ``oblique_views`` and
        ``tiff_voxel_size``.
    params_hash : str
        Hash of ``params`` and the analysis code version.
    storage_dir : str
        Folder that receives ``slices/*.parquet`` and ``masks/*.npz``.

    Returns
    -------
    dict
        ``status`` is ``"analysed"``, ``"degenerate"``, ``"corrupt"`` or
        ``"unsupported"``; ``reason`` gives the cause for every status but the first.
    """
    summary = {"scan_hash": scan_hash, "params_hash": params_hash, "warnings": ""}
    try:
        volume = load_volume(Path(path), tiff_voxel_size=tuple(params["tiff_voxel_size"]))
    except ScanReadError as error:
        summary.update(status=error.status, reason=one_line(error.reason), n_slices=0, n_passing=0)
        return summary
    except Exception as error:  # noqa: BLE001
        # nibabel and tifffile raise many error types on damaged files, such
        # as a header block of the wrong size or a missing page index. Every
        # one of them means the file cannot be read.
        reason = f"unreadable file ({type(error).__name__}: {one_line(str(error))})"
        summary.update(status="corrupt", reason=reason, n_slices=0, n_passing=0)
        return summary

    summary.update(
        shape=list(volume.data.shape),
        voxel_size=volume.voxel_size,
        source_shape=list(volume.source_shape),
        source_dtype=volume.source_dtype,
        source_orientation=volume.source_orientation,
        resampled=volume.resampled,
    )
    analysis = analyse_volume(
        volume.data,
        clip_percentiles=tuple(params["clip_percentiles"]),
        min_area_fraction=params["min_area_fraction"],
        scan_hash=scan_hash,
        params_hash=params_hash,
        oblique_views=params.get("oblique_views", False),
        histogram=volume.histogram,
    )
    if analysis.nonfinite_voxels:
        summary["warnings"] = (
            f"{analysis.nonfinite_voxels} NaN or infinite voxels were left out of every statistic"
        )
    summary.update(
        status=analysis.status,
        reason=analysis.reason,
        clip_low=analysis.clip_low,
        clip_high=analysis.clip_high,
        threshold=analysis.threshold,
        threshold_method=analysis.threshold_method,
        nonfinite_voxels=analysis.nonfinite_voxels,
        mask_voxels=analysis.mask_voxels,
        n_slices=analysis.slices.num_rows,
        n_passing=int(np.count_nonzero(analysis.slices.column("passed").to_numpy(zero_copy_only=False))),
    )

    slices_file, mask_file = analysis_files(Path(storage_dir), scan_hash, params_hash)
    _replace_atomically(slices_file, lambda target: pq.write_table(analysis.slices, target, compression="zstd"))
    if analysis.mask is not None:
        packed = np.packbits(analysis.mask, axis=None)
        _replace_atomically(
            mask_file,
            lambda target: np.savez_compressed(target, bits=packed, shape=np.array(analysis.mask.shape)),
        )
    summary.update(slices_file=str(slices_file), mask_file=str(mask_file) if analysis.mask is not None else "")
    return summary


def load_masked_volume(path: str, summary: dict, tiff_voxel_size) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild the normalised, masked volume of an analysed scan for export.

    Uses the stored clip values and mask, so no threshold or component search
    runs again. Returns (volume float32 zero outside the mask, mask bool).
    """
    volume = load_volume(Path(path), tiff_voxel_size=tuple(tiff_voxel_size)).data
    normalise_inplace(volume, summary["clip_low"], summary["clip_high"])
    with np.load(summary["mask_file"]) as stored:
        shape = tuple(int(n) for n in stored["shape"])
        mask = np.unpackbits(stored["bits"], count=int(np.prod(shape))).astype(bool).reshape(shape)
    if mask.shape != volume.shape:
        raise ValueError(f"stored mask {summary['mask_file']} has shape {mask.shape}, volume has {volume.shape}")
    np.multiply(volume, mask, out=volume)
    return volume, mask
