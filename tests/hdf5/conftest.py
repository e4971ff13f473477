"""Fixtures for the HDF5 writer's tests.

* ``make_frames(n, channels=4)``: ``n`` distinct simulator frames through the
  real encoder and decoder (their metadata is a ``FrameMetadata``).
* ``frames``: 150 such frames of 4 channels (shared by a module's tests).
* ``io``: each way the spectra of the rows allocated at open can be written
  (``"o_direct"``, skipped where the file system refuses it, ``"pwrite"``,
  ``"hdf5"``).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ophyd_xspress.protocol import Frame, StreamDecoder, StreamEncoder, make_frame
from ophyd_xspress.sim import SimulatedXspress3

MakeFrames = Callable[..., list[Frame]]


def sim_frames(n: int, channels: int = 4) -> list[Frame]:
    """``n`` distinct simulator frames, through the real encoder and decoder."""
    sim = SimulatedXspress3(channels=channels, pace=False)
    encoder = StreamEncoder(framing="multipart")
    decoder = StreamDecoder()
    decoder.feed(encoder.encode(sim.header())[0])
    out: list[Frame] = []
    for i in range(n):
        t = sim.expected_frame(0, i)
        frame = make_frame(i, t.spectra, t.metadata, exptime=t.exptime)
        for message in encoder.encode(frame):
            out += [p for p in decoder.feed(message) if isinstance(p, Frame)]
    return out


@pytest.fixture
def make_frames() -> MakeFrames:
    return sim_frames


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return sim_frames(150)


def o_direct_works(directory: Path) -> bool:
    """Whether this file system takes an aligned O_DIRECT write."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = directory / "o_direct_probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
        try:
            os.pwrite(fd, mmap.mmap(-1, 4096), 0)
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True


@pytest.fixture(params=["o_direct", "pwrite", "hdf5"])
def io(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """How the spectra of the rows allocated at open are written."""
    mode: str = request.param
    if mode == "o_direct" and not o_direct_works(tmp_path):
        pytest.skip(f"no O_DIRECT on the file system of {tmp_path}")
    return mode
