"""The build report: counts per species and split, their spread, the species report, the leakage check."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from tasks.species import SpeciesReport
from tasks.split import SPLITS


@dataclass(frozen=True)
class SplitStats:
    """Spread of the per-species image counts within one split."""

    split: str
    total: int
    mean: float
    sd: float
    cv_percent: float


def count_table(images: Iterable[tuple[str, str]], species: Iterable[str]) -> dict[str, dict[str, int]]:
    """Return {species: {split: images}} from (species, split) pairs, with zeros filled in."""
    counts = Counter(images)
    return {name: {split: counts.get((name, split), 0) for split in SPLITS} for name in sorted(set(species))}


def split_stats(table: dict[str, dict[str, int]]) -> list[SplitStats]:
    """Return mean, sample standard deviation and coefficient of variation across species, per split.

    The CV is sd / mean in percent; it is 0 for a single species and NaN when
    the mean is 0.
    """
    stats = []
    for split in SPLITS:
        values = [row[split] for row in table.values()]
        n = len(values)
        total = sum(values)
        mean = total / n if n else 0.0
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        cv = 100.0 * sd / mean if mean else float("nan")
        stats.append(SplitStats(split, total, mean, sd, cv))
    return stats


def counts_markdown(table: dict[str, dict[str, int]], stats: list[SplitStats]) -> str:
    """Render the counts table with a mean ± sd and a CV row, as Markdown."""
    lines = ["| species | " + " | ".join(SPLITS) + " | total |", "|---|" + "---:|" * (len(SPLITS) + 1)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(str(row[s]) for s in SPLITS) + f" | {sum(row.values())} |")
    lines.append("| **total** | " + " | ".join(str(s.total) for s in stats) + f" | {sum(s.total for s in stats)} |")
    lines.append("| mean ± sd | " + " | ".join(f"{s.mean:.1f} ± {s.sd:.1f}" for s in stats) + " | |")
    lines.append("| CV | " + " | ".join(_percent(s.cv_percent) for s in stats) + " | |")
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}%"


def species_markdown(reports: list[SpeciesReport], split_notes: dict[str, str]) -> str:
    """Render the species report: every species with its counts, whether it is included and why."""
    lines = [
        "| species | scans | specimens | usable specimens | included | reason |",
        "|---|---:|---:|---:|---|---|",
    ]
    for report in reports:
        reason = report.reason
        if report.species in split_notes:
            reason = f"{reason}; {split_notes[report.species]}"
        included = "yes" if report.included else "no"
        lines.append(
            f"| {report.species} | {report.scans} | {report.specimens} | {report.usable_specimens} | {included} | {reason} |"
        )
    return "\n".join(lines)


def scan_problems_markdown(problems: list[dict]) -> str:
    """Render the scans that were left out or failed, with their status and reason."""
    if not problems:
        return "Every scan was analysed."
    lines = ["| file | status | reason |", "|---|---|---|"]
    for problem in problems:
        lines.append(f"| {problem['relative_path']} | {problem['status']} | {problem['reason']} |")
    return "\n".join(lines)


def report_markdown(*, build_id: int, dataset_hash: str, table, stats, species_reports, split_notes,
                    leakage: str, scan_problems: list[dict], params: dict) -> str:
    """Assemble the whole report as one Markdown document."""
    return "\n\n".join(
        [
            f"# fossil-slices build {build_id}",
            f"Dataset hash: `{dataset_hash}`",
            "## Images per species and split",
            counts_markdown(table, stats),
            "## Species",
            species_markdown(species_reports, split_notes),
            "## Leakage check",
            leakage,
            "## Scans not analysed",
            scan_problems_markdown(scan_problems),
            "## Parameters",
            "```json\n" + json.dumps(params, indent=1) + "\n```",
        ]
    ) + "\n"


def report_json(*, build_id: int, dataset_hash: str, table, stats, species_reports, split_notes,
                leakage: str, scan_problems: list[dict], params: dict) -> str:
    """Return the report as JSON, for scripts."""
    document = {
        "build_id": build_id,
        "dataset_hash": dataset_hash,
        "counts": table,
        "split_stats": [
            {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in asdict(s).items()}
            for s in stats
        ],
        "species": [dict(asdict(r), split_note=split_notes.get(r.species)) for r in species_reports],
        "leakage_check": leakage,
        "scan_problems": scan_problems,
        "params": params,
    }
    return json.dumps(document, indent=1, allow_nan=False, default=str) + "\n"
