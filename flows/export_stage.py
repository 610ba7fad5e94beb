"""The stages of ``build-dataset`` after the split: sample, export, report, build row."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed

from catalog.records import insert_rows
from flows import progress
from tasks.analyse import ANALYSIS_CODE_VERSION
from tasks.export import EXPORT_CODE_VERSION, forget_resolved_folders, image_name, image_path, write_atomic
from tasks import publish
from tasks.export_scan import file_sha256
from tasks.figures import area_fraction_histogram, contact_sheet, counts_chart, preview_pixels, sample_images
from tasks.prefect_tasks import export_scan_images
from tasks.report import count_table, report_json, report_markdown, split_stats
from tasks.report_html import Figure, report_html
from tasks.sample import order_candidates, split_quotas
from tasks.species import SpeciesReport
from tasks.split import SPLITS, SplitPlan

# Rounds of replacement: a dropped image is replaced by the next slice of the
# same species and split, whose image may in turn be dropped.
MAX_REPLACEMENT_ROUNDS = 5

# Images per species on a contact sheet: one row of the sheet.
CONTACT_SHEET_IMAGES = 8

# Each export task loads its scan's volume, so a scan is cut into several
# tasks only when every task still gets at least this many images.
MIN_IMAGES_PER_TASK = 64


@dataclass
class ExportOutcome:
    """Export rows for the catalogue and metadata rows for ``metadata.csv``."""

    rows: list[dict] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)


def render_settings(config) -> dict:
    """Return the keyword arguments of ``RenderParams`` from the build configuration."""
    return {
        "image_size": config.image_size,
        "margin_fraction": config.margin_fraction,
        "min_object_size": config.min_object_size,
        "max_hole_size": config.max_hole_size,
        "closing_radius": config.closing_radius,
        "min_area_fraction": config.min_area_fraction,
    }


def export_key(request: dict, params_hash: str, render: dict, image_format: str) -> str:
    """Return a hash of everything an exported image depends on, including its path."""
    parts = [request["scan_hash"], params_hash, request["view"], request["slice_index"], request["file"],
             render, image_format, EXPORT_CODE_VERSION]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def export(context, candidates: pa.Table, plan: SplitPlan, scans: list[dict], analyses: dict[str, dict]) -> ExportOutcome:
    """Select slices per (species, split) and write their images, replacing the ones that come out empty."""
    config, logger = context.config, context.logger
    ordered = order_candidates(candidates, plan.assignments, seed=config.seed)
    quotas = split_quotas(config.target_per_species, config.test_fraction, config.val_target, config.val_cap)
    groups = _group_positions(ordered)
    columns = {name: ordered[name].to_pylist() for name in ordered.column_names}
    by_path = {scan["relative_path"]: scan for scan in scans}
    render = render_settings(config)
    # Folders may have changed since an earlier build in this process.
    forget_resolved_folders()

    outcome = ExportOutcome()
    next_position = {key: 0 for key in groups}
    wanted = {key: min(quotas[key[1]], len(positions)) for key, positions in groups.items()}
    total = sum(wanted.values())
    with progress.stage(logger, "export", total) as tracker:
        for round_number in range(MAX_REPLACEMENT_ROUNDS + 1):
            batch = []
            for key, positions in groups.items():
                start = next_position[key]
                take = wanted[key]
                batch.extend(positions[start:start + take])
                next_position[key] = start + take
            if not batch:
                break
            results = _export_batch(context, batch, columns, by_path, analyses, render)
            dropped = defaultdict(int)
            for position, result in results:
                row = _export_row(context, position, columns, result)
                outcome.rows.append(row)
                if result["status"] == "dropped":
                    dropped[(row["species"], row["split"])] += 1
                    continue
                tracker.advance()
                outcome.metadata.append(_metadata_row(row, columns, position, by_path))
            wanted = {key: min(dropped.get(key, 0), len(groups[key]) - next_position[key]) for key in groups}
            if dropped:
                logger.info(
                    "export round %d: %d images dropped (refined mask empty or too small); %d replacement "
                    "slices available", round_number + 1, sum(dropped.values()), sum(wanted.values()),
                )
    return outcome


def _group_positions(ordered: pa.Table) -> dict[tuple[str, str], list[int]]:
    """Return row positions per (species, split), in priority order."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for position, key in enumerate(zip(ordered["species"].to_pylist(), ordered["split"].to_pylist())):
        groups[key].append(position)
    return dict(sorted(groups.items()))


def _export_batch(context, batch: list[int], columns: dict, by_path: dict, analyses: dict, render: dict):
    """Write the images of ``batch`` (row positions), one Prefect task per scan."""
    config = context.config
    params_hash = config.analysis_hash()
    per_scan: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for position in batch:
        scan = by_path[columns["relative_path"][position]]
        split, species = columns["split"][position], columns["species"][position]
        view, index = columns["view"][position], int(columns["slice_index"][position])
        name = image_name(species, scan["specimen"], scan["stem"], view, index, config.image_format)
        target = image_path(context.out, split, species, name)
        request = {"scan_hash": scan["scan_hash"], "view": view, "slice_index": index,
                   "file": target.relative_to(context.out).as_posix()}
        request["export_key"] = export_key(request, params_hash, render, config.image_format)
        request["previous_sha256"] = context.previous.exports.get(request["export_key"])
        per_scan[scan["relative_path"]].append((position, request))

    futures = {}

    def submit(relative_path: str, items: list[tuple[int, dict]], parts: int = 1) -> None:
        scan = by_path[relative_path]
        for chunk in _chunks(items, parts):
            future = export_scan_images.submit(
                scan["file_name"], scan["path"], analyses[relative_path], [request for _, request in chunk],
                str(publish.staging_root(context.out)), render, config.image_format, list(config.tiff_voxel_size),
            )
            futures[future] = chunk

    # Scans that no earlier build exported from start at once, so that they
    # render while the flow settles the images of the other scans. When they
    # are fewer than the workers, as after one new scan, each is cut into
    # parts so that every worker renders.
    fresh = [path for path in sorted(per_scan)
             if not any(_has_earlier_record(context, request) for _, request in per_scan[path])]
    parts = max(1, config.max_workers // max(1, len(fresh)))
    for relative_path in fresh:
        submit(relative_path, per_scan.pop(relative_path), parts)

    # Settle in the flow what an earlier build already did, so that a scan
    # whose images are all in place costs no task and no volume load.
    results = []
    for relative_path in sorted(per_scan):
        pending = []
        for position, request in per_scan[relative_path]:
            settled = _earlier_result(context, request)
            if settled is None:
                pending.append((position, request))
                continue
            if settled["status"] == "unchanged":
                publish.link_unchanged(context.out, request["file"])
            results.append((position, dict(request, **settled)))
        if pending:
            submit(relative_path, pending)

    for future in as_completed(list(futures)):
        items = futures[future]
        for (position, request), result in zip(items, future.result()):
            results.append((position, dict(request, **result)))
    results.sort(key=lambda item: item[0])
    return results


def _chunks(items: list, parts: int) -> list[list]:
    """Cut ``items`` in order into at most ``parts`` runs.

    When there are several runs, each has at least MIN_IMAGES_PER_TASK items.
    """
    parts = max(1, min(parts, len(items) // MIN_IMAGES_PER_TASK))
    size = max(1, math.ceil(len(items) / parts))
    return [items[start:start + size] for start in range(0, len(items), size)]


def _has_earlier_record(context, request: dict) -> bool:
    """Return whether an earlier build wrote or dropped the image of ``request``."""
    return bool(request["previous_sha256"]) or request["export_key"] in context.previous.dropped


def _earlier_result(context, request: dict) -> dict | None:
    """Return the result an earlier build recorded for the same export key, if it still holds.

    An image is unchanged when its file still has the recorded SHA-256. A
    slice dropped before stays dropped, because rendering it again with the
    same inputs gives the same empty image.
    """
    key = request["export_key"]
    if key in context.previous.dropped:
        return {"status": "dropped", "reason": context.previous.dropped[key], "sha256": None}
    previous = request["previous_sha256"]
    if previous and file_sha256(context.out / request["file"]) == previous:
        return {"status": "unchanged", "reason": None, "sha256": previous}
    return None


def _export_row(context, position: int, columns: dict, result: dict) -> dict:
    return {
        "build_id": context.build_id, "scan_hash": result["scan_hash"], "view": result["view"],
        "slice_index": result["slice_index"], "species": columns["species"][position],
        "specimen": columns["specimen"][position], "split": columns["split"][position],
        "priority": int(columns["priority"][position]), "status": result["status"], "reason": result["reason"],
        "file": result["file"] if result["status"] != "dropped" else None, "sha256": result["sha256"],
        "export_key": result["export_key"],
    }


def _metadata_row(row: dict, columns: dict, position: int, by_path: dict) -> dict:
    scan = by_path[columns["relative_path"][position]]
    return {
        "file_name": row["file"].split("/", 1)[1], "species": row["species"], "specimen": row["specimen"],
        "scan": scan["stem"], "scan_hash": row["scan_hash"], "view": row["view"], "slice_index": row["slice_index"],
        "split": row["split"], "area_fraction": columns["area_fraction"][position],
        "sharpness": columns["sharpness"][position], "intensity_mean": columns["intensity_mean"][position],
        "n_components": columns["n_components"][position],
    }


def write_species_rows(context, connection, reports: list[SpeciesReport], plan: SplitPlan) -> None:
    """Record the species report of this build."""
    rows = [
        {
            "build_id": context.build_id, "species": r.species, "scans": r.scans, "specimens": r.specimens,
            "usable_specimens": r.usable_specimens, "included": r.included, "reason": r.reason,
            "split_note": plan.notes.get(r.species),
        }
        for r in reports
    ]
    insert_rows(connection, "species_history", rows)


def write_report(context, reports: list[SpeciesReport], plan: SplitPlan, scans: list[dict],
                 analyses: dict[str, dict], selected: list[dict], digest: str) -> Path:
    """Write ``report.md``, ``report.json``, ``report.html`` and ``report/*.png``; publish Prefect artifacts."""
    included = [r.species for r in reports if r.included]
    table = count_table(((row["species"], row["split"]) for row in selected), included)
    stats = split_stats(table)
    problems = [
        {"relative_path": s["relative_path"], "status": s["status"], "reason": s["reason"]}
        for s in scans if s["status"] not in ("analysed", "removed")
    ]
    arguments = dict(
        build_id=context.build_id, dataset_hash=digest, table=table, stats=stats, species_reports=reports,
        split_notes=plan.notes, leakage="passed: no specimen and no file content is in more than one split",
        scan_problems=problems, params=context.config.model_dump(mode="json"),
    )
    figures = report_figures(context, table, scans, analyses, selected)
    for figure in figures:
        write_atomic(context.out / "report" / figure.name, figure.png)
    markdown = report_markdown(**arguments) + "\n## Figures\n\n" + "\n".join(
        f"- `report/{figure.name}`: {figure.caption}" for figure in figures
    ) + "\n\nThe whole report with its figures is `report.html`.\n"
    write_atomic(context.out / "report.md", markdown.encode())
    write_atomic(context.out / "report.json", report_json(**arguments).encode())
    write_atomic(context.out / "report.html", report_html(**arguments, figures=figures).encode())

    counts_rows = [{"species": name, **row, "total": sum(row.values())} for name, row in table.items()]
    stats_rows = [
        {"split": s.split, "images": s.total, "mean": round(s.mean, 1), "sd": round(s.sd, 1),
         "cv_percent": None if np.isnan(s.cv_percent) else round(s.cv_percent, 2)}
        for s in stats
    ]
    species_rows = [
        {"species": r.species, "scans": r.scans, "specimens": r.specimens, "usable_specimens": r.usable_specimens,
         "included": r.included, "reason": r.reason, "split_note": plan.notes.get(r.species, "")}
        for r in reports
    ]
    create_table_artifact(key="split-counts", table=counts_rows, description="Images per species and split")
    create_table_artifact(key="split-statistics", table=stats_rows, description="Mean, sd and CV per split")
    create_table_artifact(key="species-report", table=species_rows, description="Every species and why")
    create_markdown_artifact(key="build-report", markdown=markdown, description=f"Build {context.build_id}")
    return context.out / "report.md"


def report_figures(context, table: dict[str, dict[str, int]], scans: list[dict], analyses: dict[str, dict],
                   selected: list[dict]) -> list[Figure]:
    """Draw a contact sheet per split, the counts chart and the area-fraction histogram of this build."""
    fmt = context.config.image_format
    figures = []
    for split in SPLITS:
        chosen = sample_images((row for row in selected if row["split"] == split), CONTACT_SHEET_IMAGES)
        rows = {
            species: [(row["specimen"], preview_pixels((context.out / row["file"]).read_bytes(), fmt)) for row in items]
            for species, items in chosen.items()
        }
        caption = f"{split}: sample images per species, captioned with their specimen"
        figures.append(Figure(f"contact-{split}.png", caption, contact_sheet(caption, rows)))
    figures.append(Figure("counts.png", "Images per species and split", counts_chart(table)))
    species, fractions, passed = _slice_area_fractions(scans, analyses)
    histogram = area_fraction_histogram(species, fractions, passed, context.config.min_area_fraction)
    figures.append(Figure("area-fraction.png", "Area fraction of passing and rejected slices per species", histogram))
    return figures


def _slice_area_fractions(scans: list[dict], analyses: dict[str, dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return species, area fraction and passed of every slice of this build's analysed scans.

    The values come from the per-scan Parquet files that the catalogue's slice
    rows are loaded from: the catalogue views still show the previous build
    while this one is being written.
    """
    species, fractions, passed = [], [], []
    for scan in scans:
        stored = analyses.get(scan["relative_path"], {}).get("slices_file")
        if not stored:
            continue
        columns = pq.read_table(stored, columns=["area_fraction", "passed"])
        species.extend([scan["species"]] * columns.num_rows)
        fractions.append(columns["area_fraction"].to_numpy())
        passed.append(columns["passed"].to_numpy())
    if not fractions:
        return [], np.zeros(0), np.zeros(0, dtype=bool)
    return species, np.concatenate(fractions), np.concatenate(passed)


def build_row(context, started: datetime, finished: datetime, scans: list[dict], analyses: dict[str, dict],
              exports: ExportOutcome, removed: list[str], digest: str) -> dict:
    """Return the catalogue row of a successful build."""
    changes = defaultdict(int)
    for scan in scans:
        changes[scan["change"]] += 1
    statuses = defaultdict(int)
    for row in exports.rows:
        statuses[row["status"]] += 1
    cached = sum(1 for summary in analyses.values() if summary.get("cached"))
    return {
        "build_id": context.build_id, "started_at": started, "finished_at": finished, "status": "succeeded",
        "message": None, "code_version": ANALYSIS_CODE_VERSION, "analysis_hash": context.config.analysis_hash(),
        "params": json.dumps(context.config.model_dump(mode="json"), sort_keys=True),
        "scans_dir": str(context.scans_root), "dataset_hash": digest,
        "scans_seen": sum(1 for scan in scans if scan["change"] != "removed"),
        "scans_added": changes["added"], "scans_changed": changes["changed"], "scans_removed": changes["removed"],
        "analyses_run": len(analyses) - cached, "analyses_cached": cached,
        "images_total": statuses["written"] + statuses["unchanged"], "images_written": statuses["written"],
        "images_unchanged": statuses["unchanged"], "images_removed": len(removed),
        "leakage_check": "passed",
    }

