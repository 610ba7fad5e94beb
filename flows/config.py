"""The build configuration: one pydantic model behind TOML files, flags and Prefect parameters."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.analyse import ANALYSIS_CODE_VERSION
from tasks.discover import DEFAULT_NAME_PATTERN

# Fields that change what the per-scan analysis computes. Any other field
# changes only the split, the sampling or the export, so the cached analyses
# stay valid when it changes.
ANALYSIS_FIELDS = ("clip_percentiles", "min_area_fraction", "oblique_views", "tiff_voxel_size")


class BuildConfig(BaseModel):
    """Parameters of one dataset build. The defaults are the original study's values."""

    model_config = ConfigDict(extra="forbid")

    name_pattern: str = Field(
        DEFAULT_NAME_PATTERN,
        description="Regular expression with named groups 'species' and 'specimen' (and optional 'variant'), "
        "matched against each file name without its suffix.",
    )
    min_specimens: int = Field(4, ge=1, description="Distinct physical specimens a species needs to be included.")
    target_per_species: int = Field(10_000, ge=1, description="Slices to select per species, over all splits.")
    test_fraction: float = Field(0.20, gt=0, lt=1, description="Share of each species' passing slices for test.")
    val_target: int = Field(1000, ge=1, description="Selected val slices to aim at per species.")
    val_cap: int = Field(1200, ge=1, description="Maximum selected val slices per species.")
    min_area_fraction: float = Field(0.02, ge=0, le=1, description="Mask area / slice area a slice needs to pass.")
    clip_percentiles: tuple[float, float] = Field((1.0, 99.0), description="Percentiles mapped to 0 and 1.")
    image_size: int = Field(224, ge=8, le=4096, description="Side of the exported square images, in pixels.")
    image_format: Literal["png", "png16", "npy"] = Field(
        "png", description="png: 8-bit RGB; png16: 16-bit grayscale; npy: float32 array."
    )
    seed: int = Field(42, description="Seed of the split solver and the slice sampling.")
    oblique_views: bool = Field(False, description="Also measure 8 oblique angles (20..160 degrees) in each plane.")
    tiff_voxel_size: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0), description="Voxel size (x, y, z) for TIFF stacks, which do not record one."
    )
    resplit: bool = Field(False, description="Assign every specimen afresh instead of keeping earlier splits.")
    rehash_scans: bool = Field(
        False, description="Hash every scan file again, even one whose size, times and inode are unchanged."
    )
    margin_fraction: float = Field(0.05, ge=0, le=1, description="Crop margin around the mask, as a fraction of its longer side.")
    min_object_size: int = Field(16, ge=0, description="2D mask objects smaller than this many pixels are removed.")
    max_hole_size: int = Field(16, ge=0, description="2D mask holes up to this many pixels are filled.")
    closing_radius: int = Field(1, ge=0, description="Radius in pixels of the 2D morphological closing.")
    task_runner: Literal["threads", "processes", "dask"] = Field("threads", description="Where per-scan tasks run.")
    max_workers: int = Field(2, ge=1, description="Parallel workers for threads and processes.")
    dask_address: str | None = Field(None, description="tcp://HOST:PORT of an existing Dask scheduler.")
    storage_dir: str | None = Field(
        None, description="Folder for cached analyses and task results; default OUT_DIR/storage."
    )

    @field_validator("clip_percentiles")
    @classmethod
    def _ordered_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high <= 100:
            raise ValueError(f"clip_percentiles {value} must satisfy 0 <= low < high <= 100")
        return value

    @model_validator(mode="after")
    def _val_within_cap(self) -> "BuildConfig":
        if self.val_target > self.val_cap:
            raise ValueError(f"val_target {self.val_target} is above val_cap {self.val_cap}; lower it or raise the cap")
        return self

    def analysis_params(self) -> dict:
        """Return the parameters that the per-scan analysis depends on, with the code version."""
        params = {name: getattr(self, name) for name in ANALYSIS_FIELDS}
        params["code_version"] = ANALYSIS_CODE_VERSION
        return json.loads(json.dumps(params))

    def analysis_hash(self) -> str:
        """Return a short stable hash of :meth:`analysis_params`."""
        text = json.dumps(self.analysis_params(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_config(path: Path | None, overrides: dict | None = None) -> BuildConfig:
    """Read a TOML configuration file (or none) and apply command-line overrides.

    The TOML keys are the field names of :class:`BuildConfig`, at the top
    level or under a ``[build]`` table.
    """
    values: dict = {}
    if path is not None:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
        values.update(document.get("build", document))
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return BuildConfig(**values)
