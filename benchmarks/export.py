"""Measure the export of slice images from real scans against a bare OpenCV loop.

Run ``python benchmarks/export.py`` to export 5,000 passing slices of the
scans in ``../shared/data/real-scans`` (slices are reused in turn when the
scans have fewer), or add ``--quick`` for 500. It prints, all measured in this
run:

- images per second of :func:`tasks.export_scan.export_scan` (load the scan,
  cut, refine the mask, render, encode and write each PNG), in one process;
- images per second of a bare loop over the same slices that only resizes
  each slice to the image size and encodes it as an RGB PNG with OpenCV's
  default row filters;
- their ratio (target: at least 0.70);
- the same bare loop with the export's own PNG settings (Sub filter), and the
  ratio against it, which shows the cost of everything but the encoder;
- the speed-up of the export on 2 processes, one scan per job;
- where the time of the export goes, step by step.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.config import BuildConfig  # noqa: E402
from flows.export_stage import render_settings  # noqa: E402
from tasks.export import PNG_COMPRESSION, PNG_FILTER, RenderParams, encode_image, render_slice, write_atomic  # noqa: E402
from tasks.export_scan import export_scan  # noqa: E402
from tasks.oblique import extract_slice  # noqa: E402
from tasks.scan_analysis import load_masked_volume, run_scan_analysis  # noqa: E402
from tasks.volume import scan_stem  # noqa: E402

SCANS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-scans"
TARGET_RATIO = 0.70


def analyse_scans(storage: Path, config: BuildConfig) -> list[tuple[Path, dict]]:
    """Analyse every scan of SCANS into `storage`; return (path, summary) of the analysed ones."""
    analysed = []
    for path in sorted(SCANS.glob("*.nii*")):
        scan_hash = hashlib.sha256(path.read_bytes()).hexdigest()
        summary = run_scan_analysis(str(path), scan_hash, config.analysis_params(), config.analysis_hash(),
                                    str(storage))
        if summary["status"] == "analysed":
            analysed.append((path, summary))
    if not analysed:
        raise SystemExit(f"no scan in {SCANS} could be analysed; check that the real scans are present")
    return analysed


def plan_requests(analysed: list[tuple[Path, dict]], total: int) -> dict[Path, tuple[dict, list[dict]]]:
    """Take `total` passing slices in turn from each scan; repeats get their own file names."""
    passing = []
    for path, summary in analysed:
        table = pq.read_table(summary["slices_file"], columns=["view", "slice_index", "passed"]).to_pylist()
        passing.append([(path, summary, row["view"], row["slice_index"]) for row in table if row["passed"]])
    rounds = zip(*[iter_cycle(group) for group in passing if group])
    order = list(islice((item for group in rounds for item in group), total))

    plan: dict[Path, tuple[dict, list[dict]]] = {}
    uses: dict[tuple, int] = defaultdict(int)
    for path, summary, view, index in order:
        key = (path, view, index)
        name = f"{scan_stem(path.name)}/{view}_{index:04d}_r{uses[key]}.png"
        uses[key] += 1
        plan.setdefault(path, (summary, []))[1].append({"view": view, "slice_index": index, "file": name})
    return plan


def iter_cycle(items: list):
    """Yield `items` over and over, so a small scan still contributes its share."""
    while True:
        yield from items


def run_export(job: tuple[str, dict, list[dict], str, dict]) -> int:
    """Export one scan's requests; return the number of images written."""
    path, summary, requests, out_dir, render = job
    results = export_scan(path, summary, requests, out_dir, render, "png", (1.0, 1.0, 1.0))
    return sum(1 for result in results if result["status"] != "dropped")


def jobs(plan, out_dir: Path, render: dict) -> list[tuple]:
    """Return one job per scan, largest first, so two processes finish close together."""
    items = sorted(plan.items(), key=lambda item: -len(item[1][1]))
    return [(str(path), summary, requests, str(out_dir), render) for path, (summary, requests) in items]


def bare_loop(plan, size: int, png_options: list[int]) -> tuple[int, float]:
    """Resize each slice to `size` and encode it as an RGB PNG with OpenCV; return (images, seconds)."""
    volumes = {path: load_masked_volume(str(path), summary, (1.0, 1.0, 1.0)) for path, (summary, _) in plan.items()}
    count = 0
    start = time.perf_counter()
    for path, (_, requests) in plan.items():
        volume, mask = volumes[path]
        for request in requests:
            image, _ = extract_slice(volume, mask, request["view"], request["slice_index"])
            gray = cv2.resize(np.rint(image * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA)
            ok, _ = cv2.imencode(".png", cv2.merge((gray, gray, gray)), png_options)
            count += ok
    return count, time.perf_counter() - start


def step_times(plan, out_dir: Path, params: RenderParams) -> dict[str, float]:
    """Seconds spent in each step of the export, run step by step over the same slices."""
    seconds: dict[str, float] = defaultdict(float)
    for path, (summary, requests) in plan.items():
        start = time.perf_counter()
        volume, mask = load_masked_volume(str(path), summary, (1.0, 1.0, 1.0))
        seconds["load scan and mask"] += time.perf_counter() - start
        for request in requests:
            marks = [time.perf_counter()]
            image, plane_mask = extract_slice(volume, mask, request["view"], request["slice_index"])
            marks.append(time.perf_counter())
            rendered = render_slice(image, plane_mask, params)
            marks.append(time.perf_counter())
            if rendered.image is None:
                continue
            data = encode_image(rendered.image, "png")
            marks.append(time.perf_counter())
            write_atomic(out_dir / request["file"], data, durable=False)
            marks.append(time.perf_counter())
            for step, before, after in zip(("cut slice", "render_slice", "encode PNG", "write file"), marks, marks[1:]):
                seconds[step] += after - before
    return dict(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 slices instead of 5,000, for CI")
    args = parser.parse_args(argv)
    total = 500 if args.quick else 5000

    config = BuildConfig()
    render = render_settings(config)
    with tempfile.TemporaryDirectory(prefix="export-bench-") as temporary:
        root = Path(temporary)
        plan = plan_requests(analyse_scans(root / "storage", config), total)
        print(f"{total} slices from {len(plan)} scans in {SCANS}")

        default_filters = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
        bare_images, bare_seconds = bare_loop(plan, config.image_size, default_filters)
        sub_images, sub_seconds = bare_loop(plan, config.image_size, default_filters + [cv2.IMWRITE_PNG_FILTER, PNG_FILTER])

        start = time.perf_counter()
        written = sum(run_export(job) for job in jobs(plan, root / "one", render))
        os.sync()  # the build syncs once after its export, so that cost counts here too
        one_seconds = time.perf_counter() - start

        with ProcessPoolExecutor(max_workers=2) as pool:
            pool.submit(int).result()  # start the workers before timing
            start = time.perf_counter()
            written_two = sum(pool.map(run_export, jobs(plan, root / "two", render)))
            os.sync()
            two_seconds = time.perf_counter() - start

        steps = step_times(plan, root / "steps", RenderParams(**render))

    export_rate, bare_rate = written / one_seconds, bare_images / bare_seconds
    ratio = export_rate / bare_rate
    print(f"export, 1 process:  {written} images in {one_seconds:.2f} s = {export_rate:.0f} images/s")
    print(f"bare resize + PNG:  {bare_images} images in {bare_seconds:.2f} s = {bare_rate:.0f} images/s")
    print(f"ratio export / bare: {ratio:.2f} (target {TARGET_RATIO:.2f}: {'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    sub_rate = sub_images / sub_seconds
    print(f"bare, export's PNG settings: {sub_rate:.0f} images/s, ratio export / this loop {export_rate / sub_rate:.2f}")
    print(f"export, 2 processes: {written_two} images in {two_seconds:.2f} s = {written_two / two_seconds:.0f} "
          f"images/s, speed-up {one_seconds / two_seconds:.2f}x")
    spent = sum(steps.values())
    print("where the export's time goes (step by step, 1 process):")
    for step, seconds in sorted(steps.items(), key=lambda item: -item[1]):
        print(f"  {step:20s} {seconds:6.2f} s  {100 * seconds / spent:5.1f}%")


if __name__ == "__main__":
    main()
