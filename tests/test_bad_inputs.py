"""Broken and odd scans: each gets a clear status and reason, and the build goes on for the others."""

from __future__ import annotations

import gzip

import duckdb
import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli
from tasks.volume import ScanReadError, load_volume


def fossil(shape=(32, 32, 32), seed=0) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    rng = np.random.default_rng(seed)
    return (100 + rng.normal(0, 5, shape) + 900 * (radius < 11 + seed % 3)).astype(np.int16)


def plain_bytes(array: np.ndarray) -> bytes:
    return nib.Nifti1Image(array, np.eye(4)).to_bytes()


def write_4d(path):
    nib.save(nib.Nifti1Image(np.stack([fossil()] * 3, axis=-1), np.eye(4)), path)


def write_rgb(path):
    rgb = np.zeros((16, 16, 16), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)


def write_truncated(path):
    path.write_bytes(plain_bytes(fossil())[:-5000])


def write_gzip_cut(path):
    path.write_bytes(gzip.compress(plain_bytes(fossil()))[:-400])


def write_garbage(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def write_empty(path):
    path.write_bytes(b"")


BAD = {
    "4d.nii": (write_4d, "unsupported", "4D"),
    "empty.nii.gz": (write_empty, "corrupt", "file is empty (0 bytes)"),
    "rgb.nii": (write_rgb, "unsupported", "RGB"),
    "truncated.nii": (write_truncated, "corrupt", "truncated"),
    "cut.nii.gz": (write_gzip_cut, "corrupt", ""),
    "garbage.nii": (write_garbage, "corrupt", "header"),
    "garbage.nii.gz": (write_garbage, "corrupt", "header (not gzip-compressed)"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_load_rejects(tmp_path, name):
    write, status, words = BAD[name]
    write(tmp_path / name)
    with pytest.raises(ScanReadError) as error:
        load_volume(tmp_path / name)
    assert error.value.status == status
    assert words.lower() in error.value.reason.lower()
    if name == "garbage.nii":
        assert "gzip" not in error.value.reason  # the name does not claim gzip, so it is beside the point


def scans_rows(out) -> dict:
    with duckdb.connect(str(out / "catalogue.duckdb"), read_only=True) as connection:
        rows = connection.execute("SELECT file_name, status, reason, scan_hash FROM scans").fetchall()
        slice_counts = dict(connection.execute(
            "SELECT scan_hash, count(*) FROM slice_rows GROUP BY scan_hash").fetchall())
    return {name: (status, reason, slice_counts.get(scan_hash, 0)) for name, status, reason, scan_hash in rows}


@pytest.mark.slow
def test_build_mixed_folder(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for n in range(1, 5):
        nib.save(nib.Nifti1Image(fossil(seed=n), np.eye(4)), scans / f"Globigerina bulloides_specimen{n}.nii.gz")
        nib.save(nib.Nifti1Image(fossil(seed=n + 10), np.eye(4)), scans / f"Orbitolina_ä_specimen{n}.nii")
    bad_names = {}
    for number, (name, (write, status, _)) in enumerate(sorted(BAD.items()), start=5):
        suffix = ".nii.gz" if name.endswith(".gz") else ".nii"
        file_name = f"Orbitolina_ä_specimen{number}{suffix}"
        write(scans / file_name)
        bad_names[file_name] = status
    constant = f"Orbitolina_ä_specimen{5 + len(BAD)}.nii"
    nib.save(nib.Nifti1Image(np.full((16, 16, 16), 3, np.int16), np.eye(4)), scans / constant)
    bad_names[constant] = "degenerate"

    out = tmp_path / "out"
    assert run_cli("build", scans, out, "--quiet", "--image-size", "32") == 0

    rows = scans_rows(out)
    for file_name, status in bad_names.items():
        got_status, reason, n_slices = rows[file_name]
        assert (got_status, n_slices) == (status, 0), file_name
        assert reason, file_name
    for n in range(1, 5):
        for file_name in (f"Globigerina bulloides_specimen{n}.nii.gz", f"Orbitolina_ä_specimen{n}.nii"):
            assert rows[file_name][0] == "analysed", file_name
            assert rows[file_name][2] == 3 * 32, file_name
    with duckdb.connect(str(out / "catalogue.duckdb"), read_only=True) as connection:
        files = connection.execute("SELECT species, split, file FROM slices WHERE selected").fetchall()
    for species in ("Globigerina bulloides", "Orbitolina_ä"):
        for split in ("train", "val", "test"):
            written = [file for name, part, file in files if (name, part) == (species, split)]
            assert written and all((out / file).is_file() for file in written), (species, split)
