"""Loading scans: scaling, byte order, orientation, resampling, TIFF and compression by content."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from tasks.analyse import analyse_volume
from tasks.volume import load_volume
from conftest import REAL_SCANS, REAL_TIFF


def fossil(shape=(24, 20, 16), seed=0) -> np.ndarray:
    """A bright shell with a dense core in a noisy background, as int16."""
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radius = np.sqrt((((grid - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] / 2.5)) ** 2).sum(0))
    rng = np.random.default_rng(seed)
    volume = 100 + rng.normal(0, 5, shape) + 800 * (radius < 0.9) + 300 * (radius < 0.4)
    return volume.astype(np.int16)


def save(array, path, affine=np.eye(4), slope=None, inter=None, zooms=None):
    image = nib.Nifti1Image(array, affine)
    if zooms is not None:
        image.header.set_zooms(zooms)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


def test_load_scaled(tmp_path):
    raw = fossil()
    volume = load_volume(save(raw, tmp_path / "s.nii", slope=0.5, inter=-1000))
    expected = raw.astype(np.float32) * np.float32(0.5) + np.float32(-1000)
    np.testing.assert_array_equal(volume.data, expected)
    analysis = analyse_volume(volume.data, histogram=volume.histogram)
    assert analysis.clip_low == pytest.approx(np.percentile(expected, 1))
    assert analysis.clip_high == pytest.approx(np.percentile(expected, 99))
    assert analysis.clip_low < -900  # in scaled units, not raw ones


def test_load_big_endian(tmp_path):
    raw = fossil()
    native = load_volume(save(raw, tmp_path / "n.nii"))
    image = nib.Nifti1Image(raw, np.eye(4))
    swapped = image.header.as_byteswapped(">")
    nib.save(nib.Nifti1Image(raw.astype(">i2"), np.eye(4), swapped), tmp_path / "b.nii")
    big = load_volume(tmp_path / "b.nii")
    assert big.source_dtype == ">i2"
    np.testing.assert_array_equal(big.data, native.data)
    a = analyse_volume(native.data, histogram=native.histogram).slices
    b = analyse_volume(big.data, histogram=big.histogram).slices
    assert a.drop_columns(["scan_hash"]).equals(b.drop_columns(["scan_hash"]))


def test_load_trailing_singleton(tmp_path):
    raw = fossil()
    volume = load_volume(save(raw[..., None], tmp_path / "t.nii"))
    assert volume.data.shape == raw.shape
    assert analyse_volume(volume.data).status == "analysed"


def test_load_flipped_affine(tmp_path):
    raw = fossil().astype(np.float32)
    raw[3, 4, 5] = 5000  # an asymmetric marker
    plain = load_volume(save(raw, tmp_path / "p.nii", affine=np.diag([1, 1, 1, 1])))
    stored_flipped = raw[::-1].copy()
    flipped = load_volume(save(stored_flipped, tmp_path / "f.nii", affine=np.diag([-1, 1, 1, 1])))
    assert flipped.source_orientation == "LAS"
    np.testing.assert_array_equal(plain.data, flipped.data)
    assert np.unravel_index(np.argmax(flipped.data), raw.shape) == (3, 4, 5)


def test_load_anisotropic_sphere(tmp_path):
    shape = (64, 64, 16)  # 0.5 x 0.5 x 2.0 voxels: a 32 x 32 x 32 world box
    world = (np.indices(shape) + 0.5) * np.array([0.5, 0.5, 2.0])[:, None, None, None]
    sphere = np.sqrt(((world - 16.0) ** 2).sum(0)) < 10
    raw = (100 + 1000 * sphere).astype(np.int16)
    volume = load_volume(save(raw, tmp_path / "a.nii", zooms=(0.5, 0.5, 2.0)))
    assert volume.resampled and volume.voxel_size == pytest.approx(0.5)
    assert volume.data.shape == (64, 64, 64)
    analysis = analyse_volume(volume.data)
    for axis in range(3):
        rows = analysis.slices.filter(analysis.slices["view"].to_numpy(zero_copy_only=False) == f"axis{axis}")
        centre = rows.to_pylist()[32]
        height = centre["bbox_row1"] - centre["bbox_row0"] + 1
        width = centre["bbox_col1"] - centre["bbox_col0"] + 1
        assert abs(height - width) <= 2, (axis, height, width)
        assert abs(height - 40) <= 3  # a 10 mm radius is 40 voxels of 0.5 mm across


def test_load_gzip_by_content(tmp_path):
    raw = fossil()
    plain = save(raw, tmp_path / "x.nii")
    not_gzip = tmp_path / "plain_named.nii.gz"
    shutil.copy(plain, not_gzip)
    gzip_named_plain = tmp_path / "gzip_named.nii"
    gzip_named_plain.write_bytes(gzip.compress(plain.read_bytes()))
    expected = load_volume(plain).data
    np.testing.assert_array_equal(load_volume(not_gzip).data, expected)
    np.testing.assert_array_equal(load_volume(gzip_named_plain).data, expected)


def test_load_tiff_like_nifti():
    nifti = load_volume(REAL_SCANS / "Miliolid_specimen1.nii.gz")
    tiff = load_volume(REAL_TIFF / "Miliolid_specimen1.tif")
    assert tiff.data.shape == nifti.data.shape == (128, 128, 225)
    np.testing.assert_array_equal(tiff.data, nifti.data)
    a = analyse_volume(nifti.data, histogram=nifti.histogram)
    b = analyse_volume(tiff.data, histogram=tiff.histogram)
    assert (a.status, a.clip_low, a.clip_high, a.threshold, a.mask_voxels) == (
        b.status, b.clip_low, b.clip_high, b.threshold, b.mask_voxels)
    assert a.slices.equals(b.slices)
