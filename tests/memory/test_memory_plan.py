"""Placement rules and the prefetch schedule, in bytes and names only (engine.memory.plan / schedule)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.memory.plan import ModelEntry, PartSpec, plan_shrink, plan_use, spread_resident, window_for
from engine.memory.schedule import Done, Fetch, PrefetchSchedule, Wait


def model(key: int, base: int, blocks: list[int], *, last_used: int = 0, resident: bool = False,
          in_use: int = 0) -> ModelEntry:
    parts = (PartSpec("(base)", base),) + tuple(PartSpec(f"b{i}", n, block=True) for i, n in enumerate(blocks))
    entry = ModelEntry(key=key, label=f"m{key}", parts=parts, last_used=last_used, in_use=in_use)
    if resident:
        entry.resident = {p.name for p in parts}
    return entry


def test_a_model_that_fits_evicts_nothing_and_is_fully_resident():
    models = {1: model(1, 10, [100, 100], resident=True, last_used=1), 2: model(2, 10, [50, 50])}
    plan = plan_use(models, 2, budget=400)
    assert plan.fits and plan.evict == () and plan.streamed == ()
    assert plan.resident == {"(base)", "b0", "b1"} and plan.needed_bytes == 110


def test_eviction_takes_least_recently_used_models_first_and_only_as_many_as_needed():
    models = {1: model(1, 0, [100], resident=True, last_used=3),
              2: model(2, 0, [100], resident=True, last_used=1),
              3: model(3, 0, [100], resident=True, last_used=2),
              4: model(4, 0, [150])}
    plan = plan_use(models, 4, budget=350)  # 300 used, 150 needed: free 100 more, i.e. one model
    assert plan.evict == (2,)
    plan = plan_use(models, 4, budget=300)  # two models must go, oldest first
    assert plan.evict == (2, 3)


def test_models_in_use_are_never_evicted():
    models = {1: model(1, 0, [200], resident=True, last_used=1, in_use=1), 2: model(2, 0, [100, 100])}
    plan = plan_use(models, 2, budget=300)
    assert 1 not in plan.evict
    assert plan.streamed  # the rest of the room is too small for all of model 2


def test_a_model_larger_than_the_budget_is_loaded_partially_with_blocks_spread_out():
    models = {1: model(1, 10, [100] * 8)}
    plan = plan_use(models, 1, budget=10 + 200 + 400)  # base + window of two blocks + four blocks
    assert plan.fits and plan.window_bytes == 200
    assert plan.resident == {"(base)", "b0", "b2", "b4", "b6"}
    assert plan.streamed == ("b1", "b3", "b5", "b7")
    assert plan.needed_bytes == 610


def test_no_vram_streams_every_block_and_too_small_a_budget_does_not_fit():
    models = {1: model(1, 10, [100] * 4)}
    plan = plan_use(models, 1, budget=10_000, stream_all=True)
    assert plan.resident == {"(base)"} and plan.streamed == ("b0", "b1", "b2", "b3")
    too_small = plan_use(models, 1, budget=150)
    assert not too_small.fits and too_small.needed_bytes == 210  # base + two-block window


def test_high_vram_loads_whole_even_over_budget_and_no_budget_means_everything_resident():
    models = {1: model(1, 10, [100] * 4)}
    plan = plan_use(models, 1, budget=100, allow_partial=False)
    assert not plan.fits and plan.streamed == () and len(plan.resident) == 5
    assert plan_use(models, 1, budget=None).resident == {"(base)", "b0", "b1", "b2", "b3"}


def test_parts_that_cannot_leave_the_device_stay_resident_and_count_against_the_budget():
    parts = (PartSpec("(base)", 10), PartSpec("b0", 100, True, movable=False), PartSpec("b1", 50, True),
             PartSpec("b2", 50, True), PartSpec("b3", 50, True))
    models = {1: ModelEntry(1, "cpu-owned", parts), 2: model(2, 0, [100], resident=True)}
    models[2].parts = (PartSpec("(base)", 0), PartSpec("b0", 100, True, movable=False))
    plan = plan_use(models, 1, budget=320)  # model 2's 100 immovable bytes leave 220
    assert plan.fits and "b0" in plan.resident and plan.evict == ()  # nothing movable to evict in model 2
    assert plan.streamed == ("b1", "b2", "b3") and plan.needed_bytes == 210  # base, b0 and a 2 x 50 window
    assert not plan_use(models, 1, budget=300).fits
    assert plan_use(models, 1, budget=360).streamed == ()


def test_shrinking_frees_at_least_the_requested_bytes():
    entry = model(1, 10, [100] * 6, resident=True)
    plan = plan_shrink(entry, 150)
    assert plan.fits and plan.needed_bytes <= entry.total_bytes - 150
    assert plan.streamed and "(base)" in plan.resident


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=40), st.integers(0, 30_000))
def test_spread_residency_fills_the_capacity_without_exceeding_it(sizes, capacity):
    blocks = [PartSpec(f"b{i}", n, block=True) for i, n in enumerate(sizes)]
    chosen = spread_resident(blocks, capacity)
    used = sum(b.nbytes for b in blocks if b.name in chosen)
    assert used <= capacity
    assert all(used + b.nbytes > capacity for b in blocks if b.name not in chosen)  # nothing else fits


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=1, max_size=20), st.integers(1, 5_000), st.integers(0, 500))
def test_a_partial_plan_never_needs_more_than_the_budget(sizes, budget, base):
    models = {1: model(1, base, sizes)}
    plan = plan_use(models, 1, budget=budget)
    if plan.fits:
        assert plan.needed_bytes <= budget
        assert set(plan.streamed) | set(plan.resident) == {p.name for p in models[1].parts}
        assert not set(plan.streamed) & set(plan.resident)
        assert plan.window_bytes == window_for(p for p in models[1].parts if p.name in plan.streamed)


def steps_of(schedule: PrefetchSchedule, blocks: list[str]) -> list:
    out = list(schedule.start_call())
    for block in blocks:
        out += schedule.start_block(block)
        out += schedule.end_block(block)
    schedule.end_call()
    return out


def test_each_streamed_block_is_prefetched_while_the_one_before_runs():
    schedule = PrefetchSchedule(["a", "b", "c"])
    steps = steps_of(schedule, ["a", "b", "c"])
    assert steps == [Fetch("a", 0, True), Wait("a", 0), Fetch("b", 1, True), Done("a", 0),
                     Wait("b", 1), Fetch("c", 0, True), Done("b", 1),
                     Wait("c", 0), Fetch("a", 1, True), Done("c", 0)]  # wraps to the next call
    second = steps_of(schedule, ["a", "b", "c"])
    assert [s for s in second if isinstance(s, Fetch) and not s.prefetch] == []  # no miss on later calls
    assert schedule.misses == 0


def test_the_schedule_learns_the_order_blocks_really_run_in():
    schedule = PrefetchSchedule(["a", "b", "c"])
    steps_of(schedule, ["c", "a", "b"])
    assert schedule.misses >= 1 and schedule.order == ["c", "a", "b"]
    before = schedule.misses
    steps_of(schedule, ["c", "a", "b"])
    assert schedule.misses == before


def test_a_single_streamed_block_uses_one_slot():
    schedule = PrefetchSchedule(["only"])
    assert steps_of(schedule, ["only"]) == [Fetch("only", 0, True), Wait("only", 0), Done("only", 0)]
    with pytest.raises(ValueError):
        PrefetchSchedule([])
