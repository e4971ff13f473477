"""End-to-end: a fast publisher process -> passive ``XspressDetector`` fly scan
-> HDF5 -> StreamDatum, each run in a fresh process (its peak RSS is its own).

The publisher binds a PUSH socket and sends a header, ``n`` frames (8 distinct
simulated ones, renumbered) and ``series_end`` as fast as ZeroMQ lets it; the
detector (passive, PULL) runs ``prepare``, ``kickoff`` and
``collect_while_completing`` (every 0.5 s) and writes every frame to HDF5;
afterwards the rows with a frame number in the file are counted.

Besides frames/s, each row has: frames lost, the consumer's and the sender's
CPU time per frame (each process, its ZeroMQ I/O thread included), the file's
bytes on disk per frame, the consumer's peak RSS, its RSS before the run
(``baseline_rss_mb``) and what the writer's block pool and the socket's queue
may add to it (``pool_mb``, ``queue_mb``: see :mod:`_rss`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _frames import FRAME_KEY, FRAME_RE, encoded

if TYPE_CHECKING:
    from ophyd_xspress import XspressDetector

__all__ = ["bench_end_to_end", "run_consumer", "spectra_bytes"]

#: Bytes of one frame's spectra (4096 uint32 bins a channel).
BYTES_PER_CHANNEL = 4096 * 4


def spectra_bytes(channels: int) -> int:
    return channels * BYTES_PER_CHANNEL


def _fast_publisher(endpoint: str, channels: int, n: int, ready: Any, cpu: Any) -> None:
    """Another process: a header, ``n`` simulated frames (8 distinct ones,
    renumbered) and series_end on a bound PUSH socket, as fast as zmq allows."""
    import zmq

    header, pool = encoded(channels, 8)
    frames = [m[0] for m in pool]  # multipart: one 3-part message a frame
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.bind(endpoint)
    ready.wait()
    sock.send_multipart(header[0])
    # each pooled JSON part split around its frame number once, not per frame
    split = [FRAME_RE.split(m[0], maxsplit=1) for m in frames]
    t0 = time.process_time()  # this process, its ZeroMQ I/O thread included
    for i in range(n):
        m = frames[i % 8]
        before, after = split[i % 8]
        head = before + FRAME_KEY + b"%d" % i + after
        sock.send_multipart([head, m[1], m[2]], copy=False)
    sock.send_multipart([b'{"htype": "series_end"}'])
    sock.close(linger=-1)
    ctx.term()
    cpu.value = time.process_time() - t0


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _recording_writers() -> Iterator[list[Any]]:
    """The HDF5 writers opened meanwhile (which way their spectra went, their
    block pool): the detector keeps its writer private."""
    from ophyd_xspress import hdf5

    writers: list[Any] = []
    open_file = hdf5.Hdf5FrameWriter.open

    def record_open(self: Any) -> None:
        writers.append(self)
        open_file(self)

    hdf5.Hdf5FrameWriter.open = record_open  # type: ignore[method-assign]
    try:
        yield writers
    finally:
        hdf5.Hdf5FrameWriter.open = open_file  # type: ignore[method-assign]


class _RssSampler(threading.Thread):
    """RSS (MB) each time the receiver passes a multiple of ``every`` frames."""

    def __init__(self, receiver: Any, every: int) -> None:
        super().__init__(daemon=True)
        self.receiver = receiver
        self.every = every
        self.rss: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        nxt = self.every
        while not self.done.wait(0.02):
            n = self.receiver.messages - 1  # the header, then one message a frame
            while n >= nxt:
                self.rss[nxt] = me.memory_info().rss / 1e6
                nxt += self.every


def _file_facts(directory: Path) -> tuple[int, int]:
    """Rows with a frame number in the run's file, and the disk space its
    files take (their allocated blocks); the files are deleted."""
    import h5py
    import hdf5plugin  # noqa: F401 - compressed files' filters

    files = list(directory.glob("*.h5"))
    with h5py.File(files[0], "r") as f:
        numbers = f["/entry/instrument/xspress3/frame_number"]
        if not isinstance(numbers, h5py.Dataset):
            raise TypeError(f"{files[0]}: frame_number is not a dataset")
        on_disk = int((numbers[:] >= 0).sum())
    file_bytes = sum(os.stat(f).st_blocks * 512 for f in files)
    for f in files:
        f.unlink()
    return on_disk, file_bytes


def run_consumer(
    channels: int,
    n_frames: int,
    directory: str,
    out: Any,
    rss_every: int,
    compression: str | None = None,
) -> None:
    """In a fresh process: the publisher process -> passive XspressDetector fly
    scan -> HDF5 -> StreamDatum. Puts a result row on ``out``."""
    import resource

    import bluesky.plan_stubs as bps
    import psutil
    from bluesky import RunEngine
    from ophyd_async.core import TriggerInfo

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    spawn = mp.get_context("spawn")
    ready = spawn.Event()
    sender_cpu = spawn.Value("d", 0.0)
    proc = spawn.Process(
        target=_fast_publisher, args=(endpoint, channels, n_frames, ready, sender_cpu)
    )
    proc.start()
    RE = RunEngine({}, call_returns_result=True)  # noqa: N806
    xspress = _detector(endpoint, channels, Path(directory), compression)
    datums = 0

    def count_docs(name: str, doc: Any) -> None:
        nonlocal datums
        datums += name == "stream_datum"

    RE.subscribe(count_docs)
    baseline_rss = psutil.Process().memory_info().rss / 1e6
    started: list[float] = []

    def plan() -> Any:
        yield from bps.stage(xspress, wait=True)
        yield from bps.open_run()
        info = TriggerInfo(number_of_events=n_frames)
        yield from bps.prepare(xspress, info, wait=True)
        yield from bps.declare_stream(xspress, name="primary", collect=True)
        yield from bps.kickoff(xspress, wait=True)
        started.extend((time.perf_counter(), time.process_time()))
        ready.set()
        yield from bps.collect_while_completing([xspress], [xspress], flush_period=0.5)
        yield from bps.close_run()
        yield from bps.unstage(xspress, wait=True)

    sampler = _RssSampler(xspress.receiver, rss_every)
    sampler.start()
    with _recording_writers() as writers:
        RE(plan())
    dt = time.perf_counter() - started[0]
    consumer_cpu = time.process_time() - started[1]
    sampler.done.set()
    proc.join(60)
    received = int(xspress.run_summaries[-1]["frames_received"])  # type: ignore[call-overload]
    on_disk, file_bytes = _file_facts(Path(directory))
    row = _row(channels, n_frames, compression, dt, consumer_cpu, sender_cpu.value)
    row.update(
        frames_lost=n_frames - received,
        frames_on_disk=on_disk,
        stream_datum_docs=datums,
        file_bytes=file_bytes,
        file_bytes_per_frame=file_bytes / n_frames,
        size_ratio=n_frames * spectra_bytes(channels) / max(1, file_bytes),
        # ru_maxrss is in KiB on Linux; MB here are 1e6 bytes, as psutil's
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
        baseline_rss_mb=baseline_rss,
        rss_mb_by_frames=sampler.rss,
        **_memory_bounds(writers, xspress.receiver.queue_messages, channels),
    )
    out.put(row)


def _detector(
    endpoint: str, channels: int, directory: Path, compression: str | None
) -> XspressDetector:
    """A passive XspressDetector on ``endpoint`` writing to ``directory``."""
    from ophyd_async.core import init_devices

    from ophyd_xspress import XspressDetector

    with init_devices():
        xspress = XspressDetector(
            stream=endpoint,
            socket="pull",
            channels=channels,
            path=directory,
            stall_timeout=30,
            compression=compression,  # type: ignore[arg-type]
        )
    return xspress


def _row(
    channels: int,
    n: int,
    compression: str | None,
    dt: float,
    consumer_cpu: float,
    sender_cpu: float,
) -> dict[str, Any]:
    return {
        "test": "end-to-end fly scan -> HDF5",
        "source": "fast publisher process",
        "framing": "multipart",
        "channels": channels,
        "frames": n,
        "compression": compression,
        "frames_per_s": n / dt,
        "mb_per_s": n * spectra_bytes(channels) / dt / 1e6,
        "us_per_frame": dt / n * 1e6,
        # both processes (sender included), over the timed interval: of 200 %
        "cpu_percent_total": (consumer_cpu + sender_cpu) / dt * 100,
        "receiver_cpu_us_per_frame": consumer_cpu / n * 1e6,
        "sender_cpu_us_per_frame": sender_cpu / n * 1e6,
    }


def _memory_bounds(
    writers: list[Any], queue_messages: int, channels: int
) -> dict[str, Any]:
    """What the writer's block pool and the socket's queue may hold (MB), from
    the writer the run used, and which way its spectra went."""
    if not writers:
        return {"spectra_io": "?"}
    w = writers[-1]
    row_bytes = w.specs[0].row_bytes  # one frame's spectra in the file
    return {
        "spectra_io": w.spectra_io,
        "block_rows": w.block_rows,
        "max_blocks": w.max_blocks,
        "row_bytes": row_bytes,
        "queue_messages": queue_messages,
        "pool_mb": w.max_blocks * w.block_rows * row_bytes / 1e6,
        # each queued message is one frame: its spectra plus ~1 kB of JSON
        # and metadata
        "queue_mb": queue_messages * (spectra_bytes(channels) + 1024) / 1e6,
    }


def bench_end_to_end(
    channels: int,
    n_frames: int,
    directory: Path,
    rss_every: int = 0,
    compression: str | None = None,
) -> dict[str, Any]:
    """One end-to-end run in a fresh process (so its peak RSS is its own).

    Raises :class:`RuntimeError` when that process ends without a result."""
    spawn = mp.get_context("spawn")
    out = spawn.Queue()
    every = rss_every or max(1, n_frames // 10)
    proc = spawn.Process(
        target=run_consumer,
        args=(channels, n_frames, str(directory), out, every, compression),
    )
    proc.start()
    try:
        while proc.is_alive():
            try:
                row: dict[str, Any] = out.get(timeout=1.0)
                return row
            except queue.Empty:
                continue
        try:  # it put its row just before it ended
            return out.get(timeout=5.0)
        except queue.Empty:
            raise RuntimeError(
                f"end-to-end run ({channels} channels, {n_frames} frames, "
                f"compression {compression}) ended with exit code "
                f"{proc.exitcode} and no result"
            ) from None
    finally:
        proc.join(60)
