"""Tests for rendering slices, encoding images, naming and writing files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import nibabel
import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.filters import threshold_otsu

from flows import export_stage
from tasks.export import (
    FILE_SUFFIX,
    FORMATS,
    RenderParams,
    decode_image,
    encode_image,
    image_name,
    image_path,
    refine_mask,
    render_slice,
    safe_component,
    write_atomic,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MILIOLID = DATA / "real-scans" / "Miliolid_specimen1.nii.gz"
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
PARAMS = RenderParams()


# ---------------------------------------------------------------- helpers


def nonzero_bbox(image: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def rectangle_slice(shape, rows, cols, value=0.7, background=0.5):
    """Return (image, mask) with a filled rectangle on a bright background, so leaks show."""
    image = np.full(shape, background, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    image[mask] = value
    return image, mask


def sample_image() -> np.ndarray:
    image, mask = rectangle_slice((100, 60), slice(20, 80), slice(15, 45))
    rendered = render_slice(image * np.linspace(0.2, 1, 60, dtype=np.float32), mask)
    assert rendered.image is not None
    return rendered.image


# ---------------------------------------------------------------- real scan


@pytest.fixture(scope="module")
def miliolid():
    """Return (normalised volume, mask of the largest 3D component) of the real foraminifer scan."""
    if not DATA.exists():
        pytest.skip(f"real scans not found at {DATA}")
    volume = np.asarray(nibabel.load(MILIOLID).dataobj).astype(np.float32)
    low, high = np.percentile(volume, [1, 99])
    normalised = np.clip((volume - low) / (high - low), 0, 1)
    labels, _ = ndi.label(normalised > threshold_otsu(normalised))
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    return normalised, labels == np.argmax(areas)


def real_slice(miliolid, axis: int, fraction: float):
    volume, mask = miliolid
    profile = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    occupied = np.flatnonzero(profile)
    index = int(round(occupied[0] + fraction * (occupied[-1] - occupied[0])))
    return np.take(volume, index, axis=axis), np.take(mask, index, axis=axis)


REAL_SLICES = [(axis, fraction) for axis in range(3) for fraction in (0.3, 0.5, 0.7)]


@pytest.mark.parametrize(("axis", "fraction"), REAL_SLICES)
def test_refine_real_walls_kept(miliolid, axis, fraction):
    _, mask = real_slice(miliolid, axis, fraction)
    refined = refine_mask(mask, PARAMS)

    kept_fraction = np.count_nonzero(refined & mask) / np.count_nonzero(mask)
    assert kept_fraction >= 0.9

    # Wall pixels lost inside the object's outline are holes punched by the
    # refinement. Keeping only the largest component drops inner whorls here.
    lost_inside = mask & ~refined & ndi.binary_fill_holes(refined)
    labels, count = ndi.label(lost_inside, EIGHT_CONNECTED)
    largest_lost = np.bincount(labels.ravel())[1:].max(initial=0)
    assert largest_lost <= PARAMS.max_hole_size


@pytest.mark.parametrize(("axis", "fraction"), REAL_SLICES)
def test_render_real_slice(miliolid, axis, fraction):
    image, mask = real_slice(miliolid, axis, fraction)
    rendered = render_slice(image, mask)

    assert rendered.reason is None
    assert rendered.image.shape == (224, 224)
    assert rendered.image.dtype == np.float32
    assert 0 <= rendered.image.min()
    assert rendered.image.max() <= 1
    assert rendered.image[0].max() == 0  # margin row
    assert rendered.image[:, 0].max() == 0  # margin column
    assert rendered.area_fraction > PARAMS.min_area_fraction


# ---------------------------------------------------------------- refine_mask


def test_refine_removes_small_objects():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:25, 5:25] = True
    mask[30:33, 30:33] = True  # 9 pixels, below 16
    refined = refine_mask(mask, PARAMS)
    assert refined[10, 10]
    assert not refined[31, 31]
    assert np.count_nonzero(refined) == 400


def test_refine_fills_small_holes_only():
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:55, 5:55] = True
    mask[10:13, 10:13] = False  # 9-pixel hole: filled
    mask[25:40, 25:40] = False  # 225-pixel hole: kept
    refined = refine_mask(mask, RenderParams(closing_radius=0))
    assert refined[11, 11]
    assert not refined[30, 30]
    assert np.count_nonzero(~refined[25:40, 25:40]) == 225


def test_refine_closing_bridges_gap():
    mask = np.zeros((30, 30), dtype=bool)
    mask[5:25, 5:14] = True
    mask[5:25, 15:25] = True  # 1-pixel gap at column 14
    refined = refine_mask(mask, RenderParams(closing_radius=1))
    assert refined[6:24, 14].all()  # a disk of radius 1 cannot reach the gap's two end pixels
    unclosed = refine_mask(mask, RenderParams(closing_radius=0))
    assert not unclosed[5:25, 14].any()


def test_refine_keeps_largest_and_enclosed():
    mask = np.zeros((80, 80), dtype=bool)
    mask[10:60, 10:60] = True
    mask[14:56, 14:56] = False  # a ring with a large chamber
    mask[25:45, 25:45] = True  # separate inner whorl in the chamber
    mask[65:75, 65:75] = True  # separate object outside
    refined = refine_mask(mask, PARAMS)
    assert refined[12, 12]
    assert refined[30, 30]
    assert not refined[70, 70]


def test_refine_edge_object_not_eroded():
    mask = np.zeros((30, 30), dtype=bool)
    mask[0:10, 0:30] = True
    refined = refine_mask(mask, RenderParams(closing_radius=2))
    assert np.array_equal(refined, mask)


def test_refine_empty_and_3d():
    assert not refine_mask(np.zeros((10, 10), dtype=bool), PARAMS).any()
    with pytest.raises(ValueError, match="2D"):
        refine_mask(np.zeros((2, 10, 10), dtype=bool), PARAMS)


# ---------------------------------------------------------------- render_slice geometry


def test_render_rectangle_aspect():
    image, mask = rectangle_slice((100, 60), slice(20, 80), slice(15, 45))
    rendered = render_slice(image, mask)
    assert rendered.image.shape == (224, 224)
    assert rendered.mask_bbox == (20, 80, 15, 45)
    assert rendered.area_fraction == pytest.approx(1800 / 6000)

    row0, row1, col0, col1 = nonzero_bbox(rendered.image)
    assert (row1 - row0) / (col1 - col0) == pytest.approx(60 / 30, rel=0.02)
    assert (row0 + row1) / 2 == pytest.approx(112, abs=1)
    assert (col0 + col1) / 2 == pytest.approx(112, abs=1)
    # margin = round(0.05 * 60) = 3 px on a 66 px square, scaled to 224
    assert row0 == pytest.approx(3 * 224 / 66, abs=1)


def test_render_exact_zero_outside():
    # A ring whose chamber is far above max_hole_size: the bright background in
    # the chamber and around the ring must not leak, and no dark rim may form.
    yy, xx = np.mgrid[:90, :120]
    radius = np.hypot(yy - 45, xx - 60)
    mask = (radius >= 20) & (radius <= 35)
    image = np.where(mask, 0.7, 0.5).astype(np.float32)

    for size in (64, 224):  # shrinking and enlarging
        rendered = render_slice(image, mask, RenderParams(image_size=size))
        values = rendered.image[rendered.image > 0]
        assert rendered.image.shape == (size, size)
        assert rendered.image[size // 2, size // 2] == 0
        assert np.allclose(values, 0.7, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "rows", "cols", "params"),
    [
        ((20, 20), slice(7, 12), slice(7, 12), PARAMS),  # tiny 5x5 object
        ((10, 220), slice(4, 7), slice(10, 210), PARAMS),  # very elongated 3x200
        ((220, 10), slice(10, 210), slice(4, 7), PARAMS),  # the same, upright
        ((300, 500), slice(50, 250), slice(40, 460), PARAMS),  # shrinking
        ((300, 500), slice(50, 250), slice(40, 460), RenderParams(image_size=32)),
    ],
)
def test_render_shapes(shape, rows, cols, params):
    image, mask = rectangle_slice(shape, rows, cols)
    rendered = render_slice(image, mask, params)
    size = params.image_size

    height = rows.stop - rows.start
    width = cols.stop - cols.start
    side = max(height, width) + 2 * max(1, round(params.margin_fraction * max(height, width)))
    row0, row1, col0, col1 = nonzero_bbox(rendered.image)

    assert rendered.image.shape == (size, size)
    assert rendered.image.dtype == np.float32
    assert row1 - row0 == pytest.approx(height * size / side, abs=1.5)
    assert col1 - col0 == pytest.approx(width * size / side, abs=1.5)
    assert (row0 + row1) / 2 == pytest.approx(size / 2, abs=1)
    assert (col0 + col1) / 2 == pytest.approx(size / 2, abs=1)
    assert np.allclose(rendered.image[rendered.image > 0], 0.7, atol=1e-5)


def test_render_nan_and_out_of_range():
    image, mask = rectangle_slice((40, 40), slice(10, 30), slice(10, 30))
    image[12, 12] = np.nan
    image[20, 20] = 3.0
    image[25, 25] = -1.0
    # 20 px object + 1 px margin on both sides: a 22 px square, so no resizing
    rendered = render_slice(image, mask, RenderParams(image_size=22))
    assert rendered.image[3, 3] == 0
    assert rendered.image[11, 11] == 1
    assert rendered.image[16, 16] == 0
    assert rendered.image[5, 5] == pytest.approx(0.7)


def test_render_invalid_input():
    with pytest.raises(ValueError, match="must equal image shape"):
        render_slice(np.zeros((10, 10), np.float32), np.zeros((10, 11), bool))
    with pytest.raises(ValueError, match="2D"):
        render_slice(np.zeros((2, 10, 10), np.float32), np.zeros((2, 10, 10), bool))
    with pytest.raises(ValueError, match="image_size"):
        RenderParams(image_size=0)


# ---------------------------------------------------------------- render_slice drops


def test_drop_empty_mask():
    rendered = render_slice(np.ones((50, 50), np.float32), np.zeros((50, 50), bool))
    assert rendered.image is None
    assert rendered.reason == "refined mask is empty"
    assert rendered.mask_bbox is None
    assert rendered.area_fraction == 0


def test_drop_specks_only():
    mask = np.zeros((50, 50), dtype=bool)
    mask[::10, ::10] = True  # isolated pixels, removed as small objects
    rendered = render_slice(np.ones((50, 50), np.float32), mask)
    assert rendered.image is None
    assert rendered.reason == "refined mask is empty"


def test_drop_small_area():
    image, mask = rectangle_slice((100, 100), slice(10, 20), slice(10, 20))
    rendered = render_slice(image, mask)
    assert rendered.image is None
    assert rendered.reason == "refined mask covers 1.0% of the slice, below 2%"
    assert rendered.mask_bbox == (10, 20, 10, 20)
    assert rendered.area_fraction == pytest.approx(0.01)


def test_drop_reason_rounds_down():
    image, mask = rectangle_slice((100, 100), slice(10, 24), slice(10, 24))  # 1.96%
    rendered = render_slice(image, mask)
    assert rendered.reason == "refined mask covers 1.9% of the slice, below 2%"


def test_drop_black_object():
    image, mask = rectangle_slice((40, 40), slice(10, 30), slice(10, 30), value=0.001)
    rendered = render_slice(image, mask)
    assert rendered.image is None
    assert "8 bits" in rendered.reason


def test_drop_zero_pixels():
    rendered = render_slice(np.zeros((0, 5), np.float32), np.zeros((0, 5), bool))
    assert rendered.image is None
    assert rendered.reason == "slice has no pixels"


# ---------------------------------------------------------------- encoding


def test_png_round_trip(tmp_path):
    image = sample_image()
    path = tmp_path / f"a{FILE_SUFFIX['png']}"
    write_atomic(path, encode_image(image, "png"))

    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.shape == (224, 224, 3)
    assert stored.dtype == np.uint8
    assert np.array_equal(stored[..., 0], stored[..., 1])
    assert np.array_equal(stored[..., 0], stored[..., 2])
    assert np.array_equal(stored[..., 0], np.rint(image * 255).astype(np.uint8))
    assert np.array_equal(decode_image(path.read_bytes(), "png"), stored)


def test_png16_round_trip(tmp_path):
    image = sample_image()
    path = tmp_path / f"a{FILE_SUFFIX['png16']}"
    write_atomic(path, encode_image(image, "png16"))

    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.shape == (224, 224)
    assert stored.dtype == np.uint16
    assert np.array_equal(stored, np.rint(image * 65535).astype(np.uint16))


def test_npy_round_trip(tmp_path):
    image = sample_image()
    path = tmp_path / f"a{FILE_SUFFIX['npy']}"
    write_atomic(path, encode_image(image, "npy"))

    stored = np.load(path, allow_pickle=False)
    assert stored.dtype == np.float32
    assert np.array_equal(stored, image)


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_deterministic(fmt):
    image = sample_image()
    first = encode_image(image, fmt)
    second = encode_image(image.copy(), fmt)
    assert first == second
    assert np.array_equal(decode_image(first, fmt), decode_image(second, fmt))


def test_encode_rejects_bad_input():
    image = sample_image()
    with pytest.raises(ValueError, match="'jpeg'"):
        encode_image(image, "jpeg")
    with pytest.raises(ValueError, match="all zero"):
        encode_image(np.zeros((8, 8), np.float32), "png")
    with pytest.raises(ValueError, match="all zero"):
        encode_image(np.full((8, 8), 0.5 / 255, np.float32), "npy")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_image(image * 2, "png16")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_image(np.full((8, 8), np.nan, np.float32), "png")
    with pytest.raises(ValueError, match="could not read"):
        decode_image(b"not a png", "png")
    with pytest.raises(ValueError, match="could not read"):
        decode_image(b"", "npy")


# ---------------------------------------------------------------- names and paths


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Bone", "Bone"),
        ("Bone specimen 3", "Bone_specimen_3"),
        ('a<b>c:d"e|f?g*h', "a_b_c_d_e_f_g_h"),
        ("Globigerina_bulloïdes", "Globigerina_bulloïdes"),
        ("Ammonit\u0065\u0301", "Ammonit\u00e9"),  # NFD input, NFC output
        ("...", "..."),
    ],
)
def test_safe_component_valid(name, expected):
    assert safe_component(name) == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        (".", "folder"),
        ("..", "folder"),
        ("a/b", "separator"),
        ("a\\b", "separator"),
        ("../etc", "separator"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("a\x1fb", "control"),
    ],
)
def test_safe_component_invalid(name, message):
    with pytest.raises(ValueError, match=message):
        safe_component(name)


def test_image_name_default_stem():
    name = image_name("Bone", "specimen3", "Bone_specimen3_avizo", "axis1", 42, "png")
    assert name == "Bone_specimen3_avizo__axis1_0042.png"


def test_image_name_other_stem():
    assert image_name("Bone", "specimen3", "scanA", "axis0", 7, "npy") == "Bone_specimen3__scanA__axis0_0007.npy"
    assert image_name("Bone", "specimen4", "scanA", "axis0", 7, "npy") == "Bone_specimen4__scanA__axis0_0007.npy"


def test_image_name_long_index_and_unsafe():
    assert image_name("Bone", "s1", "Bone_s1", "axis2", 12345, "png16").endswith("_12345.png")
    assert image_name("Bone bone", "s 1", "x", "axis2", 0, "png") == "Bone_bone_s_1__x__axis2_0000.png"
    with pytest.raises(ValueError, match="separator"):
        image_name("Bone", "../s1", "x", "axis0", 0, "png")
    with pytest.raises(ValueError, match="slice_index"):
        image_name("Bone", "s1", "x", "axis0", -1, "png")
    with pytest.raises(ValueError, match="'tif'"):
        image_name("Bone", "s1", "x", "axis0", 0, "tif")
    with pytest.raises(ValueError, match="255 bytes"):
        image_name("Bone", "s1", "x" * 300, "axis0", 0, "png")


def test_image_path_layout(tmp_path):
    name = image_name("Ammonit\u0065\u0301", "s1", "x", "axis0", 3, "png")
    path = image_path(tmp_path, "train", "Ammonit\u0065\u0301", name)
    assert path == tmp_path / "train" / "Ammonit\u00e9" / "Ammonit\u00e9_s1__x__axis0_0003.png"


def test_image_path_never_escapes(tmp_path):
    out_dir = tmp_path / "out"
    outside = tmp_path / "elsewhere"
    out_dir.mkdir()
    outside.mkdir()
    (out_dir / "train").symlink_to(outside)

    with pytest.raises(ValueError, match="outside the output folder"):
        image_path(out_dir, "train", "Bone", "a.png")
    with pytest.raises(ValueError):
        image_path(out_dir, "..", "Bone", "a.png")
    with pytest.raises(ValueError):
        image_path(out_dir, "test", "../..", "a.png")
    with pytest.raises(ValueError, match="image_name"):
        image_path(out_dir, "test", "Bone", "a b.png")


# ---------------------------------------------------------------- write_atomic


def test_write_atomic_skips_identical(tmp_path):
    path = tmp_path / "train" / "Bone" / "a.png"
    assert write_atomic(path, b"first") is True
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))

    assert write_atomic(path, b"first") is False
    assert path.stat().st_mtime_ns == 1_000_000_000

    assert write_atomic(path, b"second") is True
    assert path.read_bytes() == b"second"
    assert path.stat().st_mtime_ns != 1_000_000_000
    assert os.listdir(path.parent) == ["a.png"]


def test_write_atomic_failure_cleans_up(tmp_path):
    target = tmp_path / "a.png"
    target.mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert os.listdir(tmp_path) == ["a.png"]
    assert target.is_dir()


def test_export_key_changes_with_code_version(monkeypatch):
    request = {"scan_hash": "ab" * 32, "view": "axis0", "slice_index": 7, "file": "train/A/A_s1__axis0_0007.png"}
    current = export_stage.export_key(request, "params", {"image_size": 224}, "png")
    monkeypatch.setattr(export_stage, "EXPORT_CODE_VERSION", "export-next")
    changed = export_stage.export_key(request, "params", {"image_size": 224}, "png")
    assert changed != current


def test_export_chunks_keep_order():
    items = list(range(2 * export_stage.MIN_IMAGES_PER_TASK + 1))
    parts = export_stage._chunks(items, 2)
    assert len(parts) == 2
    assert [item for part in parts for item in part] == items
    assert min(len(part) for part in parts) >= export_stage.MIN_IMAGES_PER_TASK


def test_export_chunks_small_scan_whole():
    items = list(range(2 * export_stage.MIN_IMAGES_PER_TASK - 1))
    assert export_stage._chunks(items, 2) == [items]
    assert export_stage._chunks([], 2) == []
