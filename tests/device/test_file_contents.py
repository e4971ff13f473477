# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""What a fly scan's file holds, on the simulated Xspress3, against the facts:

* datasets with MAX IV's names hold what MAX IV's own writer stores from the
  same stream (the simulator writes the device's file as the real device
  does), bit for bit, ``output_count_rate`` included;
* ``window_counts`` only when the stream carries them (the newer firmware),
  a data key once the detector knows they come;
* a per-channel energy calibration reaches each channel's ROIs, the
  configuration and the file, where PyMca's NeXus reader finds each channel
  as an MCA with its live time and calibration;
* the summed, dead-time corrected spectrum in the file and in events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from bluesky.plans import count

from ophyd_xspress._schema import CHANNEL_GROUP, GROUP, MAXIV_DATASETS
from ophyd_xspress.demo import fly_scan
from ophyd_xspress.protocol import Calibration, derive

CHANNELS = 4
FRAMES = 30
#: Each channel's own (eV per bin, offset eV).
CALIBRATIONS = [(10.0, 0.0), (9.9, 15.0), (10.1, -5.0), (10.0, 2.0)]


def hdf5_path(docs: Any) -> Path:
    (uri,) = {d["uri"] for d in docs["stream_resource"]}
    return Path(uri[len("file://localhost") :])


def test_maxiv_names_hold_what_maxivs_writer_stores(
    RE, sim, make_xspress, docs, tmp_path: Path
) -> None:
    device_file = tmp_path / "device" / "scan.h5"
    device_file.parent.mkdir()
    sim.control.destination_file_name = str(device_file)
    xspress = make_xspress(device_writes_hdf5=True)
    RE(fly_scan(xspress, FRAMES, 0.002))
    with (
        h5py.File(hdf5_path(docs)) as ours,
        h5py.File(device_file) as theirs,
    ):
        for name in (*MAXIV_DATASETS, "window_counts"):
            mine, device = ours[GROUP][name], theirs[GROUP][name]
            assert mine.dtype == device.dtype, name
            np.testing.assert_array_equal(mine[:], device[:], err_msg=name)
        # the rate under this package's own name, in counts/s
        np.testing.assert_allclose(
            ours[GROUP]["ocr"][:], theirs[GROUP]["output_count_rate"][:] * 6.4e15
        )


@pytest.mark.parametrize(
    ("sim_options", "carried"),
    [({"framing": "legacy"}, False), ({"framing": "multipart"}, True)],
    ids=["old-firmware", "new-firmware"],
)
def test_window_counts_only_when_the_stream_carries_them(
    RE, sim, make_xspress, docs, carried: bool
) -> None:
    xspress = make_xspress()
    RE(fly_scan(xspress, FRAMES, 0.002))
    first = hdf5_path(docs)
    (descriptor,) = docs["descriptor"]
    # not known before the first run: not a data key, but in the file if sent
    assert "xspress-window_counts" not in descriptor["data_keys"]
    with h5py.File(first) as f:
        assert ("window_counts" in f[GROUP]) is carried
    docs.clear()
    RE(fly_scan(xspress, FRAMES, 0.002))
    (descriptor,) = docs["descriptor"]
    assert ("xspress-window_counts" in descriptor["data_keys"]) is carried
    keys = {r["data_key"] for r in docs["stream_resource"]}
    assert ("xspress-window_counts" in keys) is carried
    docs.clear()
    RE(count([xspress], 1))  # inline: as the frame in hand says
    (event,) = docs["event"]
    assert ("xspress-window_counts" in event["data"]) is carried


def test_per_channel_calibration_reaches_rois_configuration_and_file(
    RE, sim, make_xspress, docs
) -> None:
    xspress = make_xspress(calibration=CALIBRATIONS, rois={"Fe": (6250, 6560)})
    cals = [Calibration(*c) for c in CALIBRATIONS]
    # each channel's ROI through its own calibration
    assert xspress.rois["Fe"] == tuple((c.bin_of(6250), c.bin_of(6560)) for c in cals)
    assert xspress.rois["Fe"][1] != xspress.rois["Fe"][0]
    RE(fly_scan(xspress, FRAMES, 0.002))
    (descriptor,) = docs["descriptor"]
    conf = descriptor["configuration"]["xspress"]["data"]
    assert list(conf["xspress-calibration_ev_per_bin"]) == [c[0] for c in CALIBRATIONS]
    assert list(conf["xspress-calibration_offset_ev"]) == [c[1] for c in CALIBRATIONS]
    with h5py.File(hdf5_path(docs)) as f:
        g = f[GROUP]
        np.testing.assert_array_equal(g["calibration"][:], [c.pymca() for c in cals])
        for c, cal in enumerate(cals):
            channel = f[CHANNEL_GROUP.format(c=c)]
            np.testing.assert_array_equal(channel["calibration"][:], cal.pymca())
            np.testing.assert_array_equal(channel["live_time"][:], g["live_time"][:, c])
            np.testing.assert_array_equal(channel["data"][5], g["data"][5, c])


def test_pymca_reads_each_channel_as_an_mca(RE, sim, make_xspress, docs) -> None:
    """PyMca's NeXus reader (PyMca5, with silx, as PyMca installs it) lists
    each channel as an MCA and gives its live time and calibration."""
    pytest.importorskip("PyMca5")
    pytest.importorskip("silx")  # PyMca lists MCAs through silx
    from PyMca5.PyMcaCore import NexusDataSource, NexusTools

    xspress = make_xspress(calibration=CALIBRATIONS)
    RE(fly_scan(xspress, FRAMES, 0.002))
    path = hdf5_path(docs)
    with h5py.File(path) as f:
        mcas = NexusTools.getMcaList(f, "/entry")
        live = f[GROUP]["live_time"][:]
        spectra = f[GROUP]["data"][:]
    assert mcas == [f"{CHANNEL_GROUP.format(c=c)}/data" for c in range(CHANNELS)]
    source = NexusDataSource.NexusDataSource(str(path))
    for c, (gain, offset) in enumerate(CALIBRATIONS):
        selection = {
            "sourcename": str(path),
            "entry": "/entry",
            "mcalist": [m[len("/entry") :] for m in mcas],
            "mca": [c],
            "mcaselectiontype": "index 7",  # frame 7
            "selectiontype": "1D",
        }
        mca = source.getDataObject("1.1", selection=selection)
        np.testing.assert_array_equal(mca.y[0], spectra[7, c])
        assert mca.info["McaLiveTime"] == live[7, c]
        a, b, q = mca.info["McaCalib"]
        assert (a, b, q) == pytest.approx(((offset + gain / 2) / 1e3, gain / 1e3, 0))
        np.testing.assert_array_equal(mca.x[0], np.arange(4096))


def test_summed_spectrum_in_the_file_and_in_events(RE, sim, make_xspress, docs) -> None:
    xspress = make_xspress(summed_spectrum=True)
    RE(count([xspress], 1))
    first = sim.control.series_index
    (event,) = docs["event"]
    summed = np.asarray(event["data"]["xspress-summed_spectrum"])
    frame = sim.control.expected_frame(first, 0)
    expected = derive(frame.metadata, frame.spectra, summed=True).summed_spectrum
    assert summed.dtype == np.float64
    np.testing.assert_array_equal(summed, expected)
    docs.clear()
    RE(fly_scan(xspress, FRAMES, 0.002))
    with h5py.File(hdf5_path(docs)) as f:
        stored = f[GROUP]["summed_spectrum"][:]
    for i in (0, FRAMES - 1):
        frame = sim.control.expected_frame(first + 1, i)
        total = derive(frame.metadata, frame.spectra, summed=True).summed_spectrum
        np.testing.assert_array_equal(stored[i], total)
