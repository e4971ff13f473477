"""The simulated pulse processor: rates, dead time, event sampling, scalers.

Pure numpy. :class:`ProcessorModel` says how the Xspress3 processor spends its
time (dead time per event, preamplifier resets, rejected events);
:func:`simulate_frame` draws one frame: the detected events, placed into bins
by a spectrum shape from :mod:`._spectrum`, and the scalers the real device
streams (``all_events``, ``all_good``, ``clock_ticks``, ``total_ticks``,
``reset_ticks``, ``event_width``, ``dead_time_correction``,
``output_count_rate``). ``dead_time_correction`` is the formula of
:func:`ophyd_xspress.protocol.dead_time`; the window sums are
:func:`ophyd_xspress.protocol.roi_sums`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._constants import CLOCK_HZ, READOUT_TIME
from ..protocol import dead_time, roi_sums
from ._spectrum import PreparedShape, as_prepared

__all__ = [
    "DEFAULT_PROCESSOR",
    "ProcessorModel",
    "SimulatedFrame",
    "clock_ticks_for_exposure",
    "expected_dead_fraction",
    "expected_event_rate",
    "simulate_frame",
]

_UINT32_MAX: Final = 2**32 - 1
_INT32_MAX: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ProcessorModel:
    """Pulse-processor behaviour behind the scalers.

    * every detected event is dead for ``event_width + 1`` ticks;
    * preamplifier resets happen ``resets_per_event`` times per detected event
      (charge filling the ramp) plus ``leakage_resets_hz`` per second, each lasting
      ``reset_length_ticks`` (+1 with probability ``reset_jitter_probability``);
    * of the detected events, a fraction
      ``1 - (1 - baseline_reject_fraction) * exp(-icr * pileup_window_s)`` is
      rejected (pile-up, noise) and never reaches the spectrum.

    Defaults follow the real captures (event width 6, resets of 90-91 ticks, one
    leakage reset every ~0.1 s) and give ~32 % dead time at 1e6 cps.
    """

    reset_length_ticks: int = 90
    resets_per_event: float = 0.35
    leakage_resets_hz: float = 10.0
    reset_jitter_probability: float = 0.5
    pileup_window_s: float = 20e-9
    baseline_reject_fraction: float = 0.002

    def __post_init__(self) -> None:
        if int(self.reset_length_ticks) != self.reset_length_ticks:
            raise ValueError("reset_length_ticks must be an integer")
        if self.reset_length_ticks < 0 or self.resets_per_event < 0:
            raise ValueError("reset_length_ticks and resets_per_event must be >= 0")
        if self.leakage_resets_hz < 0 or self.pileup_window_s < 0:
            raise ValueError("leakage_resets_hz and pileup_window_s must be >= 0")
        if not (0.0 <= self.reset_jitter_probability <= 1.0):
            raise ValueError("reset_jitter_probability must be in [0, 1]")
        if not (0.0 <= self.baseline_reject_fraction <= 1.0):
            raise ValueError("baseline_reject_fraction must be in [0, 1]")

    def mean_reset_ticks(self) -> float:
        """Mean length of one reset in ticks."""
        return self.reset_length_ticks + self.reset_jitter_probability

    def leakage_dead_fraction(self, clock_hz: float = CLOCK_HZ) -> float:
        """Share of the time spent in leakage resets (at most 1)."""
        return min(self.leakage_resets_hz * self.mean_reset_ticks() / clock_hz, 1.0)

    def dead_ticks_per_event(self, event_width: ArrayLike) -> NDArray[np.float64]:
        """Mean dead ticks per detected event: event width + 1 + its reset share."""
        ew = np.asarray(event_width, dtype=np.float64)
        return ew + 1.0 + self.resets_per_event * self.mean_reset_ticks()

    def good_fraction(self, true_icr: ArrayLike) -> NDArray[np.float64]:
        """Fraction of detected events that are good (reach the spectrum)."""
        icr = np.asarray(true_icr, dtype=np.float64)
        return (1.0 - self.baseline_reject_fraction) * np.exp(
            -icr * self.pileup_window_s
        )


DEFAULT_PROCESSOR: Final = ProcessorModel()


def expected_event_rate(
    true_icr: ArrayLike,
    event_width: ArrayLike = 6,
    processor: ProcessorModel = DEFAULT_PROCESSOR,
    clock_hz: float = CLOCK_HZ,
) -> NDArray[np.float64]:
    """Mean rate of detected events (``all_events`` per second of real time).

    Non-paralysable: ``icr * (1 - leak) / (1 + icr * tau)`` with ``tau`` the dead
    time per event in seconds and ``leak`` the dead fraction of leakage resets.
    """
    icr = np.asarray(true_icr, dtype=np.float64)
    tau = processor.dead_ticks_per_event(event_width) / clock_hz
    leak = processor.leakage_dead_fraction(clock_hz)
    return icr * (1.0 - leak) / (1.0 + icr * tau)


def expected_dead_fraction(
    true_icr: ArrayLike,
    event_width: ArrayLike = 6,
    processor: ProcessorModel = DEFAULT_PROCESSOR,
    clock_hz: float = CLOCK_HZ,
) -> NDArray[np.float64]:
    """Mean ``dead_ticks / clock_ticks`` for a true input rate (0..1)."""
    tau_ticks = processor.dead_ticks_per_event(event_width)
    rate = expected_event_rate(true_icr, event_width, processor, clock_hz)
    leak = processor.leakage_dead_fraction(clock_hz)
    return rate * tau_ticks / clock_hz + leak


def clock_ticks_for_exposure(
    exposure_time_s: float,
    latency_time_s: float,
    readout_s: float = READOUT_TIME,
    clock_hz: float = CLOCK_HZ,
) -> tuple[float, int]:
    """Frame time and clock ticks the device uses for one frame.

    ``exptime = ExposureTime - LatencyTime - readout`` (as the device computes it,
    unrounded) and ``ticks = int(exptime * clock_hz)``. The product is rounded to
    6 decimals before truncation so float noise cannot lose a tick:
    0.1 s with 100 ns latency gives (0.099999875, 7999990).
    """
    exptime = exposure_time_s - latency_time_s - readout_s
    if not math.isfinite(exptime) or exptime <= 0.0:
        raise ValueError(
            f"exposure {exposure_time_s} s - latency {latency_time_s} s - readout "
            f"{readout_s} s leaves no time"
        )
    ticks = int(round(exptime * clock_hz, 6))
    if ticks > _UINT32_MAX:
        raise ValueError(f"{ticks} clock ticks do not fit the 32-bit counter")
    return exptime, ticks


@dataclass(frozen=True, eq=False, slots=True)
class SimulatedFrame:
    """One simulated frame: spectra and the per-channel scalers of the stream.

    Scalers are ``(channels,)`` arrays with the stream's dtypes. Invariants:
    ``spectra.sum(axis=1) == all_good <= all_events``, ``total_ticks ==
    clock_ticks`` and ``dead = all_events * (event_width + 1) + reset_ticks <
    clock_ticks`` (for ``clock_ticks >= 1``).

    ``output_count_rate`` deliberately reproduces the REAL DEVICE'S UNITS BUG:
    it is ``all_good / (total_ticks * clock_hz)``, not a rate in counts/s
    (6.4e15 too small at 80 MHz). The true OCR is ``all_good / real_time``.
    """

    spectra: NDArray[np.uint32]
    all_events: NDArray[np.uint32]
    all_good: NDArray[np.uint32]
    clock_ticks: NDArray[np.uint32]
    total_ticks: NDArray[np.uint32]
    reset_ticks: NDArray[np.uint32]
    event_width: NDArray[np.int32]
    dead_time_correction: NDArray[np.float64]
    output_count_rate: NDArray[np.float64]

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.spectra.shape[0])

    def window_counts(self, windows: ArrayLike) -> NDArray[np.uint32]:
        """Counts in the hardware windows: see :func:`window_counts`."""
        return window_counts(self.spectra, windows)

    def scaler_list(
        self, windows: ArrayLike | None = None
    ) -> list[NDArray[np.generic]]:
        """The scalers in the stream's pickle order.

        ``output_count_rate, all_events, all_good, clock_ticks, total_ticks,
        reset_ticks, event_width, dead_time_correction`` and, when ``windows`` is
        given, ``window_counts`` (new firmware).
        """
        out: list[NDArray[np.generic]] = [
            self.output_count_rate,
            self.all_events,
            self.all_good,
            self.clock_ticks,
            self.total_ticks,
            self.reset_ticks,
            self.event_width,
            self.dead_time_correction,
        ]
        if windows is not None:
            out.append(self.window_counts(windows))
        return out


def window_counts(
    spectra: NDArray[np.uint32], windows: ArrayLike
) -> NDArray[np.uint32]:
    """Counts in inclusive ``[lo, hi]`` bin windows, shape ``(windows, channels)``.

    ``windows`` is ``(n, 2)`` (same window for every channel) or
    ``(n, channels, 2)`` (the header ``limits`` layout). Bounds are clipped to
    the spectrum; an empty window (``hi < lo``) counts 0. Raw, not corrected.
    """
    w = np.asarray(windows, dtype=np.int64)
    nchan, nbins = spectra.shape
    if w.ndim == 2 and w.shape[1] == 2:
        w = np.broadcast_to(w[:, None, :], (w.shape[0], nchan, 2))
    if w.ndim != 3 or w.shape[1:] != (nchan, 2):
        raise ValueError(f"windows must be (n, 2) or (n, {nchan}, 2), got {w.shape}")
    lo = np.clip(w[..., 0], 0, nbins)
    hi = np.clip(w[..., 1], -1, nbins - 1)
    empty = hi < lo  # also a window wholly outside the spectrum
    # roi_sums takes (channels, windows, 2) with 0 <= lo <= hi < bins
    safe_lo = np.where(empty, 0, lo)
    safe_hi = np.where(empty, 0, hi)
    limits = np.stack((safe_lo, safe_hi), axis=-1).transpose(1, 0, 2)
    sums = roi_sums(spectra, limits).T
    return np.where(empty, 0, sums).astype(np.uint32)


# Below this many expected counts per support bin, placing events one by one
# (inverse CDF) is cheaper than one Poisson draw per bin. Both are exact.
_EVENT_SAMPLING_THRESHOLD: Final = 0.25


def _place_events(
    rng: np.random.Generator,
    prep: PreparedShape,
    n: NDArray[np.int64],
    spectra: NDArray[np.uint32],
) -> None:
    """Scatter ``n[c]`` events of channel ``c`` over the bins by the pdf."""
    nchan = n.shape[0]
    width = prep.hi - prep.lo
    total = int(n.sum())
    if total == 0:
        return
    u = rng.random(total)
    if prep.rows == 1:
        idx = np.searchsorted(prep.cdf[0], u, side="right")
        if nchan > 1:
            idx += np.repeat(np.arange(0, nchan * width, width, dtype=np.int64), n)
    else:
        idx = np.empty(total, dtype=np.int64)
        start = 0
        for c in range(nchan):
            stop = start + int(n[c])
            idx[start:stop] = np.searchsorted(prep.cdf[c], u[start:stop], side="right")
            idx[start:stop] += c * width
            start = stop
    counts = np.bincount(idx, minlength=nchan * width)
    spectra[:, prep.lo : prep.hi] = counts.reshape(nchan, width)


def _event_widths(event_width: ArrayLike, nchan: int) -> NDArray[np.int64]:
    if isinstance(event_width, int):
        if not 0 <= event_width < _INT32_MAX:
            raise ValueError("event_width must be in [0, 2**31 - 2]")
        return np.full(nchan, event_width, dtype=np.int64)
    raw = np.broadcast_to(np.asarray(event_width), (nchan,))
    ew = raw.astype(np.int64)
    if np.any(ew != raw) or ew.min() < 0 or ew.max() >= _INT32_MAX:
        raise ValueError("event_width must be integers in [0, 2**31 - 2]")
    return ew


def simulate_frame(
    rng: np.random.Generator,
    shape_pdf: ArrayLike | PreparedShape,
    true_icr: ArrayLike,
    clock_ticks: int,
    event_width: ArrayLike = 6,
    processor: ProcessorModel = DEFAULT_PROCESSOR,
    clock_hz: float = CLOCK_HZ,
) -> SimulatedFrame:
    """Draw one frame of spectra and scalers.

    Args:
        rng: random generator.
        shape_pdf: ``(bins,)`` shape shared by all channels or ``(channels, bins)``
            (normalised here), or a :class:`PreparedShape`. Passing the same
            read-only array again (e.g. ``SampleModel.expected_shape()``) reuses
            cached tables; ``SampleModel.prepared()`` is the cheapest.
        true_icr: ``(channels,)`` true input count rate per channel (counts/s).
        clock_ticks: frame length in clock ticks (0 .. 2**32-1).
        event_width: per-channel event width in ticks (scalar or ``(channels,)``).
        processor: dead-time, reset and rejection model.
        clock_hz: processing clock (80 MHz for Xspress3).

    Model: ``real_time = clock_ticks / clock_hz``. Detected events are Poisson
    with mean ``expected_event_rate(true_icr) * real_time`` (non-paralysable, dead
    time per event ``event_width + 1`` ticks plus the reset share); good events
    are the Poisson thinning by ``processor.good_fraction``; each bin of the
    spectrum is Poisson and ``all_good`` is the spectrum's sum exactly;
    ``all_events = all_good + rejected``; ``reset_ticks`` comes from a Poisson
    number of resets. If a fluctuation would make ``dead >= clock_ticks``, resets,
    then events, then spectrum counts are cut so ``dead < clock_ticks`` holds.
    ``dead_time_correction = clock_ticks / (clock_ticks - reset_ticks -
    all_events * (event_width + 1))`` in float64; ``output_count_rate`` keeps the
    device's units bug, ``all_good / (total_ticks * clock_hz)`` (see
    :class:`SimulatedFrame`). ``clock_ticks == 0`` gives an empty frame with NaN
    ``dead_time_correction`` and ``output_count_rate``.
    """
    prep, icr, ew, ticks = _checked(shape_pdf, true_icr, clock_ticks, event_width)
    if not clock_hz > 0:
        raise ValueError("clock_hz must be > 0")
    mean_good, means = _expected_counts(icr, ew, ticks / clock_hz, processor, clock_hz)
    spectra, all_good, all_events, reset_ticks = _draw(
        rng, prep, mean_good, means, processor
    )
    per_event = ew + 1
    if ticks > 0 and int((all_events * per_event + reset_ticks).max()) >= ticks:
        _clip_saturated(
            rng, spectra, all_good, all_events, reset_ticks, per_event, ticks
        )
    clock = np.full(icr.shape[0], ticks, dtype=np.uint32)
    dtc = dead_time(
        all_events, all_good, clock, reset_ticks, ew, clock_hz=clock_hz, warn=False
    ).dtc
    # The device's units bug, reproduced on purpose: NOT counts per second.
    ocr = (
        all_good / (float(ticks) * clock_hz) if ticks > 0 else np.full_like(dtc, np.nan)
    )
    return SimulatedFrame(
        spectra=spectra,
        all_events=all_events.astype(np.uint32),
        all_good=all_good.astype(np.uint32),
        clock_ticks=clock,
        total_ticks=clock.copy(),
        reset_ticks=reset_ticks.astype(np.uint32),
        event_width=ew.astype(np.int32),
        dead_time_correction=dtc,
        output_count_rate=ocr,
    )


def _checked(
    shape_pdf: ArrayLike | PreparedShape,
    true_icr: ArrayLike,
    clock_ticks: int,
    event_width: ArrayLike,
) -> tuple[PreparedShape, NDArray[np.float64], NDArray[np.int64], int]:
    """:func:`simulate_frame`'s inputs, checked: shape, rates, widths, ticks."""
    prep = as_prepared(shape_pdf)
    icr = np.asarray(true_icr, dtype=np.float64)
    if icr.ndim == 0:
        icr = icr.reshape(1)
    if icr.ndim != 1:
        raise ValueError(f"true_icr must be (channels,), got {icr.shape}")
    nchan = icr.shape[0]
    if prep.rows != 1 and prep.rows != nchan:
        raise ValueError(f"shape_pdf has {prep.rows} rows for {nchan} channels")
    if not (math.isfinite(float(icr.sum())) and icr.min() >= 0.0):
        raise ValueError("true_icr must be finite and >= 0")
    ew = _event_widths(event_width, nchan)
    ticks = int(clock_ticks)
    if ticks != clock_ticks or not 0 <= ticks <= _UINT32_MAX:
        raise ValueError(
            f"clock_ticks must be an integer in [0, 2**32-1], not {clock_ticks}"
        )
    return prep, icr, ew, ticks


def _expected_counts(
    icr: NDArray[np.float64],
    ew: NDArray[np.int64],
    real_time: float,
    proc: ProcessorModel,
    clock_hz: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean good events per channel, and the means of the three Poisson draws
    (good, rejected, resets) concatenated; see :func:`expected_event_rate`.

    The float operations keep their order: seeded frames stay bit for bit.
    """
    leak = proc.leakage_dead_fraction(clock_hz)
    tau_s = (ew + (1.0 + proc.resets_per_event * proc.mean_reset_ticks())) / clock_hz
    mean_events = icr * ((1.0 - leak) * real_time) / (1.0 + icr * tau_s)
    mean_good = mean_events * (
        (1.0 - proc.baseline_reject_fraction) * np.exp(-icr * proc.pileup_window_s)
    )
    means = np.concatenate(
        (
            mean_good,
            mean_events - mean_good,
            mean_events * proc.resets_per_event + proc.leakage_resets_hz * real_time,
        )
    )
    return mean_good, means


def _draw(
    rng: np.random.Generator,
    prep: PreparedShape,
    mean_good: NDArray[np.float64],
    means: NDArray[np.float64],
    proc: ProcessorModel,
) -> tuple[NDArray[np.uint32], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Spectra, ``all_good``, ``all_events`` and ``reset_ticks`` of one frame."""
    nchan = mean_good.shape[0]
    spectra = np.zeros((nchan, prep.bins), dtype=np.uint32)
    width = prep.hi - prep.lo
    if float(mean_good.sum()) < _EVENT_SAMPLING_THRESHOLD * nchan * width:
        draws = rng.poisson(means)
        all_good = draws[:nchan]
        _place_events(rng, prep, all_good, spectra)
    else:
        counts = rng.poisson(mean_good[:, None] * prep.support)
        spectra[:, prep.lo : prep.hi] = counts
        draws = rng.poisson(means)
        all_good = counts.sum(axis=1)
    all_events = all_good + draws[nchan : 2 * nchan]
    n_resets = draws[2 * nchan :]
    reset_ticks = n_resets * proc.reset_length_ticks
    if proc.reset_jitter_probability > 0.0:
        reset_ticks += rng.binomial(n_resets, proc.reset_jitter_probability)
    return spectra, all_good, all_events, reset_ticks


def _clip_saturated(
    rng: np.random.Generator,
    spectra: NDArray[np.uint32],
    all_good: NDArray[np.int64],
    all_events: NDArray[np.int64],
    reset_ticks: NDArray[np.int64],
    per_event: NDArray[np.int64],
    ticks: int,
) -> None:
    """Cut resets, events and spectrum counts in place so that dead < ticks."""
    np.minimum(reset_ticks, ticks - 1, out=reset_ticks)
    max_events = (ticks - 1 - reset_ticks) // per_event
    for c in np.flatnonzero(all_events > max_events):
        all_events[c] = max_events[c]
        surplus = int(all_good[c] - all_events[c])
        if surplus > 0:
            row = spectra[c].astype(np.int64)
            removed = rng.multivariate_hypergeometric(row, surplus)
            spectra[c] = row - removed
            all_good[c] = all_events[c]
