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


def test_listen_json_summarises_a_running_stream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with XspressSimulator(
        channels=2, tango=False, count_rate=1e5, write_hdf5=False
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
    assert summary["channels"] == 2
    assert summary["missing"] == 0
    assert summary["frame_rate_hz"] > 50
    assert summary["mb_per_s"] > 0
    assert all(0 < d < 50 for d in summary["dead_time_percent"])
    assert all(ocr > 0 for ocr in summary["ocr_cps"])


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
