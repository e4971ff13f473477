# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""Faults of the Tango control plane, as the user sees them.

* On ophyd-async's mock backend: a device RUNNING another client's
  acquisition is never armed over; a refused Arm names the command and the
  frames; a second ``ensure_ready`` during an acquisition is refused.
* On the simulator's real device server: a wrong device name; a second client
  arming the device; the device server restarted on the same port (in this
  process: every old proxy fails once, cppTango then delays reconnecting each
  for a second) and killed mid fly scan (in its own process, as on a
  beamline). The same detector object must work again once the server is
  back, without a new object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tango
from bluesky.plans import count
from ophyd_async.core import (
    callback_on_mock_execute,
    get_mock,
    init_devices,
    set_mock_value,
)
from ophyd_async.tango.core import DevStateEnum
from tests.helpers import find_in_chain

from ophyd_xspress.device import AcquisitionInProgressError, XspressDetector
from ophyd_xspress.device._acquire_logic import XspressAcquireLogic
from ophyd_xspress.device._control import XspressControl
from ophyd_xspress.device._session import StreamSession
from ophyd_xspress.device._settings import AcquisitionSettings
from ophyd_xspress.device._tango_errors import (
    DeviceBusyError,
    DeviceCommandError,
    DeviceNotFoundError,
    DeviceUnreachableError,
)
from ophyd_xspress.protocol import StreamEncoder
from ophyd_xspress.sim import SimulatedXspress3

MOCK_TRL = "tango://127.0.0.1:10000/test/xspress3/1"


# -- the acquire logic on the mock backend ---------------------------------------------
@dataclass
class Rig:
    control: XspressControl
    session: StreamSession
    settings: AcquisitionSettings
    logic: XspressAcquireLogic
    push: Any
    sim: SimulatedXspress3

    def send(self, frames: range, *, header: bool = False) -> None:
        encoder = StreamEncoder("multipart")
        messages = encoder.encode(self.sim.header()) if header else []
        for n in frames:
            messages += encoder.encode(self.sim.expected_frame(0, n))
        self.push.send(messages)


@pytest.fixture
async def rig(push_stream: Callable[[], Any]) -> AsyncIterator[Rig]:
    push = push_stream()
    control = XspressControl(MOCK_TRL, name="xspress3")
    await control.connect(mock=True)
    set_mock_value(control.state, DevStateEnum.STANDBY)
    session = StreamSession(push.endpoint, "pull", active=True, connect_timeout=5.0)
    settings = AcquisitionSettings(stall_timeout=5.0)
    logic = XspressAcquireLogic(control, session, settings, name="xspress")
    sim = SimulatedXspress3(channels=2, pace=False)
    yield Rig(control, session, settings, logic, push, sim)
    set_mock_value(control.state, DevStateEnum.STANDBY)  # let unstage finish
    await logic.ensure_stopped()


async def test_a_device_running_another_clients_acquisition_is_not_armed(
    rig: Rig,
) -> None:
    rig.settings.num = 3
    await rig.logic.ensure_ready()
    set_mock_value(rig.control.state, DevStateEnum.RUNNING)  # another client armed
    with pytest.raises(DeviceBusyError) as info:
        await rig.logic.start_acquiring()
    assert str(info.value) == (
        f"xspress: the Tango device at {MOCK_TRL} is RUNNING an acquisition this "
        "detector did not start (another client armed it), so it was not armed "
        "(0 of 3 frames received); stop the other acquisition (staging again "
        "Stops it), then retry"
    )
    assert get_mock(rig.control).mock_calls == []  # no Arm, no Stop


async def test_a_refused_arm_names_the_command_and_the_frames(rig: Rig) -> None:
    error = tango.DevError()
    error.reason, error.desc = "API_CommandNotAllowed", "Arm not allowed in ALARM"
    refused = tango.DevFailed(error)

    def arm() -> None:
        raise refused

    callback_on_mock_execute(rig.control.arm, arm)
    rig.settings.num = 3
    await rig.logic.ensure_ready()
    with pytest.raises(DeviceCommandError) as info:
        await rig.logic.start_acquiring()
    assert str(info.value) == (
        f"xspress: the Tango device at {MOCK_TRL} refused Arm (0 of 3 frames "
        "received): API_CommandNotAllowed: Arm not allowed in ALARM; check the "
        "device's state and settings, then retry"
    )
    assert find_in_chain(info.value, tango.DevFailed) is refused


async def test_ensure_ready_during_an_acquisition_is_refused(rig: Rig) -> None:
    callback_on_mock_execute(rig.control.arm, lambda: rig.send(range(2), header=True))
    rig.settings.num = 5
    await rig.logic.ensure_ready()
    await rig.logic.start_acquiring()
    run = rig.session.run
    assert run is not None
    deadline = time.monotonic() + 5
    while run.received < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    with pytest.raises(AcquisitionInProgressError) as info:
        await rig.logic.ensure_ready()
    assert str(info.value) == (
        "xspress: cannot stage while an acquisition is running (2 of 5 frames "
        "received so far); it goes on: wait for it to complete, or unstage the "
        "detector to stop it, then stage again (a nested plan must not stage a "
        "detector that its outer plan staged)"
    )
    # nothing was stopped: the acquisition ends with all its frames
    assert "stop_cmd.execute" not in [n for n, _, _ in get_mock(rig.control).mock_calls]
    rig.send(range(2, 5))
    await asyncio.wait_for(rig.logic.wait_for_idle(), 10)
    assert rig.session.diagnostics.run_summaries[-1]["frames_received"] == 5


# -- a real device server --------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_wrong_device_name_fails_connect_with_the_name(
    RE: Any, sim: Any, in_loop: Callable[..., Any], tmp_path: Path
) -> None:
    trl = sim.tango_trl.replace("sim/xspress3/1", "sim/xspress3/2")
    server = re.search(r"tango://([^/]+)/", trl)
    assert server is not None
    det = XspressDetector(sim.stream_endpoint, trl, name="xspress", path=tmp_path)
    with pytest.raises(DeviceNotFoundError) as info:
        in_loop(det.connect)
    assert str(info.value) == (
        f"xspress: the Tango server at {server.group(1)} has no device "
        f"sim/xspress3/2 (OBJECT_NOT_EXIST_NoMatch); check the device name in "
        f"tango={trl!r}"
    )
    assert isinstance(info.value.__cause__, tango.DevFailed)


def test_a_second_client_arming_the_device_is_not_armed_over(
    RE: Any, sim: Any, make_xspress: Callable[..., Any], in_loop: Callable[..., Any]
) -> None:
    xspress = make_xspress()
    in_loop(xspress.stage)
    other = tango.DeviceProxy(sim.tango_trl)  # a second script on the device
    other.ExposureTime = 0.01
    other.nTriggers, other.nFramesPerTrigger = 1, 300
    other.TriggerMode = "SOFTWARE"
    other.Arm()
    other.SoftwareTrigger()
    deadline = time.monotonic() + 5
    while sim.control.n_frames_acquired < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    series = sim.control.series_index
    with pytest.raises(DeviceBusyError) as info:
        in_loop(xspress.trigger)
    assert str(info.value) == (
        f"xspress: the Tango device at {sim.tango_trl} is RUNNING an acquisition "
        "this detector did not start (another client armed it), so it was not "
        "armed (0 of 1 frames received); stop the other acquisition (staging "
        "again Stops it), then retry"
    )
    # the other client's acquisition goes on untouched
    acquired = sim.control.n_frames_acquired
    time.sleep(0.1)
    assert sim.control.n_frames_acquired > acquired
    assert sim.control.series_index == series
    other.Stop()


@pytest.fixture
def restartable(RE: Any, tmp_path: Path) -> Iterator[Any]:
    """A simulated device whose Tango server can stop and start again on the
    same port, in this process; the detector on it (``stall_timeout=2``)."""
    from tango.asyncio_executor import set_global_executor

    from ophyd_xspress.sim._tango import TangoServer

    engine = SimulatedXspress3(4, endpoint="tcp://127.0.0.1:0")
    engine.exposure_time = 0.01
    engine.start()
    port = free_port()
    servers = [TangoServer(engine, port=port)]
    trl = servers[0].start()

    class Rig:
        def __init__(self) -> None:
            self.trl = trl
            self.engine = engine
            with init_devices():
                self.xspress = XspressDetector(
                    engine.stream_endpoint,
                    trl,
                    name="xspress",
                    path=tmp_path,
                    stall_timeout=2.0,
                )

        def stop_server(self) -> None:
            servers[-1].stop()

        def start_server(self) -> None:
            # A server started while pytango's executor belongs to the RunEngine's
            # thread gets an executor with an event loop nobody closes: forget
            # it (the detector's next call makes one in the RunEngine's loop).
            set_global_executor(None)
            servers.append(TangoServer(engine, port=port))
            assert servers[-1].start() == trl

    rig = Rig()
    try:
        yield rig
    finally:
        with contextlib.suppress(Exception):
            from bluesky.run_engine import call_in_bluesky_event_loop

            async def unstage() -> None:
                await rig.xspress.unstage()

            call_in_bluesky_event_loop(unstage(), timeout=30)
        servers[-1].stop()
        engine.close()


def test_device_server_restart_in_process(
    RE: Any, restartable: Any, in_loop: Callable[..., Any], docs: Any
) -> None:
    xspress = restartable.xspress
    RE(count([xspress], 1))
    restartable.stop_server()
    # while it is down: the facts, not a raw DevFailed, at every try (the
    # second try comes after cppTango's one-second reconnection delay, so the
    # State proxy answers again by itself once the server is back)
    for pause in (1.1, 0.0):
        with pytest.raises(DeviceUnreachableError) as info:
            in_loop(xspress.stage)
        assert str(info.value).startswith(
            f"xspress: the Tango device at {restartable.trl} restarted or is "
            "unreachable; retry ("
        ), str(info.value)
        assert isinstance(info.value.__cause__, tango.DevFailed)
        time.sleep(pause)
    restartable.start_server()
    # the same object works again at the first try
    t0 = time.monotonic()
    docs.clear()
    RE(count([xspress], 2))
    assert len(docs["event"]) == 2
    assert time.monotonic() - t0 < 3.0
    # a restart between two scans, nothing tried while it was down
    restartable.stop_server()
    restartable.start_server()
    docs.clear()
    RE(count([xspress], 1))
    assert len(docs["event"]) == 1
    # and connect(force_reconnect=True) works after a restart too
    restartable.stop_server()
    restartable.start_server()
    in_loop(lambda: xspress.connect(force_reconnect=True))
    docs.clear()
    RE(count([xspress], 1))
    assert len(docs["event"]) == 1


# -- a device server in its own process, killed mid fly scan ---------------------------
SCENARIO = Path(__file__).with_name("server_killed_scenario.py")


def test_device_server_killed_mid_fly_scan_then_back(tmp_path: Path) -> None:
    """As on a beamline: the server in its own process, killed (SIGKILL)
    mid fly scan, then started again on the same ports. Run in a child
    process: see ``server_killed_scenario.py`` for why."""
    done = subprocess.run(
        [sys.executable, str(SCENARIO), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    facts = json.loads(done.stdout.splitlines()[-1])
    assert facts["error_type"] == "DeviceUnreachableError", facts
    match = re.fullmatch(
        re.escape(
            f"xspress: the Tango device at {facts['trl']} restarted or is unreachable, "
        )
        + r"(\d+) of 3000 frames received; check its device server, then retry "
        r"\((\w+)\)",
        facts["error"],
    )
    assert match is not None, facts["error"]
    assert 0 < int(match.group(1)) < 3000
    assert match.group(2) in {
        "COMM_FAILURE_WaitingForReply",
        "TRANSIENT_ConnectFailed",
        "TRANSIENT_CallTimedout",
    }, match.group(2)
    assert facts["cause_type"] in {"ConnectionFailed", "CommunicationFailed"}
    # seen by the device poll (every 0.5 s), not by the 5 s stall time-out
    assert facts["noticed_s"] < 2.0, facts
    # unstage of a device that is gone logs, and does not hide the error
    assert facts["unstage_error"] is None, facts
    # the same detector object works as soon as the server is back
    assert facts["frames_after"] == 20
    assert facts["recovered_s"] < 5.0, facts
