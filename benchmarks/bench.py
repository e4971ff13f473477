"""Throughput benchmarks: ``python benchmarks/bench.py [--quick] [--json out.json]``.

Prints a table and writes it as JSON. Measured so far:

1. decode throughput (frames/s, MB/s) of ``StreamDecoder.feed`` for both framings,
   1/4/8 channels, on the real captures (looped, with the frame number rewritten
   so the series stays clean) and on simulated streams;
2. the raw ZeroMQ ceiling in the same run: PUSH -> PULL between two processes,
   3-part messages of 1/4/8 x 4096 uint32, a bare ``recv_multipart`` loop.

(End-to-end and memory-versus-frames figures are the next step of this harness.)
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
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
