# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""A fly scan interrupted from another thread (pause/resume, abort, stop, Ctrl-C)
must end, Stop the device, end the receiver thread, leave a valid HDF5 file
whose StreamDatum documents point only at frames really on disk, and leave the
detector ready for the next scan.

The scan: 3000 frames of 1 ms on the paced simulator (about 3 s), interrupted
after 0.5 s.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from bluesky.plans import count
from bluesky.utils import RunEngineInterrupted
from ophyd_async.core import TriggerInfo

from ophyd_xspress.sim import DevState

N = 3000
LIVETIME = 0.001
DELAY = 0.5
#: short, so that an orphaned complete() status (see the xfail below) ends soon
STALL = 1.0

PAUSED = "xspress: paused while acquiring ("
ENDED = "xspress: complete() ended: the detector was unstaged after "
RESUMING = "xspress: resuming: waiting for the acquisition to finish"


def _receiver_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("xspress-rx") and t.is_alive()
    ]


def _later(delay: float, action: Callable[[], Any]) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        time.sleep(delay)
        try:
            action()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="interrupter")
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


#: coroutines of the detector's complete() status and its watchers (an
#: ophyd-async status task runs ``wait_with_error_message``)
DETECTOR_TASKS = (
    "_wait_for_index",
    "RunWatch",
    "Wakeup.until",
    "wait_with_error_message",
)


async def _detector_tasks() -> list[str]:
    import asyncio

    names = [repr(t.get_coro()) for t in asyncio.all_tasks()]
    return [n for n in names if any(k in n for k in DETECTOR_TASKS)]


def wait_detector_tasks_gone(in_loop: Any, timeout: float) -> list[str]:
    """Wait until no task of a detector status runs in the RunEngine loop."""
    deadline = time.monotonic() + timeout
    while True:
        left = in_loop(_detector_tasks)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _assert_left_clean(
    RE: Any, sim: Any, docs: Any, tmp_path: Path, exit_status: str
) -> None:
    assert RE.state == "idle", RE.state
    assert sim.control.wait_idle(3), "the acquisition was not stopped"
    deadline = time.monotonic() + 3
    while sim.control.state != DevState.STANDBY and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.control.state == DevState.STANDBY
    assert _receiver_threads() == [], "receiver thread outlived the scan"
    (stop,) = docs["stop"]
    assert stop["exit_status"] == exit_status, stop
    if exit_status != "success":
        assert sim.control.n_frames_acquired < N, "the interrupt came too late"


def _wait_fds_back(baseline: int, timeout: float) -> int:
    """Open file descriptors once they are back to ``baseline`` (libzmq closes
    a socket's descriptors on its reaper thread, shortly after ``close()``), or
    the count when ``timeout`` passes."""
    proc = psutil.Process()
    deadline = time.monotonic() + timeout
    while True:
        fds = proc.num_fds()
        if fds <= baseline or time.monotonic() > deadline:
            return fds
        time.sleep(0.02)


def _log_lines(caplog: Any, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def _assert_next_scans_work(
    RE: Any, sim: Any, xspress: Any, docs: Any, fly: Any, check_stream_docs: Any
) -> None:
    docs.clear()
    series = sim.control.series_index + 1
    RE(fly(xspress, TriggerInfo(number_of_events=10, livetime=LIVETIME)))
    docs.assert_valid()
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == 10, summary
    assert summary["stale_discarded"] == 0, summary
    assert check_stream_docs(docs, sim, series) == 10
    docs.clear()
    series = sim.control.series_index + 1
    RE(count([xspress], 2))
    events = docs["event"]
    assert len(events) == 2
    for i, event in enumerate(events):
        np.testing.assert_array_equal(
            event["data"]["xspress"], sim.control.expected_frame(series + i, 0).spectra
        )
    assert _receiver_threads() == []


@dataclass
class Env:
    """What an interrupted fly scan needs: the fixtures of ``env``."""

    RE: Any
    sim: Any
    make_xspress: Any
    docs: Any
    fly: Any
    tmp_path: Path
    check_stream_docs: Any
    check_file: Any
    in_loop: Any
    caplog: Any


@pytest.fixture
def env(request: pytest.FixtureRequest) -> Env:
    return Env(**{f.name: request.getfixturevalue(f.name) for f in fields(Env)})


def _run(
    env: Env,
    interrupt: Callable[[Any], Any],
    after_interrupted: Callable[[Any], Any] | None,
    *,
    exit_status: str,
) -> tuple[Any, int, int]:
    RE, sim, docs, fly, tmp_path = env.RE, env.sim, env.docs, env.fly, env.tmp_path  # noqa: N806
    make_xspress, caplog = env.make_xspress, env.caplog
    check_stream_docs, check_file = env.check_stream_docs, env.check_file
    caplog.set_level(logging.INFO, logger="ophyd_xspress.device")
    xspress = make_xspress(stall_timeout=STALL)
    # warm-up (the scans run after the interruption): pytango's client threads
    # and event channel, ZeroMQ's context, caches; then the descriptor baseline
    _assert_next_scans_work(RE, sim, xspress, docs, fly, env.check_stream_docs)
    docs.clear()
    fds_before = psutil.Process().num_fds()
    warm_files = set(tmp_path.glob("*.h5"))
    series = sim.control.series_index + 1
    thread = _later(DELAY, lambda: interrupt(RE))
    outcome: Any = None
    try:
        outcome = RE(fly(xspress, TriggerInfo(number_of_events=N, livetime=LIVETIME)))
    except RunEngineInterrupted as exc:
        outcome = exc
        if RE.state == "paused":
            assert after_interrupted is not None, "paused, but not expected to"
            try:
                outcome = after_interrupted(RE)
            except Exception as exc2:  # recorded: the run must still end
                outcome = exc2
    except Exception as exc:
        outcome = exc
    thread.join(10)
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]
    docs.assert_valid()
    _assert_left_clean(RE, sim, docs, tmp_path, exit_status)
    # the receiver's socket and the HDF5 file are closed: no descriptor left
    fds = _wait_fds_back(fds_before, 5.0)
    assert fds <= fds_before, f"file descriptors: {fds_before} before, {fds} after"
    files = sorted(
        set(tmp_path.glob("*.h5")) - warm_files, key=lambda p: p.stat().st_mtime_ns
    )
    # one file; a resumed (rewound) fly scan might prepare a second one
    assert 1 <= len(files) <= 2, files
    on_disk = covered = -1
    if len(files) == 1:
        on_disk = check_file(files[0], sim, series)
        covered = check_stream_docs(docs, sim, series)
        assert covered <= on_disk
    else:
        check_file(files[0], sim, series)
        check_file(files[1], sim, sim.control.series_index)
    _assert_next_scans_work(RE, sim, xspress, docs, fly, env.check_stream_docs)
    # no status of the interrupted run may outlive the test's event loop
    assert wait_detector_tasks_gone(env.in_loop, STALL + 5) == []
    fds = _wait_fds_back(fds_before, 5.0)
    assert fds <= fds_before, f"file descriptors: {fds_before} before, {fds} after"
    print("outcome:", type(outcome).__name__, str(outcome)[:2000])
    return outcome, on_disk, covered


def test_pause_then_resume(env: Env) -> None:
    """request_pause() mid fly scan, then resume(): the run ends (completed or
    cleanly ended) and the detector works afterwards."""

    def resume(RE: Any) -> Any:
        time.sleep(0.2)
        return RE.resume()

    outcome, on_disk, covered = _run(
        env,
        lambda RE: RE.request_pause(),
        resume,
        exit_status="success",
    )
    # The detector refuses the replay while acquiring (pause() raises
    # NoReplayAllowed): frames keep being written during the pause and the
    # resumed plan carries on to the end of the series, with nothing lost.
    assert not isinstance(outcome, BaseException), outcome
    assert outcome.exit_status == "success", outcome
    assert on_disk == covered == N
    (paused,) = _log_lines(env.caplog, PAUSED)
    assert paused.endswith(
        f" of {N} frames so far): the acquisition continues; resume waits for "
        "the rest, abort or stop ends it"
    ), paused
    assert _log_lines(env.caplog, RESUMING) == [RESUMING]
    assert _log_lines(env.caplog, ENDED) == []


def test_immediate_pause_then_abort(env: Env) -> None:
    _run(
        env,
        lambda RE: RE.request_pause(defer=False),
        lambda RE: RE.abort("interrupted by the test"),
        exit_status="abort",
    )
    assert len(_log_lines(env.caplog, PAUSED)) == 1
    _assert_ended_line(env.caplog)


def _assert_ended_line(caplog: Any) -> None:
    """The complete() status still waiting at unstage says how far the run got."""
    (ended,) = _log_lines(caplog, ENDED)
    done = int(ended[len(ENDED) :].split(" ")[0])
    assert 0 < done < N, ended
    assert ended == f"{ENDED}{done} of {N} frames", ended


def test_abort_from_another_thread(env: Env) -> None:
    _run(
        env,
        lambda RE: RE.abort("KeyboardInterrupt"),
        None,
        exit_status="abort",
    )
    assert _log_lines(env.caplog, PAUSED) == []
    _assert_ended_line(env.caplog)


def test_stop_from_another_thread(env: Env) -> None:
    _run(
        env,
        lambda RE: RE.stop(),
        None,
        exit_status="success",
    )
    assert _log_lines(env.caplog, PAUSED) == []
    _assert_ended_line(env.caplog)


def _catch_stray_sigint() -> tuple[list[int], Any]:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT handlers can only be installed from the main thread")
    stray: list[int] = []
    # RunEngine installs its own handler for the run and restores this one after:
    # a SIGINT arriving outside the run must not kill the test session.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stray.append(signum))
    return stray, previous


def test_double_sigint_then_abort(env: Env) -> None:
    """Ctrl-C twice (a real SIGINT to this process): the RunEngine pauses at
    once; the user then aborts."""
    stray, previous = _catch_stray_sigint()

    def ctrl_c_twice(RE: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        # bluesky counts a second SIGINT only once the first was handled (a
        # deferred pause requested) and at least 100 ms after it, as a human
        deadline = time.monotonic() + 5
        while not RE.deferred_pause_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.25)
        if RE.state == "running":
            os.kill(os.getpid(), signal.SIGINT)

    try:
        _run(
            env,
            ctrl_c_twice,
            lambda RE: RE.abort("KeyboardInterrupt"),
            exit_status="abort",
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stray == [], "SIGINT arrived outside the run (not handled by RunEngine)"
    assert len(_log_lines(env.caplog, PAUSED)) == 1
    _assert_ended_line(env.caplog)


def test_single_sigint_is_a_deferred_pause_the_fly_scan_completes(env: Env) -> None:
    """Ctrl-C once: bluesky asks for a pause at the next checkpoint. The fly
    plan has none after kickoff, so the scan runs to its end: every frame on
    disk and covered by StreamDatum, the detector never paused."""
    stray, previous = _catch_stray_sigint()
    try:
        outcome, on_disk, covered = _run(
            env,
            lambda RE: os.kill(os.getpid(), signal.SIGINT),
            None,
            exit_status="success",
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stray == [], "SIGINT arrived outside the run (not handled by RunEngine)"
    assert not isinstance(outcome, BaseException), outcome
    assert on_disk == covered == N
    assert _log_lines(env.caplog, PAUSED) == []
    assert _log_lines(env.caplog, ENDED) == []


def test_aborted_fly_scan_leaves_no_detector_task_running(
    RE, sim, make_xspress, fly, in_loop
):
    xspress = make_xspress(stall_timeout=5.0)
    thread = _later(DELAY, lambda: RE.abort("interrupted by the test"))
    with pytest.raises(RunEngineInterrupted):
        RE(fly(xspress, TriggerInfo(number_of_events=N, livetime=LIVETIME)))
    thread.join(10)
    assert RE.state == "idle"
    assert _receiver_threads() == []  # unstaged: the run is over
    left = wait_detector_tasks_gone(in_loop, 1.0)
    # let them end before the loop closes (else: "Task was destroyed" noise)
    assert wait_detector_tasks_gone(in_loop, 15.0) == []
    assert left == [], f"still running 1 s after unstage: {left}"


def test_pause_mid_step_then_resume_reads_every_frame(RE, sim, make_xspress, docs):
    """Ctrl-C-like pause (not deferred) during a 0.6 s step exposure, then
    resume: every event carries its own frame (the interrupted trigger is
    waited for, not skipped, and its reading is not a stale one)."""
    xspress = make_xspress(stall_timeout=STALL)
    sim.control.exposure_time = 0.6
    first = sim.control.series_index + 1
    thread = _later(0.9, lambda: RE.request_pause(defer=False))
    with pytest.raises(RunEngineInterrupted):
        RE(count([xspress], 3))
    thread.join(10)
    assert RE.state == "paused"
    time.sleep(0.1)
    result = RE.resume()
    assert not thread.errors  # type: ignore[attr-defined]
    docs.assert_valid()
    (stop,) = docs["stop"]
    assert stop["exit_status"] == "success", (stop, result)
    events = docs["event"]
    assert len(events) == 3
    # no series was repeated or skipped: event k is series first + k
    for k, event in enumerate(events):
        np.testing.assert_array_equal(
            event["data"]["xspress"], sim.control.expected_frame(first + k, 0).spectra
        )
    assert sim.control.series_index == first + 2
    assert _receiver_threads() == []


def test_stream_stall_during_a_pause_fails_the_run_on_resume(env: Env) -> None:
    """Paused mid fly scan (the acquisition goes on), the stream stalls after
    frame 300 and the stall time-out passes while paused: resume() ends the
    run as failed with the stall's facts, not as a success with frames
    missing; every frame that arrived is on disk, StreamDatum covers only
    rows on disk, and the detector works afterwards."""
    from bluesky.utils import FailedStatus

    from ophyd_xspress.transport import StreamStalledError

    RE, sim, docs, fly, caplog = env.RE, env.sim, env.docs, env.fly, env.caplog  # noqa: N806
    caplog.set_level(logging.INFO, logger="ophyd_xspress.device")
    xspress = env.make_xspress(stall_timeout=STALL)
    series = sim.control.series_index + 1
    sim.faults.stall_after = 300
    thread = _later(DELAY, lambda: RE.request_pause(defer=False))
    with pytest.raises(RunEngineInterrupted):
        RE(fly(xspress, TriggerInfo(number_of_events=N, livetime=LIVETIME)))
    thread.join(10)
    assert not thread.errors  # type: ignore[attr-defined]
    assert RE.state == "paused"
    assert len(_log_lines(caplog, PAUSED)) == 1
    time.sleep(STALL + 1.5)  # the stall time-out passes during the pause
    with pytest.raises(FailedStatus) as info:
        RE.resume()
    stalled = info.value.__cause__
    assert isinstance(stalled, StreamStalledError), info.value
    assert f"received 301 of {N} frames; missing 301-{N - 1}" in str(stalled)
    assert sim.stream_endpoint in str(stalled)
    sim.faults.release()
    docs.assert_valid()
    (stop,) = docs["stop"]
    assert stop["exit_status"] == "fail", stop
    (h5,) = env.tmp_path.glob("*.h5")
    assert env.check_file(h5, sim, series) == 301
    assert env.check_stream_docs(docs, sim, series) <= 301
    assert sim.control.wait_idle(5), "the acquisition was not stopped"
    assert _receiver_threads() == []
    _assert_next_scans_work(RE, sim, xspress, docs, fly, env.check_stream_docs)
