"""What a written file must hold, row by row (shared by the writer's tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ophyd_xspress._schema import GROUP, QUANTITIES
from ophyd_xspress.protocol import Frame, derive

#: The per-channel columns the stream sends (raw scalers, its own dead-time
#: factor and output count rate field).
STREAM = [q.dataset for q in QUANTITIES if q.source == "stream" and q.shape == ("C",)]
#: The datasets with one row per frame.
PER_FRAME = {q.dataset for q in QUANTITIES}


def check_rows(path: Path, frames: dict[int, Frame], rows: int, windows: Any) -> None:
    """Row r holds frames[r] bit for bit (spectra, stream columns, window
    counts, derived quantities as :func:`derive` gives them for that frame
    alone, ROIs, the summed spectrum if written); other rows are zero in every
    per-frame dataset, frame number -1."""
    with h5py.File(path, "r") as f:
        g = f[GROUP]
        channels, bins = next(iter(frames.values())).spectra.shape
        assert g["data"].shape == (rows, channels, bins)
        fn = g["frame_number"][:]
        data = g["data"][:]
        summed = "summed_spectrum" in g
        for r in range(rows):
            frame = frames.get(r)
            if frame is None:
                assert fn[r] == -1, r
                for name, ds in g.items():
                    if name in PER_FRAME and name != "frame_number":
                        assert not ds[r].any(), (name, r)
                continue
            assert fn[r] == frame.frame
            np.testing.assert_array_equal(data[r], frame.spectra, err_msg=str(r))
            for name in STREAM:
                np.testing.assert_array_equal(g[name][r], frame.metadata[name])
            if frame.window_counts is not None:
                np.testing.assert_array_equal(
                    g["window_counts"][r], frame.window_counts
                )
            derived = derive(
                frame.metadata, frame.spectra, windows, warn=False, summed=summed
            )
            for name, value in derived.columns().items():
                np.testing.assert_array_equal(g[name][r], value, err_msg=name)
