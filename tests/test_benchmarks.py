"""Each benchmark still runs at its small CI size; the figures themselves are not checked here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# Script and a line its report must contain, so a silent early exit fails.
CASES = [
    ("analysis.py", "peak RSS"),
    ("catalogue.py", "slice rows"),
    ("export.py", "images/s"),
    ("incremental.py", "rebuild"),
    ("runners.py", "speed-up"),
    ("split_quality.py", "CV of selected slices"),
    ("split_scale.py", "optimal"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "expected"), CASES, ids=[case[0] for case in CASES])
def test_benchmark_quick_run(script, expected, tmp_path):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    # A benchmark that builds must start its own temporary Prefect server, not
    # use the test session's.
    env.pop("PREFECT_API_URL", None)
    finished = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True, text=True, env=env, cwd=BENCHMARKS.parent, timeout=1200,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert expected in finished.stdout, finished.stdout[-3000:]
