"""The ``build-dataset`` Prefect flow: scans folder in, slice dataset and catalogue out."""

# No "from __future__ import annotations" here: a served flow is pickled by value
# into the process that runs it, and its parameter model must find BuildConfig
# in the annotation itself, not by name in this module.

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from catalog.checks import LeakageError, check_leakage
from catalog.records import insert_rows, read_previous_state
from catalog.store import build_lock, open_writer
from flows import export_stage, stages
from flows.config import BuildConfig
from flows.runners import make_task_runner, runner_mismatch
from tasks.analyse import ANALYSIS_CODE_VERSION
from tasks import publish
from tasks.manifest import (
    class_index, dataset_hash, repeated_images, write_classes, write_manifest, write_split_metadata,
)


def storage_folder(out_dir: Path, config: BuildConfig) -> Path:
    """Return the folder for cached analyses: the configured one or ``OUT_DIR/storage``."""
    return Path(config.storage_dir) if config.storage_dir else out_dir / "storage"


@flow(name="build-dataset", log_prints=False, validate_parameters=True)
def build_dataset(scans_dir: str, out_dir: str, config: BuildConfig = BuildConfig()) -> dict:
    """Build a leak-free, balanced slice dataset and its catalogue from a folder of scans.

    Returns a summary with the build id, the dataset hash and the counts of
    analyses run and reused.
    """
    logger = get_run_logger()
    mismatch = runner_mismatch(config, FlowRunContext.get().task_runner)
    if mismatch:
        logger.warning(mismatch)
    scans_root, out = Path(scans_dir).resolve(), Path(out_dir).resolve()
    if not scans_root.is_dir():
        raise FileNotFoundError(f"scans folder {scans_root} not found; pass an existing folder of .nii/.nii.gz/.tif files")
    with build_lock(out):
        previous = read_previous_state(out)
        build_id = previous.last_build_id + 1
        started = datetime.now(timezone.utc).replace(tzinfo=None)
        context = stages.BuildContext(
            build_id=build_id, scans_root=scans_root, out=out, storage=storage_folder(out, config),
            config=config, previous=previous, logger=logger,
        )
        recovered = publish.recover(out, previous.last_successful_build_id)
        if recovered:
            logger.warning("output folder %s: %s", out, recovered)
        try:
            return _run_build(context, started)
        except Exception as error:
            _record_failed_build(context, started, error)
            # Staged folders of a build whose catalogue was not committed are
            # useless; those of a committed one are swapped in by the next run.
            if read_previous_state(out).last_successful_build_id != build_id:
                publish.discard(out)
            raise


def _run_build(context: stages.BuildContext, started: datetime) -> dict:
    logger = context.logger
    logger.info("build %d: scans %s -> %s", context.build_id, context.scans_root, context.out)
    scans = stages.discover(context)
    species_reports = stages.select_included_species(context, scans)
    analyses = stages.analyse(context, scans, species_reports)
    candidates, species_reports = stages.collect_candidates(context, scans, analyses, species_reports)
    plan, species_reports = stages.split_specimens(context, candidates, species_reports)

    with open_writer(context.out) as connection:
        stages.write_scan_rows(context, connection, scans, analyses)
        stages.write_split_rows(context, connection, plan, candidates)
        # The leakage check runs before any image is written, so a leaking
        # split never reaches the output folder.
        check_leakage(connection, context.build_id)

        # Images go to a staging folder; the live split folders keep the
        # previous build until this build's catalogue is committed.
        staging = publish.start(context.out, context.build_id)
        exports = export_stage.export(context, candidates, plan, scans, analyses)
        insert_rows(connection, "export_history", exports.rows)
        check_leakage(connection, context.build_id)

        selected = [row for row in exports.rows if row["status"] != "dropped"]
        removed = publish.removed_images(context.out, {row["file"] for row in selected})
        files = [(row["file"], row["sha256"]) for row in selected]
        digest = dataset_hash(files)
        classes = class_index(row["species"] for row in selected)
        write_split_metadata(staging, exports.metadata, classes)
        # Images are written without a per-file fsync; one sync makes them
        # durable before the catalogue that lists them is committed.
        os.sync()

        export_stage.write_species_rows(context, connection, species_reports, plan)
        finished = datetime.now(timezone.utc).replace(tzinfo=None)
        build_row = export_stage.build_row(context, started, finished, scans, analyses, exports, removed, digest)
        insert_rows(connection, "builds", [build_row])

    publish.publish(context.out)
    write_manifest(context.out, files)
    write_classes(context.out, classes)
    report = export_stage.write_report(context, species_reports, plan, scans, analyses, selected, digest)
    for (species, specimen), count in repeated_images(selected).items():
        logger.warning(
            "%s %s: %d images repeat the bytes of another image of this specimen (two of its scans give "
            "identical slices), so those slices count twice in its split", species, specimen, count,
        )

    logger.info(
        "build %d succeeded: %d images (%d written, %d unchanged, %d removed), %d analyses run, %d cached, "
        "dataset hash %s",
        context.build_id, len(selected), build_row["images_written"], build_row["images_unchanged"], len(removed),
        build_row["analyses_run"], build_row["analyses_cached"], digest,
    )
    return {
        "build_id": context.build_id,
        "dataset_hash": digest,
        "images": len(selected),
        "analyses_run": build_row["analyses_run"],
        "analyses_cached": build_row["analyses_cached"],
        "report": str(report),
    }


def _record_failed_build(context: stages.BuildContext, started: datetime, error: Exception) -> None:
    """Append a failed build row, leaving every table of the last good build as it was."""
    kind = "leakage" if isinstance(error, LeakageError) else type(error).__name__
    context.logger.error("build %d failed (%s): %s", context.build_id, kind, error)
    row = {
        "build_id": context.build_id,
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "status": "failed",
        "message": str(error),
        "code_version": ANALYSIS_CODE_VERSION,
        "analysis_hash": context.config.analysis_hash(),
        "params": json.dumps(context.config.model_dump(mode="json"), sort_keys=True),
        "scans_dir": str(context.scans_root),
        "leakage_check": f"failed: {error}" if isinstance(error, LeakageError) else None,
    }
    try:
        with open_writer(context.out) as connection:
            insert_rows(connection, "builds", [row])
    except Exception as record_error:  # the original error matters more than this one
        context.logger.error("could not record failed build %d: %s", context.build_id, record_error)


def run_build(scans_dir: str, out_dir: str, config: BuildConfig) -> dict:
    """Run :func:`build_dataset` with the task runner that ``config.task_runner`` names."""
    runner = make_task_runner(config)
    return build_dataset.with_options(task_runner=runner)(scans_dir=scans_dir, out_dir=out_dir, config=config)
