# ruff: noqa: N806 - RE is the conventional RunEngine name
"""Maps end to end: the phantom flown and stepped, live, and from the catalog.

One module-wide session (a RunEngine, the simulator with the built-in
phantom and its Tango device, two ``SimMotor`` s, the timing box, a local
catalog) runs each plan once, each with a :class:`LiveMap` subscribed:

* a fly map of 16 x 12 pixels, written to the catalog;
* a step map on every other pixel centre of the fly map (8 x 6 points), its
  documents kept in memory: the local catalog writes an event's ~20 array
  fields with one HTTP request each (~0.7 s an event on 2 cores), so 48
  events would cost the suite more than the whole fly map;
* a step map of 3 x 2 points written to the catalog, for :func:`read_map` of
  a step run.

The tests then check what came out:

* the maps rebuilt from the catalog alone (a new server on the same
  directory) put each element where the phantom has it: Pearson correlation
  with the phantom's concentrations at the pixel centres >= 0.95 (fly; the
  flown pixels blur over their width) and >= 0.99 (step, from its live
  images), and each element's half-maximum region overlaps the phantom's
  (Jaccard index >= 0.6);
* each live callback's final images equal the catalog's map, bit for bit;
* the fly and the step map agree within counting statistics where the
  phantom is uniform around a pixel (count rates, so that the fly map's
  shorter frames do not count: z-scores with mean within +/- 0.5 and
  standard deviation 0.6-1.5, none beyond 5);
* every frame's recorded position is where the simulator had the beam (bit
  for bit) and its pixel's centre (to 1 % of a pixel).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from tests.conftest import _forget_tango_executor

from ophyd_xspress.maps import (
    METADATA_KEY,
    LiveMap,
    MapGrid,
    MotorBeam,
    SimPositionCompare,
    fly_map,
    read_map,
    step_map,
)
from ophyd_xspress.sim import PHANTOM_REGIONS, XspressSimulator, energy_window, phantom

NX, NY = 16, 12
X_RANGE = (-0.9, 0.9, NX)
Y_RANGE = (-0.9, 0.9, NY)
#: The step map's points: every other pixel centre of the fly map.
STEP_X = (-0.9, -0.9 + 14 * 1.8 / 15, 8)
STEP_Y = (-0.9, -0.9 + 10 * 1.8 / 11, 6)
#: The small step map written to the catalog.
SMALL_X = (-0.5, 0.5, 3)
SMALL_Y = (-0.4, 0.4, 2)
DWELL = 0.01
ELEMENTS = tuple(PHANTOM_REGIONS)
#: Step-map event fields the statistics need.
RAW_KEYS = ("roi", "dtc", "elapsed_time")


@dataclass
class Session:
    directory: Path
    fly_uid: str
    small_uid: str
    fly_live: LiveMap
    step_live: LiveMap
    small_live: LiveMap
    step_raw: dict[str, np.ndarray]  # RAW_KEYS -> (frames, ...) from the events
    truth: np.ndarray  # (frames, 2): the simulator's beam during each fly frame
    starts: dict[str, dict[str, Any]]
    seconds: dict[str, float]


class _StepEvents:
    """The step map's primary events, kept: field -> value by frame."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self._primary: set[str] = set()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "descriptor" and doc["name"] == "primary":
            self._primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self._primary:
            self.rows[doc["seq_num"] - 1] = doc["data"]

    def arrays(self) -> dict[str, np.ndarray]:
        order = sorted(self.rows)
        return {
            key: np.array([self.rows[k][f"xspress-{key}"] for k in order])
            for key in RAW_KEYS
        }


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    from bluesky.run_engine import RunEngine
    from ophyd_async.core import init_devices
    from ophyd_async.sim import SimMotor

    from ophyd_xspress.catalog import LocalCatalog
    from ophyd_xspress.device import XspressDetector

    directory = tmp_path_factory.mktemp("maps")
    loop = asyncio.new_event_loop()
    _forget_tango_executor()
    RE = RunEngine({}, call_returns_result=True, loop=loop)
    catalog = LocalCatalog(directory)
    sim = XspressSimulator(
        channels=4,
        sample=phantom(),
        count_rate=2e5,
        destination_file_name=str(directory / "device.h5"),
    )
    sim.start()
    try:
        starts: dict[str, dict[str, Any]] = {}
        RE.subscribe(lambda name, doc: starts.update({doc["plan_name"]: doc})
                     if name == "start" else None)  # fmt: skip
        rois = {el: energy_window(el, "Ka1", 155.0) for el in ELEMENTS}
        with init_devices():
            xspress = XspressDetector(
                tango=sim.tango_trl,
                stream=sim.stream_endpoint,
                rois=rois,
                path=catalog.data_dir,
            )
            x = SimMotor(instant=False)
            y = SimMotor()
        RE(bps.mv(x.acceleration_time, 0.05))
        beam = MotorBeam(x, y)
        sim.control.beam = beam
        with init_devices():
            pcomp = SimPositionCompare(sim.control, beam)
        fly_live, step_live, small_live = LiveMap(), LiveMap(redraw=0.2), LiveMap()
        seconds = {}
        t0 = time.monotonic()
        fly = RE(
            fly_map(xspress, x, X_RANGE, y, Y_RANGE, dwell=DWELL, pulses=pcomp),
            [catalog.writer, fly_live],
        )
        seconds["fly"] = time.monotonic() - t0
        truth = sim.control.beam_positions(sim.control.series_index)
        # steps of 0.24 at 1/s took 0.3 s each: at 100/s they take none
        RE(bps.mv(x.velocity, 100.0))
        events = _StepEvents()
        t0 = time.monotonic()
        RE(step_map(xspress, x, STEP_X, y, STEP_Y, dwell=DWELL), [step_live, events])
        seconds["step"] = time.monotonic() - t0
        small = RE(
            step_map(xspress, x, SMALL_X, y, SMALL_Y, dwell=DWELL, md={"small": 1}),
            [catalog.writer, small_live],
        )
        RE(bps.unstage(xspress))
        yield Session(
            directory=directory,
            fly_uid=fly.run_start_uids[0],
            small_uid=small.run_start_uids[0],
            fly_live=fly_live,
            step_live=step_live,
            small_live=small_live,
            step_raw=events.arrays(),
            truth=truth,
            starts=starts,
            seconds=seconds,
        )
    finally:
        sim.close()
        catalog.close()
        with contextlib.suppress(Exception):
            RE.halt()
        loop.call_soon_threadsafe(loop.stop)
        RE._th.join(10)  # the RunEngine's own thread (as tests/conftest.py)
        loop.close()
        _forget_tango_executor()


@pytest.fixture(scope="module")
def maps(session: Session) -> Iterator[dict[str, Any]]:
    """The catalog's maps, read back by a new server on the same directory."""
    from ophyd_xspress.catalog import LocalCatalog

    with LocalCatalog(session.directory) as again:
        fly, small = (
            read_map(again[session.fly_uid]),
            read_map(again[session.small_uid]),
        )
        # what the statistics need, while the server runs
        primary = again[session.fly_uid]["primary"]
        raw = {key: np.asarray(primary[f"xspress-{key}"].read()) for key in RAW_KEYS}
        spectrum = np.asarray(fly.spectra[3, 5])
        yield {"fly": fly, "small": small, "fly_raw": raw, "spectrum": spectrum}


def _phantom_at_centres(grid: MapGrid, flown: bool = False) -> np.ndarray:
    """``(ny, nx, elements)``: the phantom's concentrations at pixel centres,
    or (``flown``) their mean across each pixel's width, as a flown frame
    sees them."""
    x, y = grid.centres()
    offsets = np.linspace(-0.5, 0.5, 9) * abs(grid.step[0]) if flown else [0.0]
    xx, yy = np.broadcast_arrays(
        x[None, :, None] + np.asarray(offsets)[None, None, :], y[:, None, None]
    )
    return phantom().concentrations_at(xx, yy).mean(axis=2)


def test_the_start_document_carries_the_raster(session: Session) -> None:
    fly = session.starts["fly_map"][METADATA_KEY]
    assert fly["kind"] == "fly"
    assert fly["shape"] == [NY, NX]
    assert fly["snake"] is True
    assert fly["rois"] == list(ELEMENTS)
    assert fly["x_key"].endswith("-x")
    assert fly["dwell"] == DWELL
    step = session.starts["step_map"][METADATA_KEY]
    assert step["kind"] == "step"
    assert step["x_key"] == "x"
    assert step["y_key"] == "y"
    assert session.starts["step_map"]["shape"] == [SMALL_Y[2], SMALL_X[2]]
    assert session.starts["step_map"]["small"] == 1


def _check_against_phantom(
    kind: str, grid: MapGrid, images: Any, threshold: float, jaccard: bool
) -> None:
    truth = _phantom_at_centres(grid, flown=kind == "fly")
    for i, element in enumerate(ELEMENTS):
        image = images[element]
        assert image.shape == grid.shape
        assert np.isfinite(image).all(), element
        r = np.corrcoef(image.ravel(), truth[..., i].ravel())[0, 1]
        assert r >= threshold, f"{kind} {element}: correlation {r:.4f}"
        if jaccard:
            found = image > image.max() / 2
            there = truth[..., i] > truth[..., i].max() / 2
            overlap = (found & there).sum() / (found | there).sum()
            assert overlap >= 0.6, f"{kind} {element}: Jaccard {overlap:.2f}"


def test_the_fly_map_from_the_catalog_matches_the_phantom(
    maps: dict[str, Any],
) -> None:
    xrf = maps["fly"]
    _check_against_phantom("fly", xrf.grid, xrf.rois, 0.95, jaccard=True)
    # the dead time follows the sample: hottest where the Fe disc is
    fe = _phantom_at_centres(xrf.grid)[..., ELEMENTS.index("Fe")] > 0
    assert np.median(xrf.dead_time[fe]) > 3 * np.median(xrf.dead_time[~fe])


def test_the_step_map_matches_the_phantom(session: Session) -> None:
    live = session.step_live
    assert live.grid is not None
    assert live.images is not None
    assert live.images.count == live.grid.frames == 48
    # every point where the phantom is: no region straddled, so no Jaccard
    _check_against_phantom("step", live.grid, live.images, 0.99, jaccard=False)


def test_live_maps_end_equal_to_the_catalog_s(
    session: Session, maps: dict[str, Any], tmp_path: Path
) -> None:
    for kind, live in (("fly", session.fly_live), ("small", session.small_live)):
        xrf = maps[kind]
        assert live.images is not None
        assert live.images.count == xrf.grid.frames
        for element in ELEMENTS:
            np.testing.assert_array_equal(
                live.images[element], xrf.rois[element], err_msg=kind
            )
    assert session.fly_live.figure is not None
    png = session.fly_live.save(tmp_path / "fly.png")
    assert png.stat().st_size > 10_000


def _rates(raw: dict[str, np.ndarray], grid: MapGrid) -> tuple[np.ndarray, ...]:
    """Corrected count rates per pixel and ROI, and their variances
    (counting statistics of the raw counts, through the correction)."""
    dtc, seconds = raw["dtc"][..., None], raw["elapsed_time"][..., None]
    counts = raw["roi"].astype(np.float64)  # (N, C, R)
    rate = (counts * dtc / seconds).sum(axis=1)
    variance = (counts * dtc**2 / seconds**2).sum(axis=1)
    return grid.to_image(rate), grid.to_image(variance)


def _uniform_along_rows(grid: MapGrid) -> np.ndarray:
    """``(ny, nx)``: pixels where the phantom is the same across the flown
    pixel's width and a little more (a fly frame averages over it)."""
    x, y = grid.centres()
    dx = abs(grid.step[0])
    offsets = np.linspace(-0.8 * dx, 0.8 * dx, 9)
    xx, yy = np.broadcast_arrays(
        x[None, :, None] + offsets[None, None, :], y[:, None, None]
    )
    values = phantom().concentrations_at(xx, yy)  # (ny, nx, 9, elements)
    return (values == values[:, :, :1]).all(axis=(-2, -1))


def test_fly_and_step_maps_agree_within_counting_statistics(
    session: Session, maps: dict[str, Any]
) -> None:
    fly_grid = maps["fly"].grid
    step_grid = session.step_live.grid
    assert step_grid is not None
    fly_rate, fly_var = _rates(maps["fly_raw"], fly_grid)
    step_rate, step_var = _rates(session.step_raw, step_grid)
    # the step points are the fly map's even pixels
    np.testing.assert_allclose(step_grid.centres()[0], fly_grid.centres()[0][::2])
    np.testing.assert_allclose(step_grid.centres()[1], fly_grid.centres()[1][::2])
    fly_rate, fly_var = fly_rate[::2, ::2], fly_var[::2, ::2]
    uniform = _uniform_along_rows(fly_grid)[::2, ::2]
    assert uniform.sum() >= 30
    z = (fly_rate - step_rate) / np.sqrt(fly_var + step_var)
    z = z[uniform]
    assert abs(z.mean()) < 0.5, z.mean()
    assert 0.6 < z.std() < 1.5, z.std()
    assert np.abs(z).max() < 5, np.abs(z).max()


def test_every_fly_frame_is_recorded_where_the_beam_was(
    session: Session, maps: dict[str, Any]
) -> None:
    xrf = maps["fly"]
    grid = xrf.grid
    dx = grid.step[0]
    truth = grid.to_image(session.truth)
    # the timing box reads each frame's position off the same motor profiles
    # the simulator made the frame with (an encoder, not the 10 Hz readbacks
    # that come late by the machine's load): bit for bit
    np.testing.assert_array_equal(xrf.x, truth[..., 0])
    np.testing.assert_array_equal(xrf.y, truth[..., 1])
    # and each where its pixel is: a frame spans its pixel but for the gap
    # before the next (FRAME_GAP / (2 dwell) = 0.5 % of a pixel off centre)
    x, y = grid.centres()
    assert np.abs(xrf.x - x[None, :]).max() < 0.01 * abs(dx)
    np.testing.assert_allclose(xrf.y, np.broadcast_to(y[:, None], grid.shape))
    small = maps["small"]
    x, y = small.grid.centres()
    np.testing.assert_allclose(small.x, np.broadcast_to(x[None, :], small.grid.shape))
    np.testing.assert_allclose(small.y, np.broadcast_to(y[:, None], small.grid.shape))


def test_spectra_come_lazily_from_the_catalog(maps: dict[str, Any]) -> None:
    xrf = maps["fly"]
    assert xrf.spectra.shape == (NY, NX, 4, 4096)
    assert maps["spectrum"].shape == (4, 4096)
    assert maps["spectrum"].sum() > 0
    assert xrf.frames == NX * NY
