"""Series bookkeeping: missing, repeated and out-of-order frames, odd structure."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ophyd_xspress.protocol import (
    Anomaly,
    HeaderMessage,
    OutOfSeriesError,
    SeriesEndMessage,
    SeriesTracker,
    StreamDecoder,
    StreamEncoder,
    format_ranges,
)
from ophyd_xspress.protocol._series import MAX_KEPT_SERIES, FrameSet

LOGGER = "ophyd_xspress.protocol"


@pytest.fixture
def stream(make_synthetic_frames):
    """Feed a decoder the given frame numbers (small synthetic frames, multipart).

    ``stream(decoder, [0, 1, "end", "header", 0])``: ints are frames, "header"
    and "end" the JSON packets. Returns the packets and the errors raised.
    """
    encoder = StreamEncoder("multipart")
    frames = {}

    def feed(decoder: StreamDecoder, items):
        packets, errors = [], []
        for item in items:
            if item == "header":
                messages = encoder.encode(HeaderMessage(filename=f"s{len(packets)}.h5"))
            elif item == "end":
                messages = encoder.encode(SeriesEndMessage())
            else:
                if item not in frames:
                    (frames[item],) = make_synthetic_frames(
                        1, channels=2, bins=16, first_frame=item, seed=item
                    )
                messages = encoder.encode(frames[item])
            for message in messages:
                try:
                    packets += decoder.feed(message)
                except OutOfSeriesError as exc:
                    errors.append(exc)
        return packets, errors

    return feed


def anomalies(tracker: SeriesTracker, kind: str) -> list[Anomaly]:
    return [a for a in tracker.anomalies if a.kind == kind]


# -- missing frames ------------------------------------------------------------
def test_missing_frames_are_counted_logged_and_listed(stream, caplog):
    decoder = StreamDecoder()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        packets, errors = stream(decoder, ["header", 0, 1, 4, 5, 9, "end"])

    assert not errors
    assert len(packets) == 7
    tracker = decoder.tracker
    assert tracker.counts["missing"] == 5
    (missing,) = anomalies(tracker, "missing")
    assert missing.frames == (2, 3, 6, 7, 8)
    assert missing.series == 0
    assert missing.message == "series 0: 5 frame(s) never received: 2-3, 6-8"
    state = tracker.series[0]
    assert state.missing_frames == [2, 3, 6, 7, 8]
    assert state.frames_received == 5
    assert state.highest_frame == 9
    assert state.ended
    assert state.closed
    assert state.counts["missing"] == 5

    messages = [r.getMessage() for r in caplog.records]
    # Logged when the gap shows, and once more at series end.
    assert "series 0: frames 2-3 not received before frame 4" in messages
    assert "series 0: frames 6-8 not received before frame 9" in messages
    assert "series 0: 5 frame(s) never received: 2-3, 6-8" in messages
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_missing_first_frames(stream):
    decoder = StreamDecoder()
    stream(decoder, ["header", 2, 3, "end"])
    (missing,) = anomalies(decoder.tracker, "missing")
    assert missing.frames == (0, 1)


def test_gap_reported_at_finish_without_series_end(stream):
    decoder = StreamDecoder()
    stream(decoder, ["header", 0, 3])
    assert not anomalies(decoder.tracker, "missing")
    decoder.finish()
    (missing,) = anomalies(decoder.tracker, "missing")
    assert missing.frames == (1, 2)
    decoder.finish()  # idempotent
    assert decoder.tracker.counts["missing"] == 2


def test_no_anomalies_for_a_clean_series(stream, caplog):
    decoder = StreamDecoder()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        stream(decoder, ["header", 0, 1, 2, 3, "end"])
    assert not decoder.tracker.counts
    assert not decoder.tracker.anomalies
    assert not caplog.records


# -- repeated and out-of-order -------------------------------------------------
def test_repeated_frames(stream, caplog):
    decoder = StreamDecoder()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        packets, _ = stream(decoder, ["header", 0, 1, 1, 2, 2, 2, 3, "end"])
    assert len(packets) == 9  # repeated frames are still delivered
    tracker = decoder.tracker
    assert tracker.counts["repeated"] == 3
    assert [a.frames for a in anomalies(tracker, "repeated")] == [(1,), (2,), (2,)]
    assert tracker.series[0].repeated_frames == [1, 2, 2]
    assert tracker.counts["missing"] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("series 0: frame 2 received again") == 2
    assert "series 0: frame 1 received again" in messages


def test_out_of_order_frames(stream, caplog):
    decoder = StreamDecoder()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        stream(decoder, ["header", 0, 2, 1, 3, 6, 4, 5, "end"])
    tracker = decoder.tracker
    assert tracker.counts["out_of_order"] == 3
    assert [a.frames for a in anomalies(tracker, "out_of_order")] == [(1,), (4,), (5,)]
    assert tracker.series[0].out_of_order_frames == [1, 4, 5]
    # Late frames are not reported missing at the end.
    assert tracker.counts["missing"] == 0
    assert tracker.series[0].missing_frames == []
    messages = [r.getMessage() for r in caplog.records]
    assert "series 0: frame 1 arrived after frame 2" in messages
    assert "series 0: frame 4 arrived after frame 6" in messages
    assert "series 0: frame 5 arrived after frame 6" in messages


def test_late_frame_after_the_gap_only_leaves_the_rest_missing(stream):
    decoder = StreamDecoder()
    stream(decoder, ["header", 0, 5, 2, "end"])
    (missing,) = anomalies(decoder.tracker, "missing")
    assert missing.frames == (1, 3, 4)


# -- series structure ----------------------------------------------------------
def test_header_before_series_end_starts_a_new_series(stream, caplog):
    decoder = StreamDecoder()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _, errors = stream(decoder, ["header", 0, 2, "header", 0, 1, "end"])
    assert not errors
    tracker = decoder.tracker
    assert tracker.counts["header_before_series_end"] == 1
    (anomaly,) = anomalies(tracker, "header_before_series_end")
    assert anomaly.series == 0
    assert anomaly.message == (
        "series 0: new header before series_end after 2 frames; starting series 1"
    )
    # The unfinished series' gap is reported when it is closed.
    (missing,) = anomalies(tracker, "missing")
    assert (missing.series, missing.frames) == (0, (1,))
    assert len(tracker.series) == 2
    first, second = tracker.series
    assert first.closed
    assert not first.ended
    assert second.ended
    assert second.frames_received == 2
    assert not second.counts  # frame numbers restart at 0: nothing odd there
    assert tracker.current is second
    assert "series 0: new header before series_end after 2 frames" in caplog.text


def test_second_series_end_is_counted_at_info_level(stream, caplog):
    decoder = StreamDecoder()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        packets, _ = stream(decoder, ["header", 0, "end", "end"])
    assert [type(p).__name__ for p in packets] == [
        "HeaderMessage",
        "Frame",
        "SeriesEndMessage",
        "SeriesEndMessage",
    ]
    tracker = decoder.tracker
    assert tracker.counts["duplicate_series_end"] == 1
    assert tracker.series[0].end_count == 2
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == "series 0: series_end received 2 times"


def test_series_end_before_any_header():
    decoder = StreamDecoder()
    assert decoder.feed([b'{"htype": "series_end"}']) == [SeriesEndMessage()]
    tracker = decoder.tracker
    assert tracker.counts["series_end_outside_series"] == 1
    (anomaly,) = tracker.anomalies
    assert anomaly.series is None
    assert anomaly.message == "series_end received before any header"
    assert list(tracker.series) == []


def test_frame_after_series_end(stream, caplog):
    decoder = StreamDecoder()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _, errors = stream(decoder, ["header", 0, 1, "end", 2, 3])
    assert len(errors) == 2
    assert [e.frame.frame for e in errors] == [2, 3]
    assert "frame 2 arrived outside any series" in str(errors[0])
    tracker = decoder.tracker
    assert tracker.counts["frame_outside_series"] == 2
    outside = anomalies(tracker, "frame_outside_series")
    assert [a.frames for a in outside] == [(2,), (3,)]
    assert outside[0].message == (
        "frame 2 received after series_end of series 0: not attributed to any series"
    )
    assert tracker.series[0].frames_received == 2
    assert decoder.frames_decoded == 2
    # one warning per streak of stray frames, not one per frame
    assert "frame 2 received after series_end of series 0" in caplog.text
    assert "further such frames are counted, not logged" in caplog.text
    assert "frame 3 received after series_end" not in caplog.text


def test_frame_before_any_header(stream):
    decoder = StreamDecoder()
    _, errors = stream(decoder, [4])
    assert len(errors) == 1
    (anomaly,) = decoder.tracker.anomalies
    assert anomaly.message == (
        "frame 4 received before any header: not attributed to any series"
    )


def test_new_header_after_series_end_is_not_an_anomaly(stream):
    decoder = StreamDecoder()
    _, errors = stream(decoder, ["header", 0, "end", "header", 0, 1, "end"])
    assert not errors
    assert not decoder.tracker.counts
    assert [s.frames_received for s in decoder.tracker.series] == [1, 2]


# -- the tracker on its own ----------------------------------------------------
def test_tracker_check_frame_returns_the_series():
    tracker = SeriesTracker()
    assert tracker.check_frame(0) is None
    state = tracker.on_header("a.h5")
    assert state.filename == "a.h5"
    assert tracker.check_frame(0) is state
    tracker.on_series_end()
    assert tracker.check_frame(1) is None


def test_tracker_uses_the_logger_it_is_given(caplog):
    logger = logging.getLogger("tests.protocol.custom")
    tracker = SeriesTracker(logger=logger)
    with caplog.at_level(logging.INFO, logger="tests.protocol.custom"):
        tracker.on_series_end()
    (record,) = caplog.records
    assert record.name == "tests.protocol.custom"


def test_kept_anomalies_are_bounded_but_counts_are_complete():
    logger = logging.getLogger("tests.protocol.silent")
    logger.disabled = True
    try:
        tracker = SeriesTracker(logger=logger)
        tracker.on_header(None)
        tracker.check_frame(0)
        for _ in range(10_005):
            tracker.check_frame(0)
    finally:
        logger.disabled = False
    assert tracker.counts["repeated"] == 10_005
    assert len(tracker.anomalies) == 10_000
    assert len(tracker.series[0].repeated_frames) == 10_005


def test_anomaly_is_immutable():
    anomaly = Anomaly(kind="missing", series=0, frames=(1,), message="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        anomaly.kind = "repeated"  # type: ignore[misc]


def test_tracker_survives_a_huge_frame_number(caplog):
    tracker = SeriesTracker()
    tracker.on_header(None)
    tracker.check_frame(0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert tracker.check_frame(2**63 + 5) is tracker.series[0]
        assert tracker.check_frame(10**30) is tracker.series[0]
    state = tracker.series[0]
    assert state.pending_missing == set()
    assert state.unlisted_missing == 10**30 - 2
    assert state.missing_count == 10**30 - 2
    assert state.highest_frame == 10**30
    assert (
        f"series 0: frames 1-{2**63 + 4} not received before frame {2**63 + 5}"
        in caplog.text
    )
    tracker.finish()
    (missing,) = anomalies(tracker, "missing")
    assert missing.frames == ()
    assert missing.message == (
        f"series 0: {10**30 - 2} frame(s) never received: {10**30 - 2} "
        "(too many to list)"
    )
    assert tracker.counts["missing"] == 10**30 - 2


def test_tracker_handles_a_big_gap_without_listing_it():
    tracker = SeriesTracker(logger=logging.getLogger("tests.protocol.gap"))
    tracker.on_header(None)
    tracker.check_frame(0)
    tracker.check_frame(2**40)
    assert tracker.series[0].highest_frame == 2**40
    assert tracker.series[0].pending_missing == set()  # too big to list


# -- format_ranges -------------------------------------------------------------
@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([], ""),
        ((), ""),
        ([5], "5"),
        ([1, 2, 3, 7], "1-3, 7"),
        ([7, 3, 1, 2, 2], "1-3, 7"),
        ([1, 3], "1, 3"),
        ([0, 1], "0-1"),
        (list(range(1000)), "0-999"),
        ([4, 5, 6, 10, 11, 20], "4-6, 10-11, 20"),
    ],
)
def test_format_ranges(frames, expected):
    assert format_ranges(frames) == expected


def test_format_ranges_elides_long_lists():
    evens = list(range(0, 100, 2))
    assert format_ranges(evens) == "0, 2, 4, 6, 8, 10, ..., 88, 90, 92, 94, 96, 98"
    assert format_ranges(evens, limit=4) == "0, 2, ..., 96, 98"
    assert format_ranges([1, 3, 5], limit=3) == "1, 3, 5"


def test_format_ranges_limit_zero():
    # limit <= 0: just the count (of distinct frames)
    assert format_ranges([1, 3, 5, 7], limit=0) == "4 frames"
    assert format_ranges([1, 2, 3, 3], limit=0) == "3 frames"
    assert format_ranges([9], limit=-5) == "1 frame"
    assert format_ranges([], limit=0) == ""


def test_format_ranges_small_limits():
    assert format_ranges([1, 3, 5, 7], limit=1) == "..., 7"
    assert format_ranges([1, 3, 5, 7], limit=2) == "1, ..., 7"
    assert format_ranges([1, 3, 5, 7], limit=3) == "1, ..., 5, 7"
    assert format_ranges([1, 3, 5, 7], limit=4) == "1, 3, 5, 7"


# -- bounded gap bookkeeping -----------------------------------------------------
def test_garbled_gaps_keep_memory_bounded(caplog):
    """Frames 0, 1e6, 2e6, ...: nothing is materialised per missing frame."""
    import tracemalloc

    from ophyd_xspress.protocol._series import MAX_PENDING_MISSING

    tracker = SeriesTracker()
    tracker.on_header(None)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for k in range(300):
                tracker.check_frame(k * 1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    state = tracker.series[0]
    assert len(state.pending_missing) <= MAX_PENDING_MISSING
    assert state.pending_missing == set()  # every gap was too big to list
    assert state.unlisted_missing == 299 * 999_999
    assert peak < 2 * 1024 * 1024
    assert (
        "series 0: frames 1000001-1999999 not received before frame 2000000 "
        "(999999 frames, too many to list: counted only, 1999998 unlisted so far)"
    ) in caplog.text


def test_listed_gaps_stop_at_the_cap_and_the_rest_are_counted(monkeypatch):
    from ophyd_xspress.protocol import _series

    monkeypatch.setattr(_series, "MAX_PENDING_MISSING", 10)
    tracker = SeriesTracker(logger=logging.getLogger("tests.protocol.cap"))
    tracker.on_header(None)
    for frame in (0, 5, 11, 30, 32):  # gaps: 1-4 (listed), 6-10 (listed), 12-29
        tracker.check_frame(frame)
    state = tracker.series[0]
    assert state.missing_frames == [1, 2, 3, 4, 6, 7, 8, 9, 10, 31]
    assert state.unlisted_missing == 18  # 12-29: did not fit, counted
    # Late frames: listed ones leave the list, unlisted ones the count.
    tracker.check_frame(3)
    tracker.check_frame(20)
    tracker.check_frame(20)  # a repeat of a late frame: not counted twice
    assert state.unlisted_missing == 17
    assert 3 not in state.missing_frames
    assert state.missing_count == 9 + 17
    assert state.repeated_frames == [20]
    assert state.out_of_order_frames == [3, 20]
    tracker.finish()
    (missing,) = anomalies(tracker, "missing")
    assert missing.frames == (1, 2, 4, 6, 7, 8, 9, 10, 31)
    assert missing.message == (
        "series 0: 26 frame(s) never received: 1-2, 4, 6-10, 31 and 17 more "
        "(not listed)"
    )
    assert tracker.counts["missing"] == 26
    assert state.counts["missing"] == 26


def test_malformed_message_is_an_anomaly_kind():
    tracker = SeriesTracker(logger=logging.getLogger("tests.protocol.kind"))
    anomaly = tracker.report("malformed_message", "two parts")
    assert anomaly.kind == "malformed_message"
    assert tracker.counts["malformed_message"] == 1


def test_stray_streak_is_summed_up_at_the_next_header(stream, caplog):
    decoder = StreamDecoder()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, errors = stream(decoder, [5, 6, 7, "header", 0])
    assert [e.frame.frame for e in errors] == [5, 6, 7]
    assert decoder.tracker.counts["frame_outside_series"] == 3
    assert "3 frames outside any series were not attributed (frames 5-7)" in (
        caplog.text
    )
    assert decoder.tracker.series[0].frames_received == 1


@given(st.lists(st.integers(min_value=0, max_value=60), max_size=80))
def test_frame_set_matches_a_set(frames: list[int]) -> None:
    seen = FrameSet()
    reference: set[int] = set()
    for f in frames:
        seen.add(f)
        reference.add(f)
        assert f in seen
        assert len(seen) == len(reference)  # kept as a count, O(1)
    assert all((k in seen) == (k in reference) for k in range(-2, 64))
    intervals = seen.intervals
    # disjoint, sorted, never adjacent (adjacent intervals are merged)
    assert all(a < b for a, b in intervals)
    assert all(b1 < a2 for (_, b1), (a2, _) in itertools.pairwise(intervals))
    seen.clear()
    assert len(seen) == 0
    assert seen.intervals == []


def test_frame_set_in_order_series_is_one_interval() -> None:
    seen = FrameSet()
    for f in range(100_000):
        seen.add(f)
    assert seen.intervals == [(0, 100_000)]


def test_tracker_forgets_old_series_but_keeps_counting() -> None:
    tracker = SeriesTracker()
    for _ in range(MAX_KEPT_SERIES + 10):
        tracker.on_header(None)
        tracker.check_frame(0)
        tracker.check_frame(2)  # frame 1 missing
        tracker.on_series_end()
    assert len(tracker.series) == MAX_KEPT_SERIES
    assert tracker.series[-1].index == MAX_KEPT_SERIES + 9
    assert tracker.series_started == MAX_KEPT_SERIES + 10
    assert tracker.counts["missing"] == MAX_KEPT_SERIES + 10
    # a closed series keeps its counts, not its per-frame bookkeeping
    assert tracker.series[0].seen.intervals == []
    assert tracker.series[0].missing_frames == [1]
