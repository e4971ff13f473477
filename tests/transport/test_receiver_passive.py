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


def step(stream: Any, frames: list[int], *, header: bool = False) -> tuple[Any, Any]:
    """One passive step-scan point: its run begins (the trigger), then the
    detector sends ``frames`` (after a header, for the first point)."""
    run, sink = begin(stream, 1)
    messages = list(stream.encoder.encode(stream.sim.header())) if header else []
    for n in frames:
        messages += stream.encoder.encode(stream.frame(stream.series, n))
    stream.push.send(messages)
    assert run.wait_blocking(TIMEOUT)
    stream.rx.end(run)
    return run, sink


def test_step_scan_triggers_never_take_a_repeat_twice(stream):
    """Frame 0 comes again during the second point and frame 1 during the
    third: each point takes a frame no earlier point took, and the repeat that
    arrived before the third point's trigger is set aside, not taken."""
    stream.series += 1
    _, sink1 = step(stream, [0], header=True)
    _, sink2 = step(stream, [1, 0])
    wait_for(lambda: stream.rx.backlog_size[0] >= 1)  # the second 0, held
    third, sink3 = step(stream, [1, 2])
    assert [s.rows[0].frame for s in (sink1, sink2, sink3)] == [0, 1, 2]
    for sink, n in zip((sink1, sink2, sink3), (0, 1, 2), strict=True):
        assert_rows(stream, sink, {0: (stream.series, n)})
    # frame 0 again arrived after the second point had its frame: the third
    # point's trigger came later, so it was set aside; frame 1 again arrived
    # within the third point: dropped as a repeat
    assert third.summary()["repeated"] == [1]
    assert third.counts["before_trigger"] == 1
    assert third.summary()["missing"] == []


def test_step_scan_trigger_after_a_lost_frame_reports_it(stream, caplog):
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    stream.series += 1
    runs = [step(stream, [0], header=True), step(stream, [1]), step(stream, [3])]
    assert [sink.rows[0].frame for _, sink in runs] == [0, 1, 3]
    assert_rows(stream, runs[2][1], {0: (stream.series, 3)})
    assert runs[2][0].summary()["missing"] == [2]
    assert [r.summary()["missing"] for r, _ in runs[:2]] == [[], []]
    assert (
        f"{stream.rx.endpoint}: series 0: frame 2 not received before frame 3"
    ) in caplog.messages


def test_a_passive_run_takes_no_frame_older_than_its_trigger(stream, caplog):
    """A free-running detector: frames that arrived before the run began
    (here 0-5, two series' worth, headers between) are set aside and counted,
    never taken and never called missing; the run takes the frames that
    arrive after its trigger."""
    caplog.set_level(logging.INFO, logger="ophyd_xspress.transport")
    s1 = stream.send_series([0, 1, 2])
    s2 = stream.send_series([0, 1, 2], end=False)
    wait_for(lambda: stream.rx.backlog_size[0] >= 6)  # held: no run waits
    run, sink = begin(stream, 3)
    messages: list[Any] = []
    for n in (3, 4, 5):
        messages += stream.encoder.encode(stream.frame(s2, n))
    stream.push.send(messages)
    assert run.wait_blocking(TIMEOUT)
    stream.rx.end(run)
    assert s1 != s2
    assert_rows(stream, sink, {r: (s2, r + 3) for r in range(3)})
    summary = run.summary()
    assert summary["missing"] == []
    assert summary["anomaly_counts"] == {"before_trigger": 6}
    assert (
        f"{stream.rx.endpoint}: discarded 6 frame(s) received before this run's "
        "trigger (a passive detector takes only frames that arrive after trigger())"
    ) in caplog.messages


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


def test_frames_of_a_series_whose_header_was_missed_are_taken(stream, caplog):
    """A passive consumer started while the detector already runs: the header
    went by before it listened. The frames are taken all the same (the image
    JSON carries their shape); "header not seen" is told once."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    run, sink = begin(stream, 4)
    stream.series += 1
    messages: list[Any] = []
    for n in (40, 41, 42, 43):
        messages += stream.encoder.encode(stream.frame(stream.series, n))
    stream.push.send(messages)
    assert run.wait_blocking(TIMEOUT)
    stream.rx.end(run)
    assert run.error is None
    assert_rows(stream, sink, {r: (stream.series, 40 + r) for r in range(4)})
    assert run.summary()["missing"] == []
    told = [m for m in caplog.messages if "header of its series was missed" in m]
    assert told == [
        f"{stream.rx.endpoint}: frame 40 received before any header: the header of "
        "its series was missed (this consumer joined after Arm, or another "
        "consumer of a PUSH stream took it); the frames up to the next header are "
        "kept as a series of their own (further such frames are counted, not "
        "logged)"
    ]


def test_frame_older_than_the_runs_first_is_not_written(stream, caplog):
    """An earlier run took frame 0; this run starts at frame 2 (1 is lost,
    reported as missing). When frame 1 turns up late it is older than the
    run's first frame: dropped and counted, never written over another row."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    stream.series += 1
    step(stream, [0], header=True)
    run, sink = begin(stream, 3)
    messages: list[Any] = []
    for n in (2, 3, 1, 4):
        messages += stream.encoder.encode(stream.frame(stream.series, n))
    stream.push.send(messages)
    assert run.wait_blocking(TIMEOUT)
    assert_rows(
        stream,
        sink,
        {0: (stream.series, 2), 1: (stream.series, 3), 2: (stream.series, 4)},
    )
    summary: dict[str, Any] = run.summary()
    assert summary["missing"] == [1]  # lost before the run's first frame
    assert summary["out_of_order"] == [1]  # then arrived too late to be placed
    assert summary["anomaly_counts"]["before_run"] == 1
    assert "frame 1 arrived after frame 2, which began this run's part" in caplog.text
    stream.rx.end(run)


def test_every_lost_frame_is_counted_the_tail_included(stream, caplog):
    """A passive run of 10: frames 0-3, then a gap of 200 (the publisher's
    high-water mark, most likely: said so), then 204-205 and the end. The
    summary counts every frame the run never got, the tail after 205 too."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    run, sink = begin(stream, 10)
    series = stream.send_series([0, 1, 2, 3, 204, 205])
    wait_for(lambda: stream.rx.backlog_size[0] >= 2)  # 204, 205: beyond the run
    wait_for(lambda: stream.rx.decoder.tracker.counts["missing"] > 0)  # the end
    stream.rx.end(run)  # the run ends (a time-out) with rows 6-9 empty
    assert_rows(
        stream, sink, {0: (series, 0), 1: (series, 1), 2: (series, 2), 3: (series, 3)}
    )
    summary = run.summary()
    # row 4 onwards: frames 4-9 by the run's numbering; 204, 205 were beyond it
    assert summary["missing"] == [4, 5, 6, 7, 8, 9]
    assert summary["missing_count"] == 6
    assert (
        f"{stream.rx.endpoint}: series 0: frames 4-203 not received before frame "
        "204; a gap this large usually means this consumer fell behind and the "
        "publisher's high-water mark dropped frames"
    ) in caplog.messages


def test_frames_the_receiver_dropped_itself_are_not_called_lost(push_stream, caplog):
    """A backlog of 5 frames: 20 frames with no run waiting; 15 are dropped
    by the receiver (counted, the cap named once with how to raise it), the
    rest set aside at the next trigger; none of them is "missing"."""
    from ophyd_xspress.transport import StreamReceiver

    from .conftest import Stream

    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    push = push_stream()
    local = Stream(push)
    local.rx.stop()
    local.rx = StreamReceiver(push.endpoint, "pull", backlog=5)
    local.rx.start(connect_timeout=TIMEOUT)
    try:
        series = local.send_series(list(range(20)), end=False)
        wait_for(lambda: local.rx.counts["backlog_dropped"] >= 15)
        run, sink = begin(local, 3)
        messages: list[Any] = []
        for n in (20, 21, 22):
            messages += local.encoder.encode(local.frame(series, n))
        local.push.send(messages)
        assert run.wait_blocking(TIMEOUT)
        local.rx.end(run)
        assert_rows(local, sink, {r: (series, 20 + r) for r in range(3)})
        assert run.summary()["missing"] == []
        assert run.counts["before_trigger"] == 5
        assert local.rx.counts["backlog_dropped"] == 15
        capped = [m for m in caplog.messages if "keeps at most 5 frames" in m]
        assert len(capped) == 1, capped
    finally:
        local.close()
