"""The run model (sans-IO): which row each frame goes to, driven by hypothesis.

Frames are judged by a real :class:`SeriesTracker` (as the decoder does) and
placed by :class:`ActiveRows` / :class:`PassiveRows`; the properties are the
ones a scientist relies on: row ``i`` holds frame ``i`` (active) or the frame
``i`` after the run's first (passive), no row is written twice, nothing is
taken twice across consecutive runs, and what is missing is counted exactly.
"""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from ophyd_xspress.protocol import (
    DEFER,
    ActiveRows,
    Drop,
    Incomplete,
    PassiveRows,
    PassiveSeries,
    Restarted,
    SeriesTracker,
    Take,
)

frame_numbers = st.lists(st.integers(min_value=0, max_value=40), max_size=80)


def feed(rows, tracker: SeriesTracker, frames: list[int]) -> dict[int, int]:
    """Place ``frames`` (all stored); returns row -> frame."""
    placed: dict[int, int] = {}
    for n in frames:
        arrival = tracker.track(n)
        decision = rows.place(n, arrival)
        if isinstance(decision, Take):
            assert decision.row not in placed, "a row written twice"
            placed[decision.row] = n
            rows.mark_stored(decision.row, n, arrival)
    return placed


@given(frames=frame_numbers, expected=st.integers(min_value=1, max_value=40))
def test_active_rows_hold_their_own_frame_number(frames, expected):
    tracker, rows = SeriesTracker(), ActiveRows(expected)
    tracker.on_header(None)
    rows.on_header(0)
    placed = feed(rows, tracker, frames)
    assert placed == {n: n for n in set(frames) if n < expected}
    assert rows.counts["repeated"] == sum(
        1 for i, n in enumerate(frames) if n < expected and n in frames[:i]
    )
    assert rows.counts["beyond"] == sum(1 for n in frames if n >= expected)
    tracker.on_series_end()
    rows.on_series_end()
    missing = set(range(expected)) - set(frames)
    assert rows.missing_count() == len(missing)
    assert rows.summary()["missing"] == sorted(missing)
    if missing:
        assert isinstance(rows.failure, Incomplete)
        assert rows.failure.missing_count == len(missing)
    else:
        assert rows.failure is None
        assert rows.done


def test_active_frames_before_the_header_are_stale_and_a_second_header_fails():
    tracker, rows = SeriesTracker(), ActiveRows(3)
    tracker.on_header(None)  # an old series, not this run's
    assert rows.place(0, tracker.track(0)) == Drop("stale")
    tracker.on_series_end()
    rows.on_series_end()  # its end: not this run's either
    assert rows.counts["stale_series_end"] == 1
    tracker.on_header(None)
    rows.on_header(1)
    assert feed(rows, tracker, [0, 1]) == {0: 0, 1: 1}
    tracker.on_header(None)
    rows.on_header(2)
    assert rows.failure == Restarted(received=2, expected=3)
    assert rows.place(2, tracker.track(2)) == Drop("ended")
    assert rows.done


@given(frames=frame_numbers, expected=st.integers(min_value=1, max_value=40))
def test_passive_rows_count_from_the_first_frame_taken(frames, expected):
    tracker, rows = SeriesTracker(), PassiveRows(expected, PassiveSeries())
    tracker.on_header(None)
    rows.on_header(0)
    placed: dict[int, int] = {}
    deferred: list[int] = []
    for n in frames:
        arrival = tracker.track(n)
        decision = rows.place(n, arrival)
        if decision is DEFER:
            deferred.append(n)
        elif isinstance(decision, Take):
            assert decision.row not in placed
            placed[decision.row] = n
            rows.mark_stored(decision.row, n, arrival)
    if not frames:
        assert placed == {}
        return
    first = frames[0]
    assert placed == {
        n - first: n for n in set(frames) if first <= n < first + expected
    }
    assert sorted(set(deferred)) == sorted({n for n in frames if n >= first + expected})
    assert rows.counts["before_run"] == sum(1 for n in frames if n < first)


@settings(max_examples=200)
@given(frames=frame_numbers, runs=st.integers(min_value=1, max_value=10))
def test_consecutive_step_runs_never_take_a_frame_twice(frames, runs):
    """Passive step scan: one run per point, each takes the next frame; what a
    run leaves (deferred) goes to the next one, as the receiver's backlog does."""
    tracker = SeriesTracker()
    tracker.on_header(None)
    shared = PassiveSeries()
    shared.restart(0)
    queue = [(n, tracker.track(n)) for n in frames]
    taken: list[int] = []
    for _ in range(runs):
        rows = PassiveRows(1, shared)
        left = []
        for n, arrival in queue:
            if rows.done:
                left.append((n, arrival))
                continue
            decision = rows.place(n, arrival)
            if decision is DEFER:
                left.append((n, arrival))
            elif isinstance(decision, Take):
                rows.mark_stored(decision.row, n, arrival)
                taken.append(n)
        queue = left
    assert len(taken) == len(set(taken))
    # each point takes the oldest frame left, repeats never count as new
    assert len(taken) == min(runs, len(set(frames)))


def test_a_huge_gap_costs_no_memory_and_is_counted_exactly():
    tracker = SeriesTracker()
    tracker.on_header(None)
    shared = PassiveSeries()
    first = PassiveRows(1, shared)
    first.on_header(0)
    feed(first, tracker, [0])
    tracemalloc.start()
    try:
        second = PassiveRows(1, shared)
        placed = feed(second, tracker, [2**31 - 1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert placed == {0: 2**31 - 1}
    assert peak < 256 * 1024, peak
    assert second.missing_count() == 2**31 - 2
    assert list(second.missing_intervals()) == [(1, 2**31 - 1)]
    assert len(second.summary()["missing"]) == 1000


def test_passive_hole_fails_the_run_when_its_series_ends():
    tracker, rows = SeriesTracker(), PassiveRows(6, PassiveSeries())
    tracker.on_header(None)
    rows.on_header(0)
    feed(rows, tracker, [0, 1, 2, 4, 5])
    tracker.on_series_end()
    rows.on_series_end()
    assert isinstance(rows.failure, Incomplete)
    assert rows.failure.missing == ((3, 4),)
    assert rows.failure.missing_text == "3"
    assert rows.contiguous == 3
