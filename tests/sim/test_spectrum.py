"""Tests of the simulated spectrum's shape: detector response, sample model."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ophyd_xspress.protocol import Calibration
from ophyd_xspress.sim._lines import ELEMENT_LINES, emission_line
from ophyd_xspress.sim._spectrum import (
    DEFAULT_SAMPLE,
    SampleModel,
    compton_energy_ev,
    fwhm_ev,
    line_window,
)

DEFAULT_CALIBRATION = Calibration()  # 10 eV a bin from 0 eV


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


def test_unexcited_lines_are_absent_from_the_spectrum() -> None:
    cal = 10.0

    def mass(sample: SampleModel, energy: float) -> float:
        b = Calibration(cal).bin_of(energy)
        return float(sample.expected_shape()[b - 10 : b + 11].sum())

    pb12 = SampleModel(
        {"Pb": 1.0, "Zn": 1.0},
        incident_energy_ev=12000.0,
        scatter_fraction=0.0,
        background_fraction=0.0,
    )
    assert mass(pb12, emission_line("Pb", "La1").energy_ev) < 1e-6
    assert mass(pb12, emission_line("Pb", "Lb1").energy_ev) < 1e-6
    assert mass(pb12, emission_line("Zn", "Ka1").energy_ev) > 0.3
    pb15 = dataclasses.replace(pb12, incident_energy_ev=15500.0)
    assert mass(pb15, emission_line("Pb", "La1").energy_ev) > 0.1
    # Zn K edge 9659 eV: Zn is silent at 9.5 keV.
    zn95 = dataclasses.replace(
        pb12, elements={"Zn": 1.0, "Fe": 1.0}, incident_energy_ev=9500.0
    )
    assert mass(zn95, emission_line("Zn", "Ka1").energy_ev) < 1e-6


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


def test_sample_bins_follow_the_calibration() -> None:
    for cal, off in ((10.0, 0.0), (5.0, 0.0), (10.0, -37.5), (7.25, 120.0)):
        sample = SampleModel({"Fe": 1.0}, calibration_ev_per_bin=cal, offset_ev=off)
        calibration = sample.calibration
        assert calibration == Calibration(cal, off)
        np.testing.assert_array_equal(sample.bin_edges(), calibration.edges(4096))
        np.testing.assert_array_equal(sample.bin_centres(), calibration.centres(4096))
        for i in (0, 1, 639, 4095):
            e = sample.bin_centres()[i]
            assert e == pytest.approx(off + (i + 0.5) * cal)
            assert calibration.bin_of(e) == i
        assert calibration.bin_of(off) == 0
        assert calibration.bin_of(off + cal - 1e-9) == 0
        assert calibration.bin_of(off + cal) == 1
    assert Calibration(10.0, 0.0).bin_of(6403.84) == 640
    assert Calibration(5.0, 0.0).bin_of(6403.84) == 1280


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
    calibration = sample.calibration
    mode = _ka_mode(element)
    expected = calibration.bin_of(mode)
    window = slice(expected - int(200 / cal), expected + int(200 / cal) + 1)
    peak = window.start + int(np.argmax(shape[window]))
    # The winning bin holds energies within half a bin of the blend's maximum.
    assert peak in {
        calibration.bin_of(mode - cal / 2),
        calibration.bin_of(mode + cal / 2),
    }
    assert abs(peak - calibration.bin_of(emission_line(element, "Ka1").energy_ev)) <= 1
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
    elastic = DEFAULT_CALIBRATION.bin_of(12000.0)
    # The elastic peak sits on the Compton peak's high-energy flank.
    assert abs(int(np.argmax(shape[1150:1250])) + 1150 - elastic) <= 3
    compton = DEFAULT_CALIBRATION.bin_of(compton_energy_ev(12000.0))
    assert shape[compton] > 0.5 * shape[elastic - 1 : elastic + 1].max()
    assert shape[DEFAULT_CALIBRATION.bin_of(12000.0 + 1500.0) :].sum() == 0.0


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
    assert shape[DEFAULT_CALIBRATION.bin_of(13500.0) :].sum() == 0.0
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


def test_line_window_is_one_fwhm_either_side_in_the_sample_bins() -> None:
    fe = emission_line("Fe", "Ka1").energy_ev
    half = fwhm_ev(fe)
    assert line_window(DEFAULT_SAMPLE, "Fe", "Ka1") == (
        math.floor((fe - half) / 10.0),
        math.floor((fe + half) / 10.0),
    )
    fine = SampleModel({"Fe": 1.0}, calibration_ev_per_bin=5.0, offset_ev=100.0)
    assert line_window(fine, "Fe", "Ka1") == (
        fine.calibration.bin_of(fe - half),
        fine.calibration.bin_of(fe + half),
    )
    short = dataclasses.replace(fine, bins=1270)  # ends inside the Fe window
    assert line_window(short, "Fe", "Ka1")[1] == 1269
    with pytest.raises(ValueError, match="Fe has no line 'La1'"):
        line_window(DEFAULT_SAMPLE, "Fe", "La1")
