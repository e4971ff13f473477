"""Frame numbers as intervals, and how to show them to people.

:class:`FrameSet` keeps a set of frame (or row) numbers as disjoint half-open
intervals, so that its memory grows with the number of gaps, never with the
size of one; :func:`format_intervals` and :func:`format_ranges` write them as
``"1-3, 7"`` with long lists elided; :func:`examples` lists the first few
numbers of intervals without materialising them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator

__all__ = [
    "FrameSet",
    "examples",
    "format_intervals",
    "format_ranges",
    "ordinal",
    "plural",
    "span",
]


def plural(n: int) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"


def ordinal(n: int) -> str:
    """``2`` -> ``"2nd"``, ``11`` -> ``"11th"``, ``23`` -> ``"23rd"``."""
    suffix = (
        "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    )
    return f"{n}{suffix}"


def span(start: int, stop: int) -> str:
    """The inclusive range ``start..stop`` as ``"a"`` or ``"a-b"``."""
    return f"{start}" if start == stop else f"{start}-{stop}"


def _elide(parts: list[str], limit: int) -> list[str]:
    if len(parts) > limit:
        head = limit // 2
        parts = [*parts[:head], "...", *parts[len(parts) - (limit - head) :]]
    return parts


def format_ranges(frames: Iterable[int], limit: int = 12) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``; long lists are elided.

    At most ``limit`` ranges are shown (the first and last halves, ``...``
    between); ``limit <= 0`` gives just the count, e.g. ``"4 frames"``.
    """
    values = sorted(set(frames))
    if not values:
        return ""
    if limit <= 0:
        return plural(len(values))
    intervals: list[tuple[int, int]] = []
    start = prev = values[0]
    for v in values[1:]:
        if v != prev + 1:
            intervals.append((start, prev + 1))
            start = v
        prev = v
    intervals.append((start, prev + 1))
    return format_intervals(intervals, limit)


def format_intervals(intervals: Iterable[tuple[int, int]], limit: int = 12) -> str:
    """Half-open ``(start, stop)`` intervals as ``"1-3, 7"`` (at most ``limit``
    shown), without listing their frames: safe for gaps of any size."""
    parts = [span(a, b - 1) for a, b in intervals if b > a]
    return ", ".join(_elide(parts, max(1, limit)))


class FrameSet:
    """Frame (or row) numbers as disjoint, sorted, half-open intervals.

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
        """The members as ``(start, stop)`` half-open intervals."""
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

    def add_range(self, start: int, stop: int) -> None:
        """Add every number in ``start .. stop - 1``."""
        if stop <= start:
            return
        starts, stops = self._starts, self._stops
        if not stops or stops[-1] < start:  # beyond everything: the usual case
            starts.append(start)
            stops.append(stop)
            self._count += stop - start
            return
        if stops[-1] == start:
            stops[-1] = stop
            self._count += stop - start
            return
        lo = bisect_right(stops, start - 1)  # first interval ending at/after start
        hi = bisect_right(starts, stop)  # intervals starting at/before stop
        new_start, new_stop = start, stop
        covered = 0
        for a, b in zip(starts[lo:hi], stops[lo:hi], strict=True):
            new_start, new_stop = min(new_start, a), max(new_stop, b)
            covered += b - a
        starts[lo:hi] = [new_start]
        stops[lo:hi] = [new_stop]
        self._count += (new_stop - new_start) - covered

    def prefix(self) -> int:
        """``n`` such that ``0 .. n-1`` are all members."""
        if self._starts and self._starts[0] <= 0:
            return max(0, self._stops[0])
        return 0

    def gap_intervals(self, stop: int, start: int = 0) -> Iterator[tuple[int, int]]:
        """The half-open intervals of ``start .. stop-1`` that are not members."""
        expect = start
        for a, b in zip(self._starts, self._stops, strict=True):
            if a >= stop:
                break
            if a > expect:
                yield expect, a
            expect = max(expect, b)
        if expect < stop:
            yield expect, stop

    def gap_count(self, stop: int, start: int = 0) -> int:
        """How many numbers of ``start .. stop-1`` are not members."""
        return sum(b - a for a, b in self.gap_intervals(stop, start))

    def gaps(self, stop: int, limit: int | None = None) -> list[int]:
        """The numbers in ``0 .. stop-1`` not members (at most ``limit``)."""
        return examples(self.gap_intervals(stop), limit)

    def clear(self) -> None:
        self._starts.clear()
        self._stops.clear()
        self._count = 0


def examples(intervals: Iterable[tuple[int, int]], limit: int | None) -> list[int]:
    """The first ``limit`` numbers of half-open ``intervals`` (all if None)."""
    out: list[int] = []
    for a, b in intervals:
        if limit is not None:
            b = min(b, a + limit - len(out))
        out.extend(range(a, b))
        if limit is not None and len(out) >= limit:
            break
    return out
