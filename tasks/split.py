"""Assign whole specimens to train, val and test with CP-SAT.

A specimen (one physical fossil, possibly several scans) goes to exactly one
split, so no scan of it can leak into another split. Each species is solved as
its own small CP-SAT model. That is exact for this objective because every
term is per species: the cross-species balance term measures each species'
count against a split mean fixed before solving (see ``_split_means``), not
against the mean of the solution.

Objective terms per species, counted in passing slices, the dominant ones first:

- ``W_UNCOVERED`` per split left without a specimen. Only used when existing
  assignments are fixed and too few new specimens remain to fill every split.
- ``W_OVERSHOOT`` per slice of val above ``val_cap``. Only possible when the
  cap cannot hold.
- ``W_TEST * |test - round(test_fraction * total)|``.
- ``W_VAL * |val - val_goal|`` where ``val_goal = min(val_target, val_cap)``
  when train can still keep at least as many slices as val, and
  ``val_goal = test_goal`` otherwise. A species too small for ``val_target``
  thus splits like ``1 - 2 * test_fraction``, ``test_fraction``,
  ``test_fraction`` (60/20/20 by default), and train stays the largest split.
- ``W_VAL_OVER_TRAIN * max(0, val - train)``, a tie-break that pushes train
  to at least the size of val when specimens are too coarse to hit the goals.
- ``W_BALANCE * sum over splits |count - split mean|``, a linear proxy for the
  coefficient of variation of per-species counts within each split. Its weight
  is the lowest, so it only chooses between near-equal per-species solutions.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

SPLITS = ("train", "val", "test")

MIN_SPECIMENS = len(SPLITS)

# Objective weights per passing slice, except W_UNCOVERED, which is per empty
# split. W_UNCOVERED exceeds the sum of the other terms while the largest
# species has fewer than 10**7 passing slices.
W_UNCOVERED = 10**9
# The overshoot variable cannot exceed the least overshoot any assignment
# allows (see _add_val_cap), so this weight only needs to sit between
# W_UNCOVERED and the slice-count terms.
W_OVERSHOOT = 10**4
W_TEST = 4
W_VAL = 4
W_VAL_OVER_TRAIN = 2
# Below W_TEST / 3 so that moving a slice away from a per-species goal always
# costs more than the balance term can win back over the three splits.
W_BALANCE = 1

# Species with at most this many specimens to place are solved without
# presolve, probing, symmetry detection, LP relaxation and in-processing.
# Measured with 600 to 3000 slices per specimen, species of up to 16
# specimens then reach the same proven optimum 2 to 4 times faster. Species
# of 25 or more take 5 to over 100 times longer that way, so they keep
# CP-SAT's defaults.
LEAN_SEARCH_MAX_SPECIMENS = 16


@dataclass(frozen=True)
class SpecimenSlices:
    """Passing slice count of one specimen, summed over its scans."""

    species: str
    specimen: str
    passing_slices: int


@dataclass(frozen=True)
class SplitPlan:
    """Result of :func:`assign_splits`.

    Attributes
    ----------
    assignments
        ``(species, specimen) -> split`` for every specimen of every species
        that was not excluded, including specimens with no passing slices.
    excluded
        ``species -> reason`` for species that got no split.
    notes
        ``species -> remark`` where the plan departs from the targets, such as
        a val cap that cannot hold or a split left empty by fixed assignments.
    optimal
        True when CP-SAT proved every species' assignment optimal.
    """

    assignments: dict[tuple[str, str], str]
    excluded: dict[str, str]
    notes: dict[str, str]
    optimal: bool


@dataclass
class _SpeciesProblem:
    species: str
    # (specimen, passing slices), sorted by specimen, only slices > 0.
    usable: list[tuple[str, int]]
    empty: list[str]
    fixed: dict[str, str]
    test_goal: int = 0
    val_goal: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(slices for _, slices in self.usable)


def assign_splits(
    specimens: Sequence[SpecimenSlices],
    *,
    test_fraction: float = 0.20,
    val_target: int = 1000,
    val_cap: int = 1200,
    seed: int = 42,
    existing: Mapping[tuple[str, str], str] | None = None,
    resplit: bool = False,
    max_deterministic_time: float = 10.0,
) -> SplitPlan:
    """Assign every specimen of each species to train, val or test.

    Parameters
    ----------
    specimens
        Passing slice counts per specimen. Rows repeating a
        ``(species, specimen)`` pair (one per scan, say) are summed.
    test_fraction
        Share of a species' passing slices that test should hold, in (0, 1).
    val_target
        Passing slices that val should hold per species.
    val_cap
        Maximum passing slices in val per species. Exceeded only when no
        assignment can respect it, and then by the least amount possible.
    seed
        CP-SAT random seed.
    existing
        Earlier ``(species, specimen) -> split`` assignments. These stay fixed
        unless ``resplit`` is True; pairs no longer in ``specimens`` are ignored.
    resplit
        Ignore ``existing`` and place every specimen afresh.
    max_deterministic_time
        CP-SAT deterministic time budget for the whole call, shared between
        species. Time a species leaves unused passes to the ones after it.

    Returns
    -------
    SplitPlan
        Assignments, excluded species with reasons, notes and whether every
        species was solved to proven optimality.

    Raises
    ------
    ValueError
        On a negative slice count, a parameter out of range or an unknown
        split name in ``existing``.
    """
    _validate_arguments(specimens, test_fraction, val_target, val_cap, existing, max_deterministic_time)
    fixed = {} if resplit or existing is None else dict(existing)

    problems: list[_SpeciesProblem] = []
    excluded: dict[str, str] = {}
    for species, counts in sorted(_group_by_species(specimens).items()):
        problem = _make_problem(species, counts, fixed)
        reason = _exclusion_reason(problem, len(counts))
        if reason is not None:
            excluded[species] = reason
            continue
        _set_goals(problem, test_fraction, val_target, val_cap)
        problems.append(problem)

    means = _split_means(problems)
    assignments: dict[tuple[str, str], str] = {}
    notes: dict[str, str] = {}
    all_optimal = True
    remaining_time = max_deterministic_time
    for position, problem in enumerate(problems):
        budget = remaining_time / (len(problems) - position)
        placed, optimal, used_time = _solve_species(problem, means, val_cap, seed, budget)
        remaining_time = max(0.0, remaining_time - used_time)
        all_optimal = all_optimal and optimal
        for specimen, split in placed.items():
            assignments[(problem.species, specimen)] = split
        if problem.notes:
            notes[problem.species] = "; ".join(problem.notes)

    return SplitPlan(assignments=assignments, excluded=excluded, notes=notes, optimal=all_optimal)


def _validate_arguments(
    specimens: Sequence[SpecimenSlices],
    test_fraction: float,
    val_target: int,
    val_cap: int,
    existing: Mapping[tuple[str, str], str] | None,
    max_deterministic_time: float,
) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction {test_fraction} is out of range; give a share between 0 and 1, such as 0.2")
    if val_target < 0 or val_cap < 0:
        raise ValueError(f"val_target {val_target} and val_cap {val_cap} must be 0 or more slices")
    if val_target > val_cap:
        raise ValueError(f"val_target {val_target} is above val_cap {val_cap}; lower val_target or raise val_cap")
    if max_deterministic_time <= 0:
        raise ValueError(f"max_deterministic_time {max_deterministic_time} must be positive, such as 10.0")
    for row in specimens:
        if row.passing_slices < 0:
            raise ValueError(
                f"specimen {row.specimen!r} of {row.species!r} has {row.passing_slices} passing slices; "
                "counts must be 0 or more"
            )
    for key, split in (existing or {}).items():
        if split not in SPLITS:
            raise ValueError(f"existing assignment {key} -> {split!r} is not a split; use one of {SPLITS}")


def _group_by_species(specimens: Sequence[SpecimenSlices]) -> dict[str, dict[str, int]]:
    grouped: dict[str, dict[str, int]] = {}
    for row in specimens:
        counts = grouped.setdefault(row.species, {})
        counts[row.specimen] = counts.get(row.specimen, 0) + int(row.passing_slices)
    return grouped


def _make_problem(species: str, counts: dict[str, int], fixed: Mapping[tuple[str, str], str]) -> _SpeciesProblem:
    usable = sorted((name, slices) for name, slices in counts.items() if slices > 0)
    empty = sorted(name for name, slices in counts.items() if slices == 0)
    species_fixed = {name: fixed[(species, name)] for name in counts if (species, name) in fixed}
    return _SpeciesProblem(species=species, usable=usable, empty=empty, fixed=species_fixed)


def _exclusion_reason(problem: _SpeciesProblem, specimen_count: int) -> str | None:
    usable_count = len(problem.usable)
    if usable_count == 0:
        return f"has no passing slices in any of its {specimen_count} specimens"
    if usable_count >= MIN_SPECIMENS:
        return None
    if usable_count == specimen_count:
        counted = f"has {usable_count} specimen{'s' if usable_count != 1 else ''}"
    else:
        counted = f"has {usable_count} specimens with passing slices ({specimen_count} in total)"
    return f"{counted}; a split needs at least {MIN_SPECIMENS}, one per split"


def _set_goals(problem: _SpeciesProblem, test_fraction: float, val_target: int, val_cap: int) -> None:
    total = problem.total
    problem.test_goal = round(test_fraction * total)
    left_after_test = total - problem.test_goal
    problem.val_goal = min(val_target, val_cap)
    if problem.val_goal > left_after_test // 2:
        problem.val_goal = problem.test_goal
        problem.notes.append(
            f"val target {val_target} out of reach with {total} passing slices; "
            f"val aims at {problem.val_goal}, the same share as test, so that train stays the largest split"
        )


def _split_means(problems: Sequence[_SpeciesProblem]) -> dict[str, int]:
    """Mean per-species goal of each split, the reference of the balance term."""
    if not problems:
        return {split: 0 for split in SPLITS}
    count = len(problems)
    test = sum(p.test_goal for p in problems)
    val = sum(p.val_goal for p in problems)
    train = sum(p.total for p in problems) - test - val
    return {"train": round(train / count), "val": round(val / count), "test": round(test / count)}


def _solve_species(
    problem: _SpeciesProblem,
    means: Mapping[str, int],
    val_cap: int,
    seed: int,
    budget: float,
) -> tuple[dict[str, str], bool, float]:
    """Solve one species and return specimen -> split, proven optimality and deterministic time used."""
    model = cp_model.CpModel()
    free = [(name, slices) for name, slices in problem.usable if name not in problem.fixed]
    # The lean search below is deterministic and ignores the random seed, so
    # the seed picks the order in which the model lists the specimens. That
    # order decides which of several equally good splits the search reaches.
    random.Random(f"{seed}:{problem.species}").shuffle(free)
    choice = {(name, split): model.new_bool_var(f"{name}->{split}") for name, _ in free for split in SPLITS}
    for name, _ in free:
        model.add_exactly_one(choice[(name, split)] for split in SPLITS)

    fixed_slices = {split: 0 for split in SPLITS}
    for name, slices in problem.usable:
        if name in problem.fixed:
            fixed_slices[problem.fixed[name]] += slices
    count = {
        split: fixed_slices[split] + sum(slices * choice[(name, split)] for name, slices in free) for split in SPLITS
    }

    penalties = _add_coverage(model, problem, free, choice)
    overshoot = _add_val_cap(model, problem, free, fixed_slices, count, val_cap)
    penalties += W_OVERSHOOT * overshoot
    penalties += _add_goal_terms(model, problem, means, count)
    model.minimize(penalties)

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = budget
    if len(free) <= LEAN_SEARCH_MAX_SPECIMENS:
        _use_lean_search(solver.parameters)
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(
            f"CP-SAT found no split for species {problem.species!r} within {budget:.3f} deterministic seconds "
            f"(status {solver.status_name(status)}); raise max_deterministic_time"
        )

    placed = dict(problem.fixed)
    for name, _ in free:
        placed[name] = next(split for split in SPLITS if solver.boolean_value(choice[(name, split)]))
    for name in problem.empty:
        # A specimen without passing slices changes no count, so it joins
        # train unless it was placed before.
        placed.setdefault(name, "train")
    _note_outcome(problem, placed, val_cap)
    return placed, status == cp_model.OPTIMAL, solver.deterministic_time


def _use_lean_search(parameters) -> None:
    """Switch off the CP-SAT stages that cost more than they save on a model of a few specimens."""
    parameters.cp_model_presolve = False
    parameters.cp_model_probing_level = 0
    parameters.symmetry_level = 0
    parameters.linearization_level = 0
    parameters.use_sat_inprocessing = False


def _add_coverage(model: cp_model.CpModel, problem: _SpeciesProblem, free, choice) -> cp_model.LinearExpr:
    """Require one specimen with passing slices per split; soften only when fixed assignments forbid it."""
    usable_names = {name for name, _ in problem.usable}
    covered = {problem.fixed[name] for name in usable_names if name in problem.fixed}
    missing = [split for split in SPLITS if split not in covered]
    hard = len(free) >= len(missing)
    penalty = 0
    for split in missing:
        members = [choice[(name, split)] for name, _ in free]
        if hard:
            model.add_at_least_one(members)
            continue
        filled = model.new_bool_var(f"{split} filled")
        model.add_bool_or(members + [filled.Not()])
        penalty += W_UNCOVERED * (1 - filled)
    return penalty


def _add_val_cap(model, problem: _SpeciesProblem, free, fixed_slices, count, val_cap: int):
    """Bound val by ``val_cap`` plus an overshoot variable; return the overshoot."""
    if fixed_slices["val"] > 0:
        smallest_val = fixed_slices["val"]
    else:
        smallest_val = min((slices for _, slices in free), default=0)
    # The overshoot domain stops at the least overshoot any assignment allows,
    # so the cap is exceeded only when it must be and by no more than needed.
    least_overshoot = max(0, smallest_val - val_cap)
    overshoot = model.new_int_var(0, least_overshoot, "val overshoot")
    model.add(count["val"] <= val_cap + overshoot)
    return overshoot


def _add_goal_terms(model, problem: _SpeciesProblem, means, count):
    total = problem.total
    test_dev = _abs_deviation(model, count["test"], problem.test_goal, total, "test deviation")
    val_dev = _abs_deviation(model, count["val"], problem.val_goal, total, "val deviation")
    val_over_train = model.new_int_var(0, total, "val over train")
    model.add(val_over_train >= count["val"] - count["train"])
    balance = sum(_abs_deviation(model, count[split], means[split], total, f"{split} balance") for split in SPLITS)
    return W_TEST * test_dev + W_VAL * val_dev + W_VAL_OVER_TRAIN * val_over_train + W_BALANCE * balance


def _abs_deviation(model: cp_model.CpModel, expression, goal: int, total: int, name: str) -> cp_model.IntVar:
    deviation = model.new_int_var(0, max(total, goal), name)
    model.add(deviation >= expression - goal)
    model.add(deviation >= goal - expression)
    return deviation


def _note_outcome(problem: _SpeciesProblem, placed: Mapping[str, str], val_cap: int) -> None:
    slices = dict(problem.usable)
    val_slices = sum(slices[name] for name, split in placed.items() if split == "val" and name in slices)
    if val_slices > val_cap:
        fixed_val = sum(slices[name] for name, split in problem.fixed.items() if split == "val" and name in slices)
        if fixed_val > val_cap:
            cause = f"specimens already in val have {fixed_val} passing slices"
        else:
            cause = f"smallest specimen has {min(slices.values())} passing slices"
        problem.notes.append(f"val cap {val_cap} cannot hold: {cause}; val overshoots by {val_slices - val_cap}")

    filled = {split for name, split in placed.items() if name in slices}
    for split in SPLITS:
        if split not in filled:
            problem.notes.append(
                f"{split} has no specimen: too few new specimens to fill it and existing assignments stay fixed; "
                "pass resplit=True to move them"
            )
