"""Blocks of rows: the pool they come from, and how frames fill them.

The receiver thread copies each frame into the current :class:`Block` (rows
``start .. start + capacity - 1`` of the file): its spectra, its frame number,
and its metadata. When the frame's metadata is a
:class:`~ophyd_xspress.protocol.FrameMetadata` whose layout has every column
the file stores, only the raw pickle bytes are copied (one ``memcpy``); the
writer thread later views the columns of the whole block at once with
:meth:`MetadataLayout.columns <ophyd_xspress.protocol.MetadataLayout.columns>`.
Any other metadata (a dict, another layout) is copied column by column.

:class:`Batcher` decides which block a row goes to and when a block is handed
to the writer thread: when full, when a frame for a row past it arrives, or
once its first frame is ``flush_period`` old (:meth:`Batcher.flush`). A frame
for a row already handed over is a *straggler*, written on its own.

:class:`BlockPool` bounds the memory: at most ``max_blocks`` blocks exist; a
block returns to the pool only once the writer thread has written it (its
spectra on disk), and the receiver waits for one when all are in use
(back-pressure), at most :data:`STUCK_TIMEOUT`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ..protocol import Frame, FrameMetadata, MetadataLayout
from ..transport import DurableRows
from ._chunk_io import aligned_empty
from ._lossless import describe_values, exact_cast, lossless
from ._stats import WriterStats

__all__ = [
    "BLOCK_BYTES",
    "MAX_BLOCKS",
    "PREFAULT_BLOCKS",
    "STUCK_TIMEOUT",
    "Batcher",
    "Block",
    "BlockPool",
    "RowFiller",
    "Straggler",
]

log = logging.getLogger("ophyd_xspress.hdf5")

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


@dataclass(eq=False)
class Block:
    """Rows ``start .. start + capacity - 1`` of the file, filled by the receiver."""

    spectra: npt.NDArray[Any]  # (rows, channels, bins), page-aligned
    columns: dict[str, npt.NDArray[Any]]  # the stream's metadata columns
    frame_number: npt.NDArray[np.int64]
    present: npt.NDArray[np.bool_]
    via_raw: npt.NDArray[np.bool_]  # rows whose metadata is in ``meta``
    pooled: bool
    start: int = 0
    capacity: int = 0
    filled: int = 0  # highest filled index + 1
    born: float = 0.0
    layout: MetadataLayout | None = None  # the layout of the raw rows
    meta: npt.NDArray[np.uint8] | None = None  # (rows, layout.size) raw pickles
    #: Some row's frame carried window_counts.
    window_counts: bool = False

    def reset(self, start: int, capacity: int) -> None:
        self.start, self.capacity, self.filled = start, capacity, 0
        self.born = time.monotonic()
        self.layout = None
        self.window_counts = False
        self.present[:] = False
        self.via_raw[:] = False
        self.frame_number[:] = -1
        for col in self.columns.values():
            col[:] = 0

    def use_layout(self, layout: MetadataLayout) -> None:
        """Keep the raw pickles of frames of ``layout`` in this block."""
        self.layout = layout
        if self.meta is None or self.meta.shape[1] != layout.size:
            self.meta = np.empty((len(self.present), layout.size), np.uint8)

    def metadata_columns(self, n: int) -> dict[str, npt.NDArray[Any]]:
        """The stream's columns of the first ``n`` rows (views of this block):
        rows kept as raw pickles are copied in from their layout's columns."""
        columns = {name: col[:n] for name, col in self.columns.items()}
        raw = self.via_raw[:n]
        if self.layout is None or self.meta is None or not raw.any():
            return columns
        views = self.layout.columns(self.meta, n)
        every = bool(raw.all())
        for name, col in columns.items():
            view = views.get(name)
            if view is None:
                continue
            if every:
                np.copyto(col, view, casting="unsafe")
            else:
                where = raw.reshape((n,) + (1,) * (view.ndim - 1))
                np.copyto(col, view, casting="unsafe", where=where)
        return columns


class Straggler(NamedTuple):
    """A frame for a row already handed to the writer thread."""

    row: int
    frame: Frame


class BlockPool:
    """At most ``max_blocks`` blocks of ``rows`` rows, reused warm.

    ``columns``: the stream's metadata columns, name to (per-frame shape, dtype).
    """

    def __init__(
        self,
        *,
        name: str,
        rows: int,
        channels: int,
        bins: int,
        spectra_dtype: np.dtype[Any],
        columns: Mapping[str, tuple[tuple[int, ...], str]],
        max_blocks: int,
        durable: DurableRows,
        stats: WriterStats,
    ) -> None:
        self.name = name
        self.rows = rows
        self.channels = channels
        self.bins = bins
        self.spectra_dtype = spectra_dtype
        self.columns = dict(columns)
        self.max_blocks = max_blocks
        self.durable = durable
        self.stats = stats
        self._free: queue.Queue[Block] = queue.Queue()

    def alloc(self, rows: int, *, pooled: bool) -> Block:
        """A new block (``pooled``: one of the pool's, counted against its bound)."""
        return Block(
            spectra=aligned_empty((rows, self.channels, self.bins), self.spectra_dtype),
            columns={
                name: np.zeros((rows, *shape), dtype)
                for name, (shape, dtype) in self.columns.items()
            },
            frame_number=np.full(rows, -1, np.int64),
            present=np.zeros(rows, bool),
            via_raw=np.zeros(rows, bool),
            pooled=pooled,
        )

    def prefault(self, count: int) -> None:
        """Make ``count`` blocks now with their memory touched, so the first
        blocks of a run are not faulted in while frames pour in."""
        for _ in range(min(count, self.max_blocks - self.stats.blocks_made)):
            blk = self.alloc(self.rows, pooled=True)
            blk.spectra.fill(0)
            self.stats.blocks_made += 1
            self._free.put(blk)

    def give_back(self, blk: Block) -> None:
        """``blk`` was written (its spectra are on disk): reuse it."""
        if blk.pooled:
            self._free.put(blk)

    def take(self) -> Block:
        """A block for the receiver: a free one first (its memory is warm:
        fresh memory costs ~2.5 ms/MiB to fault in on a VM, more than the
        copy), a new one while under the bound, else wait for the writer.

        Raises the writer's error if it fails meanwhile, or a
        :class:`TimeoutError` after :data:`STUCK_TIMEOUT` without a free block.
        """
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        if self.stats.blocks_made < self.max_blocks:
            self.stats.blocks_made += 1
            return self.alloc(self.rows, pooled=True)
        self.stats.pool_waits += 1
        deadline = time.monotonic() + STUCK_TIMEOUT
        while True:
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                if self.durable.error is None and time.monotonic() > deadline:
                    self.durable.fail(
                        TimeoutError(
                            f"{self.name}: the HDF5 writer wrote nothing for "
                            f"{STUCK_TIMEOUT:.0f} s (disk full or stalled?)"
                        )
                    )
                error = self.durable.error
                if error is not None:
                    raise error from None


class RowFiller:
    """Checks one frame's metadata against the file, and copies the frame into
    one row of a block (any thread).

    ``columns``: the stream's metadata columns the file can store, name to
    (per-frame shape, dtype); ``window_counts`` among them. ``spectra_dtype``:
    the file's spectra.
    """

    def __init__(
        self,
        name: str,
        channels: int,
        columns: Mapping[str, tuple[tuple[int, ...], str]],
        spectra_dtype: np.dtype[Any] | None = None,
    ) -> None:
        self.name = name
        self.channels = channels
        self.spectra_dtype = np.dtype(spectra_dtype or "<u4")
        self.dtypes = {c: np.dtype(dtype) for c, (_, dtype) in columns.items()}
        self.scalers = tuple(c for c in columns if c != "window_counts")
        self.window_counts = "window_counts" in columns
        #: A frame with window_counts was filled (set by the receiver thread).
        self.carried_window_counts = False
        self.warned_shape = False
        #: Per metadata layout: its scalers are stored without a per-frame check.
        self._exact: dict[MetadataLayout, bool] = {}

    def refusal(self, frame: Frame) -> str | None:
        """Why the file cannot store ``frame`` as it is (values its dtypes would
        change, a scaler missing or of another shape), or None."""
        spectra = frame.spectra
        if spectra.dtype != self.spectra_dtype and not lossless(
            spectra, self.spectra_dtype
        ):
            return (
                f"spectra {describe_values(spectra)} cannot be stored losslessly "
                f"in the {self.spectra_dtype} file {self.name}"
            )
        problem = self._metadata_refusal(frame)
        return None if problem is None else f"{problem} (file {self.name})"

    def _metadata_refusal(self, frame: Frame) -> str | None:
        md = frame.metadata
        if isinstance(md, FrameMetadata):
            exact = self._exact.get(md.layout)
            if exact is None:
                exact = self._exact[md.layout] = self._layout_exact(md.layout)
            if exact:
                return None
        for name in self.scalers:
            values = md.get(name)
            if values is None:
                return f"its metadata lacks {name}"
            values = np.asarray(values)
            if values.shape != (self.channels,):
                return (
                    f"scaler {name} has shape {values.shape}, the file stores "
                    f"({self.channels},)"
                )
            if not lossless(values, self.dtypes[name]):
                return (
                    f"scaler {name} {describe_values(values)} cannot be stored "
                    f"losslessly as {self.dtypes[name]}"
                )
        wc = md.get("window_counts")
        if wc is not None and self.window_counts:
            wc = np.asarray(wc)
            target = self.dtypes["window_counts"]
            if wc.shape == (2, self.channels) and not lossless(wc, target):
                return (
                    f"window_counts {describe_values(wc)} cannot be stored "
                    f"losslessly as {target}"
                )
        return None

    def _layout_exact(self, layout: MetadataLayout) -> bool:
        """Every stored field of ``layout`` casts to its column exactly."""
        fields = {f.name: f for f in layout.fields}
        for name, dtype in self.dtypes.items():
            f = fields.get(name)
            if f is None:
                if name != "window_counts":
                    return False
            elif not exact_cast(f.dtype, dtype):
                return False
        return True

    def fill(self, blk: Block, i: int, frame: Frame) -> None:
        md = frame.metadata
        if isinstance(md, FrameMetadata) and self._raw_row(blk, i, md):
            blk.via_raw[i] = True
            layout = blk.layout
            if self.window_counts and layout and "window_counts" in layout.names:
                blk.window_counts = True
        else:
            blk.window_counts |= self._fill_columns(blk.columns, i, md)
        if blk.window_counts:
            self.carried_window_counts = True
        blk.spectra[i] = frame.spectra
        blk.frame_number[i] = frame.frame
        blk.present[i] = True
        if i >= blk.filled:
            blk.filled = i + 1

    def _raw_row(self, blk: Block, i: int, md: FrameMetadata) -> bool:
        """Keep the pickle as is, when its layout is the block's."""
        layout = md.layout
        if blk.layout is None and self._fits(layout):
            blk.use_layout(layout)
        if layout is not blk.layout or blk.meta is None:
            return False
        blk.meta[i] = np.frombuffer(md.raw, np.uint8)
        return True

    def _fill_columns(
        self, columns: dict[str, npt.NDArray[Any]], i: int, md: Mapping[str, Any]
    ) -> bool:
        """Copy the stored columns; True when window_counts were among them."""
        for name in self.scalers:
            columns[name][i] = md[name]
        wc = md.get("window_counts")
        if not self.window_counts or wc is None:
            return False
        if wc.shape == (2, self.channels):
            columns["window_counts"][i] = wc
            return True
        if not self.warned_shape:
            self.warned_shape = True
            log.warning(
                "%s: window_counts of shape %s not written (expected %s)",
                self.name,
                wc.shape,
                (2, self.channels),
            )
        return False

    def _fits(self, layout: MetadataLayout) -> bool:
        """The raw path needs every scaler with shape (channels,), cast exactly."""
        shapes = {f.name: tuple(f.shape) for f in layout.fields}
        if any(shapes.get(name) != (self.channels,) for name in self.scalers):
            return False
        wc = shapes.get("window_counts")
        if wc is not None and wc != (2, self.channels) and self.window_counts:
            return False
        return self._exact.get(layout, False) or self._layout_exact(layout)


class Batcher:
    """Frames to blocks, on the receiver thread (the caller holds the lock).

    ``submit`` hands a full block, or a straggler, to the writer thread.
    """

    def __init__(
        self,
        *,
        pool: BlockPool,
        filler: RowFiller,
        chunk_rows: int,
        submit: Callable[[Block | Straggler], None],
        stats: WriterStats,
    ) -> None:
        self.pool = pool
        self.filler = filler
        self.chunk_rows = chunk_rows
        self.submit = submit
        self.stats = stats
        self._current: Block | None = None
        self._next_row = 0  # rows below this were handed to the writer thread
        self._put_since_flush = False

    def put(self, row: int, frame: Frame) -> None:
        self._put_since_flush = True
        blk = self._current
        if blk is None or not blk.start <= row < blk.start + blk.capacity:
            if row < self._next_row or (blk is not None and row < blk.start):
                # a late frame for rows already handed over: its own write
                self.stats.stragglers += 1
                self.submit(Straggler(row, frame))
                return
            self.handoff()
            blk = self._new_block(row)
        self.filler.fill(blk, row - blk.start, frame)
        if blk.filled == blk.capacity:  # a hole still open becomes a straggler
            self.handoff()

    def flush(self, flush_period: float) -> None:
        """Hand the partial block over once it is ``flush_period`` old, or at
        once when nothing was put since the last flush (the stream is quiet)."""
        blk = self._current
        if blk is not None and blk.filled:
            quiet = not self._put_since_flush
            if quiet or time.monotonic() - blk.born >= flush_period:
                self.handoff()
        self._put_since_flush = False

    def handoff(self) -> None:
        """Hand the current block (if any rows are in it) to the writer."""
        blk, self._current = self._current, None
        if blk is None:
            return
        if not blk.filled:
            self.pool.give_back(blk)
            return
        self._next_row = max(self._next_row, blk.start + blk.filled)
        self.submit(blk)

    def _new_block(self, row: int) -> Block:
        k = self.chunk_rows
        start = max(self._next_row, row - row % k)
        end = (start // k) * k + self.pool.rows  # ends on a chunk boundary
        blk = self.pool.take()
        blk.reset(start, min(end - start, self.pool.rows))
        self._current = blk
        return blk
