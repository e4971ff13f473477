"""The HDF5 writer's face: a :class:`~ophyd_xspress.transport._sink.FrameSink`
that composes the layout, the block pool, the batcher and the writer thread."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .._constants import CLOCK_HZ
from ..protocol import Frame
from ..transport import DurableRows, FrameRefusedError
from ._blocks import (
    BLOCK_BYTES,
    MAX_BLOCKS,
    PREFAULT_BLOCKS,
    Batcher,
    BlockPool,
    RowFiller,
)
from ._chunk_io import ChunkFile
from ._layout import create_file, dataset_specs
from ._stats import WriterStats
from ._thread import WriterThread

__all__ = ["Hdf5FrameWriter", "SpectraIO"]

log = logging.getLogger("ophyd_xspress.hdf5")

SpectraIO = Literal["o_direct", "pwrite", "hdf5"]


class Hdf5FrameWriter:
    """Writes a run's frames to HDF5 from the receiver thread, at full rate.

    ``put(row, frame)`` and ``flush()`` are called by the receiver thread;
    ``open()`` / ``close()`` by the owner. ``windows``: software ROI bin
    windows, ``(channels, R, 2)`` inclusive. ``expected``: the run's length if
    known (its rows are allocated at open). Rows safely on disk are reported in
    :attr:`durable`.

    >>> writer = Hdf5FrameWriter(path, 4, 4096, windows, expected=1000)
    >>> writer.open()
    >>> writer.put(0, frame)        # on the receiver thread
    >>> writer.flush()              # after each batch of messages
    >>> writer.close()
    >>> writer.durable.prefix()
    1000
    """

    def __init__(
        self,
        path: str | PurePath,
        channels: int,
        bins: int,
        windows: npt.NDArray[np.integer[Any]],
        *,
        expected: int | None = None,
        window_counts: bool = False,
        clock_hz: float = CLOCK_HZ,
        spectra_dtype: str = "<u4",
        flush_period: float = 0.1,
        block_bytes: int = BLOCK_BYTES,
        max_blocks: int = MAX_BLOCKS,
        drop_cache: bool = True,
        direct_io: bool = True,
        o_direct: bool = True,
    ) -> None:
        self.path = Path(path)
        self.channels = channels
        self.bins = bins
        self.windows = np.asarray(windows, dtype=np.int64).reshape(channels, -1, 2)
        self.n_rois = int(self.windows.shape[1])
        self.expected = expected
        self.clock_hz = clock_hz
        self.flush_period = flush_period
        self.spectra_dtype = np.dtype(spectra_dtype)
        self.specs = dataset_specs(
            channels,
            bins,
            self.n_rois,
            spectra_dtype=spectra_dtype,
            window_counts=window_counts,
        )
        self.chunk = self.specs[0].chunk_rows()
        row_bytes = self.specs[0].row_bytes
        self.block_rows = self.chunk * max(1, block_bytes // (self.chunk * row_bytes))
        self.max_blocks = max(2, max_blocks)
        #: After each flush, ask the kernel to write back and drop the file's
        #: cached pages (``posix_fadvise(DONTNEED)``).
        self.drop_cache = drop_cache and hasattr(os, "posix_fadvise")
        #: Write the spectra of the rows allocated at open with ``pwrite``
        #: (``o_direct``: with ``O_DIRECT`` where possible) instead of HDF5.
        self.direct_io = direct_io
        self.o_direct = o_direct
        #: Rows safely on disk (written and flushed), and the writer's error.
        self.durable = DurableRows()
        #: Compatibility, removed when the receiver uses DurableRows: called on
        #: the writer thread after each flush and when the writer fails.
        self.on_flushed: Callable[[], None] | None = None
        self.stats = WriterStats()
        self._error_reported = False
        self._lock = threading.Lock()  # receiver thread vs close()
        stream = {
            s.name: (s.shape, s.dtype)
            for s in self.specs
            if s.source == "stream" and s.name != "data"
        }
        self._pool = BlockPool(
            name=str(self.path),
            rows=self.block_rows,
            channels=channels,
            bins=bins,
            spectra_dtype=self.spectra_dtype,
            columns=stream,
            max_blocks=self.max_blocks,
            durable=self.durable,
            stats=self.stats,
        )
        self._filler = RowFiller(str(self.path), channels, stream)
        self._chunks: ChunkFile | None = None
        self._spectra_io: SpectraIO = "hdf5"
        self._thread: WriterThread | None = None
        self._batcher: Batcher | None = None

    # -- owner -----------------------------------------------------------------------
    def open(self) -> None:
        """Create the file and start the writer thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.expected or 0
        f, datasets = create_file(
            self.path,
            self.specs,
            rows=rows,
            windows=self.windows,
            aligned=self.direct_io,
        )
        try:
            if self.direct_io and rows:
                self._chunks = ChunkFile.open(
                    self.path, datasets["data"], o_direct=self.o_direct
                )
        except BaseException:
            f.close()
            raise
        advise_fd: int | None = None
        if self.drop_cache:
            try:
                advise_fd = int(f.id.get_vfd_handle())
            except Exception:  # another file driver: no fd to advise
                advise_fd = None
        if rows:
            # the first blocks' memory touched now, not while frames pour in
            self._pool.prefault(min(PREFAULT_BLOCKS, -(-rows // self.block_rows)))
        thread = WriterThread(
            name=str(self.path),
            file=f,
            datasets=datasets,
            chunks=self._chunks,
            windows=self.windows,
            clock_hz=self.clock_hz,
            flush_period=self.flush_period,
            advise_fd=advise_fd,
            pool=self._pool,
            filler=self._filler,
            durable=self.durable,
            stats=self.stats,
            notify=self._flushed,
        )
        self._batcher = Batcher(
            pool=self._pool,
            filler=self._filler,
            chunk_rows=self.chunk,
            submit=thread.submit,
            stats=self.stats,
        )
        thread.start()
        self._thread = thread

    def close(self) -> None:
        """Write what is pending, stop the writer thread, close the file.

        Raises the writer's error if it was never reported by put/flush.
        """
        with self._lock:
            thread, self._thread = self._thread, None
            batcher, self._batcher = self._batcher, None
            if thread is not None:
                if batcher is not None:
                    batcher.handoff()
                thread.stop()
                thread.file.close()
            chunks, self._chunks = self._chunks, None
            if chunks is not None:
                self._spectra_io = "o_direct" if chunks.o_direct else "pwrite"
                chunks.close()
            error = self.error
            if error is not None and not self._error_reported:
                self._error_reported = True
                raise error

    # -- FrameSink (receiver thread) -------------------------------------------------
    def put(self, row: int, frame: Frame) -> None:
        """Store ``frame`` in ``row``; raises :class:`FrameRefusedError` for a
        frame of another shape than the file's, the writer's error once it
        failed."""
        spectra = frame.spectra
        if spectra.shape != (self.channels, self.bins):
            raise FrameRefusedError(
                f"frame {frame.frame} has shape {spectra.shape}, the file "
                f"{self.path} was opened for {(self.channels, self.bins)}"
            )
        with self._lock, self._reporting():
            batcher = self._batcher
            if batcher is None:
                raise RuntimeError(f"{self.path}: frame {frame.frame} put after close")
            batcher.put(row, frame)

    def flush(self) -> None:
        """After a batch of messages: hand a partial block over once it is
        ``flush_period`` old, or at once when the stream went quiet."""
        with self._lock, self._reporting():
            if self._batcher is not None:
                self._batcher.flush(self.flush_period)

    @contextmanager
    def _reporting(self) -> Iterator[None]:
        """Raise the writer's error; note when it reached the caller."""
        try:
            error = self.error
            if error is not None:
                raise error
            yield
        except BaseException as exc:
            if exc is self.error:
                self._error_reported = True
            raise

    # -- state -------------------------------------------------------------------------
    @property
    def error(self) -> BaseException | None:
        """The error that stopped the writer (``durable.error``).

        Compatibility, removed when the receiver uses DurableRows."""
        return self.durable.error

    @property
    def spectra_io(self) -> SpectraIO:
        """How the spectra of the rows allocated at open reach the file:
        ``"o_direct"``, ``"pwrite"`` (page cache) or ``"hdf5"`` (also all
        rows of a run of unknown length). An ``O_DIRECT`` write the file
        system refuses turns ``"o_direct"`` into ``"pwrite"``."""
        chunks = self._chunks
        if chunks is None:
            return self._spectra_io
        return "o_direct" if chunks.o_direct else "pwrite"

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    @property
    def frames_written(self) -> int:
        """How many rows hold a frame and are flushed to disk."""
        return len(self.durable)

    def _flushed(self) -> None:
        callback = self.on_flushed
        if callback is not None:
            callback()
