"""Live statistics of a detector stream (``ophyd-xspress listen``).

:class:`StreamMonitor` takes each message the way the receiver does (a socket
with the stream's limits, :func:`~ophyd_xspress.transport.receive_message`,
:func:`~ophyd_xspress.transport.decode_message`) and keeps running figures:
frames and MB received, frame rate, per-channel OCR, ICR and dead time of the
latest frame. The frame bookkeeping (missing, repeated, out-of-order frames,
frames outside any series, resynchronisations) is the series tracker's: the
summary reads ``decoder.tracker.counts``. It never arms anything, so it works
against the real device's PUB socket and the simulator alike, and it logs
nothing: each anomaly goes to ``on_anomalies`` when one is given (``listen
-v`` logs them there).

>>> with StreamMonitor("tcp://127.0.0.1:9999") as monitor:
...     monitor.poll(1.0)
...     monitor.summary()["frame_rate_hz"]
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
import zmq

from ..protocol import (
    Anomaly,
    DeadTime,
    Frame,
    HeaderMessage,
    SeriesEndMessage,
    StrayFrame,
    StreamDecoder,
    dead_time_from_scalers,
)
from ..transport import Received, decode_message, open_stream_socket, receive_message

__all__ = ["StreamMonitor"]


def _per_channel(values: npt.NDArray[np.float64] | None) -> list[float | None]:
    if values is None:
        return []
    return [float(x) if np.isfinite(x) else None for x in values]


class StreamMonitor:
    """Running figures of one stream endpoint (see the module docstring).

    ``window``: seconds over which the frame rate and throughput are averaged.
    """

    def __init__(
        self,
        endpoint: str,
        socket: Literal["sub", "pull"] = "sub",
        *,
        window: float = 2.0,
        on_anomalies: Callable[[Sequence[Anomaly]], None] | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.window = window
        self.on_anomalies = on_anomalies
        self.decoder = StreamDecoder()
        self.messages = 0
        self.bytes = 0
        self.frames = 0
        self.headers = 0
        self.series_ends = 0
        self.errors = 0
        self.last_error = ""
        self.started = time.monotonic()
        self._recent: deque[tuple[float, int]] = deque()
        self._dead_time: DeadTime | None = None  # of the latest frame
        self._channels = 0
        self._last_frame: int | None = None
        ctx = context or zmq.Context.instance()
        self._sock = open_stream_socket(ctx, socket)
        self._sock.connect(endpoint)

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def poll(self, timeout: float) -> int:
        """Receive for up to ``timeout`` seconds; returns frames decoded."""
        deadline = time.monotonic() + timeout
        got = 0
        while (left := deadline - time.monotonic()) > 0:
            received = receive_message(self._sock)
            if received is not None:
                got += self._on_message(received)
            elif not self._sock.poll(max(1, int(left * 1000))):
                break
        return got

    def _on_message(self, received: Received) -> int:
        self.messages += 1
        self.bytes += received.nbytes
        if received.refused:
            self._on_error(received.refusal(self.messages))
            return 0
        decoded = decode_message(self.decoder, received.parts)
        if decoded.anomalies and self.on_anomalies is not None:
            self.on_anomalies(decoded.anomalies)
        exc = decoded.error
        if exc is not None:
            self._on_error(
                f"{type(exc).__name__}: {exc}" if decoded.internal else str(exc)
            )
            return 0
        frames = 0
        for packet in decoded.packets:
            match packet:
                case StrayFrame():
                    # joined mid-series: still a frame of the stream (the
                    # tracker counts it as outside any series)
                    frames += 1
                    self._on_frame(packet.frame)
                case Frame():
                    frames += 1
                    self._on_frame(packet)
                case HeaderMessage():
                    self.headers += 1
                case SeriesEndMessage():
                    self.series_ends += 1
        return frames

    def _on_error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text

    def _on_frame(self, frame: Frame) -> None:
        now = time.monotonic()
        self.frames += 1
        self._recent.append((now, frame.spectra.nbytes))
        while self._recent and now - self._recent[0][0] > self.window:
            self._recent.popleft()
        self._dead_time = dead_time_from_scalers(frame.metadata, warn=False)
        self._channels = frame.channels
        self._last_frame = frame.frame

    def _rates(self) -> tuple[float, float]:
        """Frames per second and MB/s over the last ``window`` seconds."""
        if len(self._recent) < 2:
            return 0.0, 0.0
        span = max(self._recent[-1][0] - self._recent[0][0], 1e-9)
        rate = (len(self._recent) - 1) / span
        mbps = sum(b for _, b in list(self._recent)[1:]) / span / 1e6
        return rate, mbps

    def summary(self) -> dict[str, Any]:
        """The figures so far, as plain data (``listen --json`` prints it)."""
        rate, mbps = self._rates()
        tracker = self.decoder.tracker
        counts = tracker.counts
        # the open series' gaps count now, not only when it ends
        current = tracker.current
        open_missing = current.missing_count if current and not current.closed else 0
        dead = self._dead_time
        return {
            "endpoint": self.endpoint,
            "elapsed_s": max(time.monotonic() - self.started, 1e-9),
            "messages": self.messages,
            "frames": self.frames,
            "megabytes": self.bytes / 1e6,
            "frame_rate_hz": rate,
            "mb_per_s": mbps,
            "last_frame": self._last_frame,
            "headers": self.headers,
            "series_ends": self.series_ends,
            "missing": int(counts["missing"]) + open_missing,
            "shared_stream": bool(counts["shared_stream"]),
            "repeated": int(counts["repeated"]),
            "out_of_order": int(counts["out_of_order"]),
            "frames_outside_series": int(counts["frame_outside_series"]),
            "resync": int(counts["resync"]),
            "protocol_errors": self.errors,
            "last_error": self.last_error,
            "channels": self._channels,
            "ocr_cps": _per_channel(dead.ocr if dead else None),
            "icr_cps": _per_channel(dead.icr if dead else None),
            "dead_time_percent": _per_channel(dead.dead_percent if dead else None),
        }
