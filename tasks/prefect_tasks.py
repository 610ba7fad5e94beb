"""Thin Prefect wrappers around the per-scan steps.

The analysis task is cached on the scan's content hash and the analysis
parameters hash (which includes the analysis code version). The key is built
from those two strings only, never from an array, so a renamed or moved
file reuses its analysis, and an edited file or a changed parameter does not.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy

from tasks.export_scan import export_scan
from tasks.scan_analysis import run_scan_analysis

RESULTS_FOLDER = "results"


def analysis_cache_key(context, parameters: dict) -> str:
    """Return the cache key of one scan analysis: content hash plus parameters hash."""
    return f"analysis-{parameters['scan_hash']}-{parameters['params_hash']}"


@task(name="analyse-scan", persist_result=True, result_serializer="json",
      task_run_name="analyse {scan_name}")
def analyse_scan(scan_name: str, path: str, scan_hash: str, params: dict, params_hash: str, storage_dir: str) -> dict:
    """Analyse one scan and store its slice rows; cached, see :func:`analysis_cache_key`."""
    summary = run_scan_analysis(path, scan_hash, params, params_hash, storage_dir)
    summary["scan_name"] = scan_name
    return summary


def cached_analyse_scan(storage_dir: Path, refresh: bool = False):
    """Return :func:`analyse_scan` with its cache and results in ``storage_dir``.

    Every worker must reach ``storage_dir``, so that a cache record written by
    one process is found by the next build on any machine.
    """
    # Without a separate key storage, Prefect writes each cache record and its
    # result as one file named by the cache key, and finds it again relative to
    # the storage folder. A separate key storage would record absolute paths,
    # which break when the output folder is moved or mounted elsewhere.
    results = Path(storage_dir) / RESULTS_FOLDER
    policy = CacheKeyFnPolicy(cache_key_fn=analysis_cache_key)
    return analyse_scan.with_options(cache_policy=policy, result_storage=results, refresh_cache=refresh)


@task(name="export-scan", cache_policy=NO_CACHE, task_run_name="export {scan_name}")
def export_scan_images(scan_name: str, scan_path: str, summary: dict, requests: list[dict], out_dir: str,
                       render: dict, image_format: str, tiff_voxel_size) -> list[dict]:
    """Write the selected images of one scan; see :func:`tasks.export_scan.export_scan`."""
    return export_scan(scan_path, summary, requests, out_dir, render, image_format, tiff_voxel_size)
