"""Files beside the images: manifest with the dataset hash, metadata.csv, classes.json."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path

from tasks.export import write_atomic
from tasks.split import SPLITS

METADATA_COLUMNS = (
    "file_name", "label", "species", "specimen", "scan", "scan_hash", "view", "slice_index", "split",
    "area_fraction", "sharpness", "intensity_mean", "n_components",
)


def dataset_hash(files: Iterable[tuple[str, str]]) -> str:
    """Return the SHA-256 over ``"<sha256>  <path>"`` lines of (path, sha256) pairs, sorted by path."""
    digest = hashlib.sha256()
    for path, sha in sorted(files):
        digest.update(f"{sha}  {path}\n".encode())
    return digest.hexdigest()


def repeated_images(rows: Iterable[dict]) -> dict[tuple[str, str], int]:
    """Count the images that repeat the bytes of another image of the same specimen.

    Two scans of one specimen, such as a scan and its re-export with another
    intensity scale, can give byte-identical slice images. Each copy is a
    valid image and stays in the same split, so nothing leaks, but the slice
    counts twice in that split.

    Parameters
    ----------
    rows : iterable of dict
        Selected images, each with ``species``, ``specimen`` and ``sha256``.

    Returns
    -------
    dict
        ``(species, specimen) -> number of images beyond the first of each
        repeated content``, only for specimens with at least one.
    """
    seen: set[tuple[str, str, str]] = set()
    repeats: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["species"], row["specimen"], row["sha256"])
        if key in seen:
            specimen = (row["species"], row["specimen"])
            repeats[specimen] = repeats.get(specimen, 0) + 1
        seen.add(key)
    return dict(sorted(repeats.items()))


def write_manifest(out_dir: Path, files: list[tuple[str, str]]) -> str:
    """Write ``manifest.json`` (each file's SHA-256 and the dataset hash); return the dataset hash."""
    digest = dataset_hash(files)
    document = {
        "dataset_hash": digest,
        "files": [{"file": path, "sha256": sha} for path, sha in sorted(files)],
    }
    write_atomic(out_dir / "manifest.json", (json.dumps(document, indent=1) + "\n").encode())
    return digest


def write_split_metadata(out_dir: Path, rows: list[dict], classes: dict[str, int]) -> None:
    """Write ``<split>/metadata.csv`` in the layout Hugging Face ``imagefolder`` reads.

    ``file_name`` is relative to the split folder, as that loader expects.
    ``label`` is the class index from ``classes``, because the loader infers
    no label from folder names once a metadata file is present.
    A split with no images gets no file.
    """
    for split in SPLITS:
        selected = sorted(
            (dict(row, label=classes[row["species"]]) for row in rows if row["split"] == split),
            key=lambda row: row["file_name"],
        )
        target = out_dir / split / "metadata.csv"
        if not selected:
            target.unlink(missing_ok=True)
            continue
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METADATA_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(selected)
        write_atomic(target, buffer.getvalue().encode())


def class_index(species: Iterable[str]) -> dict[str, int]:
    """Return the class index of each species in alphabetical order, as Keras and torchvision assign them."""
    return {name: index for index, name in enumerate(sorted(set(species)))}


def write_classes(out_dir: Path, classes: dict[str, int]) -> None:
    """Write ``classes.json``, the class index of each species."""
    write_atomic(out_dir / "classes.json", (json.dumps(classes, indent=1, ensure_ascii=False) + "\n").encode())
