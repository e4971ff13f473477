"""Fixtures for the receiver tests: ``stream``, a PUSH socket bound on loopback
and a started :class:`StreamReceiver` (PULL) connected to it, with
``stream.send_series(numbers)`` to send a series of simulator frames and
``stream.sink()`` for a sink that records which frame went to which row."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ophyd_xspress.protocol import Frame, SeriesEndMessage, StreamEncoder
from ophyd_xspress.sim import SimulatedXspress3
from ophyd_xspress.transport import StreamReceiver


class RecordingSink:
    def __init__(self) -> None:
        self.rows: dict[int, Frame] = {}
        self.puts: list[int] = []

    def put(self, row: int, frame: Frame) -> None:
        assert row not in self.rows, f"row {row} written twice"
        self.rows[row] = frame
        self.puts.append(row)

    def flush(self) -> None:
        return None


class Stream:
    """A PUSH socket and a started PULL receiver connected to it."""

    def __init__(self, push: Any) -> None:
        self.push = push
        self.rx = StreamReceiver(push.endpoint, "pull")
        self.rx.start(connect_timeout=5.0)
        self.sim = SimulatedXspress3(channels=2, pace=False)
        self.encoder = StreamEncoder("multipart")
        self.series = 0

    def frame(self, series: int, n: int) -> Frame:
        return self.sim.expected_frame(series, n)

    def send_series(self, numbers: list[int], *, end: bool = True) -> int:
        """A header, frames ``numbers`` (in that order), series_end; returns
        the series index used for the frames' content."""
        self.series += 1
        messages = list(self.encoder.encode(self.sim.header()))
        for n in numbers:
            messages += self.encoder.encode(self.frame(self.series, n))
        if end:
            messages += self.encoder.encode(SeriesEndMessage())
        self.push.send(messages)
        return self.series

    def close(self) -> None:
        self.rx.stop()

    def sink(self) -> RecordingSink:
        return RecordingSink()


@pytest.fixture
def stream(push_stream: Callable[[], Any]) -> Iterator[Stream]:
    s = Stream(push_stream())
    yield s
    s.close()
