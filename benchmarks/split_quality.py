"""Compare the CP-SAT specimen split with a scan-level reference split.

The reference is the scan-level split that this pipeline replaces, per species:

1. Val is the combination of scans whose passing slices sum nearest
   ``val_target``, found by trying every combination that leaves at least one
   scan for train. While val is above ``val_cap``, its largest scan is dropped.
2. Test is ``round(0.2 * scans)`` of the remaining scans, picked by a seeded shuffle.
3. The rest is train.

It splits by scan (file), so two scans of one specimen can land in different
splits, which is a leak. The collection has the species, specimen and scan
counts of the dataset that split was made for (27 species, 97 scans), with
600 to 3000 passing slices per scan drawn from a fixed seed.

Selected slices per species and split are ``min(quota, passing slices in the
split)`` with quotas from ``split_quotas(10000, 0.2, 1000, 1200)``. The CV is
taken over the species listed in each summary.

Solve times are the median of 5 runs of each method in the same process.

Run ``python benchmarks/split_quality.py``. With ``--quick`` it prints only
the summary, without the per-species table.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.sample import split_quotas  # noqa: E402
from tasks.split import SPLITS, SpecimenSlices, assign_splits  # noqa: E402

TEST_FRACTION = 0.20
VAL_TARGET = 1000
VAL_CAP = 1200
TARGET_PER_SPECIES = 10000
SEED = 42
RUNS = 5  # each method's solve time is the median of this many runs

# Scans per specimen for each species, one entry per specimen.
STUDY_SPECIMENS: dict[str, list[int]] = {
    "Chrysalidina": [3] + [1] * 13,
    "Ataxophragmium": [1] * 7,
    "Baculogypsina": [1] * 7,
    "Minoxia": [2, 2, 2],
    "Elphidiella": [1] * 6,
    "Fallotia": [1] * 6,
    "Arumella": [1] * 5,
    "Lockhartia": [1] * 5,
    "Orbitoides": [1] * 5,
    "Rhapydionina": [1] * 5,
    "Alveolina": [1] * 4,
    "Coskinolina": [1] * 4,
    "Daviesina": [1] * 3,
    "Coscinoidea": [1] * 2,
    "Dictyoconus": [1] * 2,
    "Glyphostomalloides": [1] * 2,
    "Nummulites": [1] * 2,
    **{f"singleton{i:02d}": [1] for i in range(1, 11)},
}


@dataclass(frozen=True)
class Scan:
    species: str
    specimen: str
    scan: str
    passing_slices: int


def study_collection(seed: int = 2024) -> list[Scan]:
    """Build the 97 scans with passing slice counts drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    scans = []
    for species, scans_per_specimen in STUDY_SPECIMENS.items():
        for specimen_number, scan_count in enumerate(scans_per_specimen, start=1):
            specimen = f"{species}-{specimen_number:02d}"
            for scan_number in range(1, scan_count + 1):
                slices = int(rng.integers(600, 3001))
                scans.append(Scan(species, specimen, f"{specimen}-scan{scan_number}", slices))
    return scans


def reference_split(scans: list[Scan], seed: int = SEED) -> dict[str, str]:
    """Assign each scan a split with the scan-level reference method and return scan -> split."""
    by_species: dict[str, list[Scan]] = {}
    for scan in scans:
        by_species.setdefault(scan.species, []).append(scan)

    assignment = {}
    for species, members in sorted(by_species.items()):
        val = _reference_val(members)
        rest = [scan for scan in members if scan not in val]
        random.Random(f"{seed}-{species}").shuffle(rest)
        test_count = round(TEST_FRACTION * len(members))
        for position, scan in enumerate(rest):
            assignment[scan.scan] = "test" if position < test_count else "train"
        for scan in val:
            assignment[scan.scan] = "val"
    return assignment


def _reference_val(members: list[Scan]) -> list[Scan]:
    best: tuple[Scan, ...] = ()
    best_distance = None
    for size in range(1, len(members)):
        for combination in itertools.combinations(members, size):
            distance = abs(sum(scan.passing_slices for scan in combination) - VAL_TARGET)
            if best_distance is None or distance < best_distance:
                best, best_distance = combination, distance
    val = sorted(best, key=lambda scan: scan.passing_slices)
    while val and sum(scan.passing_slices for scan in val) > VAL_CAP:
        val.pop()
    return val


def cp_sat_split(scans: list[Scan]) -> tuple[dict[str, str], bool]:
    """Assign scans through their specimens with :func:`assign_splits`.

    Returns scan -> split and whether CP-SAT proved the plan optimal.
    """
    specimens = [SpecimenSlices(scan.species, scan.specimen, scan.passing_slices) for scan in scans]
    plan = assign_splits(specimens, test_fraction=TEST_FRACTION, val_target=VAL_TARGET, val_cap=VAL_CAP, seed=SEED)
    assignment = {
        scan.scan: plan.assignments[(scan.species, scan.specimen)]
        for scan in scans
        if (scan.species, scan.specimen) in plan.assignments
    }
    return assignment, plan.optimal


def passing_per_split(scans: list[Scan], assignment: dict[str, str]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for scan in scans:
        if scan.scan in assignment:
            species_totals = totals.setdefault(scan.species, dict.fromkeys(SPLITS, 0))
            species_totals[assignment[scan.scan]] += scan.passing_slices
    return totals


def leak_count(scans: list[Scan], assignment: dict[str, str], species: list[str]) -> int:
    """Count specimens of ``species`` whose scans are spread over more than one split."""
    splits: dict[tuple[str, str], set[str]] = {}
    for scan in scans:
        if scan.scan in assignment and scan.species in species:
            splits.setdefault((scan.species, scan.specimen), set()).add(assignment[scan.scan])
    return sum(len(found) > 1 for found in splits.values())


def coefficient_of_variation(values: list[int]) -> float:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or array.mean() == 0:
        return float("nan")
    return float(array.std() / array.mean())


def summarise(
    label: str, scans: list[Scan], assignment: dict[str, str], species: list[str], seconds: float
) -> None:
    totals = passing_per_split(scans, assignment)
    quotas = split_quotas(TARGET_PER_SPECIES, TEST_FRACTION, VAL_TARGET, VAL_CAP)
    selected = {split: [min(quotas[split], totals[name][split]) for name in species] for split in SPLITS}
    cv = "  ".join(f"{split} {coefficient_of_variation(selected[split]):.3f}" for split in SPLITS)
    empty = sum(min(totals[name].values()) == 0 for name in species)
    val_low = VAL_TARGET * 0.8
    # Selected val slices are what training uses, and the pool is every passing
    # slice of the val specimens, before the val quota caps it.
    val_outside = sum(not val_low <= count <= VAL_CAP for count in selected["val"])
    pool_outside = sum(not val_low <= totals[name]["val"] <= VAL_CAP for name in species)
    shares = [totals[name]["test"] / sum(totals[name].values()) for name in species]

    print(label)
    print(f"  species {len(species)}, with an empty split {empty}, selected val outside [{val_low:.0f}, {VAL_CAP}] "
          f"{val_outside} (val pool outside: {pool_outside})")
    print(f"  CV of selected slices per species: {cv}")
    print(f"  test share: min {min(shares):.3f} median {np.median(shares):.3f} max {max(shares):.3f}")
    print(f"  solve time {seconds * 1000:.1f} ms, leaking specimens {leak_count(scans, assignment, species)}")


def print_table(scans: list[Scan], reference: dict, ours: dict) -> None:
    scan_counts: dict[str, int] = {}
    for scan in scans:
        scan_counts[scan.species] = scan_counts.get(scan.species, 0) + 1
    header = f"{'species':<20}{'scans':>6} | {'reference train/val/test':>26}{'test share':>11}"
    print(f"\n{header} | {'CP-SAT train/val/test':>24}{'test share':>11}")
    for species in STUDY_SPECIMENS:
        row = f"{species:<20}{scan_counts[species]:>6} | "
        for totals, width in ((reference, 26), (ours, 24)):
            if species in totals:
                split = totals[species]
                share = split["test"] / sum(split.values())
                row += f"{split['train']:>{width - 12}}/{split['val']:>5}/{split['test']:>5}{share:>11.3f} | "
            else:
                row += f"{'excluded':>{width}}{'':>11} | "
        print(row.rstrip(" |"))


def timed(method, runs: int = RUNS):
    """Run `method` `runs` times; return its last result and the median seconds of one run."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = method()
        seconds.append(time.perf_counter() - start)
    return result, float(np.median(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="print the summary only, without the per-species table")
    arguments = parser.parse_args()

    scans = study_collection()
    specimen_count = len({(scan.species, scan.specimen) for scan in scans})
    print(f"collection: {len(STUDY_SPECIMENS)} species, {specimen_count} specimens, {len(scans)} scans")

    reference, reference_seconds = timed(lambda: reference_split(scans))
    (ours, optimal), ours_seconds = timed(lambda: cp_sat_split(scans))

    reference_totals = passing_per_split(scans, reference)
    ours_totals = passing_per_split(scans, ours)
    covered = sorted(ours_totals)
    summarise("reference (scan level), all species", scans, reference, sorted(reference_totals), reference_seconds)
    summarise("reference (scan level), species that CP-SAT splits", scans, reference, covered, reference_seconds)
    summarise(f"CP-SAT (specimen level, optimal={optimal})", scans, ours, covered, ours_seconds)

    if not arguments.quick:
        print_table(scans, reference_totals, ours_totals)


if __name__ == "__main__":
    main()
