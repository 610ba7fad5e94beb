"""The leakage guard and the stability of splits across rebuilds."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import nibabel as nib
import numpy as np
import pytest

from catalog.checks import LeakageError, check_leakage, find_leaks
from conftest import REAL_CORES, run_cli

SPECIES = ("Bone", "Cement", "Fibers", "NerveTissue")


def copy_scans(target: Path, species=SPECIES, specimens=range(1, 7)) -> Path:
    """Copy a subset of the real cores into ``target`` and return it."""
    target.mkdir(parents=True)
    for name in species:
        for number in specimens:
            source = REAL_CORES / f"{name}_specimen{number}.nii.gz"
            shutil.copy(source, target / source.name)
    return target


def write_flipped_copy(source: Path, target: Path) -> None:
    """Write a new specimen made of a real scan's voxels mirrored along one axis."""
    image = nib.load(source)
    data = np.asarray(image.dataobj)[::-1].copy()
    nib.save(nib.Nifti1Image(data, image.affine), target)


def splits_of(out: Path, build_id: int) -> dict[tuple[str, str], str]:
    with duckdb.connect(str(out / "catalogue.duckdb"), read_only=True) as connection:
        rows = connection.execute(
            "SELECT species, specimen, split FROM split_history WHERE build_id = ?", [build_id]
        ).fetchall()
    return {(species, specimen): split for species, specimen, split in rows}


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("leakage")
    scans = copy_scans(root / "scans")
    out = root / "out"
    assert run_cli("build", scans, out, "--quiet") == 0
    return scans, out


def _private_copy(small_build, tmp_path) -> tuple[Path, Path]:
    scans, out = small_build
    shutil.copytree(scans, tmp_path / "scans")
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "scans", tmp_path / "out"


def test_same_content_in_two_splits_fails(small_build, tmp_path, capsys):
    scans, out = _private_copy(small_build, tmp_path)
    assignments = splits_of(out, 1)
    other = next(split for split in ("train", "val", "test") if split != assignments[("Bone", "specimen1")])
    # Plant the leak: a copy of specimen1 under a new name, pinned by an
    # earlier assignment to another split.
    shutil.copy(scans / "Bone_specimen1.nii.gz", scans / "Bone_specimen9.nii.gz")
    with duckdb.connect(str(out / "catalogue.duckdb")) as connection:
        connection.execute(
            "INSERT INTO split_history VALUES (1, 'Bone', 'specimen9', ?, 0, 1)", [other]
        )
    images_before = sorted(p.relative_to(out) for p in out.rglob("*.png"))

    assert run_cli("build", scans, out, "--quiet") == 3

    message = capsys.readouterr().err
    assert "Bone_specimen1.nii.gz" in message
    assert "Bone_specimen9.nii.gz" in message
    assert "same content" in message
    assert sorted(p.relative_to(out) for p in out.rglob("*.png")) == images_before
    with duckdb.connect(str(out / "catalogue.duckdb"), read_only=True) as connection:
        status, leakage = connection.execute(
            "SELECT status, leakage_check FROM builds WHERE build_id = 2"
        ).fetchone()
        latest = connection.execute("SELECT build_id FROM latest_build").fetchone()[0]
    assert status == "failed"
    assert "Bone_specimen9.nii.gz" in leakage
    assert latest == 1


def test_specimen_in_two_splits_detected(small_build, tmp_path):
    _, out = _private_copy(small_build, tmp_path)
    split = splits_of(out, 1)[("Cement", "specimen2")]
    other = "test" if split != "test" else "train"
    with duckdb.connect(str(out / "catalogue.duckdb")) as connection:
        assert find_leaks(connection, 1) == []
        # Plant the leak: one exported slice of the specimen filed under another split.
        connection.execute(
            """
            INSERT INTO export_history
            SELECT build_id, scan_hash, view, slice_index, species, specimen, ?, priority, status, reason,
                   file, sha256, export_key
            FROM export_history
            WHERE build_id = 1 AND species = 'Cement' AND specimen = 'specimen2' AND status <> 'dropped'
            LIMIT 1
            """,
            [other],
        )
        with pytest.raises(LeakageError, match="specimen Cement specimen2 is in more than one split"):
            check_leakage(connection, 1)


def test_new_specimen_keeps_old_splits(small_build, tmp_path):
    scans, out = _private_copy(small_build, tmp_path)
    before = splits_of(out, 1)
    write_flipped_copy(REAL_CORES / "Fibers_specimen7.nii.gz", scans / "Fibers_specimen7.nii.gz")

    assert run_cli("build", scans, out, "--quiet") == 0

    after = splits_of(out, 2)
    assert set(after) == set(before) | {("Fibers", "specimen7")}
    for key, split in before.items():
        assert after[key] == split, key
    with duckdb.connect(str(out / "catalogue.duckdb"), read_only=True) as connection:
        placed = connection.execute(
            "SELECT species, specimen FROM split_history WHERE build_id = 2 AND assigned_in = 2"
        ).fetchall()
        run = connection.execute("SELECT analyses_run FROM builds WHERE build_id = 2").fetchone()[0]
    assert placed == [("Fibers", "specimen7")]
    assert run == 1


def test_removed_specimen_moves_nothing(small_build, tmp_path):
    scans, out = _private_copy(small_build, tmp_path)
    before = splits_of(out, 1)
    (scans / "NerveTissue_specimen6.nii.gz").unlink()

    assert run_cli("build", scans, out, "--quiet") == 0

    after = splits_of(out, 2)
    assert ("NerveTissue", "specimen6") not in after
    assert after == {key: split for key, split in before.items() if key != ("NerveTissue", "specimen6")}
    assert not any(out.rglob("NerveTissue_specimen6__*"))


def test_split_explain_lists_specimens(small_build, capsys):
    _, out = small_build
    capsys.readouterr()
    assert run_cli("split", "--explain", "--db", out) == 0
    text = capsys.readouterr().out
    for (species, specimen), split in splits_of(out, 1).items():
        assert f"{species}:" in text
        assert re.search(rf"{specimen}\s+\d+ passing slices -> {split}", text), (species, specimen)

