"""The simulated device's interface, compared with the MAX IV device's source.

The tables (``tests/sim/device_table.py``) are transcribed by hand from
``xspress3/DeviceServer.py`` of maxiv-science/xspress3-streamer, each row with
the lines it comes from. The simulator's ``attribute_list_query()`` /
``command_list_query()`` must match them exactly (plus Tango's own ``State``,
``Status`` and ``Init``), and its device properties must have the same types
and defaults.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tango
from tango import AttrDataFormat as Fmt
from tango import AttrWriteType as Access
from tango import CmdArgType as T
from tests.sim.device_table import (
    ATTRIBUTES,
    CHANNEL_ATTRIBUTES,
    CHANNELS,
    COMMANDS,
    COUNTER_COMMANDS,
    PROPERTIES,
)

from ophyd_xspress.sim import DEVICE_DEFAULTS, Xspress3DS, XspressSimulator


@pytest.fixture
def device(
    tango_sim: Any, request: pytest.FixtureRequest
) -> Iterator[tuple[XspressSimulator, Any, tango.DeviceProxy]]:
    options = getattr(request, "param", {})
    sim, stream = tango_sim(channels=CHANNELS, pace=False, **options)
    proxy = tango.DeviceProxy(sim.tango_trl)
    yield sim, stream, proxy
    del proxy


def _expected_attributes() -> dict[str, tuple[T, Fmt, Access, int]]:
    out = {name: (row[0], row[1], row[2], 1) for name, row in ATTRIBUTES.items()}
    for pattern, (dtype, fmt, access, dim, _) in CHANNEL_ATTRIBUTES.items():
        for n in range(CHANNELS):
            out[pattern.format(n=n)] = (dtype, fmt, access, dim)
    out["State"] = (T.DevState, Fmt.SCALAR, Access.READ, 1)
    out["Status"] = (T.DevString, Fmt.SCALAR, Access.READ, 1)
    return out


def test_attributes_and_commands_are_the_devices(device: Any) -> None:
    sim, _, proxy = device
    found = {
        a.name: (a.data_type, a.data_format, a.writable, a.max_dim_x)
        for a in proxy.attribute_list_query()
    }
    assert found == _expected_attributes()
    for a in proxy.attribute_list_query():
        if a.name in ATTRIBUTES and ATTRIBUTES[a.name][3] is not None:
            assert a.format == ATTRIBUTES[a.name][3], a.name
        if a.name in ATTRIBUTES:
            assert a.unit == "", a.name  # the device gives no units
    commands = {c.cmd_name: (c.in_type, c.out_type) for c in proxy.command_list_query()}
    assert commands == {name: row[:2] for name, row in COMMANDS.items()}

    # defaults, through Tango and in the engine's table
    for name, (_, _, _, _, default, source) in ATTRIBUTES.items():
        if name == "DestinationFileName":  # the test's (conftest): see below
            default = sim.control.destination_file_name
        value = proxy.read_attribute(name).value
        if isinstance(default, float):
            assert value == pytest.approx(default, abs=1e-15), (name, source)
        else:
            assert value == default, (name, source)
    assert DEVICE_DEFAULTS.write_hdf5 is True
    assert DEVICE_DEFAULTS.latency_time == 0.0
    assert proxy.status() == ""  # DeviceServer.py:149
    # the simulator's own default file name is the test's (conftest): the
    # device's default is what a bare simulator starts with
    bare = XspressSimulator(channels=1, tango=False)
    assert bare.control.destination_file_name == "/tmp/temp.h5"
    assert bare.control.write_hdf5 is True
    assert sim.control.write_hdf5 is True


def test_device_properties_are_the_devices() -> None:
    declared = {
        name: (getattr(Xspress3DS, name).dtype, getattr(Xspress3DS, name).default_value)
        for name in PROPERTIES
    }
    assert declared == PROPERTIES
    # and no other property (the engine is found by the device's name)
    others = {
        name
        for name, value in vars(Xspress3DS).items()
        if type(value).__name__ == "device_property"
    }
    assert others == set(PROPERTIES)


COUNTERS = {"device_properties": {"ReturnCounters": True, "EventWidths": [3, 9]}}


@pytest.mark.parametrize("device", [COUNTERS], indirect=True)
def test_return_counters_and_event_width_properties(device: Any) -> None:
    """ReturnCounters adds the four commands, answering as DeviceServer.py
    214-279 does; EventWidths with one value per channel replaces the
    calibration (Instrument.py 107-118) and streams as int64."""
    sim, stream, proxy = device
    commands = {c.cmd_name: (c.in_type, c.out_type) for c in proxy.command_list_query()}
    want = {name: row[:2] for name, row in {**COMMANDS, **COUNTER_COMMANDS}.items()}
    assert commands == want
    assert [proxy.read_attribute(f"EventWidth_Ch{n}").value for n in (0, 1)] == [3, 9]
    # nothing acquired: -1 for every frame asked for
    assert proxy.ReadRawCounts_Window1([0, 1, 3]).tolist() == [-1, -1, -1]
    proxy.ExposureTime = 0.01
    proxy.nFramesPerTrigger = 4
    proxy.WriteHdf5 = False
    proxy.Arm()
    proxy.SoftwareTrigger()
    deadline = time.monotonic() + 5
    while proxy.state() != tango.DevState.STANDBY:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    stream.read_series_ends(1)
    frames = stream.frames
    assert [f.frame for f in frames] == [0, 1, 2, 3]
    for f in frames:
        assert f["event_width"].dtype == np.int64
        assert f["event_width"].tolist() == [3, 9]
    for window in (1, 2):
        for ch in range(CHANNELS):
            raw = [int(f.window_counts[window - 1, ch]) for f in frames]
            dtc = [f["dead_time_correction"][ch] for f in frames]
            got = proxy.command_inout(f"ReadRawCounts_Window{window}", [ch, 1, 4])
            assert got.tolist() == raw
            corrected = proxy.command_inout(f"ReadDtcCounts_Window{window}", [ch, 1, 4])
            np.testing.assert_allclose(corrected, np.multiply(raw, dtc), rtol=1e-15)
    # frames from 1 (0 counts as 1); past the last frame acquired: -1
    # (the count of values is taken after first is raised to 1)
    assert proxy.ReadRawCounts_Window1([0, 0, 2]).tolist() == [
        int(frames[0].window_counts[0, 0]),
        int(frames[1].window_counts[0, 0]),
    ]
    assert proxy.ReadRawCounts_Window2([1, 3, 6]).tolist() == [
        int(frames[2].window_counts[1, 1]),
        int(frames[3].window_counts[1, 1]),
        -1,
        -1,
    ]
    assert proxy.ReadDtcCounts_Window1([0, 5, 6]).tolist() == [-1.0, -1.0]
    assert sim.control.event_widths.tolist() == [3, 9]
