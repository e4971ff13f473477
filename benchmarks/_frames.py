"""Frames the benchmarks send and decode: the simulator's, at any channel count.

The simulator makes up to its own channel limit; above it (a 128-channel
stream, say) each frame's channels repeat the simulator's, every group of them
taken from another of its frames, so no two channels of a frame are the same
and a compressor finds no repeats the real detector would not send.
"""

from __future__ import annotations

import re
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ophyd_xspress._constants import SIM_MAX_CHANNELS
from ophyd_xspress.protocol import (
    Frame,
    Framing,
    HeaderMessage,
    RoiWindows,
    StreamEncoder,
    make_frame,
)
from ophyd_xspress.sim import SimulatedXspress3

__all__ = [
    "FRAME_KEY",
    "FRAME_RE",
    "Messages",
    "encoded",
    "frame_channels",
    "renumber",
    "simulated",
    "split_capture",
]

#: The frame number in an image header's JSON (either framing's spacing).
FRAME_RE: Final = re.compile(rb'"frame": ?\d+')
#: What a renumbered header puts before the digits.
FRAME_KEY: Final = b'"frame": '

#: One ZeroMQ message: its parts.
Messages = list[list[bytes]]


def renumber(head: bytes, n: int) -> bytes:
    """An image header's JSON with frame number ``n``."""
    key = FRAME_KEY if FRAME_KEY in head else b'"frame":'
    return FRAME_RE.sub(key + str(n).encode(), head, count=1)


def split_capture(messages: Messages) -> tuple[list[bytes], list[Messages]]:
    """A capture's header message and its frames' message groups (up to
    ``series_end``): one group per frame, its image message first."""
    header = messages[0]
    groups: list[Messages] = []
    current: Messages = []
    for m in messages[1:]:
        if b'"series_end"' in m[0][:40]:
            break
        if b'"image"' in m[0][:40] and current:
            groups.append(current)
            current = []
        current.append(m)
    if current:
        groups.append(current)
    return header, groups


def frame_channels(head: bytes) -> int:
    """The channel count an image header's JSON gives (``shape[0]``)."""
    import json

    return int(json.loads(head)["shape"][0])


def simulated(
    channels: int, count: int, framing: Framing = "multipart"
) -> tuple[HeaderMessage, list[Frame]]:
    """The header and ``count`` distinct frames (series 0, frames 0..) of the
    simulator at its defaults (sample, 2e5 counts/s, 4096 bins), with
    ``channels`` channels (any number: see the module's docstring)."""
    base = min(channels, SIM_MAX_CHANNELS)
    det = SimulatedXspress3(base, framing=framing, endpoint="tcp://127.0.0.1:0")
    groups = -(-channels // base)
    pool = [det.expected_frame(0, i) for i in range(count + groups - 1)]
    header = det.header()
    if base == channels:
        return header, pool[:count]
    take = [c % base for c in range(channels)]
    if header.limits is not None:
        windows = np.take(det.windows, take, axis=1)  # (windows, channels, 2)
        limits = RoiWindows.from_wire(windows.tolist())
        header = header.model_copy(update={"limits": limits})
    frames = [_widened(i, pool[i : i + groups], base, channels) for i in range(count)]
    return header, frames


def _widened(number: int, sources: list[Frame], base: int, channels: int) -> Frame:
    """Frame ``number`` whose channel group ``g`` is ``sources[g]``'s."""

    def join(arrays: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
        return np.concatenate(arrays, axis=-1)[..., :channels]

    spectra = np.concatenate([f.spectra for f in sources])[:channels]
    metadata: dict[str, npt.NDArray[Any]] = {}
    for name in sources[0].metadata:
        arrays = [np.asarray(f.metadata[name]) for f in sources]
        per_channel = arrays[0].ndim > 0 and arrays[0].shape[-1] == base
        metadata[name] = join(arrays) if per_channel else arrays[0]
    return make_frame(number, spectra, metadata, exptime=sources[0].info.exptime)


def encoded(
    channels: int, count: int, framing: Framing = "multipart"
) -> tuple[Messages, list[Messages]]:
    """The header's messages and each of ``count`` simulated frames' messages,
    as bytes, the way :func:`simulated` makes them."""
    header, frames = simulated(channels, count, framing)
    enc = StreamEncoder(framing)
    head = [[bytes(p) for p in m] for m in enc.encode(header)]
    pool = [[[bytes(p) for p in m] for m in enc.encode_frame(f)] for f in frames]
    return head, pool
