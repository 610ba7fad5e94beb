"""Tests for the synthetic collection generator in tasks.synthetic."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from tasks.synthetic import (
    BASE_VOXEL_MM,
    MORPHOTYPES,
    main,
    make_fossil_volume,
    write_collection,
    write_like_original,
)

NAME_PATTERN = re.compile(r"^(?P<species>[A-Za-z]+)_specimen(?P<specimen>\d+[a-z]?)(?:_(?P<rest>.+))?$")

# Scans per species in the original study, written out here so the test does not
# trust the module's own table.
ORIGINAL_COUNTS = {
    "Chrysalidina": 16,
    "Ataxophragmium": 7,
    "Baculogypsina": 7,
    "Minoxia": 6,
    "Elphidiella": 6,
    "Fallotia": 6,
    "Arumella": 5,
    "Lockhartia": 5,
    "Orbitoides": 5,
    "Rhapydionina": 5,
    "Alveolina": 4,
    "Coskinolina": 4,
    "Daviesina": 3,
    "Coscinoidea": 2,
    "Dictyoconus": 2,
    "Glyphostomalloides": 2,
    "Nummulites": 2,
    "Amphistegina": 1,
    "Cincoriola": 1,
    "Dictyoconoides": 1,
    "Dukhania": 1,
    "Fissolephidium": 1,
    "Heterostegina": 1,
    "Miscellanea": 1,
    "Omphalocyclus": 1,
    "Peneroplis": 1,
    "Rotalia": 1,
}

SMALL = (24, 24, 24)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise AssertionError(f"{name} has no NIfTI suffix")


def _parse(path: Path) -> tuple[str, str, str | None]:
    match = NAME_PATTERN.match(_stem(path))
    assert match is not None, f"{path.name} does not match the naming pattern"
    return match["species"], match["specimen"], match["rest"]


def _otsu_mask(volume: np.ndarray) -> np.ndarray:
    return volume > threshold_otsu(volume)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    assert count > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == np.argmax(sizes) + 1


def _passing_slice_share(component: np.ndarray, min_area: float = 0.02) -> float:
    """Share of all axis slices whose area in ``component`` is at least ``min_area``."""
    passing = 0
    total = 0
    for axis in range(3):
        other_axes = tuple(a for a in range(3) if a != axis)
        area = component.mean(axis=other_axes)
        passing += int((area >= min_area).sum())
        total += area.size
    return passing / total


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_like_original(tmp_path_factory.mktemp("original"), shape=(16, 16, 16))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out_dir = tmp_path_factory.mktemp("mixed")
    return write_collection(out_dir, n_species=3, specimens_per_species=4, shape=SMALL, mixed=True, rescans=4)


# ---------------------------------------------------------------------------
# make_fossil_volume


def test_volume_dtype_and_range():
    volume = make_fossil_volume((32, 32, 32), "planispiral", np.random.default_rng(0))

    assert volume.dtype == np.float32
    assert volume.shape == (32, 32, 32)
    assert float(volume.min()) >= 0.0
    assert float(volume.max()) <= 1.0
    # The corners lie outside the reconstruction circle, which is exactly 0.
    assert np.all(volume[0, 0, :] == 0.0)
    assert np.all(volume[-1, -1, :] == 0.0)


def test_volume_same_rng_state():
    first = make_fossil_volume((24, 24, 24), "conical", np.random.default_rng(7))
    second = make_fossil_volume((24, 24, 24), "conical", np.random.default_rng(7))
    other = make_fossil_volume((24, 24, 24), "conical", np.random.default_rng(8))

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("morphotype", MORPHOTYPES)
def test_otsu_fraction_per_morphotype(morphotype: str):
    for seed in range(5):
        volume = make_fossil_volume((48, 48, 48), morphotype, np.random.default_rng(seed))
        fraction = float(_otsu_mask(volume).mean())

        assert fraction >= 0.03, f"{morphotype} seed {seed}: Otsu mask covers {fraction:.1%}"
        assert fraction <= 0.60, f"{morphotype} seed {seed}: Otsu mask covers {fraction:.1%}"


@pytest.mark.parametrize("morphotype", MORPHOTYPES)
def test_shell_is_one_component(morphotype: str):
    for seed in range(3):
        volume = make_fossil_volume((48, 48, 48), morphotype, np.random.default_rng(seed))
        mask = _otsu_mask(volume)
        component = _largest_component(mask)

        component_share = component.sum() / mask.sum()
        assert component_share >= 0.9, f"{morphotype} seed {seed}: largest component is {component_share:.0%}"
        slice_share = _passing_slice_share(component)
        assert slice_share >= 0.35, f"{morphotype} seed {seed}: {slice_share:.0%} of slices reach 2%"


def test_otsu_threshold_above_matrix():
    # Rock and the zero corners must both fall below the threshold, so the mask is shell.
    volume = make_fossil_volume((48, 48, 48), "biserial", np.random.default_rng(3))
    threshold = threshold_otsu(volume)
    inside_circle = volume[volume > 0]

    assert threshold > float(np.median(inside_circle)) + 0.1


def test_flat_volume_segmentable():
    volume = make_fossil_volume((48, 48, 24), "discoidal", np.random.default_rng(1))
    fraction = float(_otsu_mask(volume).mean())

    assert volume.shape == (48, 48, 24)
    assert 0.03 <= fraction <= 0.60


def test_unknown_morphotype_raises():
    with pytest.raises(ValueError, match="unknown morphotype 'spherical'"):
        make_fossil_volume((32, 32, 32), "spherical", np.random.default_rng(0))


def test_small_shape_raises():
    with pytest.raises(ValueError, match="too small"):
        make_fossil_volume((8, 32, 32), "conical", np.random.default_rng(0))


def test_two_sided_shape_raises():
    with pytest.raises(ValueError, match="3 sides"):
        make_fossil_volume((32, 32), "conical", np.random.default_rng(0))


# ---------------------------------------------------------------------------
# write_collection


def test_collection_byte_identical(tmp_path: Path):
    kwargs = dict(n_species=3, specimens_per_species=3, shape=SMALL, seed=5, mixed=True, rescans=3)
    first = write_collection(tmp_path / "a", **kwargs)
    second = write_collection(tmp_path / "b", **kwargs)

    assert [p.name for p in first] == [p.name for p in second]
    for path_a, path_b in zip(first, second):
        assert path_a.read_bytes() == path_b.read_bytes(), path_a.name


def test_gzip_mtime_zero(mixed: list[Path]):
    compressed = [p for p in mixed if p.name.endswith(".nii.gz")]

    assert compressed
    for path in compressed:
        header = path.read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b", path.name
        assert header[4:8] == b"\x00\x00\x00\x00", f"{path.name} stores a gzip mtime"


def test_collection_seed_changes_scans(tmp_path: Path):
    first = write_collection(tmp_path / "a", n_species=1, specimens_per_species=1, shape=SMALL, seed=0)
    second = write_collection(tmp_path / "b", n_species=1, specimens_per_species=1, shape=SMALL, seed=1)

    assert first[0].name == second[0].name
    assert first[0].read_bytes() != second[0].read_bytes()


def test_collection_added_species_stable(tmp_path: Path):
    fewer = write_collection(tmp_path / "a", n_species=2, specimens_per_species=2, shape=SMALL)
    more = write_collection(tmp_path / "b", n_species=3, specimens_per_species=2, shape=SMALL)
    more_by_name = {p.name: p for p in more}

    assert len(more) == 6
    for path in fewer:
        assert path.read_bytes() == more_by_name[path.name].read_bytes(), path.name


def test_collection_default_counts(tmp_path: Path):
    paths = write_collection(tmp_path, n_species=4, specimens_per_species=2, shape=SMALL)
    parsed = [_parse(p) for p in paths]

    assert paths == sorted(paths)
    assert len(paths) == 8
    assert Counter(species for species, _, _ in parsed) == {
        "Alveolina": 2,
        "Chrysalidina": 2,
        "Lockhartia": 2,
        "Orbitoides": 2,
    }
    assert all(rest is None for _, _, rest in parsed)
    assert all(p.name.endswith(".nii.gz") for p in paths)


def test_collection_morphotype_per_species(mixed: list[Path]):
    morphotypes = defaultdict(set)
    for path in mixed:
        species, _, _ = _parse(path)
        description = nib.load(path).header["descrip"].tobytes().rstrip(b"\x00").decode()
        morphotypes[species].add(description.rsplit(" ", 1)[-1])

    assert morphotypes == {
        "Alveolina": {"planispiral"},
        "Chrysalidina": {"biserial"},
        "Lockhartia": {"trochospiral"},
    }


def test_mixed_names_match_pattern(mixed: list[Path]):
    rests = Counter(_parse(p)[2] for p in mixed)

    assert len(mixed) == 3 * 4 + 4
    assert rests == {None: 12, "scanB": 2, "avizo": 2}


def test_mixed_dtypes_round_trip(mixed: list[Path]):
    dtypes = Counter(str(nib.load(p).get_data_dtype()) for p in mixed)

    assert set(dtypes) == {"uint8", "uint16", "int16", "float32"}
    assert {p.suffix for p in mixed} == {".gz", ".nii"}


def test_mixed_int16_scaling(mixed: list[Path]):
    int16_paths = [p for p in mixed if nib.load(p).get_data_dtype() == np.int16]

    assert int16_paths
    for path in int16_paths:
        image = nib.load(path)
        assert image.dataobj.slope == pytest.approx(0.5)
        assert image.dataobj.inter == pytest.approx(-1000.0)
        raw = np.asarray(image.dataobj.get_unscaled())
        scaled = image.get_fdata()
        assert np.allclose(scaled, raw * 0.5 - 1000.0)
        assert scaled.min() >= -1000.0
        assert scaled.max() <= 3000.0


def test_mixed_voxel_sizes(mixed: list[Path]):
    field_mm = SMALL[0] * BASE_VOXEL_MM
    zooms = set()
    for path in mixed:
        image = nib.load(path)
        voxel = np.array(image.header.get_zooms()[:3], dtype=float)
        zooms.add(tuple(np.round(voxel, 4)))

        # The shape follows the voxel size, so the field keeps its physical size.
        extent = np.array(image.shape) * voxel
        assert np.allclose(extent, field_mm, rtol=0.05), f"{path.name}: field {extent} mm"
        assert np.allclose(np.abs(np.diag(image.affine)[:3]), voxel)
        assert image.header.get_xyzt_units()[0] == "mm"

    anisotropic = [z for z in zooms if len(set(z)) > 1]
    assert len(zooms) >= 3
    assert anisotropic


def test_mixed_flipped_affine(mixed: list[Path]):
    flipped = [p for p in mixed if nib.load(p).affine[0, 0] < 0]

    assert flipped
    for path in flipped:
        image = nib.load(path)
        canonical = nib.as_closest_canonical(image)
        voxel = np.array(image.header.get_zooms()[:3], dtype=float)
        # Reoriented, a flipped scan has the affine an unflipped scan would have.
        expected_origin = -(np.array(image.shape) - 1) / 2 * voxel
        assert np.all(np.diag(canonical.affine)[:3] > 0)
        assert np.allclose(canonical.affine[:3, 3], expected_origin, atol=1e-4)


def test_mixed_scans_segmentable(mixed: list[Path]):
    for path in mixed:
        fraction = float(_otsu_mask(nib.load(path).get_fdata()).mean())

        assert 0.03 <= fraction <= 0.60, f"{path.name}: Otsu mask covers {fraction:.1%}"


def test_avizo_export_same_voxels(tmp_path: Path):
    paths = write_collection(tmp_path, n_species=2, specimens_per_species=2, shape=SMALL, rescans=2)
    exports = [p for p in paths if _parse(p)[2] == "avizo"]

    assert len(exports) == 1
    export = nib.load(exports[0])
    species, specimen, _ = _parse(exports[0])
    first = nib.load(tmp_path / f"{species}_specimen{specimen}.nii.gz")
    assert export.get_data_dtype() == np.uint16
    assert export.shape == first.shape
    assert np.allclose(export.affine, first.affine)
    # uint8 = round(255 * intensity) and avizo = round(50000 * intensity) + 1000.
    from_export = (export.get_fdata() - 1000.0) / 50000.0
    from_first = first.get_fdata() / 255.0
    assert np.abs(from_export - from_first).max() <= 0.5 / 255 + 1e-4


def test_scan_b_same_fossil(tmp_path: Path):
    paths = write_collection(tmp_path, n_species=1, specimens_per_species=3, shape=(32, 32, 32), rescans=1)
    rescans = [p for p in paths if _parse(p)[2] == "scanB"]

    assert len(rescans) == 1
    species, specimen, _ = _parse(rescans[0])
    scans = [nib.load(tmp_path / f"{species}_specimen{specimen}.nii.gz"), nib.load(rescans[0])]
    voxels = [float(np.prod(s.header.get_zooms()[:3])) for s in scans]
    assert voxels[0] != pytest.approx(voxels[1])

    volumes_mm3 = [_otsu_mask(s.get_fdata()).sum() * v for s, v in zip(scans, voxels)]
    assert volumes_mm3[1] == pytest.approx(volumes_mm3[0], rel=0.2)


def test_specimens_differ(tmp_path: Path):
    paths = write_collection(tmp_path, n_species=1, specimens_per_species=2, shape=(32, 32, 32))
    masks = [_otsu_mask(nib.load(p).get_fdata()) for p in paths]
    overlap = np.logical_and(*masks).sum()
    dice = 2 * overlap / (masks[0].sum() + masks[1].sum())

    assert dice < 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_species=0), "n_species=0"),
        (dict(n_species=28), "n_species=28"),
        (dict(specimens_per_species=0), "specimens_per_species=0"),
        (dict(seed=-1), "seed=-1"),
        (dict(n_species=1, specimens_per_species=2, rescans=3), "rescans=3"),
        (dict(shape=(12, 12, 12)), "too small"),
    ],
)
def test_collection_invalid_arguments(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        write_collection(tmp_path, **kwargs)


# ---------------------------------------------------------------------------
# write_like_original


def test_original_counts(original: list[Path]):
    species = Counter(_parse(p)[0] for p in original)

    assert len(original) == 97
    assert len(species) == 27
    assert species == ORIGINAL_COUNTS


def test_original_names_match_pattern(original: list[Path]):
    for path in original:
        _parse(path)


def test_original_minoxia_specimens(original: list[Path]):
    minoxia = [_parse(p) for p in original if _parse(p)[0] == "Minoxia"]
    specimens = Counter(specimen for _, specimen, _ in minoxia)
    rests = Counter(rest for _, _, rest in minoxia)

    assert len(minoxia) == 6
    assert specimens == {"1": 2, "2": 2, "3": 2}
    assert rests == {None: 3, "avizo": 3}


def test_original_chrysalidina_specimens(original: list[Path]):
    chrysalidina = [_parse(p) for p in original if _parse(p)[0] == "Chrysalidina"]
    specimens = Counter(specimen for _, specimen, _ in chrysalidina)

    assert len(chrysalidina) == 16
    assert len(specimens) == 14
    assert specimens["1"] == 3
    assert {rest for _, specimen, rest in chrysalidina if specimen == "1"} == {None, "scanB", "scanC"}


def test_original_single_scan_species(original: list[Path]):
    multi_scan = {"Minoxia", "Chrysalidina"}
    for path in original:
        species, _, rest = _parse(path)
        if species not in multi_scan:
            assert rest is None, path.name


def test_original_byte_identical(tmp_path: Path, original: list[Path]):
    again = write_like_original(tmp_path, shape=(16, 16, 16))

    assert [p.name for p in again] == [p.name for p in original]
    for path_a, path_b in zip(original, again):
        assert path_a.read_bytes() == path_b.read_bytes(), path_a.name


# ---------------------------------------------------------------------------
# Command line


def test_cli_writes_collection(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    status = main([str(tmp_path), "--species", "2", "--specimens", "2", "--shape", "24", "--rescans", "1"])

    assert status == 0
    assert len(list(tmp_path.iterdir())) == 5
    assert "wrote 5 scans" in capsys.readouterr().out
    assert nib.load(tmp_path / "Alveolina_specimen1.nii.gz").shape == (24, 24, 24)


def test_cli_three_sided_shape(tmp_path: Path):
    status = main([str(tmp_path), "--species", "1", "--specimens", "1", "--shape", "32,32,24"])

    assert status == 0
    assert nib.load(tmp_path / "Alveolina_specimen1.nii.gz").shape == (32, 32, 24)


def test_cli_like_original_conflict(tmp_path: Path):
    with pytest.raises(SystemExit) as error:
        main([str(tmp_path), "--like-original", "--mixed"])

    assert error.value.code == 2
    assert not any(tmp_path.iterdir())


def test_cli_invalid_shape(tmp_path: Path):
    with pytest.raises(SystemExit) as error:
        main([str(tmp_path), "--shape", "48,48"])

    assert error.value.code == 2
