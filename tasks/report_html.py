"""The build report as one self-contained HTML page.

The page has no external resources: the CSS is inline and every figure is a
base64 ``data:`` URI, so the file can be mailed, archived or opened offline.
Every string that comes from the scans (species names are taken from file
names) or from the configuration is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from tasks.report import SplitStats
from tasks.species import SpeciesReport
from tasks.split import SPLITS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1150px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.summary td { background: #f3f3f3; }
.passed { color: #1a7f37; } .failed { color: #b42318; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #ddd; }
code, pre { background: #f6f6f6; } pre { padding: 0.6em; overflow-x: auto; }
"""


@dataclass(frozen=True)
class Figure:
    """One PNG figure of the report.

    Attributes
    ----------
    name : str
        File name below ``OUT/report/``, for example ``counts.png``.
    caption : str
        What the figure shows.
    png : bytes
        The PNG file content.
    """

    name: str
    caption: str
    png: bytes


def _cell(value, numeric: bool = False) -> str:
    css = ' class="n"' if numeric else ""
    return f"<td{css}>{escape(str(value))}</td>"


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}%"


def counts_html(table: dict[str, dict[str, int]], stats: list[SplitStats]) -> str:
    """Render the images per species and split, with total, mean ± sd and CV rows."""
    header = "".join(f"<th>{escape(split)}</th>" for split in SPLITS)
    lines = [f"<table><thead><tr><th>species</th>{header}<th>total</th></tr></thead><tbody>"]
    for name, row in table.items():
        counts = "".join(_cell(row[split], True) for split in SPLITS)
        lines.append(f"<tr>{_cell(name)}{counts}{_cell(sum(row.values()), True)}</tr>")
    totals = "".join(_cell(s.total, True) for s in stats)
    lines.append(f'<tr class="summary"><td>total</td>{totals}{_cell(sum(s.total for s in stats), True)}</tr>')
    spread = "".join(_cell(f"{s.mean:.1f} ± {s.sd:.1f}", True) for s in stats)
    lines.append(f'<tr class="summary"><td>mean ± sd</td>{spread}<td></td></tr>')
    cv = "".join(_cell(_percent(s.cv_percent), True) for s in stats)
    lines.append(f'<tr class="summary"><td>CV</td>{cv}<td></td></tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def species_html(reports: Sequence[SpeciesReport], split_notes: dict[str, str]) -> str:
    """Render every species with its counts, whether it is included and why."""
    lines = [
        "<table><thead><tr><th>species</th><th>scans</th><th>specimens</th><th>usable specimens</th>"
        "<th>included</th><th>reason</th></tr></thead><tbody>"
    ]
    for report in reports:
        reason = report.reason
        if report.species in split_notes:
            reason = f"{reason}; {split_notes[report.species]}"
        lines.append(
            f"<tr>{_cell(report.species)}{_cell(report.scans, True)}{_cell(report.specimens, True)}"
            f"{_cell(report.usable_specimens, True)}{_cell('yes' if report.included else 'no')}{_cell(reason)}</tr>"
        )
    lines.append("</tbody></table>")
    return "\n".join(lines)


def problems_html(problems: list[dict]) -> str:
    """Render the scans that were left out or failed, with their status and reason."""
    if not problems:
        return "<p>Every scan was analysed.</p>"
    rows = "".join(
        f"<tr>{_cell(p['relative_path'])}{_cell(p['status'])}{_cell(p['reason'])}</tr>" for p in problems
    )
    return f"<table><thead><tr><th>file</th><th>status</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"


def figure_html(figure: Figure) -> str:
    """Render a figure as an ``<img>`` with its PNG inlined as a base64 data URI."""
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(figure.caption)}">'
        f"<figcaption>{escape(figure.caption)} (<code>report/{escape(figure.name)}</code>)</figcaption></figure>"
    )


def report_html(*, build_id: int, dataset_hash: str, table, stats, species_reports, split_notes, leakage: str,
                scan_problems: list[dict], params: dict, figures: Sequence[Figure]) -> str:
    """Assemble the whole report as one HTML page with no external resources.

    Takes the keyword arguments of :func:`tasks.report.report_markdown` plus
    `figures`, which are shown in the given order after the tables.

    Returns
    -------
    str
        The HTML document.
    """
    verdict = "passed" if leakage.startswith("passed") else "failed"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fossil-slices build {int(build_id)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>fossil-slices build {int(build_id)}</h1>",
        f"<p>Dataset hash: <code>{escape(dataset_hash)}</code></p>",
        "<h2>Images per species and split</h2>",
        counts_html(table, stats),
        "<h2>Species</h2>",
        species_html(species_reports, split_notes),
        "<h2>Leakage check</h2>",
        f'<p class="{verdict}">{escape(leakage)}</p>',
        "<h2>Scans not analysed</h2>",
        problems_html(scan_problems),
        "<h2>Figures</h2>",
        *(figure_html(figure) for figure in figures),
        "<h2>Parameters</h2>",
        f"<pre>{escape(json.dumps(params, indent=1, sort_keys=True))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
