"""Build safety: two builds into one output folder, and a build killed during export."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from prefect.settings import PREFECT_API_URL

from tasks.export import decode_image
from tasks.manifest import dataset_hash

from conftest import copy_real_cores, run_cli

SUBSET = ("Bone_", "Cement_")
REPO = Path(__file__).resolve().parents[1]


def _start_build(scans: Path, out: Path, home: Path, *extra: str) -> subprocess.Popen:
    """Start ``fossil-slices build`` in a child process on the session's Prefect server."""
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(home),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    command = [sys.executable, "-m", "flows.cli", "build", str(scans), str(out), "--quiet", *extra]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _staged_images(out: Path) -> list[Path]:
    return sorted((out / ".staging").rglob("*.png"))


def _specimen_splits(out: Path) -> dict[str, set[str]]:
    """{species/specimen: splits whose live folders hold its images}."""
    found: dict[str, set[str]] = {}
    for path in _images(out):
        split, species = path.relative_to(out).parts[:2]
        specimen = path.name.split("__")[0].split("_")[1]
        found.setdefault(f"{species}/{specimen}", set()).add(split)
    return found


def _wait_until(condition, process: subprocess.Popen, description: str, patience_s: float = 600.0) -> None:
    deadline = time.monotonic() + patience_s
    while not condition():
        assert process.poll() is None, f"build exited with {process.returncode} before {description}"
        assert time.monotonic() < deadline, f"timed out waiting for {description}"
        time.sleep(0.05)


def _images(out: Path) -> list[Path]:
    return sorted(path for split in ("train", "val", "test") for path in (out / split).rglob("*.png"))


def _leftovers(out: Path) -> list[str]:
    """Temporary files of interrupted writes anywhere in the output folder."""
    return sorted(
        path.relative_to(out).as_posix() for path in out.rglob("*")
        if path.is_file() and (path.name.startswith(".tmp-") or path.suffix == ".tmp" or path.name.endswith(".writing"))
    )


def _check_intact(out: Path) -> str:
    """Assert every image decodes and matches the manifest and the catalogue; return the dataset hash."""
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {entry["file"]: entry["sha256"] for entry in manifest["files"]}
    on_disk = {}
    for path in _images(out):
        data = path.read_bytes()
        assert decode_image(data, "png").ndim == 3, path
        on_disk[path.relative_to(out).as_posix()] = hashlib.sha256(data).hexdigest()
    assert on_disk == listed
    assert dataset_hash(listed.items()) == manifest["dataset_hash"]
    connection = duckdb.connect(str(out / "catalogue.duckdb"), read_only=True)
    try:
        recorded = connection.execute("SELECT dataset_hash FROM latest_build").fetchone()[0]
        exported = connection.execute("SELECT count(*) FROM exported_files").fetchone()[0]
    finally:
        connection.close()
    assert (recorded, exported) == (manifest["dataset_hash"], len(listed))
    return recorded


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory) -> Path:
    scans = copy_real_cores(tmp_path_factory.mktemp("safety-scans"), SUBSET)
    return scans


@pytest.mark.slow
def test_second_build_exits_4_while_first_runs(real_subset, tmp_path, capsys):
    out = tmp_path / "out"
    first = _start_build(real_subset, out, tmp_path / "home")
    lock = out / ".build.lock"
    _wait_until(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), first, "the lock")

    assert run_cli("build", real_subset, out, "--quiet") == 4
    assert f"another build is running in {out}" in capsys.readouterr().err

    output, _ = first.communicate(timeout=900)
    assert first.returncode == 0, output
    _check_intact(out)
    connection = duckdb.connect(str(out / "catalogue.duckdb"), read_only=True)
    try:
        assert connection.execute("SELECT build_id, status FROM builds").fetchall() == [(1, "succeeded")]
    finally:
        connection.close()


@pytest.mark.slow
def test_build_killed_during_export_recovers(real_subset, tmp_path):
    reference = tmp_path / "reference"
    assert run_cli("build", real_subset, reference, "--quiet") == 0

    out = tmp_path / "out"
    killed = _start_build(real_subset, out, tmp_path / "home")
    _wait_until(lambda: len(_staged_images(out)) >= 50, killed, "50 staged images")
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    # The catalogue and the split folders are swapped in only when a build finishes.
    assert not (out / "catalogue.duckdb").exists()
    assert _images(out) == []

    # A write cut off before its rename leaves its temporary file behind.
    folder = _staged_images(out)[0].parent
    (folder / f".{_staged_images(out)[0].name}.k1ll3d.tmp").write_bytes(b"\x89PNG cut off")

    assert run_cli("build", real_subset, out, "--quiet") == 0
    assert _check_intact(out) == _check_intact(reference)
    assert _leftovers(out) == []
    assert not (out / ".staging").exists()


@pytest.mark.slow
def test_killed_resplit_keeps_previous_dataset(real_subset, tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", real_subset, out, "--quiet") == 0
    before = {path.relative_to(out): path.read_bytes() for path in _images(out)}
    first_hash = _check_intact(out)

    # A new split moves specimens between splits: a half-written new split
    # mixed into the old folders would put one specimen in two splits.
    killed = _start_build(real_subset, out, tmp_path / "home", "--resplit", "--seed", "7")
    _wait_until(lambda: len(_staged_images(out)) >= 50, killed, "50 staged images")
    killed.send_signal(signal.SIGKILL)
    killed.communicate()

    assert {path.relative_to(out): path.read_bytes() for path in _images(out)} == before
    assert _check_intact(out) == first_hash
    assert all(len(splits) == 1 for splits in _specimen_splits(out).values())

    assert run_cli("build", real_subset, out, "--quiet", "--resplit", "--seed", "7") == 0
    _check_intact(out)
    assert all(len(splits) == 1 for splits in _specimen_splits(out).values())
    assert not (out / ".staging").exists()
