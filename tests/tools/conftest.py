"""Fixtures for the tools tests: ``wire``, ZeroMQ messages of a small stream
(two channels, 4096 bins: spectra parts larger than the receiver's
``SMALL_PART``) built by the simulator and the protocol's encoder."""

from __future__ import annotations

import pytest

from ophyd_xspress.protocol import SeriesEndMessage, StreamEncoder
from ophyd_xspress.sim import SimulatedXspress3


class Wire:
    """The messages of one series, as the detector sends them (multipart)."""

    def __init__(self) -> None:
        self.sim = SimulatedXspress3(channels=2, pace=False)
        self.encoder = StreamEncoder("multipart")

    def header(self) -> list[bytes]:
        (message,) = self.encoder.encode(self.sim.header())
        return [bytes(part) for part in message]

    def frame(self, number: int) -> list[bytes]:
        (message,) = self.encoder.encode(self.sim.expected_frame(1, number))
        return [bytes(part) for part in message]

    def end(self) -> list[bytes]:
        (message,) = self.encoder.encode(SeriesEndMessage())
        return [bytes(part) for part in message]


@pytest.fixture
def wire() -> Wire:
    return Wire()
