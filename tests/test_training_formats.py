"""The exported real-cores dataset as training libraries load it: Hugging Face ``imagefolder``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# A local imagefolder needs no network. These make the library fail instead
# of reaching out. They are read when ``datasets`` is imported.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import datasets  # noqa: E402

from catalog.sql import connect_read_only  # noqa: E402
from tasks.volume import scan_stem  # noqa: E402

# imagefolder names the split of the val folder "validation".
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}
METADATA = ("species", "specimen", "scan", "view", "slice_index")


@pytest.fixture(scope="module")
def loaded(real_cores_build, tmp_path_factory) -> datasets.DatasetDict:
    cache = tmp_path_factory.mktemp("hf-cache")
    return datasets.load_dataset("imagefolder", data_dir=str(real_cores_build), cache_dir=str(cache))


@pytest.fixture(scope="module")
def catalogue_files(real_cores_build) -> dict[str, dict]:
    """{file below OUT: the catalogue's values of the metadata columns and its split}."""
    with connect_read_only(real_cores_build) as connection:
        rows = connection.execute(
            "SELECT e.file, e.species, e.specimen, s.file_name, e.view, e.slice_index, e.split "
            "FROM exported_files AS e JOIN scans AS s USING (scan_hash)"
        ).fetchall()
    return {
        file: {"species": species, "specimen": specimen, "scan": scan_stem(file_name), "view": view,
               "slice_index": index, "split": split}
        for file, species, specimen, file_name, view, index, split in rows
    }


def test_splits(loaded, catalogue_files):
    assert sorted(loaded) == sorted(HF_SPLITS.values())
    for split, name in HF_SPLITS.items():
        expected = sum(1 for row in catalogue_files.values() if row["split"] == split)
        assert loaded[name].num_rows == expected > 0


def test_labels_alphabetical(loaded, real_cores_build):
    classes = json.loads((real_cores_build / "classes.json").read_text())
    assert list(classes) == sorted(classes) == ["Bone", "Cement", "Fibers", "NerveTissue"]
    assert list(classes.values()) == list(range(len(classes)))
    for name in HF_SPLITS.values():
        encoded = loaded[name].remove_columns("image").class_encode_column("species")
        assert encoded.features["species"].names == list(classes)
        species = loaded[name]["species"]
        assert encoded["species"] == [classes[value] for value in species]
        assert loaded[name]["label"] == [classes[value] for value in species]


def test_metadata_matches_catalogue(loaded, real_cores_build, catalogue_files):
    out = Path(real_cores_build).resolve()
    seen = set()
    for split, name in HF_SPLITS.items():
        table = loaded[name].cast_column("image", datasets.Image(decode=False))
        for example in table:
            file = Path(example["image"]["path"]).resolve().relative_to(out).as_posix()
            expected = catalogue_files[file]
            assert {key: example[key] for key in METADATA} == {key: expected[key] for key in METADATA}, file
            assert expected["split"] == split
            assert file.split("/")[1] == expected["species"]
            seen.add(file)
    assert seen == set(catalogue_files)


def test_images_rgb_224(loaded):
    for name in HF_SPLITS.values():
        for example in loaded[name]:
            pixels = np.asarray(example["image"])
            assert pixels.shape == (224, 224, 3)
            assert pixels.dtype == np.uint8
            assert (pixels[..., 0] == pixels[..., 1]).all()
            assert (pixels[..., 1] == pixels[..., 2]).all()
            assert pixels.max() > 0, "an exported image is all black"


def test_readme_class_label_cast(loaded, real_cores_build):
    # The cast that the README's training section gives.
    classes = list(json.loads((real_cores_build / "classes.json").read_text()))
    named = loaded.cast_column("label", datasets.ClassLabel(names=classes))
    for name in HF_SPLITS.values():
        features = named[name].features["label"]
        assert features.names == classes
        labels = named[name]["label"]
        assert [features.int2str(label) for label in labels] == loaded[name]["species"]
