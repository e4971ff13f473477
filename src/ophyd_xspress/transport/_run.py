"""One run's frames on their way to a sink: progress, completion and errors.

:class:`Run` wraps the sans-IO run model
(:class:`~ophyd_xspress.protocol.ActiveRows` or
:class:`~ophyd_xspress.protocol.PassiveRows`) for the receiver thread: it hands
the frames the model takes to the :class:`FrameSink`, logs each fact the model
or the sink returns once (naming the endpoint), turns failures into exceptions
and publishes progress. Waiters (asyncio or threads) are woken by events when
something they wait for changes, never by polling; a stall is a deadline
computed from the last frame's arrival.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from itertools import islice

from ..protocol import (
    ActiveRows,
    Defer,
    Drop,
    Frame,
    HeaderMessage,
    Incomplete,
    PassiveRows,
    Restarted,
    RunRows,
)
from ._errors import (
    StreamIncompleteError,
    StreamRestartedError,
    StreamStalledError,
    incomplete_error,
    shape_error,
    stall_error,
)
from ._sink import DurableRows, FrameRefusedError, FrameShapeError, FrameSink
from ._wakeup import Wakeup

__all__ = ["Run"]

log = logging.getLogger("ophyd_xspress.transport")


class Run:
    """One run's view of the stream: which frames arrived, and when it is done.

    Created by :meth:`StreamReceiver.begin`; its ``on_*`` methods are called on
    the receiver thread only, everything else from any thread.
    """

    def __init__(
        self,
        endpoint: str,
        rows: RunRows,
        sink: FrameSink,
        *,
        row_offset: int = 0,
        durable: DurableRows | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.rows = rows
        self.sink = sink
        self.row_offset = row_offset
        self.durable = durable
        self.on_progress = on_progress
        self.header: HeaderMessage | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.last_frame_time = time.monotonic()
        #: When the run began (its trigger): a passive run takes no frame
        #: received before it.
        self.began = self.last_frame_time
        #: Likely causes the receiver noticed, added to error messages.
        self.hints: list[str] = []
        #: False until the receiver has offered this run its backlog.
        self.backlog_fed = False
        self._wakeup = Wakeup()
        self._published: tuple[int, bool] | None = None
        self._publish_lock = threading.Lock()
        self._unsubscribe = (
            durable.subscribe(self._on_durable) if durable is not None else None
        )

    # -- facts -------------------------------------------------------------------
    @property
    def expected(self) -> int | None:
        return self.rows.expected

    @property
    def active(self) -> bool:
        return isinstance(self.rows, ActiveRows)

    @property
    def counts(self) -> Counter[str]:
        """What this run dropped, refused or met, by kind."""
        return self.rows.counts

    @property
    def awaiting_header(self) -> bool:
        return isinstance(self.rows, ActiveRows) and self.rows.awaiting_header

    @property
    def received(self) -> int:
        """Frames stored by the sink so far (not necessarily durable yet)."""
        return len(self.rows.received)

    @property
    def contiguous(self) -> int:
        """Rows ``0 .. contiguous - 1`` all received."""
        return self.rows.contiguous

    @property
    def stored(self) -> int:
        """Rows ``0 .. stored - 1`` all received and durably stored."""
        contiguous = self.rows.contiguous
        if self.durable is None:
            return contiguous
        return max(0, min(contiguous, self.durable.prefix() - self.row_offset))

    @property
    def done(self) -> bool:
        return self.error is not None or self.rows.done

    def summary(self) -> dict[str, object]:
        return self.rows.summary()

    def _expected_text(self) -> str:
        return str(self.expected) if self.expected is not None else "?"

    def hint(self, text: str) -> None:
        if text not in self.hints:
            self.hints.append(text)

    def incomplete_error(self) -> StreamIncompleteError:
        return incomplete_error(
            self.endpoint, self.rows.incomplete(), self._expected_text(), self.hints
        )

    def stall_error(self, waited: float) -> StreamStalledError:
        return stall_error(
            self.endpoint,
            waited,
            self.received,
            self._expected_text(),
            awaiting_header=self.awaiting_header,
            stale=self.rows.counts["stale"],
            missing=list(islice(self.rows.missing_intervals(), 1000)),
            hints=self.hints,
        )

    # -- receiver thread -----------------------------------------------------------
    def on_header(self, header: HeaderMessage, series: int) -> None:
        had_failure = self.rows.failure is not None
        self.rows.on_header(series)
        if self.header is None:
            self.header = header
        if not had_failure and isinstance(self.rows.failure, Restarted):
            self.fail(
                StreamRestartedError(
                    f"stream from {self.endpoint} restarted mid-run: a new header "
                    f"arrived after {self.received} of {self._expected_text()} "
                    "frames; frames after it are not attributed to this run"
                )
            )

    def on_series_end(self) -> None:
        had_failure = self.rows.failure is not None
        self.rows.on_series_end()
        if not had_failure and isinstance(self.rows.failure, Incomplete):
            self.fail(self.incomplete_error())
        self._notify()

    def on_frame(self, frame: Frame) -> bool:
        """Place ``frame``; False: a passive run leaves it for the next run.

        A sink failure fails the run (logged once), never the receiver thread.
        """
        if self.closed or self.error is not None:
            self.rows.counts["after_close"] += 1
            return True
        placement = self.rows.place(frame.frame, frame.arrival)
        if isinstance(placement, Defer):
            return False
        if isinstance(placement, Drop):
            self._log_drop(placement, frame)
            return True
        self.last_frame_time = time.monotonic()
        try:
            self.sink.put(self.row_offset + placement.row, frame)
        except FrameShapeError as exc:
            self.rows.mark_refused(placement.row, frame.frame)
            error = shape_error(self.endpoint, exc)
            log.error("%s", error)
            self.fail(error)
            return True
        except FrameRefusedError as exc:
            self.rows.mark_refused(placement.row, frame.frame)
            log.warning("%s: frame %d not stored: %s", self.endpoint, frame.frame, exc)
            return True
        except Exception as exc:  # the sink failed (disk full, file closed...)
            log.exception("%s: storing frame %d failed", self.endpoint, frame.frame)
            self.fail(exc)
            return True
        self.rows.mark_stored(placement.row, frame.frame, frame.arrival)
        return True

    def _log_drop(self, drop: Drop, frame: Frame) -> None:
        """Facts only this run knows (the tracker reported repeats and gaps)."""
        n = frame.frame
        if drop.reason == "stale":
            if self.rows.counts["stale"] == 1:
                log.warning(
                    "%s: discarded stale frame %d (arrived before this run's "
                    "header; later ones are counted in the run summary)",
                    self.endpoint,
                    n,
                )
        elif drop.reason == "beyond":
            log.warning(
                "%s: frame %d is beyond the %s frames this run expects; not written",
                self.endpoint,
                n,
                self._expected_text(),
            )
        elif drop.reason == "before_run" and isinstance(self.rows, PassiveRows):
            log.warning(
                "%s: frame %d arrived after frame %s, which began this run's "
                "part of the series; not written",
                self.endpoint,
                n,
                self.rows.first_frame_of_segment(),
            )

    def after_batch(self) -> None:
        """After a batch of packets (or a quiet poll): flush the sink, publish."""
        try:
            self.sink.flush()
        except Exception as exc:  # the sink failed (e.g. disk full)
            log.exception("%s: writing frames failed", self.endpoint)
            self.fail(exc)
        self._publish()

    def discard(self, frame: Frame, reason: str) -> None:
        """A passive run sets ``frame`` aside (counted under ``reason``)."""
        if isinstance(self.rows, PassiveRows):
            self.rows.discard(frame.frame, frame.arrival, reason)

    def note_discarded(self, count: int) -> None:
        log.info(
            "%s: discarded %d frame(s) received before this run's trigger (a "
            "passive detector takes only frames that arrive after trigger())",
            self.endpoint,
            count,
        )

    def note_stale(self, count: int) -> None:
        """``count`` frames received before the run began were discarded."""
        self.rows.counts["stale"] += count
        log.warning(
            "%s: discarded %d frame(s) received before the run started",
            self.endpoint,
            count,
        )

    # -- any thread ----------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._notify()

    def close(self) -> None:
        """No more frames for this run (the receiver calls this at end)."""
        self.closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._notify()

    def _on_durable(self) -> None:
        """The sink stored more rows, or failed (called on its own thread)."""
        if self.closed:
            return
        durable = self.durable
        if durable is not None and durable.error is not None:
            self.fail(durable.error)
        self._publish()

    def _publish(self) -> None:
        # only when something a waiter or the progress signal sees changed:
        # with an HDF5 sink ``stored`` moves once per file flush (receiver and
        # writer threads both publish: the lock keeps the values in order)
        with self._publish_lock:
            stored, done = self.stored, self.done
            if (stored, done) == self._published:
                return
            self._published = (stored, done)
            if self.on_progress is not None:
                self.on_progress(stored)
            self._notify()

    def _notify(self) -> None:
        self._wakeup.notify(self.done or self.closed)

    async def wait(self, stall_timeout: float, since: float = 0.0) -> None:
        """Wait until the run has its frames, or ends (closed); raise its error,
        or :class:`StreamStalledError` after ``stall_timeout`` without a frame
        (counted from the last frame, or from ``since`` if later)."""

        def start() -> float:
            return max(self.last_frame_time, since)

        await self._wakeup.until(
            lambda: self.rows.done or self.closed,
            lambda: self.error,
            lambda: start() + stall_timeout,
            lambda: self.stall_error(time.monotonic() - start()),
        )

    async def wait_stored(self, timeout: float) -> None:
        """Wait until every frame received so far is durably stored."""
        start = time.monotonic()

        def stuck() -> TimeoutError:
            return TimeoutError(
                f"{self.endpoint}: {self.contiguous - self.stored} received "
                f"frame(s) not stored {timeout:.1f} s after the last one arrived "
                "(is the disk stalled?)"
            )

        await self._wakeup.until(
            lambda: self.stored >= self.contiguous,
            lambda: self.error,
            lambda: start + timeout,
            stuck,
        )

    def wait_blocking(self, timeout: float) -> bool:
        """Block until the run is done or closed (threads, tests)."""
        return self._wakeup.wait_finished(timeout)
