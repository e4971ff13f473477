"""The simulated ``Xspress3DS`` Tango device, through a real ``tango.DeviceProxy``.

Each test starts its own :class:`XspressSimulator` with ``tango=True`` (pytango
allows one device server per process, so never two at once: the ``tango_sim``
fixture stops it at the end of the test) and decodes the stream alongside with
a SUB connected before ``Arm``.

Restarting pytango's in-process device server is not free: about once in a
thousand start/stop cycles cppTango prints "Tango is not initialised !!!
Exiting" and ends the whole process with status 255 (pytango issue #374). So
this module keeps the number of servers it starts small.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tango

from ophyd_xspress.protocol import CLOCK_HZ, Frame
from ophyd_xspress.sim import DEFAULT_SAMPLE, XspressSimulator, line_window

CHANNELS = 3
FE_KA = list(line_window(DEFAULT_SAMPLE, "Fe", "Ka1"))
CU_KA = list(line_window(DEFAULT_SAMPLE, "Cu", "Ka1"))


@pytest.fixture
def device(tango_sim: Any) -> Iterator[tuple[XspressSimulator, Any, tango.DeviceProxy]]:
    """``(sim, stream, proxy)``: 3 channels, paced frames, SUB on the stream."""
    sim, stream = tango_sim(channels=CHANNELS, pace=True)
    proxy = tango.DeviceProxy(sim.tango_trl)
    yield sim, stream, proxy
    del proxy


def wait_state(
    proxy: tango.DeviceProxy, state: tango.DevState, timeout: float = 5.0
) -> None:
    deadline = time.monotonic() + timeout
    while proxy.state() != state:
        if time.monotonic() > deadline:
            pytest.fail(f"State {proxy.state()} ({proxy.status()}), wanted {state}")
        time.sleep(0.002)


def _read(proxy: tango.DeviceProxy, name: str) -> object:
    """The attribute's value; None when it has none (ReadyForSwTrigger while
    frames are due fails to read, as on the device)."""
    try:
        return proxy.read_attribute(name).value
    except tango.DevFailed:
        return None


def wait_attr(
    proxy: tango.DeviceProxy, name: str, value: object, timeout: float = 5.0
) -> None:
    deadline = time.monotonic() + timeout
    while _read(proxy, name) != value:
        if time.monotonic() > deadline:
            pytest.fail(f"{name} is {_read(proxy, name)!r}, wanted {value!r}")
        time.sleep(0.002)


def desc(exc: pytest.ExceptionInfo[tango.DevFailed]) -> str:
    return " | ".join(str(e.desc) for e in exc.value.args)


# --- attributes -----------------------------------------------------------------------


# Each test starts its own device server; pytango's in-process servers are not
# free to restart (see the module docstring), so attributes are checked in a few
# tests that each loop over the table rather than in one test per attribute.


def test_trl_and_channel_defaults(device: Any) -> None:
    """(The whole interface against the device's source:
    test_device_interface.py.)"""
    sim, _, proxy = device
    assert sim.tango_trl.startswith("tango://127.0.0.1:")
    assert sim.tango_trl.endswith("/sim/xspress3/1#dbase=no")
    assert proxy.info().dev_class == "Xspress3DS"
    assert f"Window1_Ch{CHANNELS}" not in set(proxy.get_attribute_list())
    assert proxy.state() == tango.DevState.STANDBY
    assert proxy.status() == ""
    for ch in range(CHANNELS):
        assert list(proxy.read_attribute(f"Window1_Ch{ch}").value) == FE_KA
        assert list(proxy.read_attribute(f"Window2_Ch{ch}").value) == CU_KA
        assert proxy.read_attribute(f"EventWidth_Ch{ch}").value == 6


#: (attribute, value written, engine attribute it lands in)
WRITES: list[tuple[str, object, str]] = [
    ("ExposureTime", 0.25, "exposure_time"),
    ("LatencyTime", 2e-6, "latency_time"),
    ("nTriggers", 7, "n_triggers"),
    ("nFramesPerTrigger", 9, "n_frames_per_trigger"),
    ("TriggerMode", "EXTERNAL_MULTI", "trigger_mode"),
    ("TriggerMode", "EXTERNAL_MULTI_GATE", "trigger_mode"),
    ("TriggerMode", "SOFTWARE", "trigger_mode"),
    ("DestinationFileName", "/data/visit/scan_0042.hdf5", "destination_file_name"),
    ("DestinationFileOverwritable", True, "destination_file_overwritable"),
    ("DestinationFileOverwritable", False, "destination_file_overwritable"),
    ("WriteHdf5", False, "write_hdf5"),
    ("WriteHdf5", True, "write_hdf5"),
    # the device checks no time or count when written (DeviceServer.py 38-64)
    ("ExposureTime", 0.0, "exposure_time"),
    ("ExposureTime", -0.1, "exposure_time"),
    ("LatencyTime", -1e-9, "latency_time"),
    ("nTriggers", 0, "n_triggers"),
]


def test_write_read_every_writable_attribute(device: Any) -> None:
    sim, _, proxy = device
    for name, value, engine_attr in WRITES:
        proxy.write_attribute(name, value)
        assert proxy.read_attribute(name).value == value, name
        assert getattr(sim.control, engine_attr) == value, name
    for ch in range(CHANNELS):
        proxy.write_attribute(f"Window1_Ch{ch}", [100 + ch, 200 + ch])
        proxy.write_attribute(f"Window2_Ch{ch}", [300, 300])  # one bin is allowed
    for ch in range(CHANNELS):
        assert list(proxy.read_attribute(f"Window1_Ch{ch}").value) == [
            100 + ch,
            200 + ch,
        ]
        assert list(proxy.read_attribute(f"Window2_Ch{ch}").value) == [300, 300]
    assert sim.control.windows[0].tolist() == [[100 + c, 200 + c] for c in range(3)]
    assert sim.control.windows[1].tolist() == [[300, 300]] * CHANNELS
    proxy.write_attribute("Window1_Ch0", [0, 4095])  # the full range
    assert list(proxy.read_attribute("Window1_Ch0").value) == [0, 4095]
    # out of the spectrum: clamped, not refused (DeviceServer.py 204-207)
    proxy.write_attribute("Window2_Ch1", [-1, 10])
    assert list(proxy.read_attribute("Window2_Ch1").value) == [0, 10]
    proxy.write_attribute("Window1_Ch2", [10, 4096])
    assert list(proxy.read_attribute("Window1_Ch2").value) == [10, 4095]
    proxy.write_attribute("Window1_Ch2", [-50, 99999])
    assert list(proxy.read_attribute("Window1_Ch2").value) == [0, 4095]


#: (attribute, bad value, text expected in the error or None)
BAD_WRITES: list[tuple[str, object, str | None]] = [
    # the device's assertion (DeviceServer.py 72-73)
    ("TriggerMode", "BOGUS", "TriggerMode can be SOFTWARE or EXTERNAL_MULTI or "),
    ("TriggerMode", "software", "TriggerMode can be SOFTWARE or EXTERNAL_MULTI or "),
    # reversed even after clamping: left to the SDK on the device
    ("Window1_Ch0", [5, 2], "is reversed"),
    ("Window1_Ch0", [1, 2, 3], None),  # more than max_dim_x
    ("Window1_Ch0", [2**40, 3], None),  # not a DevLong
    # read-only attributes
    ("EventWidth_Ch0", 4, None),
    ("nFramesAcquired", 5, None),
    ("nChannels", 8, None),
    ("ReadoutTime", 1e-6, None),
    ("ReadyForSwTrigger", True, None),
]


def test_bad_writes_raise_devfailed_and_change_nothing(device: Any) -> None:
    _, _, proxy = device
    for name, value, message in BAD_WRITES:
        before = proxy.read_attribute(name).value
        with pytest.raises((tango.DevFailed, OverflowError)) as exc:
            proxy.write_attribute(name, value)
        after = proxy.read_attribute(name).value
        assert np.array_equal(np.asarray(after), np.asarray(before)), name
        if message is not None:
            assert isinstance(exc.value, tango.DevFailed)
            assert message in desc(exc), (name, value, desc(exc))
    assert proxy.state() == tango.DevState.STANDBY


# --- commands and states --------------------------------------------------------------


def test_commands_refused_in_wrong_configuration(device: Any) -> None:
    _, stream, proxy = device
    assert proxy.state() == tango.DevState.STANDBY
    with pytest.raises(tango.DevFailed) as exc:
        proxy.SoftwareTrigger()  # not armed
    assert "SoftwareTrigger refused in state STANDBY" in desc(exc)
    proxy.nTriggers, proxy.nFramesPerTrigger = 0, 1
    with pytest.raises(tango.DevFailed):
        proxy.Arm()
    assert proxy.state() == tango.DevState.STANDBY
    # both counts above 1: refused once RUNNING, and RUNNING until Stop
    proxy.nTriggers, proxy.nFramesPerTrigger = 2, 2
    with pytest.raises(tango.DevFailed) as exc:
        proxy.Arm()
    assert "nFramesPerTrigger can only be > 1 if nTriggers = 1" in desc(exc)
    assert proxy.state() == tango.DevState.RUNNING
    proxy.Stop()
    assert proxy.state() == tango.DevState.STANDBY
    stream.read_series_ends(1)
    assert stream.sequence() == ["series_end"]  # a Stop always sends one
    proxy.nFramesPerTrigger = 1
    proxy.TriggerMode = "EXTERNAL_MULTI"
    proxy.Arm()
    assert proxy.state() == tango.DevState.RUNNING
    assert proxy.ReadyForSwTrigger is False  # not SOFTWARE mode
    with pytest.raises(tango.DevFailed) as exc:
        proxy.SoftwareTrigger()
    assert "SoftwareTrigger refused in TriggerMode EXTERNAL_MULTI" in desc(exc)
    proxy.Arm()  # while RUNNING: a new series, as the device does
    assert proxy.state() == tango.DevState.RUNNING
    proxy.Stop()
    wait_state(proxy, tango.DevState.STANDBY)
    stream.read_series_ends(2)
    assert stream.sequence() == ["series_end", "header", "header", "series_end"]


def test_software_burst_acquisition(device: Any) -> None:
    sim, stream, proxy = device
    proxy.ExposureTime = 0.02
    proxy.nTriggers, proxy.nFramesPerTrigger = 1, 8
    proxy.TriggerMode = "SOFTWARE"
    proxy.Arm()
    assert proxy.state() == tango.DevState.RUNNING
    assert proxy.nFramesAcquired == 0
    wait_attr(proxy, "ReadyForSwTrigger", True)
    proxy.SoftwareTrigger()
    progress = []
    while proxy.state() == tango.DevState.RUNNING:
        progress.append(proxy.nFramesAcquired)
        time.sleep(0.005)
    assert proxy.state() == tango.DevState.STANDBY
    assert proxy.status() == ""
    assert proxy.nFramesAcquired == 8
    assert not proxy.ReadyForSwTrigger
    assert progress == sorted(progress)  # never goes back
    assert progress, "never saw RUNNING after the trigger"
    assert progress[0] < 8  # polled during the burst
    assert progress[-1] <= 8
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", *range(8), "series_end"]
    _, ticks = sim.control.frame_timing()
    for n, frame in enumerate(stream.frames):
        assert frame == sim.control.expected_frame(0, n)
        np.testing.assert_array_equal(frame["clock_ticks"], [ticks] * CHANNELS)
        # LatencyTime 0 (the device default), 25 ns readout
        assert frame.exptime == pytest.approx(0.02 - 25e-9, rel=1e-12)


def test_software_one_frame_per_trigger(device: Any) -> None:
    sim, stream, proxy = device
    proxy.ExposureTime = 0.005
    proxy.nTriggers, proxy.nFramesPerTrigger = 3, 1
    proxy.Arm()
    for n in range(3):
        wait_attr(proxy, "ReadyForSwTrigger", True)
        assert proxy.nFramesAcquired == n
        assert proxy.state() == tango.DevState.RUNNING
        proxy.SoftwareTrigger()
        stream.read_frames(n + 1)
    wait_state(proxy, tango.DevState.STANDBY)
    assert proxy.nFramesAcquired == 3
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, "series_end"]
    for n, frame in enumerate(stream.frames):
        assert frame == sim.control.expected_frame(0, n)


def test_external_multi_acquisition(device: Any) -> None:
    sim, stream, proxy = device
    proxy.ExposureTime = 0.005
    proxy.TriggerMode = "EXTERNAL_MULTI"
    proxy.nTriggers, proxy.nFramesPerTrigger = 4, 1
    proxy.Arm()
    assert proxy.state() == tango.DevState.RUNNING
    for n in range(4):
        assert proxy.nFramesAcquired == n
        assert not proxy.ReadyForSwTrigger  # external mode
        sim.control.ttl_pulse(1e-3)
        wait_attr(proxy, "nFramesAcquired", n + 1)
    wait_state(proxy, tango.DevState.STANDBY)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, 3, "series_end"]
    for n, frame in enumerate(stream.frames):
        assert frame == sim.control.expected_frame(0, n)


def test_external_multi_gate_acquisition(device: Any) -> None:
    sim, stream, proxy = device
    proxy.TriggerMode = "EXTERNAL_MULTI_GATE"
    proxy.nTriggers, proxy.nFramesPerTrigger = 3, 1
    widths = [0.01, 0.03, 0.005]
    proxy.Arm()
    pulses = []  # outer bound of each real gate (the sleep can overshoot)
    for n, width in enumerate(widths):
        assert proxy.state() == tango.DevState.RUNNING
        t0 = time.monotonic()
        sim.control.ttl_pulse(width)
        pulses.append(time.monotonic() - t0)
        wait_attr(proxy, "nFramesAcquired", n + 1)
    wait_state(proxy, tango.DevState.STANDBY)
    assert proxy.nFramesAcquired == 3
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, "series_end"]
    for n, (frame, width) in enumerate(zip(stream.frames, widths, strict=True)):
        seconds = float(frame["clock_ticks"][0]) / CLOCK_HZ
        assert width - 1e-6 <= seconds <= pulses[n] + 1e-6, (width, seconds)
        if pulses[n] < width + 0.002:  # not oversleeping: the brief's bound
            assert abs(seconds - width) <= 0.3 * width + 0.002
        np.testing.assert_array_equal(frame["total_ticks"], frame["clock_ticks"])
        expected = sim.control.expected_frame(
            0, n, clock_ticks=int(frame["clock_ticks"][0])
        )
        assert frame == expected


def test_stop_mid_acquisition(device: Any) -> None:
    _, stream, proxy = device
    proxy.ExposureTime = 0.01
    proxy.nFramesPerTrigger = 500
    proxy.Arm()
    wait_attr(proxy, "ReadyForSwTrigger", True)
    proxy.SoftwareTrigger()
    deadline = time.monotonic() + 5
    while proxy.nFramesAcquired < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    proxy.Stop()
    wait_state(proxy, tango.DevState.STANDBY)
    acquired = proxy.nFramesAcquired
    assert 3 <= acquired < 500
    stream.read_series_ends(1)
    assert stream.drain() == 0
    assert stream.sequence() == ["header", *range(acquired), "series_end"]
    # a Stop once idle gives a second series_end, as on the real device
    proxy.Stop()
    stream.read_series_ends(2)
    assert proxy.state() == tango.DevState.STANDBY


def test_arm_right_after_stop_is_accepted(device: Any) -> None:
    # Regression: Stop used to only queue the command, so right after it the
    # device was still RUNNING and Arm was refused ("already RUNNING (Stop
    # first)"); like the real command it now returns once the device is idle.
    sim, _, proxy = device
    proxy.ExposureTime = 0.01
    proxy.nFramesPerTrigger = 1000
    for _ in range(5):
        proxy.Arm()
        wait_attr(proxy, "ReadyForSwTrigger", True)
        proxy.SoftwareTrigger()
        time.sleep(0.03)
        proxy.Stop()
        try:
            assert proxy.state() == tango.DevState.STANDBY
            proxy.Arm()  # must not be refused right after a Stop
        finally:
            proxy.Stop()
            assert sim.control.wait_idle(5)
            time.sleep(0.01)


def test_fault_state_and_status(device: Any) -> None:
    sim, stream, proxy = device
    sim.faults.fault_after = 1
    sim.faults.fault_status = "FAULT: simulated circular buffer overrun"
    proxy.ExposureTime = 0.005
    proxy.nFramesPerTrigger = 5
    proxy.Arm()
    wait_attr(proxy, "ReadyForSwTrigger", True)
    proxy.SoftwareTrigger()
    wait_state(proxy, tango.DevState.FAULT)
    assert proxy.status() == "FAULT: simulated circular buffer overrun"
    assert proxy.nFramesAcquired == 2
    with pytest.raises(tango.DevFailed) as exc:
        proxy.Arm()
    assert "cannot Arm in FAULT" in desc(exc)
    assert proxy.state() == tango.DevState.FAULT
    sim.control.clear_fault()
    assert proxy.state() == tango.DevState.STANDBY
    assert proxy.status() == ""
    proxy.nFramesPerTrigger = 1
    proxy.Arm()
    wait_attr(proxy, "ReadyForSwTrigger", True)
    proxy.SoftwareTrigger()
    wait_state(proxy, tango.DevState.STANDBY)
    stream.read_series_ends(1)
    assert stream.frame_numbers == [0, 1, 0]


def test_init_command_leaves_fault(device: Any) -> None:
    # Regression: a device-defined "Init" command was shadowed by Tango's
    # built-in Init, so DeviceProxy.Init() left the device in FAULT.
    sim, _, proxy = device
    sim.faults.fault_after = 0
    proxy.Arm()
    wait_attr(proxy, "ReadyForSwTrigger", True)
    proxy.SoftwareTrigger()
    wait_state(proxy, tango.DevState.FAULT)
    proxy.Init()
    assert proxy.state() == tango.DevState.STANDBY
    assert proxy.status() == ""
    assert proxy.get_command_list().count("Init") == 1
    proxy.Arm()  # usable again
    wait_attr(proxy, "ReadyForSwTrigger", True)
    proxy.SoftwareTrigger()
    wait_state(proxy, tango.DevState.STANDBY)


# --- stream header echo ---------------------------------------------------------------


def test_header_echoes_destination_file(device: Any) -> None:
    sim, stream, proxy = device
    names = ["/data/2025/scan_000042_xspress3.hdf5", "/data/2025/scan_000043.h5"]
    proxy.nFramesPerTrigger = 1
    proxy.ExposureTime = 0.005
    proxy.Window1_Ch1 = [10, 20]
    for name, overwritable in zip(names, [True, False], strict=True):
        proxy.DestinationFileName = name
        proxy.DestinationFileOverwritable = overwritable
        proxy.Arm()
        wait_attr(proxy, "ReadyForSwTrigger", True)
        proxy.SoftwareTrigger()
        wait_state(proxy, tango.DevState.STANDBY)
    stream.read_series_ends(2)
    assert [h.filename for h in stream.headers] == names
    assert [h.overwritable for h in stream.headers] == [True, False]
    limits = stream.headers[0].limits
    assert limits is not None
    assert limits.to_wire() == [
        [FE_KA, [10, 20], FE_KA],
        [CU_KA, CU_KA, CU_KA],
    ]
    frame = stream.frames[0]
    assert isinstance(frame, Frame)
    assert frame.window_counts is not None
    assert int(frame.window_counts[0, 1]) == int(frame.spectra[1, 10:21].sum())
    assert sim.control.destination_file_name == names[-1]


# --- server life cycle ----------------------------------------------------------------


def test_start_stop_three_times_in_a_row(reader: Any, tmp_path: Any) -> None:
    trls = []
    for i in range(3):
        with XspressSimulator(
            channels=1 + i,
            stream="tcp://127.0.0.1:0",
            pace=False,
            destination_file_name=str(tmp_path / "temp.h5"),  # the device's own
        ) as sim:
            stream = reader(sim.stream_endpoint, "sub")
            proxy = tango.DeviceProxy(sim.tango_trl)
            trls.append(sim.tango_trl)
            assert proxy.state() == tango.DevState.STANDBY
            assert proxy.nChannels == 1 + i
            proxy.nFramesPerTrigger = 2
            proxy.Arm()
            proxy.SoftwareTrigger()
            wait_state(proxy, tango.DevState.STANDBY)
            stream.read_series_ends(1)
            assert stream.sequence() == ["header", 0, 1, "series_end"]
            assert stream.frames[0].channels == 1 + i
            del proxy
        with pytest.raises(RuntimeError, match="no Tango device"):
            _ = sim.tango_trl
    assert len(set(trls)) == 3  # a fresh server (port) each time


def test_second_simultaneous_server_refused(tango_sim: Any) -> None:
    sim, _ = tango_sim(channels=1, pace=False)
    other = XspressSimulator(channels=1, stream="tcp://127.0.0.1:0")
    with pytest.raises(RuntimeError, match="one device server per process"):
        other.start()
    # the refusal left the running server alone
    proxy = tango.DeviceProxy(sim.tango_trl)
    assert proxy.state() == tango.DevState.STANDBY
    assert proxy.nChannels == 1
    del proxy
