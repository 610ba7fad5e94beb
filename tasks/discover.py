"""Find the scans in a folder, read species and specimen from their names, hash them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasks.export import write_atomic
from tasks.volume import scan_stem

# `<Species>_specimen<N>[<letter>][_<anything>]`: the part after the specimen
# token names another scan of the same physical specimen (a re-scan or an
# export), so it is not part of the specimen id.
DEFAULT_NAME_PATTERN = r"^(?P<species>.+?)_(?P<specimen>specimen\d+[A-Za-z]?)(?:_(?P<variant>.+))?$"

HASH_CHUNK_BYTES = 1 << 20

HASH_RECORD_FILE = "scan-hashes.json"
HASH_RECORD_VERSION = 1

# A file changed twice within one tick of the file system clock can keep its
# times, so a hash is only recorded for a file that has been left alone for
# this long before it was read.
SETTLED_NS = 2_000_000_000


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


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class ScanHashRecord:
    """SHA-256 of scan files, reused while a file's size, times and inode stay the same.

    Parameters
    ----------
    path : pathlib.Path
        JSON file that keeps the hashes between builds and scheduled checks. A
        missing or unreadable file starts an empty record, because every hash
        can be computed again.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._entries = self._load()
        self._seen: dict[str, dict] = {}
        self.hashed = 0
        self.reused = 0

    def _load(self) -> dict[str, dict]:
        try:
            document = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(document, dict) or document.get("version") != HASH_RECORD_VERSION:
            return {}
        files = document.get("files")
        return files if isinstance(files, dict) else {}

    def sha256(self, path: Path) -> str:
        """Return the hex SHA-256 of ``path``, from the record when the file is untouched since."""
        path = Path(path).resolve()
        before = path.stat()
        entry = self._entries.get(str(path))
        if entry is not None and entry.get("stat") == _stat_key(before):
            self.reused += 1
            self._seen[str(path)] = entry
            return entry["sha256"]

        digest = sha256_file(path)
        self.hashed += 1
        after = path.stat()
        newest_change = max(after.st_mtime_ns, after.st_ctime_ns)
        if _stat_key(after) == _stat_key(before) and time.time_ns() - newest_change > SETTLED_NS:
            self._seen[str(path)] = {"stat": _stat_key(after), "sha256": digest}
        return digest

    def save(self) -> None:
        """Write the hashes used in this pass; files not seen again are forgotten."""
        document = {"version": HASH_RECORD_VERSION, "files": dict(sorted(self._seen.items()))}
        try:
            write_atomic(self.path, (json.dumps(document, indent=1) + "\n").encode())
        except OSError:
            # The record only saves time. A folder we cannot write to costs a
            # full hash the next time, nothing more.
            pass


def scan_hash_record(out_dir: Path) -> ScanHashRecord:
    """Return the hash record of the builds into ``out_dir``, kept in its storage folder."""
    return ScanHashRecord(Path(out_dir) / "storage" / HASH_RECORD_FILE)


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
                   on_file: Callable[[], None] | None = None,
                   hashes: ScanHashRecord | None = None) -> tuple[list[Scan], list[UnparsedFile]]:
    """Walk ``root`` for scans, parse their names and hash their content.

    Returns the parsed scans, sorted by relative path, and the files whose
    names do not match ``pattern``, each with the reason. ``on_file`` is
    called once per file examined, for progress reports. With ``hashes``, a
    file whose size, times and inode are unchanged since they were recorded
    is not read again.
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
                content_hash=hashes.sha256(path) if hashes is not None else sha256_file(path),
                size_bytes=path.stat().st_size,
            )
        )
    return scans, unparsed
