"""Served deployments on the session's Prefect server: manual build, rebuild on new scans, status."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from deployments.changes import compare_scans, describe_status
from flows.config import BuildConfig
from tasks.synthetic import write_collection

from conftest import flip_last_byte_keeping_mtime, run_cli

SMALL = ("--target-per-species", "120", "--val-target", "20", "--val-cap", "40")
SHAPE = (32, 32, 32)


def _collection(folder: Path, specimens: int) -> list[Path]:
    return write_collection(folder, n_species=2, specimens_per_species=specimens, shape=SHAPE, seed=3)


def _query(out: Path, sql: str) -> list[tuple]:
    connection = duckdb.connect(str(out / "catalogue.duckdb"), read_only=True)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def _wait_for_deployments(names: list[str], server: subprocess.Popen, log: Path, patience_s: float = 300.0) -> dict:
    """Return {name: deployment} once the serve process has registered every name."""
    found = {}
    deadline = time.monotonic() + patience_s
    with get_client(sync_client=True) as client:
        while len(found) < len(names):
            assert server.poll() is None, f"fossil-slices serve exited with code {server.returncode}:\n" + \
                log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"deployments {names} not registered; found {sorted(found)}"
            for name in names:
                try:
                    found[name] = client.read_deployment_by_name(name)
                except Exception:  # not registered yet
                    time.sleep(1.0)
    return found


@pytest.fixture
def served(tmp_path):
    """A ``fossil-slices serve`` process on the session's Prefect server, and its folders."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    _collection(scans, specimens=4)
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_RUNNER_POLL_FREQUENCY="2", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    command = [sys.executable, "-m", "flows.cli", "serve", "--scans", str(scans), "--out", str(out),
               "--interval", "720", *SMALL]
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        yield scans, out, server
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _run(name: str) -> None:
    flow_run = run_deployment(name=name, timeout=900, poll_interval=2)
    assert flow_run.state.is_completed(), f"{name} ended {flow_run.state.type}: {flow_run.state.message}"


def test_served_rebuild_analyses_new_scan_only(served, tmp_path):
    scans, out, server = served
    deployments = _wait_for_deployments(
        ["build-dataset/build-dataset", "rebuild-on-new-scans/rebuild-on-new-scans"], server, tmp_path / "serve.log"
    )

    # The form of the manual build shows every build parameter, with the served values as defaults.
    build = deployments["build-dataset/build-dataset"]
    schema_fields = set(build.parameter_openapi_schema["definitions"]["BuildConfig"]["properties"])
    assert schema_fields == set(BuildConfig.model_fields)
    assert build.parameters["config"]["target_per_species"] == 120
    rebuild = deployments["rebuild-on-new-scans/rebuild-on-new-scans"]
    assert rebuild.schedules[0].schedule.interval == datetime.timedelta(minutes=720)

    _run("build-dataset/build-dataset")
    assert _query(out, "SELECT build_id, analyses_run, analyses_cached FROM builds") == [(1, 8, 0)]

    extra = tmp_path / "extra"
    _collection(extra, specimens=5)
    shutil.copy(extra / "Alveolina_specimen5.nii.gz", scans / "Alveolina_specimen5.nii.gz")
    _run("rebuild-on-new-scans/rebuild-on-new-scans")
    assert _query(out, "SELECT build_id, status, scans_added, analyses_run, analyses_cached FROM builds "
                       "ORDER BY build_id") == [(1, "succeeded", 8, 8, 0), (2, "succeeded", 1, 1, 8)]
    analysed = _query(out, "SELECT relative_path, change FROM scans WHERE NOT analysis_cached")
    assert analysed == [("Alveolina_specimen5.nii.gz", "added")]

    _run("rebuild-on-new-scans/rebuild-on-new-scans")
    assert _query(out, "SELECT max(build_id), count(*) FROM builds") == [(2, 2)]


def test_changes_new_changed_removed(tmp_path):
    scans, out = tmp_path / "scans", tmp_path / "out"
    _collection(scans, specimens=4)
    assert run_cli("build", scans, out, "--quiet", *SMALL) == 0

    # Same path, different bytes: a scan of another specimen copied over it.
    shutil.copy(scans / "Alveolina_specimen2.nii.gz", scans / "Alveolina_specimen1.nii.gz")
    (scans / "Chrysalidina_specimen4.nii.gz").rename(scans / "Chrysalidina_specimen9.nii.gz")
    changes = compare_scans(scans, out)
    assert (changes.new, changes.changed, changes.removed, changes.unchanged) == (
        ["Chrysalidina_specimen9.nii.gz"], ["Alveolina_specimen1.nii.gz"], ["Chrysalidina_specimen4.nii.gz"], 6
    )


def test_changes_reuse_hash_of_untouched_file(tmp_path):
    scans, out = tmp_path / "scans", tmp_path / "out"
    _collection(scans, specimens=4)
    assert run_cli("build", scans, out, "--quiet", *SMALL) == 0
    # Files written just now are too fresh to trust their times; age them.
    for path in scans.iterdir():
        os.utime(path, (time.time() - 60, time.time() - 60))
    time.sleep(2.1)

    first = compare_scans(scans, out)
    second = compare_scans(scans, out)
    assert (first.hashed, second.hashed, second.hashes_reused) == (8, 0, 8)

    # An in-place edit that restores the old modification time must still be seen.
    flip_last_byte_keeping_mtime(scans / "Alveolina_specimen3.nii.gz")
    third = compare_scans(scans, out)
    assert third.changed == ["Alveolina_specimen3.nii.gz"]
    assert third.hashed == 1


def test_status_lists_waiting_scans(tmp_path):
    scans, out = tmp_path / "scans", tmp_path / "out"
    _collection(scans, specimens=4)
    assert run_cli("build", scans, out, "--quiet", *SMALL) == 0
    (scans / "Alveolina_specimen2.nii.gz").unlink()

    text = describe_status(out)
    dataset_hash = _query(out, "SELECT dataset_hash FROM builds WHERE build_id = 1")[0][0]
    assert "last build 1: succeeded" in text
    assert f"dataset hash {dataset_hash}" in text
    assert "  removed Alveolina_specimen2.nii.gz" in text
    assert "0 new, 0 changed, 1 removed, 7 unchanged" in text


def test_status_without_catalogue_exits_4(tmp_path, capsys):
    assert run_cli("status", "--out", tmp_path / "nothing") == 4
    assert "no catalogue" in capsys.readouterr().err
