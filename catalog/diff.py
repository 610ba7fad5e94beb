"""Differences between two builds of one catalogue, and whether their splits can be compared.

The question behind the last part: can a model trained on build B be
evaluated on the test split of build A? Only when no specimen and no scan
content of A's test split sits in B's train split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

# Specimens whose split differs between the builds; NULL means the specimen
# was not split in that build (new, removed, or its species excluded).
CHANGED_SPLITS = """
SELECT coalesce(a.species, b.species) AS species, coalesce(a.specimen, b.specimen) AS specimen,
       a.split AS split_a, b.split AS split_b
FROM (SELECT * FROM split_history WHERE build_id = $a) AS a
FULL OUTER JOIN (SELECT * FROM split_history WHERE build_id = $b) AS b USING (species, specimen)
WHERE a.split IS DISTINCT FROM b.split
ORDER BY species, specimen
"""

# Images per species and split: in A, in B, only in B (added), only in A
# (removed), and in both with a different file content (rewritten). An image
# is one slice (scan content, view, index) in one split.
IMAGE_CHANGES = """
WITH a AS (SELECT * FROM export_history WHERE build_id = $a AND status <> 'dropped'),
     b AS (SELECT * FROM export_history WHERE build_id = $b AND status <> 'dropped')
SELECT coalesce(a.species, b.species) AS species, coalesce(a.split, b.split) AS split,
       count(a.scan_hash) AS images_a,
       count(b.scan_hash) AS images_b,
       count(*) FILTER (WHERE a.scan_hash IS NULL) AS added,
       count(*) FILTER (WHERE b.scan_hash IS NULL) AS removed,
       count(*) FILTER (WHERE a.sha256 <> b.sha256) AS rewritten
FROM a FULL OUTER JOIN b USING (species, split, scan_hash, view, slice_index)
GROUP BY ALL
ORDER BY species, split
"""

# Specimens and scan contents in A's test split that B puts in train.
TEST_IN_TRAIN_SPECIMENS = """
SELECT a.species, a.specimen
FROM split_history AS a JOIN split_history AS b USING (species, specimen)
WHERE a.build_id = $a AND a.split = 'test' AND b.build_id = $b AND b.split = 'train'
ORDER BY species, specimen
"""

TEST_IN_TRAIN_SCANS = """
SELECT DISTINCT a.scan_hash, a.relative_path AS path_a, b.relative_path AS path_b
FROM build_scan_splits AS a JOIN build_scan_splits AS b USING (scan_hash)
WHERE a.build_id = $a AND a.split = 'test' AND b.build_id = $b AND b.split = 'train'
ORDER BY a.scan_hash, path_a, path_b
"""


class UnknownBuildError(Exception):
    """A build id that the catalogue does not hold."""


@dataclass
class BuildDiff:
    """The differences between builds ``build_a`` and ``build_b``."""

    build_a: int
    build_b: int
    changed_splits: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    image_changes: list[dict] = field(default_factory=list)
    test_in_train_specimens: list[tuple[str, str]] = field(default_factory=list)
    test_in_train_scans: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def disjoint(self) -> bool:
        """True when no specimen and no scan content of A's test split is in B's train split."""
        return not self.test_in_train_specimens and not self.test_in_train_scans


def check_build(connection: duckdb.DuckDBPyConnection, build_id: int) -> None:
    """Raise UnknownBuildError unless ``build_id`` is a succeeded build of the catalogue."""
    rows = connection.execute("SELECT build_id, status FROM builds ORDER BY build_id").fetchall()
    statuses = dict(rows)
    known = ", ".join(str(b) for b, s in rows if s == "succeeded") or "none"
    if build_id not in statuses:
        raise UnknownBuildError(f"build {build_id} is not in the catalogue; its succeeded builds are {known}")
    if statuses[build_id] != "succeeded":
        raise UnknownBuildError(
            f"build {build_id} {statuses[build_id]} and recorded no split; compare succeeded builds ({known})"
        )


def diff_builds(connection: duckdb.DuckDBPyConnection, build_a: int, build_b: int) -> BuildDiff:
    """Compare builds ``build_a`` and ``build_b`` of one catalogue.

    Raises UnknownBuildError when either is not a succeeded build.
    """
    check_build(connection, build_a)
    check_build(connection, build_b)
    ids = {"a": build_a, "b": build_b}
    cursor = connection.execute(IMAGE_CHANGES, ids)
    names = [d[0] for d in cursor.description]
    # Fetch before the next execute, which replaces this result.
    image_changes = [dict(zip(names, row)) for row in cursor.fetchall()]
    return BuildDiff(
        build_a=build_a,
        build_b=build_b,
        changed_splits=[tuple(row) for row in connection.execute(CHANGED_SPLITS, ids).fetchall()],
        image_changes=image_changes,
        test_in_train_specimens=[tuple(row) for row in connection.execute(TEST_IN_TRAIN_SPECIMENS, ids).fetchall()],
        test_in_train_scans=[tuple(row) for row in connection.execute(TEST_IN_TRAIN_SCANS, ids).fetchall()],
    )


def format_diff(diff: BuildDiff) -> str:
    """Render a diff as plain text: split changes, image counts, and the train/test verdict."""
    a, b = diff.build_a, diff.build_b
    lines = [f"builds {a} -> {b}", "", f"specimens that changed split: {len(diff.changed_splits)}"]
    for species, specimen, split_a, split_b in diff.changed_splits:
        lines.append(f"  {species} {specimen}: {split_a or '-'} -> {split_b or '-'}")
    lines += ["", "images per species and split:",
              f"  {'species':<20} {'split':<5} {'build ' + str(a):>9} {'build ' + str(b):>9} "
              f"{'added':>7} {'removed':>7} {'rewritten':>9}"]
    for row in diff.image_changes:
        lines.append(
            f"  {row['species']:<20} {row['split']:<5} {row['images_a']:>9} {row['images_b']:>9} "
            f"{row['added']:>7} {row['removed']:>7} {row['rewritten']:>9}"
        )
    lines.append("")
    if diff.disjoint:
        lines.append(
            f"test split of build {a} is disjoint from the train split of build {b} (specimens and scan "
            f"contents): a model trained on build {b} can be evaluated on build {a}'s test split"
        )
    else:
        lines.append(
            f"test split of build {a} overlaps the train split of build {b}: do not evaluate a model trained "
            f"on build {b} on build {a}'s test split"
        )
        for species, specimen in diff.test_in_train_specimens:
            lines.append(f"  specimen {species} {specimen}: test in build {a}, train in build {b}")
        for scan_hash, path_a, path_b in diff.test_in_train_scans:
            lines.append(f"  scan content {scan_hash[:12]}... ({path_a} in build {a}, {path_b} in build {b})")
    return "\n".join(lines) + "\n"
