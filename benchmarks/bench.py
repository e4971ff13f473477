"""Throughput benchmarks: ``python benchmarks/bench.py [--quick] [--json out.json]``.

Prints a table and writes it as JSON. Measured so far:

1. decode throughput (frames/s, MB/s) of ``StreamDecoder.feed`` for both framings,
   1/4/8 channels, on the real captures (looped, with the frame number rewritten
   so the series stays clean) and on simulated streams;
2. the raw ZeroMQ ceiling in the same run: PUSH -> PULL between two processes,
   3-part messages of 1/4/8 x 4096 uint32, a bare ``recv_multipart`` loop;
3. end-to-end: a fast publisher process -> passive ``XspressDetector`` fly scan
   -> HDF5 -> StreamDatum, with frames lost, CPU % and RSS, at 4 and 8 channels.

(Peak RSS against 10k / 100k / 1M frames is the next step of this harness.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(
    os.environ.get(
        "XSPRESS_SHARED_DATA", HERE.parents[1] / "shared" / "data" / "xspress3"
    )
)
_FRAME_RE = re.compile(rb'"frame": ?\d+')


def _renumber(head: bytes, n: int) -> bytes:
    sep = b'"frame": ' if b'"frame": ' in head else b'"frame":'
    return _FRAME_RE.sub(sep + str(n).encode(), head, count=1)


def _frame_messages(
    messages: list[list[bytes]],
) -> tuple[list[bytes], list[list[bytes]]]:
    """Split a capture into its header message and per-frame message groups."""
    from ophyd_xspress.protocol import StreamDecoder

    header = messages[0]
    groups: list[list[list[bytes]]] = []
    current: list[list[bytes]] = []
    for m in messages[1:]:
        if b'"series_end"' in m[0][:40]:
            break
        if b'"image"' in m[0][:40]:
            if current:
                groups.append(current)
            current = [m]
        else:
            current.append(m)
    if current:
        groups.append(current)
    StreamDecoder()  # import check
    return header, groups  # type: ignore[return-value]


def bench_decode_capture(path: Path, n_frames: int) -> dict[str, Any]:
    from ophyd_xspress.capture import read_capture
    from ophyd_xspress.protocol import Frame, StreamDecoder

    messages = list(read_capture(path))
    header, groups = _frame_messages(messages)
    # pre-build the message stream with renumbered frames (not timed)
    stream: list[list[bytes]] = []
    for i in range(n_frames):
        g = groups[i % len(groups)]
        first = [_renumber(g[0][0], i), *g[0][1:]]
        stream.append(first)
        stream.extend(g[1:])
    dec = StreamDecoder()
    dec.feed(header[0] if len(header) == 1 else header)
    nbytes = sum(len(p) for m in stream for p in m)
    t0 = time.perf_counter()
    frames = 0
    for m in stream:
        for p in dec.feed(m):
            frames += isinstance(p, Frame)
    dt = time.perf_counter() - t0
    assert frames == n_frames, (frames, n_frames)
    assert not dec.tracker.counts, dict(dec.tracker.counts)
    channels = (
        len(groups[0][0][1]) // (4096 * 4)
        if len(groups[0][0]) > 1
        else (len(groups[0][1][0]) // (4096 * 4))
    )
    return {
        "test": "decode",
        "source": path.name,
        "framing": dec.framing,
        "channels": channels,
        "frames": n_frames,
        "frames_per_s": n_frames / dt,
        "mb_per_s": nbytes / dt / 1e6,
        "us_per_frame": dt / n_frames * 1e6,
    }


def bench_decode_sim(channels: int, framing: str, n_frames: int) -> dict[str, Any]:
    from ophyd_xspress.protocol import Frame, StreamDecoder, StreamEncoder
    from ophyd_xspress.sim import SimulatedXspress3

    det = SimulatedXspress3(channels, framing=framing, endpoint="tcp://127.0.0.1:0")
    enc = StreamEncoder(framing)  # type: ignore[arg-type]
    pool = [det.expected_frame(0, i) for i in range(16)]
    encoded = [[[bytes(p) for p in m] for m in enc.encode_frame(f)] for f in pool]
    header = enc.encode(det.header())[0]
    stream: list[list[bytes]] = []
    for i in range(n_frames):
        msgs = encoded[i % len(pool)]
        stream.append([_renumber(msgs[0][0], i), *msgs[0][1:]])
        stream.extend(msgs[1:])
    dec = StreamDecoder()
    dec.feed([bytes(p) for p in header])
    nbytes = sum(len(p) for m in stream for p in m)
    t0 = time.perf_counter()
    frames = 0
    for m in stream:
        for p in dec.feed(m):
            frames += isinstance(p, Frame)
    dt = time.perf_counter() - t0
    assert frames == n_frames
    return {
        "test": "decode",
        "source": "simulated",
        "framing": framing,
        "channels": channels,
        "frames": n_frames,
        "frames_per_s": n_frames / dt,
        "mb_per_s": nbytes / dt / 1e6,
        "us_per_frame": dt / n_frames * 1e6,
    }


def _push(endpoint: str, channels: int, n: int, ready: Any) -> None:
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
    for _ in range(n):
        sock.send_multipart(msg, copy=False)
    sock.close(linger=-1)
    ctx.term()


def bench_raw_zmq(channels: int, n_frames: int) -> dict[str, Any]:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 1000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    ready = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(
        target=_push, args=(f"tcp://127.0.0.1:{port}", channels, n_frames, ready)
    )
    proc.start()
    ready.set()
    first = sock.recv_multipart(copy=False)
    nbytes = sum(len(f.buffer) for f in first)
    t0 = time.perf_counter()
    for _ in range(n_frames - 1):
        msg = sock.recv_multipart(copy=False)
        nbytes += sum(len(f.buffer) for f in msg)
    dt = time.perf_counter() - t0
    proc.join(30)
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
    }


def _fast_publisher(endpoint: str, channels: int, n: int, ready: Any) -> None:
    """Another process: a header, ``n`` simulator frames (8 distinct ones,
    renumbered) and series_end on a bound PUSH socket, as fast as zmq allows."""
    import zmq

    from ophyd_xspress.protocol import StreamEncoder
    from ophyd_xspress.sim import SimulatedXspress3

    det = SimulatedXspress3(channels, endpoint="tcp://127.0.0.1:0")
    enc = StreamEncoder("multipart")
    pool = [
        [bytes(p) for p in enc.encode_frame(det.expected_frame(0, i))[0]]
        for i in range(8)
    ]
    header = [bytes(p) for p in enc.encode(det.header())[0]]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.bind(endpoint)
    ready.wait()
    sock.send_multipart(header)
    for i in range(n):
        m = pool[i % 8]
        sock.send_multipart([_renumber(m[0], i), m[1], m[2]], copy=False)
    sock.send_multipart([b'{"htype": "series_end"}'])
    sock.close(linger=-1)
    ctx.term()


def bench_end_to_end(channels: int, n_frames: int, directory: Path) -> dict[str, Any]:
    """Fast publisher process -> passive XspressDetector fly scan -> HDF5 ->
    StreamDatum; frames/s sustained, frames lost, CPU %, peak RSS."""
    import socket

    import bluesky.plan_stubs as bps
    import psutil
    from bluesky import RunEngine
    from ophyd_async.core import TriggerInfo, init_devices

    from ophyd_xspress import XspressDetector

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    spawn = mp.get_context("spawn")
    ready = spawn.Event()
    proc = spawn.Process(
        target=_fast_publisher, args=(endpoint, channels, n_frames, ready)
    )
    proc.start()
    RE = RunEngine({}, call_returns_result=True)  # noqa: N806
    with init_devices():
        xspress = XspressDetector(
            stream=endpoint,
            socket="pull",
            channels=channels,
            path=directory,
            stall_timeout=30,
        )
    datums = 0

    def count_docs(name: str, doc: Any) -> None:
        nonlocal datums
        datums += name == "stream_datum"

    RE.subscribe(count_docs)
    me = psutil.Process()
    started: list[float] = []

    def plan() -> Any:
        yield from bps.stage(xspress, wait=True)
        yield from bps.open_run()
        yield from bps.prepare(
            xspress, TriggerInfo(number_of_events=n_frames), wait=True
        )
        yield from bps.declare_stream(xspress, name="primary", collect=True)
        yield from bps.kickoff(xspress, wait=True)
        started.append(time.perf_counter())
        ready.set()
        yield from bps.collect_while_completing([xspress], [xspress], flush_period=0.5)
        yield from bps.close_run()
        yield from bps.unstage(xspress, wait=True)

    cpu0 = me.cpu_times()
    RE(plan())
    dt = time.perf_counter() - started[0]
    cpu1 = me.cpu_times()
    proc.join(60)
    summary = xspress.run_summaries[-1]
    received = int(summary["frames_received"])  # type: ignore[call-overload]
    for f in directory.glob("*.h5"):
        f.unlink()
    return {
        "test": "end-to-end fly scan -> HDF5",
        "source": "fast publisher process",
        "framing": "multipart",
        "channels": channels,
        "frames": n_frames,
        "frames_per_s": n_frames / dt,
        "mb_per_s": n_frames * channels * 4096 * 4 / dt / 1e6,
        "us_per_frame": dt / n_frames * 1e6,
        "frames_lost": n_frames - received,
        "cpu_percent": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / dt * 100,
        "peak_rss_mb": me.memory_info().rss / 1e6,
        "stream_datum_docs": datums,
    }


def machine() -> dict[str, Any]:
    import zmq

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else 100_000
    rows: list[dict[str, Any]] = []
    for name in ("xspress3-multipart.cbors", "xspress3-dump.cbors"):
        if (SHARED / name).exists():
            rows.append(bench_decode_capture(SHARED / name, n))
    for framing in ("multipart", "legacy"):
        for ch in (1, 4, 8):
            rows.append(bench_decode_sim(ch, framing, n // 2))
    for ch in (1, 4, 8):
        rows.append(bench_raw_zmq(ch, n))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for ch in (4, 8):
            rows.append(bench_end_to_end(ch, n, Path(tmp)))
    header = (
        f"{'test':<34} {'source':<26} {'framing':<9} {'ch':>3} "
        f"{'frames/s':>10} {'MB/s':>8} {'us/frame':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['test']:<34} {r['source']:<26} {r['framing']:<9} {r['channels']:>3} "
            f"{r['frames_per_s']:>10,.0f} {r['mb_per_s']:>8,.0f} "
            f"{r['us_per_frame']:>9.1f}"
            + (
                f"  lost {r['frames_lost']}, CPU {r['cpu_percent']:.0f} %, "
                f"RSS {r['peak_rss_mb']:.0f} MB"
                if "frames_lost" in r
                else ""
            )
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
