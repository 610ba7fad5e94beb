"""Leakage checks that run as SQL on the catalogue of one build."""

from __future__ import annotations

import duckdb

# A physical specimen whose images sit in more than one split.
SPECIMEN_IN_TWO_SPLITS = """
SELECT species, specimen, string_agg(DISTINCT split, ', ' ORDER BY split) AS splits
FROM (
    SELECT species, specimen, split FROM split_history WHERE build_id = $build_id
    UNION ALL
    SELECT species, specimen, split FROM export_history WHERE build_id = $build_id AND status <> 'dropped'
)
GROUP BY species, specimen
HAVING count(DISTINCT split) > 1
ORDER BY species, specimen
"""

# Files with identical content (under any names) placed in different splits.
SAME_CONTENT_IN_TWO_SPLITS = """
SELECT c.scan_hash,
       string_agg(DISTINCT c.relative_path, ', ' ORDER BY c.relative_path) AS files,
       string_agg(DISTINCT s.split, ', ' ORDER BY s.split) AS splits
FROM scan_history AS c
JOIN split_history AS s
  ON s.build_id = c.build_id AND s.species = c.species AND s.specimen = c.specimen
WHERE c.build_id = $build_id AND c.scan_hash IS NOT NULL AND c.change <> 'removed'
GROUP BY c.scan_hash
HAVING count(DISTINCT s.split) > 1
ORDER BY c.scan_hash
"""


class LeakageError(Exception):
    """The same fossil would appear in two splits."""


def find_leaks(connection: duckdb.DuckDBPyConnection, build_id: int) -> list[str]:
    """Return one message per leak in build ``build_id``; an empty list when there is none."""
    problems = []
    for species, specimen, splits in connection.execute(SPECIMEN_IN_TWO_SPLITS, {"build_id": build_id}).fetchall():
        problems.append(f"specimen {species} {specimen} is in more than one split ({splits})")
    for scan_hash, files, splits in connection.execute(SAME_CONTENT_IN_TWO_SPLITS, {"build_id": build_id}).fetchall():
        problems.append(f"files {files} have the same content (SHA-256 {scan_hash[:12]}...) but sit in splits {splits}")
    return problems


def check_leakage(connection: duckdb.DuckDBPyConnection, build_id: int) -> None:
    """Raise LeakageError naming every specimen or file that would leak between splits."""
    problems = find_leaks(connection, build_id)
    if problems:
        raise LeakageError("leakage check failed: " + "; ".join(problems))
