"""Blocks of rows: raw metadata pickles read back as the frames' own columns,
the pool's bound and back-pressure, and which rows go into which block."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import pytest

from ophyd_xspress.hdf5 import _blocks, dataset_specs
from ophyd_xspress.hdf5._blocks import Batcher, Block, BlockPool, RowFiller, Straggler
from ophyd_xspress.hdf5._stats import WriterStats
from ophyd_xspress.protocol import (
    Frame,
    FrameMetadata,
    StreamDecoder,
    StreamEncoder,
    make_frame,
)
from ophyd_xspress.sim import SimulatedXspress3
from ophyd_xspress.transport import DurableRows

CH, BINS = 4, 4096
#: The stream's columns the file stores, as the writer builds them.
COLUMNS = {
    s.name: (s.shape, s.dtype)
    for s in dataset_specs(CH, BINS, 0, window_counts=True)
    if s.source == "stream" and s.name != "data"
}


def make_pool(
    rows: int = 8,
    max_blocks: int = 2,
    durable: DurableRows | None = None,
    stats: WriterStats | None = None,
) -> BlockPool:
    return BlockPool(
        name="test.h5",
        rows=rows,
        channels=CH,
        bins=BINS,
        spectra_dtype=np.dtype("<u4"),
        columns=COLUMNS,
        max_blocks=max_blocks,
        durable=DurableRows() if durable is None else durable,
        stats=WriterStats() if stats is None else stats,
    )


def decoded(frames: list[Frame], sim: SimulatedXspress3) -> list[Frame]:
    """``frames`` through the encoder and decoder of ``sim``'s stream."""
    encoder = StreamEncoder(framing="multipart")
    decoder = StreamDecoder()
    decoder.feed(encoder.encode(sim.header())[0])
    out: list[Frame] = []
    for frame in frames:
        for message in encoder.encode(frame):
            out += [p for p in decoder.feed(message) if isinstance(p, Frame)]
    return out


def with_metadata(frame: Frame, **changes: Any) -> Frame:
    metadata = {**dict(frame.metadata), **changes}
    return make_frame(frame.frame, frame.spectra, metadata, exptime=frame.exptime)


def assert_row(blk: Block, columns: dict[str, Any], i: int, frame: Frame) -> None:
    for name, column in columns.items():
        np.testing.assert_array_equal(column[i], frame.metadata[name], err_msg=name)
    np.testing.assert_array_equal(blk.spectra[i], frame.spectra)
    assert blk.frame_number[i] == frame.frame


def test_raw_rows_read_back_as_each_frames_metadata(frames) -> None:
    assert isinstance(frames[0].metadata, FrameMetadata)
    blk = make_pool(rows=16).alloc(16, pooled=True)
    blk.reset(0, 16)
    filler = RowFiller("test.h5", CH, COLUMNS)
    for i in range(10):
        filler.fill(blk, i, frames[i])
    assert blk.layout is frames[0].metadata.layout
    assert blk.via_raw[:10].all()
    assert blk.filled == 10
    columns = blk.metadata_columns(10)
    assert set(columns) == set(COLUMNS)
    for i in range(10):
        assert_row(blk, columns, i, frames[i])


def test_raw_and_mapping_rows_mix_in_one_block(frames) -> None:
    # a frame whose metadata is a plain dict (another decoder path) between
    # frames kept as raw pickles; an empty row stays zero
    blk = make_pool().alloc(8, pooled=True)
    blk.reset(0, 8)
    filler = RowFiller("test.h5", CH, COLUMNS)
    plain = with_metadata(frames[1])
    assert type(plain.metadata) is dict
    filler.fill(blk, 0, frames[0])
    filler.fill(blk, 1, plain)
    filler.fill(blk, 3, frames[3])
    assert blk.via_raw[:4].tolist() == [True, False, False, True]
    assert blk.present[:4].tolist() == [True, True, False, True]
    columns = blk.metadata_columns(4)
    for i, frame in ((0, frames[0]), (1, plain), (3, frames[3])):
        assert_row(blk, columns, i, frame)
    for column in columns.values():
        assert not column[2].any()


def test_a_layout_without_the_files_window_counts_shape_is_copied_by_column(
    frames, caplog: pytest.LogCaptureFixture
) -> None:
    # three hardware windows where the file has two: the scalers are kept,
    # window_counts is not written (one warning for the run)
    sim = SimulatedXspress3(channels=CH, pace=False)
    odd = decoded(
        [
            with_metadata(f, window_counts=np.vstack([f.window_counts] * 2)[:3])
            for f in frames[:3]
        ],
        sim,
    )
    assert isinstance(odd[0].metadata, FrameMetadata)
    blk = make_pool().alloc(8, pooled=True)
    blk.reset(0, 8)
    filler = RowFiller("test.h5", CH, COLUMNS)
    with caplog.at_level(logging.WARNING, logger="ophyd_xspress.hdf5"):
        for i, frame in enumerate(odd):
            filler.fill(blk, i, frame)
    assert blk.layout is None
    assert not blk.via_raw.any()
    columns = blk.metadata_columns(3)
    assert not columns["window_counts"].any()
    for i, frame in enumerate(odd):
        np.testing.assert_array_equal(columns["all_good"][i], frame["all_good"])
    warnings = [r for r in caplog.records if "window_counts of shape" in r.message]
    assert len(warnings) == 1
    assert "(3, 4) not written (expected (2, 4))" in warnings[0].message


def test_the_pool_reuses_blocks_and_never_exceeds_its_bound() -> None:
    stats = WriterStats()
    pool = make_pool(max_blocks=3, stats=stats)
    pool.prefault(2)
    assert stats.blocks_made == 2
    first = pool.take()
    second = pool.take()
    assert stats.blocks_made == 2  # the warm ones first
    third = pool.take()
    assert stats.blocks_made == 3
    pool.give_back(second)
    assert pool.take() is second
    assert len({id(first), id(second), id(third)}) == 3
    pool.give_back(pool.alloc(1, pooled=False))  # a straggler's block: dropped
    pool.give_back(first)
    assert pool.take() is first
    assert stats.pool_waits == 0


def test_a_full_pool_waits_for_the_writer_and_gives_up_on_its_error() -> None:
    durable = DurableRows()
    stats = WriterStats()
    pool = make_pool(max_blocks=2, durable=durable, stats=stats)
    held = [pool.take(), pool.take()]
    threading.Timer(0.1, pool.give_back, (held[0],)).start()
    assert pool.take() is held[0]  # back-pressure: waited for the writer
    assert stats.pool_waits == 1
    failure = OSError(28, "No space left on device")
    threading.Timer(0.1, durable.fail, (failure,)).start()
    with pytest.raises(OSError, match="No space left") as info:
        pool.take()
    assert info.value is failure


def test_a_full_pool_times_out_after_the_stuck_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_blocks, "STUCK_TIMEOUT", 0.1)
    durable = DurableRows()
    pool = make_pool(max_blocks=2, durable=durable)
    held = [pool.take(), pool.take()]
    assert len(held) == 2
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"test.h5: the HDF5 writer wrote nothing"):
        pool.take()
    assert time.monotonic() - t0 < 2
    assert isinstance(durable.error, TimeoutError)


class Recorder:
    """The batcher's hand-offs: (start, rows filled) of blocks, stragglers."""

    def __init__(self, pool: BlockPool) -> None:
        self.pool = pool
        self.items: list[tuple[str, int, int]] = []

    def __call__(self, item: Block | Straggler) -> None:
        if isinstance(item, Block):
            self.items.append(("block", item.start, item.filled))
            self.pool.give_back(item)
        else:
            self.items.append(("straggler", item.row, item.frame.frame))


def make_batcher(rows: int = 8, chunk_rows: int = 4) -> tuple[Batcher, Recorder]:
    pool = make_pool(rows=rows)
    recorder = Recorder(pool)
    batcher = Batcher(
        pool=pool,
        filler=RowFiller("test.h5", CH, COLUMNS),
        chunk_rows=chunk_rows,
        submit=recorder,
        stats=WriterStats(),
    )
    return batcher, recorder


def test_blocks_start_and_end_on_chunk_boundaries_late_frames_straggle(
    frames,
) -> None:
    batcher, handed = make_batcher(rows=8, chunk_rows=4)
    for row in range(8):  # a full block: handed over at once
        batcher.put(row, frames[row])
    assert handed.items == [("block", 0, 8)]
    batcher.put(10, frames[10])  # rows 8-15 (8 and 9 may still come)
    batcher.put(9, frames[9])
    batcher.put(3, frames[3])  # row 3 was handed over: written on its own
    batcher.put(21, frames[21])  # past the block: hand it over, start at 20
    batcher.put(18, frames[18])  # before the current block: a straggler too
    batcher.handoff()
    assert handed.items == [
        ("block", 0, 8),
        ("straggler", 3, 3),
        ("block", 8, 3),  # rows 8-10 filled (8 missing)
        ("straggler", 18, 18),
        ("block", 20, 2),
    ]
    assert batcher.stats.stragglers == 2


def test_a_partial_block_waits_for_the_flush_period_or_a_quiet_stream(
    frames,
) -> None:
    batcher, handed = make_batcher()
    batcher.put(0, frames[0])
    batcher.flush(flush_period=60)  # frames since the last flush: keep filling
    assert handed.items == []
    batcher.flush(flush_period=60)  # nothing since: the stream is quiet
    assert handed.items == [("block", 0, 1)]
    batcher.put(1, frames[1])  # mid-chunk: the next block starts at row 1
    batcher.flush(flush_period=0)  # the block is flush_period old
    assert handed.items == [("block", 0, 1), ("block", 1, 1)]
    batcher.flush(flush_period=0)  # nothing to hand over
    assert len(handed.items) == 2
