"""Soak of the whole receive path: ZeroMQ, the receiver thread, Run and
the HDF5 writer, with the detector in another process.

A publisher process (``spawn``) binds a PUSH socket on loopback and sends a
header, ``N`` frames and series_end as fast as ZeroMQ allows: 16 distinct
simulator frames (1 channel, 4096 bins), each encoded once with
:class:`~ophyd_xspress.protocol.StreamEncoder` and renumbered 0 .. N-1 on the
wire, so frame ``k`` carries the content of simulator frame ``k % 16``. In the
test process a :class:`~ophyd_xspress.transport.StreamReceiver` (PULL) feeds a
passive :class:`~ophyd_xspress.transport.Run` whose sink is an
:class:`~ophyd_xspress.hdf5.Hdf5FrameWriter` opened for ``N`` rows with one
ROI window. The test samples its own RSS every 100k frames received, waits
until every row is durable, and checks:

* the run has no error, nothing missing, repeated, out of order or refused,
  and the receiver decoded every message (header + N frames + series_end);
* ``frame_number == arange(N)`` on disk, and every row's scalers and ROI equal
  those of the frame it came from (read in blocks: memory stays flat);
* the spectra of rows 0, N-1 and 200 random rows (fixed seed) are bit-exact;
* (long run only) RSS after N frames is within 10 % of RSS after 100k.

The N-frame test is marked ``slow`` and skipped unless ``XSPRESS_SLOW=1``;
1,000,000 frames write about 17 GB (deleted afterwards) and the test skips when
the disk has less than three times that free::

    XSPRESS_SLOW=1 python -m pytest tests/reliability/test_soak_stream.py \\
        -m slow -q -p no:cacheprovider -s

(``XSPRESS_SOAK_FRAMES=N`` changes the frame count, at least 200000.)
A 5,000-frame version of the same pipeline runs in the default suite.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import runpy
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
import pytest

from ophyd_xspress.hdf5 import GROUP, SCALERS, Hdf5FrameWriter
from ophyd_xspress.protocol import Frame, SeriesEndMessage, StreamEncoder, make_frame
from ophyd_xspress.sim import SimulatedXspress3
from ophyd_xspress.transport import Run, StreamReceiver

BINS = 4096
TEMPLATES = 16
CHECKPOINT = 100_000
SHORT = 5_000
#: One software ROI window (inclusive bins): the simulator's Fe Kα window.
WINDOW = (626, 654)
WINDOWS = np.array([[WINDOW]])  # (channels, R, 2)
#: A frame number no template's JSON can contain otherwise: split on it.
SENTINEL = 987_654_321
STALL = 30.0  # s without a new frame: the stream is stuck
START_TIMEOUT = 60.0  # s for the publisher process to bind (imports numpy, zmq)
DRAIN_TIMEOUT = 60.0  # s after the last frame for every row to be durable
SEND_TIMEOUT_MS = 60_000  # the publisher gives up when a send blocks this long
READ_ROWS = 100_000  # rows read at once when checking the file
#: The publisher process runs this file with ``runpy.run_path`` under this
#: name (see the end of the file), not the test module by its import name:
#: pytest imports it with ``--import-mode=importlib``, a name a spawned
#: process cannot import when the checkout is not on its ``sys.path``.
PUBLISHER_RUN_NAME = "__xspress_soak_publisher__"


def bytes_per_frame() -> int:
    # spectra (u4) + 11 per-channel scalars of 8 bytes max + roi + frame_number
    return BINS * 4 + 16 * 8


def templates() -> tuple[SimulatedXspress3, list[Frame]]:
    sim = SimulatedXspress3(channels=1, pace=False)  # never started: no socket
    return sim, [sim.expected_frame(0, i) for i in range(TEMPLATES)]


# -- the publisher process ---------------------------------------------------------
def publish(n: int, ports: Any, go: Any, results: Any) -> None:
    """Another process: bind PUSH on loopback (its port on ``ports``), wait for
    ``go``, send a header, ``n`` renumbered frames and series_end; puts
    ``("ok", sent, seconds)`` or ``("error", sent, text)`` on ``results``."""
    import zmq

    sent = 0
    try:
        sim, frames = templates()
        encoder = StreamEncoder("multipart")
        header = [bytes(p) for p in encoder.encode(sim.header())[0]]
        end = [bytes(p) for p in encoder.encode(SeriesEndMessage())[0]]
        pool: list[tuple[bytes, bytes, bytes, bytes]] = []
        for t in frames:
            marked = make_frame(SENTINEL, t.spectra, t.metadata, exptime=t.exptime)
            head, data, meta = (bytes(p) for p in encoder.encode_frame(marked)[0])
            before, sep, after = head.partition(b"%d" % SENTINEL)
            assert sep, head
            assert sep not in after, head
            pool.append((before, after, data, meta))
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        try:
            ports.put(sock.bind_to_random_port("tcp://127.0.0.1"))
            if not go.wait(START_TIMEOUT):
                raise TimeoutError(f"no go from the test in {START_TIMEOUT:.0f} s")
            t0 = time.perf_counter()
            sock.send_multipart(header)
            for k in range(n):
                before, after, data, meta = pool[k % TEMPLATES]
                sock.send_multipart([before + b"%d" % k + after, data, meta])
                sent += 1
            sock.send_multipart(end)
            seconds = time.perf_counter() - t0
        finally:
            sock.close(linger=SEND_TIMEOUT_MS)
            ctx.term()
        results.put(("ok", sent, seconds))
    except BaseException:
        results.put(("error", sent, traceback.format_exc()))


# -- the test process -----------------------------------------------------------------
@dataclass
class Soak:
    n: int
    receive_seconds: float = 0.0  # go -> every frame received
    durable_seconds: float = 0.0  # go -> every row durable
    publisher_seconds: float = 0.0  # the publisher's own send loop
    #: RSS (bytes) when each checkpoint of frames received was passed, and
    #: the frame count actually seen at that moment
    rss: dict[int, int] = field(default_factory=dict)
    seen_at: dict[int, int] = field(default_factory=dict)
    rss_durable: int = 0  # once every row was durable
    summary: dict[str, Any] = field(default_factory=dict)


class Publisher:
    """The publisher process and its queues; :meth:`stop` always reaps it."""

    def __init__(self, n: int) -> None:
        spawn = mp.get_context("spawn")
        self.ports = spawn.Queue()
        self.results = spawn.Queue()
        self.go = spawn.Event()
        self.result: tuple[str, int, Any] | None = None
        self.proc = spawn.Process(
            target=runpy.run_path,
            args=(__file__,),
            kwargs={
                "init_globals": {
                    "PUBLISH_ARGS": (n, self.ports, self.go, self.results)
                },
                "run_name": PUBLISHER_RUN_NAME,
            },
            name="xspress-soak-publisher",
            daemon=True,
        )
        self.proc.start()

    def port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                return int(self.ports.get(timeout=0.2))
            except queue.Empty:
                if not self.proc.is_alive():
                    break
        raise AssertionError(
            f"the publisher process did not bind its PUSH socket within "
            f"{START_TIMEOUT:.0f} s: {self.describe()}"
        )

    def poll_result(self, timeout: float = 0.0) -> tuple[str, int, Any] | None:
        if self.result is None:
            with contextlib.suppress(queue.Empty):
                self.result = self.results.get(timeout=max(timeout, 0.01))
        return self.result

    def describe(self) -> str:
        self.poll_result()
        state = (
            "running"
            if self.proc.is_alive()
            else f"exited with code {self.proc.exitcode}"
        )
        return f"publisher {state}, result {self.result!r}"

    def stop(self) -> None:
        # a publisher that reported its result is exiting; any other (the test
        # failed: still waiting for go, or blocked on a send) is terminated
        self.proc.join(10 if self.poll_result() is not None else 1)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
        if self.proc.is_alive():  # pragma: no cover - SIGTERM ignored
            self.proc.kill()
            self.proc.join(10)
        for q in (self.ports, self.results):
            q.close()
            q.join_thread()


def rss_now() -> int:
    return int(psutil.Process().memory_info().rss)


def wait_received(
    rx: StreamReceiver,
    run: Run,
    pub: Publisher,
    soak: Soak,
    rss_every: int,
    t0: float,
) -> None:
    """Wait for the run to have every frame, sampling RSS at each
    ``rss_every`` frames received; fail on a stall or the overall deadline."""
    n = soak.n
    deadline = t0 + 60 + n / 1_000  # ~20x the measured time, at worst
    last, last_change = -1, time.monotonic()
    checkpoint = rss_every

    def where() -> str:
        return (
            f"{run.received} of {n} frames received, {rx.messages} messages, "
            f"receiver counts {dict(rx.counts)}, errors {rx.errors[-3:]}, run "
            f"counts {dict(run.counts)}; {pub.describe()}"
        )

    while not run.wait_blocking(0.02):
        got = run.received
        now = time.monotonic()
        while got >= checkpoint:
            soak.rss[checkpoint] = rss_now()
            soak.seen_at[checkpoint] = got
            checkpoint += rss_every
        if got != last:
            last, last_change = got, now
        elif now - last_change > STALL:
            raise AssertionError(f"no frame for {STALL:.0f} s: {where()}")
        if now > deadline:
            raise AssertionError(
                f"not every frame within {deadline - t0:.0f} s: {where()}"
            )
        if run.error is not None:
            break
    soak.receive_seconds = time.monotonic() - t0
    assert run.error is None, f"the run failed: {run.error!r}; {where()}"
    while checkpoint <= n:  # the last checkpoint(s), passed as the run ended
        soak.rss[checkpoint] = rss_now()
        soak.seen_at[checkpoint] = run.received
        checkpoint += rss_every


def wait_durable(writer: Hdf5FrameWriter, run: Run, n: int) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while writer.durable.prefix() < n:
        assert writer.error is None, f"the writer failed: {writer.error!r}"
        assert run.error is None, f"the run failed: {run.error!r}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{writer.durable.prefix()} of {n} rows durable "
                f"{DRAIN_TIMEOUT:.0f} s after the last frame arrived "
                f"({writer.frames_written} written; stats {writer.stats})"
            )
        time.sleep(0.01)


def wait_messages(rx: StreamReceiver, want: int, pub: Publisher) -> None:
    """The receiver decoded ``want`` messages (the series_end arrives after
    the last frame; nothing more is sent)."""
    deadline = time.monotonic() + 10
    while rx.messages < want:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the receiver decoded {rx.messages} messages, expected {want} "
                f"(header + frames + series_end) within 10 s; {pub.describe()}"
            )
        time.sleep(0.01)


def stream_to_disk(path: Path, n: int, rss_every: int = CHECKPOINT) -> Soak:
    """Publisher process -> ZeroMQ -> receiver thread -> Run -> HDF5."""
    soak = Soak(n)
    pub = Publisher(n)
    rx: StreamReceiver | None = None
    writer: Hdf5FrameWriter | None = None
    run: Run | None = None
    try:
        endpoint = f"tcp://127.0.0.1:{pub.port()}"
        rx = StreamReceiver(endpoint, "pull")
        rx.start(connect_timeout=10.0)
        writer = Hdf5FrameWriter(path, 1, BINS, WINDOWS, expected=n)
        writer.open()
        run = rx.begin(n, writer, active=False, durable=writer.durable)
        t0 = time.monotonic()
        pub.go.set()
        wait_received(rx, run, pub, soak, rss_every, t0)
        wait_durable(writer, run, n)
        soak.durable_seconds = time.monotonic() - t0
        soak.rss_durable = rss_now()
        wait_messages(rx, n + 2, pub)
        result = pub.poll_result(timeout=SEND_TIMEOUT_MS / 1000 + 10)
        assert result is not None, f"no result from the publisher: {pub.describe()}"
        assert result[0] == "ok", f"the publisher failed: {pub.describe()}"
        assert result[1] == n, f"the publisher sent {result[1]} of {n} frames"
        soak.publisher_seconds = float(result[2])
        assert run.error is None, f"the run failed: {run.error!r}"
        soak.summary = run.summary()
        assert not rx.errors, f"receiver errors: {rx.errors[-5:]}"
        assert not any(
            rx.counts[k] for k in ("protocol_error", "internal_error", "outside_series")
        ), f"receiver counts: {dict(rx.counts)}"
    finally:
        if rx is not None and run is not None:
            rx.end(run)
        try:
            if writer is not None:
                writer.close()
        finally:
            if rx is not None:
                rx.stop()
            pub.stop()
    assert pub.proc.exitcode == 0, f"publisher exit code {pub.proc.exitcode}"
    assert writer is not None
    assert writer.frames_written == n, f"{writer.frames_written} of {n} rows written"
    return soak


def check_summary(summary: dict[str, Any], n: int) -> None:
    assert summary["frames_received"] == n, summary
    for key in ("missing", "repeated", "out_of_order", "refused"):
        assert summary[key] == [], f"{key}: {summary[key][:20]} (summary {summary})"
    assert summary["stale_discarded"] == 0, summary
    assert not any(summary["anomaly_counts"].values()), summary


def check_on_disk(path: Path, n: int) -> None:
    _, frames = templates()
    names = [name for name, _, _ in SCALERS]
    # per template: each scaler (1 channel), and the ROI sum of its spectrum
    table = {name: np.stack([t.metadata[name] for t in frames]) for name in names}
    lo, hi = WINDOW
    roi = np.array(
        [t.spectra[:, lo : hi + 1].sum(axis=1, dtype=np.uint64) for t in frames]
    ).reshape(TEMPLATES, 1, 1)
    with h5py.File(path, "r") as f:
        g = f[GROUP]
        assert g["data"].shape == (n, 1, BINS)
        assert g["frame_number"].shape == (n,)
        assert g["roi"].shape == (n, 1, 1)
        for start in range(0, n, READ_ROWS):
            stop = min(n, start + READ_ROWS)
            fn = g["frame_number"][start:stop]
            np.testing.assert_array_equal(
                fn, np.arange(start, stop), err_msg=f"frame_number {start}:{stop}"
            )
            which = fn % TEMPLATES
            for name in names:
                np.testing.assert_array_equal(
                    g[name][start:stop], table[name][which], err_msg=name
                )
            np.testing.assert_array_equal(
                g["roi"][start:stop], roi[which], err_msg=f"roi {start}:{stop}"
            )
        rng = np.random.default_rng(0)
        rows = {0, n - 1, *rng.integers(0, n, 200).tolist()}
        for row in sorted(rows):
            t = frames[row % TEMPLATES]
            np.testing.assert_array_equal(g["data"][row], t.spectra, err_msg=str(row))
            for name in names:
                np.testing.assert_array_equal(
                    g[name][row], t.metadata[name], err_msg=f"{name} row {row}"
                )


def report(soak: Soak) -> str:
    n = soak.n
    mb = {k: round(v / 2**20) for k, v in soak.rss.items()}
    return (
        f"\n{n} frames over ZeroMQ: all received in {soak.receive_seconds:.1f} s "
        f"({n / soak.receive_seconds:.0f} frames/s), all durable in "
        f"{soak.durable_seconds:.1f} s, publisher loop {soak.publisher_seconds:.1f} "
        f"s; RSS MB by frames received: {mb}; after the last row durable: "
        f"{soak.rss_durable / 2**20:.0f} MB"
    )


def test_stream_soak_smoke(tmp_path: Path) -> None:
    """The stream soak's pipeline on 5,000 frames (default suite); RSS is only
    recorded."""
    path = tmp_path / "smoke.h5"
    soak = stream_to_disk(path, SHORT, rss_every=1_000)
    print(report(soak))
    assert sorted(soak.rss) == [1_000, 2_000, 3_000, 4_000, 5_000]
    check_summary(soak.summary, SHORT)
    check_on_disk(path, SHORT)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_stream_million_frames_flat_memory(
    tmp_path: Path, soak_frames: Callable[[int], int]
) -> None:
    n = soak_frames(bytes_per_frame())
    path = tmp_path / "soak_stream.h5"
    try:
        soak = stream_to_disk(path, n)
        print(report(soak))
        check_summary(soak.summary, n)
        check_on_disk(path, n)
    finally:
        path.unlink(missing_ok=True)
    base = soak.rss[CHECKPOINT]
    peak = max(soak.rss.values())
    assert peak <= base * 1.10, (
        f"RSS grew from {base / 2**20:.0f} MB at {CHECKPOINT} frames to a peak "
        f"of {peak / 2**20:.0f} MB (by frames: {soak.rss})"
    )
    assert soak.rss[max(soak.rss)] <= base * 1.10
    assert soak.rss_durable <= base * 1.10, (
        f"RSS {soak.rss_durable / 2**20:.0f} MB once every row was durable, "
        f"{base / 2**20:.0f} MB at {CHECKPOINT} frames"
    )


if __name__ == PUBLISHER_RUN_NAME:  # the publisher process (see Publisher)
    publish(*globals()["PUBLISH_ARGS"])
