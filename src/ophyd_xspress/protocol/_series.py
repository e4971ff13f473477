"""Series bookkeeping: which frames arrived, which did not, and what was odd.

:class:`SeriesTracker` is fed the packets a :class:`StreamDecoder` assembles and
records, per series, the frames received and every anomaly: missing, repeated
and out-of-order frame numbers, a ``header`` before ``series_end``, a second
``series_end``, packets outside any series and resynchronisations of the old
framing. Each anomaly is counted and logged once, with its frame numbers.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "Anomaly",
    "AnomalyKind",
    "FrameSet",
    "SeriesState",
    "SeriesTracker",
    "format_ranges",
]

log = logging.getLogger("ophyd_xspress.protocol")

AnomalyKind = Literal[
    "missing",
    "repeated",
    "out_of_order",
    "header_before_series_end",
    "duplicate_series_end",
    "series_end_outside_series",
    "frame_outside_series",
    "resync",
    "bad_frame",
    "malformed_message",
]

#: Anomalies kept in detail per tracker (counts are always complete).
MAX_KEPT_ANOMALIES: Final = 10_000
#: Missing frame numbers listed per series; beyond, gaps are only counted (a
#: garbled frame number must not make the tracker materialise a huge range).
MAX_PENDING_MISSING: Final = 100_000
#: Finished series kept for inspection by a long-lived tracker; older ones are
#: forgotten (their anomalies stay counted in :attr:`SeriesTracker.counts`).
MAX_KEPT_SERIES: Final = 256


def _plural(n: int) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"


def _span(start: int, stop: int) -> str:
    """The inclusive range ``start..stop`` as ``"a"`` or ``"a-b"``."""
    return f"{start}" if start == stop else f"{start}-{stop}"


def format_ranges(frames: list[int] | tuple[int, ...], limit: int = 12) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``; long lists are elided.

    At most ``limit`` ranges are shown (the first and last halves, ``...``
    between); ``limit <= 0`` gives just the count, e.g. ``"4 frames"``.
    """
    if not frames:
        return ""
    values = sorted(set(frames))
    if limit <= 0:
        return _plural(len(values))
    parts: list[str] = []
    start = prev = values[0]
    for v in values[1:]:
        if v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = v
    parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    if len(parts) > limit:
        head = limit // 2
        tail = limit - head
        parts = [*parts[:head], "...", *parts[-tail:]]
    return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something unexpected in the stream, with the facts."""

    kind: AnomalyKind
    series: int | None
    frames: tuple[int, ...]
    message: str


class FrameSet:
    """The frame numbers received, as disjoint half-open intervals.

    Memory grows with the number of gaps, not of frames: an in-order series of
    a million frames is one interval. Adding the next frame in order is O(1);
    any other add or lookup is a binary search; ``len()`` is O(1).
    """

    __slots__ = ("_count", "_starts", "_stops")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []
        self._count = 0

    def __contains__(self, frame: int) -> bool:
        i = bisect_right(self._starts, frame) - 1
        return i >= 0 and frame < self._stops[i]

    def __len__(self) -> int:
        return self._count

    @property
    def intervals(self) -> list[tuple[int, int]]:
        """The received frames as ``(start, stop)`` half-open intervals."""
        return list(zip(self._starts, self._stops, strict=True))

    def add(self, frame: int) -> None:
        starts, stops = self._starts, self._stops
        if stops and stops[-1] == frame:  # the next frame in order
            stops[-1] = frame + 1
            self._count += 1
            return
        i = bisect_right(starts, frame) - 1
        if i >= 0 and frame < stops[i]:
            return
        self._count += 1
        joins_left = i >= 0 and stops[i] == frame
        joins_right = i + 1 < len(starts) and starts[i + 1] == frame + 1
        if joins_left and joins_right:
            stops[i] = stops[i + 1]
            del starts[i + 1], stops[i + 1]
        elif joins_left:
            stops[i] = frame + 1
        elif joins_right:
            starts[i + 1] = frame
        else:
            starts.insert(i + 1, frame)
            stops.insert(i + 1, frame + 1)

    def prefix(self) -> int:
        """``n`` such that frames ``0 .. n-1`` were all received."""
        if self._starts and self._starts[0] <= 0:
            return max(0, self._stops[0])
        return 0

    def gaps(self, stop: int, limit: int | None = None) -> list[int]:
        """The frames in ``0 .. stop-1`` not received (at most ``limit``)."""
        out: list[int] = []
        expect = 0
        for a, b in zip(self._starts, self._stops, strict=True):
            if a >= stop:
                break
            if a > expect:
                out.extend(range(expect, a))
                if limit is not None and len(out) >= limit:
                    return out[:limit]
            expect = max(expect, b)
        if expect < stop:
            top = stop if limit is None else min(stop, expect + limit - len(out))
            out.extend(range(expect, top))
        return out if limit is None else out[:limit]

    def clear(self) -> None:
        self._starts.clear()
        self._stops.clear()
        self._count = 0


@dataclass
class SeriesState:
    """What one series (header to series_end) delivered."""

    index: int
    filename: str | None = None
    frames_received: int = 0
    highest_frame: int = -1
    ended: bool = False
    closed: bool = False
    end_count: int = 0
    #: Frame numbers received (cleared when the series closes: later frames
    #: are strays, never checked against it).
    seen: FrameSet = field(default_factory=FrameSet)
    #: Missing frame numbers, listed (at most :data:`MAX_PENDING_MISSING`).
    pending_missing: set[int] = field(default_factory=set)
    #: Missing frames beyond the listed ones: counted, not listed.
    unlisted_missing: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    repeated_frames: list[int] = field(default_factory=list)
    out_of_order_frames: list[int] = field(default_factory=list)

    @property
    def missing_frames(self) -> list[int]:
        """The listed missing frames (see :attr:`missing_count` for all)."""
        return sorted(self.pending_missing)

    @property
    def missing_count(self) -> int:
        """How many frames are missing so far, listed or not."""
        return len(self.pending_missing) + self.unlisted_missing


class SeriesTracker:
    """Checks frame numbers and series structure; counts and logs anomalies."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log
        #: The most recent series (at most :data:`MAX_KEPT_SERIES`).
        self.series: deque[SeriesState] = deque(maxlen=MAX_KEPT_SERIES)
        #: How many series have started (the next series' index).
        self.series_started = 0
        self.current: SeriesState | None = None
        self.counts: Counter[str] = Counter()
        self._stray_streak: list[int] = []
        self._stray_count = 0
        self.anomalies: deque[Anomaly] = deque(maxlen=MAX_KEPT_ANOMALIES)

    # -- reporting -----------------------------------------------------------
    def report(
        self,
        kind: AnomalyKind,
        message: str,
        frames: tuple[int, ...] = (),
        series: SeriesState | None = None,
        level: int = logging.WARNING,
        count: int | None = None,
        note: str = "",
    ) -> Anomaly:
        """Record, count and log one anomaly.

        ``count`` is how much it adds to the counts (default: the number of
        ``frames`` for ``missing``, else 1).
        """
        target = series if series is not None else self.current
        anomaly = Anomaly(
            kind=kind,
            series=target.index if target is not None else None,
            frames=frames,
            message=message,
        )
        if count is None:
            count = max(1, len(frames)) if kind == "missing" else 1
        self.counts[kind] += count
        if target is not None:
            target.counts[kind] += count
        self.anomalies.append(anomaly)
        self.log.log(level, "%s%s", message, note)
        return anomaly

    # -- events --------------------------------------------------------------
    def _end_stray_streak(self) -> None:
        streak, self._stray_streak = self._stray_streak, []
        count, self._stray_count = self._stray_count, 0
        if count > 1:
            self.log.warning(
                "%s outside any series were not attributed (frames %s)",
                _plural(count),
                format_ranges(streak),
            )

    def on_header(self, filename: str | None) -> SeriesState:
        self._end_stray_streak()
        previous = self.current
        if previous is not None and not previous.ended:
            self._close(previous)
            self.report(
                "header_before_series_end",
                f"series {previous.index}: new header before series_end after "
                f"{previous.frames_received} frames; starting series "
                f"{self.series_started}",
                series=previous,
            )
        state = SeriesState(index=self.series_started, filename=filename)
        self.series_started += 1
        self.series.append(state)
        self.current = state
        return state

    def on_series_end(self) -> None:
        cur = self.current
        if cur is None:
            self.report(
                "series_end_outside_series", "series_end received before any header"
            )
            return
        cur.end_count += 1
        if cur.ended:
            # The real device sends a second series_end after a Stop.
            self.report(
                "duplicate_series_end",
                f"series {cur.index}: series_end received {cur.end_count} times",
                series=cur,
                level=logging.INFO,
            )
            return
        cur.ended = True
        self._close(cur)

    def check_frame(self, frame: int) -> SeriesState | None:
        """Record frame number ``frame``; return its series, or None if stray."""
        cur = self.current
        if cur is None or cur.ended or cur.closed:
            where = (
                "before any header"
                if cur is None
                else f"after series_end of series {cur.index}"
            )
            # Log the first stray of a streak; the rest are counted and summed
            # up when the next header arrives (a monitor joining a running
            # stream would otherwise log every frame).
            self._stray_count += 1
            if len(self._stray_streak) < 10_000:
                self._stray_streak.append(frame)
            first = self._stray_count == 1
            self.report(
                "frame_outside_series",
                f"frame {frame} received {where}: not attributed to any series",
                note=" (further such frames are counted, not logged)" if first else "",
                frames=(frame,),
                level=logging.WARNING if first else logging.DEBUG,
            )
            return None
        if frame in cur.seen:
            cur.repeated_frames.append(frame)
            self.report(
                "repeated",
                f"series {cur.index}: frame {frame} received again",
                frames=(frame,),
            )
        elif frame < cur.highest_frame:
            # Every frame below the highest that was not seen is missing: listed,
            # or one of the unlisted ones.
            if frame in cur.pending_missing:
                cur.pending_missing.discard(frame)
            elif cur.unlisted_missing > 0:
                cur.unlisted_missing -= 1
            cur.out_of_order_frames.append(frame)
            self.report(
                "out_of_order",
                f"series {cur.index}: frame {frame} arrived after frame "
                f"{cur.highest_frame}",
                frames=(frame,),
            )
        elif frame > cur.highest_frame + 1:
            # Only ints here, never range(): the gap can exceed sys.maxsize.
            start, stop = cur.highest_frame + 1, frame - 1
            size = stop - start + 1
            room = MAX_PENDING_MISSING - len(cur.pending_missing)
            if size <= room:
                cur.pending_missing.update(range(start, frame))
                note = ""
            else:
                cur.unlisted_missing += size
                note = (
                    f" ({_plural(size)}, too many to list: counted only, "
                    f"{cur.unlisted_missing} unlisted so far)"
                )
            self.log.warning(
                "series %d: frames %s not received before frame %d%s",
                cur.index,
                _span(start, stop),
                frame,
                note,
            )
        cur.seen.add(frame)
        cur.highest_frame = max(cur.highest_frame, frame)
        cur.frames_received += 1
        return cur

    def _close(self, state: SeriesState) -> None:
        if state.closed:
            return
        state.closed = True
        state.seen.clear()
        total = state.missing_count
        if total:
            frames = tuple(sorted(state.pending_missing))
            listed = format_ranges(frames)
            if state.unlisted_missing:
                listed = (
                    f"{listed} and {state.unlisted_missing} more (not listed)"
                    if listed
                    else f"{state.unlisted_missing} (too many to list)"
                )
            self.report(
                "missing",
                f"series {state.index}: {total} frame(s) never received: {listed}",
                frames=frames,
                series=state,
                count=total,
            )

    def finish(self) -> None:
        """Close the open series (end of a capture or of a run) and report gaps."""
        self._end_stray_streak()
        if self.current is not None:
            self._close(self.current)
