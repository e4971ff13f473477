"""The writer thread: blocks of rows into the datasets, then flushed and durable.

It takes work from a queue (a :class:`~._blocks.Block`, a
:class:`~._blocks.Straggler`, or ``None`` to stop) and for each block:

* the spectra of rows allocated when the file was opened go to the disk with
  ``pwrite`` (:class:`~._chunk_io.ChunkFile`) on a second thread,
  ``xspress-h5disk``, while this one writes the rest; rows beyond those (a
  dataset grown past its initial length, every row of a compressed file) go
  through HDF5 as whole chunks (:class:`~._codec.ChunkWriter`, compressed by
  a small pool when the file is). The boundary is a chunk boundary: no chunk
  is written both ways. The block goes back to the pool only once its spectra
  are on disk;
* the stream's metadata columns and the physics derived from them for the
  whole block (:func:`ophyd_xspress.protocol.derive`): one write per dataset.

A row is marked only when it is whole. Every ``flush_period`` (and when the
thread stops) the file is flushed, which puts the blocks written since on
disk; only then are their frame numbers written, and the file flushed again;
only then do the rows count in
:class:`~ophyd_xspress.transport._sink.DurableRows`. A row whose spectra or
scalers failed to reach the disk (disk full) keeps ``frame_number == -1``, in
the file and after a crash; a reader (tiled) never sees a row promised but not
on disk. A write or flush error fails ``durable``; the thread then only
returns blocks to the pool until it is stopped.

The first block decides whether the file has ``window_counts`` (when its
frames carry them), then the file enters SWMR mode.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from .._schema import GROUP
from ..protocol import derive
from ..transport import DurableRows
from ._blocks import Block, BlockPool, RowFiller, Straggler
from ._chunk_io import ChunkFile
from ._codec import THREADS, ChunkWriter, Codec
from ._layout import DatasetSpec, create_dataset
from ._stats import WriterStats

__all__ = ["WriterThread", "present_runs"]

log = logging.getLogger("ophyd_xspress.hdf5")

Work = Block | Straggler | None
Rows = list[tuple[int, int]]  # (first row, count)


@dataclass
class Written:
    """Rows written, not yet marked: their runs and their frame numbers."""

    runs: Rows
    frame_numbers: list[npt.NDArray[np.int64]]


class WriterThread:
    """Writes the blocks it is given into ``datasets`` of ``file``.

    ``name``: the file's path, for messages and the thread's name.
    ``chunks``: the early-allocated spectra chunks, or None (all through HDF5).
    ``codec``: the compression of the spectra, or None. ``window_counts``:
    the spec of the dataset to create if the first frames carry them.
    ``advise_fd``: the file's descriptor to ``posix_fadvise(DONTNEED)`` after
    each flush, or None. ``notify``: called after each flush and on failure
    (after ``durable`` changed).
    """

    def __init__(
        self,
        *,
        name: str,
        file: h5py.File,
        datasets: dict[str, h5py.Dataset],
        chunks: ChunkFile | None,
        codec: Codec | None,
        window_counts: DatasetSpec | None,
        windows: npt.NDArray[np.integer[Any]],
        clock_hz: float,
        flush_period: float,
        advise_fd: int | None,
        pool: BlockPool,
        filler: RowFiller,
        durable: DurableRows,
        stats: WriterStats,
        notify: Callable[[], None],
    ) -> None:
        self.file = file
        self.datasets = datasets
        self.chunks = chunks
        self.window_counts = window_counts
        self.windows = windows if windows.size else None
        self.clock_hz = clock_hz
        self.flush_period = flush_period
        self.advise_fd = advise_fd
        self.pool = pool
        self.filler = filler
        self.durable = durable
        self.stats = stats
        self.notify = notify
        self.name = name
        self.rows = int(datasets["data"].shape[0])  # the datasets' current length
        self._compress = (
            ThreadPoolExecutor(THREADS, thread_name_prefix="xspress-h5zip")
            if codec is not None
            else None
        )
        self._spectra = {
            name: ChunkWriter(datasets[name], codec, self._compress)
            for name in ("data", "summed_spectrum")
            if name in datasets
        }
        self._laid_out = False  # window_counts decided, SWMR on
        self._work: queue.Queue[Work] = queue.Queue()
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="xspress-h5disk")
        self._thread = threading.Thread(
            target=self._serve, name=f"xspress-h5writer-{Path(name).name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Block | Straggler) -> None:
        self._work.put(item)

    def stop(self) -> None:
        """Write what was submitted, flush, and end the thread."""
        self._work.put(None)
        self._thread.join()
        self._disk.shutdown()
        if self._compress is not None:
            self._compress.shutdown()

    @property
    def has_window_counts(self) -> bool:
        return "window_counts" in self.datasets

    # -- the loop ------------------------------------------------------------------
    def _serve(self) -> None:
        pending: list[Written] = []  # written, not yet flushed and marked
        last_flush = time.monotonic()
        while True:
            timeout = None
            if pending:
                timeout = max(0.0, last_flush + self.flush_period - time.monotonic())
            try:
                item = self._work.get(timeout=timeout)
            except queue.Empty:  # nothing more to write for now: flush
                self._flush_file(pending)
                last_flush = time.monotonic()
                continue
            if item is None:
                self._flush_file(pending)
                return
            if self.durable.error is None:
                try:
                    t0 = time.perf_counter()
                    written = self._write(item)
                    if written.runs:
                        pending.append(written)
                    self.stats.write_seconds += time.perf_counter() - t0
                except BaseException as exc:  # disk full, file closed...
                    log.exception("%s: writing frames failed", self.name)
                    # the blocks written before this one are whole: mark them
                    # if the disk still takes the flush; this one's rows stay -1
                    self._flush_file(pending, salvage=True)
                    self._fail(exc)
            if isinstance(item, Block):
                self.pool.give_back(item)
            if time.monotonic() - last_flush >= self.flush_period:
                self._flush_file(pending)
                last_flush = time.monotonic()

    def _flush_file(self, pending: list[Written], *, salvage: bool = False) -> None:
        """Flush the file (the rows of ``pending`` are then on disk), mark the
        rows with their frame numbers, flush again: the rows are durable.
        ``salvage``: after a failed write, whose error is the one to report."""
        batch = list(pending)
        pending.clear()
        if not batch or self.durable.error is not None:
            return
        try:
            t0 = time.perf_counter()
            self.file.flush()
            frame_number = self.datasets["frame_number"]
            for written in batch:
                for (start, count), numbers in zip(
                    written.runs, written.frame_numbers, strict=True
                ):
                    frame_number[start : start + count] = numbers
            self.file.flush()
            if self.advise_fd is not None:
                # write back and drop the file's cached pages: a long run's page
                # cache stays small and its pages are recycled, not newly
                # allocated (on VMs, fresh memory can cost more than the write)
                os.posix_fadvise(self.advise_fd, 0, 0, os.POSIX_FADV_DONTNEED)
            self.stats.flush_seconds += time.perf_counter() - t0
            self.stats.file_flushes += 1
        except BaseException as exc:
            if salvage:
                log.warning("%s: rows written before the failure: %s", self.name, exc)
            else:
                log.exception("%s: flushing the file failed", self.name)
                self._fail(exc)
            return
        for start, count in coalesce([r for w in batch for r in w.runs]):
            self._tell(self.durable.add, start, count)
        self._tell(self.notify)

    def _fail(self, exc: BaseException) -> None:
        self._tell(self.durable.fail, exc)
        self._tell(self.notify)

    def _tell(self, listener: Callable[..., None], *args: Any) -> None:
        """A listener's bug must not stop the writer."""
        try:
            listener(*args)
        except Exception:  # a listener's bug
            log.exception("%s: a durable-rows listener failed", self.name)

    # -- one item ------------------------------------------------------------------
    def _write(self, item: Block | Straggler) -> Written:
        if isinstance(item, Block):
            return self._write_block(item)
        # materialised here, not on the receiver thread: a 1-row block of its own
        blk = self.pool.alloc(1, pooled=False)
        blk.reset(item.row, 1)
        self.filler.fill(blk, 0, item.frame)
        return self._write_block(blk)

    def _lay_out(self, blk: Block) -> None:
        """At the first block: ``window_counts`` if its frames carry them;
        then SWMR mode (no dataset can be created after)."""
        self._laid_out = True
        spec = self.window_counts
        if spec is not None and blk.window_counts:
            group = self.file.require_group(GROUP)
            self.datasets["window_counts"] = create_dataset(group, spec, self.rows)
        self.file.swmr_mode = True

    def _write_block(self, blk: Block) -> Written:
        n = blk.filled
        if n == 0:
            return Written([], [])
        if not self._laid_out:
            self._lay_out(blk)
        start, stop = blk.start, blk.start + n
        present = blk.present[:n]
        missing = ~present if not present.all() else None
        spectra = blk.spectra[:n]
        if missing is not None:
            spectra[missing] = 0  # rows never received stay zero on disk
        self._ensure_rows(stop)
        self.stats.blocks += 1
        # the rows allocated at open with pwrite, into their chunks, on the disk
        # thread while this one writes the rest (an O_DIRECT write waits for
        # the device: ~11 ms per 16 MiB here); rows past those through HDF5
        chunks = self.chunks
        split = min(stop, chunks.rows) if chunks is not None else start
        disk: Future[None] | None = None
        if chunks is not None and split > start:
            disk = self._disk.submit(chunks.write, start, spectra[: split - start])
            self.stats.raw_rows += split - start
        try:
            if split < stop:
                first = max(start, split)
                self._write_spectra("data", first, spectra[first - start :])
            self._write_columns(blk, n, missing)
        finally:
            if disk is not None:
                # the block goes back to the pool only once it is on disk
                wait_futures([disk])
        if disk is not None:
            disk.result()  # the disk thread's error, if any
        runs = present_runs(start, present)
        numbers = [blk.frame_number[a - start : a - start + c].copy() for a, c in runs]
        return Written(runs, numbers)

    def _ensure_rows(self, stop: int) -> None:
        if stop > self.rows:
            for ds in self.datasets.values():
                ds.resize(stop, axis=0)
            self.rows = stop

    def _write_spectra(self, name: str, start: int, rows: npt.NDArray[Any]) -> None:
        writer = self._spectra[name]
        chunks, stored = writer.chunks_written, writer.bytes_stored
        writer.write(start, rows)
        done = writer.chunks_written - chunks
        self.stats.stored_bytes += writer.bytes_stored - stored
        if writer.codec is None:
            self.stats.direct_chunks += done
        else:
            self.stats.compressed_chunks += done

    def _write_columns(
        self, blk: Block, n: int, missing: npt.NDArray[np.bool_] | None
    ) -> None:
        """The stream's columns and the derived quantities: one write per
        dataset (the spectra-sized summed spectrum by whole chunks)."""
        start = blk.start
        rows = slice(start, start + n)
        stream = blk.metadata_columns(n)
        if not blk.window_counts:
            stream.pop("window_counts", None)  # not carried: not written
        derived = derive(
            stream,
            blk.spectra[:n],
            self.windows,
            clock_hz=self.clock_hz,
            warn=False,  # rows without frames are NaN until zeroed below
            summed="summed_spectrum" in self.datasets,
        ).columns()
        for name, column in (stream | derived).items():
            ds = self.datasets.get(name)
            if ds is None:
                continue  # e.g. window_counts the first block did not carry
            if missing is not None:
                column[missing] = 0
            if name in self._spectra:
                self._write_spectra(name, start, column)
            else:
                ds[rows] = column


def present_runs(start: int, present: npt.NDArray[np.bool_]) -> Rows:
    """The runs of True in ``present`` as ``(start + i, count)``."""
    if present.all():
        return [(start, len(present))] if len(present) else []
    edges = np.flatnonzero(np.diff(present, prepend=False, append=False))
    return [
        (start + int(a), int(b - a))
        for a, b in zip(edges[::2], edges[1::2], strict=True)
    ]


def coalesce(rows: Rows) -> Rows:
    """``rows`` sorted, with touching or overlapping ranges merged."""
    out: Rows = []
    for start, count in sorted(rows):
        if out and start <= out[-1][0] + out[-1][1]:
            first, n = out[-1]
            out[-1] = (first, max(n, start + count - first))
        else:
            out.append((start, count))
    return out
