"""Fixtures for the protocol-core tests: the two real captures and synthetic frames.

The captures live outside the repository, in ``../shared/data/xspress3/`` next to
the checkout (or wherever ``XSPRESS_SHARED_DATA`` points). Tests that need them
are skipped, with the reason, when they are absent.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from ophyd_xspress.protocol import (
    CLOCK_HZ,
    DEFAULT_SCALER_NAMES,
    Frame,
    StreamDecoder,
    make_frame,
)
from ophyd_xspress.tools import read_capture

DUMP_NAME = "xspress3-dump.cbors"
MULTIPART_NAME = "xspress3-multipart.cbors"

#: 0.1 s frames with 100 ns latency: int((0.1 - 100e-9 - 25e-9) * 80e6)
SYNTHETIC_CLOCK_TICKS = 7_999_990
SYNTHETIC_EXPTIME = 0.099999875


def shared_data_dir() -> Path:
    """Where the real captures are: ``$XSPRESS_SHARED_DATA`` or ``../shared/...``."""
    env = os.environ.get("XSPRESS_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "xspress3"


@functools.cache
def _load(name: str) -> tuple[tuple[bytes, ...], ...] | None:
    path = shared_data_dir() / name
    if not path.is_file():
        return None
    return tuple(tuple(message) for message in read_capture(path))


def skip_reason(name: str) -> str:
    return (
        f"real capture {name} not found in {shared_data_dir()} "
        "(set XSPRESS_SHARED_DATA to the folder holding the .cbors files)"
    )


def load_capture(name: str) -> list[list[bytes]]:
    """A fresh (mutable) copy of a capture's messages, or skip the test."""
    messages = _load(name)
    if messages is None:
        pytest.skip(skip_reason(name))
    return [list(message) for message in messages]


@pytest.fixture
def dump_capture() -> list[list[bytes]]:
    """The legacy-framing capture: 62 single-part messages (20 frames)."""
    return load_capture(DUMP_NAME)


@pytest.fixture
def multipart_capture() -> list[list[bytes]]:
    """The multipart-framing capture: 7 messages (header, 5 frames, series_end)."""
    return load_capture(MULTIPART_NAME)


@pytest.fixture(scope="session")
def dump_capture_shared() -> tuple[tuple[bytes, ...], ...]:
    """Read-only, session-wide copy (for hypothesis tests, which must not use
    function-scoped fixtures)."""
    messages = _load(DUMP_NAME)
    if messages is None:
        pytest.skip(skip_reason(DUMP_NAME))
    return messages


@pytest.fixture(scope="session")
def multipart_capture_shared() -> tuple[tuple[bytes, ...], ...]:
    messages = _load(MULTIPART_NAME)
    if messages is None:
        pytest.skip(skip_reason(MULTIPART_NAME))
    return messages


def decode_all(
    messages: Sequence[Sequence[bytes]], decoder: StreamDecoder | None = None
) -> tuple[StreamDecoder, list[object]]:
    """Feed every message to a decoder, then ``finish()``; return all packets."""
    decoder = decoder if decoder is not None else StreamDecoder()
    packets: list[object] = []
    for message in messages:
        packets.extend(decoder.feed(message))
    decoder.finish()
    return decoder, packets


def synthetic_frames(
    n_frames: int,
    channels: int = 4,
    bins: int = 4096,
    *,
    seed: int = 1234,
    first_frame: int = 0,
    window_counts: bool = False,
    max_count: int = 40,
) -> list[Frame]:
    """Frames with random uint32 spectra and scalers consistent with them.

    ``all_good`` is each spectrum's sum, ``all_events >= all_good``,
    ``clock_ticks == total_ticks``, ``dead_time_correction`` follows the
    event-width formula and ``output_count_rate`` carries the device's units bug
    (``all_good / (clock_ticks * 80e6)``), exactly as the real stream does.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_frames):
        spectra = rng.integers(0, max_count, size=(channels, bins), dtype=np.uint32)
        all_good = spectra.sum(axis=1, dtype=np.uint64).astype(np.uint32)
        all_events = all_good + rng.integers(0, 50, size=channels, dtype=np.uint32)
        clock_ticks = np.full(channels, SYNTHETIC_CLOCK_TICKS, dtype=np.uint32)
        reset_ticks = rng.integers(0, 200_000, size=channels, dtype=np.uint32)
        event_width = np.full(channels, 6, dtype=np.int32)
        dead = all_events.astype(np.float64) * 7.0 + reset_ticks
        dtc = clock_ticks / (clock_ticks - dead)
        metadata = {
            "output_count_rate": all_good / (clock_ticks * CLOCK_HZ),
            "all_events": all_events,
            "all_good": all_good,
            "clock_ticks": clock_ticks,
            "total_ticks": clock_ticks.copy(),
            "reset_ticks": reset_ticks,
            "event_width": event_width,
            "dead_time_correction": dtc,
        }
        assert tuple(metadata) == DEFAULT_SCALER_NAMES
        if window_counts:
            metadata["window_counts"] = np.stack(
                [spectra[:, 100:200].sum(axis=1), spectra[:, 300:400].sum(axis=1)]
            ).astype(np.uint32)
        frames.append(
            make_frame(first_frame + i, spectra, metadata, exptime=SYNTHETIC_EXPTIME)
        )
    return frames


@pytest.fixture
def make_synthetic_frames() -> Callable[..., list[Frame]]:
    """Factory: ``make_synthetic_frames(n_frames, channels=4, bins=4096, ...)``."""
    return synthetic_frames


@pytest.fixture
def decode_messages() -> Callable[..., tuple[StreamDecoder, list[object]]]:
    """Factory: ``decode_messages(messages, decoder=None) -> (decoder, packets)``."""
    return decode_all


@pytest.fixture
def capture_file() -> Callable[[str], Path]:
    """Factory: the path of a real capture by file name, or skip the test."""

    def find(name: str) -> Path:
        path = shared_data_dir() / name
        if not path.is_file():
            pytest.skip(skip_reason(name))
        return path

    return find
