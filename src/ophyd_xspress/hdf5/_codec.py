"""Compressed chunks of the spectra, made off the receiver thread.

The spectra (``data``, and ``summed_spectrum`` when written) can be compressed
with an HDF5 filter every h5py reads once :mod:`hdf5plugin` is imported
(tiled's HDF5 adapter imports it; so does this package):

=========  ===========================================  ==========================
name       HDF5 filter                                  made here by
=========  ===========================================  ==========================
bslz4      bitshuffle + LZ4 (32008), as Dectris and     ``bitshuffle.compress_lz4``
           the NeXus/HDF5 detector world write it       with the filter's header
blosc      Blosc 1 (32001): LZ4, bit shuffle            ``numcodecs.Blosc``
gzip       shuffle (2) + deflate (1), level 1, as       a byte shuffle and
           EPICS areaDetector writes zlib               ``zlib.compress``
=========  ===========================================  ==========================

Each codec releases the GIL while it compresses. The writer thread hands the
whole chunks of a block to a small pool (:data:`THREADS` threads) and writes
what comes back with ``write_direct_chunk``, one chunk at a time on its own
thread (HDF5 is not thread-safe). A chunk a block fills only in part (the
ragged ends of a block handed over early, a late frame) goes through h5py,
which runs the same filter inside HDF5.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import h5py
import numpy as np
import numpy.typing as npt

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "THREADS",
    "ChunkWriter",
    "Codec",
    "Compression",
    "codec_for",
]

Compression = Literal["bslz4", "blosc", "gzip"]

#: The compressions the writer offers.
COMPRESSIONS: Final[tuple[Compression, ...]] = get_args(Compression)
#: The detector's default: Blosc (LZ4, bit shuffle; as Odin writes) was the
#: fastest codec end to end (8,045 frames/s at 4 channels and 1,404 at 36,
#: against bslz4's 7,464 and 1,087, gzip's 5,011 and 677) and the smallest
#: (17.5x; docs/benchmarks.md); h5py reads it once ``hdf5plugin`` is imported.
DEFAULT_COMPRESSION: Final[Compression] = "blosc"

#: Threads compressing the chunks of one file.
THREADS: Final = 2

#: zlib level of "gzip". Measured on simulated spectra (1 MiB chunks): level 1
#: compresses 8.1x in 6 ms, level 4 8.5x in 11 ms, level 6 (zlib's default)
#: 8.7x in 19 ms: level 1 keeps 93 % of the gain at a third of the time.
GZIP_LEVEL: Final = 1

Encoder = Callable[[npt.NDArray[Any]], bytes | memoryview]


@dataclass(frozen=True)
class Codec:
    """One compression: the h5py dataset options that declare its filter, and
    the function that makes a compressed chunk the filter can read."""

    name: Compression
    #: Keyword arguments of ``create_dataset`` (the filter and its options).
    filter_options: Mapping[str, Any]
    encode: Encoder


def _bitshuffle_block(itemsize: int) -> int:
    """The bitshuffle library's default block size in elements (8 KiB of
    elements, a multiple of 8, at least 128): what its HDF5 filter uses."""
    return max(128, (8192 // itemsize) // 8 * 8)


def _encode_bslz4(chunk: npt.NDArray[Any]) -> bytes:
    import bitshuffle

    flat = np.ascontiguousarray(chunk).reshape(-1)
    block = _bitshuffle_block(flat.itemsize)
    body = bitshuffle.compress_lz4(flat, block)
    # the HDF5 filter's header: bytes before compression (uint64) and the
    # block size in bytes (uint32), big-endian
    return struct.pack(">QI", flat.nbytes, block * flat.itemsize) + body.tobytes()


def _encode_gzip(chunk: npt.NDArray[Any]) -> bytes:
    flat = np.ascontiguousarray(chunk).reshape(-1)
    # HDF5's shuffle filter: byte 0 of every element, then byte 1, ...
    shuffled = flat.view(np.uint8).reshape(-1, flat.itemsize).T.copy()
    return zlib.compress(shuffled.data, GZIP_LEVEL)


def codec_for(name: Compression) -> Codec:
    """The codec called ``name`` (one of :data:`COMPRESSIONS`)."""
    import hdf5plugin  # registers the filters with the HDF5 h5py uses

    if name == "bslz4":
        return Codec(name, dict(hdf5plugin.Bitshuffle(cname="lz4")), _encode_bslz4)
    if name == "blosc":
        from numcodecs import Blosc

        blosc = Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)
        options = hdf5plugin.Blosc(
            cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE
        )
        return Codec(name, dict(options), blosc.encode)
    if name == "gzip":
        options = {"compression": "gzip", "compression_opts": GZIP_LEVEL}
        return Codec(name, {**options, "shuffle": True}, _encode_gzip)
    raise ValueError(
        f"compression must be None or one of {', '.join(COMPRESSIONS)}, not {name!r}"
    )


class ChunkWriter:
    """Writes rows of one chunked dataset through HDF5: whole chunks with
    ``write_direct_chunk`` (compressed in ``pool`` when ``codec`` is given),
    the rows of chunks written only in part through h5py."""

    def __init__(
        self,
        dataset: h5py.Dataset,
        codec: Codec | None,
        pool: ThreadPoolExecutor | None,
    ) -> None:
        if codec is not None and pool is None:
            raise ValueError("a compressing ChunkWriter needs a thread pool")
        self.dataset = dataset
        self.codec = codec
        self.pool = pool
        chunks = dataset.chunks
        self.chunk_rows = int(chunks[0]) if chunks else 1
        #: Whole chunks written, and their bytes as stored.
        self.chunks_written = 0
        self.bytes_stored = 0

    def write(self, start: int, rows: npt.NDArray[Any]) -> None:
        """Rows ``start .. start + len(rows) - 1`` (the dataset is long enough)."""
        stop = start + len(rows)
        k = self.chunk_rows
        first = -(-start // k) * k  # first chunk boundary >= start
        last = (stop // k) * k  # last chunk boundary <= stop
        ds = self.dataset
        if first >= last:
            ds[start:stop] = rows
            return
        if start < first:
            ds[start:first] = rows[: first - start]
        parts = [rows[row - start : row - start + k] for row in range(first, last, k)]
        payloads: list[Any]
        if self.codec is None or self.pool is None:
            payloads = [np.ascontiguousarray(p) for p in parts]
        else:
            payloads = list(self.pool.map(self.codec.encode, parts))
        offset = (0,) * (ds.ndim - 1)
        dcid = ds.id
        for row, payload in zip(range(first, last, k), payloads, strict=True):
            dcid.write_direct_chunk((row, *offset), payload)
            self.chunks_written += 1
            self.bytes_stored += memoryview(payload).nbytes
        if last < stop:
            ds[last:stop] = rows[last - start :]
