"""Who gets each packet: the current run, or the backlog for the next one.

:class:`RunDispatcher` is the receiver's switchboard: it holds the current
:class:`~ophyd_xspress.transport.Run`, the :class:`Backlog` of packets no run
has taken yet, and the :class:`~ophyd_xspress.protocol.PassiveSeries` that
consecutive passive runs share. ``begin`` / ``end`` are called by the owner of
the runs (any thread); ``deliver`` and ``next_batch`` by the receiver thread.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from ..protocol import (
    ActiveRows,
    Frame,
    HeaderMessage,
    Packet,
    PassiveRows,
    PassiveSeries,
    SeriesEndMessage,
    StrayFrame,
)
from ._backlog import Backlog, Held
from ._run import Run
from ._sink import DurableRows, FrameSink

__all__ = ["RunDispatcher"]


class _NullSink:
    def put(self, row: int, frame: Frame) -> None:
        return None

    def flush(self) -> None:
        return None


class RunDispatcher:
    """Hands the receiver's packets to the current run, or keeps them."""

    def __init__(self, endpoint: str, backlog: Backlog, counts: Counter[str]) -> None:
        self.endpoint = endpoint
        self.backlog = backlog
        self.counts = counts
        self.last_header: HeaderMessage | None = None
        self._passive = PassiveSeries()
        self._run: Run | None = None
        self._lock = threading.Lock()  # the current run and the backlog

    # -- the owner's side --------------------------------------------------------
    def begin(
        self,
        expected: int | None,
        sink: FrameSink | None,
        *,
        active: bool,
        row_offset: int,
        durable: DurableRows | None,
        on_progress: Callable[[int], None] | None,
    ) -> Run:
        rows = ActiveRows(expected) if active else PassiveRows(expected, self._passive)
        run = Run(
            self.endpoint,
            rows,
            sink if sink is not None else _NullSink(),
            row_offset=row_offset,
            durable=durable,
            on_progress=on_progress,
        )
        with self._lock:
            if self._run is not None:
                self._run.close()
            self._run = run
        return run

    def end(self, run: Run) -> None:
        with self._lock:
            if self._run is run:
                self._run = None
        run.close()  # wakes its waiters: the run is over

    def hint(self, text: str) -> None:
        """A likely cause of trouble, for the current run's error messages."""
        run = self._run
        if run is not None:
            run.hint(text)

    def reset(self) -> None:
        """Forget what was kept (the receiver starts or stops)."""
        with self._lock:
            self.backlog.clear()
        self._passive.restart()

    # -- the receiver thread's side ---------------------------------------------------
    def next_batch(self) -> Run | None:
        """The run the next batch of packets goes to; a run that just began
        first gets what arrived before it."""
        with self._lock:
            run = self._run
            fresh = run is not None and not run.backlog_fed
            if run is not None:
                run.backlog_fed = True
        if fresh and run is not None:
            self._feed_backlog(run)
        return run

    def deliver(self, packets: list[Packet], run: Run | None, series: int) -> None:
        """Give ``packets`` to ``run`` (``series``: the decoder's current one,
        for headers and series ends), or keep them for the next run."""
        for item in packets:
            if isinstance(item, StrayFrame):
                # its header was missed: a passive run takes it (the frame
                # knows its headless series), an active run counts it stale
                self.counts["outside_series"] += 1
                packet: Frame | HeaderMessage | SeriesEndMessage = item.frame
            else:
                packet = item
            if isinstance(packet, HeaderMessage):
                self.last_header = packet
            arrival = packet.arrival if isinstance(packet, Frame) else None
            own = series
            if arrival is not None and arrival.series is not None:
                own = arrival.series
            wanted = run is not None and (run.active or not run.done)
            if run is None or not wanted or not self._offer(run, packet, own):
                self._hold(Held(packet, own))

    @staticmethod
    def _offer(
        run: Run, packet: Frame | HeaderMessage | SeriesEndMessage, series: int
    ) -> bool:
        """Give ``packet`` to ``run``; False: the run leaves it for the next."""
        if isinstance(packet, Frame):
            return run.on_frame(packet)
        if isinstance(packet, HeaderMessage):
            run.on_header(packet, series)
        else:
            run.on_series_end()
        return True

    def _feed_backlog(self, run: Run) -> None:
        """A passive run takes what arrived before it, in order; an active run
        counts it as stale (from an older series)."""
        with self._lock:
            items = self.backlog.take_all()
        if run.active:
            stale = sum(isinstance(item.packet, Frame) for item in items)
            if stale:
                run.note_stale(stale)
            return
        if run.header is None:
            run.header = self.last_header
        older = 0
        for i, item in enumerate(items):
            if run.done:
                for rest in items[i:]:
                    self._hold(rest)
                break
            if isinstance(item.packet, Frame) and item.received_at < run.began:
                # a passive run takes no frame older than its trigger (a
                # free-running detector would hand a step an old frame)
                run.discard(item.packet, "before_trigger")
                older += 1
            elif not self._offer(run, item.packet, item.series):
                self._hold(item)
        if older:
            run.note_discarded(older)

    def _hold(self, held: Held) -> None:
        if held.received_at:
            dropped = self.backlog.keep(held)
        else:
            dropped = self.backlog.hold(held.packet, held.series)
        for old in dropped:
            # received, then dropped by this receiver: never called missing
            if isinstance(old.packet, Frame):
                self._passive.discard(old.packet.frame, old.series)
        if dropped:
            self.counts["backlog_dropped"] += len(dropped)
