"""Spectra written straight into early-allocated chunks: what HDF5 reads back,
one ``pwrite`` per run of adjacent chunks, refusals that name the sizes, and
the page cache when ``O_DIRECT`` is refused."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ophyd_xspress.hdf5 import dataset_specs
from ophyd_xspress.hdf5._chunk_io import ChunkFile, aligned_empty
from ophyd_xspress.hdf5._layout import create_file

CH, BINS, ROWS = 4, 4096, 40  # 3 chunks of 16 rows


def spectra_file(path: Path, *, aligned: bool = True) -> tuple[h5py.File, Any]:
    specs = dataset_specs(CH, BINS, 0)
    f, datasets = create_file(
        path, specs, rows=ROWS, windows=np.zeros((CH, 0, 2), int), aligned=aligned
    )
    return f, datasets["data"]


def random_rows(n: int, seed: int = 1) -> Any:
    rows = aligned_empty((n, CH, BINS), np.uint32)
    rows[:] = np.random.default_rng(seed).integers(0, 2**32, rows.shape, np.uint32)
    return rows


@pytest.mark.parametrize("o_direct", [True, False], ids=["o_direct", "pwrite"])
def test_rows_written_read_back_through_hdf5(tmp_path: Path, o_direct: bool) -> None:
    path = tmp_path / "a.h5"
    f, data = spectra_file(path)
    chunks = ChunkFile.open(path, data, o_direct=o_direct)
    assert chunks is not None
    assert chunks.rows == 48  # whole chunks
    if o_direct and not chunks.o_direct:
        chunks.close()
        f.close()
        pytest.skip(f"no O_DIRECT on the file system of {tmp_path}")
    assert chunks.o_direct == o_direct
    rows = random_rows(30)
    chunks.write(5, rows)  # rows 5-34: across chunks 0, 1 and 2
    assert chunks.writes == 1  # the chunks follow each other in the file
    assert chunks.bytes_written == rows.nbytes
    chunks.close()
    f.close()
    with h5py.File(path, "r") as f:
        got = f["/entry/instrument/xspress3/data"][:]
    np.testing.assert_array_equal(got[5:35], rows)
    assert not got[:5].any()
    assert not got[35:].any()


def test_refusals_name_the_rows_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "b.h5"
    f, data = spectra_file(path)
    chunks = ChunkFile.open(path, data, o_direct=False)
    assert chunks is not None
    with pytest.raises(ValueError, match=r"rows 40\.\.49 outside the 48 rows"):
        chunks.write(40, random_rows(10))
    with pytest.raises(ValueError, match="rows of 32768 bytes, expected 65536"):
        chunks.write(0, random_rows(2)[:, :2])
    chunks.close()
    with pytest.raises(RuntimeError, match="spectra written after close"):
        chunks.write(0, random_rows(1))
    f.close()


def test_chunks_not_allocated_are_left_to_hdf5(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.h5"
    f, data = spectra_file(path, aligned=False)  # chunks allocated as written
    with caplog.at_level(logging.WARNING, logger="ophyd_xspress.hdf5"):
        assert ChunkFile.open(path, data) is None
    assert "some chunks not allocated" in caplog.text
    f.close()


def test_o_direct_refused_mid_run_falls_back_to_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.h5"
    f, data = spectra_file(path)
    chunks = ChunkFile.open(path, data, o_direct=True)
    assert chunks is not None
    if not chunks.o_direct:
        chunks.close()
        f.close()
        pytest.skip(f"no O_DIRECT on the file system of {tmp_path}")
    pwrite = os.pwrite
    refused: list[int] = []

    def refuse_first(fd: int, view: Any, offset: int) -> int:
        if not refused:  # the first write is the O_DIRECT one
            refused.append(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return pwrite(fd, view, offset)

    monkeypatch.setattr(os, "pwrite", refuse_first)
    rows = random_rows(16)
    chunks.write(0, rows)
    assert refused
    assert not chunks.o_direct
    chunks.close()
    f.close()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["/entry/instrument/xspress3/data"][:16], rows)
