"""The ``rebuild-on-new-scans`` flow: build only when the scans folder differs from the catalogue."""

# No "from __future__ import annotations" here: a served flow is pickled by value
# into the process that runs it, and its parameter model must find BuildConfig
# in the annotation itself, not by name in this module.

from pathlib import Path

from prefect import flow, get_run_logger

from catalog.store import CatalogueError, build_lock
from deployments.changes import compare_scans
from flows.build import run_build
from flows.config import BuildConfig

NOTHING_TO_BUILD = "no new, changed or removed scans; nothing to build"


def _build_running(out_dir: Path) -> str | None:
    """Return the lock message when another build holds ``out_dir``, else None."""
    try:
        with build_lock(out_dir):
            return None
    except CatalogueError as error:
        return str(error)


@flow(name="rebuild-on-new-scans", log_prints=False, validate_parameters=True)
def rebuild_on_new_scans(scans_dir: str, out_dir: str, config: BuildConfig = BuildConfig()) -> dict:
    """Compare ``scans_dir`` with the catalogue in ``out_dir`` and run ``build-dataset`` when they differ.

    A scan is new when its path is not in the latest successful build,
    changed when its SHA-256 differs, and removed when the build has it and
    the folder does not. The build runs as a subflow with the task runner that
    ``config`` names.

    Returns
    -------
    dict
        ``built`` (bool), the ``new``, ``changed`` and ``removed`` relative
        paths, and ``build``: the build summary, or None when nothing was built.
    """
    logger = get_run_logger()
    scans_root, out = Path(scans_dir).resolve(), Path(out_dir).resolve()
    changes = compare_scans(scans_root, out)
    result = {"built": False, "new": changes.new, "changed": changes.changed, "removed": changes.removed,
              "build": None}
    logger.info("scans folder %s: %s (%d hashed, %d hashes reused)", scans_root, changes.summary(),
                changes.hashed, changes.hashes_reused)
    if not changes.any:
        logger.info(NOTHING_TO_BUILD)
        return result
    for label, paths in (("new", changes.new), ("changed", changes.changed), ("removed", changes.removed)):
        for path in paths:
            logger.info("scan %s is %s", path, label)

    busy = _build_running(out)
    if busy is not None:
        # A scheduled check must not fail because a manual build is running;
        # the next check finds whatever that build left to do.
        logger.warning("%s; not building now, the next check will look again", busy)
        return result
    result["build"] = run_build(str(scans_root), str(out), config)
    result["built"] = True
    return result
