"""Time a rebuild after one new scan against the first build of the same collection.

Run ``python benchmarks/incremental.py`` for 40 synthetic scans (8 species x 5
specimens, 48^3 voxels) plus one new scan, or add ``--quick`` for 12 scans of
32^3. Each build is a fresh ``fossil-slices build`` process, so its wall time
includes starting Prefect; the flow time from the catalogue leaves that out.
Prints both times of both builds, their ratios and how many analyses the
rebuild ran (the aim: exactly one, in at most 10% of the first build's time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.synthetic import write_collection  # noqa: E402


def run_build(scans: Path, out: Path, prefect_home: Path) -> float:
    """Run one build in a fresh process and return its wall time in seconds."""
    env = dict(os.environ, PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    command = [sys.executable, "-m", "flows.cli", "build", str(scans), str(out), "--quiet"]
    start = time.perf_counter()
    finished = subprocess.run(command, env=env, cwd=Path(__file__).resolve().parent.parent,
                              capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        sys.exit(f"build into {out} failed with exit code {finished.returncode}:\n{finished.stderr[-2000:]}")
    return seconds


def last_build(out: Path) -> dict:
    """Return the flow time in seconds, analyses run and images written of the last build in ``out``."""
    connection = duckdb.connect(str(out / "catalogue.duckdb"), read_only=True)
    try:
        seconds, run, written, total = connection.execute(
            "SELECT epoch(finished_at - started_at), analyses_run, images_written, images_total "
            "FROM builds ORDER BY build_id DESC LIMIT 1"
        ).fetchone()
    finally:
        connection.close()
    return {"flow_s": float(seconds), "analyses_run": run, "images_written": written, "images_total": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 scans of 32^3 instead of 40 of 48^3")
    parser.add_argument("--size", type=int, default=None,
                        help="edge of each scan in voxels (default 48, or 32 with --quick); "
                        "real micro-CT scans are several hundred voxels wide")
    args = parser.parse_args(argv)
    n_species, specimens, side = (3, 4, 32) if args.quick else (8, 5, 48)
    side = args.size or side

    with tempfile.TemporaryDirectory(prefix="incremental-") as folder:
        root = Path(folder)
        scans, out = root / "scans", root / "out"
        written = write_collection(scans, n_species=n_species, specimens_per_species=specimens, shape=(side,) * 3)
        # The new scan is the next specimen of the first species, from a larger collection of the same seed.
        extra = write_collection(root / "extra", n_species=1, specimens_per_species=specimens + 1, shape=(side,) * 3)
        print(f"{len(written)} scans of {side}^3 voxels; then 1 new scan ({extra[-1].name})")

        first_wall = run_build(scans, out, root / "prefect")
        first = last_build(out)
        shutil.copy(extra[-1], scans / extra[-1].name)
        second_wall = run_build(scans, out, root / "prefect")
        second = last_build(out)

    print(f"first build:  wall {first_wall:7.1f} s, flow {first['flow_s']:7.1f} s, "
          f"{first['analyses_run']} analyses, {first['images_written']} images written")
    print(f"rebuild:      wall {second_wall:7.1f} s, flow {second['flow_s']:7.1f} s, "
          f"{second['analyses_run']} analyses, {second['images_written']} of {second['images_total']} images written")
    print(f"ratio rebuild / first: wall {second_wall / first_wall:.3f}, flow {second['flow_s'] / first['flow_s']:.3f}")
    startup = first_wall - first["flow_s"]
    print(f"Prefect start and process overhead per build: about {startup:.1f} s of wall time")
    verdict = "met" if second["analyses_run"] == 1 and second["flow_s"] <= 0.10 * first["flow_s"] else "not met"
    print(f"target (1 analysis, flow time <= 10% of the first build): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
