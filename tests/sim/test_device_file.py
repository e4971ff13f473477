"""The device's own HDF5 file (``WriteHdf5``, true by default as on the device).

What ``xspress3/Receivers.py`` (maxiv-science/xspress3-streamer, 64-130) writes
for each Arm: ``/entry/instrument/xspress3`` (NXdetector), one dataset per
metadata array and ``data``, chunks of one frame, every frame received
appended; an underscore before the first dot while the file exists, unless
overwritable.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ophyd_xspress.protocol import DEFAULT_SCALER_NAMES
from ophyd_xspress.sim import SimulatedXspress3, device_file_name


def _burst(det: SimulatedXspress3, frames: int) -> None:
    det.n_triggers, det.n_frames_per_trigger = 1, frames
    det.arm()
    det.software_trigger()
    assert det.wait_idle(10)


def _wait_file(path: Path, frames: int, timeout: float = 10.0) -> h5py.File:
    """The file once closed by the writer with ``frames`` rows."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            f = h5py.File(path, "r")
        except OSError:
            f = None
        if f is not None:
            group = f.get("entry/instrument/xspress3")
            if frames == 0 or (group is not None and group["data"].shape[0] == frames):
                return f
            f.close()
        if time.monotonic() > deadline:
            pytest.fail(f"{path} never held {frames} frames")
        time.sleep(0.02)


@pytest.mark.parametrize("framing", ["multipart", "legacy"])
def test_each_arm_writes_the_devices_file(
    engine: Any, tmp_path: Path, framing: str
) -> None:
    det, stream = engine(channels=3, framing=framing)
    assert det.write_hdf5 is True  # the device's default
    assert det.destination_file_name == str(tmp_path / "temp.h5")  # conftest
    _burst(det, 5)
    stream.read_series_ends(1)
    names = [*DEFAULT_SCALER_NAMES]
    if framing == "multipart":
        names.append("window_counts")
    with _wait_file(tmp_path / "temp.h5", 5) as f:
        group = f["entry/instrument/xspress3"]
        assert group.attrs["NX_class"] == "NXdetector"
        assert sorted(group) == sorted([*names, "data"])
        for name in [*names, "data"]:
            dataset = group[name]
            assert dataset.maxshape[0] is None, name
            assert dataset.chunks == (1, *dataset.shape[1:]), name
        assert group["data"].shape == (5, 3, 4096)
        assert group["data"].dtype == np.uint32
        for n, frame in enumerate(stream.frames):
            assert np.array_equal(group["data"][n], frame.spectra)
            for name in names:
                assert group[name].dtype == frame[name].dtype, name
                assert np.array_equal(group[name][n], frame[name]), name


def test_not_overwritable_adds_underscores_overwritable_replaces(
    engine: Any, tmp_path: Path
) -> None:
    det, stream = engine(channels=1)
    for _ in range(3):
        _burst(det, 2)
    stream.read_series_ends(3)
    for name in ("temp.h5", "temp_.h5", "temp__.h5"):
        with _wait_file(tmp_path / name, 2):
            pass
    det.destination_file_overwritable = True
    _burst(det, 4)
    stream.read_series_ends(4)
    with _wait_file(tmp_path / "temp.h5", 4):
        pass
    assert not (tmp_path / "temp___.h5").exists()


def test_no_file_without_write_hdf5_or_a_name(engine: Any, tmp_path: Path) -> None:
    det, stream = engine(channels=1)
    det.write_hdf5 = False
    _burst(det, 2)
    det.write_hdf5 = True
    for name in ("", "None"):  # DeviceServer.py 328; Receivers.py 80-81
        det.destination_file_name = name
        _burst(det, 2)
    stream.read_series_ends(3)
    time.sleep(0.2)
    assert list(tmp_path.iterdir()) == []


def test_the_file_holds_what_arrived_repeats_included(
    engine: Any, tmp_path: Path
) -> None:
    det, stream = engine(channels=1)
    det.faults.repeat_frames = {1: 1}
    _burst(det, 3)
    stream.read_series_ends(1)
    with _wait_file(tmp_path / "temp.h5", 4) as f:
        data = f["entry/instrument/xspress3/data"][()]
    sent = [det.expected_frame(0, n).spectra for n in (0, 1, 1, 2)]
    assert np.array_equal(data, np.stack(sent))


def test_a_missing_frame_0_leaves_an_empty_file(engine: Any, tmp_path: Path) -> None:
    """The device's writer creates its datasets with frame 0; without it the
    first frame fails (the device's writer thread dies there)."""
    det, stream = engine(channels=1)
    det.faults.drop_frames = {0}
    _burst(det, 3)
    stream.read_series_ends(1)
    with _wait_file(tmp_path / "temp.h5", 0) as f:
        assert "entry" not in f


def test_stop_closes_the_file_with_the_frames_so_far(
    engine: Any, tmp_path: Path, wait_for: Any
) -> None:
    det, stream = engine(channels=1, pace=True)
    det.exposure_time = 0.01
    det.n_frames_per_trigger = 1000
    det.arm()
    det.software_trigger()
    wait_for(lambda: det.n_frames_acquired >= 3, what="3 frames")
    det.stop()
    stream.read_series_ends(1)
    sent = len(stream.frames)
    with _wait_file(tmp_path / "temp.h5", sent) as f:
        assert f["entry/instrument/xspress3/data"].shape[0] == sent


def test_device_file_name_rule(tmp_path: Path) -> None:
    path = tmp_path / "scan.h5"
    assert device_file_name(str(path), False) == str(path)
    path.touch()
    assert device_file_name(str(path), True) == str(path)
    assert device_file_name(str(path), False) == str(tmp_path / "scan_.h5")
    (tmp_path / "scan_.h5").touch()
    assert device_file_name(str(path), False) == str(tmp_path / "scan__.h5")
    assert device_file_name("none", False) == ""
    assert device_file_name("NONE", True) == ""
    # the rule splits at the first dot of the whole path, as the device does
    dotted = tmp_path / "v1.2"
    dotted.mkdir()
    (dotted / "a.h5").touch()
    assert device_file_name(str(dotted / "a.h5"), False) == str(
        tmp_path / "v1_.2" / "a.h5"
    )
