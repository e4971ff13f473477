"""Series bookkeeping: missing, repeated and out-of-order frames, odd structure."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ophyd_xspress.protocol import (
    Anomaly,
    Arrival,
    HeaderMessage,
    SeriesEndMessage,
    SeriesTracker,
    StrayFrame,
    StreamDecoder,
    StreamEncoder,
    format_intervals,
    format_ranges,
)
from ophyd_xspress.protocol._intervals import FrameSet
from ophyd_xspress.protocol._series import (
    MAX_ANOMALY_FRAMES,
    MAX_EXAMPLES,
    MAX_KEPT_SERIES,
)


@pytest.fixture
def stream(make_synthetic_frames):
    """Feed a decoder the given frame numbers (small synthetic frames, multipart).

    ``stream(decoder, [0, 1, "end", "header", 0])``: ints are frames, "header"
    and "end" the JSON packets. Returns the packets in series and the stray
    frames (frames outside any series, returned as :class:`StrayFrame`).
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
                for packet in decoder.feed(message):
                    if isinstance(packet, StrayFrame):
                        errors.append(packet)
                    else:
                        packets.append(packet)
        return packets, errors

    return feed


def anomalies(tracker: SeriesTracker, kind: str) -> list[Anomaly]:
    return [a for a in tracker.anomalies if a.kind == kind]


def told(tracker: SeriesTracker) -> list[tuple[str, str]]:
    """What the caller is handed to report, once: (severity, message)."""
    return [(a.severity, a.message) for a in tracker.drain()]


# -- missing frames ------------------------------------------------------------
def test_missing_frames_are_counted_told_and_listed(stream):
    decoder = StreamDecoder()
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

    # Told when the gap shows (not counted: the gap is counted as missing
    # when the series ends), and once more at series end.
    assert told(tracker) == [
        ("warning", "series 0: frames 2-3 not received before frame 4"),
        ("warning", "series 0: frames 6-8 not received before frame 9"),
        ("warning", "series 0: 5 frame(s) never received: 2-3, 6-8"),
    ]
    assert told(tracker) == []  # each fact is handed out once


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


def test_no_anomalies_for_a_clean_series(stream):
    decoder = StreamDecoder()
    stream(decoder, ["header", 0, 1, 2, 3, "end"])
    assert not decoder.tracker.counts
    assert not decoder.tracker.anomalies
    assert told(decoder.tracker) == []


# -- repeated and out-of-order -------------------------------------------------
def test_repeated_frames(stream):
    decoder = StreamDecoder()
    packets, _ = stream(decoder, ["header", 0, 1, 1, 2, 2, 2, 3, "end"])
    assert len(packets) == 9  # repeated frames are still delivered
    tracker = decoder.tracker
    assert tracker.counts["repeated"] == 3
    assert [a.frames for a in anomalies(tracker, "repeated")] == [(1,), (2,), (2,)]
    assert tracker.series[0].repeated_frames == [1, 2, 2]
    assert tracker.counts["missing"] == 0
    assert [a.arrival.kind for a in packets[1:-1]] == [
        "next",
        "next",
        "repeat",
        "next",
        "repeat",
        "repeat",
        "next",
    ]
    assert told(tracker) == [
        ("warning", "series 0: frame 1 received again"),
        ("warning", "series 0: frame 2 received again"),
        ("warning", "series 0: frame 2 received again"),
    ]


def test_out_of_order_frames(stream):
    decoder = StreamDecoder()
    packets, _ = stream(decoder, ["header", 0, 2, 1, 3, 6, 4, 5, "end"])
    tracker = decoder.tracker
    assert tracker.counts["out_of_order"] == 3
    assert [a.frames for a in anomalies(tracker, "out_of_order")] == [(1,), (4,), (5,)]
    assert tracker.series[0].out_of_order_frames == [1, 4, 5]
    # Late frames are not reported missing at the end.
    assert tracker.counts["missing"] == 0
    assert tracker.series[0].missing_frames == []
    verdicts = [(p.frame, p.arrival.kind, p.arrival.gap) for p in packets[1:-1]]
    assert verdicts == [
        (0, "next", None),
        (2, "next", (1, 2)),
        (1, "late", None),
        (3, "next", None),
        (6, "next", (4, 6)),
        (4, "late", None),
        (5, "late", None),
    ]
    messages = [m for _, m in told(tracker)]
    assert "series 0: frame 1 arrived after frame 2" in messages
    assert "series 0: frame 4 arrived after frame 6" in messages
    assert "series 0: frame 5 arrived after frame 6" in messages


def test_late_frame_after_the_gap_only_leaves_the_rest_missing(stream):
    decoder = StreamDecoder()
    stream(decoder, ["header", 0, 5, 2, "end"])
    (missing,) = anomalies(decoder.tracker, "missing")
    assert missing.frames == (1, 3, 4)


# -- series structure ----------------------------------------------------------
def test_header_before_series_end_starts_a_new_series(stream):
    decoder = StreamDecoder()
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
    assert (
        "warning",
        "series 0: new header before series_end after 2 frames; starting series 1",
    ) in told(tracker)


def test_second_series_end_is_counted_at_info_level(stream):
    decoder = StreamDecoder()
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
    assert told(tracker) == [("info", "series 0: series_end received 2 times")]


def test_series_end_before_any_header():
    decoder = StreamDecoder()
    assert decoder.feed([b'{"htype": "series_end"}']) == [SeriesEndMessage()]
    tracker = decoder.tracker
    assert tracker.counts["series_end_outside_series"] == 1
    (anomaly,) = tracker.anomalies
    assert anomaly.series is None
    assert anomaly.message == "series_end received before any header"
    assert list(tracker.series) == []


def test_frame_after_series_end(stream):
    decoder = StreamDecoder()
    _, errors = stream(decoder, ["header", 0, 1, "end", 2, 3])
    assert len(errors) == 2
    assert [e.frame.frame for e in errors] == [2, 3]
    assert errors[0].where == "after series_end"
    # its header was missed: it and the next frames form a headless series
    # (headless series are numbered -1, -2, ...: announced ones keep 0, 1, ...)
    assert errors[0].frame.arrival == Arrival("next", -1, headless=True)
    assert errors[1].frame.arrival == Arrival("next", -1, headless=True)
    tracker = decoder.tracker
    assert not tracker.series[1].missing_count  # frames before it: not ours
    assert tracker.counts["frame_outside_series"] == 2
    outside = anomalies(tracker, "frame_outside_series")
    assert [a.frames for a in outside] == [(2,), (3,)]
    assert outside[0].message == (
        "frame 2 received after series_end of series 0: the header of its series "
        "was missed (this consumer joined after Arm, or another consumer of a PUSH "
        "stream took it); the frames up to the next header are kept as a series of "
        "their own (further such frames are counted, not logged)"
    )
    assert tracker.series[0].frames_received == 2
    assert decoder.frames_decoded == 2
    # one warning per streak of stray frames, the rest at debug level
    assert [severity for severity, _ in told(tracker)] == ["warning", "debug"]


def test_frame_before_any_header(stream):
    decoder = StreamDecoder()
    _, errors = stream(decoder, [4])
    assert len(errors) == 1
    (anomaly,) = decoder.tracker.anomalies
    assert anomaly.message == (
        "frame 4 received before any header: the header of its series was missed "
        "(this consumer joined after Arm, or another consumer of a PUSH stream "
        "took it); the frames up to the next header are kept as a series of their "
        "own (further such frames are counted, not logged)"
    )
    assert errors[0].where == "before any header"


def test_new_header_after_series_end_is_not_an_anomaly(stream):
    decoder = StreamDecoder()
    _, errors = stream(decoder, ["header", 0, "end", "header", 0, 1, "end"])
    assert not errors
    assert not decoder.tracker.counts
    assert [s.frames_received for s in decoder.tracker.series] == [1, 2]


# -- the tracker on its own ----------------------------------------------------
def test_tracker_verdicts_name_the_series():
    tracker = SeriesTracker()
    assert tracker.track(7) == Arrival("next", -1, headless=True)
    assert tracker.track(9) == Arrival("next", -1, gap=(8, 9), headless=True)
    state = tracker.on_header("a.h5")
    assert state.filename == "a.h5"
    assert tracker.track(0) == Arrival("next", 0)
    assert tracker.track(3) == Arrival("next", 0, gap=(1, 3))
    assert tracker.track(3) == Arrival("repeat", 0)
    assert tracker.track(2) == Arrival("late", 0)
    tracker.on_series_end()
    assert tracker.track(1) == Arrival("next", -2, headless=True)
    # the headless series 0 counted only the frame missing after its first
    assert tracker.counts["missing"] == 1 + 1


def test_kept_anomalies_are_bounded_but_counts_are_complete():
    tracker = SeriesTracker()
    tracker.on_header(None)
    tracker.track(0)
    for _ in range(10_005):
        tracker.track(0)
    assert tracker.counts["repeated"] == 10_005
    assert tracker.series[0].counts["repeated"] == 10_005
    assert len(tracker.anomalies) == 10_000
    assert len(tracker.drain()) == 10_000  # the queue for the caller too
    assert len(tracker.series[0].repeated_frames) == MAX_EXAMPLES


def test_anomaly_is_immutable():
    anomaly = Anomaly(kind="missing", series=0, frames=(1,), message="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        anomaly.kind = "repeated"  # type: ignore[misc]


def test_tracker_survives_a_huge_frame_number():
    tracker = SeriesTracker()
    tracker.on_header(None)
    tracker.track(0)
    assert tracker.track(2**63 + 5).series == 0
    assert tracker.track(10**30).series == 0
    state = tracker.series[0]
    assert state.missing_count == 10**30 - 2
    assert state.highest_frame == 10**30
    notices = [text for _, text in told(tracker)]
    assert notices[0] == (
        f"series 0: frames 1-{2**63 + 4} not received before frame {2**63 + 5}; a "
        "gap this large usually means this consumer fell behind and the "
        "publisher's high-water mark dropped frames"
    )
    tracker.finish()
    (missing,) = anomalies(tracker, "missing")
    assert len(missing.frames) == MAX_ANOMALY_FRAMES  # examples, not the gap
    assert missing.frames[:2] == (1, 2)
    assert missing.count == 10**30 - 2
    assert missing.message == (
        f"series 0: {10**30 - 2} frame(s) never received: 1-{2**63 + 4}, "
        f"{2**63 + 6}-{10**30 - 1}"
    )
    assert tracker.counts["missing"] == 10**30 - 2


def test_tracker_handles_a_big_gap_without_listing_it():
    tracker = SeriesTracker()
    tracker.on_header(None)
    tracker.track(0)
    assert tracker.track(2**40) == Arrival("next", 0, gap=(1, 2**40))
    state = tracker.series[0]
    assert state.highest_frame == 2**40
    assert state.seen.intervals == [(0, 1), (2**40, 2**40 + 1)]
    assert state.missing_count == 2**40 - 1
    assert len(state.missing_frames) == MAX_EXAMPLES


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
def test_garbled_gaps_keep_memory_bounded():
    """Frames 0, 1e6, 2e6, ...: nothing is materialised per missing frame."""
    import tracemalloc

    tracker = SeriesTracker()
    tracker.on_header(None)
    tracemalloc.start()
    try:
        for k in range(300):
            tracker.track(k * 1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    state = tracker.series[0]
    assert state.missing_count == 299 * 999_999
    assert len(state.seen.intervals) == 300
    assert peak < 2 * 1024 * 1024
    told_now = told(tracker)
    assert (
        "warning",
        "series 0: frames 1000001-1999999 not received before frame 2000000; a gap "
        "this large usually means this consumer fell behind and the publisher's "
        "high-water mark dropped frames",
    ) in told_now
    # a regular gap this large is not another consumer of the stream
    assert tracker.counts["shared_stream"] == 0


def test_many_gaps_are_counted_exactly_and_listed_in_short():
    tracker = SeriesTracker()
    tracker.on_header(None)
    for frame in (0, 5, 11, 30, 32):  # gaps: 1-4, 6-10, 12-29, 31
        tracker.track(frame)
    state = tracker.series[0]
    assert state.missing_count == 4 + 5 + 18 + 1
    assert state.missing_intervals() == [(1, 5), (6, 11), (12, 30), (31, 32)]
    # late frames leave the gaps; a repeat of a late frame is not counted twice
    tracker.track(3)
    tracker.track(20)
    tracker.track(20)
    assert state.missing_count == 26
    assert state.repeated_frames == [20]
    assert state.out_of_order_frames == [3, 20]
    tracker.finish()
    (missing,) = anomalies(tracker, "missing")
    assert missing.count == 26
    assert missing.message == (
        "series 0: 26 frame(s) never received: 1-2, 4, 6-10, 12-19, 21-29, 31"
    )
    assert tracker.counts["missing"] == 26
    assert state.counts["missing"] == 26
    assert state.missing_frames[:4] == [1, 2, 4, 6]


def test_malformed_message_is_an_anomaly_kind():
    tracker = SeriesTracker()
    anomaly = tracker.report("malformed_message", "two parts")
    assert anomaly.kind == "malformed_message"
    assert tracker.counts["malformed_message"] == 1
    assert tracker.drain() == [anomaly]


def test_stray_streak_is_summed_up_at_the_next_header(stream):
    decoder = StreamDecoder()
    _, errors = stream(decoder, [5, 6, 7, "header", 0])
    assert [e.frame.frame for e in errors] == [5, 6, 7]
    assert decoder.tracker.counts["frame_outside_series"] == 3
    assert told(decoder.tracker)[-1] == (
        "warning",
        "3 frames arrived outside any announced series (frames 5-7)",
    )
    assert decoder.tracker.series[0].frames_received == 3  # headless: 5-7
    assert decoder.tracker.series[1].frames_received == 1


def test_format_intervals_never_lists_frames():
    assert format_intervals([(1, 3), (7, 8)]) == "1-2, 7"
    assert format_intervals([(0, 2**62)]) == f"0-{2**62 - 1}"
    many = [(k, k + 1) for k in range(0, 100, 2)]
    assert format_intervals(many, limit=4) == "0, 2, ..., 96, 98"


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
        tracker.track(0)
        tracker.track(2)  # frame 1 missing
        tracker.on_series_end()
    assert len(tracker.series) == MAX_KEPT_SERIES
    assert tracker.series[-1].index == MAX_KEPT_SERIES + 9
    assert tracker.series_started == MAX_KEPT_SERIES + 10
    assert tracker.counts["missing"] == MAX_KEPT_SERIES + 10
    # a closed series keeps its counts, not its per-frame bookkeeping
    assert tracker.series[0].seen.intervals == []
    assert tracker.series[0].missing_frames == [1]


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=50), st.integers(0, 8)),
        max_size=30,
    )
)
def test_frame_set_add_range_matches_a_set(ranges: list[tuple[int, int]]) -> None:
    seen = FrameSet()
    reference: set[int] = set()
    for start, count in ranges:
        seen.add_range(start, start + count)
        reference.update(range(start, start + count))
        assert len(seen) == len(reference)
    assert all((k in seen) == (k in reference) for k in range(-1, 62))
    intervals = seen.intervals
    assert all(a < b for a, b in intervals)
    assert all(b1 < a2 for (_, b1), (a2, _) in itertools.pairwise(intervals))


def test_every_other_frame_missing_is_told_as_a_shared_push_stream():
    """Two PULL consumers of one PUSH stream: each gets every other message.
    The one that got the header sees frames 1, 3, 5, ...; told once, then its
    gaps are detail."""
    tracker = SeriesTracker()
    tracker.on_header(None)
    for frame in (1, 3, 5, 7, 9):
        tracker.track(frame)
    notices = told(tracker)
    shared = [text for severity, text in notices if "another consumer" in text]
    assert shared == [
        "series 0: only every 2nd frame arrives (frame 4 missing before frame 5, "
        "and the same before the previous ones): another consumer of this PUSH "
        "stream is taking the others (PULL sockets share a PUSH stream's messages "
        "round-robin), or the publisher drops them"
    ]
    # frame 1 and 3 follow a gap; from frame 5 on the pattern is known
    assert [severity for severity, text in notices if "not received" in text] == [
        "warning",
        "warning",
        "debug",
        "debug",
        "debug",
    ]
    assert tracker.counts["shared_stream"] == 1


def test_the_other_consumer_sees_a_headless_series_with_the_same_pattern():
    tracker = SeriesTracker()
    for frame in (0, 2, 4, 6):  # the header went to the other consumer
        arrival = tracker.track(frame)
        assert arrival.headless
    assert tracker.counts["frame_outside_series"] == 4
    assert tracker.counts["shared_stream"] == 1
    assert tracker.series[0].missing_count == 3
