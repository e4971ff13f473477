"""Counters of one writer's work, for tests, benchmarks and diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WriterStats"]


@dataclass
class WriterStats:
    """Each counter is written by one thread only (named in its comment)."""

    blocks: int = 0  # blocks written (writer thread)
    blocks_made: int = 0  # pool blocks allocated, at open or on demand (receiver)
    direct_chunks: int = 0  # whole chunks written with write_direct_chunk (writer)
    raw_rows: int = 0  # rows written with pwrite into early-allocated chunks (writer)
    file_flushes: int = 0  # (writer)
    stragglers: int = 0  # frames for rows already handed over (receiver)
    pool_waits: int = 0  # times the receiver waited for a free block (receiver)
    refused: int = 0  # frames refused: not storable losslessly (receiver)
    compressed_chunks: int = 0  # chunks compressed off the writer thread (writer)
    stored_bytes: int = 0  # bytes of the whole chunks written through HDF5 (writer)
    write_seconds: float = 0.0  # (writer)
    flush_seconds: float = 0.0  # (writer)
