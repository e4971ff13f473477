"""Fixtures for the simulator tests: real ZeroMQ consumers and simulators.

Everything binds to loopback on free ports (``tcp://127.0.0.1:0``). Sockets,
engines and Tango servers are closed at the end of each test, engines before
their consumers (a PUSH publisher must never be left without its PULL peer).
pytango allows one device server per process: the Tango fixture starts at most
one :class:`XspressSimulator` with ``tango=True`` at a time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from ophyd_xspress.protocol import (
    Frame,
    HeaderMessage,
    ProtocolError,
    SeriesEndMessage,
    StreamDecoder,
)
from ophyd_xspress.sim import SimulatedXspress3, XspressSimulator

LOOPBACK_ANY_PORT = "tcp://127.0.0.1:0"
#: Time for a SUB's subscription to reach the PUB after ``connect``.
SUBSCRIPTION_DELAY_S = 0.3


def shared_data_dir() -> Path:
    """The real captures: ``$XSPRESS_SHARED_DATA`` or ``../shared/data/xspress3``."""
    env = os.environ.get("XSPRESS_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "xspress3"


@dataclass
class Received:
    """One ZeroMQ message as received, with its arrival time (monotonic)."""

    parts: list[bytes]
    at: float

    @property
    def htype(self) -> str | None:
        """``htype`` of the first part when it is JSON, else None."""
        head = self.parts[0]
        if not head.startswith(b"{"):
            return None
        try:
            return str(json.loads(head).get("htype"))
        except ValueError:
            return None


@dataclass
class StreamReader:
    """A real SUB (or PULL) socket feeding a :class:`StreamDecoder`.

    ``messages`` keeps every raw message, ``packets`` every decoded packet,
    ``errors`` the :class:`ProtocolError` s the decoder raised (the decoder
    carries on after them, as a consumer must).
    """

    endpoint: str
    kind: str = "sub"
    context: zmq.Context[Any] = field(default_factory=zmq.Context.instance)
    messages: list[Received] = field(default_factory=list)
    packets: list[Any] = field(default_factory=list)
    errors: list[ProtocolError] = field(default_factory=list)
    decoder: StreamDecoder = field(default_factory=StreamDecoder)

    def __post_init__(self) -> None:
        if self.kind == "sub":
            sock = self.context.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            sock = self.context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(self.endpoint)
        self.sock = sock

    def close(self) -> None:
        self.sock.close(linger=0)

    # -- receiving ---------------------------------------------------------------
    def _take(self, parts: list[bytes]) -> None:
        self.messages.append(Received(parts, time.monotonic()))
        try:
            self.packets.extend(self.decoder.feed(parts))
        except ProtocolError as exc:
            self.errors.append(exc)

    def poll_one(self, timeout: float) -> bool:
        if not self.sock.poll(int(max(0.0, timeout) * 1000)):
            return False
        self._take(self.sock.recv_multipart())
        return True

    def read_until(
        self, done: Callable[[StreamReader], bool], timeout: float = 10.0
    ) -> StreamReader:
        """Receive until ``done(self)`` holds; fail the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not done(self):
            if not self.poll_one(deadline - time.monotonic()):
                if done(self):
                    break
                pytest.fail(
                    f"stream: condition not met in {timeout} s; got "
                    f"{self.describe()} (errors: {self.errors})"
                )
        return self

    def read_series_ends(self, count: int = 1, timeout: float = 10.0) -> StreamReader:
        """Receive until ``count`` series_end packets in total have arrived."""
        return self.read_until(lambda r: len(r.series_ends) >= count, timeout)

    def read_frames(self, count: int, timeout: float = 10.0) -> StreamReader:
        """Receive until ``count`` frames in total have been decoded."""
        return self.read_until(lambda r: len(r.frames) >= count, timeout)

    def drain(self, quiet: float = 0.25) -> int:
        """Receive until nothing arrives for ``quiet`` s; the number received."""
        n = 0
        while self.poll_one(quiet):
            n += 1
        return n

    # -- views -------------------------------------------------------------------
    @property
    def frames(self) -> list[Frame]:
        return [p for p in self.packets if isinstance(p, Frame)]

    @property
    def frame_numbers(self) -> list[int]:
        return [f.frame for f in self.frames]

    @property
    def headers(self) -> list[HeaderMessage]:
        return [p for p in self.packets if isinstance(p, HeaderMessage)]

    @property
    def series_ends(self) -> list[SeriesEndMessage]:
        return [p for p in self.packets if isinstance(p, SeriesEndMessage)]

    def sequence(self) -> list[str | int]:
        """Packets as ``"header"``, frame numbers and ``"series_end"``."""
        return [p.frame if isinstance(p, Frame) else p.htype for p in self.packets]

    def describe(self) -> str:
        return f"{len(self.messages)} messages, packets {self.sequence()}"


def wait_for(
    condition: Callable[[], object], timeout: float = 5.0, what: str = ""
) -> None:
    """Poll ``condition`` every ms until true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.001)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., None]:
    """``wait_for(condition, timeout=5.0, what="")``: poll until true or fail."""
    return wait_for


@pytest.fixture
def reader() -> Iterator[Callable[..., StreamReader]]:
    """Factory: ``reader(endpoint, kind="sub"|"pull")`` -> connected StreamReader.

    A SUB waits for its subscription to propagate before it is returned.
    """
    made: list[StreamReader] = []

    def make(endpoint: str, kind: str = "sub") -> StreamReader:
        r = StreamReader(endpoint, kind)
        made.append(r)
        if kind == "sub":
            time.sleep(SUBSCRIPTION_DELAY_S)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def engine(
    reader: Callable[..., StreamReader], tmp_path: Path
) -> Iterator[Callable[..., tuple[SimulatedXspress3, StreamReader]]]:
    """Factory: ``engine(consumer="pull"|"sub", **options) -> (det, stream)``.

    Starts a :class:`SimulatedXspress3` on a free loopback port (``pace=False``
    unless given; a PUSH socket for ``consumer="pull"``) with a connected
    consumer. As on the device ``WriteHdf5`` starts true: the device's own
    file goes to ``tmp_path/temp.h5`` unless the test says otherwise. Engines
    are closed before the consumers (this fixture depends on ``reader``, so it
    is torn down first).
    """
    made: list[SimulatedXspress3] = []

    def make(
        consumer: str = "pull", **options: Any
    ) -> tuple[SimulatedXspress3, StreamReader]:
        options.setdefault("endpoint", LOOPBACK_ANY_PORT)
        options.setdefault("pace", False)
        options.setdefault("destination_file_name", str(tmp_path / "temp.h5"))
        if consumer == "pull":
            options.setdefault("socket_type", "push")
        det = SimulatedXspress3(**options)
        made.append(det)
        det.start()
        return det, reader(det.stream_endpoint, consumer)

    yield make
    for det in made:
        det.close()


@pytest.fixture
def tango_sim(
    reader: Callable[..., StreamReader], tmp_path: Path
) -> Iterator[Callable[..., tuple[XspressSimulator, StreamReader]]]:
    """Factory: ``tango_sim(**options) -> (sim, stream)``, one at a time.

    An :class:`XspressSimulator` with its Tango device (``tango=True``) and a
    SUB consumer on its stream (the device's own file in ``tmp_path`` unless
    told otherwise); stopped at teardown before the consumer closes.
    """
    made: list[XspressSimulator] = []

    def make(**options: Any) -> tuple[XspressSimulator, StreamReader]:
        assert not made, "one Tango device server per process (and per test)"
        options.setdefault("stream", LOOPBACK_ANY_PORT)
        options.setdefault("tango", True)
        options.setdefault("destination_file_name", str(tmp_path / "temp.h5"))
        sim = XspressSimulator(**options)
        sim.start()
        made.append(sim)
        return sim, reader(sim.stream_endpoint, "sub")

    yield make
    for sim in made:
        sim.close()
