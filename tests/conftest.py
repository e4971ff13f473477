"""Fixtures shared by the test suites.

Device tests (``tests/device``) run the real thing: a RunEngine with its own event
loop, the simulated Xspress3 with its real Tango device server and ZeroMQ stream,
and an :class:`~ophyd_xspress.device.XspressDetector` connected to both.

* ``RE``: ``RunEngine(call_returns_result=True)`` on a fresh loop, halted, stopped
  and closed at teardown. ``init_devices()`` needs that loop, so anything that
  connects devices depends on ``RE``. pytango's global asyncio executor is
  forgotten before and after, so each test's loop gets its own.
* ``in_loop(coroutine_function, *args)``: run it in the RunEngine's loop (for
  direct ``await det.stage()`` style calls from a synchronous test).
* ``sim``: ``XspressSimulator(channels=4, stream="tcp://127.0.0.1:0")``, started
  and closed per test (pytango allows one device server per process at a time, so
  never widen its scope). Override ``sim_options`` (a dict of extra keyword
  arguments, e.g. ``{"pace": False}``) in a test module to change it.
* ``make_xspress(**options)`` / ``xspress``: the detector on ``sim``
  (``name="xspress"``, ``path=tmp_path``), connected with ``init_devices()``;
  unstaged at teardown so no receiver thread or open file outlives a test.
  Override ``xspress_options`` for the ``xspress`` fixture's extra arguments.
* ``docs``: every document the RunEngine emits, each validated against the
  event-model schema as it arrives (``docs.assert_valid()``; also checked at
  teardown).
* ``stream_tap``: a factory for an independent ZeroMQ subscriber that records what
  the simulator really sent (frame numbers, ``exptime``), decoded with
  :class:`~ophyd_xspress.protocol.StreamDecoder` on its own socket.
* ``fly``: the fly-scan plan factory :func:`fly_scan` (stage, run, prepare,
  declare_stream, kickoff, collect while completing; unstage even on failure).
* ``push_stream()``: a PUSH socket bound on loopback (``.endpoint``,
  ``.send(messages)``), for streams written by hand; closed at teardown.
* ``shared_data``: the folder with the real captures (``$XSPRESS_SHARED_DATA`` or
  ``../shared/data/xspress3`` next to the checkout); tests skip when it is absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

#: Real Xspress3 stream captures, next to the checkout (see the README there).
SHARED_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xspress3"
)


# -- RunEngine -------------------------------------------------------------------------
@pytest.fixture
def RE() -> Iterator[Any]:  # noqa: N802 - the conventional bluesky fixture name
    """A RunEngine on its own event loop (run in its own thread by bluesky)."""
    from bluesky.run_engine import RunEngine, TransitionError

    loop = asyncio.new_event_loop()
    _forget_tango_executor()
    engine = RunEngine({}, call_returns_result=True, loop=loop)
    yield engine
    if engine.state not in ("idle", "panicked"):
        with contextlib.suppress(TransitionError):
            engine.halt()
    loop.call_soon_threadsafe(loop.stop)
    engine._th.join(10)
    loop.close()
    _forget_tango_executor()


def _forget_tango_executor() -> None:
    """pytango's asyncio green mode keeps one global executor, bound to the thread
    (and loop) that first used it. Each test has a new RunEngine loop in a new
    thread, where that executor would make ``tango.asyncio.DeviceProxy(...)`` run
    synchronously, and ophyd-async's ``await AsyncDeviceProxy(...)`` fail with
    "DeviceProxy can't be used in 'await' expression". A stale executor also makes
    the next ``DeviceTestContext.start()`` create an executor with an event loop
    nobody closes (a ResourceWarning). Forgetting it lets the next RunEngine loop
    create its own on first use."""
    try:
        from tango.asyncio_executor import set_global_executor
    except ImportError:  # pragma: no cover - tango is a dependency
        return
    set_global_executor(None)


@pytest.fixture
def in_loop(RE: Any) -> Callable[..., Any]:  # noqa: N803
    """``in_loop(coroutine_function, *args, timeout=60)``: run it in the RE's loop.

    Takes a coroutine *function* (not an AsyncStatus) so that statuses are created
    inside the loop, as ophyd-async requires."""
    from bluesky.run_engine import call_in_bluesky_event_loop

    def run(fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 60.0) -> T:
        async def call() -> T:
            return await fn(*args)

        return call_in_bluesky_event_loop(call(), timeout=timeout)

    return run


# -- documents -------------------------------------------------------------------------
class DocumentCollector:
    """A RunEngine subscriber keeping every document, validated on arrival."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[str] = []
        self.checked = False

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        from event_model import DocumentNames, schema_validators

        try:
            schema_validators[DocumentNames(name)].validate(doc)
        except Exception as exc:  # keep going; reported by assert_valid()
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}"[:2000])
        self.docs.append((name, doc))

    def __getitem__(self, name: str) -> list[dict[str, Any]]:
        return [d for n, d in self.docs if n == name]

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.docs]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for n, _ in self.docs:
            out[n] += 1
        return dict(out)

    def assert_valid(self) -> None:
        self.checked = True
        assert not self.errors, "invalid documents:\n" + "\n".join(self.errors)

    def clear(self) -> None:
        self.docs.clear()
        self.errors.clear()


@pytest.fixture
def docs(RE: Any) -> Iterator[DocumentCollector]:  # noqa: N803
    collector = DocumentCollector()
    token = RE.subscribe(collector)
    yield collector
    RE.unsubscribe(token)
    assert not collector.errors, "invalid documents:\n" + "\n".join(collector.errors)


# -- simulator and detector ------------------------------------------------------------
@pytest.fixture
def sim_options() -> dict[str, Any]:
    """Extra keyword arguments for the ``sim`` fixture (override per module)."""
    return {}


@pytest.fixture
def sim(sim_options: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    from ophyd_xspress.sim import XspressSimulator

    # As on the device, WriteHdf5 starts true and every Arm outside a prepare
    # of the detector (which switches it off) writes the device's own file:
    # into the test's folder, not the device's default /tmp/temp.h5.
    options: dict[str, Any] = {
        "channels": 4,
        "stream": "tcp://127.0.0.1:0",
        "destination_file_name": str(tmp_path / "device-temp.h5"),
    }
    options.update(sim_options)
    simulator = XspressSimulator(**options)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.faults.release()  # a stalled series must not block close()
        simulator.close()


@pytest.fixture
def xspress_options() -> dict[str, Any]:
    """Extra keyword arguments for the ``xspress`` fixture (override per module)."""
    return {}


@pytest.fixture
def make_xspress(
    RE: Any,  # noqa: N803
    in_loop: Callable[..., Any],
    sim: Any,
    tmp_path: Path,
) -> Iterator[Callable[..., Any]]:
    """``make_xspress(**options)``: a connected detector on ``sim`` (name
    ``xspress``, ``path=tmp_path`` unless given); every one is unstaged at
    teardown."""
    from ophyd_async.core import init_devices

    from ophyd_xspress.device import XspressDetector

    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        options: dict[str, Any] = {"name": "xspress", "path": tmp_path}
        options.update(kwargs)
        with init_devices():
            det = XspressDetector(
                stream=sim.stream_endpoint, tango=sim.tango_trl, **options
            )
        made.append(det)
        return det

    yield make
    # Whatever the test did, leave no receiver thread or open file behind.
    sim.faults.release()
    for det in made:
        in_loop(det.unstage, timeout=60)


@pytest.fixture
def xspress(make_xspress: Callable[..., Any], xspress_options: dict[str, Any]) -> Any:
    return make_xspress(**xspress_options)


# -- an independent look at the stream -------------------------------------------------
class StreamTap:
    """Subscribes to a stream on its own socket and thread; records what was sent."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.headers: list[dict[str, Any]] = []
        #: (frame number, exptime, clock_ticks of channel 0), in arrival order
        self.frames: list[tuple[int, float | None, int]] = []
        self.series_ends = 0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tap")

    def start(self, timeout: float = 5.0) -> StreamTap:
        self._thread.start()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"tap could not connect to {self.endpoint}")
        time.sleep(0.1)  # let the subscription reach the publisher
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait_for(self, n_frames: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < n_frames and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        from ophyd_xspress.protocol import (
            Frame,
            HeaderMessage,
            SeriesEndMessage,
            StreamDecoder,
        )

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        sock.connect(self.endpoint)
        decoder = StreamDecoder()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(50))
                if monitor in events:
                    while monitor.poll(0):
                        recv_monitor_message(monitor)
                        self._connected.set()
                if sock not in events:
                    continue
                while True:
                    try:
                        message = sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    with contextlib.suppress(Exception):
                        for packet in decoder.feed(message):
                            if isinstance(packet, Frame):
                                self.frames.append(
                                    (
                                        packet.frame,
                                        packet.exptime,
                                        int(packet["clock_ticks"][0]),
                                    )
                                )
                            elif isinstance(packet, HeaderMessage):
                                self.headers.append(packet.to_wire())
                            elif isinstance(packet, SeriesEndMessage):
                                self.series_ends += 1
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)


@pytest.fixture
def stream_tap() -> Iterator[Callable[[str], StreamTap]]:
    taps: list[StreamTap] = []

    def make(endpoint: str) -> StreamTap:
        tap = StreamTap(endpoint).start()
        taps.append(tap)
        return tap

    yield make
    for tap in taps:
        tap.stop()


# -- real captures ---------------------------------------------------------------------
class PushStream:
    """A PUSH socket bound on loopback, for tests that write a stream by hand
    (``send`` blocks at most 10 s per message)."""

    def __init__(self) -> None:
        import zmq

        self.ctx: Any = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint: str = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def send(self, messages: list[list[Any]]) -> None:
        for message in messages:
            self.sock.send_multipart(message)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def push_stream() -> Iterator[Callable[[], PushStream]]:
    """``push_stream()``: a new :class:`PushStream`, closed at teardown."""
    made: list[PushStream] = []

    def make() -> PushStream:
        made.append(PushStream())
        return made[-1]

    yield make
    for push in made:
        push.close()


@pytest.fixture
def shared_data() -> Path:
    env = os.environ.get("XSPRESS_SHARED_DATA")
    folder = Path(env) if env else SHARED_DATA
    if not folder.is_dir():
        pytest.skip(
            f"real Xspress3 captures not found in {folder} (set XSPRESS_SHARED_DATA "
            "to the folder holding xspress3-dump.cbors and xspress3-multipart.cbors)"
        )
    return folder


# -- plans -----------------------------------------------------------------------------
def fly_scan(
    det: Any,
    trigger_info: Any,
    *,
    after_kickoff: Callable[[], None] | None = None,
    flush_period: float = 0.2,
    on_complete_status: Callable[[Any], None] | None = None,
) -> Any:
    """stage, open_run, prepare, declare_stream(collect=True), kickoff, then
    collect while completing; close_run and unstage even on failure.

    ``after_kickoff`` runs in the plan once the detector is kicked off (e.g. to
    start a thread pulsing TTL triggers); ``on_complete_status`` gets the
    ``complete()`` status (e.g. to ``watch`` it)."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    def body() -> Any:
        yield from bps.prepare(det, trigger_info, wait=True)
        yield from bps.declare_stream(det, name="primary", collect=True)
        yield from bps.kickoff(det, wait=True)
        if after_kickoff is not None:
            after_kickoff()
        if on_complete_status is None:
            yield from bps.collect_while_completing(
                [det], [det], flush_period=flush_period
            )
            return
        group = "xspress-complete"
        status = yield from bps.complete(det, group=group)
        on_complete_status(status)
        done = False
        while not done:
            done = yield from bps.wait(
                group=group, timeout=flush_period, error_on_timeout=False
            )
            yield from bps.collect(det)

    return (yield from bpp.stage_wrapper(bpp.run_wrapper(body()), [det]))


@pytest.fixture
def fly() -> Callable[..., Any]:
    """The :func:`fly_scan` plan factory."""
    return fly_scan
