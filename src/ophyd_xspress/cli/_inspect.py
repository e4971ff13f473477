"""``ophyd-xspress inspect CAPTURE.cbors [--json]``."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from typing import Any

from ..tools import CaptureError, inspect_messages, read_capture
from ..transport import log_anomalies

__all__ = ["add_arguments", "format_report", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("capture", help="a .cbors stream capture")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of text"
    )


def _fmt(x: Any, digits: int = 6) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def format_report(report: dict[str, Any], name: str) -> str:
    lines = [
        f"{name}: {report['messages']} messages, {len(report['series'])} series, "
        f"{report['frames']} frames"
    ]
    for s in report["series"]:
        title = (
            f"series {s['index']}"
            if s["index"] is not None
            else "frames outside any series (no header seen)"
        )
        lines.append("")
        lines.append(title)
        if s["header"] is not None:
            for key, value in s["header"].items():
                if key in ("htype", "limits", "extra_tags"):
                    continue
                lines.append(f"  {key:<22} {value}")
            if s["header"].get("extra_tags"):
                lines.append(
                    f"  {'extra_tags':<22} {', '.join(s['header']['extra_tags'])}"
                )
        lines.append(f"  {'framing':<22} {_fmt(s['framing'])}")
        lines.append(
            f"  {'shape':<22} {_fmt(s['channels'])} channels x {_fmt(s['bins'])} bins "
            f"({_fmt(s['dtype'])})"
        )
        lines.append(f"  {'exposure (s)':<22} {_fmt(s['exptime'], 9)}")
        lines.append(
            f"  {'frames received':<22} {s['frames']} "
            f"(numbers {_fmt(s['first_frame'])}..{_fmt(s['last_frame'])})"
        )
        if s.get("hardware_windows"):
            lines.append(f"  {'hardware windows':<22} {s['hardware_windows']}")
        an = s["anomalies"]
        found = [f"{k}={v}" for k, v in an.items() if v and k != "series_end_received"]
        lines.append(f"  {'series_end received':<22} {an['series_end_received']}")
        lines.append(f"  {'anomalies':<22} {'; '.join(found) if found else 'none'}")
        if s.get("repeats_excluded"):
            lines.append(
                f"  {'counted once':<22} {s['unique_frames']} unique frames; "
                f"{s['repeats_excluded']} repeats left out of the totals below"
            )
        lines.append(f"  {'counts per channel':<22} {s['channel_totals']}")
        lines.append(
            f"  {'sum == all_good':<22} "
            f"{'yes' if s['spectrum_sums_equal_all_good'] else 'NO'}"
        )
        if "window_counts_totals" in s:
            lines.append(f"  {'window counts':<22} {s['window_counts_totals']}")
        d = s["dtc"]
        lines.append(
            f"  {'dead-time factor':<22} min {_fmt(d['min'], 8)}  "
            f"median {_fmt(d['median'], 8)}  max {_fmt(d['max'], 8)}"
        )
        rel = _fmt(s["dtc_max_rel_diff_vs_stream"], 3)
        lines.append(f"  {'  vs stream (max rel)':<22} {rel}")
        if "dead_time_percent" in s:
            p = s["dead_time_percent"]
            lines.append(
                f"  {'dead time %':<22} min {_fmt(p['min'], 4)}  "
                f"median {_fmt(p['median'], 4)}  max {_fmt(p['max'], 4)}"
            )
            icr = ", ".join(_fmt(x, 4) for x in s["icr_mean_cps"])
            ocr = ", ".join(_fmt(x, 4) for x in s["ocr_mean_cps"])
            lines.append(f"  {'ICR mean (cps)':<22} {icr}")
            lines.append(f"  {'OCR mean (cps)':<22} {ocr}")
    if report["errors"]:
        lines.append("")
        lines.append(f"{len(report['errors'])} message(s) could not be decoded:")
        for e in report["errors"][:20]:
            lines.append(f"  message {e['message']}: {e['error']}: {e['detail']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # The report lists every anomaly; with -v they are also logged as found.
    on_anomalies = (
        functools.partial(log_anomalies, logging.getLogger(__name__), args.capture)
        if args.verbose
        else None
    )
    try:
        report = inspect_messages(read_capture(args.capture), on_anomalies)
    except CaptureError as exc:
        print(f"ophyd-xspress inspect: error: {exc}", file=sys.stderr)
        return 2
    if report["packets"] == 0:
        print(
            f"ophyd-xspress inspect: error: {args.capture}: no Xspress3 packets found "
            f"in {report['messages']} messages",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(format_report(report, args.capture))
    return 0
