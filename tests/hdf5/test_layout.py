"""The file's layout: every schema quantity is a dataset with its dtype, units
and per-frame shape; chunks of whole frames; NeXus classes and notes; the
spectra's chunks allocated at once, page-aligned, for a run of known length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ophyd_xspress._schema import GROUP, QUANTITIES, frame_shape
from ophyd_xspress.hdf5 import DatasetSpec, dataset_specs
from ophyd_xspress.hdf5._layout import CHUNK_BYTES, create_file

CH, BINS, ROIS = 4, 4096, 3
WINDOWS = np.array([[[1, 2], [10, 20], [100, 4095]]] * CH)


def create(path: Path, rows: int, *, aligned: bool = True, **kw: Any) -> None:
    specs = dataset_specs(CH, BINS, kw.pop("rois", ROIS), **kw)
    f, datasets = create_file(path, specs, rows=rows, windows=WINDOWS, aligned=aligned)
    assert list(datasets) == [s.name for s in specs]
    assert f.swmr_mode  # readers follow the file while it is written
    latest = h5py.File(path.with_suffix(".latest"), "w", libver="latest")
    assert f.libver == latest.libver  # needed by SWMR
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
    create(path, 40, window_counts=True)
    with h5py.File(path, "r") as f:
        assert f["/entry"].attrs["NX_class"] == "NXentry"
        group = f[GROUP]
        assert group.attrs["NX_class"] == "NXdetector"
        assert set(group) == {q.dataset for q in QUANTITIES}
        for q in QUANTITIES:
            ds = group[q.dataset]
            shape = frame_shape(q, channels=CH, bins=BINS, rois=ROIS)
            assert ds.dtype == np.dtype(q.dtype), q.dataset
            assert ds.attrs.get("units", "") == q.units, q.dataset
            assert ds.shape == (40, *shape), q.dataset
            assert ds.maxshape == (None, *shape), q.dataset
            # chunks of whole frames, about 1 MiB (at most 4096 rows)
            assert ds.chunks[1:] == shape, q.dataset
            row_bytes = ds.dtype.itemsize * int(np.prod(shape))
            assert ds.chunks[0] == min(4096, CHUNK_BYTES // row_bytes), q.dataset
            assert ds.compression is None
        assert group["data"].chunks == (16, CH, BINS)
        assert (group["frame_number"][:] == -1).all()
        assert not group["all_good"][:].any()
        np.testing.assert_array_equal(group["roi"].attrs["windows"], WINDOWS)
        assert "units bug" in group["output_count_rate"].attrs["note"]
        assert "dead_time_correction" in group["dtc"].attrs["note"]


def test_optional_datasets_only_when_the_run_has_them(tmp_path: Path) -> None:
    path = tmp_path / "b.h5"
    create(path, 0, rois=0, window_counts=False)
    with h5py.File(path, "r") as f:
        names = set(f[GROUP])
    optional = {q.dataset for q in QUANTITIES if q.optional}
    assert optional == {"window_counts", "roi", "roi_corrected"}
    assert names == {q.dataset for q in QUANTITIES} - optional


def test_dataset_specs_follow_the_schema() -> None:
    specs = dataset_specs(2, 1000, 1, spectra_dtype="<u2", window_counts=True)
    assert [s.name for s in specs] == [q.dataset for q in QUANTITIES]
    data = specs[0]
    assert data == DatasetSpec("data", (2, 1000), "<u2", "counts", "stream")
    assert data.path == f"{GROUP}/data"
    assert data.row_bytes == 4000
    assert data.chunk_rows() == CHUNK_BYTES // 4000
    assert {s.name: s.source for s in specs}["dtc"] == "derived"
    assert {s.name: s.shape for s in specs}["window_counts"] == (2, 2)
    assert {s.name: s.shape for s in specs}["roi_corrected"] == (2, 1)


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
