"""Compare a scans folder with the catalogue's latest build, and describe the state of a build.

A scheduled rebuild polls the scans folder, so comparing it must be cheap even
when the scans are several GB each. A scan's SHA-256 is reused from a small
JSON file in ``OUT_DIR/storage`` while the file's size, modification time,
change time and inode stay the same. Every write to a file updates its change
time, and neither ``os.utime`` nor ``touch`` can set it back, so an edited scan
is hashed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from catalog.store import CatalogueError, catalogue_path, check_unlocked, open_reader
from tasks.discover import iter_scan_files, scan_hash_record
from tasks.publish import staged_build_id, staging_root



@dataclass
class ScanChanges:
    """Differences between a scans folder and the latest successful build in the catalogue.

    Every list contains paths relative to ``scans_dir``, sorted.
    """

    scans_dir: Path
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    hashed: int = 0          # files read and hashed during the comparison
    hashes_reused: int = 0   # files whose recorded hash was reused

    @property
    def any(self) -> bool:
        """True when at least one scan is new, changed or removed."""
        return bool(self.new or self.changed or self.removed)

    def summary(self) -> str:
        """Return one line such as ``1 new, 0 changed, 2 removed, 30 unchanged``."""
        return (f"{len(self.new)} new, {len(self.changed)} changed, {len(self.removed)} removed, "
                f"{self.unchanged} unchanged")


def recorded_scans(connection: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
    """Return {relative path: SHA-256} of the scans in the latest successful build.

    Files whose names did not parse have no hash (None): their content does
    not matter to a build.
    """
    rows = connection.execute("SELECT relative_path, scan_hash FROM scans").fetchall()
    return {relative_path: scan_hash for relative_path, scan_hash in rows}


def _recorded_scans_of(out_dir: Path) -> dict[str, str | None]:
    if not catalogue_path(out_dir).exists():
        return {}
    connection = open_reader(out_dir)
    try:
        return recorded_scans(connection)
    finally:
        connection.close()


def compare_scans(scans_dir: Path, out_dir: Path, recorded: dict[str, str | None] | None = None) -> ScanChanges:
    """Compare the scan files of ``scans_dir`` with the latest successful build in ``out_dir``.

    Parameters
    ----------
    scans_dir : pathlib.Path
        Folder of scans, walked the same way a build walks it.
    out_dir : pathlib.Path
        Output folder of the builds. Without a catalogue every scan is new.
    recorded : dict, optional
        {relative path: SHA-256} to compare with; read from the catalogue when omitted.

    Returns
    -------
    ScanChanges
        New files, changed files (same path, different SHA-256) and removed files.

    Raises
    ------
    FileNotFoundError
        If ``scans_dir`` is not a folder.
    catalog.store.CatalogueError
        If the catalogue has another version.
    """
    root = Path(scans_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"scans folder {root} not found; pass an existing folder of scans")
    if recorded is None:
        recorded = _recorded_scans_of(Path(out_dir))
    hashes = scan_hash_record(out_dir)
    changes = ScanChanges(scans_dir=root)

    present = set()
    for path in iter_scan_files(root):
        relative = path.relative_to(root).as_posix()
        present.add(relative)
        if relative not in recorded:
            changes.new.append(relative)
        elif recorded[relative] is not None and hashes.sha256(path) != recorded[relative]:
            changes.changed.append(relative)
        else:
            changes.unchanged += 1
    changes.removed = sorted(set(recorded) - present)
    changes.hashed, changes.hashes_reused = hashes.hashed, hashes.reused
    hashes.save()
    return changes


BUILD_COLUMNS = (
    "build_id", "started_at", "finished_at", "status", "message", "dataset_hash", "scans_dir", "scans_seen",
    "scans_added", "scans_changed", "scans_removed", "analyses_run", "analyses_cached", "images_total",
    "images_written", "images_unchanged", "images_removed",
)


def _build_rows(connection: duckdb.DuckDBPyConnection) -> tuple[dict | None, dict | None]:
    """Return the last build of any status and the last successful one."""
    columns = ", ".join(BUILD_COLUMNS)
    last = connection.execute(f"SELECT {columns} FROM builds ORDER BY build_id DESC LIMIT 1").fetchone()
    good = connection.execute(
        f"SELECT {columns} FROM builds WHERE status = 'succeeded' ORDER BY build_id DESC LIMIT 1"
    ).fetchone()
    as_dict = (lambda row: dict(zip(BUILD_COLUMNS, row)) if row else None)
    return as_dict(last), as_dict(good)


def _describe_build(label: str, build: dict) -> list[str]:
    seconds = (build["finished_at"] - build["started_at"]).total_seconds() if build["finished_at"] else None
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    lines = [f"{label} {build['build_id']}: {build['status']}, started {build['started_at']:%Y-%m-%d %H:%M:%S} UTC{took}"]
    if build["status"] != "succeeded":
        lines.append(f"  reason: {build['message']}")
        return lines
    lines += [
        f"  dataset hash {build['dataset_hash']}",
        f"  images {build['images_total']} ({build['images_written']} written, {build['images_unchanged']} "
        f"unchanged, {build['images_removed']} removed)",
        f"  scans {build['scans_seen']} ({build['scans_added']} added, {build['scans_changed']} changed, "
        f"{build['scans_removed']} removed); analyses {build['analyses_run']} run, {build['analyses_cached']} cached",
    ]
    return lines


def _describe_changes(changes: ScanChanges) -> list[str]:
    lines = [f"scans folder {changes.scans_dir}: {changes.summary()}"]
    for label, paths in (("new", changes.new), ("changed", changes.changed), ("removed", changes.removed)):
        lines += [f"  {label:<8}{path}" for path in paths]
    if changes.any:
        lines.append("  these scans wait for the next build")
    else:
        lines.append("  nothing waits to be built")
    return lines


def _build_running(out_dir: Path) -> bool:
    """Return whether a build holds the lock of ``out_dir`` at this moment."""
    try:
        check_unlocked(out_dir)
    except CatalogueError:
        return True
    return False


def describe_status(out_dir: Path, scans_dir: Path | None = None) -> str:
    """Describe the last build in ``out_dir`` and the scans waiting to be processed.

    Parameters
    ----------
    out_dir : pathlib.Path
        Output folder of the builds, with ``catalogue.duckdb``.
    scans_dir : pathlib.Path, optional
        Scans folder to compare with the catalogue; default the folder of the
        last successful build.

    Returns
    -------
    str
        Several lines of text for a terminal.

    Raises
    ------
    catalog.store.CatalogueError
        If there is no catalogue in ``out_dir`` or it has another version.
    """
    out_dir = Path(out_dir)
    connection = open_reader(out_dir)
    try:
        last, good = _build_rows(connection)
        recorded = recorded_scans(connection)
    finally:
        connection.close()

    lines = [f"catalogue {catalogue_path(out_dir)}"]
    if last is None:
        lines.append("no build recorded yet")
    else:
        lines += _describe_build("last build", last)
        if good is not None and good["build_id"] != last["build_id"]:
            lines += _describe_build("last successful build", good)
    staged = staged_build_id(out_dir)
    if staged is not None:
        if _build_running(out_dir):
            lines.append(f"build {staged} is running: its images are staged in {staging_root(out_dir)}")
        else:
            lines.append(f"build {staged} was interrupted; the next build finishes or discards its staged images")
    if scans_dir is None and good is not None:
        scans_dir = Path(good["scans_dir"])
    if scans_dir is None:
        lines.append("no scans folder to compare; pass --scans SCANS_DIR")
    elif not Path(scans_dir).is_dir():
        lines.append(f"scans folder {scans_dir} not found; pass --scans SCANS_DIR")
    else:
        lines += _describe_changes(compare_scans(Path(scans_dir), out_dir, recorded))
    return "\n".join(lines)
