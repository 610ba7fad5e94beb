"""The fixed Arrow schema of the per-scan slice files, and the catalogue's version."""

from __future__ import annotations

import pyarrow as pa

# Version of the DuckDB catalogue layout. Raise it whenever a table or view
# changes shape, and teach ``catalog.migrations`` how to migrate the older one.
# Version 2 dropped the primary-key index of slice_rows.
CATALOGUE_VERSION = 2

# One row per slice of one scan analysis. Rows are keyed by
# (scan_hash, view, slice_index); species and specimen come from the scans
# table, so renaming a file changes no slice row.
SLICE_SCHEMA = pa.schema(
    [
        pa.field("scan_hash", pa.string(), nullable=False),
        pa.field("params_hash", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("view", pa.string(), nullable=False),
        pa.field("plane", pa.string(), nullable=False),
        pa.field("angle_deg", pa.int16(), nullable=False),
        pa.field("slice_index", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("mask_pixels", pa.int64(), nullable=False),
        pa.field("area_fraction", pa.float64(), nullable=False),
        pa.field("intensity_mean", pa.float64()),
        pa.field("intensity_std", pa.float64()),
        pa.field("intensity_min", pa.float64()),
        pa.field("intensity_max", pa.float64()),
        pa.field("sharpness", pa.float64(), nullable=False),
        pa.field("bbox_row0", pa.int32()),
        pa.field("bbox_row1", pa.int32()),
        pa.field("bbox_col0", pa.int32()),
        pa.field("bbox_col1", pa.int32()),
        pa.field("n_components", pa.int32(), nullable=False),
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),
    ],
    metadata={
        "area_fraction": "mask pixels / slice pixels, 0..1",
        "intensity": "normalised intensity inside the mask, 0..1",
        "sharpness": "variance of the 5-point Laplacian of the normalised slice, interior pixels",
        "bbox": "inclusive pixel rows and columns of the mask in the slice",
    },
)
