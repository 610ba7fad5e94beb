"""Benchmark the per-scan analysis on a fossil-like uint16 scan, pinned to one core.

Writes a 512^3 uint16 scan (256 MiB) as an uncompressed ``.nii`` (96^3 with
``--quick``), then runs, each in a fresh process pinned to core 0:

- ``read``: a plain read of the file into memory, ``np.asarray(nib.load(path, mmap=False).dataobj)``
  (with the default memory map, asarray would not read the voxels at all);
- ``analysis``: ``load_volume`` and ``analyse_volume`` (three axes, every slice's metrics).

Each is repeated (``--repeats``), because other processes on the machine
slow single runs down. For each it prints the best and the median wall time,
the CPU time of the best run, voxels per second and the peak resident memory.
Then it prints the ratio of the analysis to the plain read and the time of
each analysis stage from one profiled run. Targets: at least 30 million
voxels per second and at most 1.0 GiB peak for the 512^3 scan.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
# pyarrow imports pandas the first time it converts a numpy array. That is
# once per process, not per scan, so it is imported here with the rest.
import pandas
path, mode = Path(sys.argv[1]), sys.argv[2]

def run():
    if mode == "read":
        np.asarray(nib.load(path, mmap=False).dataobj)
        return "read"
    volume = load_volume(path)
    return analyse_volume(volume.data, histogram=volume.histogram).status

stages = {}
if mode == "stages":
    import cProfile, pstats
    profile = cProfile.Profile()
    status = profile.runcall(run)
    for (file, _, function), row in pstats.Stats(profile).stats.items():
        if "/tasks/" in file:
            stages[f"{Path(file).stem}.{function}"] = row[3]  # cumulative seconds
    seconds = cpu = 0.0
else:
    start, start_cpu = time.perf_counter(), time.process_time()
    status = run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_bytes": peak_kib * 1024, "status": status,
                  "stages": stages}))
"""

# Stages shown from the profiled run, in pipeline order: (label, profiled function).
STAGES = [
    ("load (read, reorient, float32, value counts)", "volume.load_volume"),
    ("percentiles", "analyse.counted_percentiles"),
    ("percentiles without value counts", "analyse.finite_percentiles"),
    ("normalise", "analyse.normalise_inplace"),
    ("Otsu threshold", "analyse.choose_threshold"),
    ("largest 3D component", "analyse.largest_component"),
    ("slice metrics, all three axes", "slice_metrics.accumulate_axis_metrics"),
    ("  mask bounding box", "slice_metrics.mask_extent"),
    ("  area, intensity, bounding boxes", "slice_metrics._box_statistics"),
    ("  Laplacian (sharpness)", "slice_metrics.laplacian_moments"),
    ("  2D components, axis 0", "slice_metrics._count_components_axis0"),
    ("  2D components, axis 1", "slice_metrics._count_components_axis1"),
    ("  2D components, axis 2", "slice_metrics._count_components_axis2"),
    ("catalogue rows (Arrow tables)", "analyse.slice_table"),
]


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


def summarise(runs: list[dict]) -> dict:
    """Return the best run with the median wall time and the largest peak of all runs added."""
    best = min(runs, key=lambda run: run["seconds"])
    return {**best, "median": statistics.median(run["seconds"] for run in runs),
            "peak_bytes": max(run["peak_bytes"] for run in runs)}


def print_stages(stages: dict) -> None:
    total = stages.get("volume.load_volume", 0.0) + stages.get("analyse.analyse_volume", 0.0)
    print(f"stages of one profiled analysis run (profiling adds some overhead), total {total:.2f} s:")
    for label, function in STAGES:
        if function in stages:
            seconds = stages[function]
            print(f"  {label:<46} {seconds:6.2f} s  {100 * seconds / max(total, 1e-9):5.1f} %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 96^3 scan instead of 512^3, for CI")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement (default 3)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    size = 96 if args.quick else 512
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "Benchmark_specimen1.nii"
        nib.save(nib.Nifti1Image(fossil_scan(size), np.diag([0.01, 0.01, 0.01, 1.0])), path)
        run_child(path, "read")  # warm the page cache so every run reads from memory
        read = summarise([run_child(path, "read") for _ in range(args.repeats)])
        analysis = summarise([run_child(path, "analysis") for _ in range(args.repeats)])
        stages = run_child(path, "stages")["stages"]
    voxels = size**3
    print(f"scan {size}^3 uint16 ({voxels * 2 / 2**20:.0f} MiB), analysis status {analysis['status']}, "
          f"{args.repeats} runs each")
    for name, figures in (("plain read", read), ("analysis", analysis)):
        print(f"{name:>10}: best {figures['seconds']:6.2f} s ({voxels / figures['seconds'] / 1e6:6.1f} Mvoxel/s, "
              f"CPU {figures['cpu']:.2f} s)  median {figures['median']:6.2f} s "
              f"({voxels / figures['median'] / 1e6:6.1f} Mvoxel/s)  peak RSS {figures['peak_bytes'] / 2**30:.3f} GiB")
    print(f"analysis / plain read time ratio: best {analysis['seconds'] / read['seconds']:.1f}, "
          f"median {analysis['median'] / read['median']:.1f}")
    print_stages(stages)
    print("targets: >= 30 Mvoxel/s and <= 1.0 GiB peak RSS at 512^3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
