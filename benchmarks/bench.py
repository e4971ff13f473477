"""Throughput benchmarks: ``python benchmarks/bench.py [--quick] [--json out.json]``.

Prints a table and writes it as JSON (with the machine and the targets of
issue 17 each row measured). The parts, in order:

1. decode throughput (frames/s, MB/s) of ``StreamDecoder.feed`` for both
   framings at 1/4/8/36/64 channels, on the real captures (looped, renumbered)
   and on simulated streams (``_decode``);
2. the raw ZeroMQ ceiling: PUSH -> PULL between two processes, a bare
   ``recv_multipart`` loop, at the same channel counts (``_zmq``);
3. the disk's ceiling, then end-to-end: a fast publisher process -> passive
   ``XspressDetector`` fly scan -> HDF5 -> StreamDatum at 4, 8, 36 and 64
   channels (``_end_to_end``);
4. compression: each codec alone, then end-to-end with each ``compression``
   at 4 and 36 channels (``_files``);
5. with ``--rss`` only: peak RSS at 36 channels for 10k, 100k and 1M frames,
   against the bound the writer's block pool implies (``_rss``).

Every end-to-end row is measured between two bare receive loops at its
channel count and carries ``cpu_ratio``: the consumer's CPU time per frame over
the mean of theirs (this machine's speed drifts by +-25 % from one minute to
the next, so only neighbouring measurements compare), and frames lost, file
bytes per frame, peak RSS. Sizes per part: ``_plan``; the table and targets:
``_report``. CPU is also reported as a share of the machine's cores (200 % on
2 cores), both processes over the timed interval.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The parts live beside this file; re-exported for scripts that
# ``import bench`` (bench_raw_zmq, bench_end_to_end, _end_to_end, ...).
from _decode import bench_decode_capture, bench_decode_sim
from _end_to_end import bench_end_to_end
from _end_to_end import run_consumer as _end_to_end
from _files import bench_codecs, bench_disk
from _plan import RSS_FRAMES, Plan
from _report import finish, machine
from _sections import (
    compression_rows,
    decode_rows,
    end_to_end_rows,
    rss_rows,
    zmq_rows,
)
from _zmq import Neighbours, bench_raw_zmq

from ophyd_xspress.hdf5 import COMPRESSIONS

__all__ = [
    "_end_to_end",
    "bench_codecs",
    "bench_decode_capture",
    "bench_decode_sim",
    "bench_disk",
    "bench_end_to_end",
    "bench_raw_zmq",
    "machine",
    "main",
]

HERE = Path(__file__).resolve().parent
SHARED = Path(
    os.environ.get(
        "XSPRESS_SHARED_DATA", HERE.parents[1] / "shared" / "data" / "xspress3"
    )
)
PARTS = ("decode", "zmq", "end-to-end", "compression", "rss")


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer frames (~2 min)")
    p.add_argument("--json", default=None, help="default: results/latest.json")
    p.add_argument("--dir", default=None, help="where runs write HDF5 (temp)")
    p.add_argument(
        "--repeat", type=int, default=1, help="end-to-end runs per channel count"
    )
    p.add_argument(
        "--only",
        choices=PARTS,
        default=None,
        help="run one part only (writes results/<part>.json by default)",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="every run this many frames (to try the code at tiny sizes)",
    )
    p.add_argument(
        "--channels",
        type=_counts,
        default=None,
        help="comma-separated channel counts for every part (default: per part)",
    )
    p.add_argument(
        "--rss",
        action="store_true",
        help="add the peak-RSS series (long: 1M frames at 36 channels)",
    )
    p.add_argument(
        "--rss-frames",
        type=_counts,
        default=RSS_FRAMES,
        help="run lengths of the peak-RSS series (default 10000,100000,1000000)",
    )
    p.add_argument("--rss-channels", type=int, default=36)
    p.add_argument(
        "--rss-compression",
        choices=("none", *COMPRESSIONS),
        default="bslz4",
        help="compression of the peak-RSS runs, or 'none' (1M uncompressed "
        "36-channel frames are 590 GB)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan = Plan(
        quick=args.quick, frames=args.frames, channels=args.channels, repeat=args.repeat
    )
    parts = (
        {args.only} if args.only else set(PARTS[:4]) | ({"rss"} if args.rss else set())
    )
    json_path = args.json or str(
        HERE / "results" / (f"{args.only}.json" if args.only else "latest.json")
    )
    ceiling = Neighbours(plan.raw_frames)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        steps: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = [
            ("decode", lambda: decode_rows(plan, SHARED)),
            ("zmq", lambda: zmq_rows(plan)),
            ("end-to-end", lambda: end_to_end_rows(plan, directory, ceiling)),
            (
                "compression",
                lambda: compression_rows(plan, directory, ceiling, rows),
            ),
            ("rss", lambda: _rss_part(args, directory, ceiling)),
        ]
        for number, (part, run) in enumerate(steps, 1):
            if part not in parts:
                continue
            print(f"{number}. {part} ...", flush=True)
            t0 = time.perf_counter()
            rows += run()
            print(f"   {time.perf_counter() - t0:.0f} s", flush=True)
    return finish(rows, json_path)


def _rss_part(
    args: argparse.Namespace, directory: Path, ceiling: Neighbours
) -> list[dict[str, Any]]:
    compression = None if args.rss_compression == "none" else args.rss_compression
    lengths = tuple(args.rss_frames)
    return rss_rows(lengths, args.rss_channels, directory, ceiling, compression)


if __name__ == "__main__":
    sys.exit(main())
