"""Speed-up of a build on a local Dask cluster with 2 worker processes over 1.

Run ``python benchmarks/runners.py`` for 16 synthetic scans (4 species x 4
specimens, 64^3 voxels), or add ``--quick`` for 8 scans of 32^3. Each build
starts from an empty output folder, so every scan is analysed. Prints the wall
time and the flow time (from the catalogue) of both builds and the speed-up.
The speed-up cannot exceed the number of free CPU cores, which it also prints.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.synthetic import write_collection  # noqa: E402


def timed_build(scans: Path, out: Path, workers: int, prefect_home: Path) -> tuple[float, float, str]:
    """Build on a local Dask cluster of ``workers`` processes; return wall s, flow s and the dataset hash."""
    env = dict(os.environ, PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    command = [sys.executable, "-m", "flows.cli", "build", str(scans), str(out), "--quiet",
               "--task-runner", "dask", "--max-workers", str(workers)]
    start = time.perf_counter()
    finished = subprocess.run(command, env=env, cwd=Path(__file__).resolve().parent.parent,
                              capture_output=True, text=True)
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        sys.exit(f"build with {workers} workers failed with exit code {finished.returncode}:\n"
                 f"{finished.stderr[-2000:]}")
    connection = duckdb.connect(str(out / "catalogue.duckdb"), read_only=True)
    try:
        flow, digest = connection.execute(
            "SELECT epoch(finished_at - started_at), dataset_hash FROM builds ORDER BY build_id DESC LIMIT 1"
        ).fetchone()
    finally:
        connection.close()
    return wall, float(flow), digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 scans of 32^3 instead of 16 of 64^3")
    args = parser.parse_args(argv)
    n_species, side = (2, 32) if args.quick else (4, 64)

    with tempfile.TemporaryDirectory(prefix="runners-") as folder:
        root = Path(folder)
        scans = root / "scans"
        written = write_collection(scans, n_species=n_species, specimens_per_species=4, shape=(side,) * 3)
        print(f"{len(written)} scans of {side}^3 voxels; {len(os.sched_getaffinity(0))} CPU cores available, "
              f"load average {os.getloadavg()[0]:.1f}")
        one_worker = timed_build(scans, root / "one", 1, root / "prefect")
        two_workers = timed_build(scans, root / "two", 2, root / "prefect")

    for workers, (wall, flow, _digest) in ((1, one_worker), (2, two_workers)):
        print(f"dask, {workers} worker process{'es' if workers > 1 else ''}: wall {wall:7.1f} s, flow {flow:7.1f} s")
    print(f"speed-up of 2 workers over 1: wall {one_worker[0] / two_workers[0]:.2f}x, flow {one_worker[1] / two_workers[1]:.2f}x")
    print(f"same dataset hash: {one_worker[2] == two_workers[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
