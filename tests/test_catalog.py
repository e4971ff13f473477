"""Runs land in the local tiled catalog and read back bit-exact after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ophyd_async.core import init_devices

from ophyd_xspress import XspressDetector, XspressSimulator
from ophyd_xspress.catalog import LocalCatalog
from ophyd_xspress.demo import fly_scan
from ophyd_xspress.protocol import correct, dead_time_from_scalers, roi_sums

FLY_FRAMES = 40


def _uid(result: Any) -> str:
    return str(getattr(result, "run_start_uids", result)[0])


def test_count_and_fly_scan_read_back_bit_exact_after_restart(
    RE: Any,  # noqa: N803
    tmp_path: Path,
) -> None:
    catalog = LocalCatalog(tmp_path)
    try:
        RE.subscribe(catalog.writer)
        with XspressSimulator(channels=4, pace=False) as sim:
            sim.control.exposure_time = 0.01
            with init_devices():
                xspress = XspressDetector(
                    tango=sim.tango_trl,
                    stream=sim.stream_endpoint,
                    rois={"Fe": (6250, 6560)},
                    path=catalog.data_dir,
                )
            count_uid = _uid(RE(_count(xspress, 3)))
            fly_uid = _uid(RE(fly_scan(xspress, FLY_FRAMES, 0.001)))
            # what the simulator sent: series 0..2 are the three count points,
            # series 3 the fly scan
            sent_count = [sim.control.expected_frame(i, 0) for i in range(3)]
            sent_fly = [sim.control.expected_frame(3, i) for i in range(FLY_FRAMES)]
            windows = np.broadcast_to(
                np.array([xspress.rois["Fe"][0]]), (4, 1, 2)
            ).copy()
    finally:
        catalog.close()

    # a new server on the same directory
    with LocalCatalog(tmp_path) as again:
        step = again[count_uid]["primary"]
        spectra = np.asarray(step["xspress"].read())
        assert spectra.shape == (3, 4, 4096)
        assert spectra.dtype == np.uint32
        for i, frame in enumerate(sent_count):
            assert np.array_equal(spectra[i], frame.spectra)
        dtc = np.asarray(step["xspress-dtc"].read())
        expected_dtc = np.stack([f["dead_time_correction"] for f in sent_count])
        assert np.array_equal(dtc, expected_dtc)
        corrected = np.asarray(step["xspress-roi_corrected"].read())
        for i, frame in enumerate(sent_count):
            dt = dead_time_from_scalers(frame.metadata)
            want = correct(roi_sums(frame.spectra, windows), dt.dtc)
            np.testing.assert_allclose(corrected[i], want, rtol=1e-12)

        fly = again[fly_uid]["primary"]
        spectra = np.asarray(fly["xspress"].read())
        assert spectra.shape == (FLY_FRAMES, 4, 4096)
        for i, frame in enumerate(sent_fly):
            assert np.array_equal(spectra[i], frame.spectra), f"fly frame {i}"
        all_good = np.asarray(fly["xspress-all_good"].read())
        assert np.array_equal(all_good, np.stack([f["all_good"] for f in sent_fly]))
        dead = np.asarray(fly["xspress-dead_time"].read())
        for i, frame in enumerate(sent_fly):
            dt = dead_time_from_scalers(frame.metadata)
            np.testing.assert_allclose(dead[i], dt.dead_percent, rtol=1e-12)
        frame_numbers = np.asarray(fly["xspress-frame_number"].read())
        assert np.array_equal(frame_numbers, np.arange(FLY_FRAMES))


def _count(detector: Any, n: int) -> Any:
    from bluesky.plans import count

    return count([detector], n)
