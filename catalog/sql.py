"""Read-only SQL over the catalogue, printed as a table, CSV or JSON, or exported as Parquet."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from catalog.schema import CATALOGUE_VERSION
from catalog.store import CatalogueError, build_lock, catalogue_path, catalogue_version, upgrade_catalogue

CATALOGUE_README = Path(__file__).with_name("README.md")

# Rows per Arrow batch when exporting; bounds the memory of an export of a
# 2-million-row table to a few tens of MB.
EXPORT_BATCH_ROWS = 131_072

# Statement types a read-only query may use. Everything else (INSERT, UPDATE,
# DELETE, CREATE, DROP, COPY, ATTACH, INSTALL, LOAD, SET, ...) is rejected
# before it runs, and the connection itself is read-only with file access off.
ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "RELATION"}


class ReadOnlyError(Exception):
    """A statement that would change the catalogue or touch other files."""


def connect_read_only(out_dir: Path) -> duckdb.DuckDBPyConnection:
    """Open the catalogue read-only, with file system access from SQL disabled.

    An older catalogue is migrated first, under the build lock, so that no
    build writes it at the same time. Raises CatalogueError when the catalogue
    is missing, cannot be migrated, or a build holds the lock.
    """
    path = catalogue_path(out_dir)
    if not path.exists():
        raise CatalogueError(f"no catalogue at {path}; run 'fossil-slices build SCANS_DIR {out_dir}' first")
    connection = _connect(path)
    if catalogue_version(connection) != CATALOGUE_VERSION:
        connection.close()
        with build_lock(Path(out_dir)):
            upgrade_catalogue(path)
        connection = _connect(path)
    return connection


def _connect(path: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(
        str(path), read_only=True, config={"enable_external_access": False, "lock_configuration": True}
    )


def run_query(connection: duckdb.DuckDBPyConnection, query: str) -> tuple[list[str], list[tuple]]:
    """Run one read-only query and return (column names, rows).

    Raises ReadOnlyError for any statement that is not a query.
    """
    statements = connection.extract_statements(query)
    if not statements:
        raise ReadOnlyError("empty query; give a SELECT statement")
    if len(statements) > 1:
        # Only the last result would be printed, so the others would be lost.
        raise ValueError(f"{len(statements)} statements given; run one statement at a time")
    for statement in statements:
        kind = statement.type.name
        if kind not in ALLOWED_STATEMENTS:
            raise ReadOnlyError(
                f"the catalogue is read-only: {kind} statements are not allowed; use SELECT to query it"
            )
    cursor = connection.execute(query)
    if cursor.description is None:
        return [], []
    columns = [d[0] for d in cursor.description]
    return columns, cursor.fetchall()


def _plain(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_rows(columns: list[str], rows: list[tuple], fmt: str) -> str:
    """Render query results as ``table`` (aligned text), ``csv`` or ``json`` (a list of objects)."""
    if fmt == "json":
        return json.dumps([{c: _plain(v) for c, v in zip(columns, row)} for row in rows], indent=1, default=str) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in row] for row in rows])
        return buffer.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown output format {fmt!r}; use table, csv or json")
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(_plain(value))


def catalogue_relations(connection: duckdb.DuckDBPyConnection) -> list[str]:
    """Return the names of every table and view of the catalogue, sorted."""
    rows = connection.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY table_name"
    ).fetchall()
    return [row[0] for row in rows]


def export_parquet(connection: duckdb.DuckDBPyConnection, out_dir: Path) -> list[Path]:
    """Write every table and view of the catalogue to ``out_dir/<name>.parquet``.

    Rows stream through Arrow batches, so memory stays bounded. Each file is
    written under a temporary name and renamed, so a reader never sees half a
    file. Returns the files written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in catalogue_relations(connection):
        reader = connection.sql(f'SELECT * FROM "{name}"').to_arrow_reader(EXPORT_BATCH_ROWS)
        target = out_dir / f"{name}.parquet"
        staging = target.with_name(target.name + ".writing")
        with pq.ParquetWriter(staging, reader.schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch)
        os.replace(staging, target)
        written.append(target)
    return written


def documented_queries(readme: Path = CATALOGUE_README) -> dict[str, str]:
    """Return {name: SQL} for every ```sql block of the catalogue README.

    A block is named after the heading above it (``### species_summary`` gives
    ``species_summary``; a second block under it ``species_summary#2``). The
    test suite and the catalogue benchmark run exactly these, so the
    documentation cannot drift from the views.
    """
    queries: dict[str, str] = {}
    heading, block = "top", None
    for line in readme.read_text().splitlines():
        if block is not None:
            if line.strip() == "```":
                name, number = heading, 2
                while name in queries:
                    name, number = f"{heading}#{number}", number + 1
                queries[name] = "\n".join(block).strip()
                block = None
            else:
                block.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip().strip("`").split()[0].strip("`")
        elif line.strip() == "```sql":
            block = []
    return queries
