"""End-to-end builds of the real scans through the command line."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pytest

from conftest import REAL_CORES, REAL_SCANS, run_cli
from tasks.manifest import repeated_images

INCLUDED = ("Bone", "Cement", "Fibers", "NerveTissue")
SPLIT_FOLDERS = ("train", "val", "test")


def catalogue_rows(out: Path, query: str, parameters=None) -> list[tuple]:
    with duckdb.connect(str(out / "catalogue.duckdb"), read_only=True) as connection:
        return connection.execute(query, parameters or []).fetchall()


def image_files(out: Path) -> list[Path]:
    return sorted(p for split in SPLIT_FOLDERS for p in (out / split).rglob("*.png"))


def test_real_cores_species_in_every_split(real_cores_build):
    for species in INCLUDED:
        for split in SPLIT_FOLDERS:
            images = list((real_cores_build / split / species).glob("*.png"))
            assert images, f"{species} has no images in {split}"


def test_real_cores_excludes_miliolid(real_cores_build):
    report = json.loads((real_cores_build / "report.json").read_text())
    miliolid = next(row for row in report["species"] if row["species"] == "Miliolid")
    assert miliolid["included"] is False
    assert miliolid["specimens"] == 1
    assert miliolid["scans"] == 3
    assert "has 1 specimen (3 scans)" in miliolid["reason"]
    assert "needs at least 4" in miliolid["reason"]
    assert not any((real_cores_build / split / "Miliolid").exists() for split in SPLIT_FOLDERS)


def test_avizo_export_shares_split(real_cores_build):
    rows = catalogue_rows(
        real_cores_build,
        """
        SELECT c.file_name, e.split, count(*)
        FROM exported_files AS e JOIN scans AS c USING (scan_hash)
        WHERE c.species = 'Bone' AND c.specimen = 'specimen3'
        GROUP BY ALL
        """,
    )
    files = {name for name, _split, _count in rows}
    splits = {split for _name, split, _count in rows}
    assert files == {"Bone_specimen3.nii.gz", "Bone_specimen3_avizo.nii.gz"}
    assert len(splits) == 1
    on_disk = {path.parts[-3] for split in SPLIT_FOLDERS for path in (real_cores_build / split).rglob("Bone_specimen3*")}
    assert on_disk == splits


def test_images_are_rgb_and_never_black(real_cores_build):
    files = image_files(real_cores_build)
    assert len(files) > 1000
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (224, 224, 3), path
        assert image.dtype == np.uint8, path
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]), path
        assert image.max() > 0, f"{path} is all black"


def test_metadata_lists_every_image(real_cores_build):
    for split in SPLIT_FOLDERS:
        with open(real_cores_build / split / "metadata.csv", newline="") as handle:
            listed = {row["file_name"] for row in csv.DictReader(handle)}
        on_disk = {p.relative_to(real_cores_build / split).as_posix() for p in (real_cores_build / split).rglob("*.png")}
        assert listed == on_disk


def test_repeated_images_counted_per_specimen():
    rows = [
        {"species": "A", "specimen": "s1", "sha256": "x"},
        {"species": "A", "specimen": "s1", "sha256": "x"},
        {"species": "A", "specimen": "s1", "sha256": "x"},
        {"species": "A", "specimen": "s2", "sha256": "x"},
        {"species": "B", "specimen": "s1", "sha256": "y"},
    ]
    assert repeated_images(rows) == {("A", "s1"): 2}


def test_rebuild_is_identical_and_cached(real_cores_copy, capfd, caplog):
    before = {p.relative_to(real_cores_copy): p.read_bytes() for p in image_files(real_cores_copy)}
    first_hash = json.loads((real_cores_copy / "manifest.json").read_text())["dataset_hash"]
    capfd.readouterr()
    caplog.set_level(logging.INFO)

    assert run_cli("build", REAL_CORES, real_cores_copy, "--quiet") == 0

    logged = capfd.readouterr()
    after = {p.relative_to(real_cores_copy): p.read_bytes() for p in image_files(real_cores_copy)}
    assert after == before
    assert json.loads((real_cores_copy / "manifest.json").read_text())["dataset_hash"] == first_hash
    (run, cached, written, unchanged, digest), = catalogue_rows(
        real_cores_copy,
        "SELECT analyses_run, analyses_cached, images_written, images_unchanged, dataset_hash "
        "FROM builds WHERE build_id = 2",
    )
    assert (run, cached) == (0, 33)
    assert written == 0
    assert unchanged == len(before)
    assert digest == first_hash
    assert "0 analyses run, 33 reused from cache" in logged.out
    assert "scan Bone_specimen3_avizo.nii.gz cached: 186 of 192 slices pass" in caplog.messages
    # The avizo export repeats the voxels of the same specimen's scan.
    repeated = [message for message in caplog.messages if "repeat the bytes" in message]
    assert [message.split(":")[0] for message in repeated] == ["Bone specimen3"]


def test_fresh_build_is_byte_identical(real_cores_build, tmp_path):
    out = tmp_path / "again"
    assert run_cli("build", REAL_CORES, out, "--quiet") == 0
    first = {p.relative_to(real_cores_build): p.read_bytes() for p in image_files(real_cores_build)}
    second = {p.relative_to(out): p.read_bytes() for p in image_files(out)}
    assert second == first
    for name in ("manifest.json", "classes.json", "train/metadata.csv", "val/metadata.csv", "test/metadata.csv"):
        assert (out / name).read_bytes() == (real_cores_build / name).read_bytes(), name


def test_real_scans_all_excluded(tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", REAL_SCANS, out, "--quiet") == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["species"]) == 6
    for row in report["species"]:
        assert row["included"] is False, row
        assert "has 1 specimen (1 scan); needs at least 4 specimens" in row["reason"]
    assert (out / "report.md").exists()
    assert image_files(out) == []
    assert catalogue_rows(out, "SELECT status FROM builds") == [("succeeded",)]


def _readme_query(name_fragment: str) -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in readme.splitlines():
        match = re.match(r'\s*\.venv/bin/fossil-slices sql "(.+)" --db OUT_DIR', line)
        if match and name_fragment in match.group(1):
            return match.group(1)
    raise AssertionError(f"README has no example query containing {name_fragment!r}")


def test_readme_query_matches_report(real_cores_build, capsys):
    query = _readme_query("FROM exported_files GROUP BY")
    capsys.readouterr()
    assert run_cli("sql", query, "--db", real_cores_build, "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    from_sql = {(row["species"], row["split"]): row["images"] for row in rows}
    report = json.loads((real_cores_build / "report.json").read_text())
    from_report = {
        (species, split): count
        for species, counts in report["counts"].items()
        for split, count in counts.items()
        if count
    }
    assert from_sql == from_report


def test_sql_rejects_writes(real_cores_build, capsys):
    assert run_cli("sql", "DROP TABLE builds", "--db", real_cores_build) == 5
    assert "read-only" in capsys.readouterr().err
    assert catalogue_rows(real_cores_build, "SELECT count(*) FROM builds")[0][0] >= 1


@pytest.mark.slow
def test_demo_builds(tmp_path):
    out = tmp_path / "demo"
    assert run_cli("demo", out, "--quiet") == 0
    report = json.loads((out / "dataset" / "report.json").read_text())
    included = [row for row in report["species"] if row["included"]]
    assert len(included) >= 3
    for row in included:
        counts = report["counts"][row["species"]]
        assert all(counts[split] > 0 for split in SPLIT_FOLDERS), row["species"]
    shutil.rmtree(out)
