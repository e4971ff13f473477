"""The HDF5 writer's face: a :class:`~ophyd_xspress.transport._sink.FrameSink`
that composes the layout, the block pool, the batcher and the writer thread."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, Literal

import h5py
import numpy as np
import numpy.typing as npt

from .._constants import CLOCK_HZ
from ..protocol import Calibration, Frame, per_channel
from ..transport import DurableRows, FrameRefusedError, FrameShapeError
from ._blocks import (
    BLOCK_BYTES,
    MAX_BLOCKS,
    PREFAULT_BLOCKS,
    Batcher,
    BlockPool,
    RowFiller,
)
from ._chunk_io import ChunkFile
from ._codec import Compression, codec_for
from ._layout import DatasetSpec, create_file, dataset_specs
from ._repair import WriterMarker
from ._stats import WriterStats
from ._thread import WriterThread

__all__ = ["Hdf5FrameWriter", "SpectraIO"]

log = logging.getLogger("ophyd_xspress.hdf5")

SpectraIO = Literal["o_direct", "pwrite", "hdf5"]


class Hdf5FrameWriter:
    """Writes a run's frames to HDF5 from the receiver thread, at full rate.

    ``put(row, frame)`` and ``flush()`` on the receiver thread, ``open()`` /
    ``close()`` by the owner. ``windows``: ROI bin windows ``(channels, R,
    2)``, inclusive. ``expected``: the run's length if known (rows allocated
    at open). ``window_counts``: store them when the stream carries them
    (only then has the file that dataset). ``compression`` (``None``,
    ``"bslz4"``, ``"blosc"``, ``"gzip"``) and ``chunk_frames`` (default: ~1
    MiB): the spectra's; ``summed_spectrum``: also the dead-time corrected
    sum over channels; ``calibration``: one for all channels or one per
    channel (for PyMca). Rows safely on disk are in :attr:`durable`.

    >>> writer = Hdf5FrameWriter(path, 4, 4096, windows, expected=1000)
    >>> writer.open(); writer.put(0, frame); writer.flush(); writer.close()
    >>> writer.durable.prefix()
    1
    """

    def __init__(
        self,
        path: str | PurePath,
        channels: int,
        bins: int,
        windows: npt.NDArray[np.integer[Any]],
        *,
        expected: int | None = None,
        window_counts: bool = True,
        clock_hz: float = CLOCK_HZ,
        spectra_dtype: str = "<u4",
        compression: Compression | None = None,
        chunk_frames: int | None = None,
        summed_spectrum: bool = False,
        calibration: Calibration | Sequence[Calibration] | None = None,
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
        self.expected = expected
        self.clock_hz = clock_hz
        self.flush_period = flush_period
        self.spectra_dtype = np.dtype(spectra_dtype)
        self.compression = compression
        self._codec = codec_for(compression) if compression is not None else None
        self.calibrations = per_channel(calibration or Calibration(), channels)
        every = dataset_specs(
            channels,
            bins,
            int(self.windows.shape[1]),
            spectra_dtype=spectra_dtype,
            window_counts=window_counts,
            summed=summed_spectrum,
            chunk_frames=chunk_frames,
            compression=compression,
        )
        #: The datasets made at open. ``window_counts`` is made when the first
        #: frames written carry them (:attr:`has_window_counts`).
        self.specs = [s for s in every if s.name != "window_counts"]
        self.window_counts_spec = next(
            (s for s in every if s.name == "window_counts"), None
        )
        self._setup(every, block_bytes, max_blocks, drop_cache, direct_io, o_direct)

    def _setup(
        self,
        every: list[DatasetSpec],
        block_bytes: int,
        max_blocks: int,
        drop_cache: bool,
        direct_io: bool,
        o_direct: bool,
    ) -> None:
        """The blocks, the write path, the state: what the specs imply."""
        channels, bins = self.channels, self.bins
        self.chunk = self.specs[0].chunk_rows()
        row_bytes = self.specs[0].row_bytes
        self.block_rows = self.chunk * max(1, block_bytes // (self.chunk * row_bytes))
        self.max_blocks = max(2, max_blocks)
        #: After each flush, ask the kernel to write back and drop the file's
        #: cached pages (``posix_fadvise(DONTNEED)``).
        self.drop_cache = drop_cache and hasattr(os, "posix_fadvise")
        #: Write the spectra of the rows allocated at open with ``pwrite``
        #: (``o_direct``: with ``O_DIRECT`` where possible) instead of HDF5
        #: (uncompressed files only).
        self.direct_io = direct_io and self.compression is None
        self.o_direct = o_direct
        #: Rows safely on disk (written, flushed, marked), and the writer's error.
        self.durable = DurableRows()
        #: Compatibility, removed when the receiver uses DurableRows: called on
        #: the writer thread after each flush and when the writer fails.
        self.on_flushed: Callable[[], None] | None = None
        self.stats = WriterStats()
        self._error_reported = False
        self._lock = threading.Lock()  # receiver thread vs close()
        stream = {
            s.name: (s.shape, s.dtype)
            for s in every
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
        self._filler = RowFiller(str(self.path), channels, stream, self.spectra_dtype)
        self._chunks: ChunkFile | None = None
        self._spectra_io: SpectraIO = "hdf5"
        self._thread: WriterThread | None = None
        self._batcher: Batcher | None = None
        self._marker: WriterMarker | None = None
        self._had_window_counts = False

    # -- owner -----------------------------------------------------------------------
    def open(self) -> None:
        """Create the file (and its ``.writing`` sidecar, see
        :mod:`~ophyd_xspress.hdf5._repair`) and start the writer thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        marker = WriterMarker.acquire(self.path)
        try:
            self._start(self.expected or 0)
        except BaseException:
            marker.release()
            raise
        self._marker = marker

    def _start(self, rows: int) -> None:
        f, datasets = create_file(
            self.path,
            self.specs,
            rows=rows,
            windows=self.windows,
            aligned=self.direct_io,
            codec=self._codec,
            calibration=np.array([c.pymca() for c in self.calibrations]),
        )
        try:
            if self.direct_io and rows:
                self._chunks = ChunkFile.open(
                    self.path, datasets["data"], o_direct=self.o_direct
                )
        except BaseException:
            f.close()
            raise
        advise_fd = _file_descriptor(f) if self.drop_cache else None
        if rows:
            # the first blocks' memory touched now, not while frames pour in
            self._pool.prefault(min(PREFAULT_BLOCKS, -(-rows // self.block_rows)))
        thread = WriterThread(
            name=str(self.path),
            file=f,
            datasets=datasets,
            chunks=self._chunks,
            codec=self._codec,
            window_counts=self.window_counts_spec,
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
                self._had_window_counts = thread.has_window_counts
                _close(thread.file, self.durable)
            chunks, self._chunks = self._chunks, None
            if chunks is not None:
                self._spectra_io = "o_direct" if chunks.o_direct else "pwrite"
                chunks.close()
            marker, self._marker = self._marker, None
            if marker is not None:
                marker.release()
            error = self.error
            if error is not None and not self._error_reported:
                self._error_reported = True
                raise error

    # -- FrameSink (receiver thread) -------------------------------------------------
    def put(self, row: int, frame: Frame) -> None:
        """Store ``frame`` in ``row``; raises :class:`FrameShapeError` for a
        frame of another shape than the file's, :class:`FrameRefusedError` for
        one whose values the file's dtypes would change, the writer's error
        once it failed."""
        spectra = frame.spectra
        if spectra.shape != (self.channels, self.bins):
            raise FrameShapeError(
                frame.frame,
                spectra.shape,
                (self.channels, self.bins),
                f"the file {self.path}",
            )
        reason = self._filler.refusal(frame)
        if reason is not None:  # values the file's dtypes would change
            self.stats.refused += 1
            raise FrameRefusedError(f"frame {frame.frame}: {reason}")
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
        ``"o_direct"``, ``"pwrite"`` (page cache; also when ``O_DIRECT`` is
        refused) or ``"hdf5"`` (every row of an unknown length or compressed)."""
        chunks = self._chunks
        if chunks is None:
            return self._spectra_io
        return "o_direct" if chunks.o_direct else "pwrite"

    @property
    def has_window_counts(self) -> bool:
        """The file has ``window_counts``: the first frames written carried
        them (settled once the first rows are durable)."""
        thread = self._thread
        return thread.has_window_counts if thread else self._had_window_counts

    @property
    def carried_window_counts(self) -> bool:  # a frame put so far had them
        return self._filler.carried_window_counts

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


def _close(f: h5py.File, durable: DurableRows) -> None:
    """Close the file. After a failure (a full disk) HDF5 may fail again to
    write what it still holds: the first error is the one that counts."""
    name = f.filename
    try:
        f.close()
    except Exception as exc:
        if durable.error is None:
            durable.fail(exc)
        else:
            log.warning("%s: closing after the writer failed: %s", name, exc)


def _file_descriptor(f: h5py.File) -> int | None:
    """The file's descriptor (for ``posix_fadvise``), None for another driver."""
    try:
        return int(f.id.get_vfd_handle())
    except Exception:  # another file driver: no fd to advise
        return None
