"""Time assign_splits on large synthetic collections.

Run ``python benchmarks/split_scale.py`` for 30 species with 5 to 60
specimens each and 200 species with 10 specimens each, or add ``--quick``
for a small collection. Prints wall time and whether every species was solved
to proven optimality.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.split import SpecimenSlices, assign_splits  # noqa: E402


def synthetic_collection(specimen_counts: list[int], seed: int) -> list[SpecimenSlices]:
    """Draw 600 to 3000 passing slices per specimen, reproducibly from ``seed``."""
    rng = np.random.default_rng(seed)
    rows = []
    for species_number, count in enumerate(specimen_counts):
        slices = rng.integers(600, 3001, size=count)
        rows += [
            SpecimenSlices(f"species{species_number:03d}", f"specimen{i:02d}", int(slices[i])) for i in range(count)
        ]
    return rows


def measure(label: str, specimen_counts: list[int]) -> None:
    rows = synthetic_collection(specimen_counts, seed=len(specimen_counts))
    start = time.perf_counter()
    plan = assign_splits(rows)
    seconds = time.perf_counter() - start
    print(
        f"{label:<32} species={len(specimen_counts):>4} specimens={len(rows):>5} "
        f"wall={seconds:6.2f} s optimal={plan.optimal} excluded={len(plan.excluded)} notes={len(plan.notes)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run 5 species with 5..20 specimens and 20 with 10")
    arguments = parser.parse_args()

    if arguments.quick:
        measure("5 species x 5..20 specimens", list(np.linspace(5, 20, 5).round().astype(int)))
        measure("20 species x 10 specimens", [10] * 20)
        return
    measure("30 species x 5..60 specimens", list(np.linspace(5, 60, 30).round().astype(int)))
    measure("200 species x 10 specimens", [10] * 200)


if __name__ == "__main__":
    main()
