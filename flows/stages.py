"""The stages of ``build-dataset`` up to the split: discover, select species, analyse, collect slices.

Each function takes the build context and plain data, calls the pure steps in
``tasks/`` and logs what happened to which scan.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect.futures import as_completed

from catalog.records import PreviousState, insert_rows, prune_slice_rows, store_slice_rows
from flows import progress
from flows.config import BuildConfig
from tasks.discover import discover_scans, iter_scan_files, scan_hash_record
from tasks.prefect_tasks import cached_analyse_scan
from tasks.scan_analysis import analysis_files
from tasks.species import SpeciesReport, select_species
from tasks.split import SpecimenSlices, SplitPlan, assign_splits


@dataclass
class BuildContext:
    """Identity, folders, configuration and previous state of one build, shared by its stages."""

    build_id: int
    scans_root: Path
    out: Path
    storage: Path
    config: BuildConfig
    previous: PreviousState
    logger: logging.Logger


def discover(context: BuildContext) -> list[dict]:
    """Find and hash the scans; mark each one added, changed or unchanged, and list removed ones.

    Returns one dict per scan file, sorted by relative path. Files whose name
    does not parse get status ``unparsed``. A second file with the same
    content as another scan of the same specimen gets status ``duplicate``.
    """
    logger = context.logger
    total = len(iter_scan_files(context.scans_root))
    # Builds and rebuild-on-new-scans share this record, so a scheduled check
    # and the build it starts hash each scan once between them.
    hashes = None if context.config.rehash_scans else scan_hash_record(context.out)
    with progress.stage(logger, "discover", total) as tracker:
        found, unparsed = discover_scans(context.scans_root, context.config.name_pattern, tracker.advance, hashes)
    if hashes is not None:
        hashes.save()
        if hashes.reused:
            logger.info("discover: %d of %d scans have the size, times and inode recorded earlier; not hashed again",
                        hashes.reused, len(found))
    entries = []
    first_of_content: dict[tuple[str, str, str], str] = {}
    for scan in found:
        previous_hash = context.previous.scan_hashes.get(scan.relative_path)
        if previous_hash is None:
            change = "added"
        elif previous_hash == scan.content_hash:
            change = "unchanged"
        else:
            change = "changed"
        entry = {
            "relative_path": scan.relative_path, "file_name": Path(scan.path).name, "path": scan.path,
            "stem": scan.stem, "scan_hash": scan.content_hash, "species": scan.species, "specimen": scan.specimen,
            "variant": scan.variant, "size_bytes": scan.size_bytes, "change": change, "status": "pending", "reason": None,
        }
        key = (scan.species, scan.specimen, scan.content_hash)
        if key in first_of_content:
            entry["status"] = "duplicate"
            entry["reason"] = f"same content as {first_of_content[key]}, a scan of the same specimen"
            logger.warning("scan %s left out: %s", scan.relative_path, entry["reason"])
        else:
            first_of_content[key] = scan.relative_path
        entries.append(entry)
    for item in unparsed:
        logger.warning("file %s left out: %s", item.relative_path, item.reason)
        entries.append({
            "relative_path": item.relative_path, "file_name": Path(item.path).name, "path": item.path, "stem": None,
            "scan_hash": None, "species": None, "specimen": None, "variant": None,
            "size_bytes": Path(item.path).stat().st_size, "status": "unparsed", "reason": item.reason,
            "change": "added" if item.relative_path not in context.previous.scan_rows else "unchanged",
        })
    present = {entry["relative_path"] for entry in entries}
    for relative_path, row in sorted(context.previous.scan_rows.items()):
        if relative_path not in present:
            logger.info("scan %s was removed since build %d", relative_path, context.previous.last_build_id)
            entries.append({
                "relative_path": relative_path, "file_name": row["file_name"], "path": None, "stem": None,
                "scan_hash": row["scan_hash"], "species": row["species"], "specimen": row["specimen"],
                "variant": row["variant"], "size_bytes": row["size_bytes"], "change": "removed",
                "status": "removed", "reason": "file no longer in the scans folder",
            })
    entries.sort(key=lambda entry: entry["relative_path"])
    logger.info("discovered %d scans (%d with unparsed names)", len(found), len(unparsed))
    return entries


def _parsed(scans: list[dict]) -> list[dict]:
    return [scan for scan in scans if scan["status"] == "pending"]


def select_included_species(context: BuildContext, scans: list[dict]) -> list[SpeciesReport]:
    """Report every species and include those with at least ``min_specimens`` specimens."""
    reports = select_species(
        [(scan["species"], scan["specimen"]) for scan in _parsed(scans)], context.config.min_specimens
    )
    for report in reports:
        verdict = "included" if report.included else "excluded"
        context.logger.info("species %s %s: %s", report.species, verdict, report.reason)
    return reports


def analyse(context: BuildContext, scans: list[dict], reports: list[SpeciesReport]) -> dict[str, dict]:
    """Analyse the scans of the included species as cached Prefect tasks.

    Returns {relative path: analysis summary}. Each summary carries
    ``cached`` (True when Prefect reused an earlier result).
    """
    config, logger = context.config, context.logger
    included = {report.species for report in reports if report.included}
    for scan in _parsed(scans):
        if scan["species"] not in included:
            scan["status"] = "excluded"
            scan["reason"] = f"species {scan['species']} is not included, so its scans are not analysed"
    todo = [scan for scan in _parsed(scans)]
    params, params_hash = config.analysis_params(), config.analysis_hash()
    context.storage.mkdir(parents=True, exist_ok=True)

    summaries: dict[str, dict] = {}
    with progress.stage(logger, "analyse", len(todo)) as tracker:
        pending = todo
        for attempt in range(2):
            futures = {}
            for scan in pending:
                stored, _mask = analysis_files(context.storage, scan["scan_hash"], params_hash)
                task = cached_analyse_scan(context.storage, refresh=attempt > 0)
                future = task.submit(scan["file_name"], scan["path"], scan["scan_hash"], params, params_hash,
                                     str(context.storage))
                futures[future] = scan
            retry = []
            for future in as_completed(list(futures)):
                scan = futures[future]
                try:
                    summary = dict(future.result())
                except Exception as error:
                    if attempt == 0:
                        # A cache record can point at a result that moved with
                        # its output folder; analysing again replaces it.
                        logger.warning("scan %s: analysis failed (%s); retrying without the cache",
                                       scan["relative_path"], error)
                        retry.append(scan)
                        continue
                    summary = _failed_summary(scan, params_hash, error)
                summary["cached"] = future.state.name == "Cached"
                if summary["cached"] and not _stored_files_exist(summary):
                    # The cache record outlived the files it points at; analyse again.
                    retry.append(scan)
                    continue
                summaries[scan["relative_path"]] = summary
                _log_analysis(logger, scan, summary)
                tracker.advance()
            if not retry:
                break
            pending = retry
    for scan in todo:
        summary = summaries[scan["relative_path"]]
        scan["status"] = summary["status"]
        scan["reason"] = summary.get("reason") or None
    return summaries


def _failed_summary(scan: dict, params_hash: str, error: Exception) -> dict:
    """Summarise an analysis that raised, so the scan gets a status and the build goes on."""
    return {
        "scan_hash": scan["scan_hash"], "params_hash": params_hash, "status": "failed",
        "reason": f"analysis raised {type(error).__name__}: {error}", "warnings": "", "n_slices": 0, "n_passing": 0,
    }


def _stored_files_exist(summary: dict) -> bool:
    needed = [summary.get("slices_file"), summary.get("mask_file")]
    return all(Path(path).exists() for path in needed if path)


def _log_analysis(logger: logging.Logger, scan: dict, summary: dict) -> None:
    source = "cached" if summary["cached"] else "analysed"
    if summary["status"] == "analysed":
        logger.info("scan %s %s: %d of %d slices pass", scan["relative_path"], source,
                    summary["n_passing"], summary["n_slices"])
    else:
        cached = " (cached)" if summary["cached"] else ""
        logger.warning("scan %s%s: status %s, %s", scan["relative_path"], cached, summary["status"], summary["reason"])
    if summary.get("warnings"):
        logger.warning("scan %s: %s", scan["relative_path"], summary["warnings"])


CANDIDATE_METRICS = ("area_fraction", "sharpness", "intensity_mean", "n_components")


def collect_candidates(context: BuildContext, scans: list[dict], analyses: dict[str, dict],
                       reports: list[SpeciesReport]) -> tuple[pa.Table, list[SpeciesReport]]:
    """Gather the passing slices of every analysed scan and recount usable specimens.

    Returns the candidate table (one row per passing slice, with species,
    specimen, scan and quality) and the species reports recounted so that a
    specimen counts only when it has passing slices.
    """
    tables = []
    for scan in scans:
        summary = analyses.get(scan["relative_path"])
        if summary is None or summary["status"] != "analysed" or summary["n_passing"] == 0:
            continue
        table = pq.read_table(summary["slices_file"], columns=["scan_hash", "view", "slice_index", "passed",
                                                              *CANDIDATE_METRICS])
        table = table.filter(table["passed"]).drop(["passed"])
        n = table.num_rows
        table = table.append_column("species", pa.array([scan["species"]] * n, pa.string()))
        table = table.append_column("specimen", pa.array([scan["specimen"]] * n, pa.string()))
        table = table.append_column("relative_path", pa.array([scan["relative_path"]] * n, pa.string()))
        table = table.append_column("quality", table["area_fraction"])
        tables.append(table)
    candidates = pa.concat_tables(tables) if tables else _empty_candidates()

    usable = sorted({(s, p) for s, p in zip(candidates["species"].to_pylist(), candidates["specimen"].to_pylist())})
    recounted = select_species(
        [(scan["species"], scan["specimen"]) for scan in scans if scan["species"] and scan["status"] != "removed"
         and scan["status"] not in ("unparsed", "duplicate")],
        context.config.min_specimens,
        usable=usable,
    )
    before = {report.species: report for report in reports}
    final = []
    for report in recounted:
        # A species excluded before analysis keeps that reason.
        if not before[report.species].included:
            final.append(before[report.species])
            continue
        if not report.included:
            context.logger.warning("species %s excluded after analysis: %s", report.species, report.reason)
        final.append(report)
    included = {report.species for report in final if report.included}
    mask = pc.is_in(candidates["species"], value_set=pa.array(sorted(included), pa.string()))
    return candidates.filter(mask), final


def _empty_candidates() -> pa.Table:
    return pa.table({
        "scan_hash": pa.array([], pa.string()), "view": pa.array([], pa.string()),
        "slice_index": pa.array([], pa.int32()), "area_fraction": pa.array([], pa.float64()),
        "sharpness": pa.array([], pa.float64()), "intensity_mean": pa.array([], pa.float64()),
        "n_components": pa.array([], pa.int32()), "species": pa.array([], pa.string()),
        "specimen": pa.array([], pa.string()), "relative_path": pa.array([], pa.string()),
        "quality": pa.array([], pa.float64()),
    })


def specimen_slice_counts(candidates: pa.Table) -> dict[tuple[str, str], int]:
    """Return passing slices per (species, specimen)."""
    grouped = candidates.group_by(["species", "specimen"]).aggregate([("slice_index", "count")])
    return {
        (species, specimen): int(count)
        for species, specimen, count in zip(
            grouped["species"].to_pylist(), grouped["specimen"].to_pylist(), grouped["slice_index_count"].to_pylist()
        )
    }


def split_specimens(context: BuildContext, candidates: pa.Table,
                    reports: list[SpeciesReport]) -> tuple[SplitPlan, list[SpeciesReport]]:
    """Assign whole specimens to splits with CP-SAT, keeping earlier assignments unless asked to resplit."""
    config, logger = context.config, context.logger
    counts = specimen_slice_counts(candidates)
    specimens = [SpecimenSlices(species, specimen, n) for (species, specimen), n in sorted(counts.items())]
    existing = {key: split for key, (split, _build) in context.previous.assignments.items()}
    plan = assign_splits(
        specimens, test_fraction=config.test_fraction, val_target=config.val_target, val_cap=config.val_cap,
        seed=config.seed, existing=existing, resplit=config.resplit,
    )
    updated = []
    for report in reports:
        if report.included and report.species in plan.excluded:
            reason = f"{report.reason}; split impossible: {plan.excluded[report.species]}"
            report = replace(report, included=False, reason=reason)
            logger.warning("species %s excluded: %s", report.species, reason)
        updated.append(report)
    for species, note in sorted(plan.notes.items()):
        logger.warning("species %s: %s", species, note)
    for (species, specimen), split in sorted(plan.assignments.items()):
        kept = existing.get((species, specimen)) == split and not config.resplit
        logger.info("specimen %s %s -> %s%s", species, specimen, split, " (kept)" if kept else "")
    return plan, updated


def write_scan_rows(context: BuildContext, connection, scans: list[dict], analyses: dict[str, dict]) -> None:
    """Record every scan of this build with its status, and store the slice rows of its analysis."""
    rows = []
    for scan in scans:
        summary = analyses.get(scan["relative_path"], {})
        shape = summary.get("shape") or [None, None, None]
        rows.append({
            "build_id": context.build_id, "relative_path": scan["relative_path"], "scan_hash": scan["scan_hash"],
            "file_name": scan["file_name"], "species": scan["species"], "specimen": scan["specimen"],
            "variant": scan["variant"], "size_bytes": scan["size_bytes"], "change": scan["change"],
            "status": scan["status"], "reason": scan["reason"], "warnings": summary.get("warnings") or None,
            "shape_x": shape[0], "shape_y": shape[1], "shape_z": shape[2],
            "voxel_size": summary.get("voxel_size"),
            "source_shape": json.dumps(summary["source_shape"]) if summary.get("source_shape") else None,
            "source_dtype": summary.get("source_dtype"), "source_orientation": summary.get("source_orientation"),
            "resampled": summary.get("resampled"), "clip_low": _finite(summary.get("clip_low")),
            "clip_high": _finite(summary.get("clip_high")), "threshold": _finite(summary.get("threshold")),
            "threshold_method": summary.get("threshold_method"), "nonfinite_voxels": summary.get("nonfinite_voxels"),
            "mask_voxels": summary.get("mask_voxels"), "n_slices": summary.get("n_slices"),
            "n_passing": summary.get("n_passing"), "params_hash": summary.get("params_hash"),
            "analysis_cached": summary.get("cached"),
        })
    insert_rows(connection, "scan_history", rows)
    analysed = [s for s in analyses.values() if s.get("slices_file")]
    store_slice_rows(connection, [s["slices_file"] for s in analysed])
    prune_slice_rows(connection, {(s["scan_hash"], s["params_hash"]) for s in analysed})


def _finite(value):
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def write_split_rows(context: BuildContext, connection, plan: SplitPlan, candidates: pa.Table) -> None:
    """Record this build's split of every specimen, with the build that first placed it there."""
    counts = specimen_slice_counts(candidates)
    rows = []
    for (species, specimen), split in sorted(plan.assignments.items()):
        earlier = context.previous.assignments.get((species, specimen))
        assigned_in = earlier[1] if earlier and earlier[0] == split else context.build_id
        rows.append({
            "build_id": context.build_id, "species": species, "specimen": specimen, "split": split,
            "passing_slices": counts.get((species, specimen), 0), "assigned_in": assigned_in,
        })
    insert_rows(connection, "split_history", rows)
