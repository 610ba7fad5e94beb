"""The DuckDB catalogue: one writer per build, swapped in atomically; readers open it read-only.

A build copies the current catalogue file, writes into the copy and renames
it over the original when it finishes, so a reader sees either the previous
build or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from catalog.migrations import can_migrate, migrate_connection, migrate_file, version_problem
from catalog.schema import CATALOGUE_VERSION

CATALOGUE_FILE = "catalogue.duckdb"
LOCK_FILE = ".build.lock"

SCHEMA_SQL = Path(__file__).with_name("schema.sql")
VIEWS_SQL = Path(__file__).with_name("views.sql")


class CatalogueError(Exception):
    """A catalogue that is missing, locked or of an unknown version."""


def catalogue_path(out_dir: Path) -> Path:
    """Return the catalogue file of an output folder."""
    return Path(out_dir) / CATALOGUE_FILE


@contextmanager
def build_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` for one build.

    Raises CatalogueError at once when another build has it, because two
    writers would overwrite each other's images and catalogue.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open(out_dir / LOCK_FILE, "a+")
    try:
        _lock_or_raise(handle, out_dir)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def check_unlocked(out_dir: Path) -> None:
    """Raise CatalogueError when a build holds the lock of ``out_dir``; take and keep nothing."""
    lock = Path(out_dir) / LOCK_FILE
    if not lock.exists():
        return
    with open(lock, "a") as handle:
        _lock_or_raise(handle, out_dir)
        fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_or_raise(handle, out_dir: Path) -> None:
    """Take the build lock through ``handle`` without waiting, or raise CatalogueError."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        raise CatalogueError(
            f"another build is running in {out_dir} (lock {Path(out_dir) / LOCK_FILE}); wait for it to finish"
        ) from error


def catalogue_version(connection: duckdb.DuckDBPyConnection) -> int | None:
    """Return the version stored in a catalogue, or None for an empty database."""
    tables = {row[0] for row in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "catalogue_meta" not in tables:
        return None if not tables else 0
    row = connection.execute("SELECT value FROM catalogue_meta WHERE key = 'catalogue_version'").fetchone()
    return int(row[0]) if row else 0


def ensure_schema(connection: duckdb.DuckDBPyConnection, path: Path | str = "catalogue") -> None:
    """Create the tables of an empty catalogue, migrate an older one, or check the version.

    Raises CatalogueError for a catalogue that no migration can bring to this
    version; ``path`` only names the file in that message.
    """
    version = catalogue_version(connection)
    if version is None:
        connection.execute(SCHEMA_SQL.read_text())
        connection.execute(
            "INSERT INTO catalogue_meta VALUES ('catalogue_version', ?)", [str(CATALOGUE_VERSION)]
        )
    elif can_migrate(version):
        migrate_connection(connection, version)
    elif version != CATALOGUE_VERSION:
        raise CatalogueError(version_problem(Path(path), version))
    connection.execute(VIEWS_SQL.read_text())


def upgrade_catalogue(path: Path) -> None:
    """Migrate the catalogue file ``path`` in place when it is older, or fail when it cannot be read.

    Raises CatalogueError naming the version found and what to do. The caller
    must hold the build lock of the output folder.
    """
    connection = duckdb.connect(str(path), read_only=True)
    try:
        version = catalogue_version(connection)
    finally:
        connection.close()
    if version == CATALOGUE_VERSION:
        return
    if not can_migrate(version):
        raise CatalogueError(version_problem(path, version))
    migrate_file(path, version)


@contextmanager
def open_writer(out_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open a writable copy of the catalogue and swap it in when the block succeeds."""
    target = catalogue_path(out_dir)
    staging = target.with_name(target.name + ".writing")
    # A killed build leaves its copy and, beside it, a write-ahead log that
    # DuckDB would replay into the next copy; both must go.
    _remove_database_file(staging)
    if target.exists():
        shutil.copyfile(target, staging)
    connection = duckdb.connect(str(staging))
    try:
        ensure_schema(connection, target)
        yield connection
        connection.execute("CHECKPOINT")
    except BaseException:
        connection.close()
        _remove_database_file(staging)
        raise
    connection.close()
    os.replace(staging, target)


def _remove_database_file(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)


def open_reader(out_dir: Path) -> duckdb.DuckDBPyConnection:
    """Open the catalogue of ``out_dir`` read-only, migrating an older one first.

    The build calls this under the build lock, which the migration needs.
    """
    path = catalogue_path(out_dir)
    if not path.exists():
        raise CatalogueError(f"no catalogue at {path}; run 'fossil-slices build SCANS_DIR {out_dir}' first")
    upgrade_catalogue(path)
    return duckdb.connect(str(path), read_only=True)


def insert_arrow(connection: duckdb.DuckDBPyConnection, table_name: str, table: pa.Table) -> None:
    """Append an Arrow table to a catalogue table, matching columns by name."""
    if table.num_rows == 0:
        return
    connection.register("incoming_rows", table)
    try:
        columns = ", ".join(f'"{name}"' for name in table.column_names)
        connection.execute(f"INSERT INTO {table_name} ({columns}) SELECT {columns} FROM incoming_rows")
    finally:
        connection.unregister("incoming_rows")
