"""The parts of a benchmark run, in order; each returns its table rows.

1. decode; 2. the raw ZeroMQ ceiling; 3. the disk's ceiling and end-to-end
runs (uncompressed); 4. compression: the codecs alone, then end-to-end with
each compression; 5. (``--rss``) peak RSS against run length.

Every end-to-end row is measured between two bare receive loops at its
channel count (:class:`_zmq.Neighbours`) and carries their figures, its
``cpu_ratio`` and share of the ceiling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _decode import bench_decode_capture, bench_decode_sim
from _end_to_end import bench_end_to_end, spectra_bytes
from _files import bench_codecs, bench_disk, room_for
from _plan import Plan
from _zmq import Neighbours, bench_raw_zmq

__all__ = [
    "CAPTURES",
    "compression_rows",
    "decode_rows",
    "end_to_end_rows",
    "measured_end_to_end",
    "rss_rows",
    "zmq_rows",
]

#: The real captures decoded when present (in ``XSPRESS_SHARED_DATA``).
CAPTURES = ("xspress3-multipart.cbors", "xspress3-dump.cbors")


def decode_rows(plan: Plan, shared: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in CAPTURES:
        if (shared / name).exists():
            rows.append(bench_decode_capture(shared / name, plan.frames or plan.n))
    for framing in ("multipart", "legacy"):
        for ch in plan.decode_channels:
            rows.append(bench_decode_sim(ch, framing, plan.decode_frames()))
    return rows


def zmq_rows(plan: Plan) -> list[dict[str, Any]]:
    return [bench_raw_zmq(ch, plan.raw_frames(ch)) for ch in plan.zmq_channels]


def _not_run(
    channels: int, frames: int, compression: str | None, why: str
) -> dict[str, Any]:
    """A row for an end-to-end run that was skipped or failed."""
    return {
        "test": "end-to-end fly scan -> HDF5",
        "source": "fast publisher process",
        "framing": "multipart",
        "channels": channels,
        "frames": frames,
        "compression": compression,
        "frames_per_s": 0.0,
        "mb_per_s": 0.0,
        "us_per_frame": 0.0,
        "not_run": why,
    }


def measured_end_to_end(
    channels: int,
    frames: int,
    directory: Path,
    ceiling: Neighbours,
    compression: str | None = None,
    test: str | None = None,
) -> list[dict[str, Any]]:
    """One end-to-end run between two bare loops at its channel count: the
    loops measured for it (the one before only when not reused) and its row."""
    why = room_for(directory, channels, frames, compression)
    if why is not None:
        print(f"   {channels} ch, {frames} frames, {compression}: {why}", flush=True)
        return [_not_run(channels, frames, compression, why)]
    made = len(ceiling.rows)
    before = ceiling.before(channels)
    new = ceiling.rows[made:]
    try:
        row = bench_end_to_end(channels, frames, directory, compression=compression)
    except RuntimeError as exc:
        print(f"   {exc}", flush=True)
        return [*new, _not_run(channels, frames, compression, f"failed: {exc}")]
    after = ceiling.after(channels)
    Neighbours.compare(row, before, after)
    if test is not None:
        row["test"] = test
    return [*new, row, after]


def end_to_end_rows(
    plan: Plan, directory: Path, ceiling: Neighbours
) -> list[dict[str, Any]]:
    """The disk's ceiling, then uncompressed end-to-end runs, each compared
    with the disk's ceiling too (a run cannot beat the slower of the two)."""
    disk = bench_disk(directory)
    rows = [disk]
    for ch in plan.end_to_end_channels:
        for _ in range(plan.repeat):
            frames = plan.end_to_end_frames(ch)
            got = measured_end_to_end(ch, frames, directory, ceiling)
            for row in got:
                if "ceiling_frames_per_s" in row and "frames_lost" in row:
                    disk_fps = disk["mb_per_s"] * 1e6 / spectra_bytes(ch)
                    row["disk_frames_per_s"] = disk_fps
                    row["of_slower_ceiling"] = row["frames_per_s"] / min(
                        row["ceiling_frames_per_s"], disk_fps
                    )
            rows += got
    return rows


def compression_rows(
    plan: Plan,
    directory: Path,
    ceiling: Neighbours,
    uncompressed: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The codecs alone, then end-to-end with each compression at each of
    the plan's channel counts. ``uncompressed``: earlier uncompressed rows; a
    channel count without one gets its own run first. Each compressed row's
    ``vs_uncompressed``: the uncompressed file's bytes per frame over its own."""
    from ophyd_xspress.hdf5 import COMPRESSIONS

    rows: list[dict[str, Any]] = []
    for ch in plan.compression_channels:
        rows += bench_codecs(ch)
    for ch in plan.compression_channels:
        frames = plan.compression_frames(ch)
        reference = _reference(uncompressed + rows, ch)
        if reference is None:
            test = "end-to-end, compression=None"
            rows += measured_end_to_end(ch, frames, directory, ceiling, None, test)
            reference = _reference(rows, ch)
        for compression in COMPRESSIONS:
            test = f"end-to-end, compression={compression}"
            got = measured_end_to_end(ch, frames, directory, ceiling, compression, test)
            for row in got:
                if reference is not None and row.get("file_bytes_per_frame"):
                    row["vs_uncompressed"] = (
                        reference["file_bytes_per_frame"] / row["file_bytes_per_frame"]
                    )
            rows += got
    return rows


def _reference(rows: list[dict[str, Any]], channels: int) -> dict[str, Any] | None:
    """The latest uncompressed end-to-end row at ``channels`` that ran."""
    for row in reversed(rows):
        if (
            row["channels"] == channels
            and row.get("compression", "-") is None
            and "file_bytes_per_frame" in row
        ):
            return row
    return None


def rss_rows(
    lengths: tuple[int, ...],
    channels: int,
    directory: Path,
    ceiling: Neighbours,
    compression: str | None,
) -> list[dict[str, Any]]:
    """End-to-end runs of each length, each in a fresh process."""
    rows: list[dict[str, Any]] = []
    for frames in lengths:
        test = "peak RSS vs frames (end-to-end)"
        rows += measured_end_to_end(
            channels, frames, directory, ceiling, compression, test
        )
    return rows
