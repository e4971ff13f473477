# ruff: noqa: N803 - RE is the conventional RunEngine fixture name
"""100 small fly scans into HDF5 in a row leak nothing: no file descriptor
(ZeroMQ socket, HDF5 file), thread or asyncio task; no ``.h5`` file is left
open; and every one of the 100 files holds its own series, bit for bit.

The limits are those of ``tests/device/test_errors.py``'s step-scan loops."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from ophyd_async.core import TriggerInfo

FRAMES = 5
LIVETIME = 0.001
#: pytango's shared worker pool grows on demand up to 20 threads: not ours
TANGO_POOL = "_PyTangoThreadPoolExecutor"
TANGO_POOL_MAX = 20


async def _n_tasks() -> int:
    return len(asyncio.all_tasks())


def _resources(in_loop: Any) -> tuple[int, int, int]:
    """Open file descriptors, threads (bar pytango's pool), asyncio tasks."""
    gc.collect()
    time.sleep(0.1)  # let finished threads leave the thread table
    threads = threading.enumerate()
    pool = sum(t.name.startswith(TANGO_POOL) for t in threads)
    assert pool <= TANGO_POOL_MAX
    return psutil.Process().num_fds(), len(threads) - pool, in_loop(_n_tasks)


def _uri_path(uri: str) -> Path:
    prefix = "file://localhost"
    assert uri.startswith(prefix), uri
    return Path(uri[len(prefix) :])


def _open_h5() -> list[str]:
    return [f.path for f in psutil.Process().open_files() if f.path.endswith(".h5")]


def test_100_fly_scans_into_hdf5_leak_nothing(
    RE, sim, make_xspress, in_loop, docs, fly, check_file
):
    xspress = make_xspress()
    runs: list[tuple[str, int]] = []  # (file, series)

    def scan() -> None:
        docs.clear()
        series = sim.control.series_index + 1
        RE(fly(xspress, TriggerInfo(number_of_events=FRAMES, livetime=LIVETIME)))
        assert docs["stop"][0]["exit_status"] == "success"
        assert xspress.run_summaries[-1]["frames_received"] == FRAMES
        (uri,) = {r["uri"] for r in docs["stream_resource"]}
        runs.append((uri, series))

    for _ in range(5):  # warm-up: Tango client threads, caches
        scan()
    before = _resources(in_loop)
    for _ in range(100):
        scan()
    after = _resources(in_loop)
    fds, threads, tasks = (a - b for a, b in zip(after, before, strict=True))
    assert fds <= 4, f"file descriptors grew by {fds}: {before} -> {after}"
    assert threads <= 1, f"threads grew by {threads}: {before} -> {after}"
    assert tasks <= 2, f"asyncio tasks grew by {tasks}: {before} -> {after}"
    assert _open_h5() == []
    assert not [t for t in threading.enumerate() if t.name.startswith("xspress-rx")]
    docs.assert_valid()
    # 105 distinct files, each with its own series' frames, bit for bit
    assert len({uri for uri, _ in runs}) == 105
    for uri, series in runs[5:]:
        assert check_file(_uri_path(uri), sim, series) == FRAMES, uri
