# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""Stream faults the simulator cannot make, at the device level, in active mode.

The detector arms and stops the simulator through its real Tango device, but
its stream comes from a PUSH socket the test binds and writes by hand: a series
built from the simulator's frames with :class:`StreamEncoder`, in whatever order
the fault needs (a second header mid-run, frames with no header, frames of an
older series before the run's header, a frame number beyond the run). The
simulator's own stream goes to nobody. Messages are sent from the plan once the
detector is kicked off, so the run has begun and is waiting for its header.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from ophyd_async.core import TriggerInfo, init_devices
from tests.helpers import find_in_chain

from ophyd_xspress.device import XspressDetector
from ophyd_xspress.protocol import (
    Frame,
    ProtocolError,
    SeriesEndMessage,
    StreamEncoder,
)
from ophyd_xspress.transport import (
    StreamConnectError,
    StreamIncompleteError,
    StreamStalledError,
)

GROUP = "/entry/instrument/xspress3"
HINT = (
    "(the series header never arrived, but 3 frame(s) outside this run's series "
    "did: frames are being taken by another consumer of this PUSH stream, or the "
    "header was missed because the subscriber connected after Arm)"
)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def receiver_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("xspress-rx") and t.is_alive()
    ]


@pytest.fixture
def pushed(
    RE: Any,
    in_loop: Callable[..., Any],
    sim: Any,
    tmp_path: Path,
    push_stream: Callable[[], Any],
) -> Iterator[Callable[..., tuple[XspressDetector, Any]]]:
    """``pushed(**options)``: an active detector (Tango of ``sim``) whose stream
    is a PULL connected to a fresh ``push_stream()``."""
    made: list[XspressDetector] = []

    def make(**options: Any) -> tuple[XspressDetector, Any]:
        push = push_stream()
        with init_devices():
            det = XspressDetector(
                stream=push.endpoint,
                tango=sim.tango_trl,
                socket="pull",
                name="xspress",
                path=tmp_path,
                **options,
            )
        made.append(det)
        return det, push

    yield make
    for det in made:
        in_loop(det.unstage, timeout=60)


def frames_of(sim: Any, series: int, numbers: range | list[int]) -> list[Frame]:
    """Frames as the simulator would send them for ``series`` (an index far
    from any series it really runs, so the content is this test's own)."""
    return [sim.control.expected_frame(series, k) for k in numbers]


def encode(encoder: StreamEncoder, *packets: Any) -> list[list[Any]]:
    out: list[list[Any]] = []
    for packet in packets:
        out += encoder.encode(packet)
    return out


def only_h5(folder: Path) -> Path:
    (h5,) = folder.glob("*.h5")
    return h5


# -- row 5b: a new header mid-run ------------------------------------------------------
def test_new_header_mid_run_fails_at_once_and_keeps_the_first_frames(
    RE, sim, pushed, docs, fly, tmp_path, caplog
):
    """header, frames 0-3, a new header, frames 0-2 of the new series: the run
    fails at once with the facts; rows 0-3 hold the first series' frames, the
    new series' frames are counted as ``after_close`` and never written."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress")
    n = 10
    xspress, push = pushed(stall_timeout=5.0)
    encoder = StreamEncoder("multipart")
    runs: list[Any] = []
    sent: dict[str, list[Frame]] = {}

    def send() -> None:
        # after prepare: the frames use the settings of this fly scan
        first, second = frames_of(sim, 1000, range(4)), frames_of(sim, 1001, range(3))
        assert all(
            not np.array_equal(a.spectra, b.spectra)
            for a, b in zip(first, second, strict=False)
        )
        sent["first"], sent["second"] = first, second
        header = sim.control.header()
        run = xspress.current_run
        runs.append(run)
        push.send(encode(encoder, header, *first, header, *second))
        # every frame of the new series reached the run (and was refused)
        assert wait_until(lambda: run.counts["after_close"] >= 3, 10), run.counts

    t0 = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
        RE(
            fly(
                xspress,
                TriggerInfo(number_of_events=n, livetime=0.01),
                after_kickoff=send,
            )
        )
    elapsed = time.monotonic() - t0
    error = find_in_chain(info.value, ProtocolError)
    assert str(error) == (
        f"stream from {push.endpoint} restarted mid-run: a new header arrived "
        f"after 4 of {n} frames; frames after it are not attributed to this run"
    )
    # failed at once, not after the 5 s stall time-out
    assert elapsed < 5.0, elapsed
    docs.assert_valid()
    (stop,) = docs["stop"]
    assert stop["exit_status"] == "fail", stop
    messages = [r.getMessage() for r in caplog.records]
    assert (
        f"{push.endpoint}: series 0: new header before series_end after 4 frames; "
        "starting series 1" in messages
    ), messages
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == 4, summary
    assert summary["missing"] == list(range(4, n)), summary
    assert summary["anomaly_counts"] == {"header_mid_run": 1, "after_close": 3}
    (run,) = runs
    assert run.counts == {"header_mid_run": 1, "after_close": 3}
    with h5py.File(only_h5(tmp_path), "r") as f:
        g = f[GROUP]
        np.testing.assert_array_equal(
            g["frame_number"][:], [0, 1, 2, 3] + [-1] * (n - 4)
        )
        for i, frame in enumerate(sent["first"]):
            np.testing.assert_array_equal(g["data"][i], frame.spectra)
            np.testing.assert_array_equal(g["all_good"][i], frame["all_good"])
        assert not g["data"][4:].any()
    assert receiver_threads() == []


# -- row 6: the header lost in active mode; nothing listening at stage -----------------
def test_lost_header_in_active_mode_stalls_with_the_hint(
    RE, sim, pushed, docs, fly, tmp_path
):
    """Frames 0-2 with no header before them: never this active run's (counted
    as outside any series, and stale); the run stalls, and says why the header
    may not have come."""
    n = 10
    xspress, push = pushed(stall_timeout=1.0)
    encoder = StreamEncoder("multipart")

    def send() -> None:
        push.send(encode(encoder, *frames_of(sim, 1000, range(3))))

    with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
        RE(
            fly(
                xspress,
                TriggerInfo(number_of_events=n, livetime=0.01),
                after_kickoff=send,
            )
        )
    stalled = find_in_chain(info.value, StreamStalledError)
    text = str(stalled)
    assert re.fullmatch(
        rf"no frame from {re.escape(push.endpoint)} for \d+\.\d s: received 0 of "
        rf"{n} frames {re.escape(HINT)}",
        text,
    ), text
    assert xspress.receiver.counts["outside_series"] == 3
    (stop,) = docs["stop"]
    assert stop["exit_status"] == "fail", stop
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == 0, summary
    assert summary["missing"] == list(range(n)), summary
    assert summary["stale_discarded"] == 3, summary
    with h5py.File(only_h5(tmp_path), "r") as f:
        g = f[GROUP]
        np.testing.assert_array_equal(g["frame_number"][:], [-1] * n)
        assert not g["data"][:].any()
    assert docs["stream_datum"] == []


def test_stage_with_nothing_listening_fails_with_the_endpoint(
    RE, sim, in_loop, tmp_path
):
    """Port 1 on loopback: nothing listens (only root could bind it). Stage
    fails after ``connect_timeout`` with the endpoint and the time-out, and
    never arms the device."""
    endpoint = "tcp://127.0.0.1:1"
    with init_devices():
        det = XspressDetector(
            stream=endpoint,
            tango=sim.tango_trl,
            name="xspress",
            path=tmp_path,
            connect_timeout=0.5,
        )
    series = sim.control.series_index
    try:
        t0 = time.monotonic()
        with pytest.raises(StreamConnectError) as info:
            in_loop(det.stage)
        elapsed = time.monotonic() - t0
    finally:
        in_loop(det.unstage, timeout=60)
    assert str(info.value) == (
        f"no connection to the detector stream at {endpoint} within 0.5 s (is the "
        "detector / simulator running, the address right, and port open in the "
        "firewall?)"
    )
    assert 0.5 <= elapsed < 5.0, elapsed
    assert receiver_threads() == []
    assert sim.control.series_index == series, "armed without a stream"


# -- row 7: stale frames after the run began, before its header ------------------------
def test_stale_frames_before_the_header_are_discarded_and_counted(
    RE, sim, pushed, in_loop, docs, fly, tmp_path, caplog
):
    """An older series' header reaches the staged receiver between runs; its
    frames 1-3 and its series_end arrive after the run began, then the run's
    own series. The stale frames are discarded (the first with a warning, all
    counted); the stale series_end does not end the run; the file holds the
    run's frames only."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress")
    n = 5
    xspress, push = pushed(stall_timeout=5.0)
    encoder = StreamEncoder("multipart")
    in_loop(xspress.stage)
    receiver = xspress.receiver
    push.send(encode(encoder, sim.control.header()))
    assert wait_until(lambda: receiver.last_header is not None, 10)
    sent: list[Frame] = []

    def send() -> None:
        stale = frames_of(sim, 1000, range(1, 4))
        own = frames_of(sim, 1001, range(n))
        sent.extend(own)
        push.send(
            encode(encoder, *stale, SeriesEndMessage(), sim.control.header())
            + encode(encoder, *own, SeriesEndMessage())
        )

    RE(
        fly(
            xspress,
            TriggerInfo(number_of_events=n, livetime=0.01),
            after_kickoff=send,
        )
    )
    docs.assert_valid()
    (stop,) = docs["stop"]
    assert stop["exit_status"] == "success", stop
    stale = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert stale == [
        f"{push.endpoint}: discarded stale frame 1 (arrived before this run's "
        "header; later ones are counted in the run summary)"
    ]
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == n, summary
    assert summary["stale_discarded"] == 3, summary
    assert summary["anomaly_counts"] == {"stale": 3, "stale_series_end": 1}
    assert xspress.anomalies == {"stale": 3}
    with h5py.File(only_h5(tmp_path), "r") as f:
        g = f[GROUP]
        np.testing.assert_array_equal(g["frame_number"][:], np.arange(n))
        for i, frame in enumerate(sent):
            np.testing.assert_array_equal(g["data"][i], frame.spectra)
    assert max(d["indices"]["stop"] for d in docs["stream_datum"]) == n


# -- row 8: a frame number beyond the run ----------------------------------------------
def test_frame_beyond_the_run_is_logged_and_not_written(
    RE, sim, pushed, docs, fly, tmp_path, caplog
):
    """header, 0, 1, 25, 2, series_end for a 3-frame run: frame 25 is counted
    as ``beyond``, logged with its number, and not written; frame 2, which
    arrived after it, is counted out of order."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress")
    n = 3
    xspress, push = pushed(stall_timeout=5.0)
    encoder = StreamEncoder("multipart")
    sent: list[Frame] = []

    def send() -> None:
        f0, f1, f25, f2 = frames_of(sim, 1000, [0, 1, 25, 2])
        sent.extend([f0, f1, f2])
        push.send(
            encode(encoder, sim.control.header(), f0, f1, f25, f2, SeriesEndMessage())
        )

    RE(
        fly(
            xspress,
            TriggerInfo(number_of_events=n, livetime=0.01),
            after_kickoff=send,
        )
    )
    docs.assert_valid()
    assert docs["stop"][0]["exit_status"] == "success"
    messages = [r.getMessage() for r in caplog.records]
    assert (
        f"{push.endpoint}: frame 25 is beyond the 3 frames this run expects; "
        "not written"
    ) in messages, messages
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == n, summary
    assert summary["anomaly_counts"] == {"beyond": 1, "out_of_order": 1}, summary
    with h5py.File(only_h5(tmp_path), "r") as f:
        g = f[GROUP]
        assert g["frame_number"].shape == (n,)
        np.testing.assert_array_equal(g["frame_number"][:], np.arange(n))
        for i, frame in enumerate(sent):
            np.testing.assert_array_equal(g["data"][i], frame.spectra)


# -- row 2 at device level: damaged frames inside a run ------------------------------
def _damaged(encoder: StreamEncoder, frame: Frame, how: str) -> list[list[bytes]]:
    (message,) = encoder.encode_frame(frame)
    head, data, meta = (bytes(p) for p in message)
    if how == "truncated":
        return [[head, data[:-4], meta]]
    info = json.loads(head)
    if how == "compressed":
        info["compression"] = "bslz4"
    elif how == "float16":
        info["type"] = "float16"
    return [[json.dumps(info).encode(), data, meta]]


def test_damaged_frames_are_reported_and_the_series_goes_on(
    RE, sim, pushed, docs, fly, tmp_path, caplog
):
    """Frames 0-9 of an active fly scan where 4 has a truncated buffer, 5 an
    unknown compression and 6 an unsupported dtype: each is a warning naming
    expected vs got, the receiver keeps going, the other frames are written
    bit for bit, rows 4-6 stay empty and the run fails at series_end naming
    them (StreamIncompleteError)."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    n = 10
    xspress, push = pushed(stall_timeout=5.0)
    encoder = StreamEncoder("multipart")
    sent: list[Frame] = []

    def send() -> None:
        frames = frames_of(sim, 1000, range(n))
        sent.extend(frames)
        messages = encode(encoder, sim.control.header(), *frames[:4])
        messages += _damaged(encoder, frames[4], "truncated")
        messages += _damaged(encoder, frames[5], "compressed")
        messages += _damaged(encoder, frames[6], "float16")
        messages += encode(encoder, *frames[7:], SeriesEndMessage())
        push.send(messages)

    with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
        RE(
            fly(
                xspress,
                TriggerInfo(number_of_events=n, livetime=0.01),
                after_kickoff=send,
            )
        )
    error = find_in_chain(info.value, StreamIncompleteError)
    assert f"ended after 7 of {n} frames; missing 4-6" in str(error), str(error)
    docs.assert_valid()
    assert docs["stop"][0]["exit_status"] == "fail"
    receiver = xspress.receiver
    assert receiver.counts["protocol_error"] == 3, dict(receiver.counts)
    ep = push.endpoint
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ophyd_xspress.transport" and r.levelno == logging.WARNING
    ]
    assert warnings == [
        f"{ep}: frame 4 dropped: frame 4: spectra buffer is 65532 bytes, expected "
        "65536 (shape [4, 4096] x uint32)",
        f"{ep}: frame 5: compression 'bslz4' is not supported (expected 'none')",
        f"{ep}: frame 6: spectra type 'float16' is not supported (expected one of "
        "float32, float64, int16, int32, int64, int8, uint16, uint32, uint64, uint8)",
        f"{ep}: series 0: frames 4-6 not received before frame 7",
        f"{ep}: series 0: 3 frame(s) never received: 4-6",
    ], warnings
    summary = xspress.run_summaries[-1]
    assert summary["missing"] == [4, 5, 6], summary
    with h5py.File(only_h5(tmp_path), "r") as f:
        g = f[GROUP]
        np.testing.assert_array_equal(
            g["frame_number"][:], [0, 1, 2, 3, -1, -1, -1, 7, 8, 9]
        )
        for i in (0, 1, 2, 3, 7, 8, 9):
            np.testing.assert_array_equal(g["data"][i], sent[i].spectra)
            np.testing.assert_array_equal(g["all_good"][i], sent[i]["all_good"])
        assert not g["data"][4:7].any()


# -- channel count of the stream and of the detector differ -----------------------
def test_channel_mismatch_fails_at_the_first_frame_with_the_true_cause(
    RE, sim, pushed, docs, fly, tmp_path, caplog
):
    """The device says 4 channels; the stream sends 8. The fly scan fails at
    the first frame, naming both shapes and what to do, in one log line (not
    a warning per frame and a "missing frames" error)."""
    from ophyd_xspress.protocol import make_frame
    from ophyd_xspress.transport import StreamShapeError

    caplog.set_level(logging.WARNING, logger="ophyd_xspress")
    n = 50
    xspress, push = pushed(stall_timeout=5.0)
    encoder = StreamEncoder("multipart")

    def send() -> None:
        frames = []
        for frame in frames_of(sim, 1000, range(n)):
            wide = {k: np.concatenate([v, v]) for k, v in frame.metadata.items()}
            wide.pop("window_counts", None)
            spectra = np.concatenate([frame.spectra, frame.spectra])
            frames.append(make_frame(frame.frame, spectra, wide, exptime=0.01))
        push.send(encode(encoder, sim.control.header(), *frames, SeriesEndMessage()))

    t0 = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
        RE(
            fly(
                xspress,
                TriggerInfo(number_of_events=n, livetime=0.01),
                after_kickoff=send,
            )
        )
    error = find_in_chain(info.value, StreamShapeError)
    path = only_h5(tmp_path)
    assert str(error) == (
        f"the stream from {push.endpoint} sends 8 channels x 4096 bins (frame 0), "
        f"but the file {path} was opened for 4 x 4096: the detector is set up "
        "for 4 channels: pass channels=8 (passive), or check the device's "
        "nChannels"
    )
    assert time.monotonic() - t0 < 5.0  # at once, not at the stall time-out
    lines = [m for m in caplog.messages if "sends 8 channels" in m]
    assert len(lines) == 1, lines
    assert docs["stop"][0]["exit_status"] == "fail"
