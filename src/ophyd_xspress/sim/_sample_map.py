"""A sample with structure: elements spread over an area, and a beam on it.

Pure numpy. :class:`SampleMap` holds one concentration map per element over a
rectangle (``extent``, in the motors' units); a :class:`BeamPath` says where
the beam is at any moment. A frame sees the mean concentrations along the
beam's path during its exposure (sampled at :data:`PATH_SAMPLES` instants), so
a flown pixel blurs over what the beam crossed and a stepped one does not.
From those concentrations come the frame's spectrum shape (the element line
families and the matrix's scatter and background, mixed) and its input count
rate: ``count_rate * (matrix + sum of concentrations)`` per channel, so a
concentration of 1 gives ``count_rate`` counts/s of that element's lines.
Count rates, dead time and spectra thus follow the sample as it moves.

Arrays are indexed ``[iy, ix]``, row 0 at the low ``y`` edge (``imshow(...,
origin="lower", extent=...)`` draws them as the sample lies). A point takes the
value of the pixel it falls in; outside the extent there is only the matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._constants import DEFAULT_BINS
from ..protocol import Calibration
from ._lines import excited_lines, lines_of
from ._spectrum import PreparedShape, SampleModel, prepare_shape

if TYPE_CHECKING:
    from ._frames import FrameSource

__all__ = [
    "PATH_SAMPLES",
    "BeamControls",
    "BeamPath",
    "FixedBeam",
    "SampleMap",
    "path_times",
    "phantom",
]

#: Instants along a frame's exposure at which the beam's position is taken.
PATH_SAMPLES: Final = 5


class BeamPath(Protocol):
    """Where the beam is on the sample: ``position(t)`` for a
    ``time.monotonic()`` instant ``t``, as ``(x, y)`` in the extent's units.
    Called from the simulator's worker thread: it must be thread-safe."""

    def position(self, t: float) -> tuple[float, float]: ...


@dataclass(frozen=True, slots=True)
class FixedBeam:
    """A beam that stays at ``(x, y)``."""

    x: float = 0.0
    y: float = 0.0

    def position(self, t: float) -> tuple[float, float]:
        return self.x, self.y


class BeamControls:
    """The simulator's face to a sample map (mixed into
    :class:`~._engine.SimulatedXspress3`, which owns ``frames``): where the
    beam is, and where each frame of a series saw it."""

    frames: FrameSource

    @property
    def beam(self) -> BeamPath:
        """Where the beam is on a :class:`SampleMap` (``FrameSource.beam``)."""
        return self.frames.beam

    @beam.setter
    def beam(self, value: BeamPath) -> None:
        self.frames.beam = value

    def beam_positions(self, series: int) -> NDArray[np.float64]:
        """See :meth:`~._frames.FrameSource.beam_positions`."""
        return self.frames.beam_positions(series)


def path_times(start: float, stop: float) -> NDArray[np.float64]:
    """The :data:`PATH_SAMPLES` instants of an exposure from ``start`` to
    ``stop``: the middles of equal parts (one instant for an empty span)."""
    if stop <= start:
        return np.array([start], dtype=np.float64)
    parts = (np.arange(PATH_SAMPLES, dtype=np.float64) + 0.5) / PATH_SAMPLES
    return start + (stop - start) * parts


class SampleMap:
    """Element concentration maps over an extent ``(x0, x1, y0, y1)``.

    ``elements`` maps an element of the line table to a 2-D array of
    concentrations (>= 0, all of one shape ``(ny, nx)``, finite). ``matrix``
    is what every point gives besides them, in the same units: elastic and
    Compton scatter (``scatter_fraction`` of it) and the background continuum.
    Every element needs a line excited at ``incident_energy_ev``.

    >>> sample = SampleMap({"Fe": np.eye(3)}, (0.0, 3.0, 0.0, 3.0))
    >>> sample.concentrations_at(1.5, 1.5)
    array([1.])
    """

    def __init__(
        self,
        elements: Mapping[str, ArrayLike],
        extent: tuple[float, float, float, float],
        *,
        matrix: float = 0.15,
        scatter_fraction: float = 0.6,
        incident_energy_ev: float = 12000.0,
        calibration_ev_per_bin: float = 10.0,
        offset_ev: float = 0.0,
        bins: int = DEFAULT_BINS,
    ) -> None:
        if not elements:
            raise ValueError("a SampleMap needs at least one element")
        self.elements: tuple[str, ...] = tuple(str(el) for el in elements)
        self.maps = _checked_maps(elements)
        self.extent = _checked_extent(extent)
        if not (math.isfinite(matrix) and matrix >= 0.0):
            raise ValueError(f"matrix must be finite and >= 0, got {matrix}")
        if not 0.0 <= scatter_fraction <= 1.0:
            raise ValueError(
                f"scatter_fraction must be in [0, 1], got {scatter_fraction}"
            )
        self.matrix = float(matrix)
        self.scatter_fraction = float(scatter_fraction)
        self.incident_energy_ev = float(incident_energy_ev)
        self.calibration_ev_per_bin = float(calibration_ev_per_bin)
        self.offset_ev = float(offset_ev)
        self.bins = int(bins)
        for el in self.elements:
            lines_of(el)  # a ValueError naming the known elements
            if not excited_lines(el, self.incident_energy_ev):
                raise ValueError(
                    f"{el} has no line excited at {self.incident_energy_ev} eV"
                )
        self._components = self._component_shapes()

    # -- geometry ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the concentration maps."""
        ny, nx = self.maps.shape[1:]
        return int(ny), int(nx)

    @property
    def calibration(self) -> Calibration:
        """The energy calibration of the bins."""
        return Calibration(self.calibration_ev_per_bin, self.offset_ev)

    def pixel_centres(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(x, y)`` of the maps' pixel centres, ``(nx,)`` and ``(ny,)``."""
        x0, x1, y0, y1 = self.extent
        ny, nx = self.shape
        x = x0 + (np.arange(nx) + 0.5) * (x1 - x0) / nx
        y = y0 + (np.arange(ny) + 0.5) * (y1 - y0) / ny
        return x, y

    def concentrations_at(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Concentrations ``(..., elements)`` at points ``(x, y)`` (any
        broadcastable shapes): the pixel each falls in, 0 outside."""
        xs, ys = np.broadcast_arrays(
            np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        )
        x0, x1, y0, y1 = self.extent
        ny, nx = self.shape
        with np.errstate(invalid="ignore"):
            ix = np.floor((xs - x0) / (x1 - x0) * nx)
            iy = np.floor((ys - y0) / (y1 - y0) * ny)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        ixc = np.where(inside, ix, 0).astype(np.intp)
        iyc = np.where(inside, iy, 0).astype(np.intp)
        values = self.maps[:, iyc, ixc]  # (elements, ...)
        return np.moveaxis(np.where(inside, values, 0.0), 0, -1)

    def along(self, path: ArrayLike) -> NDArray[np.float64]:
        """Mean concentrations ``(elements,)`` over the ``(n, 2)`` positions
        of a frame's path."""
        p = np.asarray(path, dtype=np.float64).reshape(-1, 2)
        return self.concentrations_at(p[:, 0], p[:, 1]).mean(axis=0)

    # -- what a frame sees -------------------------------------------------------------
    def rate_factor(self, concentrations: ArrayLike) -> float:
        """Input count rate over ``count_rate`` at these concentrations."""
        return self.matrix + float(np.sum(concentrations))

    def prepared(self, concentrations: ArrayLike) -> PreparedShape:
        """The spectrum shape at these concentrations (the matrix alone where
        there is nothing at all)."""
        c = np.asarray(concentrations, dtype=np.float64)
        scatter = self.matrix * self.scatter_fraction
        weights = np.concatenate(([scatter, self.matrix - scatter], c))
        if not weights.any():
            weights[:2] = self.scatter_fraction, 1.0 - self.scatter_fraction
        return prepare_shape(weights @ self._components)

    def _component_shapes(self) -> NDArray[np.float64]:
        """``(2 + elements, bins)``: the scatter's shape, the background's,
        then each element's line family alone, each summing to 1 (all from
        :class:`SampleModel`)."""
        common = {
            "incident_energy_ev": self.incident_energy_ev,
            "calibration_ev_per_bin": self.calibration_ev_per_bin,
            "offset_ev": self.offset_ev,
            "bins": self.bins,
        }
        models = [
            SampleModel({}, scatter_fraction=1.0, background_fraction=0.0, **common),
            SampleModel({}, scatter_fraction=0.0, background_fraction=1.0, **common),
            *(
                SampleModel(
                    {el: 1.0}, scatter_fraction=0.0, background_fraction=0.0, **common
                )
                for el in self.elements
            ),
        ]
        out = np.stack([m.expected_shape() for m in models])
        out.setflags(write=False)
        return out


def _checked_maps(elements: Mapping[str, ArrayLike]) -> NDArray[np.float64]:
    arrays = [np.array(a, dtype=np.float64) for a in elements.values()]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2 or 0 in arrays[0].shape:
        raise ValueError(
            f"element maps must be non-empty 2-D arrays of one shape, got "
            f"{sorted(str(s) for s in shapes)}"
        )
    stacked = np.stack(arrays)
    if not np.all(np.isfinite(stacked)) or np.any(stacked < 0.0):
        raise ValueError("element maps must be finite and >= 0")
    stacked.setflags(write=False)
    return stacked


def _checked_extent(
    extent: tuple[float, float, float, float],
) -> tuple[float, float, float, float]:
    x0, x1, y0, y1 = (float(v) for v in extent)
    if not all(math.isfinite(v) for v in (x0, x1, y0, y1)) or x1 <= x0 or y1 <= y0:
        raise ValueError(
            "extent must be finite (x0, x1, y0, y1) with x0 < x1 and y0 < y1, "
            f"got {extent}"
        )
    return x0, x1, y0, y1


#: The phantom's regions, in coordinates relative to its extent (0..1):
#: element -> (concentration, shape, parameters).
PHANTOM_REGIONS: Final = {
    "Fe": (2.0, "disc", (0.30, 0.68, 0.17)),
    "Cu": (1.0, "box", (0.58, 0.88, 0.55, 0.85)),
    "Ca": (1.5, "ring", (0.72, 0.30, 0.08, 0.16)),
    "Zn": (0.8, "box", (0.12, 0.50, 0.14, 0.30)),
}


def phantom(
    extent: tuple[float, float, float, float] = (-1.0, 1.0, -1.0, 1.0),
    pixels: int = 200,
) -> SampleMap:
    """The built-in test sample: four elements in four separate regions.

    Fe in a disc (concentration 2, the hottest spot: ~15 % dead time at the
    default 2e5 counts/s), Cu in a square (1), Ca in a ring (1.5), Zn in a bar
    (0.8), on a matrix of 0.15 everywhere (:data:`PHANTOM_REGIONS` has the
    geometry, relative to ``extent``). ``pixels`` squared is its resolution.
    """
    u = (np.arange(pixels) + 0.5) / pixels
    uu, vv = np.meshgrid(u, u)  # [iy, ix]: vv is y, uu is x
    maps: dict[str, NDArray[np.float64]] = {}
    for element, (value, kind, p) in PHANTOM_REGIONS.items():
        if kind == "disc":
            inside = np.hypot(uu - p[0], vv - p[1]) <= p[2]
        elif kind == "ring":
            r = np.hypot(uu - p[0], vv - p[1])
            inside = (r >= p[2]) & (r <= p[3])
        else:
            inside = (uu >= p[0]) & (uu <= p[1]) & (vv >= p[2]) & (vv <= p[3])
        maps[element] = np.where(inside, value, 0.0)
    return SampleMap(maps, extent)
