"""Passive runs (someone else arms the detector): which frame goes to which row.

Real sockets: a PUSH bound on loopback sends series built from simulator frames
with :class:`StreamEncoder`; a :class:`StreamReceiver` (PULL) attributes them to
runs begun with ``active=False``, into a sink that records ``(row, frame)``.

Within a series a passive run places frames by their number, counted from the
first one it takes, so a lost frame leaves its row empty and never shifts the
later ones; repeats are dropped; the receiver remembers what earlier runs took
from the series (step scans: one run per trigger).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ophyd_xspress.transport import Run as RunTracker
from ophyd_xspress.transport import StreamIncompleteError

TIMEOUT = 10.0


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def assert_rows(stream: Any, sink: Any, expected: dict[int, tuple[int, int]]) -> None:
    """``expected``: row -> (series, frame number), bit for bit."""
    assert sorted(sink.rows) == sorted(expected)
    for row, (series, n) in expected.items():
        got = sink.rows[row]
        assert got.frame == n, (row, got.frame, n)
        np.testing.assert_array_equal(got.spectra, stream.frame(series, n).spectra)


def begin(stream: Any, expected: int | None) -> tuple[RunTracker, Any]:
    sink = stream.sink()
    return stream.rx.begin(expected, sink, active=False), sink


def test_lost_frame_leaves_its_row_empty_and_fails_at_series_end(stream, caplog):
    run, sink = begin(stream, 6)
    series = stream.send_series([0, 1, 2, 4, 5])
    wait_for(lambda: run.error is not None)
    assert_rows(stream, sink, {r: (series, r) for r in (0, 1, 2, 4, 5)})
    assert isinstance(run.error, StreamIncompleteError)
    assert "ended after 5 of 6 frames; missing 3" in str(run.error)
    assert run.summary()["missing"] == [3]
    assert run.contiguous == 3
    stream.rx.end(run)


def test_out_of_order_frame_goes_to_its_own_row(stream, caplog):
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    run, sink = begin(stream, 6)
    series = stream.send_series([0, 1, 3, 2, 4, 5])
    assert run.wait_blocking(TIMEOUT)
    assert run.error is None
    assert_rows(stream, sink, {r: (series, r) for r in range(6)})
    summary = run.summary()
    assert summary["out_of_order"] == [2]
    assert summary["missing"] == []
    # one fact, told once (by the series tracker, through the receiver)
    assert caplog.messages == [
        f"{stream.rx.endpoint}: series 0: frame 2 not received before frame 3",
        f"{stream.rx.endpoint}: series 0: frame 2 arrived after frame 3",
    ]
    stream.rx.end(run)


def test_repeats_inside_a_run_are_dropped(stream):
    run, sink = begin(stream, 4)
    series = stream.send_series([0, 1, 2, 0, 1, 3])
    assert run.wait_blocking(TIMEOUT)
    assert_rows(stream, sink, {r: (series, r) for r in range(4)})
    assert run.summary()["repeated"] == [0, 1]
    stream.rx.end(run)


def step_runs(stream: Any, n: int) -> list[tuple[RunTracker, Any]]:
    """``n`` passive runs of one frame each, one after the other (a passive
    ``count``: one run per trigger)."""
    out = []
    for _ in range(n):
        run, sink = begin(stream, 1)
        assert run.wait_blocking(TIMEOUT)
        stream.rx.end(run)
        out.append((run, sink))
    return out


def test_step_scan_triggers_never_take_a_repeat_twice(stream):
    series = stream.send_series([0, 1, 0, 1, 2])
    runs = step_runs(stream, 3)
    assert [sink.rows[0].frame for _, sink in runs] == [0, 1, 2]
    for (_, sink), n in zip(runs, (0, 1, 2), strict=True):
        assert_rows(stream, sink, {0: (series, n)})
    # the repeats were met (and dropped) by the run that took frame 2
    assert runs[2][0].summary()["repeated"] == [0, 1]


def test_step_scan_trigger_after_a_lost_frame_reports_it(stream, caplog):
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    series = stream.send_series([0, 1, 3])
    runs = step_runs(stream, 3)
    assert [sink.rows[0].frame for _, sink in runs] == [0, 1, 3]
    assert_rows(stream, runs[2][1], {0: (series, 3)})
    assert runs[2][0].summary()["missing"] == [2]
    assert [r.summary()["missing"] for r, _ in runs[:2]] == [[], []]
    assert (
        f"{stream.rx.endpoint}: series 0: frame 2 not received before frame 3"
    ) in caplog.messages


def test_frames_beyond_a_run_go_to_the_next_run(stream):
    series = stream.send_series([0, 1, 2, 3, 4, 5])
    first, sink1 = begin(stream, 3)
    assert first.wait_blocking(TIMEOUT)
    stream.rx.end(first)
    second, sink2 = begin(stream, 3)
    assert second.wait_blocking(TIMEOUT)
    stream.rx.end(second)
    assert_rows(stream, sink1, {r: (series, r) for r in range(3)})
    assert_rows(stream, sink2, {r: (series, r + 3) for r in range(3)})
    assert second.summary()["missing"] == []


def test_a_run_over_two_series_numbers_each_from_the_next_free_row(stream):
    run, sink = begin(stream, 6)
    s1 = stream.send_series([0, 1, 2])
    s2 = stream.send_series([0, 1, 2])
    assert run.wait_blocking(TIMEOUT)
    assert run.error is None
    expected = {r: (s1, r) for r in range(3)} | {r + 3: (s2, r) for r in range(3)}
    assert_rows(stream, sink, expected)
    assert run.summary()["repeated"] == []
    stream.rx.end(run)


def test_backlog_keeps_the_headers_between_its_frames(stream):
    """Frames that arrive before any run is waiting are kept, with the header
    that separates two series: frame numbers restarting at 0 there are a new
    series, not repeats."""
    s1 = stream.send_series([0, 1])
    s2 = stream.send_series([0, 1])
    wait_for(lambda: stream.rx.messages >= 8)  # 2 x (header, 2 frames, end)
    run, sink = begin(stream, 4)
    assert run.wait_blocking(TIMEOUT)
    assert_rows(stream, sink, {0: (s1, 0), 1: (s1, 1), 2: (s2, 0), 3: (s2, 1)})
    assert run.summary()["repeated"] == []
    stream.rx.end(run)


def test_frame_older_than_the_runs_first_is_not_written(stream, caplog):
    """An earlier run took frame 0; this run starts at frame 2 (1 is lost,
    reported as missing). When frame 1 turns up late it is older than the
    run's first frame: dropped and counted, never written over another row."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    series = stream.send_series([0, 2, 3, 1, 4], end=False)
    first, sink1 = begin(stream, 1)
    assert first.wait_blocking(TIMEOUT)
    stream.rx.end(first)
    run, sink = begin(stream, 3)
    assert run.wait_blocking(TIMEOUT)
    assert_rows(stream, sink1, {0: (series, 0)})
    assert_rows(stream, sink, {0: (series, 2), 1: (series, 3), 2: (series, 4)})
    summary: dict[str, Any] = run.summary()
    assert summary["missing"] == [1]  # lost before the run's first frame
    assert summary["out_of_order"] == [1]  # then arrived too late to be placed
    assert summary["anomaly_counts"]["before_run"] == 1
    assert "frame 1 arrived after frame 2, which began this run's part" in caplog.text
    stream.rx.end(run)
