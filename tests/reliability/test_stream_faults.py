# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""Stream faults at the device level: the publisher restarting mid fly scan, a
passive detector joining a series late (slow joiner), and stale frames of an
earlier series waiting in the socket when a run starts."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from bluesky.plans import count
from ophyd_async.core import TriggerInfo, init_devices
from tests.helpers import find_in_chain

from ophyd_xspress.device import XspressDetector
from ophyd_xspress.sim import TriggerMode
from ophyd_xspress.transport import StreamIncompleteError, StreamStalledError

GROUP = "/entry/instrument/xspress3"


def arm_directly(sim: Any, frames: int, exposure: float) -> int:
    """Arm the simulator behind the detector's back; returns the series index."""
    c = sim.control
    assert c.wait_idle(5)
    series = c.series_index + 1  # the worker counts it once it takes the Arm
    c.trigger_mode = TriggerMode.SOFTWARE
    c.exposure_time = exposure
    c.n_triggers = 1
    c.n_frames_per_trigger = frames
    c.arm()
    assert wait_until(lambda: c.series_index == series, 5)
    c.software_trigger()
    return series


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- publisher restart -----------------------------------------------------------------
def test_publisher_restart_mid_fly_scan(
    RE, sim, make_xspress, docs, fly, tmp_path, check_file, check_stream_docs, caplog
):
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    n = 200
    xspress = make_xspress(stall_timeout=1.0)
    series = sim.control.series_index + 1
    sim.faults.restart_publisher_after = 10
    error: BaseException | None = None
    try:
        RE(fly(xspress, TriggerInfo(number_of_events=n, livetime=0.005)))
    except Exception as exc:
        error = exc
    docs.assert_valid()
    summary = xspress.run_summaries[-1]
    received = summary["frames_received"]
    assert isinstance(received, int)
    if error is None:
        assert received == n, summary
    else:
        # the frames sent while nobody was connected are lost: named in the error
        missing = summary["missing"]
        assert isinstance(missing, list), summary
        assert missing, summary
        # frame 10 itself may die in the closed socket (LINGER 0)
        assert missing[0] in (10, 11), summary
        try:
            failure: BaseException = find_in_chain(error, StreamIncompleteError)
        except AssertionError:
            failure = find_in_chain(error, StreamStalledError)
        assert f"missing {missing[0]}" in str(failure), str(failure)
        assert sim.stream_endpoint in str(failure)
    counts = xspress.receiver.counts
    assert counts["disconnects"] + counts["reconnects"] >= 1, dict(counts)
    # the log is the user's only report of a restart that lost no frame
    lines = [
        r.getMessage() for r in caplog.records if r.name == "ophyd_xspress.transport"
    ]
    endpoint = sim.stream_endpoint
    assert (
        lines.count(f"{endpoint}: stream disconnected (publisher gone?)")
        == counts["disconnects"]
    ), lines
    assert lines.count(f"{endpoint}: stream reconnected") == counts["reconnects"], lines
    (h5,) = tmp_path.glob("*.h5")
    # every row on disk is its own frame of this one series: nothing shifted
    assert check_file(h5, sim, series) == received
    check_stream_docs(docs, sim, series)
    with h5py.File(h5, "r") as f:
        fn = f[GROUP]["frame_number"][:]
        np.testing.assert_array_equal(fn[:10], np.arange(10))
    # and the detector works afterwards, on the re-bound publisher
    docs.clear()
    series = sim.control.series_index + 1
    RE(fly(xspress, TriggerInfo(number_of_events=20, livetime=0.001)))
    assert xspress.run_summaries[-1]["frames_received"] == 20
    assert check_stream_docs(docs, sim, series) == 20


# -- slow joiner -----------------------------------------------------------------------
@pytest.fixture
def passive(RE: Any, in_loop: Any, sim: Any, tmp_path: Path) -> Any:
    with init_devices():
        det = XspressDetector(
            stream=sim.stream_endpoint,
            name="passive",
            channels=4,
            path=tmp_path,
            stall_timeout=1.0,
        )
    yield det
    sim.faults.release()
    in_loop(det.unstage, timeout=60)


def test_slow_joiner_takes_frames_of_the_running_series(RE, sim, passive, docs, caplog):
    """Staged after the header of a running series (a passive consumer
    started while the detector already runs): the frames arrive without
    their header, and the count takes the first one after its trigger, bit
    for bit; "header missed" is told once; nothing received is called lost."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    series = arm_directly(sim, 300, 0.01)  # 3 s of frames at 100 Hz
    assert wait_until(lambda: sim.control.n_frames_acquired >= 5, 5)
    RE(count([passive], 3))
    events = docs["event"]
    assert len(events) == 3
    numbers = [e["data"]["passive-frame_number"] for e in events]
    assert numbers == sorted(set(numbers)), numbers
    for event, n in zip(events, numbers, strict=True):
        np.testing.assert_array_equal(
            event["data"]["passive"], sim.control.expected_frame(series, n).spectra
        )
    assert passive.receiver.counts["outside_series"] > 0
    told = [m for m in caplog.messages if "header of its series was missed" in m]
    assert len(told) == 1, told
    for summary in passive.run_summaries[-3:]:
        assert summary["frames_received"] == 1, summary
        assert summary["missing_count"] == 0, summary
    sim.control.stop()


# -- stale frames ----------------------------------------------------------------------
def test_stale_series_between_runs_is_discarded(
    RE, sim, make_xspress, in_loop, docs, fly, tmp_path, caplog, check_stream_docs
):
    caplog.set_level(logging.WARNING, logger="ophyd_xspress")
    xspress = make_xspress()
    # staged (receiver connected) but between runs: someone else runs a series
    in_loop(xspress.stage)
    stale = arm_directly(sim, 5, 0.002)
    assert sim.control.wait_idle(5)
    time.sleep(0.3)  # let the frames reach the receiver
    sim.control.exposure_time = 0.002
    RE(count([xspress], 1))
    (event,) = docs["event"]
    np.testing.assert_array_equal(
        event["data"]["xspress"], sim.control.expected_frame(stale + 1, 0).spectra
    )
    assert xspress.run_summaries[-1]["stale_discarded"] == 5
    assert any("discarded 5 frame(s)" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    # the same before a fly scan: the stale frames never reach the file
    caplog.clear()
    docs.clear()
    in_loop(xspress.stage)
    stale = arm_directly(sim, 5, 0.002)
    assert sim.control.wait_idle(5)
    time.sleep(0.3)
    RE(fly(xspress, TriggerInfo(number_of_events=5, livetime=0.002)))
    assert xspress.run_summaries[-1]["stale_discarded"] == 5
    assert any("discarded 5 frame(s)" in r.getMessage() for r in caplog.records)
    assert check_stream_docs(docs, sim, stale + 1) == 5
    uri = docs["stream_resource"][0]["uri"]
    with h5py.File(uri[len("file://localhost") :], "r") as f:
        g = f[GROUP]
        np.testing.assert_array_equal(g["frame_number"][:], np.arange(5))
        for i in range(5):
            np.testing.assert_array_equal(
                g["data"][i], sim.control.expected_frame(stale + 1, i).spectra
            )
