"""What a benchmark invocation runs: channel counts and frames for each part.

Full run (``n`` = 100,000): decode and the raw ceiling at 1/4/8/36/64
channels; end-to-end at 4, 8 and 36 channels with ``n`` frames (the issue's
targets are for 100,000), at 64 with ``n / 2`` (105 GB uncompressed otherwise);
compression at 4 channels with ``n`` frames and at 36 with ``n / 5`` (gzip
runs at a few hundred frames/s there). ``--quick`` (``n`` = 20,000): the same
decode and ceiling rows, end-to-end at 4 and 8 channels with ``n`` frames and
one 36-channel row with ``n / 2``, compression at 4 channels with ``n / 2``.

A bare receive loop is sized to carry about as many bytes as 8 channels x
``n`` frames (a few seconds), at least 1,000 frames. ``--frames`` sets every
run's length (for trying the code at tiny sizes); ``--channels`` the channel
counts of every part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["RSS_FRAMES", "Plan"]

#: Run lengths of the peak-RSS series (``--rss``).
RSS_FRAMES: Final = (10_000, 100_000, 1_000_000)


@dataclass(frozen=True)
class Plan:
    quick: bool = False
    #: Every run this many frames (None: the part's own sizes).
    frames: int | None = None
    #: Every part at these channel counts (None: the part's own).
    channels: tuple[int, ...] | None = None
    #: End-to-end runs per channel count.
    repeat: int = 1

    @property
    def n(self) -> int:
        return self.frames or (20_000 if self.quick else 100_000)

    def _pick(self, default: tuple[int, ...]) -> tuple[int, ...]:
        return self.channels if self.channels is not None else default

    @property
    def decode_channels(self) -> tuple[int, ...]:
        return self._pick((1, 4, 8, 36, 64))

    @property
    def zmq_channels(self) -> tuple[int, ...]:
        return self._pick((1, 4, 8, 36, 64))

    @property
    def end_to_end_channels(self) -> tuple[int, ...]:
        return self._pick((4, 8, 36) if self.quick else (4, 8, 36, 64))

    @property
    def compression_channels(self) -> tuple[int, ...]:
        return self._pick((4,) if self.quick else (4, 36))

    def decode_frames(self) -> int:
        return self.frames or self.n // 2

    def raw_frames(self, channels: int) -> int:
        n = self.n
        return max(min(n, 1000), n * 8 // max(8, channels))

    def end_to_end_frames(self, channels: int) -> int:
        if self.frames:
            return self.frames
        if channels <= 8 or (channels <= 36 and not self.quick):
            return self.n
        return self.n // 2

    def compression_frames(self, channels: int) -> int:
        if self.frames:
            return self.frames
        if self.quick:
            return self.n // 2
        return self.n if channels <= 8 else self.n // 5
