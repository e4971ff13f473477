"""Peak RSS against run length, and the bound the writer's design implies.

What a consumer holds while a run lasts does not depend on its length:

* the writer's block pool: at most ``max_blocks`` blocks of ``block_rows``
  rows, a row being one frame's spectra, ``channels x bins x 4`` bytes
  (``hdf5/_blocks.py``: ``MAX_BLOCKS`` = 8 blocks of about ``BLOCK_BYTES`` =
  16 MiB, a whole number of chunks; ``hdf5/_writer.py`` sets ``block_rows``);
  with compression, also the compressed chunks of the block being written
  (less than one block);
* the socket's queue: at most ``queue_messages`` frames (the receive
  high-water mark, ``transport.rcvhwm_for``: 256 MiB of frames, at most 4096);
* constants: the interpreter, the libraries, the device, measured in the same
  process just before the run starts (``baseline_rss_mb``).

So ``peak RSS <= baseline + max_blocks x block_rows x channels x bins x 4 +
queue_messages x frame bytes (+ one block when compressed)``, whatever the
number of frames; the series checks it is flat (within 10 %) from 10k to 1M.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["RSS_FLAT", "formula", "predicted_peak_mb", "rss_summary"]

#: Peak RSS of the longest run at most this times the shortest's.
RSS_FLAT: Final = 1.10


def predicted_peak_mb(row: dict[str, Any]) -> float | None:
    """The bound on an end-to-end row's peak RSS (MB), from its own figures."""
    if "pool_mb" not in row:
        return None
    block_mb = row["block_rows"] * row["row_bytes"] / 1e6
    extra = block_mb if row.get("compression") else 0.0
    return float(row["baseline_rss_mb"] + row["pool_mb"] + row["queue_mb"] + extra)


def formula(row: dict[str, Any]) -> str:
    """The bound of :func:`predicted_peak_mb`, its terms spelled out."""
    ch = row["channels"]
    text = (
        f"baseline {row['baseline_rss_mb']:.0f} MB + pool {row['max_blocks']} blocks"
        f" x {row['block_rows']} rows x {row['row_bytes']:,} B ({ch} ch x 4096 x 4)"
        f" = {row['pool_mb']:.0f} MB + socket queue {row['queue_messages']} frames"
        f" = {row['queue_mb']:.0f} MB"
    )
    if row.get("compression"):
        text += (
            f" + one block of compressed chunks "
            f"{row['block_rows'] * row['row_bytes'] / 1e6:.0f} MB"
        )
    return text


def rss_summary(series: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Peaks by run length, their spread, and each run's bound (the formula
    spelled out for the longest)."""
    done = [r for r in series if "peak_rss_mb" in r]
    if not done:
        return None
    peaks = {int(r["frames"]): float(r["peak_rss_mb"]) for r in done}
    bounds = {int(r["frames"]): predicted_peak_mb(r) for r in done}
    longest = max(done, key=lambda r: r["frames"])
    spread = max(peaks.values()) / min(peaks.values())
    return {
        "channels": longest["channels"],
        "compression": longest.get("compression"),
        "peak_rss_mb_by_frames": peaks,
        "predicted_peak_mb_by_frames": bounds,
        "max_over_min": spread,
        "flat": spread <= RSS_FLAT,
        # each run against its own bound (its own baseline)
        "within_bound": all(b is not None and peaks[n] <= b for n, b in bounds.items()),
        "formula": formula(longest) if "pool_mb" in longest else "",
    }
