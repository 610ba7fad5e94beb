"""The build report: figures, the HTML page, and how a browser shows it."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from catalog.sql import connect_read_only
from tasks.figures import (
    SheetLayout, area_fraction_histogram, caption_text, contact_sheet, counts_chart, sample_images,
)
from tasks.report import split_stats
from tasks.report_html import Figure, report_html
from tasks.species import SpeciesReport
from tasks.split import SPLITS

FIGURES = [f"contact-{split}.png" for split in SPLITS] + ["counts.png", "area-fraction.png"]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]*)\"")


def _decode(path) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(path.read_bytes(), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None, f"{path} is not a readable PNG"
    return pixels


def _included_species(out) -> list[str]:
    with connect_read_only(out) as connection:
        return [name for (name,) in connection.execute(
            "SELECT species FROM species WHERE included ORDER BY species").fetchall()]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: run 'apt-get update && apt-get install -y chromium' "
                    "(.ci/run does this when it is missing)")
    return path


# ---------------------------------------------------------------- unit


def test_sample_images_spread_over_specimens():
    rows = [{"species": "A", "specimen": f"s{n}", "file": f"f{n}_{i:03d}"} for n in range(3) for i in range(10)]
    chosen = sample_images(rows, 4)["A"]
    assert [row["specimen"] for row in chosen] == ["s0", "s0", "s1", "s2"]
    assert [row["file"] for row in chosen][:2] == ["f0_002", "f0_007"]


def test_sample_images_fewer_than_asked():
    rows = [{"species": "B", "specimen": "s1", "file": "x"}]
    assert sample_images(rows, 8) == {"B": rows}


def test_figures_deterministic():
    rng = np.random.default_rng(0)
    tiles = {"A": [("specimen1", rng.integers(0, 255, (50, 70), dtype=np.uint8))]}
    assert contact_sheet("train", tiles) == contact_sheet("train", tiles)
    table = {"A": {"train": 5, "val": 2, "test": 1}}
    assert counts_chart(table) == counts_chart(table)
    fractions = rng.random(100)
    species = ["A"] * 50 + ["B"] * 50
    first = area_fraction_histogram(species, fractions, fractions > 0.1, 0.1)
    assert first == area_fraction_histogram(species[::-1], fractions[::-1], fractions[::-1] > 0.1, 0.1)


def test_contact_sheet_shape():
    layout = SheetLayout()
    tiles = {name: [("specimen1", np.full((30, 30), 200, np.uint8))] for name in ("A", "B", "C")}
    pixels = cv2.imdecode(np.frombuffer(contact_sheet("t", tiles, layout), np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels.shape == layout.shape(3)


def test_caption_drops_accents():
    assert caption_text("Globigerinoïdes") == "Globigerinoides"
    assert caption_text("Ærø") == "?r?"


def test_contact_sheet_accented_caption():
    tiles = {"Globigerinoides": [("specimen1", np.full((30, 30), 200, np.uint8))]}
    accented = {"Globigerinoïdes": tiles["Globigerinoides"]}
    assert contact_sheet("train", accented) == contact_sheet("train", tiles)


def test_html_escapes_names():
    hostile = '<script>alert("x")</script>'
    reports = [SpeciesReport(species=hostile, scans=1, specimens=1, usable_specimens=1, included=False,
                             reason=f"name {hostile}")]
    table = {hostile: {split: 1 for split in SPLITS}}
    page = report_html(build_id=1, dataset_hash="<h>", table=table, stats=split_stats(table),
                       species_reports=reports, split_notes={}, leakage="passed", scan_problems=[],
                       params={"k": hostile}, figures=[Figure(f'"{hostile}.png', hostile, b"png")])
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert IMG_SRC.findall(page) == ["data:image/png;base64," + base64.b64encode(b"png").decode()]


# ---------------------------------------------------------------- real-cores build


def test_report_files(real_cores_build):
    for name in ["report.md", "report.json", "report.html"] + [f"report/{figure}" for figure in FIGURES]:
        assert (real_cores_build / name).is_file(), f"{name} missing from the build output"


def test_contact_sheet_rows(real_cores_build):
    layout = SheetLayout()
    species = _included_species(real_cores_build)
    assert species == ["Bone", "Cement", "Fibers", "NerveTissue"]
    for split in SPLITS:
        pixels = _decode(real_cores_build / "report" / f"contact-{split}.png")
        assert pixels.shape == layout.shape(len(species))
        assert pixels.dtype == np.uint8
        for row in range(len(species)):
            top = layout.title_height + row * layout.row_height
            first_tile = pixels[top : top + layout.tile, layout.label_width : layout.label_width + layout.tile]
            assert first_tile.min() < 128, f"{split} row {row} has no dark pixel, so no image"
            assert first_tile.max() > 128, f"{split} row {row} has no bright pixel, so no image"


def test_charts_match_catalogue(real_cores_build):
    report = json.loads((real_cores_build / "report.json").read_text())
    assert (real_cores_build / "report" / "counts.png").read_bytes() == counts_chart(report["counts"])
    with connect_read_only(real_cores_build) as connection:
        species, fractions, passed = zip(*connection.execute(
            "SELECT species, area_fraction, passed FROM slices").fetchall())
    expected = area_fraction_histogram(species, np.array(fractions), np.array(passed),
                                       report["params"]["min_area_fraction"])
    assert (real_cores_build / "report" / "area-fraction.png").read_bytes() == expected
    for name in ("counts.png", "area-fraction.png"):
        pixels = _decode(real_cores_build / "report" / name)
        assert pixels.ndim == 3
        assert pixels.shape[2] == 3
        assert pixels.dtype == np.uint8


def test_html_self_contained(real_cores_build):
    page = (real_cores_build / "report.html").read_text()
    sources = IMG_SRC.findall(page)
    assert len(sources) == len(FIGURES)
    for name, source in zip(FIGURES, sources):
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]) == (real_cores_build / "report" / name).read_bytes()
    assert not re.search(r"(href|src)=\"(?!data:)", page), "report.html links to an external resource"
    report = json.loads((real_cores_build / "report.json").read_text())
    assert report["dataset_hash"] in page
    for text in ("CV", "mean ± sd", "Miliolid", "needs at least 4 specimens"):
        assert text in page


def test_html_in_chromium(real_cores_build, tmp_path):
    chromium = _chromium()
    url = (real_cores_build / "report.html").as_uri()
    screenshot = tmp_path / "report.png"
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*common, f"--screenshot={screenshot}", "--window-size=1200,3000", url],
                   check=True, capture_output=True, timeout=120)
    print(f"report screenshot: {screenshot}")

    pixels = _decode(screenshot)
    assert pixels.shape[:2] == (3000, 1200)
    # A blank page is one colour, while the report has text, tables and images.
    assert pixels.std() > 20
    assert (pixels < 50).mean() > 0.01

    dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, timeout=120, text=True)
    sources = IMG_SRC.findall(dom.stdout)
    assert len(sources) == len(FIGURES)
    assert all(source.startswith("data:image/png;base64,") for source in sources)
