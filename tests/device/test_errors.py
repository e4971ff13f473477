# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""Failures on the simulated Xspress3: stalled streams, a device stuck RUNNING or
in FAULT, interrupted scans, lost / repeated / swapped frames, and resource use
over many stage/unstage cycles. Each must fail (or not) with the facts, and leave
the data that did arrive in the right HDF5 rows."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
import pytest
from bluesky.plans import count
from ophyd_async.core import TriggerInfo
from tests.helpers import find_in_chain

from ophyd_xspress.device import DetectorFaultError, DeviceStuckError
from ophyd_xspress.transport import StreamIncompleteError, StreamStalledError

CHANNELS = 4
BINS = 4096
GROUP = "/entry/instrument/xspress3"


def _idle_seconds(message: str) -> float:
    """The ``for N s`` of a stall message ("no frame from X for N s: ...")."""
    match = re.search(r" for ([0-9.]+) s: received", message)
    assert match is not None, message
    return float(match.group(1))


def only_h5(tmp_path: Path) -> Path:
    files = sorted(tmp_path.glob("*.h5"))
    assert len(files) == 1, files
    return files[0]


# -- stall -----------------------------------------------------------------------------
def test_stalled_stream_fails_with_the_facts(
    RE, sim, make_xspress, docs, fly, tmp_path
):
    xspress = make_xspress(stall_timeout=1.0)
    first = sim.control.series_index + 1
    sim.faults.stall_after = 2
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011 - the chain is checked below
        RE(fly(xspress, TriggerInfo(number_of_events=10, livetime=0.01)))
    elapsed = time.monotonic() - t0
    stalled = find_in_chain(info.value, StreamStalledError)
    message = str(stalled)
    assert sim.stream_endpoint in message
    assert "received 3 of 10 frames" in message
    assert "missing 3-9" in message
    # noticed by the 1 s stall watch, not by the generic 10 s exposure time-out
    assert _idle_seconds(message) < 5, message
    assert elapsed < 30, f"took {elapsed:.1f} s to fail"
    docs.assert_valid()
    assert docs["stop"][0]["exit_status"] == "fail"
    # every frame that did arrive is on disk, in its own row
    with h5py.File(only_h5(tmp_path), "r") as f:
        g = f[GROUP]
        fn = g["frame_number"][:]
        assert list(fn[:3]) == [0, 1, 2]
        assert (fn[3:] == -1).all()
        for i in range(3):
            np.testing.assert_array_equal(
                g["data"][i], sim.control.expected_frame(first, i).spectra
            )
        assert not g["data"][3:].any()
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == 3
    assert summary["missing"] == list(range(3, 10))


def test_lost_step_scan_frame_fails_with_the_facts(RE, sim, make_xspress, docs):
    """A trigger whose frame never arrives (the series ends without it): the
    status fails as soon as series_end arrives, naming endpoint and frames."""
    sim.control.exposure_time = 0.01
    xspress = make_xspress(stall_timeout=5.0)
    sim.faults.drop_frames = {0}  # the next series' only frame is never sent
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011
        RE(count([xspress], 1))
    assert time.monotonic() - t0 < 5  # not after the stall time-out
    incomplete = find_in_chain(info.value, StreamIncompleteError)
    assert sim.stream_endpoint in str(incomplete)
    assert "ended after 0 of 1 frames; missing 0" in str(incomplete)
    assert docs["event"] == []


def test_stalled_step_scan_fails_with_the_facts(RE, sim, make_xspress, docs):
    """A stream that goes silent mid-run: a stall error, not a bare time-out."""
    sim.control.exposure_time = 0.01
    xspress = make_xspress(stall_timeout=1.0)
    # the header is sent, then nothing (the frame and series_end are held back)
    sim.faults.stall_after = -1
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011
        RE(count([xspress], 1))
    sim.faults.release()
    assert time.monotonic() - t0 < 30
    stalled = find_in_chain(info.value, StreamStalledError)
    assert _idle_seconds(str(stalled)) < 5, str(stalled)
    assert sim.stream_endpoint in str(stalled)
    assert "received 0 of 1 frames" in str(stalled)
    assert docs["event"] == []


def test_device_stuck_running_after_its_frames_is_reported_as_such(
    RE, sim, make_xspress
):
    sim.control.exposure_time = 0.01
    xspress = make_xspress(stall_timeout=1.0)
    # every frame arrives, but the device stays RUNNING (its frame counter
    # never reaches the count it waits for)
    sim.faults.stay_running = True
    with pytest.raises(Exception) as info:  # noqa: PT011
        RE(count([xspress], 1))
    # the first time-out in the chain is the one the user reads
    reported = find_in_chain(info.value, TimeoutError)
    assert isinstance(reported, DeviceStuckError), repr(reported)
    assert "still RUNNING 1.0 s after its last frame arrived" in str(reported)
    assert sim.tango_trl in str(reported)
    assert "no frame" not in str(reported), str(reported)


def test_step_scan_with_a_frame_longer_than_the_default_timeout(
    RE, sim, xspress, docs, monkeypatch
):
    import ophyd_async.core._detector as standard_detector

    monkeypatch.setattr(standard_detector, "DEFAULT_TIMEOUT", 1.0)
    sim.control.exposure_time = 1.5  # set on the device, not through prepare
    first = sim.control.series_index + 1
    RE(count([xspress], 1))
    (event,) = docs["event"]
    np.testing.assert_array_equal(
        event["data"]["xspress"], sim.control.expected_frame(first, 0).spectra
    )


# -- FAULT -----------------------------------------------------------------------------
def test_device_fault_fails_the_fly_scan(RE, sim, make_xspress, docs, fly):
    xspress = make_xspress(stall_timeout=20.0)
    sim.faults.fault_after = 3
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011
        RE(fly(xspress, TriggerInfo(number_of_events=10, livetime=0.01)))
    elapsed = time.monotonic() - t0
    fault = find_in_chain(info.value, DetectorFaultError)
    assert sim.faults.fault_status in str(fault)
    assert sim.tango_trl in str(fault)
    # before any time-out (stall 20 s, exposure 10 s): the FAULT itself was seen
    assert elapsed < 9, f"took {elapsed:.1f} s to notice the FAULT"
    assert sim.control.state == "FAULT"
    assert docs["stop"][0]["exit_status"] == "fail"


def test_device_fault_fails_the_step_scan_and_the_next_stage(
    RE, sim, make_xspress, docs
):
    sim.control.exposure_time = 0.01
    xspress = make_xspress()
    sim.faults.fault_after = 0  # FAULT right after the first frame
    with pytest.raises(Exception) as info:  # noqa: PT011
        RE(count([xspress], 3))
    fault = find_in_chain(info.value, DetectorFaultError)
    assert sim.faults.fault_status in str(fault)
    assert len(docs["event"]) <= 1
    # still in FAULT: the next scan is refused up front, with the reason
    series = sim.control.series_index
    with pytest.raises(Exception) as info:  # noqa: PT011
        RE(count([xspress], 1))
    assert sim.faults.fault_status in str(find_in_chain(info.value, DetectorFaultError))
    assert sim.control.series_index == series, "no Arm on a FAULTed device"
    # once the device is re-initialised (Tango Init) scans work again
    sim.control.clear_fault()
    docs.clear()
    RE(count([xspress], 2))
    assert len(docs["event"]) == 2
    for i, event in enumerate(docs["event"]):
        np.testing.assert_array_equal(
            event["data"]["xspress"],
            sim.control.expected_frame(series + 1 + i, 0).spectra,
        )


# -- interrupted scans -----------------------------------------------------------------
def _interrupted_fly(xspress: Any, n: int, livetime: float) -> Any:
    """A fly scan the plan gives up on after 0.3 s (e.g. the user's Ctrl-C)."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    def body() -> Any:
        info = TriggerInfo(number_of_events=n, livetime=livetime)
        yield from bps.prepare(xspress, info, wait=True)
        yield from bps.declare_stream(xspress, name="primary", collect=True)
        yield from bps.kickoff(xspress, wait=True)
        yield from bps.sleep(0.3)
        yield from bps.collect(xspress)
        raise RuntimeError("the user gave up")

    return (yield from bpp.stage_wrapper(bpp.run_wrapper(body()), [xspress]))


def test_interrupted_fly_scan_leaves_the_detector_usable(
    RE, sim, make_xspress, docs, fly, tmp_path
):
    xspress = make_xspress()
    first = sim.control.series_index + 1
    with pytest.raises(RuntimeError, match="the user gave up"):
        RE(_interrupted_fly(xspress, 1000, 0.01))
    assert sim.control.wait_idle(5), "unstage did not Stop the acquisition"
    assert sim.control.state == "STANDBY"
    (partial,) = tmp_path.glob("*.h5")
    with h5py.File(partial, "r") as f:  # closed properly, and what came is there
        fn = f[GROUP]["frame_number"][:]
        got = int((fn >= 0).sum())
        assert 0 < got < 1000
        np.testing.assert_array_equal(fn[:got], np.arange(got))
        np.testing.assert_array_equal(
            f[GROUP]["data"][got - 1],
            sim.control.expected_frame(first, got - 1).spectra,
        )
    # the next scan starts clean: its own series, from frame 0
    docs.clear()
    RE(fly(xspress, TriggerInfo(number_of_events=20, livetime=0.002)))
    docs.assert_valid()
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == 20
    assert summary["missing"] == summary["repeated"] == summary["out_of_order"] == []
    uri = docs["stream_resource"][0]["uri"]
    with h5py.File(uri[len("file://localhost") :], "r") as f:
        np.testing.assert_array_equal(f[GROUP]["frame_number"][:], np.arange(20))
        for i in range(20):
            np.testing.assert_array_equal(
                f[GROUP]["data"][i], sim.control.expected_frame(first + 1, i).spectra
            )


@pytest.mark.parametrize("sim_options", [{"pace": False}], ids=["unpaced"])
def test_interrupted_scan_leaves_no_stale_frames_for_the_next(
    RE, sim, make_xspress, docs, fly
):
    xspress = make_xspress()
    with pytest.raises(RuntimeError, match="the user gave up"):
        RE(_interrupted_fly(xspress, 1500, 0.001))
    assert sim.control.wait_idle(10)
    RE(fly(xspress, TriggerInfo(number_of_events=5, livetime=0.001)))
    assert xspress.run_summaries[-1]["frames_received"] == 5
    assert xspress.run_summaries[-1]["stale_discarded"] == 0
    assert xspress.anomalies == {}


@pytest.mark.parametrize("sim_options", [{"pace": False}], ids=["unpaced"])
def test_interrupting_an_unpaced_fly_scan_stops_the_acquisition(RE, sim, make_xspress):
    n = 1500
    xspress = make_xspress()
    with pytest.raises(RuntimeError, match="the user gave up"):
        RE(_interrupted_fly(xspress, n, 0.001))
    assert sim.control.wait_idle(10)
    assert sim.control.n_frames_acquired < n


# -- lost, repeated, out-of-order frames -----------------------------------------------
def test_repeated_and_swapped_frames_are_counted_not_shifted(
    RE, sim, make_xspress, docs, fly, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="ophyd_xspress")
    n = 20
    xspress = make_xspress(stall_timeout=2.0)
    first = sim.control.series_index + 1
    sim.faults.repeat_frames = {8: 2}
    sim.faults.swap_frames = {12}
    RE(fly(xspress, TriggerInfo(number_of_events=n, livetime=0.005)))
    docs.assert_valid()
    summary = xspress.run_summaries[-1]
    assert summary["frames_expected"] == n
    assert summary["frames_received"] == n
    assert summary["missing"] == []
    assert summary["repeated"] == [8, 8]
    assert summary["out_of_order"] == [12]
    assert xspress.anomalies == {"repeated": 2, "out_of_order": 1}
    # the receiver tells each anomaly once, with the endpoint and series
    endpoint = sim.stream_endpoint
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ophyd_xspress.transport" and r.levelno == logging.WARNING
    ]
    assert lines == [
        f"{endpoint}: series 0: frame 8 received again",
        f"{endpoint}: series 0: frame 8 received again",
        f"{endpoint}: series 0: frame 12 not received before frame 13",
        f"{endpoint}: series 0: frame 12 arrived after frame 13",
    ], lines
    with h5py.File(only_h5(tmp_path), "r") as f:
        g = f[GROUP]
        np.testing.assert_array_equal(g["frame_number"][:], np.arange(n))
        for i in range(n):
            np.testing.assert_array_equal(
                g["data"][i], sim.control.expected_frame(first, i).spectra
            )


def test_dropped_frame_is_counted_and_leaves_an_empty_row(
    RE, sim, make_xspress, docs, fly, tmp_path
):
    n = 20
    xspress = make_xspress(stall_timeout=1.0)
    first = sim.control.series_index + 1
    sim.faults.drop_frames = {5}
    error: BaseException | None = None
    try:
        RE(fly(xspress, TriggerInfo(number_of_events=n, livetime=0.005)))
    except Exception as exc:
        error = exc
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == n - 1
    assert summary["missing"] == [5]
    assert xspress.anomalies.get("missing") == 1
    # the series ends without frame 5: the scan fails at once, with the facts
    assert error is not None
    incomplete = find_in_chain(error, StreamIncompleteError)
    assert "ended after 19 of 20 frames; missing 5" in str(incomplete)
    with h5py.File(only_h5(tmp_path), "r") as f:
        g = f[GROUP]
        fn = g["frame_number"][:]
        expected = np.arange(n)
        expected[5] = -1
        np.testing.assert_array_equal(fn, expected)
        assert not g["data"][5].any()
        for i in (0, 4, 6, 19):
            np.testing.assert_array_equal(
                g["data"][i], sim.control.expected_frame(first, i).spectra
            )


# -- resources over many cycles --------------------------------------------------------
async def _n_tasks() -> int:
    return len(asyncio.all_tasks())


#: pytango's shared worker pool grows on demand up to 20 threads: not ours
TANGO_POOL = "_PyTangoThreadPoolExecutor"
TANGO_POOL_MAX = 20


def _resources(in_loop: Any) -> tuple[int, int, int]:
    """Open file descriptors, threads (bar pytango's pool), asyncio tasks."""
    gc.collect()
    time.sleep(0.1)  # let finished threads leave the thread table
    threads = threading.enumerate()
    pool = sum(t.name.startswith(TANGO_POOL) for t in threads)
    assert pool <= TANGO_POOL_MAX
    return psutil.Process().num_fds(), len(threads) - pool, in_loop(_n_tasks)


def _assert_stable(before: tuple[int, int, int], after: tuple[int, int, int]) -> None:
    fds, threads, tasks = (a - b for a, b in zip(after, before, strict=True))
    assert fds <= 4, f"file descriptors grew by {fds}: {before} -> {after}"
    assert threads <= 1, f"threads grew by {threads}: {before} -> {after}"
    assert tasks <= 2, f"asyncio tasks grew by {tasks}: {before} -> {after}"


def test_100_counts_leak_nothing(RE, sim, make_xspress, in_loop):
    sim.control.exposure_time = 0.001
    xspress = make_xspress()
    for _ in range(5):  # warm-up: Tango client threads, caches
        RE(count([xspress], 1))
    before = _resources(in_loop)
    for _ in range(100):
        RE(count([xspress], 1))
    after = _resources(in_loop)
    _assert_stable(before, after)
    receivers = [t for t in threading.enumerate() if t.name.startswith("xspress-rx")]
    assert receivers == [], "receiver thread left running after unstage"
    assert len(xspress.run_summaries) == 105


def test_100_direct_stage_trigger_unstage_cycles_leak_nothing(
    RE, sim, make_xspress, in_loop
):
    sim.control.exposure_time = 0.001
    xspress = make_xspress()
    first = sim.control.series_index + 1

    async def cycle() -> np.ndarray:
        await xspress.stage()
        await xspress.trigger()
        reading = await xspress.read()
        await xspress.unstage()
        return reading["xspress"]["value"]

    for _ in range(5):
        in_loop(cycle)
    before = _resources(in_loop)
    for _ in range(100):
        spectra = in_loop(cycle)
    after = _resources(in_loop)
    _assert_stable(before, after)
    np.testing.assert_array_equal(
        spectra, sim.control.expected_frame(first + 104, 0).spectra
    )
