"""Catalogue at the original study's scale: time every documented query and measure the file sizes.

Builds a synthetic catalogue without images through the real catalogue code:
schema.sql, views.sql, the Parquet slice files and the insert paths. It has 97
scans of 27 species. Each is a 1000^3-voxel scan with 3,000 axis slices, and 60%
of them add the 24 oblique views: about 2 million slice rows. Then it runs
every ```sql block of catalog/README.md on one thread and prints its time,
with the ratio to a full count of slice_rows measured in the same run, and the
size of the catalogue and of its Parquet export.

Targets: each query < 1 s on one core; catalogue + Parquet < 500 MB.

Usage: python benchmarks/catalogue.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog.records import insert_rows, store_slice_rows
from catalog.schema import SLICE_SCHEMA
from catalog.sql import documented_queries, export_parquet
from catalog.store import catalogue_path, open_writer
from tasks.oblique import OBLIQUE_ANGLES, oblique_slice_count, oblique_view_name

# Scans per species in the original study (27 species, 97 scans).
STUDY_SCANS = {
    "Chrysalidina": 16, "Ataxophragmium": 7, "Baculogypsina": 7, "Minoxia": 6, "Elphidiella": 6, "Fallotia": 6,
    "Arumella": 5, "Lockhartia": 5, "Orbitoides": 5, "Rhapydionina": 5, "Alveolina": 4, "Coskinolina": 4,
    "Daviesina": 3, "Coscinoidea": 2, "Dictyoconus": 2, "Glyphostomalloides": 2, "Nummulites": 2,
    "Amphistegina": 1, "Cincoriola": 1, "Dictyoconoides": 1, "Dukhania": 1, "Fissolephidium": 1,
    "Heterostegina": 1, "Miscellanea": 1, "Omphalocyclus": 1, "Peneroplis": 1, "Rotalia": 1,
}
PARAMS_HASH = "benchmark-params"
SPLIT_CYCLE = ("train", "train", "val", "test", "train")


def scan_names() -> list[tuple[str, str, str]]:
    """Return (species, specimen, file name) of the 97 scans; Minoxia's 6 scans are 3 specimens."""
    names = []
    for species, count in STUDY_SCANS.items():
        for n in range(count):
            if species == "Minoxia":
                specimen, suffix = f"specimen{n // 2 + 1}", "_avizo" if n % 2 else ""
            elif species == "Chrysalidina" and n < 3:
                specimen, suffix = "specimen1", f"_scan{n}"
            else:
                specimen, suffix = f"specimen{n + 1}", ""
            names.append((species, specimen, f"{species}_{specimen}{suffix}.nii.gz"))
    return names


def slice_table(scan_hash: str, edge: int, oblique: bool, rng: np.random.Generator) -> pa.Table:
    """Return synthetic slice rows of one edge^3 scan in SLICE_SCHEMA: 3 axis views, optionally 24 oblique."""
    views = [(f"axis{axis}", f"axis{axis}", 0, edge) for axis in range(3)]
    if oblique:
        for plane in ("xy", "xz", "yz"):
            for angle in OBLIQUE_ANGLES:
                count = oblique_slice_count((edge, edge, edge), plane, angle)
                views.append((oblique_view_name(plane, angle), plane, angle, count))
    n = sum(count for *_, count in views)
    view = np.concatenate([np.full(count, name, dtype=object) for name, _, _, count in views])
    plane = np.concatenate([np.full(count, p, dtype=object) for _, p, _, count in views])
    angle = np.concatenate([np.full(count, a, dtype=np.int16) for _, _, a, count in views])
    index = np.concatenate([np.arange(count, dtype=np.int32) for *_, count in views])

    # Mask area rises towards the middle of each view, like a fossil in the field of view.
    position = np.concatenate([np.linspace(0, 1, count) for *_, count in views])
    area = np.clip(0.5 * np.sin(np.pi * position) + rng.normal(0, 0.03, n), 0, 1)
    pixels = edge * edge
    mask_pixels = (area * pixels).astype(np.int64)
    passed = area >= 0.02
    # The real reason carries the measured area; one rounded value is enough here.
    reason = np.where(mask_pixels == 0, "empty mask", "mask area 0.01 below 0.02").astype(object)
    columns = {
        "scan_hash": np.full(n, scan_hash, dtype=object), "params_hash": np.full(n, PARAMS_HASH, dtype=object),
        "code_version": np.full(n, "analysis-1", dtype=object), "view": view, "plane": plane,
        "angle_deg": angle, "slice_index": index,
        "height": np.full(n, edge, dtype=np.int32), "width": np.full(n, edge, dtype=np.int32),
        "mask_pixels": mask_pixels, "area_fraction": area,
        "intensity_mean": rng.uniform(0.3, 0.7, n), "intensity_std": rng.uniform(0.05, 0.2, n),
        "intensity_min": np.zeros(n), "intensity_max": np.ones(n), "sharpness": rng.gamma(2.0, 0.01, n),
        "bbox_row0": np.full(n, 10, dtype=np.int32), "bbox_row1": np.full(n, edge - 10, dtype=np.int32),
        "bbox_col0": np.full(n, 10, dtype=np.int32), "bbox_col1": np.full(n, edge - 10, dtype=np.int32),
        "n_components": rng.integers(1, 4, n).astype(np.int32), "passed": passed,
    }
    arrays = [pa.array(columns[f.name], type=f.type) for f in SLICE_SCHEMA if f.name != "reason"]
    arrays.append(pa.array(reason, mask=passed, type=pa.string()))
    return pa.Table.from_arrays(arrays, schema=SLICE_SCHEMA)


def write_catalogue(out: Path, edge: int, oblique_share: float, scans_limit: int | None) -> int:
    """Write one synthetic build into ``out/catalogue.duckdb`` through the real insert paths; return slice rows."""
    rng = np.random.default_rng(0)
    storage = out / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    names = scan_names()[:scans_limit] if scans_limit else scan_names()
    specimens_per_species: dict[str, set[str]] = {}
    for species, specimen, _ in names:
        specimens_per_species.setdefault(species, set()).add(specimen)
    included = {s for s, specimens in specimens_per_species.items() if len(specimens) >= 4}

    scan_rows, files, tables = [], [], {}
    for number, (species, specimen, file_name) in enumerate(names):
        scan_hash = hashlib.sha256(file_name.encode()).hexdigest()
        table = None
        if species in included:
            table = slice_table(scan_hash, edge, number % 100 < oblique_share * 100, rng)
            path = storage / f"{scan_hash}.parquet"
            pq.write_table(table, path)
            files.append(str(path))
            tables[(species, specimen, scan_hash)] = table
        scan_rows.append({
            "build_id": 1, "relative_path": file_name, "scan_hash": scan_hash, "file_name": file_name,
            "species": species, "specimen": specimen, "variant": "", "size_bytes": edge ** 3 * 2,
            "change": "added", "status": "analysed" if table is not None else "excluded",
            "n_slices": table.num_rows if table is not None else None,
            "n_passing": int(pc.sum(table["passed"].cast(pa.int64())).as_py()) if table is not None else None,
            "params_hash": PARAMS_HASH if table is not None else None,
        })

    split_of = {}
    for species in sorted(included):
        for position, specimen in enumerate(sorted(specimens_per_species[species])):
            split_of[(species, specimen)] = SPLIT_CYCLE[position % len(SPLIT_CYCLE)]
    export_rows = _export_rows(tables, split_of, rng)

    with open_writer(out) as connection:
        insert_rows(connection, "scan_history", scan_rows)
        store_slice_rows(connection, files)
        insert_rows(connection, "split_history", [
            {"build_id": 1, "species": s, "specimen": m, "split": split, "passing_slices": 0, "assigned_in": 1}
            for (s, m), split in sorted(split_of.items())
        ])
        insert_rows(connection, "species_history", [
            {"build_id": 1, "species": s, "scans": STUDY_SCANS[s], "specimens": len(specimens_per_species[s]),
             "usable_specimens": len(specimens_per_species[s]), "included": s in included,
             "reason": "benchmark"} for s in sorted(specimens_per_species)
        ])
        insert_rows(connection, "export_history", export_rows)
        now = datetime.now()
        insert_rows(connection, "builds", [{
            "build_id": 1, "started_at": now, "finished_at": now, "status": "succeeded",
            "code_version": "analysis-1", "analysis_hash": PARAMS_HASH,
            "params": json.dumps({"min_area_fraction": 0.02}), "scans_dir": "benchmark",
            "dataset_hash": "0" * 64, "images_total": len(export_rows), "leakage_check": "passed",
        }])
    return sum(t.num_rows for t in tables.values())


def _export_rows(tables: dict, split_of: dict, rng: np.random.Generator, per_species: int = 10_000) -> list[dict]:
    """Select up to ``per_species`` passing slices per species, spread over its scans, as export rows."""
    by_species: dict[str, list] = {}
    for key in tables:
        by_species.setdefault(key[0], []).append(key)
    rows = []
    for species, keys in sorted(by_species.items()):
        share = per_species // len(keys)
        for _, specimen, scan_hash in keys:
            table = tables[(species, specimen, scan_hash)]
            passing = np.flatnonzero(table["passed"].to_numpy(zero_copy_only=False))
            chosen = rng.choice(passing, size=min(share, passing.size), replace=False)
            views, indices = table["view"].to_pylist(), table["slice_index"].to_numpy()
            split = split_of[(species, specimen)]
            for priority, row in enumerate(chosen):
                name = f"{split}/{species}/{scan_hash[:8]}_{views[row]}_{indices[row]}.png"
                rows.append({
                    "build_id": 1, "scan_hash": scan_hash, "view": views[row], "slice_index": int(indices[row]),
                    "species": species, "specimen": specimen, "split": split, "priority": priority,
                    "status": "written", "file": name, "sha256": hashlib.sha256(name.encode()).hexdigest(),
                    "export_key": name,
                })
    return rows


def time_query(connection: duckdb.DuckDBPyConnection, query: str, repeats: int = 3) -> float:
    """Return the best of ``repeats`` wall times of running ``query`` to its last row, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        connection.execute(query).fetchall()
        best = min(best, time.perf_counter() - start)
    return best


def folder_size(path: Path) -> int:
    """Return the bytes of every file below ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 scans of 300^3 voxels: a CI-sized run")
    parser.add_argument("--out", type=Path, default=None, help="folder for the catalogue (default: a temporary one)")
    parser.add_argument("--oblique-share", type=float, default=0.6,
                        help="share of scans with the 24 oblique views (default 0.6: about 2 million rows)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="catalogue-benchmark-"))
    edge, limit = (300, 24) if args.quick else (1000, None)

    start = time.perf_counter()
    rows = write_catalogue(out, edge, args.oblique_share, limit)
    print(f"wrote {rows:,} slice rows in {time.perf_counter() - start:.1f} s to {catalogue_path(out)}")

    connection = duckdb.connect(str(catalogue_path(out)), read_only=True, config={"threads": 1})
    baseline = time_query(connection, "SELECT count(*), sum(area_fraction) FROM slice_rows")
    print(f"baseline (full scan of slice_rows): {baseline * 1000:.1f} ms on one thread")
    slowest = 0.0
    for name, query in documented_queries().items():
        seconds = time_query(connection, query)
        slowest = max(slowest, seconds)
        print(f"{name:<22} {seconds * 1000:8.1f} ms  {seconds / baseline:6.1f} x baseline")
    export_dir = out / "parquet"
    start = time.perf_counter()
    export_parquet(connection, export_dir)
    print(f"Parquet export: {time.perf_counter() - start:.1f} s")
    connection.close()

    catalogue_mb = catalogue_path(out).stat().st_size / 1e6
    parquet_mb = folder_size(export_dir) / 1e6
    print(f"slowest query {slowest:.3f} s (target < 1 s)")
    print(f"catalogue {catalogue_mb:.1f} MB + Parquet {parquet_mb:.1f} MB = {catalogue_mb + parquet_mb:.1f} MB "
          "(target < 500 MB)")


if __name__ == "__main__":
    main()
