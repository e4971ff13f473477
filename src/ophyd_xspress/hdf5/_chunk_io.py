"""Write the rows of an HDF5 chunked dataset straight into the file.

The spectra are most of the bytes of a run (64 KiB a frame at 4 channels). Going
through libhdf5 for them costs CPU the receiver needs: h5py holds the GIL for
the whole call, including the kernel's copy into the page cache, and on a small
machine that copy (plus the page-cache write-back) costs about as much as
receiving the frame. So the ``data`` dataset is created with its chunks
allocated at once (``H5D_ALLOC_TIME_EARLY``, nothing written by HDF5:
``fill_time="never"``), the file offset of every chunk is read once, and the
writer thread writes whole rows with ``os.pwrite`` on its own descriptor:

* with ``O_DIRECT`` when the file system allows it and the row size, file
  offset and buffer are aligned (the writer's blocks are page-aligned): the
  device reads the block by DMA, no page-cache copy, ~4 µs of CPU per 64 KiB
  instead of ~33 µs measured here;
* otherwise with a plain ``pwrite`` (the page cache), still without the GIL.

HDF5 never reads or writes these chunks itself, so its caches cannot disagree
with the file, and the file is an ordinary chunked dataset for every reader.
Chunks allocated later (a dataset grown past its initial length) are not in the
table: the writer thread (:mod:`._thread`) writes those through HDF5.

The file has its full size from the start: chunks never written are holes of a
sparse file (zeros when read, no disk space), so a fly scan stopped early takes
only the space of what it wrote.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
import os
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np
import numpy.typing as npt

__all__ = ["ALIGN", "ChunkFile", "aligned_empty"]

log = logging.getLogger("ophyd_xspress.hdf5")

#: Alignment of offsets, lengths and buffers for ``O_DIRECT`` (a page: safe on
#: every device whose logical block size is 512 or 4096 bytes).
ALIGN: Final = 4096


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> npt.NDArray[Any]:
    """A C-contiguous array on fresh, page-aligned memory (for ``O_DIRECT``)."""
    dt = np.dtype(dtype)
    count = math.prod(shape)
    buf = mmap.mmap(-1, max(1, count * dt.itemsize))
    return np.frombuffer(buf, dt, count=count).reshape(shape)


class ChunkFile:
    """The early-allocated chunks of one dataset, written with ``pwrite``.

    Build it with :meth:`open` after the dataset exists (and before anything
    else writes its chunks). ``rows`` is how many leading rows it covers: whole
    chunks of the dataset's extent at that time.
    """

    def __init__(
        self,
        path: Path,
        offsets: npt.NDArray[np.int64],
        chunk_rows: int,
        row_bytes: int,
        *,
        o_direct: bool,
    ) -> None:
        self.path = path
        self.offsets = offsets
        self.chunk_rows = chunk_rows
        self.row_bytes = row_bytes
        self.rows = len(offsets) * chunk_rows
        self.bytes_written = 0
        self.writes = 0
        self.direct_writes = 0
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self._dfd: int | None = None
        aligned = row_bytes % ALIGN == 0 and not (offsets % ALIGN).any()
        if o_direct and aligned and hasattr(os, "O_DIRECT"):
            try:
                self._dfd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
            except OSError as exc:  # e.g. a file system without O_DIRECT
                log.info(
                    "%s: no O_DIRECT (%s); spectra go through the page cache", path, exc
                )

    @classmethod
    def open(
        cls, path: Path, dataset: h5py.Dataset, *, o_direct: bool = True
    ) -> ChunkFile | None:
        """The chunk table of ``dataset``, or None when it cannot be used
        (chunks not all allocated, filtered, or an h5py without ``chunk_iter``)."""
        dsid = dataset.id
        chunks = dataset.chunks
        if chunks is None or not hasattr(dsid, "chunk_iter"):
            return None
        k = int(chunks[0])
        if any(
            int(c) != int(s) for c, s in zip(chunks[1:], dataset.shape[1:], strict=True)
        ):
            return None  # chunked along a frame's own axes too
        row_bytes = math.prod(dataset.shape[1:]) * dataset.dtype.itemsize
        n = -(-int(dataset.shape[0]) // k)
        offsets = np.full(n, -1, np.int64)
        bad: list[str] = []

        def visit(info: Any) -> None:
            index = int(info.chunk_offset[0]) // k
            if info.size != k * row_bytes or info.filter_mask or not 0 <= index < n:
                bad.append(str(info))
            else:
                offsets[index] = int(info.byte_offset)

        dsid.chunk_iter(visit)
        if bad or (offsets < 0).any():
            log.warning(
                "%s: %s chunks not laid out as expected (%s); writing through HDF5",
                path,
                dataset.name,
                bad[:1] or "some chunks not allocated",
            )
            return None
        return cls(path, offsets, k, row_bytes, o_direct=o_direct)

    @property
    def o_direct(self) -> bool:
        return self._dfd is not None

    def close(self) -> None:
        for name in ("_fd", "_dfd"):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                os.close(fd)

    def write(self, row: int, rows: npt.NDArray[Any]) -> None:
        """Write ``rows`` (C-contiguous, whole rows) at rows ``row ..`` of the
        dataset; all of them must be below :attr:`rows`."""
        n = len(rows)
        if n == 0:
            return
        if row < 0 or row + n > self.rows:
            raise ValueError(
                f"{self.path}: rows {row}..{row + n - 1} outside the {self.rows} "
                "rows allocated up front"
            )
        if not rows.flags.c_contiguous or rows[0].nbytes != self.row_bytes:
            raise ValueError(
                f"{self.path}: rows of {rows[0].nbytes} bytes, expected "
                f"{self.row_bytes} (C-contiguous)"
            )
        k, rb = self.chunk_rows, self.row_bytes
        view = rows.data.cast("B")
        address = int(rows.ctypes.data)
        # runs of rows whose chunks follow each other in the file: one pwrite each
        i = 0
        while i < n:
            r = row + i
            c = r // k
            offset = int(self.offsets[c]) + (r - c * k) * rb
            end = min(n, (c + 1) * k - row)
            while end < n and self.offsets[c + 1] == self.offsets[c] + k * rb:
                c += 1
                end = min(n, (c + 1) * k - row)
            self._pwrite(view[i * rb : end * rb], offset, address + i * rb)
            i = end

    def _pwrite(self, view: memoryview, offset: int, address: int) -> None:
        self.writes += 1
        self.bytes_written += len(view)
        dfd = self._dfd
        if dfd is not None and _aligned(len(view), offset, address):
            try:
                while view:
                    done = os.pwrite(dfd, view, offset)
                    view, offset, address = view[done:], offset + done, address + done
                    if view and not _aligned(len(view), offset, address):
                        break  # a short write left the rest unaligned
                self.direct_writes += 1
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # O_DIRECT refused; others are real
                    raise
                log.info(
                    "%s: O_DIRECT write refused (%s); spectra go through the page "
                    "cache",
                    self.path,
                    exc,
                )
                self._dfd = None
                os.close(dfd)
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"{self.path}: spectra written after close")
        while view:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done


def _aligned(length: int, offset: int, address: int) -> bool:
    return (length | offset | address) % ALIGN == 0
