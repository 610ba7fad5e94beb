"""Benchmark the per-scan analysis on a fossil-like uint16 scan, pinned to one core.

Writes a 512^3 uint16 scan (256 MiB) as an uncompressed ``.nii`` (96^3 with
``--quick``), then runs, each in a fresh process pinned to core 0:

- ``read``: a plain read of the file into memory, ``np.asarray(nib.load(path, mmap=False).dataobj)``
  (with the default memory map, asarray would not read the voxels at all);
- ``analysis``: ``load_volume`` and ``analyse_volume`` (three axes, every slice's metrics).

It prints wall time, voxels per second, peak resident memory of each
process and the ratio of the analysis to the plain read. Targets: at least
30 million voxels per second and at most 1.0 GiB peak for the 512^3 scan.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

CHILD = """
import json, os, resource, sys, time
os.sched_setaffinity(0, {0})
from pathlib import Path
import nibabel as nib, numpy as np
from tasks.analyse import analyse_volume
from tasks.volume import load_volume
path, mode = Path(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
if mode == "read":
    np.asarray(nib.load(path, mmap=False).dataobj)
    status = "read"
else:
    volume = load_volume(path)
    status = analyse_volume(volume.data, histogram=volume.histogram).status
seconds = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_bytes": peak_kib * 1024, "status": status}))
"""


def fossil_scan(size: int, seed: int = 0) -> np.ndarray:
    """Return a (size,)*3 uint16 scan of a chambered shell in a noisy rock matrix."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y = axis[:, None], axis[None, :]
    scan = np.empty((size,) * 3, dtype=np.uint16)
    chambers = rng.uniform(-0.4, 0.4, (6, 3)).astype(np.float32)
    for k, z in enumerate(axis):
        radius = np.sqrt(x * x + y * y + z * z)
        shell = np.abs(radius - 0.6) < 0.05
        for cx, cy, cz in chambers:
            shell |= np.abs(np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) - 0.15) < 0.03
        matrix = 1000.0 + rng.normal(0.0, 60.0, (size, size)).astype(np.float32)
        scan[:, :, k] = np.clip(matrix + 2500.0 * shell * (radius < 0.66), 0, 65535).astype(np.uint16)
    return scan


def run_child(path: Path, mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 96^3 scan instead of 512^3, for CI")
    args = parser.parse_args(argv)
    size = 96 if args.quick else 512
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "Benchmark_specimen1.nii"
        nib.save(nib.Nifti1Image(fossil_scan(size), np.diag([0.01, 0.01, 0.01, 1.0])), path)
        run_child(path, "read")  # warm the page cache so both runs read from memory
        read = run_child(path, "read")
        analysis = run_child(path, "analysis")
    voxels = size**3
    for name, figures in (("plain read", read), ("analysis", analysis)):
        print(f"{name:>10}: {figures['seconds']:7.2f} s  {voxels / figures['seconds'] / 1e6:8.1f} Mvoxel/s  "
              f"peak RSS {figures['peak_bytes'] / 2**30:.3f} GiB")
    print(f"scan {size}^3 uint16 ({voxels * 2 / 2**20:.0f} MiB), analysis status {analysis['status']}")
    print(f"analysis / plain read time ratio: {analysis['seconds'] / read['seconds']:.1f}")
    print("targets: >= 30 Mvoxel/s and <= 1.0 GiB peak RSS at 512^3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
