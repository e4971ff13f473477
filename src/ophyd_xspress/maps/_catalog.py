"""A map back from the catalog: ROI images, positions, spectra on demand.

>>> xrf = read_map(catalog[uid])        # a run made by fly_map or step_map
>>> xrf.rois["Fe"]                      # (ny, nx), dead-time corrected
>>> xrf.x, xrf.y                        # (ny, nx) where each pixel's frame was
>>> xrf.spectra[3, 7]                   # (channels, bins) of one pixel, fetched
>>> xrf.spectra.read()                  # (ny, nx, channels, bins), all of them

Everything comes from the run: the raster from its start document
(:class:`~._grid.MapGrid`), the values from its ``primary`` stream (a step
map's per-event ROI sums and motor readbacks; a fly map's file-backed
``roi_corrected`` rows, summed over the channels) and a fly map's positions
from its positions stream. Pixels without a frame (a map stopped early) are
NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .._schema import by_dataset, by_suffix
from ._grid import MapGrid

__all__ = ["LazySpectra", "XrfMap", "read_map"]


class LazySpectra:
    """A map's spectra, ``(ny, nx, channels, bins)``, read only when indexed.

    ``spectra[iy, ix]`` fetches one pixel's frame; ``spectra.read()`` all.
    """

    def __init__(self, grid: MapGrid, array: Any, frames: int) -> None:
        self.grid = grid
        self._array = array
        self._frames = frames
        self._index = grid.frame_index()

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.grid.shape, *tuple(self._array.shape[1:]))

    def __getitem__(self, pixel: tuple[int, int]) -> npt.NDArray[Any]:
        iy, ix = pixel
        frame = int(self._index[iy, ix])
        if frame >= self._frames:
            raise IndexError(f"pixel ({iy}, {ix}) has no frame yet")
        return np.asarray(self._array[frame])

    def read(self) -> npt.NDArray[Any]:
        """Every pixel's spectra (zeros where no frame is)."""
        values = np.asarray(self._array.read())
        return self.grid.to_image(values, fill=0)


@dataclass
class XrfMap:
    """One map run: the raster, an image per ROI, positions, dead time."""

    uid: str
    grid: MapGrid
    #: ROI name -> ``(ny, nx)`` dead-time corrected sum over the channels.
    rois: dict[str, npt.NDArray[np.float64]]
    #: ``(ny, nx)``: where each pixel's frame was (fast and slow motor).
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    #: ``(ny, nx)``: the largest channel dead time of each pixel (%).
    dead_time: npt.NDArray[np.float64]
    spectra: LazySpectra

    @property
    def frames(self) -> int:
        """Frames the run holds."""
        return int(np.isfinite(self.dead_time).sum())


def _read(node: Any, key: str) -> npt.NDArray[Any]:
    return np.asarray(node[key].read())


def read_map(run: Any) -> XrfMap:
    """The map of ``run`` (``catalog[uid]``: a run made by
    :func:`~._plans.fly_map` or :func:`~._plans.step_map`)."""
    start = run.start
    grid = MapGrid.from_metadata(start)
    primary = run["primary"]
    det = grid.detector
    if grid.kind == "step":
        values = np.stack([_read(primary, f"{det}-{r}") for r in grid.rois], axis=-1)
        x = _read(primary, grid.x_key)
        y = _read(primary, grid.y_key)
        dead = _read(primary, f"{det}-dead_time_max")
    else:
        roi = _read(primary, by_dataset("roi_corrected").key(det))  # (N, C, R)
        values = roi.sum(axis=1)
        positions = run[grid.positions_stream]
        x = _read(positions, grid.x_key).reshape(-1)
        y = _read(positions, grid.y_key).reshape(-1)
        dead = _read(primary, by_suffix("dead_time").key(det)).max(axis=1)
    frames = len(values)
    images = grid.to_image(values)
    return XrfMap(
        uid=str(start["uid"]),
        grid=grid,
        rois={r: images[..., i] for i, r in enumerate(grid.rois)},
        x=grid.to_image(x[:frames]),
        y=grid.to_image(y[:frames]),
        dead_time=grid.to_image(dead),
        spectra=LazySpectra(grid, primary[det], frames),
    )
