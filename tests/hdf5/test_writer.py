"""The HDF5 writer, through its face: rows bit-exact whatever order frames
arrive in, holes stay empty, only flushed rows count as durable, errors surface,
memory is pooled.

The spectra of the rows allocated at open go to the file by ``pwrite`` (with
``O_DIRECT`` where the file system allows it), the others through HDF5: the
tests that write a known-length run run in all three ways (the ``io`` fixture)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from tests.hdf5.rows import check_rows

from ophyd_xspress.hdf5 import GROUP, PREFAULT_BLOCKS, Hdf5FrameWriter, _blocks, _thread
from ophyd_xspress.hdf5._chunk_io import ChunkFile
from ophyd_xspress.protocol import make_frame
from ophyd_xspress.sim import SimulatedXspress3
from ophyd_xspress.transport import FrameRefusedError

CH, BINS = 4, 4096
WINDOWS = np.array([[[100, 199], [500, 1500]]] * CH)


def open_writer(path: Path, io: str | None = None, **kw: Any) -> Hdf5FrameWriter:
    """``io``: the way the spectra must go (checked once the file is open); None:
    the writer's defaults, whatever the file system allows."""
    options: dict[str, Any] = {"window_counts": True}
    if io is not None:
        options.update(direct_io=io != "hdf5", o_direct=io == "o_direct")
    options.update(kw)
    writer = Hdf5FrameWriter(path, CH, BINS, WINDOWS, **options)
    writer.open()
    if io is not None and writer.expected:
        assert writer.spectra_io == io
    return writer


def test_in_order_rows_bit_exact_across_blocks(tmp_path: Path, frames, io) -> None:
    # 3 chunks of 16 rows a block: 150 frames span 4 blocks, the last partial
    path = tmp_path / "a.h5"
    writer = open_writer(path, io, expected=150, block_bytes=3 << 20)
    assert writer.chunk == 16
    assert writer.block_rows == 48
    for i, frame in enumerate(frames):
        writer.put(i, frame)
        if i % 40 == 39:
            writer.flush()
    writer.close()
    assert writer.frames_written == 150
    assert writer.durable.prefix() == 150
    if io == "hdf5":
        assert writer.stats.direct_chunks == 9  # rows 0-143 as whole chunks
        assert writer.stats.raw_rows == 0
    else:
        assert writer.stats.direct_chunks == 0
        assert writer.stats.raw_rows == 150
    check_rows(path, dict(enumerate(frames)), 150, WINDOWS)
    with h5py.File(path, "r") as f:  # an ordinary chunked dataset for readers
        data = f[GROUP]["data"]
        assert data.chunks == (16, CH, BINS)
        assert data.compression is None
        assert data.maxshape == (None, CH, BINS)


def test_unknown_length_grows_the_datasets(tmp_path: Path, frames) -> None:
    path = tmp_path / "b.h5"
    writer = open_writer(path)  # expected=None: datasets start empty
    for i, frame in enumerate(frames[:37]):
        writer.put(i, frame)
    writer.close()
    check_rows(path, dict(enumerate(frames[:37])), 37, WINDOWS)


def test_shuffled_missing_and_late_frames_land_in_their_rows(
    tmp_path: Path, frames, io
) -> None:
    rng = np.random.default_rng(3)
    rows = list(range(150))
    missing = {5, 16, 17, 60, 149}
    arrive = [r for r in rows if r not in missing]
    # locally shuffled (out of order within a window) plus a few very late
    for start in range(0, len(arrive), 10):
        window = arrive[start : start + 10]
        rng.shuffle(window)
        arrive[start : start + 10] = window
    late = [arrive.pop(3), arrive.pop(50)]
    arrive += late
    path = tmp_path / "c.h5"
    writer = open_writer(path, io, expected=150, block_bytes=2 << 20)
    for k, r in enumerate(arrive):
        writer.put(r, frames[r])
        if k % 7 == 6:
            writer.flush()
    writer.close()
    assert writer.stats.stragglers >= 2
    got = {r: frames[r] for r in arrive}
    assert len(writer.durable) == len(got)
    assert all(r in writer.durable for r in got)
    assert not any(r in writer.durable for r in missing)
    assert writer.durable.prefix() == 5
    check_rows(path, got, 150, WINDOWS)


def test_partial_block_is_stored_once_the_stream_goes_quiet(
    tmp_path: Path, frames, io
) -> None:
    path = tmp_path / "d.h5"
    flushed = threading.Event()
    writer = open_writer(path, io, expected=150, flush_period=0.05)
    writer.on_flushed = flushed.set
    for i in range(10):
        writer.put(i, frames[i])
    writer.flush()  # frames arrived since the last flush: keep filling
    assert writer.durable.prefix() == 0
    writer.flush()  # nothing new: quiet stream, hand the partial block over
    assert flushed.wait(5)
    deadline = time.monotonic() + 5
    while writer.durable.prefix() < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.durable.prefix() == 10
    # durable means readable by another process-like reader right now (SWMR)
    with h5py.File(path, "r", swmr=True) as f:
        np.testing.assert_array_equal(f[GROUP]["data"][9], frames[9].spectra)
        assert f[GROUP]["frame_number"][9] == 9
    for i in range(10, 20):  # the next block starts mid-chunk
        writer.put(i, frames[i])
    writer.close()
    check_rows(path, {i: frames[i] for i in range(20)}, 150, WINDOWS)


def test_small_pool_applies_back_pressure_without_loss(
    tmp_path: Path, frames, io
) -> None:
    path = tmp_path / "e.h5"
    writer = open_writer(path, io, expected=150, block_bytes=1, max_blocks=2)
    assert writer.block_rows == 16
    for i, frame in enumerate(frames):
        writer.put(i, frame)
    writer.close()
    assert writer.frames_written == 150
    check_rows(path, dict(enumerate(frames)), 150, WINDOWS)


def test_writer_error_surfaces_on_the_receiver_side(
    tmp_path: Path, frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.h5"
    writer = open_writer(path, expected=150)
    errors: list[BaseException] = []
    writer.on_flushed = lambda: errors.append(writer.error) if writer.error else None
    writer.put(20, frames[20])
    writer.flush()
    writer.flush()
    deadline = time.monotonic() + 5
    while 20 not in writer.durable and time.monotonic() < deadline:
        time.sleep(0.01)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("the writer thread's bug")

    # the late frame for row 3 is written on its own, on the writer thread,
    # which fails there
    monkeypatch.setattr(_thread, "derive", broken)
    writer.put(3, frames[3])  # row 3 < 20: a late frame, written on its own
    deadline = time.monotonic() + 5
    while writer.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(writer.error, KeyError)
    assert writer.durable.error is writer.error
    assert errors, "the listener was not told"
    with pytest.raises(KeyError):
        writer.put(21, frames[21])
    writer.close()  # already reported: close does not raise it again
    assert 3 not in writer.durable
    with h5py.File(path) as f:  # its row was never marked
        assert f[GROUP]["frame_number"][3] == -1


def test_a_frame_without_a_scaler_is_refused(tmp_path: Path, frames) -> None:
    writer = open_writer(tmp_path / "f2.h5", expected=10)
    bad = make_frame(3, frames[3].spectra, {"all_good": frames[3]["all_good"]})
    with pytest.raises(FrameRefusedError, match=r"^frame 3: its metadata lacks "):
        writer.put(3, bad)
    writer.put(4, frames[4])  # the writer itself is fine
    writer.close()
    assert writer.error is None
    assert writer.stats.refused == 1
    assert 4 in writer.durable
    assert 3 not in writer.durable


def test_wrong_shape_is_refused(tmp_path: Path, frames, make_frames) -> None:
    writer = open_writer(tmp_path / "g.h5")
    (other,) = make_frames(1, channels=2)
    with pytest.raises(FrameRefusedError, match=r"shape \(2, 4096\).*\(4, 4096\)"):
        writer.put(0, other)
    assert issubclass(FrameRefusedError, ValueError)  # callers catching ValueError
    writer.put(0, frames[0])  # the writer itself is fine
    writer.close()
    assert writer.error is None
    assert writer.frames_written == 1
    with pytest.raises(RuntimeError, match="after close"):
        writer.put(0, frames[0])


def test_rows_past_the_initial_length_go_through_hdf5(
    tmp_path: Path, frames, io
) -> None:
    # a prepare for 40 frames, then more rows (step-scan points appended to
    # one file): the 3 chunks allocated at open (rows 0-47) take pwrite, the
    # rest grows the datasets and goes through HDF5; no chunk is written both ways
    path = tmp_path / "h.h5"
    writer = open_writer(path, io, expected=40, block_bytes=1)
    for i in range(100):
        writer.put(i, frames[i])
    writer.close()
    raw = 0 if io == "hdf5" else 48
    assert writer.stats.raw_rows == raw
    assert writer.stats.direct_chunks == (100 - raw) // 16
    check_rows(path, dict(enumerate(frames[:100])), 100, WINDOWS)


def test_never_written_rows_and_chunks_read_as_zeros(
    tmp_path: Path, frames, io
) -> None:
    # rows 10-95 are in no block at all (chunks 1-4 never touched), 120-129 in
    # a block but missing: all read as zeros with frame number -1
    path = tmp_path / "i.h5"
    writer = open_writer(path, io, expected=150)
    got = {r: frames[r] for r in [*range(10), *range(100, 120), *range(130, 150)]}
    for r, frame in got.items():
        writer.put(r, frame)
    writer.close()
    check_rows(path, got, 150, WINDOWS)


def test_rows_not_page_aligned_go_through_the_page_cache(tmp_path: Path) -> None:
    # 1000 bins x 4 channels x 4 bytes: rows of 16,000 bytes, not a multiple
    # of 4096, so O_DIRECT cannot be used; pwrite through the page cache is
    sim = SimulatedXspress3(channels=CH, pace=False)
    rng = np.random.default_rng(7)
    spectra = rng.integers(0, 2**32, (20, CH, 1000), dtype=np.uint32)
    meta = sim.expected_frame(0, 0).metadata
    path = tmp_path / "j.h5"
    writer = Hdf5FrameWriter(path, CH, 1000, np.zeros((CH, 0, 2), int), expected=20)
    writer.open()
    assert writer.spectra_io == "pwrite"
    for i in range(20):
        writer.put(i, make_frame(i, spectra[i], meta))
    writer.close()
    assert writer.stats.raw_rows == 20
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[GROUP]["data"][:], spectra)
        np.testing.assert_array_equal(f[GROUP]["frame_number"][:], np.arange(20))


def test_blocks_are_reused_before_new_ones_are_made(tmp_path: Path, frames) -> None:
    # fresh memory costs more than the copy on a VM: a writer that keeps up
    # needs only the blocks touched at open
    path = tmp_path / "k.h5"
    writer = open_writer(path, expected=150, block_bytes=1, max_blocks=8)
    assert writer.stats.blocks_made == PREFAULT_BLOCKS < 8  # touched at open
    for i, frame in enumerate(frames):
        writer.put(i, frame)
        if i % 16 == 15:  # a block handed over: wait until it is on disk
            deadline = time.monotonic() + 5
            while writer.durable.prefix() < i + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
    writer.close()
    assert writer.stats.blocks_made == PREFAULT_BLOCKS
    assert writer.stats.pool_waits == 0
    check_rows(path, dict(enumerate(frames)), 150, WINDOWS)


def test_a_failed_spectra_write_surfaces_and_stops_the_run(
    tmp_path: Path, frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the spectra go to disk on their own thread: its error must reach the
    # receiver side like any other, and nothing it did not write counts
    def disk_full(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    path = tmp_path / "l.h5"
    writer = open_writer(path, "pwrite", expected=150, block_bytes=1)
    monkeypatch.setattr(os, "pwrite", disk_full)
    for i in range(16):
        writer.put(i, frames[i])  # a full block: handed to the writer thread
    deadline = time.monotonic() + 5
    while writer.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(writer.error, OSError)
    assert writer.error.errno == errno.ENOSPC
    assert writer.durable.error is writer.error
    with pytest.raises(OSError, match="No space left"):
        writer.put(16, frames[16])
    writer.close()  # already reported: close does not raise it again
    assert writer.frames_written == 0


def test_a_run_stopped_early_takes_only_the_space_it_wrote(
    tmp_path: Path, frames, io
) -> None:
    # the chunks of a known-length run are allocated at open: the file has its
    # full size at once, but as holes of a sparse file
    path = tmp_path / "m.h5"
    writer = open_writer(path, io, expected=4000)
    for i in range(10):
        writer.put(i, frames[i])
    writer.close()
    with h5py.File(path, "r") as f:
        g = f[GROUP]
        assert g["data"].shape == (4000, CH, BINS)
        for r in range(10):
            np.testing.assert_array_equal(g["data"][r], frames[r].spectra)
        assert not g["data"][10:64].any()
        assert not g["data"][-64:].any()
        np.testing.assert_array_equal(g["frame_number"][:10], np.arange(10))
        assert (g["frame_number"][10:] == -1).all()
    spectra = 4000 * CH * BINS * 4  # 262 MB
    st = os.stat(path)
    assert st.st_blocks * 512 < spectra / 20
    if io != "hdf5":
        assert st.st_size > spectra


def test_durable_rows_are_reported_once_per_flush(tmp_path: Path, frames) -> None:
    # a subscriber of ``durable`` hears of rows only once they are flushed, in
    # as few changes as there were flushes (ranges written together coalesce)
    writer = open_writer(tmp_path / "n.h5", expected=150, block_bytes=1)
    seen: list[int] = []
    writer.durable.subscribe(lambda: seen.append(writer.durable.prefix()))
    for i, frame in enumerate(frames):
        writer.put(i, frame)
    writer.close()
    assert seen == sorted(seen)
    assert seen[-1] == 150
    assert len(seen) <= writer.stats.file_flushes < writer.stats.blocks


def test_a_stuck_writer_fails_the_run_after_the_stuck_timeout(
    tmp_path: Path, frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the disk stops taking writes: the pool runs dry, the receiver waits for a
    # free block at most STUCK_TIMEOUT, then the writer fails with a timeout
    monkeypatch.setattr(_blocks, "STUCK_TIMEOUT", 0.2)
    stalled = threading.Event()
    release = threading.Event()
    write = ChunkFile.write

    def stalled_write(self: ChunkFile, row: int, rows: Any) -> None:
        stalled.set()
        release.wait(10)
        write(self, row, rows)

    monkeypatch.setattr(ChunkFile, "write", stalled_write)
    writer = open_writer(
        tmp_path / "o.h5", "pwrite", expected=150, block_bytes=1, max_blocks=2
    )

    def put_all() -> None:
        for i, frame in enumerate(frames):
            writer.put(i, frame)

    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="the HDF5 writer wrote nothing for"):
        put_all()
    assert stalled.is_set()
    assert time.monotonic() - t0 < 5
    assert writer.stats.pool_waits == 1
    assert isinstance(writer.durable.error, TimeoutError)
    release.set()
    writer.close()  # already reported
    assert writer.frames_written == 0
