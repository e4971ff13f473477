"""XspressTriggerLogic on ophyd-async's mock backend (no Tango server).

What the logic writes to the device at prepare (trigger mode, frame counts,
``ExposureTime`` / ``LatencyTime``, ``WriteHdf5``, the hardware windows), what
it records for the other logics
(:class:`AcquisitionSettings`) and what it reports (dead time, the default
TriggerInfo). The device's ``ExposureTime`` is the whole frame period:
``ExposureTime = livetime + LatencyTime + 25 ns`` (readout), and
``LatencyTime = max(deadtime - 25 ns, 100 ns)``.
"""

from __future__ import annotations

from typing import Any

import pytest
from ophyd_async.core import (
    DetectorTrigger,
    SignalDict,
    TriggerInfo,
    get_mock,
    set_mock_value,
)

from ophyd_xspress.device._control import XspressControl
from ophyd_xspress.device._detector import XspressDetector
from ophyd_xspress.device._settings import AcquisitionSettings, DataConfig, DataMode
from ophyd_xspress.device._trigger_logic import XspressTriggerLogic
from ophyd_xspress.protocol import Calibration

TRL = "tango://127.0.0.1:10000/test/xspress3/1"
STREAM = "tcp://127.0.0.1:9999"
READOUT = 25e-9  # the device's ReadoutTime, written out here on purpose
MIN_LATENCY = 100e-9
NUM = 7


@pytest.fixture
async def control() -> XspressControl:
    c = XspressControl(TRL, name="xspress3")
    await c.connect(mock=True)
    return c


def make_config(data_mode: DataMode = "auto") -> DataConfig:
    return DataConfig(
        name="xspress",
        stream=STREAM,
        channels=4,
        bins=4096,
        calibration=Calibration(10.0, 0.0),
        data_mode=data_mode,
    )


def device_calls(control: XspressControl) -> dict[str, Any]:
    """Every put and command the logic sent, by signal: ``{"n_triggers.put": 7}``
    (each is sent at most once per prepare)."""
    calls: dict[str, Any] = {}
    for name, args, _ in get_mock(control).mock_calls:
        assert name not in calls, f"{name} sent twice"
        calls[name] = args[0] if args else None
    return calls


async def prepare(
    logic: XspressTriggerLogic,
    trigger: DetectorTrigger,
    num: int,
    livetime: float = 0.0,
    deadtime: float = 0.0,
) -> None:
    """What StandardDetector.prepare calls for ``trigger``."""
    if trigger is DetectorTrigger.INTERNAL:
        await logic.prepare_internal(num=num, livetime=livetime, deadtime=deadtime)
    elif trigger is DetectorTrigger.EXTERNAL_EDGE:
        await logic.prepare_edge(num=num, livetime=livetime)
    else:
        await logic.prepare_level(num=num)


# -- trigger modes and frame counts ------------------------------------------------
@pytest.mark.parametrize(
    ("trigger", "mode", "n_triggers", "per_trigger", "timed"),
    [
        (DetectorTrigger.INTERNAL, "SOFTWARE", 1, NUM, True),
        (DetectorTrigger.EXTERNAL_EDGE, "EXTERNAL_MULTI", NUM, 1, True),
        (DetectorTrigger.EXTERNAL_LEVEL, "EXTERNAL_MULTI_GATE", NUM, 1, False),
    ],
)
async def test_each_trigger_sets_its_mode_and_frame_counts(
    control: XspressControl,
    trigger: DetectorTrigger,
    mode: str,
    n_triggers: int,
    per_trigger: int,
    timed: bool,
) -> None:
    settings = AcquisitionSettings()
    logic = XspressTriggerLogic(control, settings, make_config())
    await prepare(logic, trigger, NUM)
    # livetime 0: the device keeps its exposure; WriteHdf5 is switched off
    # (the device's default is on); the device's LatencyTime of 0 (its
    # default) is raised to the shortest this project runs internally timed
    # frames with
    expected: dict[str, Any] = {
        "trigger_mode.put": mode,
        "n_triggers.put": n_triggers,
        "n_frames_per_trigger.put": per_trigger,
        "write_hdf5.put": False,
    }
    if timed:
        expected["latency_time.put"] = MIN_LATENCY
    assert device_calls(control) == expected
    assert (settings.trigger, settings.num) == (trigger, NUM)


async def test_a_latency_of_at_least_the_minimum_is_kept(
    control: XspressControl,
) -> None:
    set_mock_value(control.latency_time, 2e-6)
    logic = XspressTriggerLogic(control, AcquisitionSettings(), make_config())
    await logic.prepare_internal(num=1, livetime=0.0, deadtime=0.0)
    assert "latency_time.put" not in device_calls(control)
    assert "exposure_time.put" not in device_calls(control)


async def test_the_device_may_write_its_own_file_when_asked(
    control: XspressControl,
) -> None:
    logic = XspressTriggerLogic(
        control, AcquisitionSettings(), make_config(), device_writes_hdf5=True
    )
    await logic.prepare_internal(num=1, livetime=0.0, deadtime=0.0)
    assert device_calls(control)["write_hdf5.put"] is True


@pytest.mark.parametrize(
    ("deadtime", "latency"),
    [
        (1e-3, 1e-3 - READOUT),
        (0.0, MIN_LATENCY),  # 0: the shortest the device allows
        (50e-9, MIN_LATENCY),
        (MIN_LATENCY + READOUT, MIN_LATENCY),
        (200e-9, 175e-9),
    ],
)
async def test_internal_frame_timing(
    control: XspressControl, deadtime: float, latency: float
) -> None:
    settings = AcquisitionSettings(stall_timeout=5.0)
    logic = XspressTriggerLogic(control, settings, make_config())
    await logic.prepare_internal(num=NUM, livetime=0.1, deadtime=deadtime)
    assert device_calls(control) == pytest.approx(
        {
            "trigger_mode.put": "SOFTWARE",
            "n_triggers.put": 1,
            "n_frames_per_trigger.put": NUM,
            "latency_time.put": latency,
            "exposure_time.put": 0.1 + latency + READOUT,
            "write_hdf5.put": False,
        },
        abs=1e-15,
    )
    # recorded from the device's read-back values
    assert settings.livetime == pytest.approx(0.1, abs=1e-15)
    assert settings.deadtime == pytest.approx(latency + READOUT, abs=1e-15)
    assert settings.stall_timeout_for_run() == pytest.approx(
        5.0 + 2 * (0.1 + latency + READOUT), abs=1e-12
    )


async def test_edge_sets_the_exposure_with_the_shortest_latency(
    control: XspressControl,
) -> None:
    settings = AcquisitionSettings()
    logic = XspressTriggerLogic(control, settings, make_config())
    await logic.prepare_edge(num=NUM, livetime=0.02)
    assert device_calls(control) == pytest.approx(
        {
            "trigger_mode.put": "EXTERNAL_MULTI",
            "n_triggers.put": NUM,
            "n_frames_per_trigger.put": 1,
            "latency_time.put": MIN_LATENCY,
            "exposure_time.put": 0.02 + MIN_LATENCY + READOUT,
            "write_hdf5.put": False,
        },
        abs=1e-15,
    )
    assert settings.livetime == pytest.approx(0.02, abs=1e-15)
    assert settings.deadtime == pytest.approx(MIN_LATENCY + READOUT, abs=1e-15)


async def test_level_sets_no_exposure_and_records_the_device_timing(
    control: XspressControl,
) -> None:
    """The gate sets each frame's length: ExposureTime is left as it is, and
    the settings record what the device has."""
    set_mock_value(control.exposure_time, 0.5)
    set_mock_value(control.latency_time, 1e-6)
    settings = AcquisitionSettings()
    logic = XspressTriggerLogic(control, settings, make_config())
    await logic.prepare_level(num=NUM)
    calls = device_calls(control)
    assert "exposure_time.put" not in calls
    assert "latency_time.put" not in calls
    assert calls["trigger_mode.put"] == "EXTERNAL_MULTI_GATE"
    assert settings.livetime == pytest.approx(0.5 - 1e-6 - READOUT, abs=1e-15)
    assert settings.deadtime == pytest.approx(1e-6 + READOUT, abs=1e-15)


async def test_zero_frames_are_refused_before_anything_is_written(
    control: XspressControl,
) -> None:
    logic = XspressTriggerLogic(control, AcquisitionSettings(), make_config())
    with pytest.raises(ValueError, match=r"^xspress: the Xspress3 needs a finite") as e:
        await logic.prepare_internal(num=0, livetime=0.1, deadtime=0.0)
    assert str(e.value) == (
        "xspress: the Xspress3 needs a finite number of frames (got 0)"
    )
    assert device_calls(control) == {}


# -- data="inline" -----------------------------------------------------------------
@pytest.mark.parametrize("passive", [False, True])
async def test_inline_data_refuses_a_fly_scan_with_the_remedy(
    control: XspressControl, passive: bool
) -> None:
    settings = AcquisitionSettings()
    logic = XspressTriggerLogic(
        None if passive else control, settings, make_config("inline")
    )
    with pytest.raises(ValueError, match="data='inline'") as e:
        await logic.prepare_internal(num=10, livetime=0.1, deadtime=0.0)
    assert str(e.value) == (
        "xspress: data='inline' puts one frame in each event (step scans); a "
        "prepare for 10 frames (a fly scan) needs XspressDetector(data='auto') "
        "or data='hdf5'"
    )
    assert device_calls(control) == {}
    assert settings.num == 1  # nothing recorded either


async def test_inline_data_takes_one_frame(control: XspressControl) -> None:
    settings = AcquisitionSettings()
    logic = XspressTriggerLogic(control, settings, make_config("inline"))
    await logic.prepare_internal(num=1, livetime=0.0, deadtime=0.0)
    assert device_calls(control)["n_frames_per_trigger.put"] == 1
    assert settings.num == 1


# -- passive: no device to write to ------------------------------------------------
@pytest.mark.parametrize(
    ("trigger", "livetime", "deadtime"),
    [
        (DetectorTrigger.INTERNAL, 0.1, 0.002),
        (DetectorTrigger.EXTERNAL_EDGE, 0.05, 0.0),
        (DetectorTrigger.EXTERNAL_LEVEL, 0.0, 0.0),
    ],
)
async def test_passive_records_the_requested_timing(
    trigger: DetectorTrigger, livetime: float, deadtime: float
) -> None:
    settings = AcquisitionSettings()
    logic = XspressTriggerLogic(None, settings, make_config())
    await prepare(logic, trigger, 4, livetime, deadtime)
    assert (settings.trigger, settings.num) == (trigger, 4)
    assert (settings.livetime, settings.deadtime) == (livetime, deadtime)


# -- what the logic reports -----------------------------------------------------------
def test_config_signals_are_the_timing_and_mode(control: XspressControl) -> None:
    logic = XspressTriggerLogic(control, AcquisitionSettings(), make_config())
    assert logic.config_sigs() == {
        control.exposure_time,
        control.latency_time,
        control.trigger_mode,
    }
    passive = XspressTriggerLogic(None, AcquisitionSettings(), make_config())
    assert passive.config_sigs() == set()


def test_deadtime_is_latency_plus_readout(control: XspressControl) -> None:
    logic = XspressTriggerLogic(control, AcquisitionSettings(), make_config())
    values = SignalDict({control.latency_time: 1e-6})
    assert logic.get_deadtime(values) == 1e-6 + READOUT
    # below the minimum (the device's default 0): what prepare will set
    values = SignalDict({control.latency_time: 0.0})
    assert logic.get_deadtime(values) == MIN_LATENCY + READOUT
    # without the device's value: the shortest latency this project sets
    assert logic.get_deadtime(SignalDict()) == MIN_LATENCY + READOUT
    passive = XspressTriggerLogic(None, AcquisitionSettings(), make_config())
    assert passive.get_deadtime(SignalDict()) == MIN_LATENCY + READOUT


async def test_detector_reports_its_triggers_and_deadtime() -> None:
    """Through StandardDetector's public API: all three triggers, and the dead
    time from the device's LatencyTime (the detector connected on mocks)."""
    det = XspressDetector(STREAM, TRL, name="xspress")
    await det.connect(mock=True)
    assert det.control is not None
    set_mock_value(det.control.latency_time, 2e-6)
    triggers, deadtime = await det.get_trigger_deadtime()
    assert triggers == set(DetectorTrigger)
    assert deadtime == 2e-6 + READOUT


@pytest.mark.parametrize(
    ("exposure", "latency", "livetime"),
    [
        (0.2, 1e-4, 0.2 - 1e-4 - READOUT),
        (0.0, 1e-4, 0.0),  # never negative
    ],
)
async def test_default_trigger_info_reads_the_device(
    control: XspressControl, exposure: float, latency: float, livetime: float
) -> None:
    set_mock_value(control.exposure_time, exposure)
    set_mock_value(control.latency_time, latency)
    logic = XspressTriggerLogic(control, AcquisitionSettings(), make_config())
    info = await logic.default_trigger_info()
    assert info.trigger is DetectorTrigger.INTERNAL
    assert info.number_of_events == 1
    assert info.livetime == pytest.approx(livetime, abs=1e-15)
    assert info.deadtime == pytest.approx(latency + READOUT, abs=1e-15)
    assert device_calls(control) == {}  # reads only


async def test_default_trigger_info_of_a_passive_detector() -> None:
    logic = XspressTriggerLogic(None, AcquisitionSettings(), make_config())
    assert await logic.default_trigger_info() == TriggerInfo()
