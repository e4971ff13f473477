"""Compressed spectra: every compression reads back bit for bit through h5py
(with ``hdf5plugin``, as tiled reads it), whatever order frames arrive in and
whatever their number; the chunks are compressed off the receiver thread; the
chunk size is as asked."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from tests.hdf5.rows import check_rows

from ophyd_xspress._schema import GROUP
from ophyd_xspress.hdf5 import COMPRESSIONS, Hdf5FrameWriter, _codec
from ophyd_xspress.protocol import Frame

CH, BINS = 4, 4096
WINDOWS = np.array([[[100, 199], [500, 1500]]] * CH)
FILTERS = {"bslz4": "32008", "blosc": "32001", "gzip": "gzip"}


def write(path: Path, frames: dict[int, Frame], **options: Any) -> Hdf5FrameWriter:
    writer = Hdf5FrameWriter(path, CH, BINS, WINDOWS, **options)
    writer.open()
    for k, (row, frame) in enumerate(frames.items()):
        writer.put(row, frame)
        if k % 7 == 6:
            writer.flush()
    writer.close()
    return writer


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_compressed_rows_read_back_bit_exact(
    tmp_path: Path, frames: list[Frame], compression: str
) -> None:
    # a known-length run, with late frames, holes and a summed spectrum
    rng = np.random.default_rng(5)
    rows = [r for r in range(150) if r not in {3, 40, 41, 149}]
    for start in range(0, len(rows), 10):
        window = rows[start : start + 10]
        rng.shuffle(window)
        rows[start : start + 10] = window
    rows.append(rows.pop(5))  # very late: written on its own
    got = {r: frames[r] for r in rows}
    path = tmp_path / f"{compression}.h5"
    writer = write(
        path,
        got,
        expected=150,
        compression=compression,
        summed_spectrum=True,
        block_bytes=2 << 20,
    )
    assert writer.spectra_io == "hdf5"
    assert writer.stats.compressed_chunks > 0
    assert writer.stats.stragglers >= 1
    check_rows(path, got, 150, WINDOWS)
    with h5py.File(path) as f:
        g = f[GROUP]
        for name in ("data", "summed_spectrum"):
            assert FILTERS[compression] in g[name]._filters, name
        assert g["all_good"].compression is None  # the scalers stay plain
        raw = g["data"].id.get_storage_size()
    assert raw < 150 * CH * BINS * 4 / 3  # simulated spectra compress well


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_compressed_run_of_unknown_length_grows(
    tmp_path: Path, frames: list[Frame], compression: str
) -> None:
    path = tmp_path / "u.h5"
    got = dict(enumerate(frames[:53]))
    write(path, got, compression=compression, chunk_frames=10)
    check_rows(path, got, 53, WINDOWS)
    with h5py.File(path) as f:
        assert f[GROUP]["data"].chunks == (10, CH, BINS)


def test_chunks_are_compressed_off_the_receiver_thread(
    tmp_path: Path, frames: list[Frame], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[str] = set()
    encode = _codec._encode_bslz4

    def recording(chunk: Any) -> bytes:
        threads.add(threading.current_thread().name)
        return encode(chunk)

    monkeypatch.setattr(_codec, "_encode_bslz4", recording)
    write(tmp_path / "t.h5", dict(enumerate(frames)), compression="bslz4")
    assert threads
    assert all(name.startswith("xspress-h5zip") for name in threads), threads


def test_an_unknown_compression_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"compression must be None or one of "):
        Hdf5FrameWriter(tmp_path / "x.h5", CH, BINS, WINDOWS, compression="lzma")  # type: ignore[arg-type]
