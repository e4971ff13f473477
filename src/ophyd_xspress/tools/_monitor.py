"""Live statistics of a detector stream (``ophyd-xspress listen``).

:class:`StreamMonitor` connects a SUB (or PULL) socket, decodes every message with
the protocol core and keeps running figures: frames and MB received, frame rate,
missing / repeated / out-of-order frames, per-channel OCR, ICR and dead time of
the latest frames. It never arms anything: it works against the real device's
PUB socket and the simulator alike.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import zmq

from .protocol import (
    Frame,
    HeaderMessage,
    OutOfSeriesError,
    ProtocolError,
    SeriesEndMessage,
    StreamDecoder,
    dead_time_from_scalers,
)

__all__ = ["StreamMonitor"]


@dataclass
class StreamMonitor:
    endpoint: str
    socket: Literal["sub", "pull"] = "sub"
    window: float = 2.0  # seconds over which rates are averaged
    decoder: StreamDecoder = field(default_factory=StreamDecoder)
    frames: int = 0
    bytes: int = 0
    messages: int = 0
    headers: int = 0
    series_ends: int = 0
    errors: int = 0
    outside_series: int = 0
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)
    _recent: deque[tuple[float, int]] = field(default_factory=deque)
    _ocr: Any = None
    _icr: Any = None
    _dead: Any = None
    _channels: int = 0
    _last_frame: int | None = None

    def __post_init__(self) -> None:
        ctx = zmq.Context.instance()
        self._sock = ctx.socket(zmq.SUB if self.socket == "sub" else zmq.PULL)
        self._sock.setsockopt(zmq.LINGER, 0)
        if self.socket == "sub":
            self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(self.endpoint)

    def close(self) -> None:
        self._sock.close(linger=0)

    def poll(self, timeout: float) -> int:
        """Receive for up to ``timeout`` seconds; returns frames decoded."""
        deadline = time.monotonic() + timeout
        got = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000)):
                return got
            while True:
                try:
                    message = self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                got += self._feed(message)

    def _feed(self, message: list[zmq.Frame]) -> int:
        self.messages += 1
        self.bytes += sum(len(f.buffer) for f in message)
        try:
            packets = self.decoder.feed(message)
        except OutOfSeriesError as exc:
            # joined mid-series: still a frame of the stream, count its figures
            self.outside_series += 1
            frame = getattr(exc, "frame", None)
            if isinstance(frame, Frame):
                self._on_frame(frame)
                return 1
            return 0
        except ProtocolError as exc:
            self.errors += 1
            self.last_error = str(exc)
            return 0
        n = 0
        for packet in packets:
            if isinstance(packet, Frame):
                n += 1
                self._on_frame(packet)
            elif isinstance(packet, HeaderMessage):
                self.headers += 1
            elif isinstance(packet, SeriesEndMessage):
                self.series_ends += 1
        return n

    def _on_frame(self, frame: Frame) -> None:
        now = time.monotonic()
        self.frames += 1
        self._recent.append((now, frame.spectra.nbytes))
        while self._recent and now - self._recent[0][0] > self.window:
            self._recent.popleft()
        dt = dead_time_from_scalers(frame.metadata, warn=False)
        self._ocr, self._icr, self._dead = dt.ocr, dt.icr, dt.dead_percent
        self._channels = frame.channels
        self._last_frame = frame.frame

    def summary(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        if len(self._recent) >= 2:
            span = max(self._recent[-1][0] - self._recent[0][0], 1e-9)
            rate = (len(self._recent) - 1) / span
            mbps = sum(b for _, b in list(self._recent)[1:]) / span / 1e6
        else:
            rate = mbps = 0.0
        counts = self.decoder.tracker.counts

        def per_channel(a: Any) -> list[float | None]:
            if a is None:
                return []
            return [float(x) if np.isfinite(x) else None for x in a]

        return {
            "endpoint": self.endpoint,
            "elapsed_s": elapsed,
            "messages": self.messages,
            "frames": self.frames,
            "megabytes": self.bytes / 1e6,
            "frame_rate_hz": rate,
            "mb_per_s": mbps,
            "last_frame": self._last_frame,
            "headers": self.headers,
            "series_ends": self.series_ends,
            "missing": int(counts["missing"]),
            "repeated": int(counts["repeated"]),
            "out_of_order": int(counts["out_of_order"]),
            "frames_outside_series": self.outside_series,
            "resync": int(counts["resync"]),
            "protocol_errors": self.errors,
            "last_error": self.last_error,
            "channels": self._channels,
            "ocr_cps": per_channel(self._ocr),
            "icr_cps": per_channel(self._icr),
            "dead_time_percent": per_channel(self._dead),
        }
