"""Receive the detector stream on a dedicated thread and attribute frames to runs.

:class:`StreamReceiver` owns one SUB (or PULL) socket, connected before the
detector is armed, and a :class:`~ophyd_xspress.protocol.StreamDecoder`. A run
(one trigger of a step scan, or one fly scan) is announced with
:meth:`StreamReceiver.begin`, which returns a :class:`RunTracker`:

* in *active* mode (we arm the detector) frames count only after the run's own
  ``header``: anything before it is stale (from a previous series) and is
  discarded with a warning; frame ``n`` of the series goes to row
  ``row_offset + n`` of the sink, so a missing, repeated or out-of-order frame
  never shifts data into the wrong row;
* in *passive* mode (someone else arms) frames of any series are taken: the
  first frame a run takes from a series goes to the run's next free row and
  the later ones of that series to ``row + (frame - first)``, so within a
  series a missing frame leaves its row empty, a repeated one is dropped and
  an out-of-order one goes to its own row, as in active mode. A series that
  ends with a hole in the run's rows fails the run
  (:class:`StreamIncompleteError`); a frame that would land beyond the run's
  last row is left for the next run. Which frames of a series were already
  taken (by any run) is kept by the receiver, so consecutive step-scan
  triggers neither take a repeated frame twice nor skip a lost one silently;
* frames outside any series (slow joiner: connected after the header) are never
  attributed, only counted.

Frames go to a :class:`FrameSink` on the receiver thread; the tracker counts what
arrived and wakes asyncio waiters through ``loop.call_soon_threadsafe``. Every
wait has a time-out whose error names the endpoint and the frames expected and
received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Final, Literal, Protocol

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..protocol import (
    Frame,
    FrameSet,
    HeaderMessage,
    OutOfSeriesError,
    ProtocolError,
    SeriesEndMessage,
    StreamDecoder,
    format_ranges,
)

__all__ = [
    "FrameSink",
    "RunTracker",
    "StreamConnectError",
    "StreamIncompleteError",
    "StreamReceiver",
    "StreamStalledError",
]

log = logging.getLogger("ophyd_xspress.transport")

SocketType = Literal["sub", "pull"]


class StreamConnectError(ConnectionError):
    """The stream endpoint could not be reached in time."""


class StreamStalledError(TimeoutError):
    """Frames stopped arriving before the run had all it expected."""


class StreamIncompleteError(RuntimeError):
    """The detector ended the series before sending every frame of the run."""


class FrameSink(Protocol):
    """Where a run's frames go (called on the receiver thread).

    A sink that writes asynchronously (the HDF5 writer) also has ``durable``, a
    :class:`FrameSet` of the rows safely stored, ``on_flushed``, a callback it
    calls (from any thread) when ``durable`` grows, and ``error``: a run's
    progress then counts only durable rows.
    """

    def put(self, row: int, frame: Frame) -> None:
        """Store ``frame`` in ``row``. ``ValueError``: this frame is refused
        (its row stays empty, the run goes on); any other exception, or the
        sink's own ``error``: the sink failed and the run fails with it."""
        ...

    def flush(self) -> None: ...


class RunTracker:
    """One run's view of the stream: which frames arrived, and when it is done."""

    def __init__(
        self,
        receiver: StreamReceiver,
        expected: int | None,
        sink: FrameSink,
        *,
        active: bool,
        row_offset: int = 0,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.receiver = receiver
        self.expected = expected
        self.sink = sink
        self.active = active
        self.row_offset = row_offset
        self.on_progress = on_progress
        self.awaiting_header = active
        self.header: HeaderMessage | None = None
        self.series_ended = False
        self.received = FrameSet()
        self.contiguous = 0  # frames 0..contiguous-1 all arrived
        self.counts: Counter[str] = Counter()
        self.repeated: list[int] = []
        self.out_of_order: list[int] = []
        self.refused: list[int] = []  # frames the sink would not store
        self.last_frame_time = time.monotonic()
        self.error: BaseException | None = None
        self.closed = False
        self._done = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._highest = -1  # highest row number taken
        self._highest_frame = -1  # the frame number that went there
        self.backlog_fed = False
        #: passive runs: ``row = frame + offset`` for the current series (None
        #: until the run takes its first frame of that series), and each
        #: series' (first row, offset), to name missing rows by frame number
        self._offset: int | None = None
        self._segments: list[tuple[int, int]] = []
        #: passive runs: frames of a series lost before this run's first one
        self.skipped: list[int] = []
        self._published: tuple[int, bool] | None = None
        self._publish_lock = threading.Lock()
        self._durable: FrameSet | None = getattr(sink, "durable", None)
        if self._durable is not None:
            sink.on_flushed = self._on_sink_flushed  # type: ignore[attr-defined]

    # -- receiver thread ---------------------------------------------------------
    def _on_header(self, header: HeaderMessage) -> None:
        if self.awaiting_header:
            self.awaiting_header = False
            self.header = header
            return
        if self.active and self.header is not None:
            self.counts["header_mid_run"] += 1
            self._fail(
                ProtocolError(
                    f"stream from {self.receiver.endpoint} restarted mid-run: a new "
                    f"header arrived after {len(self.received)} of "
                    f"{self._expected_text()} frames; frames after it are not "
                    "attributed to this run"
                )
            )
        else:
            if self.header is None:
                self.header = header
            self._offset = None  # passive: frame numbers restart
            self.receiver._passive.restart()

    def _on_series_end(self) -> None:
        if self.awaiting_header:
            self.counts["stale_series_end"] += 1
            return
        if not self.active:
            # a hole left among the rows this run took from the series that
            # ended will never be filled: fail now, as in active mode
            if self._offset is not None and self.contiguous <= self._highest:
                self._fail(self.incomplete_error())
            self._offset = None
            return
        if self.active:
            self.series_ended = True
            if self.expected is not None and self.contiguous < self.expected:
                self._fail(self.incomplete_error())
            self._notify()

    def _on_frame(self, frame: Frame) -> bool:
        """Attribute ``frame`` to this run. False: a passive run leaves it for
        the next run (it belongs after this run's last row)."""
        if self.closed or self.error is not None:
            self.counts["after_close"] += 1
            return True
        if self.awaiting_header:
            self.counts["stale"] += 1
            log.warning(
                "%s: discarded stale frame %d (arrived before this run's header)",
                self.receiver.endpoint,
                frame.frame,
            )
            return True
        if self.active:
            number = frame.frame
        else:
            row = self._passive_row(frame.frame)
            if row is None:
                return True
            if self.expected is not None and row >= self.expected:
                return False  # the next run's (this one still misses a frame)
            number = row
        if number in self.received:
            self.counts["repeated"] += 1
            self.repeated.append(frame.frame)
            log.warning(
                "%s: frame %d received again; keeping the first copy",
                self.receiver.endpoint,
                frame.frame,
            )
            return True
        if self.expected is not None and number >= self.expected:
            self.counts["unexpected"] += 1
            log.warning(
                "%s: frame %d is beyond the %d frames this run expects; not written",
                self.receiver.endpoint,
                frame.frame,
                self.expected,
            )
            return True
        try:
            self.sink.put(self.row_offset + number, frame)
        except ValueError as exc:
            if getattr(self.sink, "error", None) is exc:
                raise  # the sink failed (not this frame): the run fails
            # the sink refuses this one frame (a shape the file was not opened
            # for): its row stays empty, a later good copy is still taken
            self.counts["refused"] += 1
            self.refused.append(frame.frame)
            log.warning(
                "%s: frame %d not stored: %s", self.receiver.endpoint, frame.frame, exc
            )
            return True
        if not self.active:
            self.receiver._passive.take(frame.frame)
        if number < self._highest:
            self.counts["out_of_order"] += 1
            self.out_of_order.append(frame.frame)
            log.warning(
                "%s: frame %d arrived after frame %d; written to its own row",
                self.receiver.endpoint,
                frame.frame,
                self._highest_frame,
            )
        else:
            self._highest, self._highest_frame = number, frame.frame
        self.received.add(number)
        self.last_frame_time = time.monotonic()
        self.contiguous = self.received.prefix()
        return True

    def _passive_row(self, frame: int) -> int | None:
        """The row of a passive run for detector frame ``frame``, or None when
        the frame is dropped (a repeat, or older than the run's first frame
        of this series), counted and logged."""
        series = self.receiver._passive
        if frame in series.taken:
            self.counts["repeated"] += 1
            self.repeated.append(frame)
            log.warning(
                "%s: frame %d received again in this series; keeping the first copy",
                self.receiver.endpoint,
                frame,
            )
            return None
        if self._offset is None:
            # the run's first frame of this series: its next free row
            if series.highest >= 0 and frame > series.highest + 1:
                lost = list(range(series.highest + 1, frame))
                self.counts["missing"] += len(lost)
                self.skipped += lost
                log.warning(
                    "%s: frame(s) %s of this series never arrived (frame %d "
                    "followed frame %d)",
                    self.receiver.endpoint,
                    format_ranges(lost),
                    frame,
                    series.highest,
                )
            first_row = self._highest + 1
            self._offset = first_row - frame
            self._segments.append((first_row, self._offset))
        row = frame + self._offset
        if row < self._segments[-1][0]:
            self.counts["before_run"] += 1
            self.out_of_order.append(frame)
            log.warning(
                "%s: frame %d arrived after frame %d, which began this run's "
                "part of the series; not written",
                self.receiver.endpoint,
                frame,
                self._segments[-1][0] - self._offset,
            )
            return None
        return row

    @property
    def stored(self) -> int:
        """Frames ``0 .. stored-1`` all received and stored by the sink."""
        durable = self._durable
        if durable is None:
            return self.contiguous
        return max(0, min(self.contiguous, durable.prefix() - self.row_offset))

    def _after_batch(self) -> None:
        """Called after a batch of packets (or a quiet poll): flush the sink,
        publish progress."""
        self.sink.flush()
        self._publish()

    def _publish(self) -> None:
        # only when something a waiter or the progress signal sees changed:
        # with an HDF5 sink ``stored`` moves once per file flush, and waking
        # the event loop after every batch of messages cost the receiver CPU
        # (receiver and writer threads both publish: the lock keeps the
        # published values in order)
        with self._publish_lock:
            stored, done = self.stored, self.done
            if (stored, done) == self._published:
                return
            self._published = (stored, done)
            if self.on_progress is not None:
                self.on_progress(stored)
            self._notify()

    def _on_sink_flushed(self) -> None:
        """The sink stored more rows (called on its own thread)."""
        if self.closed:
            return
        error = getattr(self.sink, "error", None)
        if error is not None:
            self._fail(error)
        self._publish()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._notify()

    def _notify(self) -> None:
        if self.done:
            self._done.set()
        for loop, event in list(self._waiters):
            loop.call_soon_threadsafe(event.set)

    # -- any thread ----------------------------------------------------------------
    @property
    def done(self) -> bool:
        if self.error is not None:
            return True
        if self.expected is not None:
            return self.contiguous >= self.expected
        return self.series_ended

    @property
    def missing(self) -> list[int]:
        """Frame numbers that never arrived (for a passive run: of the series
        it took frames from, including any lost just before its first one)."""
        top = self.expected if self.expected is not None else self._highest + 1
        rows = self.received.gaps(top)
        if self.active:
            return rows
        frames = list(self.skipped)
        for row in rows:
            if row > self._highest:
                break  # after the last frame taken: no frame number to give
            offset = next(
                (off for first, off in reversed(self._segments) if first <= row), 0
            )
            frames.append(row - offset)
        return frames

    def _expected_text(self) -> str:
        return str(self.expected) if self.expected is not None else "?"

    def summary(self) -> dict[str, object]:
        return {
            "frames_expected": self.expected,
            "frames_received": len(self.received),
            "missing": self.missing
            if self.expected is not None or not self.active
            else [],
            "repeated": sorted(self.repeated),
            "out_of_order": sorted(self.out_of_order),
            "refused": sorted(self.refused),
            "stale_discarded": self.counts["stale"],
            "anomaly_counts": dict(self.counts),
        }

    def incomplete_error(self) -> StreamIncompleteError:
        missing = self.missing
        return StreamIncompleteError(
            f"the series from {self.receiver.endpoint} ended after "
            f"{len(self.received)} of {self._expected_text()} frames; "
            f"missing {format_ranges(missing) or 'none'} (frames after the first "
            "gap are in the file but no event refers to them)"
        )

    def stall_error(self, waited: float) -> StreamStalledError:
        missing = self.missing
        text = (
            f"no frame from {self.receiver.endpoint} for {waited:.1f} s: received "
            f"{len(self.received)} of {self._expected_text()} frames"
        )
        if self.awaiting_header:
            text += " (the series header never arrived: was the detector armed, and "
            text += "the subscriber connected before Arm?)"
        elif missing:
            text += f"; missing {format_ranges(missing)}"
        return StreamStalledError(text)

    async def wait(
        self, stall_timeout: float, check: Callable[[], None] | None = None
    ) -> None:
        """Wait until the run has its frames or is ended (:meth:`StreamReceiver.end`);
        raise on stall, error or ``check``."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        self._waiters.append(entry)
        try:
            while True:
                if self.error is not None:
                    raise self.error
                if self.done:
                    return
                if self.closed:
                    # ended (detector unstaged) before it had its frames: an
                    # interrupted plan's cleanup, nothing to wait for any more
                    return
                if check is not None:
                    check()
                idle = time.monotonic() - self.last_frame_time
                if idle > stall_timeout:
                    raise self.stall_error(idle)
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(0.25, stall_timeout))
        finally:
            self._waiters.remove(entry)

    async def wait_stored(self, timeout: float) -> None:
        """Wait until every frame received so far is stored by the sink."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        self._waiters.append(entry)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.error is not None:
                    raise self.error
                if self.stored >= self.contiguous:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.receiver.endpoint}: {self.contiguous - self.stored} "
                        f"received frame(s) not stored {timeout:.1f} s after the "
                        "last one arrived (is the disk stalled?)"
                    )
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), 0.25)
        finally:
            self._waiters.remove(entry)

    def wait_blocking(self, timeout: float) -> bool:
        return self._done.wait(timeout)


#: Parts up to this size are received as bytes, larger ones as zmq.Frame.
SMALL_PART: Final = 8192
#: Default receive high-water mark (messages). Bounded, so a consumer slower
#: than the detector cannot grow without limit: PUSH senders then block, PUB
#: senders drop, and the gap is reported as missing frames.
DEFAULT_RCVHWM: Final = 4096


class _PassiveSeries:
    """The frames of the current series that passive runs have taken."""

    __slots__ = ("highest", "taken")

    def __init__(self) -> None:
        self.taken = FrameSet()
        self.highest = -1

    def take(self, frame: int) -> None:
        self.taken.add(frame)
        if frame > self.highest:
            self.highest = frame

    def restart(self) -> None:
        self.taken.clear()
        self.highest = -1


class _NullSink:
    def put(self, row: int, frame: Frame) -> None:
        return None

    def flush(self) -> None:
        return None


class StreamReceiver:
    """A dedicated thread receiving and decoding one stream endpoint.

    >>> rx = StreamReceiver("tcp://127.0.0.1:9999")
    >>> rx.start()                       # connects (and subscribes) now
    >>> run = rx.begin(expected=10, sink=my_sink, active=True)
    >>> ... arm the detector ...
    >>> await run.wait(stall_timeout=5)
    >>> rx.stop()
    """

    def __init__(
        self,
        endpoint: str,
        socket_type: SocketType = "sub",
        *,
        rcvhwm: int = DEFAULT_RCVHWM,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        batch: int = 512,
        backlog: int = 10_000,
    ) -> None:
        if socket_type not in ("sub", "pull"):
            raise ValueError(f"socket must be 'sub' or 'pull', not {socket_type!r}")
        self.endpoint = endpoint
        self.socket_type: SocketType = socket_type
        self.rcvhwm = rcvhwm
        self.batch = batch
        self._ctx = context or zmq.Context.instance()
        self.decoder = StreamDecoder()
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.messages = 0
        self.bytes = 0
        self._run: RunTracker | None = None
        self.last_header: HeaderMessage | None = None
        self.backlog_limit = backlog
        #: frames no run took yet (and the headers and series ends between
        #: them), for the next passive run
        self._backlog: deque[Frame | HeaderMessage | SeriesEndMessage] = deque()
        self._backlog_frames = 0
        self._passive = _PassiveSeries()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._socket_ready = threading.Event()
        self._start_error: BaseException | None = None

    # -- life cycle ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, connect_timeout: float | None = 5.0) -> None:
        """Start the thread; with ``connect_timeout``, wait for the TCP handshake
        (so a SUB's subscription reaches the publisher before the detector is
        armed) and raise :class:`StreamConnectError` if it does not happen."""
        if self.running:
            return
        # frames left from an interrupted acquisition must not reach the next
        self._backlog.clear()
        self._backlog_frames = 0
        self._passive.restart()
        self._stop.clear()
        self._connected.clear()
        self._socket_ready.clear()
        self._thread = threading.Thread(
            target=self._serve, name=f"xspress-rx {self.endpoint}", daemon=True
        )
        self._thread.start()
        self._socket_ready.wait(5)
        if self._start_error is not None:
            err, self._start_error = self._start_error, None
            self.stop()
            raise StreamConnectError(
                f"cannot open a {self.socket_type.upper()} socket on {self.endpoint}: "
                f"{err}"
            ) from err
        if connect_timeout is not None and not self._connected.wait(connect_timeout):
            self.stop()
            raise StreamConnectError(
                f"no connection to the detector stream at {self.endpoint} within "
                f"{connect_timeout} s (is the detector / simulator running, the "
                "address right, and port open in the firewall?)"
            )
        if connect_timeout is not None and self.socket_type == "sub":
            time.sleep(0.05)  # let the subscription travel after the handshake

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(10)
            if thread.is_alive():  # pragma: no cover - socket ops never block
                log.error("receiver thread for %s did not stop", self.endpoint)

    # -- runs --------------------------------------------------------------------------
    def begin(
        self,
        expected: int | None,
        sink: FrameSink | None = None,
        *,
        active: bool = True,
        row_offset: int = 0,
        on_progress: Callable[[int], None] | None = None,
    ) -> RunTracker:
        """Start attributing frames to a new run (call before arming)."""
        run = RunTracker(
            self,
            expected,
            sink if sink is not None else _NullSink(),
            active=active,
            row_offset=row_offset,
            on_progress=on_progress,
        )
        with self._lock:
            if self._run is not None:
                self._run.closed = True
            self._run = run
        return run

    def end(self, run: RunTracker) -> None:
        """Stop attributing frames to ``run``."""
        with self._lock:
            run.closed = True
            if self._run is run:
                self._run = None
        run._notify()  # wake its waiters: the run is over

    # -- thread ------------------------------------------------------------------------
    def _serve(self) -> None:
        ctx = self._ctx
        try:
            sock = ctx.socket(zmq.SUB if self.socket_type == "sub" else zmq.PULL)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
            sock.setsockopt(zmq.RCVBUF, 4 * 1024 * 1024)
            if self.socket_type == "sub":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
            )
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self._start_error = exc
            self._socket_ready.set()
            return
        self._socket_ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(50))
                if monitor in events:
                    self._on_monitor(monitor)
                self._drain(sock if sock in events else None)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    def _on_monitor(self, monitor: zmq.Socket[bytes]) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self._connected.is_set():
                    self.counts["reconnects"] += 1
                    log.warning("%s: stream reconnected", self.endpoint)
                self._connected.set()
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.counts["disconnects"] += 1
                log.warning("%s: stream disconnected (publisher gone?)", self.endpoint)

    def _keep(self, packet: Frame | HeaderMessage | SeriesEndMessage) -> None:
        """A frame no run wants yet (or a header or series end between such
        frames): keep it for the next passive run."""
        self._backlog.append(packet)
        if isinstance(packet, Frame):
            self._backlog_frames += 1
        while self._backlog_frames > self.backlog_limit:
            dropped = self._backlog.popleft()
            if not isinstance(dropped, Frame):
                continue
            self._backlog_frames -= 1
            self.counts["backlog_dropped"] += 1
            if self.counts["backlog_dropped"] == 1:
                log.warning(
                    "%s: more than %d frames arrived with no run to take them; "
                    "dropping the oldest",
                    self.endpoint,
                    self.backlog_limit,
                )

    def _offer(self, run: RunTracker, frame: Frame) -> bool:
        """``run._on_frame``; a sink failure fails the run, not this thread."""
        try:
            return run._on_frame(frame)
        except Exception as exc:  # the sink failed (disk full, file closed...)
            log.exception("%s: storing frame %d failed", self.endpoint, frame.frame)
            run._fail(exc)
            return True

    def _feed_backlog(self, run: RunTracker) -> None:
        items = list(self._backlog)
        self._backlog.clear()
        self._backlog_frames = 0
        if run.active:
            stale = sum(isinstance(item, Frame) for item in items)
            if stale:
                run.counts["stale"] += stale
                log.warning(
                    "%s: discarded %d frame(s) received before the run started",
                    self.endpoint,
                    stale,
                )
            return
        if run.header is None:
            run.header = self.last_header
        for i, item in enumerate(items):
            if run.done:
                for rest in items[i:]:
                    self._keep(rest)
                return
            if isinstance(item, HeaderMessage):
                run._on_header(item)
            elif isinstance(item, SeriesEndMessage):
                run._on_series_end()
            elif not self._offer(run, item):
                self._keep(item)

    def _drain(self, sock: zmq.Socket[bytes] | None) -> None:
        with self._lock:
            run = self._run
            fresh = run is not None and not run.backlog_fed
            if run is not None:
                run.backlog_fed = True
        if fresh and run is not None:
            self._feed_backlog(run)
        if sock is None:
            if run is not None:
                # a quiet poll: lets the sink store a partial block now
                try:
                    run._after_batch()
                except Exception as exc:  # the sink failed (e.g. disk full)
                    log.exception("%s: writing frames failed", self.endpoint)
                    run._fail(exc)
            return
        for _ in range(self.batch):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.messages += 1
            # large parts (spectra) stay zero-copy; small ones (JSON, metadata
            # pickle) as bytes, which the decoder's fast paths handle best
            message = [f if len(f) > SMALL_PART else f.bytes for f in frames]
            self.bytes += sum(len(f) for f in message)
            try:
                packets = self.decoder.feed(message)
            except OutOfSeriesError:
                # logged (once per streak) by the decoder's series tracker
                self.counts["outside_series"] += 1
                continue
            except ProtocolError as exc:
                self.counts["protocol_error"] += 1
                self.errors.append(str(exc))
                del self.errors[:-100]
                log.warning("%s: %s", self.endpoint, exc)
                continue
            except Exception as exc:  # a decoder bug must not end this thread
                self.counts["internal_error"] += 1
                self.errors.append(f"{type(exc).__name__}: {exc}")
                del self.errors[:-100]
                log.exception(
                    "%s: message %d could not be decoded (internal error, please "
                    "report it); the message is skipped",
                    self.endpoint,
                    self.messages,
                )
                continue
            for packet in packets:
                if isinstance(packet, Frame):
                    if run is not None and (run.active or not run.done):
                        if not self._offer(run, packet):
                            self._keep(packet)
                    else:
                        self._keep(packet)
                elif isinstance(packet, HeaderMessage):
                    self.last_header = packet
                    if run is not None and (run.active or not run.done):
                        run._on_header(packet)
                    else:
                        self._keep(packet)
                elif isinstance(packet, SeriesEndMessage):
                    if run is not None and (run.active or not run.done):
                        run._on_series_end()
                    else:
                        self._keep(packet)
        if run is not None:
            try:
                run._after_batch()
            except Exception as exc:  # the sink failed (e.g. disk full)
                log.exception("%s: writing frames failed", self.endpoint)
                run._fail(exc)
