"""A timing box for the simulator: triggers at pixel edges, positions captured.

At a beamline a fly map's detector frames are started by hardware that
watches the motor's encoder (a PandA's position compare and pulse generator,
a Zebra) and that captures the encoder at each frame. :class:`SimPositionCompare`
does that job for the simulator: armed with a row (:class:`RowPulses`), it
finds when the fast motor will cross the row's first pixel edge (from its
move's profile, as an encoder would tell: :class:`~._motion.MotorTracker`),
gives the simulated Xspress3 one rising edge per pixel from then on, a
pixel's flight time apart (``ttl_rise(at=...)``: the edges are timed exactly,
as hardware would), and once the row is done reads where the beam was during
each frame (the mean of the same :class:`~._motion.MotorBeam` the simulator
looks at) into its ``x`` and ``y`` signals: the positions of every frame of
the map so far, in frame order (NaN for frames to come), read once into the
map's positions stream at its end.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from bluesky.protocols import Flyable, Preparable
from ophyd_async.core import (
    Array1D,
    AsyncStatus,
    StandardReadable,
    soft_signal_r_and_setter,
)

from ..sim import path_times
from ._motion import MotorBeam

if TYPE_CHECKING:
    from ..sim import SimulatedXspress3

__all__ = ["RowPulses", "SimPositionCompare"]

#: Width of each trigger pulse (s).
PULSE_WIDTH = 1e-4
#: How soon the first edge may come after the pulses are set (s).
MIN_LEAD = 2e-3


@dataclass(frozen=True)
class RowPulses:
    """One row: ``pulses`` frames starting where the fast motor crosses
    ``first_edge``, one every ``period`` seconds (a pixel's flight time), each
    ``exposure`` seconds long (where the positions are averaged); they are
    frames ``first_frame`` on of a map of ``frames`` (0: a new map)."""

    first_edge: float
    period: float
    pulses: int
    exposure: float
    first_frame: int = 0
    frames: int | None = None

    @property
    def map_frames(self) -> int:
        """Frames of the whole map."""
        return self.pulses if self.frames is None else self.frames


class SimPositionCompare(StandardReadable, Preparable, Flyable):
    """Triggers and position capture for fly maps on the simulator.

    >>> beam = MotorBeam(x, y); sim.control.beam = beam
    >>> pcomp = SimPositionCompare(sim.control, beam, name="pcomp")
    """

    def __init__(
        self, simulator: SimulatedXspress3, beam: MotorBeam, name: str = ""
    ) -> None:
        self._simulator = simulator
        self._beam = beam
        self._row: RowPulses | None = None
        self._edges: np.ndarray = np.zeros(0)
        self._captured: np.ndarray = np.zeros((0, 2))
        with self.add_children_as_readables():
            self.x, self._set_x = soft_signal_r_and_setter(
                Array1D[np.float64], np.zeros(0)
            )
            self.y, self._set_y = soft_signal_r_and_setter(
                Array1D[np.float64], np.zeros(0)
            )
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def prepare(self, value: RowPulses) -> None:
        if value.pulses < 1 or not value.period > value.exposure > 0:
            raise ValueError(
                f"{self.name}: a row needs pulses >= 1 and period > exposure > 0, "
                f"got {value}"
            )
        if not 0 <= value.first_frame <= value.map_frames - value.pulses:
            raise ValueError(
                f"{self.name}: frames {value.first_frame}.."
                f"{value.first_frame + value.pulses - 1} are not in a map of "
                f"{value.map_frames}"
            )
        if value.first_frame == 0 or len(self._captured) != value.map_frames:
            self._captured = np.full((value.map_frames, 2), np.nan)
            self._set_x(self._captured[:, 0].copy())
            self._set_y(self._captured[:, 1].copy())
        self._row = value
        self._edges = np.zeros(0)

    @AsyncStatus.wrap
    async def kickoff(self) -> None:
        """Set the row's pulses (the fast motor's move over the row begun)."""
        row = self._row
        if row is None:
            raise RuntimeError(f"{self.name}: kickoff before prepare")
        tracker = self._beam.x
        first = tracker.time_at(row.first_edge)
        now = time.monotonic()
        if not math.isfinite(first) or first < now + MIN_LEAD:
            where = tracker.position(now)
            raise RuntimeError(
                f"{self.name}: {tracker.name} is at {where:.6g}, moving at "
                f"{tracker.velocity():.6g}/s: it will not reach the row's first "
                f"edge {row.first_edge:.6g} later than {MIN_LEAD} s from now "
                "(a longer run-up, or a motor that moves)"
            )
        self._edges = first + row.period * np.arange(row.pulses)
        for edge in self._edges:
            self._simulator.ttl_rise(at=float(edge))
            self._simulator.ttl_fall(at=float(edge) + PULSE_WIDTH)

    @AsyncStatus.wrap
    async def complete(self) -> None:
        """Done once the row's last frame has ended; then the positions."""
        row = self._row
        if row is None or not len(self._edges):
            raise RuntimeError(f"{self.name}: complete before kickoff")
        end = float(self._edges[-1]) + row.exposure
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        positions = np.array(
            [
                np.mean(
                    [self._beam.position(t) for t in path_times(e, e + row.exposure)],
                    axis=0,
                )
                for e in self._edges
            ]
        )
        first = row.first_frame
        self._captured[first : first + row.pulses] = positions
        self._set_x(self._captured[:, 0].copy())
        self._set_y(self._captured[:, 1].copy())

    @property
    def edge_times(self) -> np.ndarray:
        """The ``time.monotonic()`` instants of the current row's frames."""
        return self._edges.copy()
