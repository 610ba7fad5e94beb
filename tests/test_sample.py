"""Tests of slice ordering and selection per (species, split)."""

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks.sample import VIEW_BIN_SLICES, order_candidates, select, split_quotas

VIEWS = ("axis0", "axis1", "axis2")


def candidates(scans: list[tuple[str, str, str, str, int]], seed: int = 0) -> pa.Table:
    """Build candidate rows from (species, specimen, scan_hash, view, slice count) with random quality."""
    rng = np.random.default_rng(seed)
    columns = {"species": [], "specimen": [], "scan_hash": [], "view": [], "slice_index": [], "quality": []}
    for species, specimen, scan_hash, view, count in scans:
        columns["species"] += [species] * count
        columns["specimen"] += [specimen] * count
        columns["scan_hash"] += [scan_hash] * count
        columns["view"] += [view] * count
        columns["slice_index"].append(np.arange(count, dtype=np.int32))
        columns["quality"].append(rng.random(count))
    columns["slice_index"] = pa.array(np.concatenate(columns["slice_index"]), pa.int32())
    columns["quality"] = pa.array(np.concatenate(columns["quality"]), pa.float64())
    return pa.table(columns)


def specimen_scans(species: str, specimen: str, scans: int, slices: int) -> list[tuple[str, str, str, str, int]]:
    return [(species, specimen, f"{specimen}-scan{s}", view, slices) for s in range(scans) for view in VIEWS]


def rows_of(table: pa.Table, **equal) -> pa.Table:
    mask = None
    for column, value in equal.items():
        condition = pc.equal(table[column], value)
        mask = condition if mask is None else pc.and_(mask, condition)
    return table.filter(mask)


TABLE = candidates(
    specimen_scans("Alveolina", "A1", 2, 60)
    + specimen_scans("Alveolina", "A2", 1, 80)
    + specimen_scans("Alveolina", "A3", 1, 50)
    + specimen_scans("Alveolina", "A4", 1, 70)
    + specimen_scans("Nummulites", "N1", 1, 40)
    + specimen_scans("Nummulites", "N2", 1, 40)
    + specimen_scans("Nummulites", "N3", 1, 40)
)
ASSIGNMENTS = {
    ("Alveolina", "A1"): "train",
    ("Alveolina", "A2"): "train",
    ("Alveolina", "A3"): "val",
    ("Alveolina", "A4"): "test",
    ("Nummulites", "N1"): "train",
    ("Nummulites", "N2"): "val",
    ("Nummulites", "N3"): "test",
}


def test_quotas_default_rule():
    assert split_quotas(10000, 0.2, 1000, 1200) == {"train": 7000, "val": 1200, "test": 2000}


def test_quotas_train_not_negative():
    assert split_quotas(1000, 0.2, 1000, 1200) == {"train": 0, "val": 1200, "test": 200}


def test_quotas_invalid_rejected():
    with pytest.raises(ValueError, match="test_fraction 1.2"):
        split_quotas(1000, 1.2, 1000, 1200)
    with pytest.raises(ValueError, match="val_target 1300 and val_cap 1200"):
        split_quotas(1000, 0.2, 1300, 1200)


def test_order_row_order_free():
    first = order_candidates(TABLE, ASSIGNMENTS, seed=7)
    permutation = np.random.default_rng(1).permutation(TABLE.num_rows)
    shuffled = order_candidates(TABLE.take(pa.array(permutation)), ASSIGNMENTS, seed=7)

    assert first.equals(shuffled)


def test_order_seed_changes_order():
    first = order_candidates(TABLE, ASSIGNMENTS, seed=7)
    other = order_candidates(TABLE, ASSIGNMENTS, seed=8)

    assert first.num_rows == other.num_rows
    assert not first.equals(other)


def test_order_sorted_with_dense_priority():
    ordered = order_candidates(TABLE, ASSIGNMENTS)

    expected = ordered.sort_by([("species", "ascending"), ("split", "ascending"), ("priority", "ascending")])
    assert ordered.equals(expected)
    groups = Counter(zip(ordered["species"].to_pylist(), ordered["split"].to_pylist()))
    for (species, split), size in groups.items():
        priority = rows_of(ordered, species=species, split=split)["priority"].to_pylist()
        assert priority == list(range(size)), (species, split)


def test_order_drops_unassigned_specimens():
    partial = {key: split for key, split in ASSIGNMENTS.items() if key != ("Alveolina", "A2")}

    ordered = order_candidates(TABLE, partial)

    assert "A2" not in ordered["specimen"].to_pylist()
    assert ordered.num_rows == TABLE.num_rows - 3 * 80


def test_order_no_leakage_between_splits():
    ordered = order_candidates(TABLE, ASSIGNMENTS)

    pairs = set(zip(ordered["species"].to_pylist(), ordered["specimen"].to_pylist(), ordered["split"].to_pylist()))
    assert pairs == {(species, specimen, split) for (species, specimen), split in ASSIGNMENTS.items()}


def test_order_no_assigned_rows():
    ordered = order_candidates(TABLE, {})

    assert ordered.num_rows == 0
    assert ordered.column_names == TABLE.column_names + ["split", "priority"]


def test_order_prefix_even_across_specimens():
    table = candidates(sum((specimen_scans("Fallotia", f"F{i}", 1, 100) for i in range(4)), []))
    assignments = {("Fallotia", f"F{i}"): "train" for i in range(4)}

    chosen = select(order_candidates(table, assignments), {"train": 40, "val": 0, "test": 0})

    assert Counter(chosen["specimen"].to_pylist()) == {"F0": 10, "F1": 10, "F2": 10, "F3": 10}


def test_order_prefix_even_across_scans_views():
    table = candidates(specimen_scans("Minoxia", "M1", 2, 100))

    ordered = order_candidates(table, {("Minoxia", "M1"): "test"})
    prefix = ordered.slice(0, 12)

    pairs = Counter(zip(prefix["scan_hash"].to_pylist(), prefix["view"].to_pylist()))
    assert len(pairs) == 6
    assert set(pairs.values()) == {2}
    # Scans alternate, so every even-length prefix is split evenly between them.
    scans = prefix["scan_hash"].to_pylist()
    assert scans[0::2] == [scans[0]] * 6
    assert scans[1::2] == [scans[1]] * 6


def test_order_shortfall_filled_by_others():
    table = candidates(
        [("Daviesina", "D-small", "D-small-scan", "axis0", 5)]
        + [("Daviesina", "D2", "D2-scan", "axis0", 100), ("Daviesina", "D3", "D3-scan", "axis0", 100)]
    )
    assignments = {("Daviesina", "D-small"): "val", ("Daviesina", "D2"): "val", ("Daviesina", "D3"): "val"}

    chosen = select(order_candidates(table, assignments), {"train": 0, "val": 61, "test": 0})

    counts = Counter(chosen["specimen"].to_pylist())
    assert chosen.num_rows == 61
    assert counts["D-small"] == 5
    assert sorted([counts["D2"], counts["D3"]]) == [28, 28]


def test_order_quota_above_supply_takes_all():
    chosen = select(order_candidates(TABLE, ASSIGNMENTS), {"train": 10**6, "val": 10**6, "test": 10**6})

    assert chosen.num_rows == TABLE.num_rows


def test_order_view_prefix_spreads_index():
    slices = 800
    table = candidates([("Lockhartia", "L1", "L1-scan", "axis1", slices)], seed=5)

    ordered = order_candidates(table, {("Lockhartia", "L1"): "train"})
    indices = np.sort(ordered["slice_index"].to_numpy()[:16])

    assert len(set(indices // VIEW_BIN_SLICES)) == 16
    gaps = np.diff(np.r_[indices, indices[0] + slices])
    # 16 of 100 bins in van der Corput order lie 6 or 7 bins apart, and the
    # chosen slice may sit anywhere in its bin.
    assert gaps.min() >= 5 * VIEW_BIN_SLICES
    assert gaps.max() <= 8 * VIEW_BIN_SLICES


def test_order_first_pass_best_of_bin():
    slices = 400
    table = candidates([("Lockhartia", "L1", "L1-scan", "axis1", slices)], seed=6)
    quality = table["quality"].to_numpy()

    ordered = order_candidates(table, {("Lockhartia", "L1"): "train"})
    first_pass = ordered.slice(0, slices // VIEW_BIN_SLICES)

    for index in first_pass["slice_index"].to_pylist():
        start = index - index % VIEW_BIN_SLICES
        assert quality[index] == quality[start : start + VIEW_BIN_SLICES].max()


def test_order_nan_quality_ranks_last_in_bin():
    table = candidates([("Lockhartia", "L1", "L1-scan", "axis1", VIEW_BIN_SLICES)])
    quality = table["quality"].to_numpy().copy()
    quality[0] = np.nan
    table = table.set_column(5, "quality", pa.array(quality))

    ordered = order_candidates(table, {("Lockhartia", "L1"): "train"})

    assert ordered["slice_index"].to_pylist()[-1] == 0


def test_order_added_specimen_keeps_others():
    before = order_candidates(TABLE, ASSIGNMENTS)
    extra = candidates(specimen_scans("Alveolina", "A5", 1, 30), seed=9)
    grown = pa.concat_tables([TABLE, extra])
    after = order_candidates(grown, {**ASSIGNMENTS, ("Alveolina", "A5"): "train"})

    for specimen in ("A1", "A2"):
        old = rows_of(before, specimen=specimen).drop_columns(["priority"])
        new = rows_of(after, specimen=specimen).drop_columns(["priority"])
        assert old.equals(new), specimen
    untouched = rows_of(before, species="Nummulites")
    assert untouched.equals(rows_of(after, species="Nummulites"))


def test_select_missing_quota_rejected():
    ordered = order_candidates(TABLE, ASSIGNMENTS)

    with pytest.raises(ValueError, match=r"no entry for split\(s\) \['val'\]"):
        select(ordered, {"train": 10, "test": 10})


def test_order_missing_column_rejected():
    with pytest.raises(ValueError, match=r"lack column\(s\) \['quality'\]"):
        order_candidates(TABLE.drop_columns(["quality"]), ASSIGNMENTS)


def test_order_unknown_split_rejected():
    with pytest.raises(ValueError, match="'holdout' is not a split"):
        order_candidates(TABLE, {("Alveolina", "A1"): "holdout"})
