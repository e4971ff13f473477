"""Which row of a run each frame goes to: the run model (sans-IO).

Theory of operation
-------------------
A *run* is what one acquisition of the detector object expects: one step-scan
point, or one fly scan of ``expected`` frames. Its rows are numbered from 0;
row ``i`` of a run is where frame ``i`` of the acquisition is stored (the
caller adds any offset its sink needs). The decoder's
:class:`~ophyd_xspress.protocol.SeriesTracker` has already judged every frame
(:class:`~ophyd_xspress.protocol.Arrival`: its series, next / late / repeat);
the run model consumes that verdict and decides, without re-deriving it:

* :meth:`RunRows.place` -> :class:`Take` (store it in this row), :class:`Drop`
  (not for this run, with the reason) or :data:`DEFER` (passive: it belongs
  to the next run);
* the caller reports back :meth:`RunRows.mark_stored` or :meth:`RunRows.mark_refused`;
* :meth:`RunRows.on_header` and :meth:`RunRows.on_series_end` may end the run
  with a :class:`RunFailure` fact (:attr:`RunRows.failure`).

Two modes, one class each:

* :class:`ActiveRows` (we armed the detector): frames count only after the
  run's own header; frame ``n`` of that series goes to row ``n``. Frames
  before the header are stale, a second header mid-run fails the run, a
  series that ends short fails it.
* :class:`PassiveRows` (someone else arms): frames of any series are taken.
  The run's first frame of a series goes to its next free row and later ones
  of that series to ``row + (frame - first)``, so within a series a lost frame
  leaves its row empty and a late one goes to its own row. What earlier runs
  took from the current series is kept in a :class:`PassiveSeries` shared by
  the runs of one receiver, so consecutive step-scan points neither take a
  repeat twice nor skip a lost frame silently.

Gaps are intervals, never lists of frames; anything listed for people is a
bounded list of examples. Nothing here logs, sleeps or does I/O: the transport
(:mod:`ophyd_xspress.transport`) calls these methods on its receiver thread and
turns the facts into log lines and exceptions that name the endpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

from ._intervals import FrameSet, examples, format_intervals
from ._series import MAX_EXAMPLES, Arrival

__all__ = [
    "DEFER",
    "ActiveRows",
    "Defer",
    "Drop",
    "DropReason",
    "Incomplete",
    "PassiveRows",
    "PassiveSeries",
    "Placement",
    "Restarted",
    "RunFailure",
    "RunRows",
    "Take",
]

DropReason = Literal["stale", "repeated", "beyond", "before_run", "ended"]


@dataclass(frozen=True, slots=True)
class Take:
    """Store the frame in ``row`` (of the run, from 0)."""

    row: int


@dataclass(frozen=True, slots=True)
class Drop:
    """The frame is not for this run; ``reason`` says why."""

    reason: DropReason


@dataclass(frozen=True, slots=True)
class Defer:
    """Passive runs: the frame belongs after this run's last row (next run)."""


DEFER: Final = Defer()

Placement = Take | Drop | Defer


@dataclass(frozen=True, slots=True)
class Incomplete:
    """The series ended (or was replaced) with rows of the run still empty."""

    received: int
    expected: int | None
    missing: tuple[tuple[int, int], ...]  # half-open frame intervals (bounded)
    missing_count: int

    @property
    def missing_text(self) -> str:
        return format_intervals(self.missing) or "none"


@dataclass(frozen=True, slots=True)
class Restarted:
    """Active runs: a new header arrived after the run's own one."""

    received: int
    expected: int | None


RunFailure = Incomplete | Restarted

#: Frame intervals kept to describe what is missing (the count stays exact).
_MAX_INTERVALS: Final = 1_000


def _keep(examples_list: list[int], frame: int) -> None:
    if len(examples_list) < MAX_EXAMPLES:
        examples_list.append(frame)


class RunRows(ABC):
    """What one run received, where it went, and whether it is done."""

    def __init__(self, expected: int | None) -> None:
        if expected is not None and expected < 0:
            raise ValueError(f"a run expects at least 0 frames, not {expected}")
        self.expected = expected
        #: Rows stored by the sink.
        self.received = FrameSet()
        self.counts: Counter[str] = Counter()
        #: Examples (at most MAX_EXAMPLES each); ``counts`` has them all.
        self.repeated: list[int] = []
        self.out_of_order: list[int] = []
        self.refused: list[int] = []
        self.failure: RunFailure | None = None
        self.series_ended = False
        self.highest_row = -1

    # -- decisions ---------------------------------------------------------------
    @abstractmethod
    def place(self, frame: int, arrival: Arrival | None) -> Placement:
        """Where frame number ``frame`` goes (``arrival``: the tracker's verdict)."""

    @abstractmethod
    def on_header(self, series: int) -> None:
        """A header started series ``series``."""

    @abstractmethod
    def on_series_end(self) -> None:
        """The current series ended."""

    def mark_stored(self, row: int, frame: int, arrival: Arrival | None) -> None:
        """The sink stored ``frame`` in ``row`` (after a :class:`Take`)."""
        self.received.add(row)
        if arrival is not None and arrival.kind == "late":
            self.counts["out_of_order"] += 1
            _keep(self.out_of_order, frame)
        self.highest_row = max(self.highest_row, row)

    def mark_refused(self, row: int, frame: int) -> None:
        """The sink refused ``frame`` (its row stays empty; a later good copy
        of the frame is still taken)."""
        self.counts["refused"] += 1
        _keep(self.refused, frame)

    def _drop(self, reason: DropReason, frame: int) -> Drop:
        self.counts[reason] += 1
        if reason == "repeated":
            _keep(self.repeated, frame)
        return Drop(reason)

    # -- state ---------------------------------------------------------------------
    @property
    def contiguous(self) -> int:
        """Rows ``0 .. contiguous - 1`` are all stored."""
        return self.received.prefix()

    @property
    def done(self) -> bool:
        if self.failure is not None:
            return True
        if self.expected is not None:
            return self.contiguous >= self.expected
        return self.series_ended

    def _top(self) -> int:
        return self.expected if self.expected is not None else self.highest_row + 1

    @abstractmethod
    def missing_intervals(self) -> Iterator[tuple[int, int]]:
        """Frame numbers that never arrived, as half-open intervals."""

    def missing_count(self) -> int:
        return sum(b - a for a, b in self.missing_intervals())

    def incomplete(self) -> Incomplete:
        intervals: list[tuple[int, int]] = []
        count = 0
        for a, b in self.missing_intervals():
            count += b - a
            if len(intervals) < _MAX_INTERVALS:
                intervals.append((a, b))
        return Incomplete(len(self.received), self.expected, tuple(intervals), count)

    def summary(self) -> dict[str, object]:
        """Per-run facts for people and scripts (lists are bounded examples)."""
        return {
            "frames_expected": self.expected,
            "frames_received": len(self.received),
            "missing": examples(self.missing_intervals(), MAX_EXAMPLES),
            "missing_count": self.missing_count(),
            "repeated": sorted(self.repeated),
            "out_of_order": sorted(self.out_of_order),
            "refused": sorted(self.refused),
            "stale_discarded": self.counts["stale"],
            "anomaly_counts": dict(self.counts),
        }


class ActiveRows(RunRows):
    """Rows of a run whose series we armed: frame ``n`` of it goes to row ``n``."""

    def __init__(self, expected: int | None) -> None:
        super().__init__(expected)
        #: The series of this run's header (None until it arrives).
        self.series: int | None = None

    @property
    def awaiting_header(self) -> bool:
        return self.series is None

    def on_header(self, series: int) -> None:
        if self.series is None:
            self.series = series
        elif self.failure is None:
            self.counts["header_mid_run"] += 1
            self.failure = Restarted(len(self.received), self.expected)

    def on_series_end(self) -> None:
        if self.series is None:
            self.counts["stale_series_end"] += 1
            return
        if self.series_ended:
            return
        self.series_ended = True
        if self.expected is not None and self.contiguous < self.expected:
            self.failure = self.failure or self.incomplete()

    def place(self, frame: int, arrival: Arrival | None) -> Placement:
        if self.series is None or (
            arrival is not None and (arrival.headless or arrival.series < self.series)
        ):
            # before this run's header, from an older series, or from a
            # series whose header was missed: never this run's own
            return self._drop("stale", frame)
        if self.failure is not None or (
            arrival is not None and arrival.series != self.series
        ):
            return self._drop("ended", frame)
        if frame in self.received:
            return self._drop("repeated", frame)
        if self.expected is not None and frame >= self.expected:
            return self._drop("beyond", frame)
        return Take(frame)

    def missing_intervals(self) -> Iterator[tuple[int, int]]:
        if self.expected is None and not self.series_ended:
            return iter(())
        return self.received.gap_intervals(self._top())


class PassiveSeries:
    """What passive runs made of the current series (shared by the
    consecutive runs of one receiver): the frames they took, and the frames
    the receiver had but set aside (older than a run's trigger, or dropped by
    its full backlog), which are then never called missing."""

    __slots__ = ("discarded", "highest", "series", "taken")

    def __init__(self) -> None:
        self.series: int | None = None
        self.taken = FrameSet()
        self.discarded = FrameSet()
        self.highest = -1

    def take(self, frame: int) -> None:
        self.taken.add(frame)
        if frame > self.highest:
            self.highest = frame

    def discard(self, frame: int, series: int | None) -> None:
        """Frame ``frame`` of ``series`` arrived but no run will take it."""
        if series != self.series:
            self.restart(series)
        self.discarded.add(frame)

    def restart(self, series: int | None = None) -> None:
        self.series = series
        self.taken.clear()
        self.discarded.clear()
        self.highest = -1


class PassiveRows(RunRows):
    """Rows of a run in someone else's series: numbered from the first frame
    the run takes from each series."""

    def __init__(self, expected: int | None, shared: PassiveSeries) -> None:
        super().__init__(expected)
        self.shared = shared
        #: ``row = frame + offset`` in the current series (None until the run
        #: takes its first frame of it).
        self._offset: int | None = None
        #: Each series' (first row, offset), to name missing rows by frame.
        self._segments: list[tuple[int, int]] = []
        #: Frames of a series lost just before this run's first one of it.
        self._skipped: list[tuple[int, int]] = []

    def on_header(self, series: int) -> None:
        self._offset = None  # frame numbers restart
        self.shared.restart(series)

    def on_series_end(self) -> None:
        # a hole left among the rows this run took from the series that ended
        # will never be filled: fail now, as in active mode
        if self._offset is not None and self.contiguous <= self.highest_row:
            self.failure = self.failure or self.incomplete()
        self._offset = None

    def place(self, frame: int, arrival: Arrival | None) -> Placement:
        if self.failure is not None:
            return self._drop("ended", frame)
        shared = self.shared
        if arrival is not None and arrival.series != shared.series:
            shared.restart(arrival.series)  # its header went to nobody
            self._offset = None
        if frame in shared.taken:
            return self._drop("repeated", frame)
        if self._offset is None:
            self._skip_to(frame)
            first_row = self.highest_row + 1
            self._offset = first_row - frame
            self._segments.append((first_row, self._offset))
        row = frame + self._offset
        if row < self._segments[-1][0]:
            self.counts["before_run"] += 1
            _keep(self.out_of_order, frame)
            return Drop("before_run")
        if self.expected is not None and row >= self.expected:
            return DEFER
        return Take(row)

    def _skip_to(self, frame: int) -> None:
        """The run's first frame of the series: frames between the last one an
        earlier run took and this one never arrived, unless set aside."""
        shared = self.shared
        if shared.highest < 0 or frame <= shared.highest + 1:
            return
        for gap in shared.discarded.gap_intervals(frame, shared.highest + 1):
            self.counts["missing"] += gap[1] - gap[0]
            if len(self._skipped) < _MAX_INTERVALS:
                self._skipped.append(gap)

    def mark_stored(self, row: int, frame: int, arrival: Arrival | None) -> None:
        super().mark_stored(row, frame, arrival)
        self.shared.take(frame)

    def discard(self, frame: int, arrival: Arrival | None, reason: str) -> None:
        """``frame`` arrived before this run's trigger (or was dropped by a full
        backlog): counted under ``reason``, never taken, never missing."""
        self.counts[reason] += 1
        self.shared.discard(frame, arrival.series if arrival is not None else None)

    def first_frame_of_segment(self) -> int | None:
        """The frame that began this run's part of the current series."""
        if self._offset is None or not self._segments:
            return None
        return self._segments[-1][0] - self._offset

    def missing_intervals(self) -> Iterator[tuple[int, int]]:
        """Frames never received, by number: those skipped before a segment,
        the holes between rows, and the rows after the last frame taken (the
        tail: named by continuing the last segment's numbering)."""
        yield from self._skipped
        if not self._segments:
            return
        for a, b in self.received.gap_intervals(self._top()):
            # split the row gap at segment boundaries; name it by frame number
            for i, (first, offset) in enumerate(self._segments):
                end = self._segments[i + 1][0] if i + 1 < len(self._segments) else b
                lo, hi = max(a, first), min(b, end)
                if lo < hi:
                    yield lo - offset, hi - offset

    def missing_count(self) -> int:
        # with no frame taken, no row can be named by frame number
        unnamed = 0 if self._segments else (self.expected or 0)
        return super().missing_count() + unnamed
