"""The simulator's data plane: a ZeroMQ PUB (or PUSH) socket and a REP live view.

Like the real device: PUB bound on an endpoint (default loopback, port 9999),
send high-water mark 50000 messages (past it, messages are dropped silently),
either framing, and a REP socket answering any request with the last frame as
``[json, raw]``. Every socket is used from exactly one thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

import zmq

from ..protocol import (
    Frame,
    Framing,
    HeaderMessage,
    Message,
    SeriesEndMessage,
    StreamEncoder,
)

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_SNDHWM", "LiveView", "StreamPublisher"]

log = logging.getLogger("ophyd_xspress.sim")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:9999"
DEFAULT_LIVE_ENDPOINT = "tcp://127.0.0.1:9998"
#: The real device's send high-water mark (messages).
DEFAULT_SNDHWM = 50_000


def _bind(sock: zmq.Socket[bytes], endpoint: str) -> str:
    """Bind, allowing port 0 / ``*`` for an ephemeral port; return the real endpoint."""
    if endpoint.startswith("tcp://") and endpoint.rsplit(":", 1)[-1] in ("0", "*"):
        host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
        port = sock.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{port}"
    sock.bind(endpoint)
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)


class StreamPublisher:
    """Sends encoded packets on a bound PUB/PUSH socket (single-threaded use)."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        framing: Framing = "multipart",
        socket_type: Literal["pub", "push"] = "pub",
        sndhwm: int = DEFAULT_SNDHWM,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.requested_endpoint = endpoint
        self.encoder = StreamEncoder(framing)
        self.socket_type = socket_type
        self.sndhwm = sndhwm
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None
        self.endpoint = ""
        self.messages_sent = 0

    @property
    def framing(self) -> Framing:
        return self.encoder.framing

    def open(self) -> str:
        sock = self._ctx.socket(zmq.PUB if self.socket_type == "pub" else zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            self.endpoint = _bind(sock, self.endpoint or self.requested_endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise OSError(
                f"cannot bind the simulator stream on {self.requested_endpoint}: {exc}"
            ) from exc
        self._sock = sock
        return self.endpoint

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def restart(self, timeout: float = 5.0) -> None:
        """Close and re-bind the same endpoint (a 'publisher restart' fault).

        ZeroMQ releases the port asynchronously after close, so the bind is
        retried until ``timeout``."""
        self.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.open()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def send_message(self, message: Message) -> None:
        if self._sock is None:
            raise RuntimeError("publisher is closed")
        if self.socket_type == "push":
            self._sock.send_multipart(message, copy=False)
        else:
            try:
                self._sock.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:  # HWM reached: the real device drops silently
                return
        self.messages_sent += 1

    def encode(self, packet: HeaderMessage | Frame | SeriesEndMessage) -> list[Message]:
        return self.encoder.encode(packet)

    def send(self, packet: HeaderMessage | Frame | SeriesEndMessage) -> None:
        for message in self.encoder.encode(packet):
            self.send_message(message)


class LiveView:
    """REP socket answering any request with the last frame ``[json, raw]``."""

    def __init__(
        self,
        endpoint: str = DEFAULT_LIVE_ENDPOINT,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self.requested_endpoint = endpoint
        self.endpoint = ""
        self._last: list[bytes] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def update(self, json_part: bytes, raw: bytes | memoryview) -> None:
        with self._lock:
            self._last = [json_part, bytes(raw)]

    def start(self) -> str:
        self._thread = threading.Thread(
            target=self._serve, name="xspress-sim-liveview", daemon=True
        )
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise OSError(
                f"cannot bind the live view on {self.requested_endpoint}"
            ) from (self._error)
        return self.endpoint

    def _serve(self) -> None:
        sock = self._ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            self.endpoint = _bind(sock, self.requested_endpoint)
        except zmq.ZMQError as exc:
            self._error = exc
            sock.close(linger=0)
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                sock.recv_multipart()
                with self._lock:
                    reply = self._last
                sock.send_multipart(reply if reply is not None else [b"{}", b""])
        finally:
            sock.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
