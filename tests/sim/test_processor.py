"""Tests of the simulated pulse processor: rates, dead time, scalers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ophyd_xspress._constants import CLOCK_HZ
from ophyd_xspress.protocol import Calibration
from ophyd_xspress.sim._processor import (
    DEFAULT_PROCESSOR,
    clock_ticks_for_exposure,
    expected_dead_fraction,
    expected_event_rate,
    simulate_frame,
)
from ophyd_xspress.sim._spectrum import DEFAULT_SAMPLE, SampleModel, prepare_shape

TICKS_100MS = 7999990  # 0.1 s exposure, 100 ns latency (real captures)


def _dead_ticks(frame_events: np.ndarray, ew: np.ndarray, reset: np.ndarray):
    return frame_events.astype(np.int64) * (ew.astype(np.int64) + 1) + reset.astype(
        np.int64
    )


def test_clock_ticks_for_exposure() -> None:
    assert clock_ticks_for_exposure(0.1, 100e-9) == (0.099999875, 7999990)
    assert clock_ticks_for_exposure(0.05, 100e-9) == (0.049999875, 3999990)
    assert clock_ticks_for_exposure(0.001, 100e-9)[1] == 79990
    assert clock_ticks_for_exposure(1.0, 0.0)[1] == 79999998
    for ms in range(1, 2001, 7):
        exptime, ticks = clock_ticks_for_exposure(ms / 1000.0, 100e-9)
        assert ticks == round(exptime * CLOCK_HZ) or ticks == int(exptime * CLOCK_HZ)
    with pytest.raises(ValueError, match="leaves no time"):
        clock_ticks_for_exposure(100e-9, 100e-9)
    with pytest.raises(ValueError, match="32-bit"):
        clock_ticks_for_exposure(60.0, 0.0)  # does not fit 32 bits at 80 MHz


@pytest.mark.parametrize(
    ("icr", "ticks"),
    [
        (1e3, TICKS_100MS),
        (2e5, TICKS_100MS),  # Poisson-per-bin path
        (2e5, 79990),  # event-placement path
        (2e6, 3999990),
        (0.0, TICKS_100MS),
    ],
)
def test_frame_invariants(icr: float, ticks: int) -> None:
    rng = np.random.default_rng(12345)
    ew = np.array([6, 6, 10, 20])
    icrs = np.array([icr, icr * 0.5, icr, icr * 1.5])
    for _ in range(5):
        f = simulate_frame(rng, DEFAULT_SAMPLE.expected_shape(), icrs, ticks, ew)
        assert f.spectra.shape == (4, 4096)
        assert f.spectra.dtype == np.uint32
        for name in ("all_events", "all_good", "clock_ticks", "total_ticks"):
            assert getattr(f, name).dtype == np.uint32, name
            assert getattr(f, name).shape == (4,), name
        assert f.reset_ticks.dtype == np.uint32
        assert f.event_width.dtype == np.int32
        assert f.dead_time_correction.dtype == np.float64
        assert f.output_count_rate.dtype == np.float64
        np.testing.assert_array_equal(f.spectra.sum(axis=1, dtype=np.int64), f.all_good)
        assert np.all(f.all_events >= f.all_good)
        np.testing.assert_array_equal(f.total_ticks, f.clock_ticks)
        np.testing.assert_array_equal(f.clock_ticks, ticks)
        np.testing.assert_array_equal(f.event_width, ew)
        dead = _dead_ticks(f.all_events, f.event_width, f.reset_ticks)
        assert np.all(dead < ticks)
        ct = f.clock_ticks.astype(np.float64)
        dtc = ct / (
            ct
            - f.reset_ticks.astype(np.float64)
            - f.all_events.astype(np.float64) * (f.event_width.astype(np.float64) + 1)
        )
        np.testing.assert_allclose(f.dead_time_correction, dtc, rtol=1e-12, atol=0)
        # The device's units bug, on purpose.
        np.testing.assert_allclose(
            f.output_count_rate,
            f.all_good.astype(np.float64) / (f.total_ticks * 80e6),
            rtol=1e-12,
            atol=0,
        )


def test_saturation_keeps_dead_below_clock() -> None:
    rng = np.random.default_rng(7)
    for ticks in (1, 2, 50, 100, 1000, 100000):
        for _ in range(20):
            f = simulate_frame(
                rng,
                DEFAULT_SAMPLE.prepared(),
                [1e10, 1e9, 3e8, 0.0],
                ticks,
                [6, 0, 20, 6],
            )
            dead = _dead_ticks(f.all_events, f.event_width, f.reset_ticks)
            assert np.all(dead < ticks)
            assert np.all(np.isfinite(f.dead_time_correction))
            assert np.all(f.dead_time_correction >= 1.0)
            np.testing.assert_array_equal(f.spectra.sum(axis=1), f.all_good)
            assert np.all(f.all_events >= f.all_good)


def test_zero_length_frame() -> None:
    f = simulate_frame(
        np.random.default_rng(0), DEFAULT_SAMPLE.prepared(), [1e5] * 4, 0
    )
    assert f.spectra.sum() == 0
    assert np.all(f.all_events == 0)
    assert np.all(f.clock_ticks == 0)
    assert np.all(np.isnan(f.dead_time_correction))
    assert np.all(np.isnan(f.output_count_rate))


def test_dead_time_grows_with_rate() -> None:
    rng = np.random.default_rng(2024)
    rates = [1e4, 1e5, 5e5, 1e6, 2e6]
    percents = []
    for icr in rates:
        f = simulate_frame(rng, DEFAULT_SAMPLE.prepared(), [icr] * 4, TICKS_100MS, 6)
        dead = _dead_ticks(f.all_events, f.event_width, f.reset_ticks)
        pct = 100.0 * dead / TICKS_100MS
        np.testing.assert_allclose(
            pct, 100.0 * (1.0 - 1.0 / f.dead_time_correction), rtol=1e-9
        )
        expected = 100.0 * float(expected_dead_fraction(icr, 6)[()])
        assert np.all(np.abs(pct - expected) < 0.05 * expected + 0.05)
        percents.append(float(pct.mean()))
    assert all(a < b for a, b in itertools.pairwise(percents))
    assert percents[-1] > 20.0
    assert 25.0 < percents[rates.index(1e6)] < 50.0


def test_dead_time_depends_on_event_width() -> None:
    assert (
        expected_dead_fraction(1e6, 6)
        < expected_dead_fraction(1e6, 20)
        < expected_dead_fraction(1e6, 100)
    )
    ew = np.array([0, 6, 20, 100])
    f = simulate_frame(
        np.random.default_rng(3), DEFAULT_SAMPLE.prepared(), [1e6] * 4, TICKS_100MS, ew
    )
    assert np.all(np.diff(f.dead_time_correction) > 0)


def test_detected_events_follow_the_non_paralysable_mean() -> None:
    rng = np.random.default_rng(99)
    ticks = 800000  # 10 ms
    icr = 5e5
    n = 400
    events = np.empty((n, 4))
    for k in range(n):
        events[k] = simulate_frame(
            rng, DEFAULT_SAMPLE.prepared(), [icr] * 4, ticks
        ).all_events
    mean_expected = float(expected_event_rate(icr)[()]) * ticks / CLOCK_HZ
    tau = DEFAULT_PROCESSOR.dead_ticks_per_event(6) / CLOCK_HZ
    assert mean_expected == pytest.approx(
        icr * ticks / CLOCK_HZ / (1 + icr * tau), 1e-3
    )
    se = math.sqrt(mean_expected / events.size)
    assert abs(events.mean() - mean_expected) < 5 * se
    ratio = events.var(ddof=1) / events.mean()
    assert 0.85 < ratio < 1.15


def test_good_fraction_shrinks_with_rate() -> None:
    rng = np.random.default_rng(5)
    frac = []
    for icr in (1e4, 1e6, 3e6):
        f = simulate_frame(rng, DEFAULT_SAMPLE.prepared(), [icr] * 4, TICKS_100MS)
        frac.append(float(f.all_good.sum() / f.all_events.sum()))
    assert frac[0] > frac[1] > frac[2]
    assert frac[0] > 0.99
    assert 0.85 < frac[2] < 0.99


@pytest.mark.parametrize("ticks", [8000, 800000])  # event placement, per-bin Poisson
def test_bins_are_poisson(ticks: int) -> None:
    rng = np.random.default_rng(31337)
    prep = DEFAULT_SAMPLE.prepared()
    icr = 3e5
    n = 1500
    region = slice(60, 180)  # 0.6-1.8 keV: background only
    acc = np.empty((n, 4, region.stop - region.start))
    total = np.zeros(4096)
    for k in range(n):
        f = simulate_frame(rng, prep, [icr] * 4, ticks)
        acc[k] = f.spectra[:, region]
        total += f.spectra.sum(axis=0)
    samples = acc.transpose(0, 1, 2).reshape(n * 4, -1)
    mean = samples.mean(axis=0)
    var = samples.var(axis=0, ddof=1)
    assert np.all(mean > 0)
    ratio = float(var.sum() / mean.sum())
    assert 0.9 < ratio < 1.1
    # The average spectrum follows the shape (coarse groups of 64 bins).
    good = float(expected_event_rate(icr)[()]) * ticks / CLOCK_HZ
    good *= float(DEFAULT_PROCESSOR.good_fraction(icr)[()])
    expect = good * 4 * n * prep.pdf[0]
    got_g = total.reshape(64, 64).sum(axis=1)
    exp_g = expect.reshape(64, 64).sum(axis=1)
    sel = exp_g > 0
    z = (got_g[sel] - exp_g[sel]) / np.sqrt(exp_g[sel])
    assert np.all(np.abs(z) < 5)
    assert np.all(got_g[~sel] == 0)


def test_per_channel_shapes_and_windows() -> None:
    mn = SampleModel({"Mn": 1.0}, scatter_fraction=0.0, background_fraction=0.0)
    cu = SampleModel({"Cu": 1.0}, scatter_fraction=0.0, background_fraction=0.0)
    shapes = np.stack([mn.expected_shape(), cu.expected_shape()])
    rng = np.random.default_rng(1)
    for ticks in (80000, TICKS_100MS):
        f = simulate_frame(rng, shapes, [2e5, 2e5], ticks)
        assert f.channels == 2
        np.testing.assert_array_equal(f.spectra.sum(axis=1), f.all_good)
        assert f.spectra[0, 710:].sum() == 0  # Mn only (Kb1 6490 eV)
        assert f.spectra[1, :570].sum() == 0  # Cu only (Ka escape 6308 eV)
        if ticks == TICKS_100MS:
            assert (
                abs(int(np.argmax(f.spectra[0])) - Calibration().bin_of(5898.75)) <= 2
            )
            assert (
                abs(int(np.argmax(f.spectra[1])) - Calibration().bin_of(8047.78)) <= 2
            )
        full = f.window_counts([[0, 4095], [590, 590]])
        assert full.dtype == np.uint32
        assert full.shape == (2, 2)
        np.testing.assert_array_equal(full[0], f.all_good)
        np.testing.assert_array_equal(full[1], f.spectra[:, 590])
        per_ch = f.window_counts(
            [[[580, 600], [795, 815]], [[10, 5], [4000, 9999]]]  # [window][ch][lo, hi]
        )
        np.testing.assert_array_equal(
            per_ch[0], [f.spectra[0, 580:601].sum(), f.spectra[1, 795:816].sum()]
        )
        np.testing.assert_array_equal(per_ch[1], [0, f.spectra[1, 4000:].sum()])
    with pytest.raises(ValueError, match="rows"):
        simulate_frame(rng, shapes, [1e5, 1e5, 1e5], 1000)


def test_scaler_list_order_and_input_checks() -> None:
    rng = np.random.default_rng(0)
    f = simulate_frame(rng, DEFAULT_SAMPLE.prepared(), [1e5] * 4, 80000)
    scalers = f.scaler_list([[0, 10], [20, 30]])
    assert len(scalers) == 9
    assert scalers[0] is f.output_count_rate
    assert scalers[1] is f.all_events
    assert scalers[7] is f.dead_time_correction
    assert scalers[8].shape == (2, 4)
    assert len(f.scaler_list()) == 8
    prep = prepare_shape([0.0, 1.0, 3.0, 0.0])
    assert (prep.lo, prep.hi) == (1, 3)
    np.testing.assert_allclose(prep.pdf[0], [0.0, 0.25, 0.75, 0.0])
    with pytest.raises(ValueError, match="true_icr"):
        simulate_frame(rng, DEFAULT_SAMPLE.prepared(), [-1.0], 1000)
    with pytest.raises(ValueError, match="clock_ticks"):
        simulate_frame(rng, DEFAULT_SAMPLE.prepared(), [1.0], 2**32)
    with pytest.raises(ValueError, match="event_width"):
        simulate_frame(rng, DEFAULT_SAMPLE.prepared(), [1.0], 1000, event_width=-1)
    with pytest.raises(ValueError, match="positive sum"):
        prepare_shape([0.0, 0.0])
