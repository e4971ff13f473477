"""What a run prints and writes: the table, the end-to-end rows against the
issue's targets, the peak-RSS series against its bound, the JSON record."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
from _rss import RSS_FLAT, rss_summary

__all__ = [
    "CPU_RATIO_TARGETS",
    "SIZE_TARGET",
    "checks",
    "finish",
    "machine",
    "print_end_to_end",
    "print_table",
]

#: Issue 17: the consumer's CPU per frame at most this times the bare receive
#: loop's, uncompressed, by channel count (none set at other counts).
CPU_RATIO_TARGETS: Final = {4: 1.5, 8: 1.5, 36: 1.3}
#: Issue 17: a compressed file at least this many times smaller.
SIZE_TARGET: Final = 3.0


def machine() -> dict[str, Any]:
    import h5py
    import zmq

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
    }


def _notes(r: dict[str, Any]) -> list[str]:
    notes = []
    if "not_run" in r:
        return [r["not_run"]]
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
    return notes


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'test':<36} {'source':<26} {'framing':<9} {'ch':>3} {'frames':>8} "
        f"{'frames/s':>9} {'MB/s':>6} {'us/frame':>8}  notes"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['test']:<36} {r['source']:<26} {r['framing']:<9} {r['channels']:>3} "
            f"{r['frames']:>8} {r['frames_per_s']:>9,.0f} {r['mb_per_s']:>6,.0f} "
            f"{r['us_per_frame']:>8.1f}  {', '.join(_notes(r))}"
        )


def _mark(met: bool) -> str:
    return "ok" if met else "MISSED"


def _targets_of(r: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """The issue's targets that apply to end-to-end row ``r``: name to
    (target, met)."""
    out: dict[str, tuple[str, bool]] = {"lost": ("0", r["frames_lost"] == 0)}
    target = CPU_RATIO_TARGETS.get(r["channels"])
    if target is not None and r.get("compression") is None and "cpu_ratio" in r:
        out["cpu_ratio"] = (f"<= {target}", r["cpu_ratio"] <= target)
    if r.get("compression") is not None and "vs_uncompressed" in r:
        out["smaller"] = (f">= {SIZE_TARGET:g}x", r["vs_uncompressed"] >= SIZE_TARGET)
    return out


def _cell(value: str, target: tuple[str, bool] | None, width: int) -> str:
    if target is None:
        return f"{value:>{width}}"
    return f"{value + f' ({target[0]} {_mark(target[1])})':>{width}}"


def print_end_to_end(rows: list[dict[str, Any]]) -> None:
    """Every end-to-end row with the figures issue 17 asks for, each next to
    its target where the issue sets one."""
    runs = [r for r in rows if "frames_lost" in r or "not_run" in r]
    if not runs:
        return
    print("\nend-to-end rows (cpu_ratio: consumer CPU/frame over the bare loop's,")
    print("the mean of the loops just before and after; targets of issue 17)")
    header = (
        f"{'row':<34} {'ch':>3} {'compr.':>6} {'frames':>9} {'frames/s':>8} "
        f"{'lost':>12} {'us/frame':>9} {'bare':>5} {'cpu_ratio':>20} "
        f"{'B/frame':>9} {'x smaller':>17} {'RSS MB':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        lead = (
            f"{r['test'][:34]:<34} {r['channels']:>3} {r['compression'] or '-':>6} "
            f"{r['frames']:>9,}"
        )
        if "not_run" in r:
            print(f"{lead} {r['not_run']}")
            continue
        t = _targets_of(r)
        ratio = f"{r['cpu_ratio']:.2f}" if "cpu_ratio" in r else "-"
        smaller = f"{r['vs_uncompressed']:.1f}x" if "vs_uncompressed" in r else "-"
        print(
            f"{lead} {r['frames_per_s']:>8,.0f} "
            f"{_cell(str(r['frames_lost']), t.get('lost'), 12)} "
            f"{r['receiver_cpu_us_per_frame']:>9.0f} "
            f"{r.get('bare_cpu_us_per_frame', float('nan')):>5.0f} "
            f"{_cell(ratio, t.get('cpu_ratio'), 20)} "
            f"{r['file_bytes_per_frame']:>9,.0f} "
            f"{_cell(smaller, t.get('smaller'), 17)} {r['peak_rss_mb']:>6.0f}"
        )


def checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target of issue 17 a row of this run measured: what, where, met."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if "frames_lost" not in r:
            continue
        for name, (target, met) in _targets_of(r).items():
            measured = {
                "lost": r["frames_lost"],
                "cpu_ratio": r.get("cpu_ratio"),
                "smaller": r.get("vs_uncompressed"),
            }[name]
            out.append(
                {
                    "target": f"{name} {target}",
                    "row": r["test"],
                    "channels": r["channels"],
                    "compression": r.get("compression"),
                    "frames": r["frames"],
                    "measured": measured,
                    "met": met,
                }
            )
    return out


def _print_rss(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    summary = rss_summary([r for r in rows if r["test"].startswith("peak RSS")])
    if summary is None:
        return None
    peaks = summary["peak_rss_mb_by_frames"]
    bounds = summary["predicted_peak_mb_by_frames"]
    print(
        f"\npeak RSS by run length, {summary['channels']} channels, "
        f"compression {summary['compression']}:"
    )
    for n, peak in peaks.items():
        bound = bounds[n]
        predicted = f"{bound:.0f} MB" if bound is not None else "?"
        print(f"  {n:>9,} frames: {peak:.0f} MB measured, {predicted} predicted bound")
    print(
        f"  max/min {summary['max_over_min']:.2f} (target <= {RSS_FLAT:.2f} "
        f"{_mark(summary['flat'])}); within the bound: "
        f"{_mark(summary['within_bound'])}"
    )
    if summary["formula"]:
        print(f"  bound (longest run) = {summary['formula']}")
    return summary


def finish(rows: list[dict[str, Any]], json_path: str) -> int:
    """Print everything, write the JSON record; 0."""
    print()
    print_table(rows)
    print_end_to_end(rows)
    rss = _print_rss(rows)
    out = Path(json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": machine(),
        "results": rows,
        "targets": checks(rows),
        "rss_series": rss,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out}")
    return 0
