"""Incremental rebuilds: what a rename, an edit, a parameter or a removed scan costs."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import duckdb
import nibabel
import numpy as np
import pytest

from flows import export_stage
from tasks.export import decode_image
from tasks.synthetic import write_collection

from conftest import flip_last_byte_keeping_mtime, run_cli

SMALL = ("--target-per-species", "120", "--val-target", "20", "--val-cap", "40")
SCANS = 10


def _query(out: Path, sql: str, params: list | None = None) -> list[tuple]:
    connection = duckdb.connect(str(out / "catalogue.duckdb"), read_only=True)
    try:
        return connection.execute(sql, params or []).fetchall()
    finally:
        connection.close()


def _last_build(out: Path) -> dict:
    cursor = duckdb.connect(str(out / "catalogue.duckdb"), read_only=True)
    try:
        row = cursor.execute("SELECT * FROM builds ORDER BY build_id DESC LIMIT 1")
        names = [column[0] for column in row.description]
        return dict(zip(names, row.fetchone()))
    finally:
        cursor.close()


def _images(out: Path, suffix: str) -> list[Path]:
    return sorted(path for split in ("train", "val", "test") for path in (out / split).rglob(f"*{suffix}"))


@pytest.fixture(scope="module")
def first_build(tmp_path_factory) -> tuple[Path, Path]:
    """Scans folder and output folder of one build of 2 species x 5 specimens; copy before changing."""
    root = tmp_path_factory.mktemp("incremental")
    scans, out = root / "scans", root / "out"
    assert len(write_collection(scans, n_species=2, specimens_per_species=5, shape=(32, 32, 32), seed=5)) == SCANS
    assert run_cli("build", scans, out, "--quiet", *SMALL) == 0
    return scans, out


@pytest.fixture
def rebuild(first_build, tmp_path):
    """A private copy of the first build, and a function that rebuilds it with extra flags."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    shutil.copytree(first_build[0], scans)
    shutil.copytree(first_build[1], out)

    def run(*flags: str) -> dict:
        assert run_cli("build", scans, out, "--quiet", *SMALL, *flags) == 0
        return _last_build(out)

    return scans, out, run


def test_unchanged_rebuild_writes_nothing(rebuild):
    _scans, _out, run = rebuild
    build = run()
    assert (build["analyses_run"], build["analyses_cached"]) == (0, SCANS)
    assert (build["images_written"], build["images_removed"]) == (0, 0)
    assert build["images_unchanged"] == build["images_total"] > 0


def test_rename_runs_no_analysis(rebuild):
    scans, out, run = rebuild
    (scans / "Alveolina_specimen2.nii.gz").rename(scans / "Alveolina_specimen2_renamed.nii.gz")
    build = run()
    assert (build["analyses_run"], build["analyses_cached"]) == (0, SCANS)
    assert (build["scans_added"], build["scans_removed"]) == (1, 1)
    assert _query(out, "SELECT change, analysis_cached FROM scans WHERE relative_path = ?",
                  ["Alveolina_specimen2_renamed.nii.gz"]) == [("added", True)]


def test_edit_reanalyses_that_scan_only(rebuild):
    scans, out, run = rebuild
    path = scans / "Chrysalidina_specimen3.nii.gz"
    image = nibabel.load(path)
    data = np.asarray(image.dataobj).copy()
    data[:4] = 0  # a few planes cut away: new bytes, same specimen
    nibabel.save(nibabel.Nifti1Image(data, image.affine, image.header), path)
    build = run()
    assert (build["analyses_run"], build["analyses_cached"], build["scans_changed"]) == (1, SCANS - 1, 1)
    assert _query(out, "SELECT relative_path, change FROM scans WHERE NOT analysis_cached") == [
        ("Chrysalidina_specimen3.nii.gz", "changed")
    ]


def test_rebuild_reuses_scan_hashes(rebuild):
    scans, out, run = rebuild
    time.sleep(2.1)  # files copied just now are too fresh for their times to be trusted
    assert run()["analyses_run"] == 0
    record = json.loads((out / "storage" / "scan-hashes.json").read_text())
    assert len(record["files"]) == SCANS

    # An in-place edit that keeps the size and restores the modification time
    # still changes the inode change time, so the scan is hashed again.
    flip_last_byte_keeping_mtime(scans / "Chrysalidina_specimen3.nii.gz")
    build = run()
    assert build["scans_changed"] == 1
    assert build["analyses_run"] == 1


def test_rehash_flag_ignores_record(rebuild):
    _scans, out, run = rebuild
    time.sleep(2.1)  # files copied just now are too fresh for their times to be trusted
    run()
    path = out / "storage" / "scan-hashes.json"
    record = json.loads(path.read_text())
    for entry in record["files"].values():
        entry["sha256"] = "0" * 64  # a record that no longer matches the files
    path.write_text(json.dumps(record))
    build = run("--rehash")
    assert (build["scans_changed"], build["analyses_run"]) == (0, 0)


def test_analysis_parameter_reanalyses_all(rebuild):
    _scans, _out, run = rebuild
    build = run("--min-area-fraction", "0.05")
    assert (build["analyses_run"], build["analyses_cached"]) == (SCANS, 0)


def test_image_size_reexports_without_analysis(rebuild):
    _scans, out, run = rebuild
    build = run("--image-size", "64")
    assert build["analyses_run"] == 0
    assert build["images_written"] == build["images_total"] > 0
    assert build["images_unchanged"] == 0
    shapes = {decode_image(path.read_bytes(), "png").shape for path in _images(out, ".png")}
    assert shapes == {(64, 64, 3)}


def test_format_reexports_without_analysis(rebuild):
    _scans, out, run = rebuild
    pngs = len(_images(out, ".png"))
    build = run("--format", "npy")
    assert build["analyses_run"] == 0
    assert build["images_written"] == build["images_total"] == len(_images(out, ".npy")) > 0
    assert (build["images_removed"], len(_images(out, ".png"))) == (pngs, 0)


def test_removed_scan_removes_its_images(rebuild):
    scans, out, run = rebuild
    # A train specimen of a species with several train specimens, so the
    # species keeps a specimen in every split after the removal.
    specimen = _query(out, "SELECT specimen FROM splits WHERE species = 'Alveolina' AND split = 'train' "
                           "ORDER BY specimen LIMIT 1")[0][0]
    scan_hash, = _query(out, "SELECT scan_hash FROM scans WHERE species = 'Alveolina' AND specimen = ?",
                        [specimen])[0]
    files = [row[0] for row in _query(out, "SELECT file FROM exported_files WHERE scan_hash = ?", [scan_hash])]
    assert files

    (scans / f"Alveolina_{specimen}.nii.gz").unlink()
    build = run()
    assert (build["scans_removed"], build["analyses_run"]) == (1, 0)
    assert build["images_removed"] == len(files)
    assert not [file for file in files if (out / file).exists()]
    assert _query(out, "SELECT count(*) FROM exported_files WHERE scan_hash = ?", [scan_hash]) == [(0,)]


def test_new_scan_parts_equal_one_task(tmp_path):
    """A new scan cut into one export task per worker gives the bytes of a single task."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_collection(scans, n_species=2, specimens_per_species=3, shape=(48, 48, 48), seed=7)
    every_slice = ("--target-per-species", "5000", "--val-target", "300", "--val-cap", "5000")
    assert run_cli("build", scans, out, "--quiet", *every_slice) == 0
    extra = write_collection(tmp_path / "extra", n_species=1, specimens_per_species=4, shape=(48, 48, 48), seed=7)
    shutil.copy(extra[-1], scans / extra[-1].name)

    hashes = {}
    for workers in ("1", "2"):
        copy = tmp_path / f"out-{workers}"
        shutil.copytree(out, copy)
        assert run_cli("build", scans, copy, "--quiet", *every_slice, "--max-workers", workers) == 0
        build = _last_build(copy)
        assert build["images_written"] >= 2 * export_stage.MIN_IMAGES_PER_TASK
        hashes[workers] = json.loads((copy / "manifest.json").read_text())["dataset_hash"]
    assert hashes["1"] == hashes["2"]
