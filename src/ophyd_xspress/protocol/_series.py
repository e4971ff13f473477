"""Series bookkeeping: which frames of each series arrived, and what was odd.

Theory of operation
-------------------
A *series* is what one ``Arm`` of the detector sends: ``header``, frames
numbered from 0, ``series_end``. :class:`SeriesTracker` is told every packet the
decoder assembles (:meth:`~SeriesTracker.on_header`,
:meth:`~SeriesTracker.track`, :meth:`~SeriesTracker.on_series_end`) and owns
every per-series fact:

* each frame gets an :class:`Arrival` verdict: ``next`` (beyond every frame so
  far; ``gap`` names the frames it skipped), ``late`` (fills an earlier gap),
  ``repeat`` (its number was seen in this series) or ``stray`` (no series is
  open: before any header, or after ``series_end``);
* every anomaly becomes one :class:`Anomaly` record, counted in
  :attr:`SeriesTracker.counts` and queued for the caller, who takes them with
  :meth:`SeriesTracker.drain` and reports each one once (the transport logs
  them, ``inspect`` prints them). Nothing here logs or does I/O.

Frame numbers are kept as intervals (:class:`FrameSet`): memory grows with the
number of gaps, never with the size of one. A frame numbered 2**31 after frame
0 is one gap of 2**31 - 1 frames, counted exactly and listed by its bounds.
Lists of frame numbers kept for people (in anomalies, per series) are bounded
examples; counts are always complete.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final, Literal

from ._intervals import (
    FrameSet,
    examples,
    format_intervals,
    format_ranges,
    ordinal,
    plural,
    span,
)

__all__ = [
    "Anomaly",
    "AnomalyKind",
    "Arrival",
    "SeriesState",
    "SeriesTracker",
    "Severity",
]

AnomalyKind = Literal[
    "missing",
    "gap",
    "shared_stream",
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
#: How loudly a caller should report an anomaly.
Severity = Literal["warning", "info", "debug"]

#: Anomalies kept in detail per tracker (counts are always complete).
MAX_KEPT_ANOMALIES: Final = 10_000
#: Frame numbers kept as examples per series and kind, and per run.
MAX_EXAMPLES: Final = 1_000
#: Frame numbers one anomaly lists (up to MAX_KEPT_ANOMALIES are kept).
MAX_ANOMALY_FRAMES: Final = 100
#: Finished series kept for inspection by a long-lived tracker; older ones are
#: forgotten (their anomalies stay counted in :attr:`SeriesTracker.counts`).
MAX_KEPT_SERIES: Final = 256
#: A gap of at least this many frames is most likely the publisher's
#: high-water mark (a consumer that fell behind), and is told so.
LARGE_GAP: Final = 100
#: Consecutive gaps of one size that make a pattern: every (k+1)-th frame
#: arriving is what sharing a PUSH stream with k other consumers looks like
#: (for a few consumers: a regular gap of thousands is something else).
SHARED_STREAK: Final = 3
SHARED_MAX_GAP: Final = 16


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something unexpected in the stream, with the facts.

    ``frames`` lists examples (at most :data:`MAX_ANOMALY_FRAMES`); ``count`` is how
    many frames (or events) it is about, and what it adds to the counts.
    """

    kind: AnomalyKind
    series: int | None
    frames: tuple[int, ...]
    message: str
    count: int = 1
    severity: Severity = "warning"


@dataclass(frozen=True, slots=True)
class Arrival:
    """The tracker's verdict on one frame.

    ``series`` is the index of the series it belongs to (None for a stray);
    ``gap`` the half-open interval of frame numbers skipped just before a
    ``next`` frame, if any. ``headless``: the series' header was never seen
    (the frame arrived before any header or after a ``series_end``); such
    frames form a series of their own until the next header.
    """

    kind: Literal["next", "late", "repeat"]
    series: int
    gap: tuple[int, int] | None = None
    headless: bool = False


def _keep(examples_list: list[int], frame: int) -> None:
    if len(examples_list) < MAX_EXAMPLES:
        examples_list.append(frame)


@dataclass
class SeriesState:
    """What one series (header to series_end) delivered."""

    index: int
    filename: str | None = None
    #: True for frames whose header was missed (see :class:`Arrival`), and
    #: where the first of them came ("before any header", "after series_end").
    headless: bool = False
    where: str = ""
    #: The lowest frame number that can be missing: 0, or for a headless
    #: series the first frame seen (earlier ones came before we listened).
    origin: int = 0
    frames_received: int = 0
    highest_frame: int = -1
    ended: bool = False
    closed: bool = False
    end_count: int = 0
    #: Frame numbers received (cleared when the series closes: later frames
    #: are strays, never checked against it).
    seen: FrameSet = field(default_factory=FrameSet)
    counts: Counter[str] = field(default_factory=Counter)
    #: Examples (at most :data:`MAX_EXAMPLES` each; ``counts`` has them all).
    repeated_frames: list[int] = field(default_factory=list)
    out_of_order_frames: list[int] = field(default_factory=list)
    #: Missing frames when the series closed: examples and the exact count.
    _closed_missing: tuple[list[int], int] | None = None
    #: Consecutive gaps of the same size (size, streak), and whether the
    #: pattern was told.
    _gaps: tuple[int, int] = (0, 0)
    shared_told: bool = False
    #: The verdict on a frame that comes next in order (shared: immutable).
    in_order: Arrival = field(init=False)

    def __post_init__(self) -> None:
        self.in_order = Arrival("next", self.index, None, self.headless)

    @property
    def missing_count(self) -> int:
        """How many frames below the highest one are missing (so far)."""
        if self._closed_missing is not None:
            return self._closed_missing[1]
        return max(0, self.highest_frame + 1 - self.origin - len(self.seen))

    @property
    def missing_frames(self) -> list[int]:
        """The missing frames (the first :data:`MAX_EXAMPLES` of them)."""
        if self._closed_missing is not None:
            return list(self._closed_missing[0])
        return examples(self.missing_intervals(), MAX_EXAMPLES)

    def missing_intervals(self) -> list[tuple[int, int]]:
        """Half-open intervals of missing frames (open series only)."""
        return list(self.seen.gap_intervals(self.highest_frame + 1, self.origin))

    def note_gap(self, size: int) -> bool:
        """Record a gap of ``size`` frames before a ``next`` frame (0: none);
        True when it completes a regular pattern not told yet."""
        last, streak = self._gaps
        if size > SHARED_MAX_GAP:
            size = 0
        streak = streak + 1 if size and size == last else (1 if size else 0)
        self._gaps = (size, streak)
        return streak >= SHARED_STREAK and not self.shared_told


class SeriesTracker:
    """Per-series frame bookkeeping; returns verdicts and queues anomalies."""

    def __init__(self) -> None:
        #: The most recent series (at most :data:`MAX_KEPT_SERIES`).
        self.series: deque[SeriesState] = deque(maxlen=MAX_KEPT_SERIES)
        #: How many series have started (the next series' index).
        self.series_started = 0
        #: How many headless series (header missed) have started; they are
        #: numbered -1, -2, ... so that announced series keep 0, 1, 2 ...
        self.headless_started = 0
        self.current: SeriesState | None = None
        self.counts: Counter[str] = Counter()
        #: The most recent anomalies (at most :data:`MAX_KEPT_ANOMALIES`).
        self.anomalies: deque[Anomaly] = deque(maxlen=MAX_KEPT_ANOMALIES)
        self._fresh: deque[Anomaly] = deque(maxlen=MAX_KEPT_ANOMALIES)
        self._stray_examples: list[int] = []
        self._stray_count = 0

    # -- reporting -----------------------------------------------------------
    def report(
        self,
        kind: AnomalyKind,
        message: str,
        frames: tuple[int, ...] = (),
        series: SeriesState | None = None,
        *,
        count: int | None = None,
        severity: Severity = "warning",
    ) -> Anomaly:
        """Record and count one anomaly and queue it for :meth:`drain`.

        ``count`` is how much it adds to the counts (default: the number of
        ``frames`` for ``missing``, else 1; 0 for a notice that repeats facts
        counted elsewhere, such as a gap later counted as missing).
        """
        target = series if series is not None else self.current
        if count is None:
            count = max(1, len(frames)) if kind == "missing" else 1
        anomaly = Anomaly(
            kind=kind,
            series=target.index if target is not None else None,
            frames=frames[:MAX_ANOMALY_FRAMES],
            message=message,
            count=count,
            severity=severity,
        )
        if count:
            self.counts[kind] += count
            if target is not None:
                target.counts[kind] += count
        self.anomalies.append(anomaly)
        self._fresh.append(anomaly)
        return anomaly

    def drain(self) -> list[Anomaly]:
        """The anomalies recorded since the last call (each returned once)."""
        if not self._fresh:
            return []
        fresh = list(self._fresh)
        self._fresh.clear()
        return fresh

    # -- events --------------------------------------------------------------
    def _end_stray_streak(self) -> None:
        count, self._stray_count = self._stray_count, 0
        seen, self._stray_examples = self._stray_examples, []
        if count > 1:
            self.report(
                "frame_outside_series",
                f"{plural(count)} arrived outside any announced series "
                f"(frames {format_ranges(seen)})",
                count=0,
            )

    def on_header(self, filename: str | None) -> SeriesState:
        self._end_stray_streak()
        previous = self.current
        if previous is not None and previous.headless:
            self._close(previous)  # the tail of a series we joined late
        elif previous is not None and not previous.ended:
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
                severity="info",
            )
            return
        cur.ended = True
        self._close(cur)

    def track(self, frame: int) -> Arrival:
        """Record frame number ``frame`` and return the verdict on it."""
        cur = self.current
        if (
            cur is not None
            and frame == cur.highest_frame + 1
            and not (cur.closed or cur.headless)
        ):
            # the next frame in order (almost every frame): nothing to report
            cur.seen.add(frame)
            cur.highest_frame = frame
            cur.frames_received += 1
            cur._gaps = (0, 0)
            return cur.in_order
        headless = cur is None or cur.closed or cur.headless
        if cur is None or cur.closed:
            cur = self._open_headless(frame, cur)
        elif cur.headless:
            self._stray(frame, first=False)
        kind: Literal["next", "late", "repeat"] = "next"
        gap: tuple[int, int] | None = None
        if frame in cur.seen:
            kind = "repeat"
            _keep(cur.repeated_frames, frame)
            self.report(
                "repeated",
                f"series {cur.index}: frame {frame} received again",
                frames=(frame,),
            )
        elif frame < cur.highest_frame:
            kind = "late"
            _keep(cur.out_of_order_frames, frame)
            self.report(
                "out_of_order",
                f"series {cur.index}: frame {frame} arrived after frame "
                f"{cur.highest_frame}",
                frames=(frame,),
            )
        elif frame > cur.highest_frame + 1:
            gap = (cur.highest_frame + 1, frame)
            self._gap(cur, gap)
        else:
            cur.note_gap(0)
        if kind != "repeat":
            cur.seen.add(frame)
            cur.highest_frame = max(cur.highest_frame, frame)
        cur.frames_received += 1
        return Arrival(kind, cur.index, gap, headless)

    def _gap(self, cur: SeriesState, gap: tuple[int, int]) -> None:
        """Tell a gap before a ``next`` frame; a regular pattern of gaps (every
        other frame missing) once, as what it most likely is."""
        size = gap[1] - gap[0]
        if cur.note_gap(size):
            cur.shared_told = True
            self.report(
                "shared_stream",
                f"series {cur.index}: only every {ordinal(size + 1)} frame arrives "
                f"({'frame' if size == 1 else 'frames'} {span(gap[0], gap[1] - 1)} "
                f"missing before frame {gap[1]}, and the same before the previous "
                "ones): another consumer of this "
                "PUSH stream is taking the others (PULL sockets share a PUSH "
                "stream's messages round-robin), or the publisher drops them",
                frames=(gap[1],),
            )
        what = "frame" if size == 1 else "frames"
        note = ""
        if size >= LARGE_GAP:
            note = (
                "; a gap this large usually means this consumer fell behind and "
                "the publisher's high-water mark dropped frames"
            )
        self.report(
            "gap",
            f"series {cur.index}: {what} {span(gap[0], gap[1] - 1)} not received "
            f"before frame {gap[1]}{note}",
            frames=tuple(examples([gap], MAX_ANOMALY_FRAMES)),
            count=0,
            # once the pattern is told, its every gap is detail
            severity="debug" if cur.shared_told else "warning",
        )

    def _open_headless(self, frame: int, previous: SeriesState | None) -> SeriesState:
        """A frame outside any announced series: its header was missed. It and
        the frames up to the next header form a series of their own."""
        where = "before any header" if previous is None else "after series_end"
        self.headless_started += 1
        state = SeriesState(
            index=-self.headless_started,
            filename=None,
            headless=True,
            where=where,
            origin=frame,
            highest_frame=frame - 1,
        )
        self.series.append(state)
        self.current = state
        self._stray(
            frame,
            first=True,
            text=(
                f"frame {frame} received {where}"
                + (f" of series {previous.index}" if previous is not None else "")
                + ": the header of its series was "
                "missed (this consumer joined after Arm, or another consumer of "
                "a PUSH stream took it); the frames up to the next header are kept "
                "as a series of their own"
            ),
        )
        return state

    def _stray(self, frame: int, *, first: bool, text: str = "") -> None:
        # The first frame of a headless series is reported at warning level,
        # the rest at debug level, summed up when the next header arrives (a
        # monitor joining a running stream would otherwise report every frame).
        self._stray_count += 1
        _keep(self._stray_examples, frame)
        if first:
            text += " (further such frames are counted, not logged)"
        else:
            text = f"frame {frame} received outside any announced series"
        self.report(
            "frame_outside_series",
            text,
            frames=(frame,),
            severity="warning" if first else "debug",
        )

    def _close(self, state: SeriesState) -> None:
        if state.closed:
            return
        total = state.missing_count
        listed = state.missing_frames
        intervals = state.missing_intervals() if total else []
        state._closed_missing = (listed, total)
        state.closed = True
        state.seen.clear()
        if total:
            self.report(
                "missing",
                f"series {state.index}: {total} frame(s) never received: "
                f"{format_intervals(intervals)}",
                frames=tuple(listed),
                series=state,
                count=total,
            )

    def finish(self) -> None:
        """Close the open series (end of a capture or of a run) and report gaps."""
        self._end_stray_streak()
        if self.current is not None:
            self._close(self.current)
