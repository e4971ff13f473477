"""A sample with structure: the phantom, the maps, and frames that follow the beam."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from ophyd_xspress.protocol import derive
from ophyd_xspress.sim import (
    DEFAULT_SAMPLE,
    PHANTOM_REGIONS,
    FixedBeam,
    SampleMap,
    TriggerMode,
    energy_window,
    phantom,
)
from ophyd_xspress.sim._processor import simulate_frame
from ophyd_xspress.sim._sample_map import PATH_SAMPLES, path_times

ELEMENTS = ("Fe", "Cu", "Ca", "Zn")


def _region_centre(element: str, extent: tuple[float, ...]) -> tuple[float, float]:
    """A point well inside ``element``'s phantom region (absolute units)."""
    _, kind, p = PHANTOM_REGIONS[element]
    if kind == "disc":
        u, v = p[0], p[1]
    elif kind == "ring":
        u, v = p[0] + (p[2] + p[3]) / 2, p[1]
    else:
        u, v = (p[0] + p[1]) / 2, (p[2] + p[3]) / 2
    x0, x1, y0, y1 = extent
    return x0 + u * (x1 - x0), y0 + v * (y1 - y0)


def test_phantom_puts_each_element_in_its_own_region() -> None:
    sample = phantom()
    assert sample.elements == ELEMENTS
    assert sample.shape == (200, 200)
    # no pixel holds two elements; each element has its one value
    assert ((sample.maps > 0).sum(axis=0) <= 1).all()
    for i, element in enumerate(ELEMENTS):
        value = PHANTOM_REGIONS[element][0]
        assert set(np.unique(sample.maps[i])) == {0.0, value}
        x, y = _region_centre(element, sample.extent)
        expected = np.zeros(len(ELEMENTS))
        expected[i] = value
        np.testing.assert_array_equal(sample.concentrations_at(x, y), expected)
    # the four corners are bare matrix
    for x, y in ((-0.99, -0.99), (0.99, 0.99), (-0.99, 0.99), (0.99, -0.99)):
        assert not sample.concentrations_at(x, y).any()


def test_points_take_their_pixel_and_nothing_outside() -> None:
    maps = {"Fe": [[1.0, 2.0], [3.0, 4.0]]}  # [iy, ix], row 0 at y0
    sample = SampleMap(maps, (0.0, 2.0, 10.0, 12.0))
    at = sample.concentrations_at
    assert at(0.5, 10.5)[0] == 1.0
    assert at(1.5, 10.5)[0] == 2.0
    assert at(0.5, 11.5)[0] == 3.0
    assert at(1.99, 11.99)[0] == 4.0
    assert at(0.0, 10.0)[0] == 1.0  # the low edges belong to the map
    for x, y in ((-0.1, 10.5), (2.0, 10.5), (0.5, 12.0), (np.nan, 11.0)):
        assert at(x, y)[0] == 0.0, (x, y)
    np.testing.assert_array_equal(
        at([0.5, 1.5, 9.0], [11.5, 11.5, 11.5])[:, 0], [3.0, 4.0, 0.0]
    )
    # a path's mean: half the exposure on each pixel
    assert sample.along([[0.5, 10.5], [1.5, 10.5]])[0] == 1.5
    x, y = sample.pixel_centres()
    np.testing.assert_array_equal(x, [0.5, 1.5])
    np.testing.assert_array_equal(y, [10.5, 11.5])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"elements": {}}, "at least one element"),
        ({"elements": {"Fe": [[1.0]], "Cu": [[1.0, 2.0]]}}, "one shape"),
        ({"elements": {"Fe": [1.0, 2.0]}}, "2-D"),
        ({"elements": {"Fe": [[-1.0]]}}, "finite and >= 0"),
        ({"elements": {"Fe": [[np.inf]]}}, "finite and >= 0"),
        ({"elements": {"Xx": [[1.0]]}}, "unknown element 'Xx'"),
        ({"elements": {"Pb": [[1.0]]}}, "Pb has no line excited at 12000.0 eV"),
        ({"extent": (1.0, 0.0, 0.0, 1.0)}, "x0 < x1"),
        ({"extent": (0.0, 1.0, 0.0, np.nan)}, "finite"),
        ({"matrix": -0.1}, "matrix must be"),
        ({"scatter_fraction": 1.5}, "scatter_fraction"),
    ],
)
def test_bad_sample_maps_are_refused(kwargs: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {
        "elements": {"Fe": [[1.0]]},
        "extent": (0.0, 1.0, 0.0, 1.0),
    }
    options.update(kwargs)
    elements = options.pop("elements")
    extent = options.pop("extent")
    with pytest.raises(ValueError, match=message):
        SampleMap(elements, extent, **options)


def _share_in(pdf: np.ndarray, window: tuple[float, float]) -> float:
    lo, hi = (int(e // 10) for e in window)
    return float(pdf[lo : hi + 1].sum())


def test_spectrum_shape_mixes_the_elements_at_a_point() -> None:
    sample = phantom()
    fe_ka = energy_window("Fe", "Ka1", 155.0)
    cu_ka = energy_window("Cu", "Ka1", 155.0)
    fe = sample.prepared([2.0, 0.0, 0.0, 0.0]).pdf[0]
    bare = sample.prepared([0.0, 0.0, 0.0, 0.0]).pdf[0]
    mixed = sample.prepared([1.0, 1.0, 0.0, 0.0]).pdf[0]
    assert _share_in(fe, fe_ka) > 0.5
    assert _share_in(fe, cu_ka) < 0.01
    assert _share_in(bare, fe_ka) < 0.01  # scatter and background only
    assert _share_in(mixed, fe_ka) == pytest.approx(_share_in(mixed, cu_ka), rel=0.3)
    # count rate over count_rate: the matrix plus every concentration
    assert sample.rate_factor([2.0, 0.0, 0.0, 0.0]) == pytest.approx(2.15)
    assert sample.rate_factor(np.zeros(4)) == pytest.approx(0.15)
    # nothing at all, not even a matrix: still a valid (matrix) shape, no rate
    empty = SampleMap({"Fe": [[0.0]]}, (0.0, 1.0, 0.0, 1.0), matrix=0.0)
    assert empty.rate_factor([0.0]) == 0.0
    assert empty.prepared([0.0]).pdf.sum() == pytest.approx(1.0)


def test_path_times_split_an_exposure_evenly() -> None:
    np.testing.assert_allclose(path_times(1.0, 2.0), [1.1, 1.3, 1.5, 1.7, 1.9])
    assert len(path_times(1.0, 2.0)) == PATH_SAMPLES
    np.testing.assert_array_equal(path_times(3.0, 3.0), [3.0])


def test_frames_without_a_sample_map_are_the_processor_s_draw(engine: Any) -> None:
    """The frame of a plain sample is ``simulate_frame`` seeded with (seed,
    series, frame) on the sample's prepared shape: as before sample maps."""
    det, _ = engine(channels=2, seed=7)
    settings = det.series_settings()
    frame = det.frames.frame(settings, 3, 5)
    rng = np.random.default_rng((7, 3, 5))
    sim = simulate_frame(
        rng,
        DEFAULT_SAMPLE.prepared(),
        settings.count_rate,
        settings.ticks,
        settings.event_widths,
    )
    np.testing.assert_array_equal(frame.spectra, sim.spectra)
    np.testing.assert_array_equal(frame["all_events"], sim.all_events)
    np.testing.assert_array_equal(frame["reset_ticks"], sim.reset_ticks)
    assert det.beam_positions(3).shape == (0, 2)


class _Travelling:
    """A beam moving along x at 1 unit/s from x=0 at t0 (thread-safe)."""

    def __init__(self, t0: float, y: float) -> None:
        self.t0, self.y = t0, y

    def position(self, t: float) -> tuple[float, float]:
        return t - self.t0, self.y


def test_counts_and_dead_time_follow_the_beam(engine: Any, wait_for: Any) -> None:
    sample = phantom()
    det, stream = engine(channels=2, sample=sample, count_rate=2e5)
    det.exposure_time = 0.05
    spots = {el: _region_centre(el, sample.extent) for el in ELEMENTS}
    spots["matrix"] = (0.95, 0.95)
    frames = {}
    for where, (x, y) in spots.items():
        det.beam = FixedBeam(x, y)
        det.arm()
        det.software_trigger()
        assert det.wait_idle(5)
        stream.read_frames(len(frames) + 1)
        frames[where] = stream.frames[-1]
        np.testing.assert_allclose(det.beam_positions(det.series_index), [[x, y]])
    windows = np.array(
        [[int(e // 10) for e in energy_window(el, "Ka1", 155.0)] for el in ELEMENTS]
    )
    rates = {}
    for where, frame in frames.items():
        derived = derive(frame.metadata, frame.spectra, windows, warn=False)
        assert derived.roi_corrected is not None
        rates[where] = (derived.roi_corrected.sum(axis=0), derived.dead_time)
    for i, element in enumerate(ELEMENTS):
        roi, _ = rates[element]
        # the element's own ROI is the largest there, and far above the matrix
        assert roi.argmax() == i, (element, roi)
        assert roi[i] > 20 * rates["matrix"][0][i], element
    # the dead time follows the local count rate: the Fe disc is the hottest
    dead = {w: float(r[1].dead_percent.mean()) for w, r in rates.items()}
    assert max(dead, key=dead.__getitem__) == "Fe", dead
    assert dead["Fe"] > 3 * dead["matrix"], dead
    # frames of a sample map are made again bit for bit from their kept paths
    last = det.series_index
    assert det.expected_frame(last, 0) == frames["matrix"]


def test_a_frame_sees_the_path_of_its_exposure(engine: Any) -> None:
    det, stream = engine(channels=1, sample=phantom(), pace=True)
    det.exposure_time = 0.04
    beam = _Travelling(time.monotonic(), 0.0)
    det.beam = beam
    det.n_frames_per_trigger = 3
    det.arm()
    det.software_trigger()
    assert det.wait_idle(5)
    stream.read_frames(3)
    paths = det.frames.beam_paths(det.series_index)
    assert sorted(paths) == [0, 1, 2]
    exptime, _ = det.frame_timing()
    for n, path in paths.items():
        assert path.shape == (PATH_SAMPLES, 2)
        # evenly along the frame's exposure, frames one exposure apart
        np.testing.assert_allclose(np.diff(path[:, 0]), exptime / PATH_SAMPLES)
        if n:
            gap = path[0, 0] - paths[n - 1][0, 0]
            assert gap == pytest.approx(det.exposure_time, abs=1e-9)
    means = det.beam_positions(det.series_index)
    np.testing.assert_allclose(means[:, 1], 0.0)


def test_edges_given_ahead_of_time_each_make_their_frame(engine: Any) -> None:
    """A pulse train queued at once (a timing box): every edge starts its
    frame when it is due, none is swallowed by the frame before it."""
    det, stream = engine(channels=1, pace=True, sample=phantom())
    det.trigger_mode = TriggerMode.EXTERNAL_MULTI
    det.exposure_time = 0.02
    det.n_triggers, det.n_frames_per_trigger = 5, 1
    t0 = time.monotonic()
    det.beam = _Travelling(t0, 0.0)  # x is the time since t0: a clock
    det.arm()
    stream.read_until(lambda r: len(r.headers) == 1)
    first = time.monotonic() + 0.1
    due = [first + 0.03 * k for k in range(5)]
    for t in due:
        det.ttl_rise(at=t)
        det.ttl_fall(at=t + 1e-4)
    assert det.wait_idle(5)
    stream.read_frames(5)
    assert [f.frame for f in stream.frames] == [0, 1, 2, 3, 4]
    exptime, _ = det.frame_timing()
    middles = det.beam_positions(det.series_index)[:, 0] + t0
    np.testing.assert_allclose(middles, np.array(due) + exptime / 2, atol=1e-9)


def test_gated_frames_ahead_of_time_last_their_gates(engine: Any) -> None:
    det, stream = engine(channels=1, pace=True)
    det.trigger_mode = TriggerMode.EXTERNAL_MULTI_GATE
    det.n_triggers, det.n_frames_per_trigger = 3, 1
    det.arm()
    stream.read_until(lambda r: len(r.headers) == 1)
    first = time.monotonic() + 0.05
    for k in range(3):
        det.ttl_rise(at=first + 0.02 * k)
        det.ttl_fall(at=first + 0.02 * k + 0.01)
    assert det.wait_idle(5)
    stream.read_frames(3)
    for frame in stream.frames:  # exactly the gate: 10 ms of 80 MHz ticks
        assert abs(int(frame["clock_ticks"][0]) - 800_000) <= 1
