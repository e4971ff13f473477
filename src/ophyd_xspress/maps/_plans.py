"""Map plans: a step map (an event per pixel) and a fly map (rows flown).

Both record the map's raster (:class:`~._grid.MapGrid`: shape, pixel
centres and extent, snake, motors, the keys of the positions, detector, ROI
names) in the start document under ``xrf_map``, and the positions of every
frame in the run, so :func:`~._catalog.read_map` rebuilds the map from the
catalog alone.

* :func:`step_map`: ``bluesky.plans.grid_scan`` with the detector, one frame
  of ``dwell`` seconds per point; each event carries the motors' readbacks
  and the dead-time corrected ROI sums.
* :func:`fly_map`: the detector is armed once for the whole map on external
  triggers (one series of ``ny * nx`` frames, as dranspose's Xspress3
  ingester expects); each row steps the slow motor, flies the fast one at a
  pixel per ``dwell`` (an ophyd-async ``FlyMotorInfo`` with a run-up), and a
  timing box (:class:`~._position_compare.SimPositionCompare` on the
  simulator; a PandA at a beamline) gives one trigger per pixel and captures
  where each frame was. The frames go to the detector's HDF5 file
  (StreamResource / StreamDatum as rows reach it); every frame's position
  goes, once the map ends (also when it fails), into one event of the
  ``xrf_map_positions`` stream: no other document between the rows, so the
  catalog writer can join each row's StreamDatum with the next ones.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Final

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
from ophyd_async.core import DetectorTrigger, FlyMotorInfo, TriggerInfo

from ._grid import METADATA_KEY, MapGrid
from ._position_compare import RowPulses

__all__ = ["FRAME_GAP", "fly_map", "map_grid", "step_map"]

#: Dead time left between the frames of a fly map (s): each pixel's frame
#: lasts ``dwell - FRAME_GAP``.
FRAME_GAP: Final = 1e-4
#: Seconds of flight at full speed before a row's first pixel: the detector's
#: kickoff and the timing box's are done in them.
RUN_UP: Final = 0.15


def _key(motor: Any) -> str:
    """The data key of a motor's position (its first hinted field)."""
    hints = getattr(motor, "hints", None) or {}
    fields = hints.get("fields") or [motor.name]
    return str(fields[0])


def map_grid(
    detector: Any,
    x_motor: Any,
    x_range: tuple[float, float, int],
    y_motor: Any,
    y_range: tuple[float, float, int],
    **options: Any,
) -> MapGrid:
    """The :class:`MapGrid` of a map over ``x_range`` and ``y_range`` (first
    and last pixel centre, pixels) with these devices."""
    x0, x1, nx = x_range
    y0, y1, ny = y_range
    units = getattr(x_motor, "units", "") or ""
    return MapGrid(
        nx=int(nx),
        ny=int(ny),
        x=(float(x0), float(x1)),
        y=(float(y0), float(y1)),
        fast=x_motor.name,
        slow=y_motor.name,
        detector=detector.name,
        rois=tuple(getattr(detector, "rois", {}) or ()),
        units=str(units),
        **options,
    )


def _start_metadata(grid: MapGrid, plan: str, md: dict[str, Any] | None) -> dict:
    return {
        "plan_name": plan,
        METADATA_KEY: grid.to_metadata(),
        "shape": [grid.ny, grid.nx],
        "extents": [list(grid.y), list(grid.x)],
        **(md or {}),
    }


def step_map(
    detector: Any,
    x_motor: Any,
    x_range: tuple[float, float, int],
    y_motor: Any,
    y_range: tuple[float, float, int],
    *,
    dwell: float,
    snake: bool = False,
    md: dict[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """An event per pixel: ``grid_scan`` of ``ny`` rows (``y_range = (first,
    last, ny)``) of ``nx`` points (``x_range``), one ``dwell`` s frame each.

    >>> RE(step_map(xspress, x, (-1, 1, 20), y, (-1, 1, 15), dwell=0.02))
    """
    grid = map_grid(
        detector,
        x_motor,
        x_range,
        y_motor,
        y_range,
        snake=snake,
        kind="step",
        x_key=_key(x_motor),
        y_key=_key(y_motor),
        dwell=dwell,
    )
    prepared = False

    def per_step(
        detectors: Any, step: Any, pos_cache: Any, take_reading: Any = None
    ) -> Any:
        nonlocal prepared
        if not prepared:  # after grid_scan staged the detector
            info = TriggerInfo(number_of_events=1, livetime=dwell)
            yield from bps.prepare(detector, info, wait=True)
            prepared = True
        return (
            yield from bps.one_nd_step(
                detectors, step, pos_cache, take_reading=take_reading
            )
        )

    y0, y1, ny = y_range
    x0, x1, nx = x_range
    uid: str = yield from bp.grid_scan(
        [detector],
        y_motor,
        y0,
        y1,
        int(ny),
        x_motor,
        x0,
        x1,
        int(nx),
        snake_axes=snake,
        per_step=per_step,
        md=_start_metadata(grid, "step_map", md),
    )
    return uid


def fly_map(
    detector: Any,
    x_motor: Any,
    x_range: tuple[float, float, int],
    y_motor: Any,
    y_range: tuple[float, float, int],
    *,
    dwell: float,
    pulses: Any,
    snake: bool = True,
    run_up: float = RUN_UP,
    md: dict[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """Rows flown: ``ny`` rows (``y_range = (first, last, ny)``) of ``nx``
    pixels (``x_range``), ``dwell`` s each, the detector triggered by
    ``pulses`` (a :class:`~._position_compare.SimPositionCompare`).

    >>> RE(fly_map(xspress, x, (-1, 1, 30), y, (-1, 1, 20), dwell=0.01,
    ...            pulses=pcomp))
    """
    if not dwell > 2 * FRAME_GAP:  # NaN too
        raise ValueError(f"dwell must be > {2 * FRAME_GAP} s, got {dwell}")
    grid = map_grid(
        detector,
        x_motor,
        x_range,
        y_motor,
        y_range,
        snake=snake,
        kind="fly",
        x_key=pulses.x.name,
        y_key=pulses.y.name,
        dwell=dwell,
    )

    def rows() -> Generator[Any, Any, None]:
        info = TriggerInfo(
            number_of_events=grid.frames,
            trigger=DetectorTrigger.EXTERNAL_EDGE,
            livetime=dwell - FRAME_GAP,
        )
        yield from bps.prepare(detector, info, wait=True)
        yield from bps.declare_stream(detector, name="primary", collect=True)
        for row in range(grid.ny):
            yield from _fly_row(grid, row, detector, x_motor, y_motor, pulses, run_up)

    def positions() -> Generator[Any, Any, None]:
        yield from bps.create(grid.positions_stream)
        yield from bps.read(pulses)
        yield from bps.save()

    velocity = getattr(x_motor, "velocity", None)
    speed: Any = None if velocity is None else (yield from bps.rd(velocity))

    def restore_speed() -> Generator[Any, Any, None]:
        if velocity is not None and speed is not None:
            yield from bps.mv(velocity, speed)

    run = bpp.run_wrapper(
        bpp.finalize_wrapper(rows(), positions()),
        md=_start_metadata(grid, "fly_map", md),
    )
    uid: str = yield from bpp.finalize_wrapper(
        bpp.stage_wrapper(run, [detector, pulses]), restore_speed()
    )
    return uid


def _fly_row(
    grid: MapGrid,
    row: int,
    detector: Any,
    x_motor: Any,
    y_motor: Any,
    pulses: Any,
    run_up: float,
) -> Generator[Any, Any, None]:
    """One row: y to its place, x flown over it, a frame per pixel."""
    dwell = float(grid.dwell or 0.0)
    first, last = grid.row_edges(row)
    direction = 1.0 if last > first else -1.0
    speed = abs(grid.step[0]) / dwell
    _, y_centres = grid.centres()
    yield from bps.mv(y_motor, float(y_centres[row]))
    start = first - direction * speed * run_up
    end = last + direction * speed * FRAME_GAP * 10
    motion = FlyMotorInfo(
        start_position=start,
        end_position=end,
        time_for_move=abs(end - start) / speed,
    )
    yield from bps.prepare(x_motor, motion, wait=True)
    row_pulses = RowPulses(
        first, dwell, grid.nx, dwell - FRAME_GAP, row * grid.nx, grid.frames
    )
    yield from bps.prepare(pulses, row_pulses, wait=True)
    # The detector waits for its triggers before the motor moves (its kickoff
    # is the slow one); the timing box is set as soon as the move has begun,
    # within the run-up, however loaded the machine.
    yield from bps.mv(detector.events_to_kickoff, grid.nx)
    yield from bps.kickoff(detector, wait=True)
    yield from bps.kickoff(x_motor, wait=True)
    yield from bps.kickoff(pulses, wait=True)
    group = f"xrf_map_row_{row}"
    yield from bps.complete(pulses, group=group)
    yield from bps.complete(x_motor, group=group)
    yield from bps.collect_while_completing([detector], [detector], flush_period=0.25)
    yield from bps.wait(group=group)
