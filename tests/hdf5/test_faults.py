"""A row is marked only when it is whole: when the disk fills up, or a write of
the spectra or of the scalers fails, the run fails with the cause, the file
still opens with plain h5py, and every row whose ``frame_number`` is >= 0
holds its frame bit for bit (spectra, scalers, derived quantities); the rows
of the failed block keep ``frame_number == -1``.

The full disk is a real one (a small tmpfs mounted for the test, skipped where
mounting is not permitted); the other faults are injected at the spectra path
(``pwrite``, compressed chunks) and at the scaler path (an HDF5 write)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ophyd_xspress._schema import GROUP, QUANTITIES
from ophyd_xspress.hdf5 import Hdf5FrameWriter
from ophyd_xspress.hdf5._codec import ChunkWriter
from ophyd_xspress.protocol import Frame, derive, make_frame

CH, BINS = 4, 4096
WINDOWS = np.array([[[100, 199], [500, 1500]]] * CH)
STREAM = [q.dataset for q in QUANTITIES if q.source == "stream" and q.shape == ("C",)]
ROWS = 400
BLOCK = 16  # rows per block with block_bytes=1


@pytest.fixture(scope="module")
def noisy(frames: list[Frame]) -> list[Frame]:
    """64 frames whose spectra do not compress (random 32-bit counts), with
    the simulator's metadata: they fill a disk as fast compressed or not."""
    rng = np.random.default_rng(11)
    return [
        make_frame(i, rng.integers(0, 2**32, (CH, BINS), np.uint32), f.metadata)
        for i, f in enumerate(frames[:64])
    ]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs: room for about 90 frames of 4 x 4096 uint32."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:  # no mount command
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def write_until_failure(writer: Hdf5FrameWriter, frames: list[Frame]) -> BaseException:
    """Put ``ROWS`` frames a block at a time, letting each block reach the disk
    before the next; returns the error the run failed with."""
    try:
        for i in range(ROWS):
            writer.put(i, frames[i % len(frames)])
            if i % BLOCK == BLOCK - 1:
                deadline = time.monotonic() + 5
                while (
                    writer.durable.prefix() <= i
                    and writer.error is None
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.002)
    except OSError as exc:
        writer.close()  # reported already: close does not raise it again
        return exc
    writer.close()
    raise AssertionError("the run did not fail")


def check_every_row(path: Path, writer: Hdf5FrameWriter, frames: list[Frame]) -> int:
    """Every row marked (frame_number >= 0) holds its frame bit for bit; every
    durable row is marked. Returns how many rows are marked."""
    with h5py.File(path) as f:  # plain h5py: the file closed cleanly
        g = f[GROUP]
        numbers = g["frame_number"][:]
        marked = np.flatnonzero(numbers >= 0)
        for r in marked:
            frame = frames[r % len(frames)]
            assert numbers[r] == frame.frame, r
            np.testing.assert_array_equal(g["data"][r], frame.spectra, err_msg=str(r))
            for name in STREAM:
                np.testing.assert_array_equal(g[name][r], frame[name], err_msg=name)
            derived = derive(frame.metadata, frame.spectra, WINDOWS, warn=False)
            for name, value in derived.columns().items():
                np.testing.assert_array_equal(g[name][r], value, err_msg=name)
    durable = [r for r in range(ROWS) if r in writer.durable]
    assert set(durable) <= set(marked.tolist())
    return len(marked)


@pytest.mark.parametrize("way", ["pwrite", "hdf5", "bslz4"])
def test_a_full_disk_fails_the_run_and_marks_only_whole_rows(
    small_disk: Path, noisy: list[Frame], way: str
) -> None:
    options: dict[str, Any] = (
        {"compression": "bslz4"} if way == "bslz4" else {"direct_io": way == "pwrite"}
    )
    path = small_disk / "full.h5"
    writer = Hdf5FrameWriter(
        path,
        CH,
        BINS,
        WINDOWS,
        expected=ROWS,
        block_bytes=1,
        flush_period=0.01,
        **options,
    )
    writer.open()
    error = write_until_failure(writer, noisy)
    assert error.errno == errno.ENOSPC, error
    assert writer.durable.error is error
    marked = check_every_row(path, writer, noisy)
    # rows stored before the disk filled up are there, the rest are not
    assert 0 < marked < 6 * 2**20 // (CH * BINS * 4)
    assert len(writer.durable) == marked


def _fail_on_call(n: int, call: Any) -> Any:
    """``call`` that raises ENOSPC from its ``n``-th call on."""
    calls = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls >= n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return call(*args, **kwargs)

    return failing


@pytest.mark.parametrize("way", ["pwrite", "bslz4"])
def test_a_failed_spectra_write_leaves_its_rows_unmarked(
    tmp_path: Path, noisy: list[Frame], way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the spectra of the 4th block fail (their pwrite, or their compressed
    # chunks): the rows of that block are not marked, the blocks before are
    if way == "pwrite":
        monkeypatch.setattr(os, "pwrite", _fail_on_call(4, os.pwrite))
        options: dict[str, Any] = {"direct_io": True, "o_direct": False}
    else:
        monkeypatch.setattr(ChunkWriter, "write", _fail_on_call(4, ChunkWriter.write))
        options = {"compression": "bslz4"}
    path = tmp_path / "a.h5"
    writer = Hdf5FrameWriter(
        path, CH, BINS, WINDOWS, expected=ROWS, block_bytes=1, **options
    )
    writer.open()
    error = write_until_failure(writer, noisy)
    assert error.errno == errno.ENOSPC
    assert check_every_row(path, writer, noisy) == 3 * BLOCK
    with h5py.File(path) as f:
        assert (f[GROUP]["frame_number"][3 * BLOCK :] == -1).all()


def test_a_failed_scaler_write_leaves_its_rows_unmarked(
    tmp_path: Path, noisy: list[Frame], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the spectra of the 3rd block reach the disk, its all_good do not
    setitem = h5py.Dataset.__setitem__
    calls = 0

    def failing(self: h5py.Dataset, key: Any, value: Any) -> None:
        nonlocal calls
        if self.name == f"{GROUP}/all_good":
            calls += 1
            if calls >= 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing)
    path = tmp_path / "b.h5"
    writer = Hdf5FrameWriter(path, CH, BINS, WINDOWS, expected=ROWS, block_bytes=1)
    writer.open()
    error = write_until_failure(writer, noisy)
    assert error.errno == errno.ENOSPC
    assert check_every_row(path, writer, noisy) == 2 * BLOCK
    with h5py.File(path) as f:
        g = f[GROUP]
        assert (g["frame_number"][2 * BLOCK :] == -1).all()
        # the failed block's spectra are on disk, yet its rows are not marked
        np.testing.assert_array_equal(g["data"][2 * BLOCK], noisy[2 * BLOCK].spectra)
