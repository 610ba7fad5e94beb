"""Find the scans in a folder, read species and specimen from their names, hash them."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasks.volume import scan_stem

# `<Species>_specimen<N>[<letter>][_<anything>]`: the part after the specimen
# token names another scan of the same physical specimen (a re-scan or an
# export), so it is not part of the specimen id.
DEFAULT_NAME_PATTERN = r"^(?P<species>.+?)_(?P<specimen>specimen\d+[A-Za-z]?)(?:_(?P<variant>.+))?$"

HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Scan:
    """One scan file of a physical specimen.

    ``content_hash`` is the SHA-256 of the file's bytes, so it identifies the
    scan across renames and moves.
    """

    path: str
    relative_path: str
    stem: str
    species: str
    specimen: str
    variant: str
    content_hash: str
    size_bytes: int


@dataclass(frozen=True)
class UnparsedFile:
    """A scan-like file left out of the build, with the reason."""

    path: str
    relative_path: str
    reason: str


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_scan_name(stem: str, pattern: str = DEFAULT_NAME_PATTERN) -> tuple[str, str, str] | None:
    """Return (species, specimen, variant) from a file stem, or None.

    The pattern must define the named groups ``species`` and ``specimen``;
    ``variant`` is optional.

    >>> parse_scan_name("Bone_specimen3_avizo")
    ('Bone', 'specimen3', 'avizo')
    >>> parse_scan_name("Chrysalidina_specimen12b")
    ('Chrysalidina', 'specimen12b', '')
    >>> parse_scan_name("notes") is None
    True
    """
    match = re.match(pattern, stem)
    if match is None:
        return None
    groups = match.groupdict()
    species = (groups.get("species") or "").strip()
    specimen = (groups.get("specimen") or "").strip()
    if not species or not specimen:
        return None
    return species, specimen, (groups.get("variant") or "").strip()


def iter_scan_files(root: Path) -> list[Path]:
    """Return the scan files below ``root`` in a stable order, skipping hidden entries."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and scan_stem(name) is not None:
                found.append(Path(folder) / name)
    return found


def discover_scans(root: Path, pattern: str = DEFAULT_NAME_PATTERN,
                   on_file: Callable[[], None] | None = None) -> tuple[list[Scan], list[UnparsedFile]]:
    """Walk ``root`` for scans, parse their names and hash their content.

    Returns the parsed scans, sorted by relative path, and the files whose
    names do not match ``pattern``, each with the reason. ``on_file`` is
    called once per file examined, for progress reports.
    """
    scans: list[Scan] = []
    unparsed: list[UnparsedFile] = []
    compiled = re.compile(pattern)
    for path in iter_scan_files(root):
        if on_file is not None:
            on_file()
        relative = path.relative_to(root).as_posix()
        stem = scan_stem(path.name)
        parsed = parse_scan_name(stem, compiled.pattern)
        if parsed is None:
            reason = f"name {stem!r} does not match the scan name pattern {pattern!r}"
            unparsed.append(UnparsedFile(str(path), relative, reason))
            continue
        species, specimen, variant = parsed
        scans.append(
            Scan(
                path=str(path),
                relative_path=relative,
                stem=stem,
                species=species,
                specimen=specimen,
                variant=variant,
                content_hash=sha256_file(path),
                size_bytes=path.stat().st_size,
            )
        )
    return scans, unparsed
