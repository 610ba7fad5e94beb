"""Read-only access to the catalogue: refused statements, readers during a build, Parquet export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest

from catalog.sql import catalogue_relations, connect_read_only
from catalog.store import catalogue_path
from conftest import REAL_CORES, run_cli

REPOSITORY = Path(__file__).resolve().parents[1]

REFUSED = {
    "insert": "INSERT INTO catalogue_meta VALUES ('owner', 'me')",
    "update": "UPDATE builds SET status = 'failed'",
    "delete": "DELETE FROM slice_rows",
    "drop": "DROP VIEW slices",
    "create": "CREATE TABLE notes (text VARCHAR)",
    "copy_to": "COPY (SELECT * FROM builds) TO '{target}' (FORMAT csv)",
    "attach": "ATTACH '{target}' AS other",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
}


def _fingerprint(out: Path) -> tuple:
    connection = duckdb.connect(str(catalogue_path(out)), read_only=True)
    try:
        return connection.execute(
            "SELECT (SELECT count(*) FROM builds), (SELECT count(*) FROM slice_rows), "
            "(SELECT count(*) FROM catalogue_meta), (SELECT count(*) FROM information_schema.tables)"
        ).fetchone()
    finally:
        connection.close()


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_sql_refuses_statement(kind, real_cores_build, tmp_path, capsys):
    target = tmp_path / "written.csv"
    before = _fingerprint(real_cores_build)
    assert run_cli("sql", REFUSED[kind].format(target=target), "--db", real_cores_build) == 5
    assert "the catalogue is read-only" in capsys.readouterr().err
    assert not target.exists()
    assert _fingerprint(real_cores_build) == before


def test_sql_refuses_file_access(real_cores_build, capsys):
    query = f"SELECT * FROM read_csv('{REAL_CORES / 'README.md'}')"
    assert run_cli("sql", query, "--db", real_cores_build) == 5
    assert "query failed" in capsys.readouterr().err


def test_sql_json_output(real_cores_build, capsys):
    assert run_cli("sql", "SELECT species, split, images FROM split_counts", "--db", real_cores_build,
                   "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    report = json.loads((real_cores_build / "report.json").read_text())
    assert {(r["species"], r["split"]): r["images"] for r in rows} == {
        (species, split): images for species, row in report["counts"].items() for split, images in row.items()
    }


def test_sql_needs_query_or_export(real_cores_build, capsys):
    assert run_cli("sql", "--db", real_cores_build) == 2
    assert "give either a QUERY or --export DIR" in capsys.readouterr().err


def test_export_parquet_pandas_polars(real_cores_build, tmp_path):
    export_dir = tmp_path / "parquet"
    assert run_cli("sql", "--export", export_dir, "--db", real_cores_build) == 0
    connection = connect_read_only(real_cores_build)
    try:
        names = catalogue_relations(connection)
        counts = {name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}
    finally:
        connection.close()
    assert {"slices", "species_summary", "builds", "slice_rows"} <= set(names)
    assert sorted(p.stem for p in export_dir.glob("*.parquet")) == sorted(names)
    for name in names:
        path = export_dir / f"{name}.parquet"
        assert len(pd.read_parquet(path)) == counts[name], name
        assert pl.read_parquet(path).height == counts[name], name
    slices = pl.read_parquet(export_dir / "slices.parquet")
    assert slices.filter(pl.col("selected")).height == pd.read_parquet(export_dir / "latest_build.parquet")[
        "images_total"].iloc[0]


def _observe(out: Path) -> tuple[int, int, int]:
    """Return (latest build id, images of the latest build, split rows of it) in one read-only session."""
    connection = connect_read_only(out)
    try:
        return connection.execute(
            "SELECT (SELECT build_id FROM latest_build), (SELECT count(*) FROM exported_files), "
            "(SELECT count(*) FROM splits)"
        ).fetchone()
    finally:
        connection.close()


def test_readers_during_build(real_cores_copy, tmp_path):
    out = real_cores_copy
    before = _observe(out)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    environment["PREFECT_HOME"] = str(tmp_path / "prefect")
    # Two cores are shared with this test's reads and the session's server.
    environment["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    build = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "build", str(REAL_CORES), str(out), "--quiet",
         "--target-per-species", "900"],
        cwd=REPOSITORY, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    seen, errors = [], []
    while build.poll() is None:
        try:
            seen.append(_observe(out))
        except Exception as error:  # any error a reader meets during a build is a failure of this test
            errors.append(repr(error))
        # A short pause leaves the build the CPU it needs; hundreds of reads still happen.
        time.sleep(0.02)
    assert build.returncode == 0, build.stderr.read()
    after = _observe(out)
    assert errors == []
    assert after[0] == before[0] + 1
    assert after[1] != before[1]
    assert seen and set(seen) <= {before, after}
