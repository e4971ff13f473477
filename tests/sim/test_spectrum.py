"""Tests of the simulator's physics model (spectra, dead time, scalers)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from ophyd_xspress.sim._spectrum import (
    CLOCK_HZ,
    DEFAULT_PROCESSOR,
    DEFAULT_SAMPLE,
    ELEMENT_LINES,
    EmissionLine,
    SampleModel,
    bin_of_energy,
    clock_ticks_for_exposure,
    compton_energy_ev,
    energy_of_bin,
    excited_lines,
    expected_dead_fraction,
    expected_event_rate,
    fwhm_ev,
    prepare_shape,
    simulate_frame,
)

TICKS_100MS = 7999990  # 0.1 s exposure, 100 ns latency (real captures)


def _line(element: str, name: str) -> EmissionLine:
    return next(li for li in ELEMENT_LINES[element] if li.name == name)


def _ka_mode(element: str) -> float:
    """Energy of the maximum of the Ka1 + Ka2 blend, on a fine grid."""
    e = np.arange(5000.0, 10000.0, 0.05)
    y = np.zeros_like(e)
    for li in ELEMENT_LINES[element]:
        if li.name.startswith("Ka"):
            s = fwhm_ev(li.energy_ev) / 2.3548200450309493
            y += (
                li.relative_intensity / s * np.exp(-0.5 * ((e - li.energy_ev) / s) ** 2)
            )
    return float(e[np.argmax(y)])


def _dead_ticks(frame_events: np.ndarray, ew: np.ndarray, reset: np.ndarray):
    return frame_events.astype(np.int64) * (ew.astype(np.int64) + 1) + reset.astype(
        np.int64
    )


# --- line table ------------------------------------------------------------


def test_line_table_values() -> None:
    assert _line("Fe", "Ka1").energy_ev == pytest.approx(6403.8, abs=0.1)
    assert _line("Fe", "Kb1").energy_ev == pytest.approx(7058.0, abs=0.1)
    assert _line("Mn", "Ka1").energy_ev == pytest.approx(5898.8, abs=0.1)
    assert _line("Cu", "Ka1").energy_ev == pytest.approx(8047.8, abs=0.1)
    assert _line("Au", "La1").energy_ev == pytest.approx(9713.3, abs=0.1)
    assert _line("Pb", "La1").energy_ev == pytest.approx(10551.5, abs=0.1)
    assert _line("Fe", "Ka1").edge_ev == 7112.0
    assert _line("Cu", "Ka1").edge_ev == 8979.0
    assert _line("Zn", "Ka1").edge_ev == 9659.0
    assert _line("Au", "La1").edge_ev == 11919.0
    assert _line("Pb", "La1").edge_ev == 13035.0
    for el in ("Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"):
        assert {li.name for li in ELEMENT_LINES[el]} >= {"Ka1", "Ka2", "Kb1"}
    for el in ("W", "Pt", "Au", "Hg", "Pb", "Bi"):
        assert {li.name for li in ELEMENT_LINES[el]} >= {
            "La1",
            "Lb1",
            "Lb2",
            "Lg1",
            "Ll",
        }


def test_every_line_lies_below_its_edge() -> None:
    for el, lines in ELEMENT_LINES.items():
        for li in lines:
            assert li.element == el
            assert 0 < li.energy_ev < li.edge_ev
            assert li.relative_intensity > 0


def test_excitation_needs_the_edge() -> None:
    assert excited_lines("Pb", 12000.0) == ()
    assert {li.name for li in excited_lines("Pb", 13100.0)} == {
        "La1",
        "La2",
        "Lb2",
        "Ll",
    }
    assert len(excited_lines("Pb", 16000.0)) == len(ELEMENT_LINES["Pb"])
    assert {li.name for li in excited_lines("Zn", 12000.0)} == {"Ka1", "Ka2", "Kb1"}
    assert excited_lines("Fe", 7000.0) == ()
    au = {li.name for li in excited_lines("Au", 12000.0)}
    assert "La1" in au  # L3 11919 < 12000
    assert "Lb1" not in au  # L2 13734 > 12000
    with pytest.raises(ValueError, match="unknown element"):
        excited_lines("Xx", 12000.0)


def test_unexcited_lines_are_absent_from_the_spectrum() -> None:
    cal = 10.0

    def mass(sample: SampleModel, energy: float) -> float:
        b = bin_of_energy(energy, cal)
        return float(sample.expected_shape()[b - 10 : b + 11].sum())

    pb12 = SampleModel(
        {"Pb": 1.0, "Zn": 1.0},
        incident_energy_ev=12000.0,
        scatter_fraction=0.0,
        background_fraction=0.0,
    )
    assert mass(pb12, _line("Pb", "La1").energy_ev) < 1e-6
    assert mass(pb12, _line("Pb", "Lb1").energy_ev) < 1e-6
    assert mass(pb12, _line("Zn", "Ka1").energy_ev) > 0.3
    pb15 = dataclasses.replace(pb12, incident_energy_ev=15500.0)
    assert mass(pb15, _line("Pb", "La1").energy_ev) > 0.1
    # Zn K edge 9659 eV: Zn is silent at 9.5 keV.
    zn95 = dataclasses.replace(
        pb12, elements={"Zn": 1.0, "Fe": 1.0}, incident_energy_ev=9500.0
    )
    assert mass(zn95, _line("Zn", "Ka1").energy_ev) < 1e-6


# --- detector response and energy axis --------------------------------------


def test_fwhm_model() -> None:
    assert 135.0 <= fwhm_ev(5898.8) <= 140.0
    assert fwhm_ev(1000.0) < fwhm_ev(5898.8) < fwhm_ev(10000.0)
    arr = fwhm_ev(np.array([5898.8, 8047.8]))
    assert arr.shape == (2,)
    assert arr[0] == pytest.approx(fwhm_ev(5898.8))


def test_measured_fwhm_at_mn_ka() -> None:
    cal = 5.0
    s = SampleModel(
        {"Mn": 1.0},
        scatter_fraction=0.0,
        background_fraction=0.0,
        calibration_ev_per_bin=cal,
    ).expected_shape()
    i = int(np.argmax(s))
    half = s[i] / 2
    lo = i
    while s[lo] > half:
        lo -= 1
    hi = i
    while s[hi] > half:
        hi += 1
    x_lo = lo + (half - s[lo]) / (s[lo + 1] - s[lo])
    x_hi = hi - 1 + (s[hi - 1] - half) / (s[hi - 1] - s[hi])
    fwhm = (x_hi - x_lo) * cal
    assert 130.0 <= fwhm <= 150.0


def test_bin_convention_round_trips() -> None:
    for cal, off in ((10.0, 0.0), (5.0, 0.0), (10.0, -37.5), (7.25, 120.0)):
        for i in (0, 1, 639, 4095):
            e = energy_of_bin(i, cal, off)
            assert e == pytest.approx(off + (i + 0.5) * cal)
            assert bin_of_energy(e, cal, off) == i
        assert bin_of_energy(off, cal, off) == 0
        assert bin_of_energy(off + cal - 1e-9, cal, off) == 0
        assert bin_of_energy(off + cal, cal, off) == 1
    assert bin_of_energy(6403.84, 10.0, 0.0) == 640
    assert bin_of_energy(6403.84, 5.0, 0.0) == 1280


@pytest.mark.parametrize("cal", [10.0, 5.0])
@pytest.mark.parametrize("offset", [0.0, 100.0])
@pytest.mark.parametrize("element", ["Fe", "Cu"])
def test_ka_peak_lands_in_the_right_bin(
    cal: float, offset: float, element: str
) -> None:
    sample = SampleModel(
        {"Fe": 1.0, "Cu": 1.0},
        calibration_ev_per_bin=cal,
        offset_ev=offset,
    )
    shape = sample.expected_shape()
    mode = _ka_mode(element)
    expected = bin_of_energy(mode, cal, offset)
    window = slice(expected - int(200 / cal), expected + int(200 / cal) + 1)
    peak = window.start + int(np.argmax(shape[window]))
    # The winning bin holds energies within half a bin of the blend's maximum.
    assert peak in {
        bin_of_energy(mode - cal / 2, cal, offset),
        bin_of_energy(mode + cal / 2, cal, offset),
    }
    assert abs(peak - bin_of_energy(_line(element, "Ka1").energy_ev, cal, offset)) <= 1
    # Centroid of the Ka blend matches the intensity-weighted line energy.
    centres = sample.bin_centres()[window]
    centroid = float((centres * shape[window]).sum() / shape[window].sum())
    ka = [li for li in ELEMENT_LINES[element] if li.name.startswith("Ka")]
    weighted = sum(li.energy_ev * li.relative_intensity for li in ka) / sum(
        li.relative_intensity for li in ka
    )
    assert centroid == pytest.approx(weighted, abs=2.0)


def test_scatter_peaks() -> None:
    assert compton_energy_ev(12000.0) == pytest.approx(
        12000.0 / (1 + 12000.0 / 510998.95)
    )
    s = SampleModel({}, scatter_fraction=1.0, background_fraction=0.0)
    shape = s.expected_shape()
    elastic = bin_of_energy(12000.0)
    # The elastic peak sits on the Compton peak's high-energy flank.
    assert abs(int(np.argmax(shape[1150:1250])) + 1150 - elastic) <= 3
    compton = bin_of_energy(compton_energy_ev(12000.0))
    assert shape[compton] > 0.5 * shape[elastic - 1 : elastic + 1].max()
    assert shape[bin_of_energy(12000.0 + 1500.0) :].sum() == 0.0


# --- sample model -----------------------------------------------------------


def test_expected_shape_is_a_cached_read_only_pdf() -> None:
    shape = DEFAULT_SAMPLE.expected_shape()
    assert shape.dtype == np.float64
    assert shape.shape == (4096,)
    assert math.isclose(float(shape.sum()), 1.0, rel_tol=1e-12)
    assert np.all(shape >= 0.0)
    assert shape is DEFAULT_SAMPLE.expected_shape()
    assert not shape.flags.writeable
    assert DEFAULT_SAMPLE.prepared() is DEFAULT_SAMPLE.prepared()
    # Nothing well above the incident energy.
    assert shape[bin_of_energy(13500.0) :].sum() == 0.0
    assert {"Fe", "Cu", "Zn", "Ca", "Mn"} <= set(DEFAULT_SAMPLE.elements)


def test_sample_model_validation_and_immutability() -> None:
    with pytest.raises(ValueError, match="unknown element"):
        SampleModel({"Unobtainium": 1.0})
    with pytest.raises(ValueError, match="weight of Fe"):
        SampleModel({"Fe": -1.0})
    with pytest.raises(ValueError, match="must be <= 1"):
        SampleModel({"Fe": 1.0}, scatter_fraction=0.7, background_fraction=0.5)
    silent = SampleModel({"Pb": 1.0}, scatter_fraction=0.0, background_fraction=0.0)
    with pytest.raises(ValueError, match="no counts"):
        silent.expected_shape()
    src = {"Fe": 1.0}
    s = SampleModel(src)
    src["Cu"] = 1.0
    assert "Cu" not in s.elements
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bins = 2048  # type: ignore[misc]
    assert s == SampleModel({"Fe": 1.0})
    assert hash(s) == hash(SampleModel({"Fe": 1.0}))
    short = dataclasses.replace(s, bins=2048)
    assert short.expected_shape().shape == (2048,)


# --- scalers and dead time --------------------------------------------------


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
            assert abs(int(np.argmax(f.spectra[0])) - bin_of_energy(5898.75)) <= 2
            assert abs(int(np.argmax(f.spectra[1])) - bin_of_energy(8047.78)) <= 2
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
