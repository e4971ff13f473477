"""Throughput benchmarks: ``python benchmarks/bench.py [--quick] [--json out.json]``.

Prints a table and writes it as JSON. Measured so far:

1. decode throughput (frames/s, MB/s) of ``StreamDecoder.feed`` for both framings,
   1/4/8 channels, on the real captures (looped, with the frame number rewritten
   so the series stays clean) and on simulated streams;
2. the raw ZeroMQ ceiling in the same run: PUSH -> PULL between two processes,
   3-part messages of 1/4/8 x 4096 uint32, a bare ``recv_multipart`` loop;
3. end-to-end: a fast publisher process -> passive ``XspressDetector`` fly scan
   -> HDF5 -> StreamDatum, with frames lost, CPU % and RSS, at 4 and 8 channels.

4. peak RSS of the end-to-end run (1 channel) for 10k, 100k and 1M frames: each
   end-to-end run happens in a fresh process, so its peak RSS is its own.

5. compression: the codecs alone (MB/s of spectra, one and two threads, size
   ratio) and the end-to-end run at 4 channels with each ``compression``
   (frames/s, frames lost, file size against the spectra's bytes);
   ``--only compression`` runs this part alone.

CPU is reported as a share of the machine's cores (200 % on 2 cores), both
processes (the sender included), over the timed interval, and as CPU time per
frame of each process (its ZeroMQ I/O thread included). The ceiling is measured
again after each end-to-end run (this VM's speed drifts); a run is compared with
the mean of the ceilings just before and after it.
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
    from ophyd_xspress.protocol import Frame, StreamDecoder
    from ophyd_xspress.tools import read_capture

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


def _fast_publisher(endpoint: str, channels: int, n: int, ready: Any, cpu: Any) -> None:
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
    # each pooled JSON part split around its frame number once, not per frame
    split = [_FRAME_RE.split(m[0], maxsplit=1) for m in pool]
    key = b'"frame": '
    t0 = time.process_time()  # this process, its ZeroMQ I/O thread included
    for i in range(n):
        m = pool[i % 8]
        before, after = split[i % 8]
        sock.send_multipart([before + key + b"%d" % i + after, m[1], m[2]], copy=False)
    sock.send_multipart([b'{"htype": "series_end"}'])
    sock.close(linger=-1)
    ctx.term()
    cpu.value = time.process_time() - t0


def _end_to_end(
    channels: int,
    n_frames: int,
    directory: str,
    out: Any,
    rss_every: int,
    compression: str | None = None,
) -> None:
    """In a fresh process: fast publisher process -> passive XspressDetector
    fly scan -> HDF5 -> StreamDatum. Puts a result row on ``out``."""
    import resource
    import threading

    import bluesky.plan_stubs as bps
    import psutil
    from bluesky import RunEngine
    from ophyd_async.core import TriggerInfo, init_devices

    from ophyd_xspress import XspressDetector

    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    spawn = mp.get_context("spawn")
    ready = spawn.Event()
    sender_cpu = spawn.Value("d", 0.0)
    proc = spawn.Process(
        target=_fast_publisher,
        args=(endpoint, channels, n_frames, ready, sender_cpu),
    )
    proc.start()
    RE = RunEngine({}, call_returns_result=True)  # noqa: N806
    with init_devices():
        xspress = XspressDetector(
            stream=endpoint,
            socket="pull",
            channels=channels,
            path=Path(directory),
            stall_timeout=30,
            compression=compression,  # type: ignore[arg-type]
        )
    datums = 0

    def count_docs(name: str, doc: Any) -> None:
        nonlocal datums
        datums += name == "stream_datum"

    RE.subscribe(count_docs)
    me = psutil.Process()
    rss: dict[int, float] = {}
    done = threading.Event()

    def sample_rss() -> None:
        # RSS when the run has passed each multiple of rss_every frames
        nxt = rss_every
        receiver = xspress.receiver
        while not done.wait(0.02):
            n = receiver.messages - 1  # the header, then one message a frame
            while n >= nxt:
                rss[nxt] = me.memory_info().rss / 1e6
                nxt += rss_every

    started: list[float] = []
    writers: list[Any] = []  # which way the spectra went (O_DIRECT, pwrite, HDF5)
    from ophyd_xspress import hdf5

    open_file = hdf5.Hdf5FrameWriter.open

    def record_open(self: Any) -> None:
        writers.append(self)
        open_file(self)

    hdf5.Hdf5FrameWriter.open = record_open  # type: ignore[method-assign]

    def plan() -> Any:
        yield from bps.stage(xspress, wait=True)
        yield from bps.open_run()
        yield from bps.prepare(
            xspress, TriggerInfo(number_of_events=n_frames), wait=True
        )
        yield from bps.declare_stream(xspress, name="primary", collect=True)
        yield from bps.kickoff(xspress, wait=True)
        started.append(time.perf_counter())
        started.append(time.process_time())
        ready.set()
        yield from bps.collect_while_completing([xspress], [xspress], flush_period=0.5)
        yield from bps.close_run()
        yield from bps.unstage(xspress, wait=True)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    RE(plan())
    dt = time.perf_counter() - started[0]
    consumer_cpu = time.process_time() - started[1]
    done.set()
    proc.join(60)
    cpu = consumer_cpu + sender_cpu.value
    summary = xspress.run_summaries[-1]
    received = int(summary["frames_received"])  # type: ignore[call-overload]
    files = list(Path(directory).glob("*.h5"))
    import h5py
    import hdf5plugin  # noqa: F401 - compressed files' filters

    with h5py.File(files[0], "r") as f:
        on_disk = int((f["/entry/instrument/xspress3/frame_number"][:] >= 0).sum())
    # the disk space the file takes (a sparse file: its allocated blocks)
    file_bytes = sum(os.stat(f).st_blocks * 512 for f in files)
    for f in files:
        f.unlink()
    out.put(
        {
            "test": "end-to-end fly scan -> HDF5",
            "source": "fast publisher process",
            "framing": "multipart",
            "channels": channels,
            "frames": n_frames,
            "frames_per_s": n_frames / dt,
            "mb_per_s": n_frames * channels * 4096 * 4 / dt / 1e6,
            "us_per_frame": dt / n_frames * 1e6,
            "frames_lost": n_frames - received,
            "frames_on_disk": on_disk,
            "stream_datum_docs": datums,
            "cpu_percent_total": cpu / dt * 100,
            "receiver_cpu_us_per_frame": consumer_cpu / n_frames * 1e6,
            "sender_cpu_us_per_frame": sender_cpu.value / n_frames * 1e6,
            "spectra_io": writers[-1].spectra_io if writers else "?",
            "compression": compression,
            "file_bytes": file_bytes,
            "size_ratio": n_frames * channels * 4096 * 4 / max(1, file_bytes),
            # ru_maxrss is in kB on Linux
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
            "rss_mb_by_frames": rss,
        }
    )


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bench_end_to_end(
    channels: int,
    n_frames: int,
    directory: Path,
    rss_every: int = 0,
    compression: str | None = None,
) -> dict[str, Any]:
    """One end-to-end run in a fresh process (so its peak RSS is its own)."""
    spawn = mp.get_context("spawn")
    out = spawn.Queue()
    every = rss_every or max(1, n_frames // 10)
    proc = spawn.Process(
        target=_end_to_end,
        args=(channels, n_frames, str(directory), out, every, compression),
    )
    proc.start()
    try:
        row: dict[str, Any] = out.get(timeout=3600)
    finally:
        proc.join(60)
    return row


def bench_codecs(channels: int = 4, chunks: int = 40) -> list[dict[str, Any]]:
    """Each compression alone on 1 MiB chunks of simulated spectra (the 8
    frames the fast publisher sends, repeated): MB/s of spectra with one and
    two threads (the codecs release the GIL) and the size ratio."""
    from concurrent.futures import ThreadPoolExecutor

    from ophyd_xspress.hdf5 import COMPRESSIONS
    from ophyd_xspress.hdf5._codec import codec_for
    from ophyd_xspress.sim import SimulatedXspress3

    det = SimulatedXspress3(channels, endpoint="tcp://127.0.0.1:0")
    frames = np.stack([det.expected_frame(0, i).spectra for i in range(16)])
    rows: list[dict[str, Any]] = []
    for name in COMPRESSIONS:
        encode = codec_for(name).encode
        size = len(bytes(encode(frames)))
        for threads in (1, 2):
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(encode, [frames] * threads))  # warm up
                t0 = time.perf_counter()
                list(pool.map(encode, [frames] * chunks))
                dt = time.perf_counter() - t0
            rows.append(
                {
                    "test": f"codec {name}, {threads} thread(s)",
                    "source": "simulated spectra",
                    "framing": "-",
                    "channels": channels,
                    "frames": chunks * len(frames),
                    "frames_per_s": chunks * len(frames) / dt,
                    "mb_per_s": chunks * frames.nbytes / dt / 1e6,
                    "us_per_frame": dt / (chunks * len(frames)) * 1e6,
                    "size_ratio": frames.nbytes / size,
                }
            )
    return rows


def bench_compression(n: int, directory: Path) -> list[dict[str, Any]]:
    """The codecs alone, then the end-to-end run at 4 channels with each
    compression (and without, for comparison), the ceiling measured again
    after each."""
    rows = bench_codecs()
    for compression in (None, "bslz4", "blosc", "gzip"):
        row = bench_end_to_end(4, n, directory, compression=compression)
        row["test"] = f"end-to-end, compression={compression}"
        after = bench_raw_zmq(4, n)
        row["ceiling_frames_per_s"] = after["frames_per_s"]
        row["of_ceiling"] = row["frames_per_s"] / after["frames_per_s"]
        rows.append(row)
    return rows


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


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'test':<34} {'source':<26} {'framing':<9} {'ch':>3} {'frames':>8} "
        f"{'frames/s':>9} {'MB/s':>6} {'us/frame':>8}  notes"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        notes = []
        if "cpu_percent_total" in r:
            notes.append(f"CPU {r['cpu_percent_total']:.0f}% of 200%")
        if "receiver_cpu_us_per_frame" in r:
            notes.append(
                f"CPU/frame receiver {r['receiver_cpu_us_per_frame']:.0f} us, "
                f"sender {r['sender_cpu_us_per_frame']:.0f} us"
            )
        if "spectra_io" in r:
            notes.append(f"spectra by {r['spectra_io']}")
        if "frames_lost" in r:
            notes.append(f"lost {r['frames_lost']}, on disk {r['frames_on_disk']}")
            notes.append(f"peak RSS {r['peak_rss_mb']:.0f} MB")
        if "of_ceiling" in r:
            notes.append(f"{r['of_ceiling']:.0%} of raw ceiling")
        if "of_slower_ceiling" in r:
            notes.append(
                f"disk allows {r['disk_frames_per_s']:,.0f} fps: "
                f"{r['of_slower_ceiling']:.0%} of the slower ceiling"
            )
        if r.get("size_ratio"):
            notes.append(f"size ratio {r['size_ratio']:.2f}")
        if "cpu_us_per_mib" in r:
            notes.append(f"{r['source']}, CPU {r['cpu_us_per_mib']:.0f} us/MiB")
        print(
            f"{r['test']:<34} {r['source']:<26} {r['framing']:<9} {r['channels']:>3} "
            f"{r['frames']:>8} {r['frames_per_s']:>9,.0f} {r['mb_per_s']:>6,.0f} "
            f"{r['us_per_frame']:>8.1f}  {', '.join(notes)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    parser.add_argument(
        "--dir", default=None, help="where the end-to-end runs write HDF5 (temp)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="end-to-end runs per channel count (each with its own ceiling)",
    )
    parser.add_argument(
        "--only",
        choices=["compression"],
        default=None,
        help="run one part only (compression: the codecs and end-to-end rows)",
    )
    parser.add_argument(
        "--rss-frames",
        default=None,
        help="comma-separated run lengths for the peak-RSS series "
        "(default 10000,100000,1000000; --quick: 10000,100000)",
    )
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else 100_000
    rss_runs = [
        int(x)
        for x in (
            args.rss_frames
            or ("10000,100000" if args.quick else "10000,100000,1000000")
        ).split(",")
    ]
    rows: list[dict[str, Any]] = []
    if args.only == "compression":
        if args.json == parser.get_default("json"):  # keep latest.json whole
            args.json = str(HERE / "results" / "compression.json")
        import tempfile

        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            print("5. compression ...", flush=True)
            rows += bench_compression(n, Path(tmp))
        return _finish(rows, args.json)
    print("1. decode ...", flush=True)
    for name in ("xspress3-multipart.cbors", "xspress3-dump.cbors"):
        if (SHARED / name).exists():
            rows.append(bench_decode_capture(SHARED / name, n))
    for framing in ("multipart", "legacy"):
        for ch in (1, 4, 8):
            rows.append(bench_decode_sim(ch, framing, n // 2))
    print("2. raw zmq ceiling ...", flush=True)
    ceiling: dict[int, float] = {}
    for ch in (1, 4, 8):
        row = bench_raw_zmq(ch, n)
        ceiling[ch] = row["frames_per_s"]
        rows.append(row)
    import tempfile

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print("3. disk ceiling, end-to-end ...", flush=True)
        disk = bench_disk(Path(tmp))
        rows.append(disk)
        for ch in (4, 8):
            for _ in range(args.repeat):
                # this VM's speed drifts: the ceiling is measured again right
                # after each run, and the run compared with the mean of the two
                before = ceiling[ch]
                row = bench_end_to_end(ch, n, Path(tmp))
                after = bench_raw_zmq(ch, n)
                after["test"] = "raw zmq PUSH->PULL, again"
                ceiling[ch] = after["frames_per_s"]
                row["ceiling_frames_per_s"] = (before + ceiling[ch]) / 2
                row["of_ceiling"] = row["frames_per_s"] / row["ceiling_frames_per_s"]
                # the disk's ceiling in frames/s: the run cannot beat the slower
                row["disk_frames_per_s"] = disk["mb_per_s"] * 1e6 / (ch * 4096 * 4)
                row["of_slower_ceiling"] = row["frames_per_s"] / min(
                    row["ceiling_frames_per_s"], row["disk_frames_per_s"]
                )
                rows += [row, after]
        print("4. peak RSS against run length (1 channel) ...", flush=True)
        for frames in rss_runs:
            row = bench_end_to_end(1, frames, Path(tmp))
            row["test"] = "peak RSS vs frames (end-to-end)"
            rows.append(row)
        print("5. compression ...", flush=True)
        rows += bench_compression(n, Path(tmp))
    return _finish(rows, args.json)


def _finish(rows: list[dict[str, Any]], json_path: str) -> int:
    print()
    _print_table(rows)
    series = [r for r in rows if r["test"].startswith("peak RSS")]
    if series:
        peaks = [r["peak_rss_mb"] for r in series]
        print(
            "\npeak RSS by run length: "
            + ", ".join(f"{r['frames']:,}: {r['peak_rss_mb']:.0f} MB" for r in series)
            + f" (max/min {max(peaks) / min(peaks):.2f})"
        )
    out = Path(json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
