"""Packets no run has taken yet, kept for the next passive run, bounded.

A passive detector's receiver runs between acquisitions: frames that arrive
while no run waits (and the headers and series ends between them) are kept
here, in order, so that the next step-scan point or fly scan can take them.
The backlog holds at most ``max_frames`` frames and ``max_bytes`` bytes; past
either, the oldest frames are dropped, counted, and the cap named once (with
how to raise it). It is emptied when the receiver stops (unstage).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from ..protocol import Frame, HeaderMessage, SeriesEndMessage

__all__ = ["DEFAULT_BACKLOG_BYTES", "DEFAULT_BACKLOG_FRAMES", "Backlog", "Held"]

log = logging.getLogger("ophyd_xspress.transport")

#: Frames and bytes kept for the next passive run while none is waiting.
DEFAULT_BACKLOG_FRAMES: Final = 10_000
DEFAULT_BACKLOG_BYTES: Final = 256 << 20
#: Bytes counted for a frame besides its spectra and metadata (the objects).
_OVERHEAD: Final = 1024


@dataclass(frozen=True, slots=True)
class Held:
    """A packet kept for the next run, with the series it belongs to."""

    packet: Frame | HeaderMessage | SeriesEndMessage
    series: int
    nbytes: int = 0
    #: When it was received (``time.monotonic()``).
    received_at: float = 0.0


def _frame_bytes(frame: Frame) -> int:
    raw = getattr(frame.metadata, "raw", b"")
    return int(frame.spectra.nbytes) + len(raw) + _OVERHEAD


class Backlog:
    """An ordered, byte- and frame-bounded queue of :class:`Held` packets
    (used by the receiver thread only)."""

    def __init__(
        self,
        endpoint: str,
        max_frames: int = DEFAULT_BACKLOG_FRAMES,
        max_bytes: int = DEFAULT_BACKLOG_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames = 0
        self.bytes = 0
        #: Frames dropped because the backlog was full.
        self.dropped = 0
        self._items: deque[Held] = deque()

    def hold(
        self, packet: Frame | HeaderMessage | SeriesEndMessage, series: int
    ) -> list[Held]:
        """Keep ``packet``; returns the old frames dropped to make room."""
        nbytes = _frame_bytes(packet) if isinstance(packet, Frame) else 0
        return self.keep(Held(packet, series, nbytes, time.monotonic()))

    def keep(self, held: Held) -> list[Held]:
        """Keep ``held``; returns the old frames dropped to make room."""
        if isinstance(held.packet, Frame):
            self.frames += 1
            self.bytes += held.nbytes
        self._items.append(held)
        dropped: list[Held] = []
        while self._items and (
            self.frames > self.max_frames or self.bytes > self.max_bytes
        ):
            old = self._items.popleft()
            if isinstance(old.packet, Frame):
                self.frames -= 1
                self.bytes -= old.nbytes
                dropped.append(old)
        if dropped:
            first = self.dropped == 0
            self.dropped += len(dropped)
            if first:
                log.warning(
                    "%s: frames arrive with no run to take them; this receiver "
                    "keeps at most %d frames / %d MiB for the next run "
                    "(StreamReceiver(backlog=..., backlog_bytes=...)) and drops "
                    "the oldest beyond that",
                    self.endpoint,
                    self.max_frames,
                    self.max_bytes >> 20,
                )
        return dropped

    def take_all(self) -> list[Held]:
        """Everything held, oldest first; the backlog is then empty."""
        items = list(self._items)
        self.clear()
        return items

    def clear(self) -> None:
        self._items.clear()
        self.frames = 0
        self.bytes = 0
