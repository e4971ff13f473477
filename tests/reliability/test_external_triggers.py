# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""Slow external triggers are waiting, not a stall.

A fly scan on external triggers (TTL pulses into the simulator, as from a
trajectory controller) may wait for its first trigger far longer than the
stall time-out. While the device says RUNNING and has acquired no more frames
than arrived, that is waiting; a stall is frames the device acquired that do
not arrive.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import pytest
from ophyd_async.core import DetectorTrigger, TriggerInfo
from tests.helpers import find_in_chain

from ophyd_xspress.device import TriggerTimeoutError
from ophyd_xspress.transport import StreamStalledError

EDGE = DetectorTrigger.EXTERNAL_EDGE


def pulses(sim: Any, n: int, delay: float, period: float = 0.05) -> threading.Thread:
    """``n`` TTL pulses into the simulator, the first after ``delay`` s."""

    def run() -> None:
        time.sleep(delay)
        for _ in range(n):
            sim.control.ttl_pulse(1e-3)
            time.sleep(period)

    thread = threading.Thread(target=run, daemon=True, name="ttl")
    thread.start()
    return thread


def test_triggers_slower_than_the_stall_timeout_are_waited_for(
    RE, sim, make_xspress, docs, fly, caplog
):
    caplog.set_level(logging.INFO, logger="ophyd_xspress.device")
    xspress = make_xspress(stall_timeout=0.5)
    threads: list[threading.Thread] = []
    RE(
        fly(
            xspress,
            TriggerInfo(number_of_events=3, trigger=EDGE, livetime=0.01),
            after_kickoff=lambda: threads.append(pulses(sim, 3, delay=2.0)),
        )
    )
    threads[0].join(5)
    assert docs["stop"][0]["exit_status"] == "success"
    assert xspress.run_summaries[-1]["frames_received"] == 3
    waiting = [m for m in caplog.messages if "waiting for triggers" in m]
    assert len(waiting) == 1, waiting
    assert re.fullmatch(
        r"xspress: waiting for triggers: no trigger for \d+\.\d s \(device RUNNING, "
        r"0 of 3 frames acquired\)",
        waiting[0],
    ), waiting


def test_trigger_timeout_fails_with_what_the_device_says(
    RE, sim, make_xspress, docs, fly
):
    xspress = make_xspress(stall_timeout=0.3)
    xspress.trigger_timeout = 1.0
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
        RE(fly(xspress, TriggerInfo(number_of_events=3, trigger=EDGE, livetime=0.01)))
    elapsed = time.monotonic() - t0
    error = find_in_chain(info.value, TriggerTimeoutError)
    assert re.fullmatch(
        r"xspress: no trigger for \d+\.\d s \(device RUNNING, 0 of 3 frames "
        r"acquired\)",
        str(error),
    ), str(error)
    assert 1.0 <= elapsed < 8.0, elapsed
    assert docs["stop"][0]["exit_status"] == "fail"


def test_frames_acquired_but_not_arriving_are_a_stall(RE, sim, make_xspress, docs, fly):
    """The device takes all three triggers; only frame 0 reaches us: that is a
    stall, and the error says what the device acquired."""
    xspress = make_xspress(stall_timeout=0.5)
    sim.faults.stall_after = 0  # frames after 0 are held by the publisher
    threads: list[threading.Thread] = []
    with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
        RE(
            fly(
                xspress,
                TriggerInfo(number_of_events=3, trigger=EDGE, livetime=0.01),
                after_kickoff=lambda: threads.append(pulses(sim, 3, delay=0.2)),
            )
        )
    sim.faults.release()
    threads[0].join(5)
    stalled = find_in_chain(info.value, StreamStalledError)
    assert f"the device {sim.tango_trl} is " in str(stalled)
    assert "acquired 3 of 3 frames" in str(stalled), str(stalled)
    assert "received 1 of 3 frames" in str(stalled), str(stalled)
