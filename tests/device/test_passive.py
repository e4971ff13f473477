# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""Passive mode: someone else arms the detector; we only consume the stream.

The real captures are replayed on a PUSH socket (which waits for our PULL to
connect, so nothing is lost) and each ``trigger()`` of a ``count`` takes the next
frame. Every event must carry exactly the captured frame, as decoded straight
from the capture file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from ophyd_async.core import TriggerInfo, init_devices
from tests.helpers import RAW_SCALER_NAMES

from ophyd_xspress.device import XspressDetector
from ophyd_xspress.protocol import Frame, HeaderMessage, StreamDecoder
from ophyd_xspress.tools import read_capture

DUMP = "xspress3-dump.cbors"
MULTIPART = "xspress3-multipart.cbors"


def decode_capture(path: Path) -> tuple[list[HeaderMessage], list[Frame]]:
    decoder = StreamDecoder()
    headers: list[HeaderMessage] = []
    frames: list[Frame] = []
    for message in read_capture(path):
        for packet in decoder.feed(message):
            if isinstance(packet, Frame):
                frames.append(packet)
            elif isinstance(packet, HeaderMessage):
                headers.append(packet)
    return headers, frames


class GatedSender:
    """A capture's messages on a bound PUSH socket, sent a group at a time
    when released: a passive detector takes only frames that arrive after its
    trigger, so each point's frame is released once the point has begun, as
    from a detector someone else triggers. Groups: the header, then one frame
    each (anything after the last frame goes with it)."""

    def __init__(self, messages: list[list[bytes]]) -> None:
        import zmq

        self.groups = _groups(messages)
        self.ctx: Any = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint: str = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.sent = 0

    def release(self, groups: int = 1) -> None:
        for group in self.groups[self.sent : self.sent + groups]:
            for message in group:
                self.sock.send_multipart(message)
        self.sent = min(len(self.groups), self.sent + groups)

    def release_all(self) -> None:
        self.release(len(self.groups))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def _groups(messages: list[list[bytes]]) -> list[list[list[bytes]]]:
    """Split ``messages`` after the header and after each frame."""
    decoder = StreamDecoder()
    groups: list[list[list[bytes]]] = [[]]
    for message in messages:
        groups[-1].append(message)
        if any(
            isinstance(p, Frame | HeaderMessage) for p in decoder.feed(list(message))
        ):
            groups.append([])
    if not groups[-1]:
        groups.pop()
    elif len(groups) > 1:  # trailing series_end: with the last frame
        trailing = groups.pop()
        groups[-1] += trailing
    return groups


@pytest.fixture
def passive(
    RE: Any,
    in_loop: Callable[..., Any],
    tmp_path: Path,
) -> Iterator[Callable[..., tuple[XspressDetector, GatedSender]]]:
    made: list[tuple[XspressDetector, GatedSender]] = []

    def make(capture: Path, **options: Any) -> tuple[XspressDetector, GatedSender]:
        sender = GatedSender(list(read_capture(capture)))
        with init_devices():
            xspress = XspressDetector(
                stream=sender.endpoint,
                socket="pull",
                name="xspress",
                path=tmp_path,
                **options,
            )
        made.append((xspress, sender))
        return xspress, sender

    yield make
    for xspress, sender in made:
        in_loop(xspress.unstage, timeout=60)
        sender.close()


def gated_points(det: Any, sender: GatedSender, releases: list[int]) -> Any:
    """A step scan of ``len(releases)`` points: each point triggers, waits
    until its acquisition has begun, then releases ``releases[k]`` groups
    (the header goes first, before any point)."""

    def plan() -> Any:
        sender.release()
        previous = None
        for k, groups in enumerate(releases):
            yield from bps.trigger(det, group=f"point{k}")
            while det.current_run is None or det.current_run is previous:
                yield from bps.sleep(0.002)
            previous = det.current_run
            sender.release(groups)
            yield from bps.wait(f"point{k}")
            yield from bps.create()
            yield from bps.read(det)
            yield from bps.save()

    return bpp.stage_wrapper(bpp.run_wrapper(plan()), [det])


def check_events(events: list[dict[str, Any]], frames: list[Frame]) -> None:
    assert len(events) == len(frames)
    for event, frame in zip(events, frames, strict=True):
        data = event["data"]
        assert data["xspress-frame_number"] == frame.frame
        assert data["xspress"].dtype == frame.spectra.dtype
        np.testing.assert_array_equal(data["xspress"], frame.spectra)
        for name in RAW_SCALER_NAMES:
            np.testing.assert_array_equal(
                data[f"xspress-{name}"], frame[name], err_msg=name
            )
        np.testing.assert_array_equal(
            data["xspress-dead_time_correction"], frame["dead_time_correction"]
        )
        # the "total" default ROI is the whole spectrum, i.e. all_good
        np.testing.assert_array_equal(
            data["xspress-roi"][:, 0], frame.spectra.sum(axis=1)
        )
        np.testing.assert_array_equal(data["xspress-roi"][:, 0], frame["all_good"])


@pytest.mark.parametrize(
    ("capture", "n_frames"), [(DUMP, 20), (MULTIPART, 5)], ids=["legacy", "multipart"]
)
def test_count_replayed_capture(RE, docs, shared_data, passive, capture, n_frames):
    path = shared_data / capture
    if not path.is_file():
        pytest.skip(f"{path} not found")
    _, frames = decode_capture(path)
    assert len(frames) == n_frames
    xspress, sender = passive(path)
    RE(gated_points(xspress, sender, [1] * n_frames))
    docs.assert_valid()
    check_events(docs["event"], frames)
    assert docs["stop"][0]["exit_status"] == "success"
    summaries = xspress.run_summaries[-n_frames:]
    assert all(s["frames_received"] == 1 for s in summaries)
    # nothing arrives out of order or twice in these captures
    assert xspress.anomalies == {}
    # passive: no Tango control signals in the configuration
    conf = docs["descriptor"][0]["configuration"]["xspress"]["data"]
    assert not any("control" in key for key in conf)
    assert conf["xspress-stream_endpoint"] == sender.endpoint


def test_passive_configuration_shows_the_header(RE, docs, shared_data, passive):
    path = shared_data / MULTIPART
    if not path.is_file():
        pytest.skip(f"{path} not found")
    headers, frames = decode_capture(path)
    xspress, sender = passive(path)
    # the header arrives before the first point, when no run waits for it
    RE(gated_points(xspress, sender, [1] * len(frames)))
    check_events(docs["event"], frames)
    conf = docs["descriptor"][0]["configuration"]["xspress"]["data"]
    # and the header that came before them, though no run was waiting for it
    assert conf["xspress-header_filename"] == headers[0].filename
    assert (
        json.loads(conf["xspress-hardware_windows"]) == headers[0].to_wire()["limits"]
    )


def test_fly_scan_of_replayed_capture_to_hdf5(
    RE, docs, shared_data, passive, fly, tmp_path
):
    """Passive fly scan: the 20 legacy-framed frames, in order, into one file."""
    path = shared_data / DUMP
    if not path.is_file():
        pytest.skip(f"{path} not found")
    _, frames = decode_capture(path)
    xspress, sender = passive(path)
    RE(
        fly(
            xspress,
            TriggerInfo(number_of_events=len(frames)),
            after_kickoff=sender.release_all,
        )
    )
    docs.assert_valid()
    assert docs["stop"][0]["exit_status"] == "success"
    datums = docs["stream_datum"]
    assert {(d["indices"]["start"], d["indices"]["stop"]) for d in datums} <= {
        (a, b) for a in range(21) for b in range(21) if a < b
    }
    assert max(d["indices"]["stop"] for d in datums) == len(frames)
    (h5,) = tmp_path.glob("*.h5")
    with h5py.File(h5, "r") as f:
        g = f["/entry/instrument/xspress3"]
        np.testing.assert_array_equal(g["frame_number"][:], [fr.frame for fr in frames])
        for i, frame in enumerate(frames):
            np.testing.assert_array_equal(g["data"][i], frame.spectra)
            for name in RAW_SCALER_NAMES:
                np.testing.assert_array_equal(g[name][i], frame[name], err_msg=name)
            np.testing.assert_array_equal(
                g["dead_time_correction"][i], frame["dead_time_correction"]
            )
    assert xspress.run_summaries[-1]["frames_received"] == len(frames)
    assert xspress.anomalies == {}


def test_passive_fly_scan_drops_repeated_frames_without_shifting_rows(
    RE, docs, passive, fly, tmp_path
):
    """Frames 0,1,2,0,1,3,4,5 (a repeat of 0-1 inside one series, as real
    streams do): a passive run numbers rows by arrival, so the repeats must be
    dropped, or frames 3-5 would land in the wrong rows."""
    from ophyd_xspress.protocol import SeriesEndMessage, StreamEncoder
    from ophyd_xspress.sim import SimulatedXspress3
    from ophyd_xspress.tools import write_capture

    sim = SimulatedXspress3(channels=4, pace=False)
    encoder = StreamEncoder("multipart")
    frames = [sim.expected_frame(0, i) for i in range(6)]
    messages = list(encoder.encode(sim.header()))
    for k in (0, 1, 2, 0, 1, 3, 4, 5):
        messages += encoder.encode(frames[k])
    messages += encoder.encode(SeriesEndMessage())
    path = tmp_path / "repeats.cbors"
    write_capture(path, messages)
    xspress, sender = passive(path)
    RE(fly(xspress, TriggerInfo(number_of_events=6), after_kickoff=sender.release_all))
    docs.assert_valid()
    assert docs["stop"][0]["exit_status"] == "success"
    (h5,) = tmp_path.glob("*.h5")
    with h5py.File(h5, "r") as f:
        g = f["/entry/instrument/xspress3"]
        np.testing.assert_array_equal(g["frame_number"][:], np.arange(6))
        for i, frame in enumerate(frames):
            np.testing.assert_array_equal(g["data"][i], frame.spectra)
    summary = xspress.run_summaries[-1]
    assert summary["frames_received"] == 6
    assert summary["repeated"] == [0, 1]


def _capture(tmp_path: Path, numbers: list[int]) -> tuple[Path, list[Frame]]:
    """A one-series capture of simulator frames in the order ``numbers``."""
    from ophyd_xspress.protocol import SeriesEndMessage, StreamEncoder
    from ophyd_xspress.sim import SimulatedXspress3
    from ophyd_xspress.tools import write_capture

    sim = SimulatedXspress3(channels=4, pace=False)
    encoder = StreamEncoder("multipart")
    frames = [sim.expected_frame(0, i) for i in range(max(numbers) + 1)]
    messages = list(encoder.encode(sim.header()))
    for k in numbers:
        messages += encoder.encode(frames[k])
    messages += encoder.encode(SeriesEndMessage())
    path = tmp_path / "series.cbors"
    write_capture(path, messages)
    return path, frames


def test_passive_fly_scan_keeps_rows_when_a_frame_is_lost_or_late(
    RE, docs, passive, fly, tmp_path
):
    """Frames 0, 1, 4, 3, 5 of a 6-frame passive fly scan: 2 never arrives, 3
    is late. Each frame lands in the row of its number; row 2 stays empty; the
    run fails at series_end naming frame 2, with StreamDatum only for rows
    0-1 (all that is contiguous on disk)."""
    from bluesky.utils import FailedStatus

    from ophyd_xspress.transport import StreamIncompleteError

    path, frames = _capture(tmp_path, [0, 1, 4, 3, 5])
    xspress, sender = passive(path)
    with pytest.raises(FailedStatus) as info:
        RE(
            fly(
                xspress,
                TriggerInfo(number_of_events=6),
                after_kickoff=sender.release_all,
            )
        )
    assert isinstance(info.value.__cause__, StreamIncompleteError), info.value
    assert "ended after 5 of 6 frames; missing 2" in str(info.value.__cause__)
    docs.assert_valid()
    assert docs["stop"][0]["exit_status"] == "fail"
    assert max((d["indices"]["stop"] for d in docs["stream_datum"]), default=0) <= 2
    (h5,) = tmp_path.glob("*.h5")
    with h5py.File(h5, "r") as f:
        g = f["/entry/instrument/xspress3"]
        np.testing.assert_array_equal(g["frame_number"][:], [0, 1, -1, 3, 4, 5])
        for i in (0, 1, 3, 4, 5):
            np.testing.assert_array_equal(g["data"][i], frames[i].spectra)
        assert not g["data"][2].any()
    summary = xspress.run_summaries[-1]
    assert summary["missing"] == [2]
    assert summary["out_of_order"] == [3]


def test_passive_count_takes_each_frame_once(RE, docs, passive, tmp_path):
    """A passive count over 0, 1, 0, 1, 3: the repeats are dropped across the
    triggers (one run each) and the lost frame 2 is reported by the point
    that took frame 3."""
    path, frames = _capture(tmp_path, [0, 1, 0, 1, 3])
    xspress, sender = passive(path)
    # the third point gets the repeats of 0 and 1, then frame 3
    RE(gated_points(xspress, sender, [1, 1, 3]))
    docs.assert_valid()
    events = docs["event"]
    assert [e["data"]["xspress-frame_number"] for e in events] == [0, 1, 3]
    for event, k in zip(events, (0, 1, 3), strict=True):
        np.testing.assert_array_equal(event["data"]["xspress"], frames[k].spectra)
    last = xspress.run_summaries[-1]
    assert last["repeated"] == [0, 1]
    assert last["missing"] == [2]
    assert xspress.anomalies == {"repeated": 2, "missing": 1}
    assert events[-1]["data"]["xspress-anomalies"] == 3
