"""Time a rebuild after one new scan against the first build of the same collection.

Run ``python benchmarks/incremental.py`` for 40 synthetic scans (8 species x 5
specimens, 128^3 voxels) plus one new scan, or add ``--quick`` for 12 scans of
32^3. ``--size N`` sets the scan edge; above 128 the scans are generated at
128^3 and resampled up (see :func:`write_scans`).

Each build is a fresh ``fossil-slices build`` process. By default both run
against one local Prefect server that the script starts on 127.0.0.1 with
``prefect server start``, the set-up the README gives for scheduled rebuilds.
With ``--temporary-server`` each build starts Prefect's temporary server
instead, as a command run without ``PREFECT_API_URL`` does.

Prints the wall time of both builds, the flow time recorded in the catalogue
(from the lock to the catalogue commit), their ratios and how many analyses the
rebuild ran. The aim: exactly one analysis, in at most 10% of the first
build's wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import duckdb
import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.synthetic import write_collection  # noqa: E402
from tasks.volume import scan_stem  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.10
# The synthetic generator slows down steeply above this edge (about 90 s per
# 256^3 scan), so larger scans are generated at this edge and resampled up.
GENERATED_MAX_EDGE = 128


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that no process listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def prefect_server(prefect_home: Path, log: Path, patience_s: float = 300.0):
    """Run ``prefect server start`` on 127.0.0.1 and yield its API URL; stop it on exit."""
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
               "--no-ui"]
    with open(log, "w") as handle:
        server = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + patience_s
        while True:
            if server.poll() is not None:
                sys.exit(f"prefect server start exited with code {server.returncode}:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"Prefect server on port {port} not healthy after {patience_s:.0f} s; see {log}")
            time.sleep(0.5)
        yield api_url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def write_scans(folder: Path, n_species: int, specimens: int, side: int, work: Path) -> list[Path]:
    """Write the synthetic collection with ``side``^3 voxels per scan; return the scan paths.

    Up to GENERATED_MAX_EDGE the generator writes the scans directly. Above
    it, each scan is generated at that edge, resampled up with linear
    interpolation and stored as an uncompressed uint16 ``.nii`` with voxels
    shrunk by the same factor, as a finer scan of the same fossil would be.
    """
    if side <= GENERATED_MAX_EDGE:
        return write_collection(folder, n_species=n_species, specimens_per_species=specimens, shape=(side,) * 3)
    generated = write_collection(work, n_species=n_species, specimens_per_species=specimens,
                                 shape=(GENERATED_MAX_EDGE,) * 3)
    folder.mkdir(parents=True, exist_ok=True)
    resampled = []
    for path in generated:
        image = nib.load(path)
        factor = side / GENERATED_MAX_EDGE
        voxels = ndimage.zoom(np.asarray(image.dataobj, dtype=np.uint8), factor, order=1)
        affine = image.affine.copy()
        affine[:3, :3] /= factor
        target = folder / f"{scan_stem(path.name)}.nii"
        nib.save(nib.Nifti1Image(voxels.astype(np.uint16) * 257, affine), target)
        path.unlink()
        resampled.append(target)
    return resampled


def run_build(scans: Path, out: Path, prefect_home: Path, api_url: str | None) -> float:
    """Run one build in a fresh process and return its wall time in seconds."""
    env = dict(os.environ, PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    env.pop("PREFECT_API_URL", None)
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    command = [sys.executable, "-m", "flows.cli", "build", str(scans), str(out), "--quiet"]
    start = time.perf_counter()
    finished = subprocess.run(command, env=env, cwd=REPOSITORY, capture_output=True, text=True)
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
    parser.add_argument("--quick", action="store_true", help="12 scans of 32^3 instead of 40 of 128^3")
    parser.add_argument("--size", type=int, default=None,
                        help="edge of each scan in voxels (default 128, or 32 with --quick); "
                        "real micro-CT scans are several hundred voxels wide")
    parser.add_argument("--temporary-server", action="store_true",
                        help="let each build start Prefect's temporary server instead of using one local server")
    args = parser.parse_args(argv)
    n_species, specimens, side = (3, 4, 32) if args.quick else (8, 5, 128)
    side = args.size or side

    with tempfile.TemporaryDirectory(prefix="incremental-") as folder:
        root = Path(folder)
        scans, out = root / "scans", root / "out"
        written = write_scans(scans, n_species, specimens, side, root / "generated")
        # The new scan is the next specimen of the first species, from a larger collection of the same seed.
        extra = write_scans(root / "extra", 1, specimens + 1, side, root / "generated-extra")
        mode = "a temporary Prefect server per build" if args.temporary_server else "one local Prefect server"
        print(f"{len(written)} scans of {side}^3 voxels; then 1 new scan ({extra[-1].name}); {mode}")

        with contextlib.ExitStack() as stack:
            api_url = None
            if not args.temporary_server:
                api_url = stack.enter_context(prefect_server(root / "prefect-server", root / "server.log"))
            first_wall = run_build(scans, out, root / "prefect", api_url)
            first = last_build(out)
            shutil.copy(extra[-1], scans / extra[-1].name)
            second_wall = run_build(scans, out, root / "prefect", api_url)
            second = last_build(out)

    print(f"first build:  wall {first_wall:7.1f} s, flow {first['flow_s']:7.1f} s, "
          f"{first['analyses_run']} analyses, {first['images_written']} images written")
    print(f"rebuild:      wall {second_wall:7.1f} s, flow {second['flow_s']:7.1f} s, "
          f"{second['analyses_run']} analyses, {second['images_written']} of {second['images_total']} images written")
    wall_ratio = second_wall / first_wall
    print(f"ratio rebuild / first: wall {wall_ratio:.3f}, flow {second['flow_s'] / first['flow_s']:.3f}")
    print(f"process start and Prefect overhead per build: about {first_wall - first['flow_s']:.1f} s of wall time")
    met = second["analyses_run"] == 1 and wall_ratio <= TARGET_RATIO
    print(f"target (1 analysis, wall time <= {TARGET_RATIO:.0%} of the first build): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
