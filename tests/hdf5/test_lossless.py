"""Lossless dtypes: the file is opened for what the device sends (uint32
spectra, the schema's scaler dtypes); a frame whose values would change on the
way in is refused with the facts and counted, never cast; a frame of another
dtype whose values all fit is stored exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ophyd_xspress._schema import GROUP
from ophyd_xspress.hdf5 import Hdf5FrameWriter
from ophyd_xspress.hdf5._lossless import exact_cast, lossless
from ophyd_xspress.protocol import Frame, make_frame
from ophyd_xspress.transport import FrameRefusedError

CH, BINS = 4, 4096
NO_ROIS = np.zeros((CH, 0, 2), int)


def spectra_of(frame: Frame, dtype: Any, **set_bins: Any) -> Any:
    """``frame``'s spectra as ``dtype``, with some bins set."""
    spectra = frame.spectra.astype(dtype)
    for (c, b), value in set_bins.get("bins", {}).items():
        spectra[c, b] = value
    return spectra


@pytest.mark.parametrize(
    ("dtype", "value", "facts"),
    [
        (np.uint64, 2**32 + 7, r"of dtype uint64 with values 0\.\.4294967303"),
        (np.int64, -5, r"of dtype int64 with values -5\.\.\d+"),
        (np.float64, 2.7, r"of dtype float64 with values 0\.0\.\..*not whole"),
        (np.float64, np.nan, r"of dtype float64 .*1 NaN or infinite"),
    ],
    ids=["uint64-too-big", "negative", "fraction", "nan"],
)
def test_spectra_that_would_change_are_refused_and_counted(
    tmp_path: Path, frames: list[Frame], dtype: Any, value: Any, facts: str
) -> None:
    writer = Hdf5FrameWriter(tmp_path / "a.h5", CH, BINS, NO_ROIS, expected=10)
    writer.open()
    bad = make_frame(
        7, spectra_of(frames[7], dtype, bins={(1, 3): value}), frames[7].metadata
    )
    with pytest.raises(FrameRefusedError) as info:
        writer.put(7, bad)
    message = str(info.value)
    assert message.startswith("frame 7: spectra ")
    assert "cannot be stored losslessly in the uint32 file" in message
    import re

    assert re.search(facts, message), message
    writer.put(8, frames[8])  # the writer itself is fine
    writer.close()
    assert writer.stats.refused == 1
    assert writer.error is None
    with h5py.File(tmp_path / "a.h5") as f:
        assert f[GROUP]["frame_number"][7] == -1  # the row stays empty
        assert not f[GROUP]["data"][7].any()
        assert f[GROUP]["frame_number"][8] == 8


@pytest.mark.parametrize(
    "dtype", [np.uint16, np.uint64, np.int64, np.float64], ids=lambda d: d.__name__
)
def test_spectra_of_another_dtype_that_fit_are_stored_exactly(
    tmp_path: Path, frames: list[Frame], dtype: Any
) -> None:
    writer = Hdf5FrameWriter(tmp_path / "b.h5", CH, BINS, NO_ROIS, expected=2)
    writer.open()
    spectra = np.minimum(frames[0].spectra, 60000).astype(dtype)
    writer.put(0, make_frame(0, spectra, frames[0].metadata))
    writer.close()
    assert writer.stats.refused == 0
    with h5py.File(tmp_path / "b.h5") as f:
        data = f[GROUP]["data"]
        assert data.dtype == np.uint32
        np.testing.assert_array_equal(data[0], spectra)


def test_scalers_that_would_change_are_refused(
    tmp_path: Path, frames: list[Frame]
) -> None:
    writer = Hdf5FrameWriter(tmp_path / "c.h5", CH, BINS, NO_ROIS, expected=4)
    writer.open()
    metadata = {k: np.array(v) for k, v in frames[1].metadata.items()}
    metadata["all_good"] = metadata["all_good"].astype(np.int64) - 2**33
    with pytest.raises(
        FrameRefusedError,
        match=r"^frame 1: scaler all_good of dtype int64 with values -\d+\.\.-\d+ "
        r"cannot be stored losslessly as uint32 \(file ",
    ):
        writer.put(1, make_frame(1, frames[1].spectra, metadata))
    # an event width sent as int64 (as MAX IV's streamer builds it from a list)
    # fits the int32 dataset: stored as sent
    metadata = {k: np.array(v) for k, v in frames[2].metadata.items()}
    metadata["event_width"] = metadata["event_width"].astype(np.int64)
    writer.put(2, make_frame(2, frames[2].spectra, metadata))
    writer.close()
    assert writer.stats.refused == 1
    with h5py.File(tmp_path / "c.h5") as f:
        np.testing.assert_array_equal(
            f[GROUP]["event_width"][2], frames[2]["event_width"]
        )
        assert f[GROUP]["frame_number"][1] == -1


def test_exact_casts_are_stricter_than_numpys_safe_casts() -> None:
    assert exact_cast(np.dtype("<u2"), np.dtype("<u4"))
    assert exact_cast(np.dtype("<i4"), np.dtype("<f8"))
    # numpy calls int64 -> float64 safe; 2**60 + 1 is not a float64
    assert np.can_cast(np.int64, np.float64, "safe")
    assert not exact_cast(np.dtype("<i8"), np.dtype("<f8"))
    assert not lossless(np.array([2**60 + 1]), np.dtype("<f8"))
    assert lossless(np.array([2**40]), np.dtype("<f8"))
    assert not lossless(np.array(["a"]), np.dtype("<u4"))
