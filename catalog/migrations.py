"""Bring a catalogue written by an older fossil-slices up to the current version.

Each migration takes a writable connection from version ``n`` to ``n + 1``
inside one transaction. :func:`migrate_file` runs them on a copy of the
catalogue file and renames the copy over the original, so a reader never sees
a half-migrated catalogue.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb

from catalog.schema import CATALOGUE_VERSION

# Columns of slice_rows, in table order. Version 2 rebuilds the table with
# them, because DuckDB cannot drop a PRIMARY KEY with ALTER TABLE.
SLICE_ROW_COLUMNS = """
    scan_hash       VARCHAR NOT NULL,
    params_hash     VARCHAR NOT NULL,
    code_version    VARCHAR NOT NULL,
    view            VARCHAR NOT NULL,
    plane           VARCHAR NOT NULL,
    angle_deg       SMALLINT NOT NULL,
    slice_index     INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    width           INTEGER NOT NULL,
    mask_pixels     BIGINT NOT NULL,
    area_fraction   DOUBLE NOT NULL,
    intensity_mean  DOUBLE,
    intensity_std   DOUBLE,
    intensity_min   DOUBLE,
    intensity_max   DOUBLE,
    sharpness       DOUBLE NOT NULL,
    bbox_row0       INTEGER,
    bbox_row1       INTEGER,
    bbox_col0       INTEGER,
    bbox_col1       INTEGER,
    n_components    INTEGER NOT NULL,
    passed          BOOLEAN NOT NULL,
    reason          VARCHAR
"""


class MigrationError(Exception):
    """A catalogue whose version no migration starts from."""


def _drop_slice_key(connection: duckdb.DuckDBPyConnection) -> None:
    """Version 1 -> 2: rebuild slice_rows without its primary-key index.

    The views depend on slice_rows, so they are dropped first; the caller
    recreates them from views.sql.
    """
    views = [row[0] for row in connection.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'"
    ).fetchall()]
    for name in views:
        connection.execute(f'DROP VIEW IF EXISTS "{name}" CASCADE')
    connection.execute(f"CREATE TABLE slice_rows_v2 ({SLICE_ROW_COLUMNS})")
    connection.execute("INSERT INTO slice_rows_v2 SELECT * FROM slice_rows")
    connection.execute("DROP TABLE slice_rows")
    connection.execute("ALTER TABLE slice_rows_v2 RENAME TO slice_rows")


# MIGRATIONS[n] turns a version-n catalogue into a version n + 1 one.
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {
    1: _drop_slice_key,
}


def can_migrate(version: int | None) -> bool:
    """Return True when a chain of migrations leads from ``version`` to the current one."""
    if version is None or version >= CATALOGUE_VERSION:
        return False
    return all(step in MIGRATIONS for step in range(version, CATALOGUE_VERSION))


def version_problem(path: Path, version: int | None) -> str:
    """Return the message for a catalogue that this fossil-slices can neither read nor migrate."""
    if version is not None and version > CATALOGUE_VERSION:
        return (
            f"catalogue {path} has version {version}, newer than version {CATALOGUE_VERSION} that this "
            "fossil-slices reads; upgrade fossil-slices, or build into a new output folder"
        )
    return (
        f"catalogue {path} has version {version}, and this fossil-slices reads version {CATALOGUE_VERSION} "
        f"and migrates versions {min(MIGRATIONS)} and later; it was written before the catalogue kept a "
        "version, so move it away (or build into a new output folder) and build again"
    )


def migrate_connection(connection: duckdb.DuckDBPyConnection, version: int) -> None:
    """Run every migration from ``version`` to the current one, in one transaction.

    The caller recreates the views and the stored version number follows the
    last step, so an interrupted migration leaves the older catalogue intact.
    """
    if not can_migrate(version):
        raise MigrationError(f"no migration leads from catalogue version {version} to {CATALOGUE_VERSION}")
    connection.execute("BEGIN TRANSACTION")
    try:
        for step in range(version, CATALOGUE_VERSION):
            MIGRATIONS[step](connection)
        connection.execute(
            "UPDATE catalogue_meta SET value = ? WHERE key = 'catalogue_version'", [str(CATALOGUE_VERSION)]
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def migrate_file(path: Path, version: int) -> None:
    """Migrate the catalogue file ``path`` from ``version`` on a copy, then swap the copy in.

    The caller must hold the output folder's build lock, so no build writes
    the file at the same time.
    """
    from catalog.store import VIEWS_SQL  # store imports this module; import here to avoid a cycle

    staging = path.with_name(path.name + ".migrating")
    staging.unlink(missing_ok=True)
    shutil.copyfile(path, staging)
    connection = duckdb.connect(str(staging))
    try:
        migrate_connection(connection, version)
        connection.execute(VIEWS_SQL.read_text())
        connection.execute("CHECKPOINT")
    except BaseException:
        connection.close()
        staging.unlink(missing_ok=True)
        raise
    connection.close()
    os.replace(staging, path)
