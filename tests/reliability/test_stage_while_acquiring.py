# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""A second ``stage()`` while the detector acquires (a nested plan staging it
again, or a second script using the same detector object) is refused with
the facts; the acquisition in progress is never ended quietly and its anomaly
counts are never reset.

The scan: 3000 frames of 1 ms on the paced simulator (about 3 s); the second
stage comes 0.5 s in.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import h5py
import numpy as np
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import TriggerInfo
from tests.helpers import find_in_chain

from ophyd_xspress.device import AcquisitionInProgressError

N = 3000
LIVETIME = 0.001
DELAY = 0.5
GROUP = "/entry/instrument/xspress3"


def refusal(name: str = "xspress") -> re.Pattern[str]:
    """The refusal's text, with the frame count as a group."""
    return re.compile(
        re.escape(f"{name}: cannot stage while an acquisition is running (")
        + r"(\d+)"
        + re.escape(
            f" of {N} frames received so far); it goes on: wait for it to "
            "complete, or unstage the detector to stop it, then stage again (a "
            "nested plan must not stage a detector that its outer plan staged)"
        )
    )


def nested_stage_plan(det: Any) -> Any:
    """A fly scan whose body stages the detector again, mid-acquisition."""

    def body() -> Any:
        info = TriggerInfo(number_of_events=N, livetime=LIVETIME)
        yield from bps.prepare(det, info, wait=True)
        yield from bps.declare_stream(det, name="primary", collect=True)
        yield from bps.kickoff(det, wait=True)
        yield from bps.sleep(DELAY)
        yield from bps.stage(det)  # e.g. a nested plan with its own stage_wrapper
        yield from bps.collect_while_completing([det], [det], flush_period=0.2)

    return (yield from bpp.stage_wrapper(bpp.run_wrapper(body()), [det]))


def test_nested_stage_is_refused_and_the_scan_fails_with_the_facts(
    RE: Any,
    sim: Any,
    make_xspress: Callable[..., Any],
    docs: Any,
    fly: Callable[..., Any],
) -> None:
    xspress = make_xspress(stall_timeout=2.0)
    sim.faults.repeat_frames = {5: 1}  # an anomaly before the second stage
    try:
        RE(nested_stage_plan(xspress))
    except Exception as exc:
        error: BaseException = exc
    else:
        raise AssertionError("the scan ended in success")
    refused = find_in_chain(error, AcquisitionInProgressError)
    match = refusal().fullmatch(str(refused))
    assert match is not None, str(refused)
    assert 0 < int(match.group(1)) < N
    docs.assert_valid()
    assert docs["stop"][0]["exit_status"] == "fail"
    # the anomaly of the run in progress is still counted
    assert xspress.anomalies.get("repeated") == 1, xspress.anomalies
    summary = xspress.run_summaries[-1]
    assert summary["frames_expected"] == N
    assert summary["repeated"] == [5]
    # the detector works afterwards
    docs.clear()
    sim.faults.repeat_frames = {}
    RE(fly(xspress, TriggerInfo(number_of_events=20, livetime=LIVETIME)))
    assert xspress.run_summaries[-1]["frames_received"] == 20
    assert xspress.anomalies == {}


def test_stage_from_a_second_script_is_refused_and_the_scan_completes(
    RE: Any,
    sim: Any,
    make_xspress: Callable[..., Any],
    docs: Any,
    fly: Callable[..., Any],
    tmp_path: Path,
) -> None:
    xspress = make_xspress(stall_timeout=2.0)
    first = sim.control.series_index + 1
    sim.faults.repeat_frames = {5: 1}
    outcome: list[BaseException | None] = []

    def second_script() -> None:
        time.sleep(DELAY)

        async def stage() -> None:
            await xspress.stage()

        try:
            call_in_bluesky_event_loop(stage(), timeout=30)
        except BaseException as exc:  # reported below
            outcome.append(exc)
        else:
            outcome.append(None)

    script = threading.Thread(target=second_script, daemon=True)
    script.start()
    RE(fly(xspress, TriggerInfo(number_of_events=N, livetime=LIVETIME)))
    script.join(30)
    (refused,) = outcome
    assert isinstance(refused, AcquisitionInProgressError), repr(refused)
    match = refusal().fullmatch(str(refused))
    assert match is not None, str(refused)
    assert 0 < int(match.group(1)) < N
    # the scan went on to the end, every frame in its row
    docs.assert_valid()
    assert docs["stop"][0]["exit_status"] == "success"
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == N
    assert summary["missing"] == []
    assert xspress.anomalies == {"repeated": 1}
    (h5,) = tmp_path.glob("*.h5")
    with h5py.File(h5, "r") as f:
        group = f[GROUP]
        assert isinstance(group, h5py.Group)
        frame_number, data = group["frame_number"], group["data"]
        assert isinstance(frame_number, h5py.Dataset)
        assert isinstance(data, h5py.Dataset)
        np.testing.assert_array_equal(frame_number[:], np.arange(N))
        np.testing.assert_array_equal(
            data[N - 1], sim.control.expected_frame(first, N - 1).spectra
        )
