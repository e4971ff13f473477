"""PNG plots of Xspress data: spectra with ROI windows and line labels, dead time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

__all__ = ["plot_deadtime", "plot_spectra"]


def _figure(width: float, height: float, rows: int = 1) -> Figure:
    # The object-oriented API renders with Agg and leaves the user's pyplot
    # backend (e.g. Jupyter's inline one) alone.
    return Figure(figsize=(width, height), layout="constrained")


def plot_spectra(
    spectra: npt.NDArray[np.generic],
    path: str | Path,
    *,
    ev_per_bin: float = 10.0,
    offset_ev: float = 0.0,
    rois: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    lines: Mapping[str, float] | None = None,
    title: str = "Xspress3 spectra",
) -> Path:
    """Sum over frames of ``(frames, channels, bins)`` (or one ``(channels, bins)``),
    one curve per channel on a log scale, ROI windows shaded, lines labelled."""
    data = np.asarray(spectra, dtype=np.float64)
    if data.ndim == 3:
        data = data.sum(axis=0)
    channels, bins = data.shape
    energy_kev = (offset_ev + (np.arange(bins) + 0.5) * ev_per_bin) / 1000.0
    fig = _figure(10, 5.5)
    ax = fig.subplots()
    for c in range(channels):
        ax.plot(energy_kev, np.clip(data[c], 0.5, None), lw=0.8, label=f"channel {c}")
    ax.set_yscale("log")
    top = float(max(data.max(), 1.0))
    ax.set_ylim(0.5, top * 3)
    nonzero = np.nonzero(data.sum(axis=0))[0]
    if nonzero.size:
        hi = energy_kev[min(bins - 1, int(nonzero[-1]) + 20)]
        ax.set_xlim(0, hi)
    for i, (name, windows) in enumerate((rois or {}).items()):
        lo, hi_bin = windows[0]
        e_lo = (offset_ev + lo * ev_per_bin) / 1000
        e_hi = (offset_ev + (hi_bin + 1) * ev_per_bin) / 1000
        ax.axvspan(e_lo, e_hi, color=f"C{(i + 4) % 10}", alpha=0.2)
        ax.text((e_lo + e_hi) / 2, top * 2, f"ROI {name}", ha="center", fontsize=8)
    for label, e_ev in (lines or {}).items():
        x = e_ev / 1000
        ax.axvline(x, color="0.5", lw=0.6, ls=":")
        ax.text(x, top * 0.9, label, rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlabel("energy (keV)")
    ax.set_ylabel("counts (sum over frames)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out


def plot_deadtime(
    dead_time_percent: npt.NDArray[np.float64],
    icr: npt.NDArray[np.float64],
    ocr: npt.NDArray[np.float64],
    path: str | Path,
    *,
    title: str = "Dead time and count rates",
) -> Path:
    """Per channel against frame: dead time (%) and ICR / OCR (counts/s)."""
    dt = np.asarray(dead_time_percent)
    frames = np.arange(dt.shape[0])
    fig = _figure(10, 6)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for c in range(dt.shape[1]):
        ax1.plot(frames, dt[:, c], lw=0.8, label=f"channel {c}")
        ax2.plot(frames, icr[:, c], lw=0.8, color=f"C{c}", label=f"ICR ch{c}")
        ax2.plot(frames, ocr[:, c], lw=0.8, ls="--", color=f"C{c}", label=f"OCR ch{c}")
    ax1.set_ylabel("dead time (%)")
    ax1.legend(fontsize=8, ncol=4)
    ax1.set_title(title)
    ax2.set_ylabel("counts/s")
    ax2.set_xlabel("frame")
    ax2.legend(fontsize=7, ncol=4)
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out
