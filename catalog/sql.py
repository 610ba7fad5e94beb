"""Read-only SQL over the catalogue, printed as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import date, datetime
from pathlib import Path

import duckdb

from catalog.store import CatalogueError, catalogue_path, catalogue_version
from catalog.schema import CATALOGUE_VERSION

# Statement types a read-only query may use. Everything else (INSERT, UPDATE,
# DELETE, CREATE, DROP, COPY, ATTACH, INSTALL, LOAD, SET, ...) is rejected
# before it runs, and the connection itself is read-only with file access off.
ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "RELATION"}


class ReadOnlyError(Exception):
    """A statement that would change the catalogue or touch other files."""


def connect_read_only(out_dir: Path) -> duckdb.DuckDBPyConnection:
    """Open the catalogue read-only, with file system access from SQL disabled."""
    path = catalogue_path(out_dir)
    if not path.exists():
        raise CatalogueError(f"no catalogue at {path}; run 'fossil-slices build SCANS_DIR {out_dir}' first")
    connection = duckdb.connect(
        str(path), read_only=True, config={"enable_external_access": False, "lock_configuration": True}
    )
    version = catalogue_version(connection)
    if version != CATALOGUE_VERSION:
        connection.close()
        raise CatalogueError(
            f"catalogue {path} has version {version}; this fossil-slices reads version {CATALOGUE_VERSION}. "
            "Rebuild the dataset with this version of fossil-slices"
        )
    return connection


def run_query(connection: duckdb.DuckDBPyConnection, query: str) -> tuple[list[str], list[tuple]]:
    """Run one read-only query and return (column names, rows).

    Raises ReadOnlyError for any statement that is not a query.
    """
    statements = connection.extract_statements(query)
    if not statements:
        raise ReadOnlyError("empty query; give a SELECT statement")
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
