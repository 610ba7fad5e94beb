"""Read the previous build's state from the catalogue and write a new build's rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from catalog.store import catalogue_path, insert_arrow, open_reader


@dataclass
class PreviousState:
    """State recorded by the latest successful build, for incremental work."""

    last_build_id: int = 0
    last_successful_build_id: int | None = None
    scan_hashes: dict[str, str] = field(default_factory=dict)            # relative path -> content hash
    scan_rows: dict[str, dict] = field(default_factory=dict)             # relative path -> scan row
    assignments: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)  # -> (split, assigned_in)
    exports: dict[str, str] = field(default_factory=dict)                # export key -> SHA-256
    dropped: dict[str, str] = field(default_factory=dict)                # export key -> reason


def read_previous_state(out_dir: Path) -> PreviousState:
    """Return the state of the latest successful build in ``out_dir``, or an empty one."""
    state = PreviousState()
    if not catalogue_path(out_dir).exists():
        return state
    connection = open_reader(out_dir)
    try:
        row = connection.execute("SELECT coalesce(max(build_id), 0) FROM builds").fetchone()
        state.last_build_id = int(row[0])
        row = connection.execute("SELECT build_id FROM latest_build").fetchone()
        state.last_successful_build_id = int(row[0]) if row else None
        cursor = connection.execute("SELECT * FROM scans")
        names = [d[0] for d in cursor.description]
        for values in cursor.fetchall():
            scan = dict(zip(names, values))
            state.scan_rows[scan["relative_path"]] = scan
            if scan["scan_hash"]:
                state.scan_hashes[scan["relative_path"]] = scan["scan_hash"]
        for species, specimen, split, assigned_in in connection.execute(
            "SELECT species, specimen, split, assigned_in FROM splits"
        ).fetchall():
            state.assignments[(species, specimen)] = (split, int(assigned_in))
        for key, sha in connection.execute(
            "SELECT export_key, sha256 FROM exports WHERE status <> 'dropped'"
        ).fetchall():
            state.exports[key] = sha
        for key, reason in connection.execute(
            "SELECT export_key, reason FROM exports WHERE status = 'dropped'"
        ).fetchall():
            state.dropped[key] = reason
    finally:
        connection.close()
    return state


def insert_rows(connection: duckdb.DuckDBPyConnection, table_name: str, rows: list[dict]) -> None:
    """Append dict rows to a catalogue table; columns are matched by name."""
    if rows:
        insert_arrow(connection, table_name, pa.Table.from_pylist(rows))


def store_slice_rows(connection: duckdb.DuckDBPyConnection, parquet_files: list[str]) -> int:
    """Copy the slice rows of analyses not yet in the catalogue; return how many files were added."""
    present = {
        (scan_hash, params_hash)
        for scan_hash, params_hash in connection.execute(
            "SELECT DISTINCT scan_hash, params_hash FROM slice_rows"
        ).fetchall()
    }
    added = 0
    for path in sorted(set(parquet_files)):
        table = pq.read_table(path)
        if table.num_rows == 0:
            continue
        key = (table.column("scan_hash")[0].as_py(), table.column("params_hash")[0].as_py())
        if key in present:
            continue
        insert_arrow(connection, "slice_rows", table)
        present.add(key)
        added += 1
    return added


def prune_slice_rows(connection: duckdb.DuckDBPyConnection, keep: set[tuple[str, str]]) -> None:
    """Drop slice rows of analyses that no current scan uses, so the catalogue does not grow forever."""
    rows = connection.execute("SELECT DISTINCT scan_hash, params_hash FROM slice_rows").fetchall()
    stale = [row for row in rows if tuple(row) not in keep]
    for scan_hash, params_hash in stale:
        connection.execute(
            "DELETE FROM slice_rows WHERE scan_hash = ? AND params_hash = ?", [scan_hash, params_hash]
        )
