"""The raw ZeroMQ ceiling: a bare receive loop, and its neighbouring measurements.

:func:`bench_raw_zmq`: PUSH -> PULL between two processes, 3-part messages of
the stream's sizes (a JSON header, ``channels x 4096`` uint32, a ~640-byte
pickle), a bare ``recv_multipart`` loop that only counts bytes. Its CPU time
per frame is the floor any consumer of the stream pays on this machine.

:class:`Neighbours`: this machine's speed drifts by +-25 % from one minute to
the next, so an end-to-end run is compared with the bare loop measured just
before and just after it (the mean of the two), never with a figure from
another part of the run.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any, Final

import numpy as np

__all__ = ["FRESH_SECONDS", "Neighbours", "bench_raw_zmq"]

#: A bare-loop measurement this recent still counts as "just before" a run.
FRESH_SECONDS: Final = 10.0


def _push(endpoint: str, channels: int, n: int, ready: Any, cpu: Any) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.connect(endpoint)
    head = b'{"htype": "image", "frame": 0, "shape": [%d, 4096]}' % channels
    data = np.random.default_rng(0).integers(0, 50, (channels, 4096), np.uint32)
    meta = b"\x80\x04" + b"x" * 640
    msg = [head, data.tobytes(), meta]
    ready.wait()
    t0 = time.process_time()  # this process, its ZeroMQ I/O thread included
    for _ in range(n):
        sock.send_multipart(msg, copy=False)
    sock.close(linger=-1)
    ctx.term()
    cpu.value = time.process_time() - t0


def bench_raw_zmq(channels: int, n_frames: int) -> dict[str, Any]:
    """The bare receive loop over ``n_frames`` messages (timed from the second)."""
    import zmq

    spawn = mp.get_context("spawn")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 1000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    ready = spawn.Event()
    sender_cpu = spawn.Value("d", 0.0)
    proc = spawn.Process(
        target=_push,
        args=(f"tcp://127.0.0.1:{port}", channels, n_frames, ready, sender_cpu),
    )
    proc.start()
    ready.set()
    first = sock.recv_multipart(copy=False)
    nbytes = sum(len(f.buffer) for f in first)
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(n_frames - 1):
        msg = sock.recv_multipart(copy=False)
        nbytes += sum(len(f.buffer) for f in msg)
    dt = time.perf_counter() - t0
    receiver_cpu = time.process_time() - c0
    proc.join(30)
    cpu = receiver_cpu + sender_cpu.value
    sock.close(linger=0)
    ctx.term()
    return {
        "test": "raw zmq PUSH->PULL (2 processes)",
        "source": "bare recv_multipart",
        "framing": "multipart",
        "channels": channels,
        "frames": n_frames,
        "frames_per_s": (n_frames - 1) / dt,
        "mb_per_s": nbytes / dt / 1e6,
        "us_per_frame": dt / (n_frames - 1) * 1e6,
        # both processes (sender included), over the timed interval: of 200 %
        "cpu_percent_total": cpu / dt * 100,
        # CPU time per frame of each process (ZeroMQ I/O threads included)
        "receiver_cpu_us_per_frame": receiver_cpu / (n_frames - 1) * 1e6,
        "sender_cpu_us_per_frame": sender_cpu.value / n_frames * 1e6,
    }


class Neighbours:
    """The bare loop measured right before and right after each end-to-end run.

    ``frames(channels)``: how many frames a measurement takes. A measurement
    taken after one run serves as the "before" of the next run at the same
    channel count when it is at most :data:`FRESH_SECONDS` old (nothing else
    ran in between). Every measurement made is kept in :attr:`rows`.

    >>> ceiling = Neighbours(lambda ch: 20_000)
    >>> before = ceiling.before(4); row = run(); after = ceiling.after(4)
    >>> ceiling.compare(row, before, after)  # adds cpu_ratio, of_ceiling
    """

    def __init__(self, frames: Callable[[int], int]) -> None:
        self.frames = frames
        #: Every measurement made, in order (for the table).
        self.rows: list[dict[str, Any]] = []
        self._latest: tuple[int, float, dict[str, Any]] | None = None

    def before(self, channels: int) -> dict[str, Any]:
        latest = self._latest
        if latest is not None:
            ch, at, row = latest
            if ch == channels and time.monotonic() - at <= FRESH_SECONDS:
                return row
        return self._measure(channels, "before")

    def after(self, channels: int) -> dict[str, Any]:
        return self._measure(channels, "after")

    def _measure(self, channels: int, when: str) -> dict[str, Any]:
        row = bench_raw_zmq(channels, self.frames(channels))
        row["test"] = f"raw zmq, {when} next row"
        self.rows.append(row)
        self._latest = (channels, time.monotonic(), row)
        return row

    @staticmethod
    def compare(
        row: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
    ) -> None:
        """Add to an end-to-end ``row`` its ``cpu_ratio`` (the consumer's CPU
        per frame over the bare loop's, the mean of ``before`` and ``after``)
        and its share of the ceiling's frame rate (the same mean)."""
        bare = [r["receiver_cpu_us_per_frame"] for r in (before, after)]
        ceiling = [r["frames_per_s"] for r in (before, after)]
        row["bare_cpu_us_per_frame"] = sum(bare) / 2
        row["bare_cpu_us_per_frame_before_after"] = bare
        row["cpu_ratio"] = row["receiver_cpu_us_per_frame"] / (sum(bare) / 2)
        row["ceiling_frames_per_s"] = sum(ceiling) / 2
        row["ceiling_frames_per_s_before_after"] = ceiling
        row["of_ceiling"] = row["frames_per_s"] / row["ceiling_frames_per_s"]
