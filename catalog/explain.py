"""Explain a build's specimen split in plain words, from the catalogue."""

from __future__ import annotations

from collections import defaultdict

import duckdb

from tasks.split import SPLITS


def explain_split(connection: duckdb.DuckDBPyConnection, build_id: int | None = None, detail: bool = True) -> str:
    """Return, per species, its split totals and (with ``detail``) each specimen's passing slices and split.

    Species left out of the dataset are listed with the reason. ``build_id``
    defaults to the latest successful build.
    """
    if build_id is None:
        row = connection.execute("SELECT build_id FROM latest_build").fetchone()
        if row is None:
            return "no successful build in this catalogue yet"
        build_id = int(row[0])
    specimens = connection.execute(
        """
        SELECT species, specimen, split, passing_slices, assigned_in
        FROM split_history WHERE build_id = ? ORDER BY species, specimen
        """,
        [build_id],
    ).fetchall()
    species_rows = connection.execute(
        "SELECT species, included, reason, split_note FROM species_history WHERE build_id = ? ORDER BY species",
        [build_id],
    ).fetchall()
    selected = dict(
        ((species, split), count)
        for species, split, count in connection.execute(
            """
            SELECT species, split, count(*) FROM export_history
            WHERE build_id = ? AND status <> 'dropped' GROUP BY species, split
            """,
            [build_id],
        ).fetchall()
    )

    by_species = defaultdict(list)
    for species, specimen, split, passing, assigned_in in specimens:
        by_species[species].append((specimen, split, passing, assigned_in))

    lines = [f"split of build {build_id}"]
    for species, included, reason, note in species_rows:
        lines.append("")
        if not included:
            lines.append(f"{species}: left out: {reason}")
            continue
        placed = by_species.get(species, [])
        totals = {split: sum(p for _, s, p, _ in placed if s == split) for split in SPLITS}
        passing = sum(totals.values())
        parts = []
        for split in SPLITS:
            count = sum(1 for _, s, _, _ in placed if s == split)
            share = 100.0 * totals[split] / passing if passing else 0.0
            parts.append(
                f"{split} {count} specimen{'' if count == 1 else 's'}, {totals[split]} passing slices ({share:.1f}%), "
                f"{selected.get((species, split), 0)} selected"
            )
        lines.append(f"{species}: " + "; ".join(parts))
        if note:
            lines.append(f"  note: {note}")
        if detail:
            for specimen, split, passing_slices, assigned_in in placed:
                since = "" if assigned_in == build_id else f" (kept since build {assigned_in})"
                lines.append(f"  {specimen:<20} {passing_slices:>8} passing slices -> {split}{since}")
    return "\n".join(lines)
