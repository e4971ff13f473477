"""The file side: the disk's own ceiling, the codecs alone, and disk space.

:func:`bench_disk`: sequential writes of 16 MiB blocks the way the writer
makes them. :func:`bench_codecs`: each compression the writer offers, alone,
on chunks of the writer's shape made of simulated spectra, with one and two
threads (the codecs release the GIL). :func:`room_for`: whether a run's file
fits on the disk before it is started (an uncompressed fly scan allocates all
its chunks when the file opens).
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np
from _end_to_end import spectra_bytes
from _frames import simulated

__all__ = ["SPARE_BYTES", "bench_codecs", "bench_disk", "room_for"]

#: Disk space left free beside a run's file.
SPARE_BYTES: Final = 2 << 30


def bench_disk(directory: Path, total: int = 2 << 30) -> dict[str, Any]:
    """The disk's ceiling: sequential writes of 16 MiB blocks the way the writer
    does them (O_DIRECT where the file system allows it, else write + fadvise),
    to a file in the end-to-end runs' directory."""
    import mmap

    block = 16 << 20
    buf = mmap.mmap(-1, block)
    buf.write(np.random.default_rng(0).integers(0, 255, block, np.uint8).tobytes())
    path = directory / "disk-ceiling.bin"
    way = "O_DIRECT"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
        os.pwrite(fd, buf, 0)
    except (OSError, AttributeError):
        way = "write + fadvise"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        c0 = time.process_time()
        for i in range(total // block):
            os.pwrite(fd, buf, i * block)
            if way != "O_DIRECT" and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.fsync(fd)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        os.close(fd)
        path.unlink()
    return {
        "test": "disk ceiling (sequential write)",
        "source": way,
        "framing": "",
        "channels": 0,
        "frames": 0,
        "frames_per_s": 0.0,
        "mb_per_s": total / dt / 1e6,
        "us_per_frame": 0.0,
        "cpu_us_per_mib": cpu / (total / 2**20) * 1e6,
    }


def bench_codecs(channels: int = 4, chunks: int = 40) -> list[dict[str, Any]]:
    """Each compression alone on ``chunks`` chunks of simulated spectra, each
    chunk as many frames as the writer puts in one (about 1 MiB): MB/s of
    spectra with one and two threads, and the size ratio."""
    from ophyd_xspress.hdf5 import COMPRESSIONS, dataset_specs
    from ophyd_xspress.hdf5._codec import codec_for

    rows_per_chunk = dataset_specs(channels, 4096, 1)[0].chunk_rows()
    count = max(16, rows_per_chunk)
    _, frames = simulated(channels, count)
    spectra = np.stack([f.spectra for f in frames])
    distinct = [
        spectra[j : j + rows_per_chunk]
        for j in range(0, count - rows_per_chunk + 1, rows_per_chunk)
    ]
    parts = [distinct[i % len(distinct)] for i in range(chunks)]
    nbytes = sum(p.nbytes for p in parts)
    out: list[dict[str, Any]] = []
    for name in COMPRESSIONS:
        encode = codec_for(name).encode
        size = sum(len(bytes(encode(p))) for p in parts)
        for threads in (1, 2):
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(encode, parts[:threads]))  # warm up
                t0 = time.perf_counter()
                list(pool.map(encode, parts))
                dt = time.perf_counter() - t0
            n = chunks * rows_per_chunk
            out.append(
                {
                    "test": f"codec {name}, {threads} thread(s)",
                    "source": f"simulated, {rows_per_chunk}-frame chunks",
                    "framing": "-",
                    "channels": channels,
                    "frames": n,
                    "frames_per_s": n / dt,
                    "mb_per_s": nbytes / dt / 1e6,
                    "us_per_frame": dt / n * 1e6,
                    "compression": name,
                    "size_ratio": nbytes / size,
                }
            )
    return out


def room_for(
    directory: Path, channels: int, frames: int, compression: str | None
) -> str | None:
    """Why a run's file would not fit in ``directory`` (None: it fits): an
    uncompressed file is the spectra's bytes; a compressed one is taken as
    0.6 times what its codec makes of the spectra the publisher sends
    (measured here; a short run's file compresses less: its fixed parts)."""
    need = frames * spectra_bytes(channels)
    if compression is not None:
        need = int(need / (0.6 * _codec_ratio(channels, compression)))
    free = shutil.disk_usage(directory).free
    if need + SPARE_BYTES <= free:
        return None
    return (
        f"skipped: the file needs ~{need / 1e9:.0f} GB, {free / 1e9:.0f} GB free "
        f"in {directory} (choose another with --dir)"
    )


@cache
def _codec_ratio(channels: int, compression: str) -> float:
    """What ``compression`` makes of the publisher's simulated spectra."""
    from ophyd_xspress.hdf5._codec import codec_for

    _, frames = simulated(channels, 8)
    spectra = np.stack([f.spectra for f in frames])
    encode = codec_for(compression).encode  # type: ignore[arg-type]
    return spectra.nbytes / len(bytes(encode(spectra)))
