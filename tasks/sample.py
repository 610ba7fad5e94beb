"""Order passing slices for balanced sampling per (species, split).

:func:`order_candidates` gives every candidate slice a ``priority`` within its
(species, split). Taking the rows with the lowest priorities is the selection,
so any prefix is balanced. The order is built in four round-robin levels, each
one interleaving the orders of the level below:

1. Within a view of a scan, the index range is cut into bins of
   ``VIEW_BIN_SLICES`` consecutive slice indices. The first pass takes the
   best-quality slice of every bin, the second pass the second best, and so
   on. Within a pass, bins follow a van der Corput (bit-reversed) order from a
   start bin seeded by (seed, scan_hash, view), so any prefix of a pass covers
   the index range evenly.
2. Within a scan, round-robin over its views.
3. Within a specimen, round-robin over its scans.
4. Within a (species, split), round-robin over its specimens.

A member that runs out of slices drops out of its round-robin, so the others
fill its share. The member order at each level comes from a hash of the seed
and the member's own names, and each level's order depends only on the rows
of that member. Adding a specimen therefore leaves the internal order of every
other specimen unchanged. It only interleaves its own rows between theirs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.split import SPLITS

# Width of a view's index bins, in slices. Neighbouring slices are nearly
# identical, so quality is compared only within a bin and never across the
# whole view, which would cluster the selection where the image is sharpest.
VIEW_BIN_SLICES = 8

CANDIDATE_COLUMNS = ("species", "specimen", "scan_hash", "view", "slice_index", "quality")


def split_quotas(target_per_species: int, test_fraction: float, val_target: int, val_cap: int) -> dict[str, int]:
    """Divide the per-species slice target between the splits.

    The rule: test takes ``round(target_per_species * test_fraction)``. Val
    takes up to ``val_cap``, which is every passing slice of its specimens
    because the split model keeps their sum near ``val_target`` and at most
    ``val_cap``. Train takes ``target_per_species - test - val_target``, never
    below 0. Train is sized against ``val_target`` rather than ``val_cap``, so
    a species whose val lands above ``val_target`` can select up to
    ``val_cap - val_target`` slices more than ``target_per_species``.

    Parameters
    ----------
    target_per_species
        Slices to select per species over all splits.
    test_fraction
        Share of the target for test, in (0, 1).
    val_target, val_cap
        Val slices aimed at and allowed per species.

    Returns
    -------
    dict[str, int]
        Slice quota for each of ``SPLITS``.
    """
    if target_per_species < 0:
        raise ValueError(f"target_per_species {target_per_species} must be 0 or more slices")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction {test_fraction} is out of range; give a share between 0 and 1, such as 0.2")
    if val_target < 0 or val_cap < val_target:
        raise ValueError(f"need 0 <= val_target <= val_cap, got val_target {val_target} and val_cap {val_cap}")
    test = round(target_per_species * test_fraction)
    train = max(0, target_per_species - test - val_target)
    return {"train": train, "val": val_cap, "test": test}


def order_candidates(
    candidates: pa.Table,
    assignments: Mapping[tuple[str, str], str],
    *,
    seed: int = 42,
) -> pa.Table:
    """Rank passing slices within each (species, split) for sampling.

    Parameters
    ----------
    candidates
        One row per passing slice with columns ``species``, ``specimen``,
        ``scan_hash``, ``view`` (strings), ``slice_index`` (integer) and
        ``quality`` (float, higher is better; NaN ranks as the worst).
    assignments
        ``(species, specimen) -> split``, as in ``SplitPlan.assignments``.
        Rows of specimens without an assignment are dropped.
    seed
        Seed of the hashes that pick member orders and bin start points.

    Returns
    -------
    pyarrow.Table
        The assigned rows with added columns ``split`` (string) and
        ``priority`` (int64, 0 to n - 1 within each (species, split)), sorted
        by species, split and priority. The result does not depend on the
        input row order. See the module docstring for how the order is built.

    Raises
    ------
    ValueError
        When a column is missing or contains nulls, or an assignment names an
        unknown split.
    """
    _validate_candidates(candidates)
    for key, split in assignments.items():
        if split not in SPLITS:
            raise ValueError(f"assignment {key} -> {split!r} is not a split; use one of {SPLITS}")

    species_codes, species_names = _sorted_codes(candidates["species"])
    specimen_codes, specimen_names = _sorted_codes(candidates["specimen"])
    specimen_key = species_codes * len(specimen_names) + specimen_codes
    pair_keys, pair_ids = np.unique(specimen_key, return_inverse=True)
    pair_species = pair_keys // len(specimen_names)
    pair_specimen = pair_keys % len(specimen_names)

    split_names = sorted(SPLITS)
    pair_split = np.full(pair_keys.size, -1, dtype=np.int64)
    for position in range(pair_keys.size):
        split = assignments.get((species_names[pair_species[position]], specimen_names[pair_specimen[position]]))
        if split is not None:
            pair_split[position] = split_names.index(split)
    keep = np.flatnonzero(pair_split[pair_ids] >= 0)
    if keep.size == 0:
        return _with_order_columns(candidates.slice(0, 0), np.empty(0, np.int64), np.empty(0, np.int64))

    scan_codes, scan_names = _sorted_codes(candidates["scan_hash"])
    view_codes, view_names = _sorted_codes(candidates["view"])
    names = _Names(species=species_names, specimen=specimen_names, scan=scan_names, view=view_names)
    rows = _Rows(
        pair_ids=pair_ids[keep],
        scan_codes=scan_codes[keep],
        view_codes=view_codes[keep],
        slice_index=candidates["slice_index"].to_numpy().astype(np.int64)[keep],
        quality=candidates["quality"].to_numpy().astype(np.float64)[keep],
    )
    order, priority = _order_rows(rows, pair_keys, pair_split, names, seed)
    taken = keep[order]
    return _with_order_columns(candidates.take(pa.array(taken)), pair_split[pair_ids[taken]], priority)


def select(ordered: pa.Table, quotas: Mapping[str, int]) -> pa.Table:
    """Keep the rows of each (species, split) whose priority is below the split's quota.

    Parameters
    ----------
    ordered
        Output of :func:`order_candidates`.
    quotas
        Slices per species for each split, such as from :func:`split_quotas`.

    Returns
    -------
    pyarrow.Table
        The selected rows, in the input order.
    """
    if ordered.num_rows == 0:
        return ordered
    names = sorted(quotas)
    split_position = pc.index_in(ordered["split"], value_set=pa.array(names, pa.string()))
    if split_position.null_count:
        missing = sorted(set(pc.unique(ordered["split"]).to_pylist()) - set(names))
        raise ValueError(f"quotas has no entry for split(s) {missing}; give a quota for every split in the table")
    limit = pc.take(pa.array([quotas[name] for name in names], pa.int64()), split_position)
    return ordered.filter(pc.less(ordered["priority"], limit))


def _validate_candidates(candidates: pa.Table) -> None:
    missing = [name for name in CANDIDATE_COLUMNS if name not in candidates.column_names]
    if missing:
        raise ValueError(f"candidates lack column(s) {missing}; expected {list(CANDIDATE_COLUMNS)}")
    with_nulls = [name for name in CANDIDATE_COLUMNS if candidates[name].null_count]
    if with_nulls:
        raise ValueError(f"candidates have nulls in column(s) {with_nulls}; drop those rows first")


def _sorted_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Encode strings as int64 ranks in the sorted list of distinct values.

    Ranks come from sorted values, not first appearance, so they do not
    depend on row order.
    """
    encoded = pc.dictionary_encode(column.combine_chunks())
    values = encoded.dictionary.to_pylist()
    rank = np.empty(len(values), dtype=np.int64)
    rank[np.argsort(np.array(values, dtype=object), kind="stable")] = np.arange(len(values))
    indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return rank[indices], sorted(values)


def _hash64(seed: int, *parts: str) -> int:
    text = "\x1f".join([str(seed), *parts]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


@dataclass(frozen=True)
class _Names:
    """Sorted distinct values of the string columns, which the row codes index."""

    species: list[str]
    specimen: list[str]
    scan: list[str]
    view: list[str]


@dataclass(frozen=True)
class _Rows:
    """Per-row arrays of the assigned candidates, all of one length."""

    pair_ids: np.ndarray
    scan_codes: np.ndarray
    view_codes: np.ndarray
    slice_index: np.ndarray
    quality: np.ndarray


def _order_rows(rows: _Rows, pair_keys, pair_split, names: _Names, seed: int):
    """Return the row order (species, split, priority) and the priority of each row in that order."""
    pair_ids = rows.pair_ids
    scan_count, view_count, specimen_count = len(names.scan), len(names.view), len(names.specimen)
    scan_keys, scan_ids = np.unique(pair_ids * scan_count + rows.scan_codes, return_inverse=True)
    view_keys, view_ids = np.unique(scan_ids * view_count + rows.view_codes, return_inverse=True)

    scan_of_view = scan_keys[view_keys // view_count] % scan_count
    view_seeds = [
        _hash64(seed, names.scan[scan], names.view[view]) for scan, view in zip(scan_of_view, view_keys % view_count)
    ]
    scan_seeds = [_hash64(seed, names.scan[scan]) for scan in scan_keys % scan_count]
    pair_seeds = [
        _hash64(seed, names.species[key // specimen_count], names.specimen[key % specimen_count]) for key in pair_keys
    ]

    view_rank = _rank_within_views(view_ids, rows.slice_index, rows.quality, np.array(view_seeds, dtype=np.uint64))
    scan_rank = _round_robin(scan_ids, view_rank, view_ids, view_seeds)
    specimen_rank = _round_robin(pair_ids, scan_rank, scan_ids, scan_seeds)
    species_split = (pair_keys // specimen_count) * len(SPLITS) + pair_split
    group = species_split[pair_ids]
    order = _argsort_keys(group, specimen_rank, _hash_positions(pair_seeds)[pair_ids])
    return order, _rank_in_sorted(group[order])


def _rank_within_views(view_ids, slice_index, quality, view_seeds):
    """Rank rows within each view: best slice of every index bin first, bins in bit-reversed order."""
    view_count = view_seeds.size
    view_min = np.full(view_count, np.iinfo(np.int64).max)
    view_max = np.full(view_count, np.iinfo(np.int64).min)
    np.minimum.at(view_min, view_ids, slice_index)
    np.maximum.at(view_max, view_ids, slice_index)
    offset = slice_index - view_min[view_ids]

    bins = offset // VIEW_BIN_SLICES
    bin_count = (view_max - view_min) // VIEW_BIN_SLICES + 1
    start_bin = (view_seeds % bin_count.astype(np.uint64)).astype(np.int64)
    rotated = (bins + start_bin[view_ids]) % bin_count[view_ids]
    # Views share few distinct bin counts, so keys are computed per count.
    counts, count_of_view = np.unique(bin_count, return_inverse=True)
    key_tables = [_van_der_corput_keys(int(count)) for count in counts]
    table_start = np.r_[0, np.cumsum(counts)[:-1]]
    spread = np.concatenate(key_tables)[table_start[count_of_view][view_ids] + rotated]

    # Equal qualities share a rank, so ties fall back to the slice index and
    # not to the input row order.
    _, quality_rank = np.unique(-quality, return_inverse=True)
    bin_ids = view_ids * int(bin_count.max()) + bins
    by_quality = _argsort_keys(bin_ids, quality_rank, offset)
    passes = np.empty(view_ids.size, dtype=np.int64)
    passes[by_quality] = _rank_in_sorted(bin_ids[by_quality])

    by_pass = _argsort_keys(view_ids, passes, spread)
    rank = np.empty(view_ids.size, dtype=np.int64)
    rank[by_pass] = _rank_in_sorted(view_ids[by_pass])
    return rank


def _round_robin(parent_ids, member_rank, member_ids, member_seeds):
    """Interleave members within each parent: every member's rank-0 row, then rank 1, and so on.

    ``member_seeds`` (one hash per member) sets the member order in each
    cycle. A member with fewer rows simply stops appearing.
    """
    order = _argsort_keys(parent_ids, member_rank, _hash_positions(member_seeds)[member_ids])
    rank = np.empty(parent_ids.size, dtype=np.int64)
    rank[order] = _rank_in_sorted(parent_ids[order])
    return rank


def _hash_positions(seeds: list[int]) -> np.ndarray:
    """Position of each member when members are sorted by hash, then by id."""
    keys = np.array(seeds, dtype=np.uint64)
    positions = np.empty(keys.size, dtype=np.int64)
    positions[np.lexsort((np.arange(keys.size), keys))] = np.arange(keys.size)
    return positions


def _argsort_keys(*keys: np.ndarray) -> np.ndarray:
    """Stable argsort by several non-negative int64 keys, most significant first.

    Packs the keys into one int64 when their ranges fit, which is several
    times faster than ``np.lexsort`` on millions of rows.
    """
    bounds = [int(key.max()) + 1 if key.size else 1 for key in keys]
    if np.prod([float(b) for b in bounds]) >= 2.0**62:
        return np.lexsort(keys[::-1])
    packed = np.zeros(keys[0].size, dtype=np.int64)
    for key, bound in zip(keys, bounds):
        packed = packed * bound + key
    return np.argsort(packed, kind="stable")


def _group_starts(sorted_ids: np.ndarray) -> np.ndarray:
    if sorted_ids.size == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])


def _rank_in_sorted(sorted_ids: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal ids."""
    starts = _group_starts(sorted_ids)
    lengths = np.diff(np.r_[starts, sorted_ids.size])
    return np.arange(sorted_ids.size, dtype=np.int64) - np.repeat(starts, lengths)


def _van_der_corput_keys(bin_count: int) -> np.ndarray:
    """Sort keys, shape (bin_count,), that visit the bins in van der Corput order.

    The van der Corput points k / 2**bits, taken in bit-reversed order of k,
    spread evenly over [0, 1) at every prefix length. Bin j covers the points
    with k in [lo, hi]; its key is the bit reversal of the k in that range
    with the most trailing zeros, which is the first of them the sequence
    visits. With ``2**bits >= bin_count`` every bin contains at least one point.
    """
    bits = max(1, (bin_count - 1).bit_length())
    bins = np.arange(bin_count, dtype=np.int64)
    lo = -((-bins << bits) // bin_count)
    hi = -((-(bins + 1) << bits) // bin_count) - 1
    # Above the highest bit p where lo and hi differ, every k in [lo, hi]
    # matches. Lo wins if its bits up to p are all zero. Otherwise the
    # winner is hi with the bits below p cleared.
    p = np.frexp((lo ^ hi).astype(np.float64))[1] - 1
    below_p = (np.int64(1) << np.maximum(p, 0)) - 1
    lo_wins = (p < 0) | ((lo & ((below_p << 1) | 1)) == 0)
    first_visited = np.where(lo_wins, lo, hi & ~below_p)
    return _bit_reverse(first_visited, bits)


def _bit_reverse(values: np.ndarray, bits: int) -> np.ndarray:
    reversed_values = np.zeros_like(values)
    for bit in range(bits):
        reversed_values |= ((values >> bit) & 1) << (bits - 1 - bit)
    return reversed_values


def _with_order_columns(table: pa.Table, split_codes: np.ndarray, priority: np.ndarray) -> pa.Table:
    split_names = pa.array(sorted(SPLITS), pa.string())
    table = table.append_column("split", pc.take(split_names, pa.array(split_codes, pa.int64())))
    return table.append_column("priority", pa.array(priority, pa.int64()))
