# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""Fly scans through HDF5 on the simulated Xspress3, end to end.

The big one runs 10,000 frames unpaced (as fast as the simulator can send) and
checks every row of the file bit for bit against what the simulator sent, plus
the StreamResource / StreamDatum documents that point at them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from bluesky.plans import count
from ophyd_async.core import TriggerInfo
from tests.helpers import RAW_SCALER_NAMES

CLOCK_HZ = 80e6
CHANNELS = 4
BINS = 4096
GROUP = "/entry/instrument/xspress3"
#: compared row by row with what the simulator sent
SCALERS = (*RAW_SCALER_NAMES, "dead_time_correction")
#: data key suffix -> HDF5 dataset (the schema's table, ophyd_xspress._schema)
STREAM_KEYS = {
    "": "data",
    "-dtc": "dtc",
    "-dead_time_correction": "dead_time_correction",
    "-dead_time": "dead_time_percent",
    "-elapsed_time": "elapsed_time",
    "-live_time": "live_time",
    "-icr": "input_count_rate",
    "-ocr": "ocr",
    "-stream_output_count_rate": "output_count_rate",
    "-all_events": "all_events",
    "-all_good": "all_good",
    "-clock_ticks": "clock_ticks",
    "-total_ticks": "total_ticks",
    "-reset_ticks": "reset_ticks",
    "-event_width": "event_width",
    "-roi": "roi",
    "-roi_corrected": "roi_corrected",
    "-frame_number": "frame_number",
}


def hdf5_path(docs: Any) -> Path:
    uris = {d["uri"] for d in docs["stream_resource"]}
    assert len(uris) == 1, uris
    uri = uris.pop()
    assert uri.startswith("file://localhost/"), uri
    return Path(uri[len("file://localhost") :])


def check_stream_documents(docs: Any, n: int, *, progressive: bool) -> None:
    """One StreamResource per data key, StreamDatum indices contiguous over 0..n."""
    (descriptor,) = docs["descriptor"]
    resources = docs["stream_resource"]
    keys = dict(STREAM_KEYS)
    if "xspress-window_counts" in descriptor["data_keys"]:
        # declared once the detector knows the stream carries them
        keys["-window_counts"] = "window_counts"
    assert {r["data_key"] for r in resources} == {f"xspress{suffix}" for suffix in keys}
    by_uid = {r["uid"]: r for r in resources}
    assert len(by_uid) == len(resources)
    for r in resources:
        assert r["mimetype"] == "application/x-hdf5"
        suffix = r["data_key"][len("xspress") :]
        assert r["parameters"]["dataset"] == f"{GROUP}/{keys[suffix]}"
        assert "chunk_shape" in r["parameters"]
        dk = descriptor["data_keys"][r["data_key"]]
        assert dk["external"] == "STREAM:"
    datums: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in docs["stream_datum"]:
        assert d["descriptor"] == descriptor["uid"]
        datums[d["stream_resource"]].append(d)
    assert set(datums) == set(by_uid)
    for uid, ds in datums.items():
        key = by_uid[uid]["data_key"]
        if progressive:
            assert len(ds) > 1, f"{key}: one StreamDatum only (not progressive)"
        # in emission order, each picks up exactly where the last one stopped
        start = 0
        for d in ds:
            assert d["indices"]["start"] == start, key
            assert d["indices"]["stop"] > start, key
            assert d["seq_nums"]["start"] == start + 1, key
            assert d["seq_nums"]["stop"] == d["indices"]["stop"] + 1, key
            start = d["indices"]["stop"]
        assert start == n, key
    # all keys advance together: the k-th StreamDatum of every key covers the same
    spans = {
        tuple((d["indices"]["start"], d["indices"]["stop"]) for d in ds)
        for ds in datums.values()
    }
    assert len(spans) == 1


# -- 10,000 frames ---------------------------------------------------------------------
N_BIG = 10_000


@pytest.mark.parametrize("sim_options", [{"pace": False}], ids=["unpaced"])
def test_fly_10000_frames_to_hdf5(RE, sim, xspress, docs, fly):
    first = sim.control.series_index + 1
    info = TriggerInfo(number_of_events=N_BIG, livetime=0.001)
    RE(fly(xspress, info, flush_period=0.5))
    docs.assert_valid()
    counts = docs.counts()
    assert counts["start"] == counts["descriptor"] == counts["stop"] == 1
    assert "event" not in counts
    assert docs["stop"][0]["exit_status"] == "success"
    assert sim.control.series_index == first, "one Arm for the whole scan"

    # descriptor: per-frame shapes (no leading collections axis) and dtypes
    keys = docs["descriptor"][0]["data_keys"]
    assert keys["xspress"]["shape"] == [CHANNELS, BINS]
    assert keys["xspress"]["dtype_numpy"] == "<u4"
    assert keys["xspress-ocr"]["units"] == "counts/s"
    assert keys["xspress-frame_number"]["shape"] == []
    check_stream_documents(docs, N_BIG, progressive=True)

    summary = xspress.run_summaries[-1]
    assert summary["frames_expected"] == N_BIG
    assert summary["frames_received"] == N_BIG
    assert summary["missing"] == summary["repeated"] == summary["out_of_order"] == []
    assert xspress.anomalies == {}

    chunk_shapes = {
        r["data_key"]: tuple(r["parameters"]["chunk_shape"])
        for r in docs["stream_resource"]
    }
    with h5py.File(hdf5_path(docs), "r") as f:
        g = f[GROUP]
        data = g["data"]
        assert data.shape == (N_BIG, CHANNELS, BINS)
        assert data.dtype == np.uint32
        assert data.chunks is not None
        assert data.chunks == chunk_shapes["xspress"]
        np.testing.assert_array_equal(g["frame_number"][:], np.arange(N_BIG))
        ocr = g["ocr"]
        assert ocr.attrs["units"] == "counts/s"
        stream_ocr = g["output_count_rate"]  # MAX IV's name: the stream's field
        assert stream_ocr.attrs["units"] == "1.5625e-16 counts/s"
        assert g["live_time"].attrs["units"] == "s"
        # every row, read in blocks
        block = 500
        for start in range(0, N_BIG, block):
            stop = min(start + block, N_BIG)
            expected = [
                sim.control.expected_frame(first, i) for i in range(start, stop)
            ]
            np.testing.assert_array_equal(
                data[start:stop],
                np.stack([e.spectra for e in expected]),
                err_msg=f"rows {start}-{stop}",
            )
            for name in (*SCALERS, "output_count_rate"):
                np.testing.assert_array_equal(
                    g[name][start:stop],
                    np.stack([e[name] for e in expected]),
                    err_msg=f"{name} rows {start}-{stop}",
                )
            np.testing.assert_array_equal(
                g["window_counts"][start:stop],
                np.stack([e.window_counts for e in expected]),
            )
            good = np.stack([e["all_good"] for e in expected]).astype(np.float64)
            ticks = np.stack([e["clock_ticks"] for e in expected]).astype(np.float64)
            np.testing.assert_allclose(
                ocr[start:stop], good / (ticks / CLOCK_HZ), rtol=1e-12
            )
            # no ROI configured: the default ROI is the whole spectrum
            np.testing.assert_array_equal(
                g["roi"][start:stop][:, :, 0], good.astype(np.uint64)
            )
        # the stream's own output_count_rate (a units bug) is 6.4e15 times smaller
        assert ocr[0, 0] > 1e3
        np.testing.assert_allclose(stream_ocr[0] * 6.4e15, ocr[0], rtol=1e-6)


# -- a detector writing HDF5 in a step scan --------------------------------------------
def test_step_scan_with_hdf5_data(RE, sim, make_xspress, docs):
    sim.control.exposure_time = 0.01
    det = make_xspress(data="hdf5")
    first = sim.control.series_index + 1
    RE(count([det], 3))
    docs.assert_valid()
    events = docs["event"]
    assert len(events) == 3
    for e in events:
        assert "xspress" not in e["data"], "spectra belong in the file"
    check_stream_documents(docs, 3, progressive=False)
    per_key: dict[str, int] = defaultdict(int)
    for d in docs["stream_datum"]:
        per_key[d["stream_resource"]] += 1
    assert set(per_key.values()) == {3}, "one StreamDatum per event and key"
    with h5py.File(hdf5_path(docs), "r") as f:
        g = f[GROUP]
        assert g["data"].shape == (3, CHANNELS, BINS)
        # each trigger is its own series, so each row holds a frame 0
        np.testing.assert_array_equal(g["frame_number"][:], [0, 0, 0])
        for i in range(3):
            frame = sim.control.expected_frame(first + i, 0)
            np.testing.assert_array_equal(g["data"][i], frame.spectra)
            np.testing.assert_array_equal(g["all_good"][i], frame["all_good"])


def test_fly_scan_with_several_collections_per_event(RE, sim, xspress, docs, fly):
    first = sim.control.series_index + 1
    info = TriggerInfo(number_of_events=5, collections_per_event=2, livetime=0.002)
    RE(fly(xspress, info))
    docs.assert_valid()
    keys = docs["descriptor"][0]["data_keys"]
    assert keys["xspress"]["shape"] == [2, CHANNELS, BINS]
    assert keys["xspress-frame_number"]["shape"] == [2]
    check_stream_documents(docs, 5, progressive=False)
    with h5py.File(hdf5_path(docs), "r") as f:
        g = f[GROUP]
        np.testing.assert_array_equal(g["frame_number"][:], np.arange(10))
        for i in range(10):
            np.testing.assert_array_equal(
                g["data"][i], sim.control.expected_frame(first, i).spectra
            )


def test_fly_scan_with_inline_data_says_why_it_cannot(RE, sim, make_xspress, docs, fly):
    det = make_xspress(data="inline")
    with pytest.raises(Exception) as info:  # noqa: PT011
        RE(fly(det, TriggerInfo(number_of_events=5, livetime=0.002)))
    error = info.value
    while not isinstance(error, ValueError) and error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, ValueError), repr(info.value)
    assert "data='inline'" in str(error)
    assert "data='auto'" in str(error) or "data='hdf5'" in str(error)
    assert docs["stop"][0]["exit_status"] == "fail"


# -- progress --------------------------------------------------------------------------
def test_complete_status_reports_progress(RE, sim, xspress, docs, fly):
    n = 200
    updates: list[dict[str, Any]] = []

    def watch(status: Any) -> None:
        status.watch(lambda **kw: updates.append(kw))

    info = TriggerInfo(number_of_events=n, livetime=0.002)
    RE(fly(xspress, info, on_complete_status=watch))
    docs.assert_valid()
    assert updates, "no WatcherUpdate"
    currents = [u["current"] for u in updates]
    assert currents == sorted(currents), currents
    assert currents[-1] == n
    assert len(set(currents)) > 3, currents
    assert {u["target"] for u in updates} == {n}
    assert {u["initial"] for u in updates} == {0}
    assert {u["name"] for u in updates} == {"xspress"}
    check_stream_documents(docs, n, progressive=True)


def test_two_fly_scans_in_a_row_use_two_files(RE, sim, xspress, docs, fly):
    sim.control.exposure_time = 0.002
    first = sim.control.series_index + 1
    RE(fly(xspress, TriggerInfo(number_of_events=20, livetime=0.001)))
    path1 = hdf5_path(docs)
    docs.clear()
    RE(fly(xspress, TriggerInfo(number_of_events=30, livetime=0.001)))
    path2 = hdf5_path(docs)
    assert path1 != path2
    check_stream_documents(docs, 30, progressive=False)
    for path, n, series in ((path1, 20, first), (path2, 30, first + 1)):
        with h5py.File(path, "r") as f:
            g = f[GROUP]
            np.testing.assert_array_equal(g["frame_number"][:], np.arange(n))
            for i in (0, n - 1):
                np.testing.assert_array_equal(
                    g["data"][i], sim.control.expected_frame(series, i).spectra
                )


# -- SWMR: another process reads the file while it is written --------------------------
_READER = r"""
import glob, json, os, sys, time
import h5py
import hdf5plugin  # the spectra are Blosc-compressed by default
folder, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
print("ready", flush=True)  # imports done: start the scan
deadline = time.monotonic() + timeout
paths = []
while not paths and time.monotonic() < deadline:
    paths = glob.glob(os.path.join(folder, "*.h5"))
    time.sleep(0.005)
snapshots = []
f = None
while f is None and time.monotonic() < deadline:
    try:  # the writer may not have switched SWMR on yet
        f = h5py.File(paths[0], "r", libver="latest", swmr=True)
    except OSError:
        time.sleep(0.005)
with f:
    g = f["/entry/instrument/xspress3"]
    fn_ds, data, good = g["frame_number"], g["data"], g["all_good"]
    while time.monotonic() < deadline:
        for ds in (fn_ds, data, good):
            ds.refresh()
        fn = fn_ds[:]
        written = [int(i) for i in range(len(fn)) if fn[i] >= 0]
        rows = {}
        for i in written[:1] + written[-1:]:
            rows[i] = [int(fn[i]), data[i].sum(axis=1).tolist(), good[i].tolist()]
        contiguous = next((i for i, v in enumerate(fn) if v < 0), len(fn))
        snapshots.append(
            {"written": len(written), "contiguous": contiguous, "rows": rows}
        )
        if len(written) >= n:
            break
        time.sleep(0.02)
print(json.dumps(snapshots))
"""


def test_hdf5_is_readable_while_written(RE, sim, xspress, docs, fly, tmp_path):
    """Another process follows the file with SWMR while the scan writes it."""
    import json
    import subprocess
    import sys

    n = 400
    first = sim.control.series_index + 1
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(tmp_path), str(n), "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        info = TriggerInfo(number_of_events=n, livetime=0.005)
        RE(fly(xspress, info))
        out, err = reader.communicate(timeout=90)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    assert reader.returncode == 0, err
    snapshots = json.loads(out.strip().splitlines()[-1])
    seen = [s["written"] for s in snapshots]
    assert any(0 < w < n for w in seen), f"never saw a partly written file: {seen}"
    assert seen[-1] == n
    assert seen == sorted(seen)
    for snap in snapshots:
        # rows fill in order here: what is written is a prefix
        assert snap["contiguous"] == snap["written"]
        for row, (number, sums, good) in snap["rows"].items():
            frame = sim.control.expected_frame(first, int(row))
            assert number == int(row)
            assert sums == frame.spectra.sum(axis=1).tolist()
            assert good == frame["all_good"].tolist()
