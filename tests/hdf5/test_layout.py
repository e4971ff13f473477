"""The file's layout: every schema quantity is a dataset with its dtype, units
and per-frame shape; chunks of whole frames (the spectra's as asked); NeXus
classes and notes; the fields and per-channel groups PyMca reads; the
spectra's chunks allocated at once, page-aligned, for an uncompressed run of
known length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ophyd_xspress._schema import (
    CHANNEL_FIELDS,
    CHANNEL_GROUP,
    FILE_FIELDS,
    GROUP,
    QUANTITIES,
    frame_shape,
)
from ophyd_xspress.hdf5 import DatasetSpec, dataset_specs
from ophyd_xspress.hdf5._codec import codec_for
from ophyd_xspress.hdf5._layout import CHUNK_BYTES, create_file
from ophyd_xspress.protocol import Calibration

CH, BINS, ROIS = 4, 4096, 3
WINDOWS = np.array([[[1, 2], [10, 20], [100, 4095]]] * CH)


def create(path: Path, rows: int, *, aligned: bool = True, **kw: Any) -> None:
    codec = kw.pop("codec", None)
    calibration = kw.pop("calibration", None)
    specs = dataset_specs(CH, BINS, kw.pop("rois", ROIS), **kw)
    f, datasets = create_file(
        path,
        specs,
        rows=rows,
        windows=WINDOWS,
        aligned=aligned,
        codec=codec,
        calibration=calibration,
    )
    assert list(datasets) == [s.name for s in specs]
    latest = h5py.File(path.with_suffix(".latest"), "w", libver="latest")
    assert f.libver == latest.libver  # needed by SWMR (the writer turns it on)
    latest.close()
    f.close()


def allocated_chunks(ds: h5py.Dataset) -> list[int]:
    """File offsets of the dataset's allocated chunks."""
    offsets: list[int] = []
    ds.id.chunk_iter(lambda info: offsets.append(int(info.byte_offset)))
    return offsets


def test_every_schema_quantity_is_a_dataset_with_its_dtype_units_and_shape(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.h5"
    create(path, 40, window_counts=True, summed=True)
    with h5py.File(path, "r") as f:
        assert f["/entry"].attrs["NX_class"] == "NXentry"
        assert f["/entry/instrument"].attrs["NX_class"] == "NXinstrument"
        group = f[GROUP]
        assert group.attrs["NX_class"] == "NXdetector"
        statics = {field.path.rsplit("/", 1)[1] for field in FILE_FIELDS}
        assert set(group) == {q.dataset for q in QUANTITIES} | statics
        for q in QUANTITIES:
            ds = group[q.dataset]
            shape = frame_shape(q, channels=CH, bins=BINS, rois=ROIS)
            assert ds.dtype == np.dtype(q.dtype), q.dataset
            assert ds.attrs.get("units", "") == q.units, q.dataset
            assert ds.shape == (40, *shape), q.dataset
            assert ds.maxshape == (None, *shape), q.dataset
            assert ds.chunks[1:] == shape, q.dataset
            assert ds.compression is None
            if q.dataset in ("data", "summed_spectrum"):
                # the spectra: chunks of the same frames, about 1 MiB of data
                assert ds.chunks[0] == 16, q.dataset
            else:  # chunks of whole frames, about 1 MiB (at most 4096 rows)
                row_bytes = ds.dtype.itemsize * int(np.prod(shape))
                assert ds.chunks[0] == min(4096, CHUNK_BYTES // row_bytes), q.dataset
        assert group["data"].chunks == (16, CH, BINS)
        assert (group["frame_number"][:] == -1).all()
        assert not group["all_good"][:].any()
        np.testing.assert_array_equal(group["roi"].attrs["windows"], WINDOWS)
        stream_ocr = group["output_count_rate"]
        assert "units bug" in stream_ocr.attrs["note"]
        assert "6.4e+15" in stream_ocr.attrs["note"]
        assert stream_ocr.attrs["units"] == "1.5625e-16 counts/s"
        assert group["ocr"].attrs["units"] == "counts/s"
        assert "dead_time_correction" in group["dtc"].attrs["note"]


def test_optional_datasets_only_when_the_run_has_them(tmp_path: Path) -> None:
    path = tmp_path / "b.h5"
    create(path, 0, rois=0, window_counts=False)
    with h5py.File(path, "r") as f:
        names = set(f[GROUP])
    optional = {q.dataset for q in QUANTITIES if q.optional}
    assert optional == {"window_counts", "roi", "roi_corrected", "summed_spectrum"}
    statics = {field.path.rsplit("/", 1)[1] for field in FILE_FIELDS}
    assert names == ({q.dataset for q in QUANTITIES} - optional) | statics


def test_dataset_specs_follow_the_schema() -> None:
    specs = dataset_specs(2, 1000, 1, spectra_dtype="<u2", window_counts=True)
    assert [s.name for s in specs] == [
        q.dataset for q in QUANTITIES if q.dataset != "summed_spectrum"
    ]
    data = specs[0]
    rows = CHUNK_BYTES // 4000
    assert data == DatasetSpec("data", (2, 1000), "<u2", "counts", "stream", rows)
    assert data.path == f"{GROUP}/data"
    assert data.row_bytes == 4000
    assert data.chunk_rows() == rows
    assert {s.name: s.source for s in specs}["dtc"] == "derived"
    assert {s.name: s.shape for s in specs}["window_counts"] == (2, 2)
    assert {s.name: s.shape for s in specs}["roi_corrected"] == (2, 1)


def test_chunk_frames_and_compression_apply_to_the_spectra(tmp_path: Path) -> None:
    specs = dataset_specs(
        CH, BINS, 0, summed=True, chunk_frames=50, compression="bslz4"
    )
    by_name = {s.name: s for s in specs}
    for name in ("data", "summed_spectrum"):
        assert by_name[name].chunk_rows() == 50
        assert by_name[name].compression == "bslz4"
    assert by_name["all_good"].compression is None
    path = tmp_path / "z.h5"
    f, _ = create_file(
        path, specs, rows=120, windows=WINDOWS, aligned=True, codec=codec_for("bslz4")
    )
    f.close()
    with h5py.File(path, "r") as f:
        data = f[GROUP]["data"]
        assert data.chunks == (50, CH, BINS)
        assert "32008" in data._filters  # bitshuffle
        assert not allocated_chunks(data)  # compressed: never allocated early


@pytest.mark.parametrize(
    ("chunk_frames", "error"),
    [(0, ValueError), (257, ValueError), (2.5, TypeError), (True, TypeError)],
)
def test_chunk_frames_out_of_range_is_refused(chunk_frames: Any, error: type) -> None:
    # 4 x 4096 uint32 frames: at most 16 MiB, 256 frames, a chunk
    with pytest.raises(error, match="chunk_frames must be"):
        dataset_specs(CH, BINS, 0, chunk_frames=chunk_frames)


@pytest.mark.parametrize(
    ("rows", "aligned", "chunks"),
    [(40, True, 3), (0, True, 0), (40, False, 0)],
    ids=["known-length", "unknown-length", "through-hdf5"],
)
def test_spectra_chunks_allocated_at_open_only_for_pwrite(
    tmp_path: Path, rows: int, aligned: bool, chunks: int
) -> None:
    # pwrite needs every chunk of a known-length run to exist, page-aligned for
    # O_DIRECT; a run of unknown length, or one written through HDF5, allocates
    # as it goes
    path = tmp_path / "c.h5"
    create(path, rows, aligned=aligned)
    with h5py.File(path, "r") as f:
        offsets = allocated_chunks(f[GROUP]["data"])
        assert not allocated_chunks(f[GROUP]["all_good"])
    assert len(offsets) == chunks
    assert all(offset % 4096 == 0 for offset in offsets)


def test_each_channel_is_an_mca_group_pymca_reads(tmp_path: Path) -> None:
    # one NXdetector group per channel: views of data, live_time and
    # elapsed_time (no copy, they grow with the file), the bin index and
    # the channel's own calibration in keV
    cals = [Calibration(10.0, 0.0), Calibration(9.9, 15.0)] * 2
    path = tmp_path / "d.h5"
    create(path, 5, calibration=np.array([c.pymca() for c in cals]))
    spectra = np.arange(7 * CH * BINS, dtype=np.uint32).reshape(7, CH, BINS)
    with h5py.File(path, "r+") as f:
        g = f[GROUP]
        for name in ("data", "live_time", "elapsed_time"):
            g[name].resize(7, axis=0)
        g["data"][:] = spectra
        g["live_time"][:] = np.arange(7 * CH).reshape(7, CH) / 10
    with h5py.File(path, "r") as f:
        g = f[GROUP]
        np.testing.assert_array_equal(g["channels"][:], np.arange(BINS))
        assert g["calibration"].attrs["units"] == "keV"
        np.testing.assert_allclose(g["calibration"][1], [0.01995, 0.0099, 0.0])
        assert "interpretation" not in g["data"].attrs  # the channels are the MCAs
        for c in range(CH):
            ch = f[CHANNEL_GROUP.format(c=c)]
            assert ch.attrs["NX_class"] == "NXdetector"
            assert set(ch) == {f.path.rsplit("/", 1)[1] for f in CHANNEL_FIELDS}
            assert ch["data"].is_virtual
            assert ch["data"].attrs["interpretation"] == "spectrum"
            np.testing.assert_array_equal(ch["data"][:], spectra[:, c, :])
            np.testing.assert_array_equal(ch["live_time"][:], g["live_time"][:, c])
            assert ch["live_time"].attrs["units"] == "s"
            assert ch["channels"] == g["channels"]  # a hard link
            np.testing.assert_array_equal(ch["calibration"][:], cals[c].pymca())
            assert ch["calibration"].attrs["units"] == "keV"
