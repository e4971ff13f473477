"""HDF5 writer for a run's frames, laid out as the MAX IV Xspress3 device writes.

``/entry/instrument/xspress3/``:

=========================  ==================  =======================================
dataset                    shape               meaning
=========================  ==================  =======================================
``data``                   (N, channels, bins) raw spectra (stream dtype, uint32)
``all_events``             (N, channels)       raw scaler
``all_good``               (N, channels)       raw scaler (== spectrum sum)
``clock_ticks``            (N, channels)       raw scaler (80 MHz ticks)
``total_ticks``            (N, channels)       raw scaler
``reset_ticks``            (N, channels)       raw scaler
``event_width``            (N, channels)       raw scaler (ticks)
``dead_time_correction``   (N, channels)       as streamed (== the formula)
``output_count_rate``      (N, channels)       OCR in counts/s, *recomputed*: the
                                               stream's field has a units bug
``window_counts``          (N, 2, channels)    raw hardware window counts, if sent
``dead_time_percent``      (N, channels)       100 * dead_ticks / clock_ticks
``live_time``              (N, channels)       s
``input_count_rate``       (N, channels)       ICR estimate, counts/s
``roi``                    (N, channels, R)    raw ROI sums (software ROIs)
``roi_corrected``          (N, channels, R)    ROI sums x dead-time correction
``frame_number``           (N,)                the detector's frame counter
=========================  ==================  =======================================

Row ``i`` holds frame ``i`` of the run whatever order frames arrive in; rows of
frames never received stay zero and ``frame_number`` -1.

How frames reach the disk at the detector's full rate: the receiver thread
copies each frame into a preallocated block of rows (spectra, and the raw
metadata pickle bytes when the decoder recognised its layout, so the scalers of
a whole block become columns without per-frame work). Full blocks, or a partial
block once its first frame is ``flush_period`` old, go to a dedicated writer
thread through a bounded pool (back-pressure, no unbounded memory). The writer
thread writes the spectra of the rows allocated when the file was opened (a fly
scan's known length) with ``os.pwrite`` straight into their chunks, ``O_DIRECT``
where possible (:mod:`ophyd_xspress._spectra_io`: no GIL held, no page-cache
copy); rows beyond those go through HDF5 as whole chunks
(``write_direct_chunk``). Everything else is one call per dataset per block;
the dead-time quantities are computed for the block at once, and the file is
flushed (SWMR) at most every ``flush_period`` and whenever the writer runs
out of work. Only rows flushed to disk count as written
(:attr:`Hdf5FrameWriter.durable`), so a reader (tiled) never sees a row
promised but not on disk.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Final

import h5py
import numpy as np
import numpy.typing as npt

from ._spectra_io import ChunkFile, aligned_empty
from .protocol import CLOCK_HZ, Frame, FrameSet, correct, dead_time, roi_sums

__all__ = ["GROUP", "RAW_SCALERS", "DatasetSpec", "Hdf5FrameWriter", "dataset_specs"]

log = logging.getLogger("ophyd_xspress.hdf5")

GROUP: Final = "/entry/instrument/xspress3"

#: The raw per-channel scalers: (name, dtype, units).
RAW_SCALERS: Final = (
    ("all_events", "<u4", "counts"),
    ("all_good", "<u4", "counts"),
    ("clock_ticks", "<u4", "ticks"),
    ("total_ticks", "<u4", "ticks"),
    ("reset_ticks", "<u4", "ticks"),
    ("event_width", "<i4", "ticks"),
)
SCALERS: Final = (*RAW_SCALERS, ("dead_time_correction", "<f8", ""))
DERIVED: Final = (
    ("output_count_rate", "<f8", "counts/s"),
    ("dead_time_percent", "<f8", "%"),
    ("live_time", "<f8", "s"),
    ("input_count_rate", "<f8", "counts/s"),
)
#: Target size of one HDF5 chunk (the spectra of 16 frames of 4 x 4096 uint32).
CHUNK_BYTES: Final = 1 << 20
#: Target size of the spectra of one block handed to the writer thread.
BLOCK_BYTES: Final = 16 << 20
#: Blocks in the pool: the most the receiver can be ahead of the disk.
MAX_BLOCKS: Final = 8
#: Blocks whose memory is touched when the file is opened (known length only):
#: a writer that keeps up works in these, and peak RSS does not depend on how
#: long a run is (measured: 258 MB at 10k frames, 298 MB at 1M with 2).
PREFAULT_BLOCKS: Final = 4
#: How long the receiver waits for a free block before declaring the writer stuck.
STUCK_TIMEOUT: Final = 60.0


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the file: name, per-frame shape, dtype, units."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    units: str

    @property
    def path(self) -> str:
        return f"{GROUP}/{self.name}"

    def chunk_bytes(self) -> int:
        return self.chunk_rows() * math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def chunk_rows(self) -> int:
        per_row = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        return max(1, min(4096, CHUNK_BYTES // max(1, per_row)))


def dataset_specs(
    channels: int,
    bins: int,
    n_rois: int,
    *,
    spectra_dtype: str = "<u4",
    window_counts: bool = False,
) -> list[DatasetSpec]:
    specs = [DatasetSpec("data", (channels, bins), spectra_dtype, "counts")]
    specs += [DatasetSpec(n, (channels,), d, u) for n, d, u in SCALERS]
    specs += [DatasetSpec(n, (channels,), d, u) for n, d, u in DERIVED]
    if window_counts:
        specs.append(DatasetSpec("window_counts", (2, channels), "<u4", "counts"))
    if n_rois:
        specs.append(DatasetSpec("roi", (channels, n_rois), "<u8", "counts"))
        specs.append(DatasetSpec("roi_corrected", (channels, n_rois), "<f8", "counts"))
    specs.append(DatasetSpec("frame_number", (), "<i8", ""))
    return specs


@dataclass(eq=False)
class _Block:
    """Rows ``start .. start + capacity - 1`` of the file, filled by the receiver."""

    spectra: npt.NDArray[Any]  # (rows, channels, bins)
    columns: dict[str, npt.NDArray[Any]]  # per-frame metadata columns
    frame_number: npt.NDArray[np.int64]
    present: npt.NDArray[np.bool_]
    via_raw: npt.NDArray[np.bool_]
    start: int = 0
    capacity: int = 0
    filled: int = 0  # highest filled index + 1
    born: float = 0.0
    layout: Any = None  # the metadata layout of the raw rows
    meta: npt.NDArray[np.uint8] | None = None  # (rows, pickle size) raw bytes
    pooled: bool = True

    def reset(self, start: int, capacity: int) -> None:
        self.start, self.capacity, self.filled = start, capacity, 0
        self.born = time.monotonic()
        self.layout = None
        self.present[:] = False
        self.via_raw[:] = False
        self.frame_number[:] = -1
        for col in self.columns.values():
            col[:] = 0


@dataclass
class _Stats:
    blocks: int = 0
    direct_chunks: int = 0  # whole chunks written with write_direct_chunk
    raw_rows: int = 0  # rows written with pwrite into early-allocated chunks
    file_flushes: int = 0
    stragglers: int = 0
    pool_waits: int = 0
    write_seconds: float = 0.0
    flush_seconds: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)


class Hdf5FrameWriter:
    """Writes a run's frames to HDF5 from the receiver thread, at full rate.

    ``put(row, frame)`` and ``flush()`` are called by the receiver thread;
    ``open()`` / ``close()`` by the owner. ``windows``: software ROI bin windows,
    ``(channels, R, 2)`` inclusive. ``on_flushed`` (if set) is called on the
    writer thread each time more rows are safely on disk.
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
        self._window_counts = window_counts
        self.chunk = self.specs[0].chunk_rows()
        row_bytes = channels * bins * self.spectra_dtype.itemsize
        self.block_rows = self.chunk * max(1, block_bytes // (self.chunk * row_bytes))
        self.max_blocks = max(2, max_blocks)
        #: After each flush, ask the kernel to write back and drop the file's
        #: cached pages (``posix_fadvise(DONTNEED)``), so a long fly scan's page
        #: cache stays small and its pages are recycled instead of newly
        #: allocated (on VMs, fresh memory can cost more than the write).
        self.drop_cache = drop_cache and hasattr(os, "posix_fadvise")
        #: Write the spectra of the rows allocated at open with ``pwrite``
        #: (``o_direct``: with ``O_DIRECT`` where possible) instead of HDF5.
        self.direct_io = direct_io
        self.o_direct = o_direct
        self._chunks: ChunkFile | None = None
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="xspress-h5disk")
        self._spectra_io = "hdf5"
        self._fd: int | None = None
        #: Rows safely on disk (written and flushed), absolute row numbers.
        self.durable = FrameSet()
        self.on_flushed: Callable[[], None] | None = None
        self.stats = _Stats()
        self.error: BaseException | None = None
        self._error_raised = False
        self._lock = threading.Lock()  # receiver thread vs close()
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self.rows = 0  # current dataset length
        self._current: _Block | None = None
        self._next_row = 0  # rows below this were handed to the writer thread
        self._put_since_flush = False
        self._free: queue.Queue[_Block] = queue.Queue()
        self._made = 0
        self._work: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.warned_shape = False

    # -- file ----------------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data_spec = self.specs[0]
        # large objects (the spectra's chunks) start on a page boundary, as
        # O_DIRECT needs; the small datasets' chunks mostly stay below it
        threshold = max(4096, data_spec.chunk_bytes()) if self.direct_io else 1
        f = h5py.File(
            self.path,
            "w",
            libver="latest",
            alignment_threshold=threshold,
            alignment_interval=4096 if self.direct_io else 1,
        )
        try:
            group = f.require_group(GROUP)
            entry = f["/entry"]
            entry.attrs["NX_class"] = "NXentry"
            group.attrs["NX_class"] = "NXdetector"
            initial = self.expected or 0
            for spec in self.specs:
                early: dict[str, Any] = {}
                if spec is data_spec and self.direct_io and initial:
                    # every chunk allocated now, nothing written by HDF5: the
                    # writer thread fills them with pwrite (rows never written
                    # are the file's holes: zeros)
                    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                    early = {"dcpl": dcpl, "fill_time": "never"}
                ds = group.create_dataset(
                    spec.name,
                    shape=(initial, *spec.shape),
                    maxshape=(None, *spec.shape),
                    dtype=spec.dtype,
                    chunks=(spec.chunk_rows(), *spec.shape),
                    fillvalue=-1 if spec.name == "frame_number" else 0,
                    # room for the chunk being filled and the next; rows are
                    # written once, so finished chunks are evicted at once
                    # (the default 1 MiB cache per dataset kept growing RSS)
                    rdcc_nbytes=2 * spec.chunk_bytes(),
                    rdcc_w0=1.0,
                    **early,
                )
                if spec.units:
                    ds.attrs["units"] = spec.units
                self._datasets[spec.name] = ds
            self._datasets["output_count_rate"].attrs["note"] = (
                "all_good / (clock_ticks / 80 MHz) in counts/s; the stream's "
                "output_count_rate field is all_good / (ticks * 80e6), a units bug "
                "in the device, and is not stored"
            )
            if self.n_rois:
                self._datasets["roi"].attrs["windows"] = self.windows
            f.swmr_mode = True
            if self.direct_io and initial:
                self._chunks = ChunkFile.open(
                    self.path, self._datasets["data"], o_direct=self.o_direct
                )
                if self._chunks is not None:
                    self._spectra_io = "o_direct" if self._chunks.o_direct else "pwrite"
        except BaseException:
            f.close()
            self._datasets = {}
            raise
        self._file = f
        self.rows = initial
        if self.drop_cache:
            try:
                self._fd = int(f.id.get_vfd_handle())
            except Exception:  # another file driver: no fd to advise
                self._fd = None
        if self.expected:
            # the first blocks' memory touched now, not while frames pour in
            blocks = -(-self.expected // self.block_rows)
            for _ in range(min(PREFAULT_BLOCKS, blocks, self.max_blocks)):
                blk = self._alloc(self.block_rows, pooled=True)
                blk.spectra.fill(0)
                self._made += 1
                self._free.put(blk)
        self._thread = threading.Thread(
            target=self._serve, name=f"xspress-h5writer-{self.path.name}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Write what is pending, stop the writer thread, close the file.

        Raises the writer's error if it was never reported by put/flush.
        """
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                if self._current is not None and self._current.filled:
                    self._handoff()
                self._work.put(("stop", None))
                thread.join()
            f, self._file = self._file, None
            self._datasets = {}
            self._disk.shutdown()
            chunks, self._chunks = self._chunks, None
            if chunks is not None:
                chunks.close()
            if f is not None:
                f.close()
            if self.error is not None and not self._error_raised:
                self._error_raised = True
                raise self.error

    @property
    def spectra_io(self) -> str:
        """How the spectra of the rows allocated at open reach the file:
        ``"o_direct"``, ``"pwrite"`` (page cache) or ``"hdf5"`` (also all
        rows of a run of unknown length). An ``O_DIRECT`` write the file
        system refuses turns ``"o_direct"`` into ``"pwrite"``."""
        chunks = self._chunks
        if (
            chunks is not None
            and self._spectra_io == "o_direct"
            and not chunks.o_direct
        ):
            self._spectra_io = "pwrite"
        return self._spectra_io

    @property
    def is_open(self) -> bool:
        return self._file is not None

    @property
    def frames_written(self) -> int:
        """How many rows hold a frame and are flushed to disk."""
        return len(self.durable)

    # -- FrameSink (receiver thread) ------------------------------------------
    def put(self, row: int, frame: Frame) -> None:
        spectra = frame.spectra
        if spectra.shape != (self.channels, self.bins):
            raise ValueError(
                f"frame {frame.frame} has shape {spectra.shape}, the file "
                f"{self.path} was opened for {(self.channels, self.bins)}"
            )
        with self._lock:
            self._check_error()
            if self._thread is None:
                raise RuntimeError(f"{self.path}: frame {frame.frame} put after close")
            blk = self._current
            if blk is None or not blk.start <= row < blk.start + blk.capacity:
                if row < self._next_row or (blk is not None and row < blk.start):
                    # a late frame for rows already handed over: its own write
                    self.stats.stragglers += 1
                    self._work.put(("row", (row, frame)))
                    self._put_since_flush = True
                    return
                if blk is not None:
                    self._handoff()
                blk = self._new_block(row)
            self._fill(blk, row - blk.start, frame)
            self._put_since_flush = True
            if blk.filled == blk.capacity:  # a hole still open becomes a straggler
                self._handoff()

    def flush(self) -> None:
        """After a batch of messages: hand a partial block over once it is
        ``flush_period`` old, or at once when the stream went quiet."""
        with self._lock:
            self._check_error()
            blk = self._current
            if blk is not None and blk.filled:
                quiet = not self._put_since_flush
                if quiet or time.monotonic() - blk.born >= self.flush_period:
                    self._handoff()
            self._put_since_flush = False

    # -- blocks (receiver thread, under the lock) --------------------------------
    def _check_error(self) -> None:
        if self.error is not None:
            self._error_raised = True
            raise self.error

    def _alloc(self, rows: int, pooled: bool) -> _Block:
        ch = self.channels
        columns: dict[str, npt.NDArray[Any]] = {
            name: np.zeros((rows, ch), dtype) for name, dtype, _ in SCALERS
        }
        if self._window_counts:
            columns["window_counts"] = np.zeros((rows, 2, ch), np.uint32)
        return _Block(
            spectra=aligned_empty((rows, ch, self.bins), self.spectra_dtype),
            columns=columns,
            frame_number=np.full(rows, -1, np.int64),
            present=np.zeros(rows, bool),
            via_raw=np.zeros(rows, bool),
            pooled=pooled,
        )

    def _new_block(self, row: int) -> _Block:
        k = self.chunk
        start = max(self._next_row, row - row % k)
        end = (start // k) * k + self.block_rows  # ends on a chunk boundary
        if end <= row:  # pragma: no cover - start > row - k guarantees this
            end = row + 1
        # a block the writer is done with first: its memory is warm (fresh
        # memory costs ~2.5 ms/MiB to fault in on a VM, more than the copy)
        try:
            blk = self._free.get_nowait()
        except queue.Empty:
            if self._made < self.max_blocks:
                self._made += 1
                blk = self._alloc(self.block_rows, pooled=True)
            else:
                self.stats.pool_waits += 1
                blk = self._wait_free()
        blk.reset(start, min(end - start, self.block_rows))
        self._current = blk
        return blk

    def _wait_free(self) -> _Block:
        deadline = time.monotonic() + STUCK_TIMEOUT
        while True:
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                self._check_error()
                if time.monotonic() > deadline:
                    self.error = TimeoutError(
                        f"{self.path}: the HDF5 writer wrote nothing for "
                        f"{STUCK_TIMEOUT:.0f} s (disk full or stalled?)"
                    )
                    self._check_error()

    def _fill(self, blk: _Block, i: int, frame: Frame) -> None:
        blk.spectra[i] = frame.spectra
        blk.frame_number[i] = frame.frame
        blk.present[i] = True
        if i >= blk.filled:
            blk.filled = i + 1
        md = frame.metadata
        layout = getattr(md, "layout", None)
        if layout is not None:
            if blk.layout is None and self._layout_fits(layout):
                blk.layout = layout
                if blk.meta is None or blk.meta.shape[1] != layout.size:
                    blk.meta = np.empty((len(blk.present), layout.size), np.uint8)
            if layout is blk.layout and blk.meta is not None:
                blk.meta[i] = np.frombuffer(md.raw, np.uint8)  # type: ignore[attr-defined]
                blk.via_raw[i] = True
                return
        self._fill_columns(blk.columns, i, md)

    def _fill_columns(
        self, columns: dict[str, npt.NDArray[Any]], i: int, md: Mapping[str, Any]
    ) -> None:
        for name, _, _ in SCALERS:
            columns[name][i] = md[name]
        wc = md.get("window_counts")
        if "window_counts" in columns and wc is not None:
            if wc.shape == (2, self.channels):
                columns["window_counts"][i] = wc
            elif not self.warned_shape:
                self.warned_shape = True
                log.warning(
                    "%s: window_counts of shape %s not written (expected %s)",
                    self.path,
                    wc.shape,
                    (2, self.channels),
                )

    def _layout_fits(self, layout: Any) -> bool:
        """The raw path needs every scaler with shape (channels,)."""
        shapes = {f.name: tuple(f.shape) for f in layout.fields}
        ch = (self.channels,)
        if any(shapes.get(name) != ch for name, _, _ in SCALERS):
            return False
        wc = shapes.get("window_counts")
        return wc is None or wc == (2, self.channels) or not self._window_counts

    def _handoff(self) -> None:
        blk, self._current = self._current, None
        if blk is None:
            return
        self._next_row = max(self._next_row, blk.start + blk.filled)
        self._work.put(("block", blk))

    # -- writer thread ---------------------------------------------------------------
    def _serve(self) -> None:
        pending: list[tuple[int, int]] = []  # (row, count) written, not yet flushed
        last_flush = time.monotonic()
        while True:
            timeout = None
            if pending:
                timeout = max(0.0, last_flush + self.flush_period - time.monotonic())
            try:
                kind, item = self._work.get(timeout=timeout)
            except queue.Empty:
                self._flush_file(pending)
                last_flush = time.monotonic()
                continue
            if kind == "stop":
                self._flush_file(pending)
                return
            if self.error is None:
                try:
                    t0 = time.perf_counter()
                    if kind == "block":
                        pending += self._write_block(item)
                    else:
                        row, frame = item
                        pending += self._write_row(row, frame)
                    self.stats.write_seconds += time.perf_counter() - t0
                except BaseException as exc:  # disk full, file closed...
                    log.exception("%s: writing frames failed", self.path)
                    self.error = exc
                    pending.clear()
                    self._flush_file(pending)  # tells the listener
            if kind == "block" and item.pooled:
                self._free.put(item)
            if time.monotonic() - last_flush >= self.flush_period:
                self._flush_file(pending)
                last_flush = time.monotonic()

    def _flush_file(self, pending: list[tuple[int, int]]) -> None:
        if (not pending and self.error is None) or self._file is None:
            pending.clear()
            return
        if self.error is None:
            try:
                t0 = time.perf_counter()
                self._file.flush()
                if self._fd is not None:
                    os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
                self.stats.flush_seconds += time.perf_counter() - t0
                self.stats.file_flushes += 1
            except BaseException as exc:
                log.exception("%s: flushing the file failed", self.path)
                self.error = exc
        if self.error is None:
            for row, count in pending:
                for r in range(row, row + count):
                    self.durable.add(r)
        pending.clear()
        callback = self.on_flushed
        if callback is not None:
            try:
                callback()
            except Exception:  # pragma: no cover - a listener's bug
                log.exception("%s: on_flushed callback failed", self.path)

    def _ensure_rows(self, stop: int) -> None:
        if stop > self.rows:
            for ds in self._datasets.values():
                ds.resize(stop, axis=0)
            self.rows = stop

    def _write_row(self, row: int, frame: Frame) -> list[tuple[int, int]]:
        blk = self._alloc(1, pooled=False)
        blk.reset(row, 1)
        blk.spectra[0] = frame.spectra
        blk.frame_number[0] = frame.frame
        blk.present[0] = True
        blk.filled = 1
        self._fill_columns(blk.columns, 0, frame.metadata)
        return self._write_block(blk)

    def _columns(self, blk: _Block, n: int) -> dict[str, npt.NDArray[Any]]:
        columns = {name: col[:n] for name, col in blk.columns.items()}
        raw = blk.via_raw[:n]
        if blk.meta is not None and blk.layout is not None and raw.any():
            meta = blk.meta[:n]
            size = meta.shape[1]
            for f in blk.layout.fields:
                col = columns.get(f.name)
                if col is None:
                    continue
                dtype = np.dtype(f.dtype)
                inner = [dtype.itemsize]
                for extent in reversed(tuple(f.shape)[1:]):
                    inner.insert(0, inner[0] * extent)
                view = np.ndarray(
                    (n, *f.shape),
                    dtype,
                    buffer=meta,
                    offset=f.offset,
                    strides=(size, *inner),
                )
                where = raw.reshape((n,) + (1,) * len(f.shape))
                np.copyto(col, view, casting="unsafe", where=where)
        return columns

    def _write_spectra_hdf5(self, start: int, spectra: npt.NDArray[Any]) -> None:
        """Rows ``start ..`` through HDF5: whole chunks with
        ``write_direct_chunk`` (no chunk cache), the ragged ends through h5py."""
        stop = start + len(spectra)
        k = self.chunk
        first = -(-start // k) * k  # first chunk boundary >= start
        last = (stop // k) * k  # last chunk boundary <= stop
        data = self._datasets["data"]
        if first < last:
            if start < first:
                data[start:first] = spectra[: first - start]
            dcid = data.id
            for row in range(first, last, k):
                i = row - start
                dcid.write_direct_chunk((row, 0, 0), spectra[i : i + k])
                self.stats.direct_chunks += 1
            if last < stop:
                data[last:stop] = spectra[last - start :]
        else:
            data[start:stop] = spectra

    def _write_columns(
        self, blk: _Block, n: int, missing: npt.NDArray[np.bool_] | None
    ) -> None:
        """Metadata columns, derived quantities, ROIs: one write per dataset."""
        ds = self._datasets
        sl = slice(blk.start, blk.start + n)
        cols = self._columns(blk, n)
        if missing is not None:
            for col in cols.values():
                col[missing] = 0
        for name, _, _ in SCALERS:
            ds[name][sl] = cols[name]
        if "window_counts" in ds and "window_counts" in cols:
            ds["window_counts"][sl] = cols["window_counts"]
        dt = dead_time(
            cols["all_events"],
            cols["all_good"],
            cols["clock_ticks"],
            cols["reset_ticks"],
            cols["event_width"],
            clock_hz=self.clock_hz,
            warn=False,
        )
        derived = {
            "output_count_rate": dt.ocr,
            "dead_time_percent": dt.dead_percent,
            "live_time": dt.live_time,
            "input_count_rate": dt.icr,
        }
        for name, value in derived.items():
            if missing is not None:
                value[missing] = 0
            ds[name][sl] = value
        if self.n_rois:
            raw_sums = roi_sums(blk.spectra[:n], self.windows)
            corrected = correct(raw_sums, dt.dtc)
            if missing is not None:
                corrected[missing] = 0
            ds["roi"][sl] = raw_sums
            ds["roi_corrected"][sl] = corrected
        ds["frame_number"][sl] = blk.frame_number[:n]

    def _write_block(self, blk: _Block) -> list[tuple[int, int]]:
        n = blk.filled
        if n == 0:
            return []
        start, stop = blk.start, blk.start + n
        present = blk.present[:n]
        missing = ~present
        any_missing = bool(missing.any())
        spectra = blk.spectra[:n]
        if any_missing:
            spectra[missing] = 0  # rows never received stay zero on disk
        self._ensure_rows(stop)
        self.stats.blocks += 1
        # spectra: the rows allocated at open with pwrite, into their chunks;
        # rows past those (a dataset grown beyond its initial length) through
        # HDF5. The boundary is a chunk boundary: no chunk is written both ways.
        chunks = self._chunks
        split = min(stop, chunks.rows) if chunks is not None else start
        disk: Future[None] | None = None
        if chunks is not None and split > start:
            # on the disk thread, while this one writes the rest (an O_DIRECT
            # write waits for the device: ~11 ms per 16 MiB here)
            disk = self._disk.submit(chunks.write, start, spectra[: split - start])
            self.stats.raw_rows += split - start
        try:
            if split < stop:
                first = max(start, split)
                self._write_spectra_hdf5(first, spectra[first - start :])
            self._write_columns(blk, n, missing if any_missing else None)
        finally:
            if disk is not None:
                # the block goes back to the pool only once it is on disk
                wait_futures([disk])
        if disk is not None:
            disk.result()  # the disk thread's error, if any
        if not any_missing:
            return [(start, n)]
        rows = np.flatnonzero(present)
        return [(start + int(i), 1) for i in rows]
