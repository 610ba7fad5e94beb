"""The catalogue as a product: documented views, version migration, build history and diff."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import duckdb
import pytest

from catalog.diff import diff_builds
from catalog.migrations import SLICE_ROW_COLUMNS
from catalog.sql import connect_read_only, documented_queries, run_query
from catalog.store import SCHEMA_SQL, VIEWS_SQL, CatalogueError, catalogue_path, open_reader
from catalog.schema import CATALOGUE_VERSION
from conftest import REAL_CORES, run_cli


def _rows(out: Path, query: str, parameters=None) -> list[tuple]:
    connection = duckdb.connect(str(catalogue_path(out)), read_only=True)
    try:
        return connection.execute(query, parameters or []).fetchall()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def rebuilt(real_cores_build, tmp_path_factory) -> Path:
    """A copy of the real-cores build with a second build that splits afresh with another seed."""
    out = tmp_path_factory.mktemp("rebuilt") / "out"
    shutil.copytree(real_cores_build, out)
    assert run_cli("build", REAL_CORES, out, "--quiet", "--resplit", "--seed", "7",
                   "--target-per-species", "900") == 0
    return out


# Documented queries


def test_docs_every_query_runs(real_cores_build):
    queries = documented_queries()
    connection = connect_read_only(real_cores_build)
    try:
        for name, query in queries.items():
            columns, _ = run_query(connection, query)
            assert columns, f"documented query {name} returned no columns"
    finally:
        connection.close()


def test_docs_every_view_has_example():
    views = set(re.findall(r"CREATE OR REPLACE VIEW (\w+)", VIEWS_SQL.read_text()))
    assert views - set(documented_queries()) == set()


def test_species_summary_matches_report(real_cores_build):
    report = json.loads((real_cores_build / "report.json").read_text())
    rows = _rows(real_cores_build, "SELECT species, train_slices, val_slices, test_slices FROM species_summary "
                                   "WHERE included")
    summary = {species: {"train": train, "val": val, "test": test} for species, train, val, test in rows}
    assert summary == report["counts"]


def test_species_summary_passing_matches_scans(real_cores_build):
    expected = dict(_rows(real_cores_build, "SELECT species, sum(n_passing) FROM scan_history WHERE status = 'analysed' GROUP BY species"))
    rows = _rows(real_cores_build, "SELECT species, passing_slices FROM species_summary WHERE analysed_scans > 0")
    assert dict(rows) == expected


def test_slices_selected_file_hash(real_cores_build):
    total = _rows(real_cores_build, "SELECT images_total FROM latest_build")[0][0]
    selected = _rows(real_cores_build, "SELECT count(DISTINCT file) FROM slices WHERE selected")[0][0]
    assert selected == total
    file, sha = _rows(real_cores_build, "SELECT file, file_sha256 FROM slices WHERE selected ORDER BY file LIMIT 1")[0]
    assert hashlib.sha256((real_cores_build / file).read_bytes()).hexdigest() == sha


def test_near_threshold_nearest_first(real_cores_build):
    rows = _rows(real_cores_build, "SELECT margin, passed, min_area_fraction FROM near_threshold LIMIT 50")
    margins = [abs(margin) for margin, _, _ in rows]
    assert margins == sorted(margins)
    assert all(passed == (margin >= 0) for margin, passed, _ in rows)
    assert {threshold for _, _, threshold in rows} == {0.02}


def test_rejected_slices_total(real_cores_build):
    failing = _rows(real_cores_build, "SELECT sum(n_slices - n_passing) FROM scans WHERE status = 'analysed'")[0][0]
    assert _rows(real_cores_build, "SELECT sum(slices) FROM rejected_slices")[0][0] == failing


# Version and migration


def _version_one_catalogue(out: Path) -> Path:
    """Write a small catalogue in the version-1 layout: slice_rows with a primary key."""
    out.mkdir(parents=True)
    connection = duckdb.connect(str(catalogue_path(out)))
    connection.execute(SCHEMA_SQL.read_text())
    connection.execute("DROP TABLE slice_rows")
    connection.execute(
        f"CREATE TABLE slice_rows ({SLICE_ROW_COLUMNS}, PRIMARY KEY (scan_hash, params_hash, view, slice_index))"
    )
    connection.execute("INSERT INTO catalogue_meta VALUES ('catalogue_version', '1')")
    connection.execute(
        "INSERT INTO slice_rows SELECT 'h', 'p', 'analysis-1', 'axis0', 'axis0', 0, i, 8, 8, 10, 10 / 64, "
        "0.5, 0.1, 0, 1, 2.0, 0, 7, 0, 7, 1, true, NULL FROM range(5) AS t(i)"
    )
    connection.close()
    return out


def _slice_key(out: Path) -> list[tuple]:
    return _rows(out, "SELECT constraint_type FROM duckdb_constraints() "
                      "WHERE table_name = 'slice_rows' AND constraint_type = 'PRIMARY KEY'")


def test_migrate_version1_reader(tmp_path):
    out = _version_one_catalogue(tmp_path / "out")
    assert _slice_key(out)
    connection = open_reader(out)
    try:
        version = connection.execute("SELECT value FROM catalogue_meta").fetchone()[0]
        slices = connection.execute("SELECT count(*) FROM slice_rows").fetchone()[0]
        connection.execute("SELECT * FROM species_summary").fetchall()
    finally:
        connection.close()
    assert (version, slices) == (str(CATALOGUE_VERSION), 5)
    assert _slice_key(out) == []


def test_migrate_version1_cli(tmp_path, capsys):
    out = _version_one_catalogue(tmp_path / "out")
    assert run_cli("sql", "SELECT count(*) AS n FROM slice_rows", "--db", out, "--format", "csv") == 0
    assert capsys.readouterr().out == "n\n5\n"
    assert _rows(out, "SELECT value FROM catalogue_meta")[0][0] == str(CATALOGUE_VERSION)


def test_version0_fails(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    connection = duckdb.connect(str(catalogue_path(out)))
    connection.execute("CREATE TABLE builds (build_id INTEGER)")
    connection.close()
    with pytest.raises(CatalogueError, match=r"has version 0.*move it away"):
        open_reader(out)
    assert run_cli("sql", "SELECT 1", "--db", out) == 4
    assert "has version 0" in capsys.readouterr().err


def test_newer_version_fails(tmp_path):
    out = _version_one_catalogue(tmp_path / "out")
    connection = duckdb.connect(str(catalogue_path(out)))
    connection.execute("UPDATE catalogue_meta SET value = '99'")
    connection.close()
    with pytest.raises(CatalogueError, match=r"has version 99, newer than version"):
        open_reader(out)


# Build history and diff


def test_history_keeps_both_builds(rebuilt):
    builds = _rows(rebuilt, "SELECT build_id, status, images_total FROM builds ORDER BY build_id")
    assert [(b, s) for b, s, _ in builds] == [(1, "succeeded"), (2, "succeeded")]
    counted = dict(_rows(rebuilt, "SELECT build_id, sum(images) FROM build_split_counts GROUP BY build_id"))
    assert counted == {build_id: total for build_id, _, total in builds}
    changes = _rows(rebuilt, "SELECT DISTINCT change FROM scan_history WHERE build_id = 2")
    assert changes == [("unchanged",)]


def test_history_build_splits_match_history(rebuilt):
    expected = _rows(rebuilt, "SELECT build_id, species, specimen, split FROM split_history ORDER BY ALL")
    assert _rows(rebuilt, "SELECT build_id, species, specimen, split FROM build_splits ORDER BY ALL") == expected


def test_diff_changed_splits(rebuilt):
    splits = {(b, species, specimen): split for b, species, specimen, split in
              _rows(rebuilt, "SELECT build_id, species, specimen, split FROM split_history")}
    moved = sorted((species, specimen) for (b, species, specimen), split in splits.items()
                   if b == 1 and splits.get((2, species, specimen)) != split)
    connection = connect_read_only(rebuilt)
    try:
        diff = diff_builds(connection, 1, 2)
    finally:
        connection.close()
    assert moved, "a resplit with another seed should move at least one specimen"
    assert [(species, specimen) for species, specimen, _, _ in diff.changed_splits] == moved
    test_then_train = sorted(key for key in moved if splits[(1, *key)] == "test" and splits[(2, *key)] == "train")
    assert diff.test_in_train_specimens == test_then_train
    if test_then_train:
        assert not diff.disjoint


def test_diff_image_counts(rebuilt):
    connection = connect_read_only(rebuilt)
    try:
        diff = diff_builds(connection, 1, 2)
    finally:
        connection.close()
    counts = {(b, species, split): images for b, species, split, images in
              _rows(rebuilt, "SELECT build_id, species, split, images FROM build_split_counts")}
    for row in diff.image_changes:
        assert row["images_a"] == counts.get((1, row["species"], row["split"]), 0)
        assert row["images_b"] == counts.get((2, row["species"], row["split"]), 0)
        assert row["images_b"] - row["images_a"] == row["added"] - row["removed"]


def test_diff_cli_verdict(rebuilt, capsys):
    assert run_cli("diff", 1, 2, "--db", rebuilt) == 0
    text = capsys.readouterr().out
    connection = connect_read_only(rebuilt)
    try:
        disjoint = diff_builds(connection, 1, 2).disjoint
    finally:
        connection.close()
    verdict = "is disjoint from the train split of build 2" if disjoint else "overlaps the train split of build 2"
    assert verdict in text


def test_diff_same_build_disjoint(real_cores_build, capsys):
    assert run_cli("diff", 1, 1, "--db", real_cores_build) == 0
    assert "test split of build 1 is disjoint from the train split of build 1" in capsys.readouterr().out


def test_diff_unknown_build(real_cores_build, capsys):
    assert run_cli("diff", 1, 9, "--db", real_cores_build) == 2
    assert "build 9 is not in the catalogue; its succeeded builds are 1" in capsys.readouterr().err
