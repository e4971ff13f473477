"""Decode throughput of the protocol core: ``StreamDecoder.feed`` alone.

The message stream is built before the clock starts (pooled frames, each
image header renumbered so the series stays clean); the timed loop is only
``feed`` and the count of the frames it yields.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _frames import Messages, encoded, frame_channels, renumber, split_capture

from ophyd_xspress.protocol import Frame, Framing, StreamDecoder

__all__ = ["bench_decode_capture", "bench_decode_sim"]


def _timed_decode(
    header: list[bytes], stream: Messages, n_frames: int
) -> tuple[StreamDecoder, float]:
    """Feed ``header`` then ``stream``; the decoder and the seconds the
    stream took. Raises if it did not yield ``n_frames`` frames."""
    dec = StreamDecoder()
    dec.feed(header)
    t0 = time.perf_counter()
    frames = 0
    for m in stream:
        for p in dec.feed(m):
            frames += isinstance(p, Frame)
    dt = time.perf_counter() - t0
    if frames != n_frames:
        raise RuntimeError(f"decoded {frames} frames of {n_frames} sent")
    return dec, dt


def _looped(groups: list[Messages], n_frames: int) -> Messages:
    """``n_frames`` frames' messages: ``groups`` in turn, renumbered 0.."""
    stream: Messages = []
    for i in range(n_frames):
        g = groups[i % len(groups)]
        stream.append([renumber(g[0][0], i), *g[0][1:]])
        stream.extend(g[1:])
    return stream


def _row(
    source: str, framing: str, channels: int, n: int, nbytes: int, dt: float
) -> dict[str, Any]:
    return {
        "test": "decode",
        "source": source,
        "framing": framing,
        "channels": channels,
        "frames": n,
        "frames_per_s": n / dt,
        "mb_per_s": nbytes / dt / 1e6,
        "us_per_frame": dt / n * 1e6,
    }


def bench_decode_capture(path: Path, n_frames: int) -> dict[str, Any]:
    """A real capture (``tools.read_capture``), looped to ``n_frames``."""
    from ophyd_xspress.tools import read_capture

    header, groups = split_capture(list(read_capture(path)))
    stream = _looped(groups, n_frames)
    nbytes = sum(len(p) for m in stream for p in m)
    dec, dt = _timed_decode(header, stream, n_frames)
    if dec.tracker.counts:
        raise RuntimeError(f"{path.name}: anomalies {dict(dec.tracker.counts)}")
    channels = frame_channels(groups[0][0][0])
    return _row(path.name, str(dec.framing), channels, n_frames, nbytes, dt)


def bench_decode_sim(channels: int, framing: Framing, n_frames: int) -> dict[str, Any]:
    """16 simulated frames of ``channels`` channels, looped to ``n_frames``."""
    header, pool = encoded(channels, 16, framing)
    stream = _looped(pool, n_frames)
    nbytes = sum(len(p) for m in stream for p in m)
    _, dt = _timed_decode(header[0], stream, n_frames)
    return _row("simulated", framing, channels, n_frames, nbytes, dt)
