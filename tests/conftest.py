"""Shared fixtures: one Prefect test server per session and builds of the real scans."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from flows.cli import main  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_CORES = DATA / "real-cores"
REAL_SCANS = DATA / "real-scans"
REAL_TIFF = DATA / "real-tiff"


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """Run every flow of the session against one temporary Prefect server."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


def run_cli(*args: str) -> int:
    """Run the fossil-slices command line in this process and return its exit code."""
    return main([str(arg) for arg in args] + [])


def copy_real_cores(target: Path, prefixes: tuple[str, ...]) -> Path:
    """Copy the real-cores scans whose names start with one of ``prefixes`` into ``target``."""
    assert REAL_CORES.is_dir(), f"real scans not found at {REAL_CORES}"
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(REAL_CORES.iterdir()):
        if path.name.startswith(prefixes):
            shutil.copy(path, target / path.name)
    return target


def flip_last_byte_keeping_mtime(path: Path) -> None:
    """Change one byte of ``path`` in place, keeping its size and modification time."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture(scope="session")
def real_cores_build(tmp_path_factory) -> Path:
    """Output folder of one build of the real-cores collection, shared by the session's tests.

    Tests must not change it; copy it first.
    """
    assert REAL_CORES.is_dir(), f"real scans not found at {REAL_CORES}"
    out = tmp_path_factory.mktemp("real-cores-build")
    assert run_cli("build", REAL_CORES, out, "--quiet") == 0
    return out


@pytest.fixture
def real_cores_copy(real_cores_build, tmp_path) -> Path:
    """A private copy of the real-cores build that a test may change."""
    target = tmp_path / "out"
    shutil.copytree(real_cores_build, target)
    return target
