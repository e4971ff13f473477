"""Dead-time physics from the raw Xspress scalers (event-width method), vectorised.

With ``f = clock_hz`` (80 MHz on Xspress3 and Xspress3-Mini)::

    dead_ticks   = all_events * (event_width + 1) + reset_ticks
    dead_percent = 100 * dead_ticks / clock_ticks
    dtc          = clock_ticks / (clock_ticks - dead_ticks)
    real_time    = clock_ticks / f                      (s)
    live_time    = real_time / dtc                      (s)
    ocr          = all_good / real_time                 (counts/s)
    icr          = ocr * dtc                            (counts/s, an estimate)
    trigger_rate = all_events / real_time               (events/s)
    corrected    = counts * dtc                         (spectra, ROI sums)

Every function accepts arrays of any leading shape (frames, channels, ...) and
broadcasts. ``clock_ticks == 0`` (no frame) and ``dead_ticks >= clock_ticks``
(saturated) give NaN / inf, set ``DeadTime.invalid`` and emit one
:class:`DeadTimeWarning` naming how many values are affected; they never raise
``ZeroDivisionError``.

The stream's own ``output_count_rate`` is ``all_good / (total_ticks * 80e6)`` (a
units bug in the device source, 6.4e15 too small): it is not a rate and nothing
here uses it. :func:`stream_ocr_as_rate` converts it, for comparison only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .._constants import CLOCK_HZ

__all__ = [
    "CLOCK_HZ",
    "DeadTime",
    "DeadTimeWarning",
    "Derived",
    "correct",
    "corrected_sum",
    "dead_time",
    "dead_time_from_scalers",
    "derive",
    "roi_sums",
    "stream_ocr_as_rate",
]

F64 = npt.NDArray[np.float64]


class DeadTimeWarning(RuntimeWarning):
    """Dead-time values that are NaN or infinite (no clock ticks, or saturated)."""


@dataclass(frozen=True, slots=True)
class DeadTime:
    """Dead-time quantities, each with the broadcast shape of the inputs."""

    dead_ticks: F64
    dead_percent: F64
    dtc: F64
    real_time: F64
    live_time: F64
    ocr: F64
    icr: F64
    trigger_rate: F64
    invalid: npt.NDArray[np.bool_]


def _f64(x: npt.ArrayLike) -> F64:
    return np.asarray(x, dtype=np.float64)


def dead_time(
    all_events: npt.ArrayLike,
    all_good: npt.ArrayLike,
    clock_ticks: npt.ArrayLike,
    reset_ticks: npt.ArrayLike,
    event_width: npt.ArrayLike,
    *,
    clock_hz: float = CLOCK_HZ,
    warn: bool = True,
) -> DeadTime:
    """Compute dead time, rates and the correction factor from raw scalers."""
    events = _f64(all_events)
    good = _f64(all_good)
    ticks = _f64(clock_ticks)
    # NaN / inf results are flagged (``invalid``) and warned about once, below;
    # numpy's own floating-point warnings would only repeat that, noisily.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dead = events * (_f64(event_width) + 1.0) + _f64(reset_ticks)
        live_ticks = ticks - dead
        dtc = np.where(live_ticks > 0, ticks / live_ticks, np.inf)
        dtc = np.where(ticks > 0, dtc, np.nan)
        dead_percent = np.where(ticks > 0, 100.0 * dead / ticks, np.nan)
        real_time = ticks / clock_hz
        live_time = np.where(ticks > 0, real_time / dtc, np.nan)
        ocr = np.where(ticks > 0, good / real_time, np.nan)
        icr = ocr * dtc
        trigger_rate = np.where(ticks > 0, events / real_time, np.nan)
    invalid = ~np.isfinite(dtc)
    if warn and invalid.any():
        n_zero = int(np.count_nonzero(ticks <= 0))
        n_sat = int(np.count_nonzero(invalid)) - n_zero
        warnings.warn(
            DeadTimeWarning(
                f"dead-time correction undefined for {int(invalid.sum())} of "
                f"{invalid.size} values: {n_zero} with clock_ticks == 0 (NaN), "
                f"{n_sat} saturated with dead_ticks >= clock_ticks (inf)"
            ),
            stacklevel=2,
        )
    return DeadTime(
        dead_ticks=dead,
        dead_percent=_f64(dead_percent),
        dtc=_f64(dtc),
        real_time=_f64(real_time),
        live_time=_f64(live_time),
        ocr=_f64(ocr),
        icr=_f64(icr),
        trigger_rate=_f64(trigger_rate),
        invalid=invalid,
    )


def dead_time_from_scalers(
    scalers: Mapping[str, npt.ArrayLike],
    *,
    clock_hz: float = CLOCK_HZ,
    warn: bool = True,
) -> DeadTime:
    """:func:`dead_time` from a mapping with the stream's scaler names."""
    return dead_time(
        scalers["all_events"],
        scalers["all_good"],
        scalers["clock_ticks"],
        scalers["reset_ticks"],
        scalers["event_width"],
        clock_hz=clock_hz,
        warn=warn,
    )


def correct(counts: npt.ArrayLike, dtc: npt.ArrayLike) -> F64:
    """Dead-time corrected counts: ``counts * dtc``.

    ``dtc`` has the shape of ``counts`` without its last axis when ``counts``
    are spectra ``(..., channels, bins)``, or the same shape for scalars.
    """
    c = _f64(counts)
    d = _f64(dtc)
    if c.ndim == d.ndim + 1:
        d = d[..., np.newaxis]
    # An undefined dtc (NaN, or inf when saturated) was flagged by dead_time();
    # 0 * inf = NaN here, silently.
    with np.errstate(invalid="ignore", over="ignore"):
        return c * d


def roi_sums(spectra: npt.ArrayLike, windows: npt.ArrayLike) -> npt.NDArray[Any]:
    """Sum counts in inclusive bin windows.

    ``spectra``: ``(..., channels, bins)``. ``windows``: ``(rois, 2)`` applied to
    every channel, or ``(channels, rois, 2)`` per channel, each ``[low, high]``
    inclusive. Returns ``(..., channels, rois)``: uint64 for unsigned integer
    (and bool) spectra, int64 for signed ones, float64 / complex128 for floating
    point / complex spectra (where an inf or NaN bin gives an inf or NaN sum,
    without numpy warnings).
    """
    s = np.asarray(spectra)
    w = np.asarray(windows)
    if s.ndim < 2:
        raise ValueError(f"spectra must be (..., channels, bins), got shape {s.shape}")
    channels, bins = s.shape[-2], s.shape[-1]
    if w.ndim == 2:
        w = np.broadcast_to(w, (channels, *w.shape))
    if w.ndim != 3 or w.shape[0] != channels or w.shape[2] != 2:
        raise ValueError(
            f"windows must be (rois, 2) or ({channels}, rois, 2), got {w.shape}"
        )
    if w.size and (
        not np.issubdtype(w.dtype, np.integer)
        or (w[..., 0] < 0).any()
        or (w[..., 1] >= bins).any()
        or (w[..., 0] > w[..., 1]).any()
    ):
        raise ValueError(
            f"windows must be integer [low, high] with 0 <= low <= high < {bins}"
        )
    lo = w[..., 0].astype(np.intp)
    hi = w[..., 1].astype(np.intp) + 1
    kind = s.dtype.kind
    if kind in "fc":
        return _float_window_sums(s, lo, hi)
    acc = np.int64 if kind == "i" else np.uint64
    n_windows = channels * lo.shape[-1]
    if n_windows <= 256:
        # A few windows (the usual case): sum each window's bins directly, ~10x
        # faster on a block of frames than a running sum over every bin.
        # Summing uint32 counts in uint32 (no cast per element) is another ~5x
        # faster, and exact when the window's sum cannot reach 2**32: checked
        # from its largest bin and its width (the window's own bins only: the
        # whole block's maximum cost more than all the sums), else 64 bits.
        narrow = kind == "u" and s.dtype.itemsize <= 4
        out_i = np.empty((*s.shape[:-1], lo.shape[-1]), dtype=acc)
        for c in range(channels):
            for r in range(lo.shape[-1]):
                window = s[..., c, lo[c, r] : hi[c, r]]
                step = acc
                fits = window.size and int(window.max()) * window.shape[-1] < 2**32
                if narrow and fits:
                    step = np.uint32
                out_i[..., c, r] = window.sum(axis=-1, dtype=step)
        return out_i
    # Many windows: differences of a running sum, exact (modulo 2**64,
    # unreachable with 32-bit counts).
    cs = np.zeros((*s.shape[:-1], bins + 1), dtype=acc)
    np.cumsum(s, axis=-1, dtype=acc, out=cs[..., 1:])
    idx_shape = (1,) * (s.ndim - 2) + lo.shape
    hi_vals = np.take_along_axis(
        cs, np.broadcast_to(hi.reshape(idx_shape), (*s.shape[:-2], *hi.shape)), axis=-1
    )
    lo_vals = np.take_along_axis(
        cs, np.broadcast_to(lo.reshape(idx_shape), (*s.shape[:-2], *lo.shape)), axis=-1
    )
    out: npt.NDArray[Any] = hi_vals - lo_vals
    return out


@dataclass(frozen=True, slots=True)
class Derived:
    """Everything computed from one frame (or a block of frames): dead time and
    rates from the scalers, ROI sums raw and corrected from the spectra."""

    dead_time: DeadTime
    #: ``(..., channels, rois)`` raw ROI sums, or None without windows.
    roi: npt.NDArray[Any] | None
    #: ``roi * dtc``, or None without windows.
    roi_corrected: F64 | None
    #: ``(..., bins)``: the spectra times dtc, summed over channels, when asked.
    summed_spectrum: F64 | None = None

    def columns(self) -> dict[str, npt.NDArray[Any]]:
        """The derived quantities by their HDF5 dataset name (see
        :mod:`ophyd_xspress._schema`)."""
        dt = self.dead_time
        out: dict[str, npt.NDArray[Any]] = {
            "dtc": dt.dtc,
            "dead_time_percent": dt.dead_percent,
            "elapsed_time": dt.real_time,
            "live_time": dt.live_time,
            "input_count_rate": dt.icr,
            "ocr": dt.ocr,
        }
        if self.roi is not None and self.roi_corrected is not None:
            out["roi"] = self.roi
            out["roi_corrected"] = self.roi_corrected
        if self.summed_spectrum is not None:
            out["summed_spectrum"] = self.summed_spectrum
        return out


def derive(
    scalers: Mapping[str, npt.ArrayLike],
    spectra: npt.ArrayLike | None = None,
    windows: npt.ArrayLike | None = None,
    *,
    clock_hz: float = CLOCK_HZ,
    warn: bool = True,
    summed: bool = False,
) -> Derived:
    """The per-frame physics, the one derivation every consumer uses.

    ``scalers``: the stream's scalers by name (``(..., channels)`` arrays: one
    frame, or a block of frames). ``spectra`` ``(..., channels, bins)`` and
    ``windows`` (as :func:`roi_sums` takes them) give the ROI sums; without
    either, ``roi`` and ``roi_corrected`` are None. ``summed``: also the
    spectra times dtc summed over channels (:func:`corrected_sum`; needs
    ``spectra``). Dead time comes from the formula only; the stream's own
    ``dead_time_correction`` is not used.
    """
    dt = dead_time_from_scalers(scalers, clock_hz=clock_hz, warn=warn)
    total = corrected_sum(spectra, dt.dtc) if summed and spectra is not None else None
    if spectra is None or windows is None or np.asarray(windows).size == 0:
        return Derived(dt, None, None, total)
    raw = roi_sums(spectra, windows)
    return Derived(dt, raw, correct(raw, dt.dtc), total)


def corrected_sum(spectra: npt.ArrayLike, dtc: npt.ArrayLike) -> F64:
    """``(..., channels, bins)`` spectra times ``(..., channels)`` dtc, summed
    over channels: ``(..., bins)``. A channel whose dtc is NaN or inf makes its
    frame's sum NaN or inf (flagged by :func:`dead_time`): a sum missing a
    channel would look like a real one."""
    s = np.asarray(spectra)
    d = _f64(dtc)
    out = np.zeros((*s.shape[:-2], s.shape[-1]), np.float64)
    # one channel at a time: a (..., bins) temporary, not a float copy of all
    with np.errstate(invalid="ignore", over="ignore"):
        for c in range(s.shape[-2]):
            out += s[..., c, :] * d[..., c, np.newaxis]
    return out


def _float_window_sums(
    s: npt.NDArray[Any], lo: npt.NDArray[np.intp], hi: npt.NDArray[np.intp]
) -> npt.NDArray[Any]:
    """Window sums of floating-point spectra, exact per slice: a running sum
    would turn inf - inf into NaN and lose precision. (Floating-point spectra
    are rare: the device sends uint32.)"""
    acc = np.complex128 if s.dtype.kind == "c" else np.float64
    out = np.zeros((*s.shape[:-1], lo.shape[-1]), dtype=acc)
    with np.errstate(invalid="ignore", over="ignore"):
        for c in range(lo.shape[0]):
            for r in range(lo.shape[-1]):
                out[..., c, r] = s[..., c, lo[c, r] : hi[c, r]].sum(axis=-1, dtype=acc)
    return out


def stream_ocr_as_rate(output_count_rate: npt.ArrayLike) -> F64:
    """Undo the device's units bug: its ``output_count_rate`` times ``80e6**2``.

    Only for comparing with :attr:`DeadTime.ocr`; compute rates from scalers.
    """
    return _f64(output_count_rate) * CLOCK_HZ * CLOCK_HZ
