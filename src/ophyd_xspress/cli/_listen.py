"""``ophyd-xspress listen ENDPOINT``: live stream statistics in the terminal."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

__all__ = ["PULL_WARNING", "add_arguments", "run"]

#: Printed when ``listen`` uses a PULL socket: it competes for the messages.
PULL_WARNING = (
    "warning: a PULL socket takes its share of a PUSH stream's messages "
    "(round-robin): every frame it receives is taken away from the other "
    "consumers (a detector in passive mode, a writer). Use --socket pull only "
    "when nothing else consumes this stream."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint", help="e.g. tcp://host:9999 (the device's PUB)")
    parser.add_argument("--socket", choices=("sub", "pull"), default="sub")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON summary and exit"
    )
    parser.add_argument("--frames", type=int, default=None, help="stop after N frames")
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop after this many seconds"
    )


def _table(s: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"Xspress stream {s['endpoint']}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("frames received", f"{s['frames']}")
    t.add_row("frame rate", f"{s['frame_rate_hz']:.1f} Hz")
    t.add_row("throughput", f"{s['mb_per_s']:.2f} MB/s ({s['megabytes']:.1f} MB)")
    t.add_row("last frame number", str(s["last_frame"]))
    t.add_row("series (headers / ends)", f"{s['headers']} / {s['series_ends']}")
    t.add_row(
        "missing / repeated / out of order",
        f"{s['missing']} / {s['repeated']} / {s['out_of_order']}",
    )
    t.add_row("outside any series", str(s["frames_outside_series"]))
    t.add_row("protocol errors", f"{s['protocol_errors']} {s['last_error'][:60]}")
    if s["channels"] <= CHANNEL_ROWS:
        for c in range(s["channels"]):
            ocr = s["ocr_cps"][c]
            icr = s["icr_cps"][c]
            dead = s["dead_time_percent"][c]
            t.add_row(
                f"channel {c}",
                f"OCR {ocr or 0:,.0f} cps  ICR {icr or 0:,.0f} cps  "
                f"dead {dead or 0:.2f} %",
            )
    else:
        for label, key, unit in _SPREAD_ROWS:
            t.add_row(label, _spread([v or 0.0 for v in s[key]], unit))
    return t


#: Up to this many channels, one row each; beyond, the spread over channels
#: (a 36-channel table would push the stream figures off the screen).
CHANNEL_ROWS = 8
_SPREAD_ROWS = (
    ("OCR (min / median / max)", "ocr_cps", "cps"),
    ("ICR (min / median / max)", "icr_cps", "cps"),
    ("dead time (min / median / max)", "dead_time_percent", "%"),
)


def _spread(values: list[float], unit: str) -> str:
    """``min / median / max`` over channels, naming the channels of the extremes."""
    order = sorted(range(len(values)), key=values.__getitem__)
    lo, hi = order[0], order[-1]
    median = statistics.median(values)
    fmt = "{:.2f}" if unit == "%" else "{:,.0f}"
    return (
        f"{fmt.format(values[lo])} (ch {lo}) / {fmt.format(median)} / "
        f"{fmt.format(values[hi])} (ch {hi}) {unit}"
    )


def run(args: argparse.Namespace) -> int:
    import functools
    import logging

    from ..tools import StreamMonitor
    from ..transport import log_anomalies

    # Joining a running stream mid-series is normal for a monitor: the summary
    # counts those frames and every other anomaly; -v also logs each one.
    on_anomalies = (
        functools.partial(log_anomalies, logging.getLogger(__name__), args.endpoint)
        if args.verbose
        else None
    )
    if args.socket == "pull":
        print(PULL_WARNING, file=sys.stderr)
    monitor = StreamMonitor(
        args.endpoint, socket=args.socket, on_anomalies=on_anomalies
    )
    start = time.monotonic()

    def finished() -> bool:
        if args.frames is not None and monitor.frames >= args.frames:
            return True
        return args.timeout is not None and time.monotonic() - start >= args.timeout

    try:
        if args.json:
            while not finished():
                monitor.poll(0.2)
            print(json.dumps(monitor.summary(), indent=2))
            return 0
        from rich.live import Live

        with Live(_table(monitor.summary()), refresh_per_second=4) as live:
            while not finished():
                monitor.poll(0.25)
                live.update(_table(monitor.summary()))
        return 0
    except KeyboardInterrupt:
        if args.json:
            print(json.dumps(monitor.summary(), indent=2))
        return 0
    finally:
        monitor.close()
        sys.stdout.flush()
