"""Task runners: a build on processes or on a local Dask cluster equals the threads build byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.config import BuildConfig
from flows.runners import make_task_runner, runner_mismatch

from conftest import copy_real_cores, run_cli

# Two species of the real collection keep CI time down; Bone brings the
# second export of one specimen, which must follow it into its split.
SUBSET = ("Bone_", "Cement_")
SMALL = ("--target-per-species", "1500", "--val-target", "200", "--val-cap", "300")


def _tree(out: Path) -> dict[str, str]:
    """Return {path below out: SHA-256} of every file in the split folders."""
    files = {}
    for split in ("train", "val", "test"):
        for path in sorted((out / split).rglob("*")):
            if path.is_file():
                files[path.relative_to(out).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _dataset_hash(out: Path) -> str:
    return json.loads((out / "manifest.json").read_text())["dataset_hash"]


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory) -> Path:
    scans = copy_real_cores(tmp_path_factory.mktemp("real-subset"), SUBSET)
    assert len(list(scans.iterdir())) == 17
    return scans


@pytest.fixture(scope="module")
def threads_build(real_subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("threads") / "out"
    assert run_cli("build", real_subset, out, "--quiet", "--task-runner", "threads", *SMALL) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["dask", "processes"])
def test_runner_output_equals_threads(runner, real_subset, threads_build, tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", real_subset, out, "--quiet", "--task-runner", runner, "--max-workers", "2", *SMALL) == 0
    expected = _tree(threads_build)
    assert len(expected) > 1000
    assert _dataset_hash(out) == _dataset_hash(threads_build)
    assert _tree(out) == expected


def test_dask_runner_is_local_two_process_cluster():
    runner = make_task_runner(BuildConfig(task_runner="dask", max_workers=2))
    assert runner.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                     "host": "127.0.0.1", "dashboard_address": None}


def test_dask_runner_uses_given_scheduler():
    runner = make_task_runner(BuildConfig(task_runner="dask", dask_address="tcp://127.0.0.1:8786"))
    assert runner.address == "tcp://127.0.0.1:8786"


def test_runner_mismatch_named():
    message = runner_mismatch(BuildConfig(task_runner="dask"), ThreadPoolTaskRunner(max_workers=2))
    assert message is not None
    assert "'dask'" in message
    assert "run on threads" in message


def test_runner_match_silent():
    assert runner_mismatch(BuildConfig(task_runner="threads"), ThreadPoolTaskRunner(max_workers=2)) is None
    assert runner_mismatch(BuildConfig(task_runner="processes"), ProcessPoolTaskRunner(max_workers=2)) is None
    assert runner_mismatch(BuildConfig(task_runner="dask"), make_task_runner(BuildConfig(task_runner="dask"))) is None
