"""A map's raster, and the images filled from its frames.

Pure numpy: the plans, the live callback, the catalog reader and the dranspose
reducer all place frame ``k`` of a map with :meth:`MapGrid.pixel_of` and fill
:class:`MapImages` the same way. A map is ``ny`` rows of ``nx`` pixels: the
fast motor moves along a row (``x``), the slow one steps between rows
(``y``); frames come row by row, each row in the fast motor's direction
(every other row backwards when ``snake``). Images are ``(ny, nx)`` arrays,
row 0 at the first ``y`` (``imshow(..., origin="lower",
extent=grid.image_extent())`` draws them as the sample lies when the
coordinates increase).

The start document of a map run carries :meth:`MapGrid.to_metadata` under
:data:`METADATA_KEY`, which is all it takes to rebuild the map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["METADATA_KEY", "MapGrid", "MapImages", "MapKind"]

#: The start document's key holding :meth:`MapGrid.to_metadata`.
METADATA_KEY: Final = "xrf_map"

MapKind = Literal["fly", "step"]


@dataclass(frozen=True)
class MapGrid:
    """``ny`` rows of ``nx`` pixels, centred from ``x = (first, last)`` and
    ``y = (first, last)`` (motor positions of the first and last pixel
    centres, as ``grid_scan`` takes them).

    ``fast`` and ``slow`` name the motors; ``x_key`` / ``y_key`` the data
    keys of their positions in the run; ``detector`` the Xspress3 and
    ``rois`` its ROI names, in the detector's order.
    """

    nx: int
    ny: int
    x: tuple[float, float]
    y: tuple[float, float]
    snake: bool = False
    kind: MapKind = "step"
    fast: str = "x"
    slow: str = "y"
    x_key: str = "x"
    y_key: str = "y"
    detector: str = "xspress"
    rois: tuple[str, ...] = ()
    #: Seconds each pixel takes (the frame period of a fly map), if known.
    dwell: float | None = None
    #: The stream holding a fly map's captured positions, one event per row.
    positions_stream: str = "xrf_map_positions"
    units: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.nx < 1 or self.ny < 1:
            raise ValueError(f"a map needs nx, ny >= 1, got {self.nx} x {self.ny}")
        if self.kind not in ("fly", "step"):
            raise ValueError(f"kind must be 'fly' or 'step', got {self.kind!r}")
        for axis, (first, last), n in (("x", self.x, self.nx), ("y", self.y, self.ny)):
            if not (math.isfinite(first) and math.isfinite(last)):
                raise ValueError(f"{axis} from {first} to {last}: not finite")
            if n > 1 and first == last:
                raise ValueError(
                    f"{axis}: {n} pixels from {first} to {last} have no width "
                    "(first and last pixel centres must differ)"
                )
        if self.dwell is not None and not (
            math.isfinite(self.dwell) and self.dwell > 0
        ):
            raise ValueError(f"dwell must be a positive time in s, got {self.dwell}")

    # -- geometry ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return self.ny, self.nx

    @property
    def frames(self) -> int:
        """Frames (pixels) of the whole map."""
        return self.nx * self.ny

    @property
    def step(self) -> tuple[float, float]:
        """Pixel pitch ``(dx, dy)`` (signed; 1 along an axis of one pixel)."""
        dx = (self.x[1] - self.x[0]) / (self.nx - 1) if self.nx > 1 else 1.0
        dy = (self.y[1] - self.y[0]) / (self.ny - 1) if self.ny > 1 else 1.0
        return dx, dy

    def centres(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Pixel centres along ``x`` ``(nx,)`` and ``y`` ``(ny,)``."""
        return (
            np.linspace(self.x[0], self.x[1], self.nx),
            np.linspace(self.y[0], self.y[1], self.ny),
        )

    def image_extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` pixel edges for ``imshow``."""
        dx, dy = self.step
        return (
            self.x[0] - dx / 2,
            self.x[1] + dx / 2,
            self.y[0] - dy / 2,
            self.y[1] + dy / 2,
        )

    def backwards(self, row: int) -> bool:
        """Row ``row`` runs against the fast motor's direction (snake)."""
        return self.snake and row % 2 == 1

    def row_edges(self, row: int) -> tuple[float, float]:
        """Fast-motor positions where row ``row`` begins and ends, in the
        direction it is flown (the outer edges of its end pixels)."""
        left, right = self.image_extent()[:2]
        return (right, left) if self.backwards(row) else (left, right)

    # -- frames and pixels ------------------------------------------------------------
    def pixel_of(
        self, frames: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """``(iy, ix)`` of frame numbers ``frames`` (0 is the first of the map)."""
        k = np.asarray(frames, dtype=np.intp)
        if k.size and (k.min() < 0 or k.max() >= self.frames):
            raise IndexError(
                f"frames {int(k.min())}..{int(k.max())} outside a map of "
                f"{self.frames} pixels ({self.ny} x {self.nx})"
            )
        iy, ix = np.divmod(k, self.nx)
        if self.snake:
            ix = np.where(iy % 2 == 1, self.nx - 1 - ix, ix)
        return iy, ix

    def frame_index(self) -> npt.NDArray[np.intp]:
        """``(ny, nx)``: the frame number of each pixel."""
        index = np.empty(self.shape, dtype=np.intp)
        k = np.arange(self.frames)
        index[self.pixel_of(k)] = k
        return index

    def in_frame_order(self, image: npt.ArrayLike) -> npt.NDArray[Any]:
        """An ``(ny, nx, ...)`` array's pixels as ``(frames, ...)``."""
        return np.asarray(image)[self.pixel_of(np.arange(self.frames))]

    def to_image(self, values: npt.ArrayLike, fill: float = np.nan) -> npt.NDArray[Any]:
        """``(n, ...)`` values of frames ``0..n-1`` as a ``(ny, nx, ...)`` image
        (``fill`` where no frame is)."""
        v = np.asarray(values)
        out = np.full((*self.shape, *v.shape[1:]), fill, dtype=np.result_type(v, fill))
        out[self.pixel_of(np.arange(len(v)))] = v
        return out

    # -- the start document ------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready, for the start document's :data:`METADATA_KEY`."""
        return {
            "kind": self.kind,
            "shape": [self.ny, self.nx],
            "x": list(self.x),
            "y": list(self.y),
            "extent": list(self.image_extent()),
            "snake": self.snake,
            "fast": self.fast,
            "slow": self.slow,
            "x_key": self.x_key,
            "y_key": self.y_key,
            "detector": self.detector,
            "rois": list(self.rois),
            "dwell": self.dwell,
            "positions_stream": self.positions_stream,
            "units": self.units,
        }

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> MapGrid:
        """The grid of a start document (the whole document, or its
        :data:`METADATA_KEY` entry)."""
        entry = md.get(METADATA_KEY, md)
        if "shape" not in entry or "x" not in entry:
            raise KeyError(
                f"not a map: the start document has no {METADATA_KEY!r} entry "
                "(made by ophyd_xspress.maps fly_map / step_map)"
            )
        ny, nx = (int(v) for v in entry["shape"])
        return cls(
            nx=nx,
            ny=ny,
            x=_pair(entry["x"]),
            y=_pair(entry["y"]),
            snake=bool(entry.get("snake", False)),
            kind=entry.get("kind", "step"),
            fast=str(entry.get("fast", "x")),
            slow=str(entry.get("slow", "y")),
            x_key=str(entry.get("x_key", "x")),
            y_key=str(entry.get("y_key", "y")),
            detector=str(entry.get("detector", "xspress")),
            rois=tuple(str(r) for r in entry.get("rois", ())),
            dwell=None if entry.get("dwell") is None else float(entry["dwell"]),
            positions_stream=str(entry.get("positions_stream", "xrf_map_positions")),
            units=str(entry.get("units", "")),
        )


def _pair(values: Sequence[float]) -> tuple[float, float]:
    first, last = values
    return float(first), float(last)


class MapImages:
    """One ``(ny, nx)`` image per name, NaN until a frame fills a pixel.

    >>> images = MapImages(MapGrid(2, 2, (0, 1), (0, 1)), ["Fe"])
    >>> images.fill([0, 3], [[5.0], [7.0]])
    >>> images["Fe"]
    array([[ 5., nan],
           [nan,  7.]])
    """

    def __init__(self, grid: MapGrid, names: Sequence[str]) -> None:
        self.grid = grid
        self.names = tuple(names)
        self._images = {n: np.full(grid.shape, np.nan) for n in self.names}
        #: Pixels filled so far (each counted once).
        self.filled = np.zeros(grid.shape, dtype=bool)

    def __getitem__(self, name: str) -> npt.NDArray[np.float64]:
        return self._images[name]

    def __iter__(self) -> Any:
        return iter(self.names)

    def as_dict(self) -> dict[str, npt.NDArray[np.float64]]:
        """Copies of the images, by name."""
        return {n: image.copy() for n, image in self._images.items()}

    @property
    def count(self) -> int:
        """How many pixels have a value."""
        return int(self.filled.sum())

    def fill(self, frames: npt.ArrayLike, values: npt.ArrayLike) -> None:
        """Put ``values`` ``(n, names)`` of frames ``frames`` ``(n,)`` in place."""
        v = np.asarray(values, dtype=np.float64).reshape(-1, len(self.names))
        iy, ix = self.grid.pixel_of(frames)
        if len(iy) != len(v):
            raise ValueError(f"{len(iy)} frames but {len(v)} rows of values")
        for r, name in enumerate(self.names):
            self._images[name][iy, ix] = v[:, r]
        self.filled[iy, ix] = True
