"""Decide which species have enough physical specimens to enter the dataset."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SpeciesReport:
    """One species' counts and whether it enters the dataset.

    ``specimens`` counts distinct physical specimens, not files: a re-scan or
    an export of the same fossil adds a scan but no specimen.
    ``usable_specimens`` counts those with at least one analysed scan that has
    passing slices; it equals ``specimens`` before analysis.
    """

    species: str
    scans: int
    specimens: int
    usable_specimens: int
    included: bool
    reason: str


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def select_species(
    scan_specimens: Iterable[tuple[str, str]],
    min_specimens: int,
    usable: Iterable[tuple[str, str]] | None = None,
) -> list[SpeciesReport]:
    """Report every species and include those with at least ``min_specimens`` specimens.

    Parameters
    ----------
    scan_specimens : iterable of (species, specimen)
        One pair per scan file.
    min_specimens : int
        Minimum number of distinct physical specimens a species needs.
    usable : iterable of (species, specimen), optional
        Specimens that have passing slices after analysis. When given, only
        they count toward ``min_specimens``.

    Returns
    -------
    list of SpeciesReport, sorted by species name.
    """
    scans_per_species: dict[str, int] = defaultdict(int)
    specimens_per_species: dict[str, set[str]] = defaultdict(set)
    for species, specimen in scan_specimens:
        scans_per_species[species] += 1
        specimens_per_species[species].add(specimen)

    usable_per_species: dict[str, set[str]] | None = None
    if usable is not None:
        usable_per_species = defaultdict(set)
        for species, specimen in usable:
            usable_per_species[species].add(specimen)

    reports = []
    for species in sorted(scans_per_species):
        n_scans = scans_per_species[species]
        n_specimens = len(specimens_per_species[species])
        n_usable = n_specimens if usable_per_species is None else len(usable_per_species.get(species, ()))
        if n_specimens < min_specimens:
            included = False
            reason = (
                f"has {_plural(n_specimens, 'specimen')} ({_plural(n_scans, 'scan')}); "
                f"needs at least {min_specimens} specimens"
            )
        elif n_usable < min_specimens:
            included = False
            reason = (
                f"has {_plural(n_specimens, 'specimen')} but only {n_usable} with passing slices; "
                f"needs at least {min_specimens} specimens"
            )
        else:
            included = True
            reason = f"has {_plural(n_specimens, 'specimen')} ({_plural(n_scans, 'scan')})"
        reports.append(SpeciesReport(species, n_scans, n_specimens, n_usable, included, reason))
    return reports
