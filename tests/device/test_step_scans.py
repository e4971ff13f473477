# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""Step scans (and the trigger modes) on the simulated Xspress3, end to end.

Real simulator, real Tango device server, real ZeroMQ stream, real RunEngine:
every event must carry exactly the frame the simulator sent for that trigger
(each ``trigger()`` is one ``Arm``, i.e. one series, so event ``i`` of a fresh
simulator is ``expected_frame(i, 0)``), and every derived quantity must equal the
event-width formulas computed here, independently, from that frame's scalers.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from bluesky.plans import count, scan
from ophyd_async.core import DetectorTrigger, TriggerInfo, init_devices
from ophyd_async.sim import SimMotor

CLOCK_HZ = 80e6
READOUT = 25e-9
CHANNELS = 4
BINS = 4096
GROUP = "/entry/instrument/xspress3"

#: Fe: (6250, 6550) eV at 10 eV/bin -> the bins holding 6250 eV and 6550 eV.
FE_BINS = (625, 655)
CU_BINS = (790, 820)
RAW_SCALERS = {
    "all_events": "<u4",
    "all_good": "<u4",
    "clock_ticks": "<u4",
    "total_ticks": "<u4",
    "reset_ticks": "<u4",
    "event_width": "<i4",
}


@pytest.fixture
def xspress_options() -> dict[str, Any]:
    return {"rois": {"Fe": (6250, 6550)}, "bin_rois": {"Cu": (790, 820)}}


@pytest.fixture
def sim(sim: Any) -> Any:
    sim.control.exposure_time = 0.01  # keep step scans quick
    return sim


def physics(frame: Any) -> dict[str, np.ndarray]:
    """The event-width method, written out from the Xspress3 facts."""
    events = frame["all_events"].astype(np.float64)
    good = frame["all_good"].astype(np.float64)
    clock = frame["clock_ticks"].astype(np.float64)
    dead = events * (frame["event_width"].astype(np.float64) + 1) + frame[
        "reset_ticks"
    ].astype(np.float64)
    dtc = clock / (clock - dead)
    real = clock / CLOCK_HZ
    ocr = good / real
    return {
        "dtc": dtc,
        "dead_time": 100 * dead / clock,
        "live_time": real / dtc,
        "ocr": ocr,
        "icr": ocr * dtc,
    }


def roi_windows() -> list[tuple[int, int]]:
    return [FE_BINS, CU_BINS]


def check_event_against_frame(data: dict[str, Any], frame: Any) -> None:
    """Every field of one inline event against the frame the simulator sent."""
    spectra = data["xspress"]
    assert isinstance(spectra, np.ndarray)
    assert spectra.dtype == np.uint32
    assert spectra.shape == (CHANNELS, BINS)
    np.testing.assert_array_equal(spectra, frame.spectra)
    assert data["xspress-frame_number"] == frame.frame
    assert data["xspress-anomalies"] == 0
    for name, dtype in RAW_SCALERS.items():
        value = data[f"xspress-{name}"]
        assert value.dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(value, frame[name], err_msg=name)
    expect = physics(frame)
    # the streamed correction is passed through unchanged; dtc is the formula's
    # (one dead-time source), which the simulator's own factor also follows
    np.testing.assert_array_equal(
        data["xspress-dead_time_correction"], frame["dead_time_correction"]
    )
    np.testing.assert_allclose(data["xspress-dtc"], expect["dtc"], rtol=1e-12)
    np.testing.assert_allclose(
        data["xspress-dtc"], frame["dead_time_correction"], rtol=1e-12
    )
    for key in ("dead_time", "live_time", "ocr", "icr"):
        np.testing.assert_allclose(
            data[f"xspress-{key}"], expect[key], rtol=1e-12, err_msg=key
        )
    raw = np.array(
        [
            [int(frame.spectra[c, lo : hi + 1].sum()) for lo, hi in roi_windows()]
            for c in range(CHANNELS)
        ],
        dtype=np.uint64,
    )
    assert data["xspress-roi"].dtype == np.uint64
    np.testing.assert_array_equal(data["xspress-roi"], raw)
    corrected = raw.astype(np.float64) * expect["dtc"][:, None]
    np.testing.assert_allclose(data["xspress-roi_corrected"], corrected, rtol=1e-12)
    for r, name in enumerate(("Fe", "Cu")):
        assert data[f"xspress-{name}"] == pytest.approx(
            corrected[:, r].sum(), rel=1e-12
        )
        for c in range(CHANNELS):
            assert data[f"xspress-{name}-ch{c}"] == pytest.approx(
                corrected[c, r], rel=1e-12
            )
    for c in range(CHANNELS):
        assert data[f"xspress-dead_time-ch{c}"] == pytest.approx(
            expect["dead_time"][c], rel=1e-12
        )
    # the windows really hold counts (the simulated sample has Fe and Cu lines)
    assert raw.sum() > 0


# -- count -----------------------------------------------------------------------------
def test_count_events_are_the_frames_sent(RE, sim, xspress, docs, stream_tap):
    tap = stream_tap(sim.stream_endpoint)
    first = sim.control.series_index + 1
    RE(count([xspress], 5))
    docs.assert_valid()
    events = docs["event"]
    assert len(events) == 5
    assert sim.control.series_index == first + 4, "one Arm per trigger"
    for i, event in enumerate(events):
        check_event_against_frame(
            event["data"], sim.control.expected_frame(first + i, 0)
        )
    # what the simulator really put on the wire: 5 series of one frame 0
    tap.wait_for(5)
    assert [f[0] for f in tap.frames] == [0] * 5
    assert xspress.anomalies == {}
    assert all(s["frames_received"] == 1 for s in xspress.run_summaries[-5:])


def test_count_rois_are_the_configured_windows(xspress):
    assert xspress.rois == {
        "Fe": (FE_BINS,) * CHANNELS,
        "Cu": (CU_BINS,) * CHANNELS,
    }


EXPECTED_KEYS: dict[str, tuple[list[int], str, str, int | None, str]] = {
    # key suffix: (shape, dtype_numpy, units, precision, source suffix)
    "": ([CHANNELS, BINS], "<u4", "counts", None, "spectra"),
    "-dtc": ([CHANNELS], "<f8", "", 6, "dtc"),
    "-dead_time_correction": (
        [CHANNELS],
        "<f8",
        "",
        6,
        "dead_time_correction",
    ),
    "-dead_time": ([CHANNELS], "<f8", "%", 3, "dead_time"),
    "-elapsed_time": ([CHANNELS], "<f8", "s", 6, "elapsed_time"),
    "-live_time": ([CHANNELS], "<f8", "s", 6, "live_time"),
    "-icr": ([CHANNELS], "<f8", "counts/s", 1, "icr"),
    "-ocr": ([CHANNELS], "<f8", "counts/s", 1, "ocr"),
    "-all_events": ([CHANNELS], "<u4", "counts", None, "all_events"),
    "-all_good": ([CHANNELS], "<u4", "counts", None, "all_good"),
    "-clock_ticks": ([CHANNELS], "<u4", "ticks", None, "clock_ticks"),
    "-total_ticks": ([CHANNELS], "<u4", "ticks", None, "total_ticks"),
    "-reset_ticks": ([CHANNELS], "<u4", "ticks", None, "reset_ticks"),
    "-event_width": ([CHANNELS], "<i4", "ticks", None, "event_width"),
    # the stream's own field, with its real unit (a units bug in the device)
    "-stream_output_count_rate": (
        [CHANNELS],
        "<f8",
        "1.5625e-16 counts/s",
        None,
        "stream_output_count_rate",
    ),
    # the simulator's stream carries them, as new firmware does
    "-window_counts": ([2, CHANNELS], "<u4", "counts", None, "window_counts"),
    "-roi": ([CHANNELS, 2], "<u8", "counts", None, "roi"),
    "-roi_corrected": ([CHANNELS, 2], "<f8", "counts", 1, "roi_corrected"),
    "-frame_number": ([], "<i8", "", None, "frame"),
    "-anomalies": ([], "<i8", "", None, "anomalies"),
    "-Fe": ([], "<f8", "counts", 1, "roi:Fe"),
    "-Cu": ([], "<f8", "counts", 1, "roi:Cu"),
    **{
        f"-{roi}-ch{c}": ([], "<f8", "counts", 1, f"roi:{roi}:ch{c}")
        for roi in ("Fe", "Cu")
        for c in range(CHANNELS)
    },
    **{
        f"-dead_time-ch{c}": ([], "<f8", "%", 3, f"dead_time:ch{c}")
        for c in range(CHANNELS)
    },
    "-dead_time_max": ([], "<f8", "%", 3, "dead_time:max"),
}


def test_count_descriptor_data_keys(RE, sim, xspress, docs):
    RE(count([xspress], 1))
    docs.assert_valid()
    (descriptor,) = docs["descriptor"]
    keys = descriptor["data_keys"]
    expected = {f"xspress{suffix}" for suffix in EXPECTED_KEYS}
    assert set(keys) == expected
    for suffix, (shape, dtype_numpy, units, precision, source) in EXPECTED_KEYS.items():
        dk = keys[f"xspress{suffix}"]
        assert dk["shape"] == shape, suffix
        assert dk["dtype_numpy"] == dtype_numpy, suffix
        if shape:
            assert dk["dtype"] == "array", suffix
        elif dtype_numpy[1] in "iu":
            assert dk["dtype"] == "integer", suffix
        else:
            assert dk["dtype"] == "number", suffix
        assert dk.get("units", "") == units, suffix
        assert dk.get("precision") == precision, suffix
        assert dk["source"] == f"zmq:{sim.stream_endpoint}#{source}", suffix
        assert dk["object_name"] == "xspress"
    # the values match the declared shapes and dtypes
    (event,) = docs["event"]
    for key, dk in keys.items():
        value = np.asarray(event["data"][key])
        assert list(value.shape) == dk["shape"], key
        if dk["shape"]:
            assert value.dtype == np.dtype(dk["dtype_numpy"]), key


def test_count_hints(RE, xspress, docs):
    RE(count([xspress], 1))
    (descriptor,) = docs["descriptor"]
    fields = descriptor["hints"]["xspress"]["fields"]
    # one per ROI (summed over channels, dead-time corrected) and the largest
    # channel dead time (per channel: XspressDetector(per_channel_hints=True))
    expected = ["xspress-Fe", "xspress-Cu", "xspress-dead_time_max"]
    assert fields == expected
    assert xspress.hints == {"fields": expected}
    # every hinted field is a scalar (BestEffortCallback / LiveTable skip arrays)
    for field in fields:
        assert descriptor["data_keys"][field]["shape"] == []


def test_count_configuration(RE, sim, xspress, docs):
    RE(count([xspress], 1))
    (descriptor,) = docs["descriptor"]
    conf = descriptor["configuration"]["xspress"]
    data = conf["data"]
    assert data["xspress-control-exposure_time"] == pytest.approx(0.01)
    assert data["xspress-control-latency_time"] == pytest.approx(100e-9)
    assert data["xspress-control-trigger_mode"] == "SOFTWARE"
    assert data["xspress-n_channels_config"] == CHANNELS
    # one value per channel
    assert list(data["xspress-calibration_ev_per_bin"]) == [10.0] * CHANNELS
    assert list(data["xspress-calibration_offset_ev"]) == [0.0] * CHANNELS
    assert conf["data_keys"]["xspress-calibration_ev_per_bin"]["units"] == "eV"
    rois = data["xspress-roi_definitions"]
    assert "Fe: bins 625-655" in rois
    assert "Cu: bins 790-820" in rois
    for c in range(CHANNELS):
        assert data[f"xspress-control-channels-{c}-event_width"] == 6
    assert data["xspress-stream_endpoint"] == sim.stream_endpoint
    assert data["xspress-header_filename"] == sim.control.destination_file_name
    assert json.loads(data["xspress-hardware_windows"]) == sim.control.windows.tolist()
    # every configuration value is declared
    assert set(conf["data_keys"]) == set(data)
    assert set(conf["timestamps"]) == set(data)


def test_read_configuration_follows_the_device(RE, sim, xspress, in_loop):
    sim.control.exposure_time = 0.02
    sim.control.event_widths[2] = 9
    conf = in_loop(xspress.read_configuration)
    assert conf["xspress-control-exposure_time"]["value"] == pytest.approx(0.02)
    assert conf["xspress-control-channels-2-event_width"]["value"] == 9


@pytest.mark.parametrize("sim_options", [{"framing": "legacy"}], ids=["legacy"])
def test_count_with_legacy_framing(RE, sim, xspress, docs):
    """Old firmware: JSON, spectra and pickle as three single-part messages."""
    first = sim.control.series_index + 1
    RE(count([xspress], 3))
    docs.assert_valid()
    events = docs["event"]
    assert len(events) == 3
    for i, event in enumerate(events):
        check_event_against_frame(
            event["data"], sim.control.expected_frame(first + i, 0)
        )
    # the legacy header has no hardware windows
    conf = docs["descriptor"][0]["configuration"]["xspress"]["data"]
    assert conf["xspress-hardware_windows"] == ""
    assert xspress.anomalies == {}


def test_channel_count_mismatch_is_refused_at_connect(RE, sim):
    from ophyd_async.core import NotConnectedError

    from ophyd_xspress.device import XspressDetector

    with (
        pytest.raises(
            NotConnectedError, match=r"channels=2 but the device .* has nChannels=4"
        ),
        init_devices(),
    ):
        x = XspressDetector(  # noqa: F841 - init_devices connects what it finds
            stream=sim.stream_endpoint,
            tango=sim.tango_trl,
            name="x",
            channels=2,
            data="inline",
        )


# -- scan with a motor -----------------------------------------------------------------
def test_scan_with_motor_bit_exact(RE, sim, xspress, docs):
    with init_devices():
        motor = SimMotor(name="motor", instant=True)
    first = sim.control.series_index + 1
    RE(scan([xspress], motor, 0, 1, 11))
    docs.assert_valid()
    events = docs["event"]
    assert len(events) == 11
    positions = [e["data"]["motor"] for e in events]
    np.testing.assert_allclose(positions, np.linspace(0, 1, 11))
    for i, event in enumerate(events):
        frame = sim.control.expected_frame(first + i, 0)
        np.testing.assert_array_equal(event["data"]["xspress"], frame.spectra)
        np.testing.assert_array_equal(
            event["data"]["xspress-clock_ticks"], frame["clock_ticks"]
        )
    assert xspress.anomalies == {}


# -- timing ----------------------------------------------------------------------------
def test_trigger_deadtime_is_latency_plus_readout(RE, sim, xspress, in_loop):
    triggers, deadtime = in_loop(xspress.get_trigger_deadtime)
    assert triggers == {
        DetectorTrigger.INTERNAL,
        DetectorTrigger.EXTERNAL_EDGE,
        DetectorTrigger.EXTERNAL_LEVEL,
    }
    assert deadtime == pytest.approx(100e-9 + READOUT, abs=1e-15)
    sim.control.latency_time = 2e-6
    _, deadtime = in_loop(xspress.get_trigger_deadtime)
    assert deadtime == pytest.approx(2e-6 + READOUT, abs=1e-15)


def _prepared_count(det: Any, info: TriggerInfo, n: int = 1) -> Any:
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    def body() -> Any:
        yield from bps.prepare(det, info, wait=True)
        for _ in range(n):
            yield from bps.trigger_and_read([det])

    return (yield from bpp.stage_wrapper(bpp.run_wrapper(body()), [det]))


def test_prepare_livetime_sets_exposure(RE, sim, xspress, docs, stream_tap):
    tap = stream_tap(sim.stream_endpoint)
    first = sim.control.series_index + 1
    RE(_prepared_count(xspress, TriggerInfo(number_of_events=1, livetime=0.01), 2))
    docs.assert_valid()
    assert sim.control.exposure_time == pytest.approx(
        0.01 + 100e-9 + READOUT, abs=1e-15
    )
    assert sim.control.latency_time == pytest.approx(100e-9, abs=1e-15)
    assert sim.control.trigger_mode == "SOFTWARE"
    assert (sim.control.n_triggers, sim.control.n_frames_per_trigger) == (1, 1)
    events = docs["event"]
    assert len(events) == 2
    tap.wait_for(2)
    assert len(tap.frames) == 2
    for i, (number, exptime, ticks) in enumerate(tap.frames):
        assert number == 0
        assert exptime == pytest.approx(0.01, abs=1e-12)
        assert ticks == 800_000  # int(0.01 s * 80 MHz)
        frame = sim.control.expected_frame(first + i, 0)
        np.testing.assert_array_equal(events[i]["data"]["xspress"], frame.spectra)
        np.testing.assert_array_equal(events[i]["data"]["xspress-clock_ticks"], 800_000)
        # live time is the frame time less the dead time
        live = events[i]["data"]["xspress-live_time"]
        assert np.all(live < 0.01)
        np.testing.assert_allclose(
            live, 0.01 / frame["dead_time_correction"], rtol=1e-12
        )
    # the describe() of the configuration shows what was set
    conf = docs["descriptor"][0]["configuration"]["xspress"]["data"]
    assert conf["xspress-control-exposure_time"] == pytest.approx(0.01 + 125e-9)


def test_prepare_deadtime_sets_latency(RE, sim, xspress, docs, stream_tap):
    tap = stream_tap(sim.stream_endpoint)
    info = TriggerInfo(number_of_events=1, livetime=0.005, deadtime=0.001)
    RE(_prepared_count(xspress, info))
    assert sim.control.latency_time == pytest.approx(0.001 - READOUT, abs=1e-15)
    assert sim.control.exposure_time == pytest.approx(0.006, abs=1e-15)
    tap.wait_for(1)
    assert tap.frames[0][1] == pytest.approx(0.005, abs=1e-12)
    assert tap.frames[0][2] == 400_000


# -- external triggers (fly scans; StandardDetector arms in prepare) -------------------
def _pulse(sim: Any, n: int, width: float, gap: float) -> threading.Thread:
    def run() -> None:
        time.sleep(0.05)
        for _ in range(n):
            sim.control.ttl_pulse(width)
            time.sleep(gap)

    thread = threading.Thread(target=run, name="ttl-pulser", daemon=True)
    return thread


def _hdf5_path(docs: Any) -> Path:
    uris = {d["uri"] for d in docs["stream_resource"]}
    assert len(uris) == 1, uris
    uri = uris.pop()
    assert uri.startswith("file://localhost/")
    return Path(uri[len("file://localhost") :])


def test_external_edge_fly_scan(RE, sim, xspress, docs, fly):
    n = 8
    pulser = _pulse(sim, n, width=1e-3, gap=0.03)
    first = sim.control.series_index + 1
    info = TriggerInfo(
        number_of_events=n, trigger=DetectorTrigger.EXTERNAL_EDGE, livetime=0.004
    )
    RE(fly(xspress, info, after_kickoff=pulser.start))
    pulser.join(10)
    docs.assert_valid()
    assert sim.control.series_index == first, "armed once, in prepare"
    assert sim.control.trigger_mode == "EXTERNAL_MULTI"
    assert (sim.control.n_triggers, sim.control.n_frames_per_trigger) == (n, 1)
    assert sim.control.exposure_time == pytest.approx(0.004 + 125e-9, abs=1e-15)
    with h5py.File(_hdf5_path(docs), "r") as f:
        np.testing.assert_array_equal(f[f"{GROUP}/frame_number"][:], np.arange(n))
        data = f[f"{GROUP}/data"]
        assert data.shape == (n, CHANNELS, BINS)
        ticks = f[f"{GROUP}/clock_ticks"][:]
        assert (ticks == 320_000).all()  # int(0.004 s * 80 MHz)
        for i in range(n):
            np.testing.assert_array_equal(
                data[i], sim.control.expected_frame(first, i).spectra
            )
    assert xspress.anomalies == {}
    assert xspress.run_summaries[-1]["frames_received"] == n


def test_external_level_fly_scan(RE, sim, xspress, docs, fly):
    n, width = 5, 0.02
    pulser = _pulse(sim, n, width=width, gap=0.01)
    first = sim.control.series_index + 1
    exposure_before = sim.control.exposure_time
    info = TriggerInfo(number_of_events=n, trigger=DetectorTrigger.EXTERNAL_LEVEL)
    RE(fly(xspress, info, after_kickoff=pulser.start))
    pulser.join(10)
    docs.assert_valid()
    assert sim.control.trigger_mode == "EXTERNAL_MULTI_GATE"
    assert (sim.control.n_triggers, sim.control.n_frames_per_trigger) == (n, 1)
    assert sim.control.exposure_time == exposure_before, "the gate sets the time"
    with h5py.File(_hdf5_path(docs), "r") as f:
        np.testing.assert_array_equal(f[f"{GROUP}/frame_number"][:], np.arange(n))
        ticks = f[f"{GROUP}/clock_ticks"][:]
        data = f[f"{GROUP}/data"]
        live = f[f"{GROUP}/live_time"][:]
        for i in range(n):
            # one gate, one frame: its clock ticks are the gate width
            assert len(set(ticks[i])) == 1
            gate = int(ticks[i, 0]) / CLOCK_HZ
            assert width - 1e-6 <= gate < width + 0.05, gate
            frame = sim.control.expected_frame(first, i, clock_ticks=int(ticks[i, 0]))
            np.testing.assert_array_equal(data[i], frame.spectra)
            assert np.all(live[i] <= gate)


def test_level_trigger_ignores_livetime(RE, sim, xspress):
    """EXTERNAL_LEVEL ignores livetime (the gate decides); prepare still works."""
    import bluesky.plan_stubs as bps

    info = TriggerInfo(
        number_of_events=2, trigger=DetectorTrigger.EXTERNAL_LEVEL, livetime=0.5
    )

    def plan() -> Any:
        yield from bps.stage(xspress, wait=True)
        yield from bps.prepare(xspress, info, wait=True)
        yield from bps.unstage(xspress, wait=True)

    RE(plan())
    assert sim.control.exposure_time == pytest.approx(0.01)
    assert not math.isclose(sim.control.exposure_time, 0.5)
