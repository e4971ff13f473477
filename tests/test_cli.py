"""The command line: inspect, listen, sim (argument handling and output)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from ophyd_xspress.cli import main
from ophyd_xspress.sim import XspressSimulator
from ophyd_xspress.tools import write_capture

SHARED = Path(
    os.environ.get(
        "XSPRESS_SHARED_DATA",
        Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xspress3",
    )
)


def _capture(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"real capture {path} not available (../shared beside the repo)")
    return path


@pytest.mark.parametrize(
    ("name", "frames", "framing", "windows"),
    [
        ("xspress3-dump.cbors", 20, "legacy", False),
        ("xspress3-multipart.cbors", 5, "multipart", True),
    ],
)
def test_inspect_json_documents_the_captures(
    name: str,
    frames: int,
    framing: str,
    windows: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["inspect", str(_capture(name)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == frames
    (series,) = report["series"]
    assert series["channels"] == 4
    assert series["bins"] == 4096
    assert series["frames"] == frames
    assert series["framing"] == framing
    assert series["dtype"] == "uint32"
    assert series["anomalies"]["missing"] == []
    assert series["anomalies"]["repeated"] == []
    assert series["spectrum_sums_equal_all_good"] is True
    assert series["channel_totals"] == series["all_good_totals"]
    assert series["dtc_max_rel_diff_vs_stream"] <= 1e-12
    assert series["dtc"]["min"] <= series["dtc"]["median"] <= series["dtc"]["max"]
    assert series["stream_output_count_rate_units_bug"] in (True, False)
    assert ("window_counts_totals" in series) is windows


def test_inspect_a_36_channel_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A series of the simulator at 36 channels, recorded off its stream:
    inspect reports its shape, and its totals agree with the spectra."""
    import zmq

    frames = 12
    # PUSH -> PULL: the messages wait for the reader (no subscription race)
    with XspressSimulator(
        channels=36, tango=False, pace=False, write_hdf5=False, socket_type="push"
    ) as sim:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.PULL)
        sub.connect(sim.stream_endpoint)
        try:
            det = sim.control
            det.exposure_time = 0.001
            det.n_frames_per_trigger = frames
            det.arm()
            det.software_trigger()
            messages: list[list[bytes]] = []
            while not messages or b"series_end" not in messages[-1][0]:
                assert sub.poll(10_000), f"{len(messages)} messages, then silence"
                messages.append(sub.recv_multipart())
        finally:
            sub.close(linger=0)
    path = tmp_path / "36.cbors"
    write_capture(path, messages)
    assert main(["inspect", str(path), "--json"]) == 0
    (series,) = json.loads(capsys.readouterr().out)["series"]
    assert series["channels"] == 36
    assert series["bins"] == 4096
    assert series["frames"] == frames
    assert series["anomalies"]["missing"] == []
    assert series["spectrum_sums_equal_all_good"] is True
    assert len(series["channel_totals"]) == 36
    assert series["channel_totals"] == series["all_good_totals"]


def test_inspect_text_names_the_facts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(_capture("xspress3-multipart.cbors"))]) == 0
    out = capsys.readouterr().out
    assert "4 channels x 4096 bins (uint32)" in out
    assert "frames received        5" in out
    assert "sum == all_good        yes" in out


def test_inspect_reports_anomalies_of_an_edited_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ophyd_xspress.tools import read_capture

    messages = list(read_capture(_capture("xspress3-multipart.cbors")))
    # header, frames 0..4, series_end: drop frame 2, repeat frame 4
    edited = [messages[0], messages[1], messages[2], messages[4], messages[5]]
    edited += [messages[5], messages[6]]
    path = tmp_path / "edited.cbors"
    write_capture(path, edited)
    assert main(["inspect", str(path), "--json"]) == 0
    series = json.loads(capsys.readouterr().out)["series"][0]
    assert series["anomalies"]["missing"] == [2]
    assert series["anomalies"]["repeated"] == [4]


@pytest.mark.parametrize("content", [b"", b"not cbor at all \xff\xfe", b"\x83\x01\x02"])
def test_inspect_bad_file_exits_2_with_one_line(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.cbors"
    path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ophyd-xspress inspect: error:")
    assert len(err.splitlines()) == 1


def test_inspect_missing_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "/nonexistent/capture.cbors"]) == 2
    assert "cannot open" in capsys.readouterr().err


@pytest.mark.parametrize("channels", [2, 36])
def test_listen_json_summarises_a_running_stream(
    capsys: pytest.CaptureFixture[str], channels: int
) -> None:
    with XspressSimulator(
        channels=channels, tango=False, count_rate=1e5, write_hdf5=False
    ) as sim:
        det = sim.control
        det.exposure_time = 0.005
        det.n_frames_per_trigger = 100_000
        done = threading.Event()

        def start() -> None:
            done.wait(0.5)  # let listen connect first
            det.arm()
            det.software_trigger()

        threading.Thread(target=start, daemon=True).start()
        try:
            code = main(
                [
                    "listen",
                    sim.stream_endpoint,
                    "--json",
                    "--frames",
                    "40",
                    "--timeout",
                    "30",
                ]
            )
        finally:
            det.stop()
            det.wait_idle(5)
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] >= 40
    assert summary["channels"] == channels
    assert len(summary["ocr_cps"]) == channels
    assert summary["missing"] == 0
    assert summary["frame_rate_hz"] > 50
    assert summary["mb_per_s"] > 0
    assert all(0 < d < 50 for d in summary["dead_time_percent"])
    assert all(ocr > 0 for ocr in summary["ocr_cps"])


def test_listen_table_shows_the_spread_of_many_channels() -> None:
    """Beyond 8 channels the table gives min / median / max over channels and
    which channels are the extremes, not one row per channel."""
    from rich.console import Console

    from ophyd_xspress.cli._listen import _table

    channels = 36
    dead = [1.0 + c / 10 for c in range(channels)]
    dead[7] = 9.5  # one hot channel
    summary = {
        "endpoint": "tcp://127.0.0.1:9999",
        "frames": 100,
        "frame_rate_hz": 10.0,
        "mb_per_s": 5.9,
        "megabytes": 59.0,
        "last_frame": 99,
        "headers": 1,
        "series_ends": 0,
        "missing": 0,
        "repeated": 0,
        "out_of_order": 0,
        "frames_outside_series": 0,
        "protocol_errors": 0,
        "last_error": "",
        "channels": channels,
        "ocr_cps": [1000.0 * (c + 1) for c in range(channels)],
        "icr_cps": [None] + [2000.0] * (channels - 1),
        "dead_time_percent": dead,
    }
    console = Console(record=True, width=120)
    console.print(_table(summary))
    text = console.export_text()
    assert "channel 0" not in text
    assert "1,000 (ch 0) / 18,500 / 36,000 (ch 35) cps" in text
    assert "0 (ch 0) / 2,000 / 2,000" in text  # no ICR yet on channel 0
    assert "1.00 (ch 0) / " in text
    assert " / 9.50 (ch 7) %" in text


def test_inspect_reports_a_non_finite_exptime_as_null(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Frames whose exptime is NaN or infinite: valid JSON (null, not NaN),
    the frames listed as an anomaly, status 0; the text says the same."""
    import math

    from ophyd_xspress.protocol import SeriesEndMessage, StreamEncoder, make_frame
    from ophyd_xspress.sim import SimulatedXspress3

    sim = SimulatedXspress3(channels=2, pace=False)
    encoder = StreamEncoder("multipart")
    messages = list(encoder.encode(sim.header()))
    for n, exptime in enumerate((0.1, math.nan, math.inf)):
        frame = sim.expected_frame(0, n)
        edited = make_frame(n, frame.spectra, dict(frame.metadata), exptime=exptime)
        messages += encoder.encode(edited)
    messages += encoder.encode(SeriesEndMessage())
    path = tmp_path / "nan.cbors"
    write_capture(path, messages)

    assert main(["inspect", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out, parse_constant=pytest.fail)  # no NaN / Infinity
    (series,) = report["series"]
    assert series["exptime"] == 0.1
    assert series["anomalies"]["exptime_not_finite"] == [1, 2]
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "exposure (s)           0.1" in text
    assert "exptime_not_finite=[1, 2]" in text
