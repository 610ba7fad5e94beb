"""Oblique views: planes rotated about one axis, sampled directly by interpolation.

An oblique view ``oblique-<plane>-<angle>`` rotates the slicing direction by
``angle`` degrees within ``plane`` (``xy``, ``xz`` or ``yz``). Its slices are
perpendicular to ``n = cos(angle) e_a + sin(angle) e_b``, where (a, b) are
the plane's axes, and are spanned by ``u = -sin(angle) e_a + cos(angle) e_b``
(rows) and the third axis (columns). Only the voxels on each slice's grid
are interpolated, so no rotated copy of the volume is ever made.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pyarrow as pa
from scipy import ndimage

OBLIQUE_ANGLES = tuple(range(20, 161, 20))
OBLIQUE_PLANES = {"xy": (0, 1, 2), "xz": (0, 2, 1), "yz": (1, 2, 0)}


def oblique_view_name(plane: str, angle_deg: int) -> str:
    """Return the view name of an oblique plane, e.g. ``oblique-xy-020``."""
    return f"oblique-{plane}-{angle_deg:03d}"


def parse_view(view: str) -> tuple[str, int, int | None]:
    """Split a view name into (kind, angle, axis).

    >>> parse_view("axis2")
    ('axis', 0, 2)
    >>> parse_view("oblique-yz-140")
    ('yz', 140, None)
    """
    if view.startswith("axis"):
        return "axis", 0, int(view[4:])
    _, plane, angle = view.split("-")
    if plane not in OBLIQUE_PLANES:
        raise ValueError(f"unknown oblique plane {plane!r} in view {view!r}; expected xy, xz or yz")
    return plane, int(angle), None


def _whole_extent(length: float) -> int:
    # cos(90 degrees) is 6e-17, not 0: round away such dust before ceil, or a
    # 26-voxel extent would give 27 slices.
    return max(1, int(math.ceil(round(length, 9))))


def _grid(shape: tuple[int, int, int], plane: str, angle_deg: int):
    """Return (n_slices, n_rows, n_cols, origin, normal, row_step, col_step) in voxel coordinates."""
    a, b, c = OBLIQUE_PLANES[plane]
    theta = math.radians(angle_deg)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    length_a, length_b = shape[a], shape[b]
    n_slices = _whole_extent(abs(length_a * cos_t) + abs(length_b * sin_t))
    n_rows = _whole_extent(abs(length_a * sin_t) + abs(length_b * cos_t))
    n_cols = shape[c]

    normal = np.zeros(3)
    normal[a], normal[b] = cos_t, sin_t
    row_step = np.zeros(3)
    row_step[a], row_step[b] = -sin_t, cos_t
    col_step = np.zeros(3)
    col_step[c] = 1.0
    centre = (np.array(shape, dtype=float) - 1.0) / 2.0
    origin = centre - normal * (n_slices - 1) / 2.0 - row_step * (n_rows - 1) / 2.0 - col_step * (n_cols - 1) / 2.0
    return n_slices, n_rows, n_cols, origin, normal, row_step, col_step


def oblique_slice_count(shape: tuple[int, int, int], plane: str, angle_deg: int) -> int:
    """Return the number of slices of an oblique view of a volume of ``shape``."""
    return _grid(shape, plane, angle_deg)[0]


def sample_oblique(volume: np.ndarray, mask: np.ndarray, plane: str, angle_deg: int, index: int):
    """Interpolate one oblique slice of a volume and its mask.

    Returns (image float32 (rows, cols), mask bool (rows, cols)). The image
    uses linear interpolation; the mask uses the nearest voxel, so that it
    stays binary. Points outside the volume are 0 and outside the mask.
    """
    n_slices, n_rows, n_cols, origin, normal, row_step, col_step = _grid(volume.shape, plane, angle_deg)
    if not 0 <= index < n_slices:
        raise IndexError(f"slice {index} outside oblique view {plane} {angle_deg} with {n_slices} slices")
    rows = np.arange(n_rows, dtype=np.float64)[:, None, None]
    cols = np.arange(n_cols, dtype=np.float64)[None, :, None]
    points = origin + normal * index + rows * row_step + cols * col_step
    coordinates = np.moveaxis(points, -1, 0)
    image = ndimage.map_coordinates(volume, coordinates, order=1, mode="constant", cval=0.0, output=np.float32)
    plane_mask = ndimage.map_coordinates(mask.view(np.uint8), coordinates, order=0, mode="constant", cval=0)
    return image, plane_mask.astype(bool)


def plane_metrics(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Measure one 2D slice the way the axis-aligned metrics do."""
    pixels = int(np.count_nonzero(mask))
    if image.shape[0] >= 3 and image.shape[1] >= 3:
        sharpness = float(cv2.Laplacian(image, cv2.CV_32F, ksize=1)[1:-1, 1:-1].astype(np.float64).var())
    else:
        sharpness = 0.0
    if pixels == 0:
        return {"mask_pixels": 0, "mean": np.nan, "std": np.nan, "min": np.nan, "max": np.nan,
                "sharpness": sharpness, "bbox": (-1, -1, -1, -1), "n_components": 0}
    inside = image[mask].astype(np.float64)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    n_labels, _ = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
    return {
        "mask_pixels": pixels,
        "mean": float(inside.mean()),
        "std": float(inside.std()),
        "min": float(inside.min()),
        "max": float(inside.max()),
        "sharpness": sharpness,
        "bbox": (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])),
        "n_components": n_labels - 1,
    }


def measure_oblique_slices(volume: np.ndarray, mask: np.ndarray, *, min_area_fraction: float,
                           scan_hash: str = "", params_hash: str = "") -> pa.Table:
    """Measure every slice of the 24 oblique views (3 planes x 8 angles).

    Returns rows in ``SLICE_SCHEMA``, ordered by plane, angle and index.
    """
    from tasks.analyse import slice_table

    tables = []
    for plane in OBLIQUE_PLANES:
        for angle in OBLIQUE_ANGLES:
            n_slices, n_rows, n_cols, *_ = _grid(volume.shape, plane, angle)
            measured = [plane_metrics(*sample_oblique(volume, mask, plane, angle, index)) for index in range(n_slices)]
            columns = {
                key: np.array([m[key] for m in measured], dtype=np.float64)
                for key in ("mask_pixels", "mean", "std", "min", "max", "sharpness")
            }
            columns["mask_pixels"] = columns["mask_pixels"].astype(np.int64)
            columns["bbox"] = np.array([m["bbox"] for m in measured], dtype=np.int32).reshape(-1, 4)
            columns["n_components"] = np.array([m["n_components"] for m in measured], dtype=np.int32)
            tables.append(slice_table(columns, view=oblique_view_name(plane, angle), plane=plane, angle_deg=angle,
                                      height=n_rows, width=n_cols, min_area_fraction=min_area_fraction,
                                      scan_hash=scan_hash, params_hash=params_hash))
    return pa.concat_tables(tables)


def extract_slice(volume: np.ndarray, mask: np.ndarray, view: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (image, mask) of one slice of any view, axis-aligned or oblique."""
    kind, angle, axis = parse_view(view)
    if kind == "axis":
        image = np.take(volume, index, axis=axis)
        plane_mask = np.take(mask, index, axis=axis)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(plane_mask)
    return sample_oblique(volume, mask, kind, angle, index)
