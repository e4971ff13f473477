"""Memory is bounded in bytes wherever the peer controls a size.

Real sockets on loopback: a hand-written ZMTP peer that declares a 2 GiB part
(14 bytes on the wire), a PUSH peer in another process sending a message of a
million parts, and valid 16 MiB frames filling the backlog. The receiver's
process must not grow by more than the bound, the receiver thread must go on,
and what was refused is counted and named.
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil

from ophyd_xspress.protocol import HeaderMessage, StreamEncoder, make_frame
from ophyd_xspress.transport import StreamReceiver

TIMEOUT = 10.0
MB = 1_000_000


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


class PeakRss:
    """The process's peak RSS while the block runs, sampled every 5 ms."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def zmtp_push_peer(conn: socket.socket) -> None:
    """Complete ZMTP 3.0 on ``conn`` as a PUSH peer (NULL security)."""
    greeting = (
        b"\xff" + b"\x00" * 8 + b"\x7f"  # signature
        + b"\x03\x00"  # version 3.0
        + b"NULL".ljust(20, b"\x00")  # mechanism
        + b"\x01"  # as-server: we are the binding side
        + b"\x00" * 31  # filler
    )  # fmt: skip
    conn.sendall(greeting)
    got = b""
    while len(got) < 64:
        chunk = conn.recv(64 - len(got))
        assert chunk, "the receiver closed the connection during the greeting"
        got += chunk
    assert got[:1] == b"\xff", got[:12]  # a ZMTP signature
    assert got[10:11] == b"\x03", got[:12]  # version 3
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 4) + b"PUSH"
    conn.sendall(b"\x04" + bytes([len(ready)]) + ready)


def test_a_2_gib_part_is_refused_at_the_socket(caplog: Any) -> None:
    """A frame header declaring 2 GiB (14 bytes on the wire): ZeroMQ's
    MAXMSGSIZE drops the peer before anything is allocated; the receiver
    stays up and says so."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    rx = StreamReceiver(endpoint, "pull")
    try:
        rx.start(connect_timeout=None)  # the receiver connects to us
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        zmtp_push_peer(conn)
        with PeakRss() as memory:
            # one frame: flags LONG (no MORE), then a 64-bit size of 2 GiB
            conn.sendall(b"\x02" + struct.pack(">Q", 2**31))
            wait_for(lambda: rx.counts["disconnects"] >= 1)
        assert memory.growth < 100 * MB, memory.growth
        assert rx.messages == 0  # nothing was ever handed to the decoder
        assert rx.running
        assert f"{endpoint}: stream disconnected (publisher gone?)" in caplog.messages
        conn.close()
    finally:
        rx.stop()
        listener.close()


SENDER = """
import sys, time, zmq
ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.bind(sys.argv[1])
time.sleep(0.5)
push.send_multipart([b"x" * 16] * 1_000_000)
time.sleep(30)
"""


def test_a_million_parts_message_is_refused(caplog: Any) -> None:
    """16 MB in a million parts: at most three parts are kept, the rest are
    freed as they are read, and the message is refused with its part count."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    endpoint = free_endpoint()
    sender = subprocess.Popen([sys.executable, "-c", SENDER, endpoint])
    rx = StreamReceiver(endpoint, "pull")
    try:
        with PeakRss() as memory:
            rx.start(connect_timeout=TIMEOUT)
            wait_for(lambda: rx.messages >= 1, timeout=30)
            wait_for(lambda: rx.counts["protocol_error"] >= 1)
        # libzmq holds the whole message (~64 bytes a part) before the first
        # part can be read; the receiver adds nothing per part
        assert memory.growth < 100 * MB, memory.growth
        text = "message 1 had 1000000 parts (at most 3 in this protocol): refused"
        assert list(rx.errors) == [text]
        assert f"{endpoint}: {text}" in caplog.messages
        assert rx.running
    finally:
        rx.stop()
        sender.kill()
        sender.wait()


def big_frames(n: int) -> tuple[HeaderMessage, list[Any]]:
    """``n`` valid frames of 64 channels x 65536 bins of uint32 (16 MiB each)."""
    spectra = np.zeros((64, 65536), np.uint32)
    scalers = {
        "output_count_rate": np.zeros(64),
        "all_events": np.zeros(64, np.uint32),
        "all_good": np.zeros(64, np.uint32),
        "clock_ticks": np.full(64, 80_000, np.uint32),
        "total_ticks": np.full(64, 80_000, np.uint32),
        "reset_ticks": np.zeros(64, np.uint32),
        "event_width": np.full(64, 6, np.int32),
        "dead_time_correction": np.ones(64),
    }
    frames = [make_frame(k, spectra, scalers, exptime=0.001) for k in range(n)]
    return HeaderMessage(filename="big.h5"), frames


def test_backlog_of_valid_large_frames_stays_under_its_byte_bound(
    push_stream: Any, caplog: Any
) -> None:
    """16 MiB frames with no run to take them: the backlog keeps at most its
    byte bound (oldest dropped, counted, the cap named once), and stopping
    the receiver (unstage) releases it."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    push = push_stream()
    bound = 64 << 20
    rx = StreamReceiver(push.endpoint, "pull", backlog_bytes=bound)
    rx.start(connect_timeout=TIMEOUT)
    encoder = StreamEncoder("multipart")
    header, frames = big_frames(12)
    try:
        push.send(encoder.encode(header))
        for frame in frames:
            push.send(encoder.encode(frame))
        wait_for(lambda: rx.messages >= 13)
        held_frames, held_bytes = rx.backlog_size
        assert held_bytes <= bound
        assert held_frames == 3  # 16 MiB and a little each
        assert rx.counts["backlog_dropped"] == 9
        warnings = [m for m in caplog.messages if "no run to take them" in m]
        assert warnings == [
            f"{push.endpoint}: frames arrive with no run to take them; this "
            "receiver keeps at most 10000 frames / 64 MiB for the next run "
            "(StreamReceiver(backlog=..., backlog_bytes=...)) and drops the "
            "oldest beyond that"
        ]
    finally:
        rx.stop()
    assert rx.backlog_size == (0, 0)


def test_start_and_stop_from_two_threads_never_leave_two_receivers(
    push_stream: Any,
) -> None:
    """A stage during an acquisition (or from a second script) calls start()
    while another caller stops: at most one receiver thread, ever."""
    push = push_stream()
    rx = StreamReceiver(push.endpoint, "pull")
    name = f"xspress-rx {push.endpoint}"
    most = 0
    for _ in range(25):
        starter = threading.Thread(target=rx.start, args=(None,))
        stopper = threading.Thread(target=rx.stop)
        starter.start()
        stopper.start()
        for _ in range(20):
            alive = [t for t in threading.enumerate() if t.name == name]
            most = max(most, len(alive))
            time.sleep(0.001)
        starter.join()
        stopper.join()
    rx.stop()
    assert most <= 1
    assert not [t for t in threading.enumerate() if t.name == name]


def test_one_repeated_frame_gives_one_warning(stream: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="ophyd_xspress")
    sink = stream.sink()
    run = stream.rx.begin(3, sink, active=False)
    stream.send_series([0, 1, 1, 2])
    assert run.wait_blocking(TIMEOUT)
    stream.rx.end(run)
    about_frame_1 = [m for m in caplog.messages if "frame 1 " in m]
    assert about_frame_1 == [f"{stream.rx.endpoint}: series 0: frame 1 received again"]
    assert run.summary()["repeated"] == [1]


def test_frame_2_31_minus_1_after_frame_0_is_one_gap(stream: Any, caplog: Any) -> None:
    """A passive run: frame 2**31-1 after frame 0 costs what frame 1 would
    (no list of the frames between) and is reported as one gap."""
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    last = 2**31 - 1
    first_run = stream.rx.begin(1, stream.sink(), active=False)
    stream.send_series([0], end=False)
    assert first_run.wait_blocking(TIMEOUT)
    stream.rx.end(first_run)
    sink = stream.sink()
    tracemalloc.start()
    try:
        run = stream.rx.begin(1, sink, active=False)
        frame = stream.frame(stream.series, 1)
        late = make_frame(last, frame.spectra, dict(frame.metadata), exptime=0.1)
        stream.push.send(stream.encoder.encode(late))
        assert run.wait_blocking(TIMEOUT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    stream.rx.end(run)
    assert peak < 2 * MB, peak
    assert sink.rows[0].frame == last
    summary = run.summary()
    assert summary["missing_count"] == last - 1
    assert len(summary["missing"]) == 1000  # examples, not the whole gap
    assert (
        f"{stream.rx.endpoint}: series 0: frames 1-{last - 1} not received "
        f"before frame {last}; a gap this large usually means this consumer fell "
        "behind and the publisher's high-water mark dropped frames"
    ) in caplog.messages
