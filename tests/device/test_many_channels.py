# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""36 channels (an Xspress4 in its Odin configuration) through every layer:
the simulator's Tango device, the stream, the fly-scan file, step-scan events,
ROIs per channel.

Each frame is 36 x 4096 spectra, 576 KiB: files keep chunks near 1 MiB
(one frame to a chunk would be 576 KiB, two 1.1 MiB); everything a frame
carries is compared bit for bit with what the simulator sent.
"""

from __future__ import annotations

import pickle
from typing import Any

import h5py
import numpy as np
import pytest
from bluesky.plans import count
from ophyd_async.core import TriggerInfo

from .test_fly_scans import GROUP, SCALERS, check_stream_documents, hdf5_path

CHANNELS = 36
BINS = 4096
FRAMES = 600
#: What the writer aims a chunk at, and its ceiling (docs: about 1 MiB).
CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 16 << 20


@pytest.fixture
def sim_options() -> dict[str, Any]:
    # a realistic spread of rates over the elements of a big detector
    rates = np.linspace(1.0e5, 3.0e5, CHANNELS)
    return {"channels": CHANNELS, "pace": False, "count_rate": rates}


def test_the_device_reports_36_channels(RE, sim, xspress, in_loop):
    assert sim.control.n_channels == CHANNELS
    assert in_loop(xspress.control.n_channels.get_value) == CHANNELS


def test_fly_36_channels_to_hdf5(RE, sim, make_xspress, docs, fly):
    # one ROI per channel window: each channel's own bins
    windows = [(100 + c, 200 + 2 * c) for c in range(CHANNELS)]
    xspress = make_xspress(channels=CHANNELS, bin_rois={"band": windows})
    first = sim.control.series_index + 1
    RE(fly(xspress, TriggerInfo(number_of_events=FRAMES, livetime=0.001)))
    docs.assert_valid()
    assert docs["stop"][0]["exit_status"] == "success"
    keys = docs["descriptor"][0]["data_keys"]
    assert keys["xspress"]["shape"] == [CHANNELS, BINS]
    check_stream_documents(docs, FRAMES, progressive=False)
    assert xspress.anomalies == {}

    with h5py.File(hdf5_path(docs), "r") as f:
        g = f[GROUP]
        data = g["data"]
        assert data.shape == (FRAMES, CHANNELS, BINS)
        chunk_bytes = int(np.prod(data.chunks)) * data.dtype.itemsize
        row_bytes = CHANNELS * BINS * data.dtype.itemsize
        # whole frames, as close to CHUNK_BYTES as whole frames get
        assert data.chunks[1:] == (CHANNELS, BINS)
        assert chunk_bytes <= max(CHUNK_BYTES, row_bytes) <= MAX_CHUNK_BYTES
        assert chunk_bytes + row_bytes > CHUNK_BYTES
        np.testing.assert_array_equal(g["frame_number"][:], np.arange(FRAMES))
        for start in range(0, FRAMES, 100):
            stop = start + 100
            expected = [
                sim.control.expected_frame(first, i) for i in range(start, stop)
            ]
            spectra = np.stack([e.spectra for e in expected])
            np.testing.assert_array_equal(data[start:stop], spectra)
            for name in SCALERS:
                np.testing.assert_array_equal(
                    g[name][start:stop], np.stack([e[name] for e in expected])
                )
            # the ROI of channel c sums that channel's own inclusive window
            roi = g["roi"][start:stop][:, :, 0]
            for c, (lo, hi) in enumerate(windows):
                np.testing.assert_array_equal(
                    roi[:, c], spectra[:, c, lo : hi + 1].sum(axis=-1)
                )


def test_step_scan_events_carry_36_channels(RE, sim, xspress, docs):
    """Inline events at 36 channels: the spectra in their own dtype, about
    channels x bins x 4 bytes (what a point costs the RunEngine and a
    catalog; docs/benchmarks.md has the time per point)."""
    RE(count([xspress], 3))
    events = docs["event"]
    assert len(events) == 3
    spectra = np.asarray(events[0]["data"]["xspress"])
    assert spectra.shape == (CHANNELS, BINS)
    assert spectra.dtype == np.uint32
    size = len(pickle.dumps(events[0]))
    assert CHANNELS * BINS * 4 < size < 1.2 * CHANNELS * BINS * 4
    dtc = np.asarray(events[0]["data"]["xspress-dtc"])
    assert dtc.shape == (CHANNELS,)
    # the faster channels lose more to dead time
    assert dtc[-1] > dtc[0] > 1.0
