"""Receive the detector stream on a dedicated thread and hand frames to runs.

:class:`StreamReceiver` owns one SUB (or PULL) socket, connected before the
detector is armed, a :class:`~ophyd_xspress.protocol.StreamDecoder`, and a
backlog of packets no run has taken yet. Each received message goes

    socket -> decoder (packets, series verdicts, anomalies) -> current run
           -> its sink

on the receiver thread. The decoder's anomalies (missing, repeated, late
frames...) are logged here, once each, with the endpoint. A run is announced
with :meth:`StreamReceiver.begin`, which returns a
:class:`~ophyd_xspress.transport.Run`: *active* runs (we arm the detector)
take frames of their own series only, *passive* runs (someone else arms) take
what comes, with the row rules of :mod:`ophyd_xspress.protocol._rows`.

Memory is bounded in bytes wherever the peer controls a size: the socket
refuses a part larger than ``max_message_bytes`` (ZeroMQ's ``MAXMSGSIZE``:
the peer is disconnected before anything is allocated) and a message of more
than :data:`MAX_PARTS` parts (the extra parts are freed as they are read); the
backlog holds at most ``backlog_frames`` frames and ``backlog_bytes`` bytes
(oldest dropped first, counted and logged with the cap), and is emptied when
the receiver stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Literal

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..protocol import (
    HeaderMessage,
    Packet,
    StreamDecoder,
)
from ._backlog import DEFAULT_BACKLOG_BYTES, DEFAULT_BACKLOG_FRAMES, Backlog
from ._dispatch import RunDispatcher
from ._message import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RCVHWM,
    MAX_PARTS,
    Part,
    decode_message,
    log_anomalies,
    open_stream_socket,
    rcvhwm_for,
    receive_message,
)
from ._run import Run
from ._sink import DurableRows, FrameSink

__all__ = [
    "DEFAULT_BACKLOG_BYTES",
    "DEFAULT_BACKLOG_FRAMES",
    "DEFAULT_RCVHWM",
    "MAX_PARTS",
    "StreamConnectError",
    "StreamReceiver",
]

log = logging.getLogger("ophyd_xspress.transport")

SocketType = Literal["sub", "pull"]


class StreamConnectError(ConnectionError):
    """The stream endpoint could not be reached in time."""


class StreamReceiver:
    """A dedicated thread receiving and decoding one stream endpoint.

    ``frame_bytes`` (the spectra of one frame, if known) sets the socket's
    high-water mark so that its queue holds at most about 256 MiB of frames
    (:func:`rcvhwm_for`); ``rcvhwm`` sets it directly.

    >>> rx = StreamReceiver("tcp://127.0.0.1:9999")
    >>> rx.start()                       # connects (and subscribes) now
    >>> run = rx.begin(expected=10, sink=my_sink, active=True)
    >>> ... arm the detector ...
    >>> await run.wait(stall_timeout=5)
    >>> rx.end(run); rx.stop()
    """

    def __init__(
        self,
        endpoint: str,
        socket_type: SocketType = "sub",
        *,
        rcvhwm: int | None = None,
        frame_bytes: int | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        batch: int = 512,
        backlog: int = DEFAULT_BACKLOG_FRAMES,
        backlog_bytes: int = DEFAULT_BACKLOG_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if socket_type not in ("sub", "pull"):
            raise ValueError(f"socket must be 'sub' or 'pull', not {socket_type!r}")
        self.endpoint = endpoint
        self.socket_type: SocketType = socket_type
        self.rcvhwm = rcvhwm
        #: The size of one frame's spectra, if known (sets the high-water mark).
        self.frame_bytes = frame_bytes
        self.batch = batch
        self.max_message_bytes = max_message_bytes
        self._ctx = context or zmq.Context.instance()
        self.decoder = StreamDecoder()
        self.counts: Counter[str] = Counter()
        self.errors: deque[str] = deque(maxlen=100)
        self.messages = 0
        self.bytes = 0
        self._backlog = Backlog(endpoint, backlog, backlog_bytes)
        self._runs = RunDispatcher(endpoint, self._backlog, self.counts)
        self._lifecycle = threading.Lock()  # start / stop: one thread at most
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._socket_ready = threading.Event()
        self._start_error: BaseException | None = None

    # -- life cycle ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def backlog_size(self) -> tuple[int, int]:
        """Frames and bytes held for the next run."""
        return self._backlog.frames, self._backlog.bytes

    def start(self, connect_timeout: float | None = 5.0) -> None:
        """Start the thread; with ``connect_timeout``, wait for the TCP handshake
        (so a SUB's subscription reaches the publisher before the detector is
        armed) and raise :class:`StreamConnectError` if it does not happen."""
        with self._lifecycle:
            if self.running:
                return
            self._runs.reset()
            self._stop.clear()
            self._connected.clear()
            self._socket_ready.clear()
            self._start_error = None
            self._thread = threading.Thread(
                target=self._serve, name=f"xspress-rx {self.endpoint}", daemon=True
            )
            self._thread.start()
            self._socket_ready.wait(5)
            problem = self._start_problem(connect_timeout)
            if problem is not None:
                self._halt()
                raise problem
        if connect_timeout is not None and self.socket_type == "sub":
            time.sleep(0.05)  # let the subscription travel after the handshake

    def _start_problem(
        self, connect_timeout: float | None
    ) -> StreamConnectError | None:
        if self._start_error is not None:
            err = self._start_error
            exc = StreamConnectError(
                f"cannot open a {self.socket_type.upper()} socket on {self.endpoint}: "
                f"{err}"
            )
            exc.__cause__ = err
            return exc
        if connect_timeout is not None and not self._connected.wait(connect_timeout):
            return StreamConnectError(
                f"no connection to the detector stream at {self.endpoint} within "
                f"{connect_timeout} s (is the detector / simulator running, the "
                "address right, and port open in the firewall?)"
            )
        return None

    def stop(self) -> None:
        """Stop the thread, close the socket and drop the backlog."""
        with self._lifecycle:
            self._halt()

    def _halt(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(10)
            if thread.is_alive():  # pragma: no cover - socket ops never block
                log.error("receiver thread for %s did not stop", self.endpoint)
        self._thread = None
        self._runs.reset()

    # -- runs --------------------------------------------------------------------------
    @property
    def last_header(self) -> HeaderMessage | None:
        """The last series header received."""
        return self._runs.last_header

    def begin(
        self,
        expected: int | None,
        sink: FrameSink | None = None,
        *,
        active: bool = True,
        row_offset: int = 0,
        durable: DurableRows | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Run:
        """Start handing frames to a new run (call before arming). ``durable``:
        the rows the sink has stored for good, when it stores asynchronously."""
        return self._runs.begin(
            expected,
            sink,
            active=active,
            row_offset=row_offset,
            durable=durable,
            on_progress=on_progress,
        )

    def end(self, run: Run) -> None:
        """Stop handing frames to ``run``."""
        self._runs.end(run)

    # -- thread ------------------------------------------------------------------------
    def _open_socket(self) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        sock = open_stream_socket(
            self._ctx,
            self.socket_type,
            rcvhwm=self.queue_messages,
            max_message_bytes=self.max_message_bytes,
        )
        monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        sock.connect(self.endpoint)
        return sock, monitor

    @property
    def queue_messages(self) -> int:
        """The socket's receive high-water mark (messages it may queue)."""
        if self.rcvhwm is not None:
            return self.rcvhwm
        if self.frame_bytes is not None:
            return rcvhwm_for(self.frame_bytes)
        return DEFAULT_RCVHWM

    def _serve(self) -> None:
        try:
            sock, monitor = self._open_socket()
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

    def _receive(self, sock: zmq.Socket[bytes]) -> list[Part] | None:
        """One message, or None when there is none; empty when it was refused
        (see :func:`~ophyd_xspress.transport.receive_message`)."""
        received = receive_message(sock)
        if received is None:
            return None
        self.messages += 1
        self.bytes += received.nbytes
        if not received.refused:
            return received.parts
        self.counts["protocol_error"] += 1
        text = received.refusal(self.messages)
        self.errors.append(text)
        log.warning("%s: %s", self.endpoint, text)
        return []

    def _decode(self, message: list[Part]) -> list[Packet]:
        """Decode one message; log its anomalies once; never raise."""
        decoded = decode_message(self.decoder, message)
        log_anomalies(log, self.endpoint, decoded.anomalies)
        for anomaly in decoded.anomalies:
            if anomaly.kind == "shared_stream":
                self._runs.hint(
                    "frames are being taken by another consumer of this PUSH "
                    "stream, or the publisher drops them (see the warning "
                    f"about series {anomaly.series})"
                )
        exc = decoded.error
        if exc is None:
            return decoded.packets
        if decoded.internal:  # a decoder bug must not end this thread
            self.counts["internal_error"] += 1
            self.errors.append(f"{type(exc).__name__}: {exc}")
            log.error(
                "%s: message %d could not be decoded (internal error, please "
                "report it); the message is skipped",
                self.endpoint,
                self.messages,
                exc_info=exc,
            )
            return []
        self.counts["protocol_error"] += 1
        self.errors.append(str(exc))
        if not decoded.anomalies:  # not already told as an anomaly
            log.warning("%s: %s", self.endpoint, exc)
        return []

    def _drain(self, sock: zmq.Socket[bytes] | None) -> None:
        run = self._runs.next_batch()
        if sock is not None:
            for _ in range(self.batch):
                message = self._receive(sock)
                if message is None:
                    break
                if not message:
                    continue
                packets = self._decode(message)
                # the run may have ended (and the next begun) on another
                # thread meanwhile: each message goes to the run current now
                now = self._runs.next_batch()
                if now is not run:
                    if run is not None:
                        run.after_batch()
                    run = now
                current = self.decoder.tracker.current
                series = current.index if current is not None else -1
                self._runs.deliver(packets, run, series)
        if run is not None:
            # after a batch, or a quiet poll: lets the sink store a partial block
            run.after_batch()
