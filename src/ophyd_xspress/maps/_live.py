"""Live maps: one image per ROI, filled as the frames of a map land.

:class:`LiveMap` is a Bluesky callback that needs the documents only (so it
works as well in another process, fed by a document stream):

* a step map's events carry each ROI's dead-time corrected sum over the
  channels (``<detector>-<roi>``): each event fills its pixel;
* a fly map's frames are in the detector's HDF5 file: the StreamResource of
  ``<detector>-roi_corrected`` names the file and dataset, and each
  StreamDatum the rows that have reached it; those rows are read (SWMR),
  summed over the channels and put in place.

Which pixel a frame fills comes from the start document's raster
(:class:`~._grid.MapGrid`). The figure is redrawn at most every ``redraw``
seconds (and at the end): filling a pixel costs microseconds, a redraw tens
of milliseconds. In Jupyter with the inline backend the figure is shown once
and updated in place; with a GUI backend (IPython ``%matplotlib qt``) it is a
window, redrawn in the Qt main thread; with neither (Agg) it is drawn only
for :meth:`LiveMap.save`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from bluesky.callbacks.mpl_plotting import QtAwareCallback
from event_model.documents import (
    Event,
    EventDescriptor,
    RunStart,
    RunStop,
    StreamDatum,
    StreamResource,
)

from .._schema import by_dataset
from ._grid import MapGrid, MapImages

__all__ = ["LiveMap"]

log = logging.getLogger("ophyd_xspress.maps")

#: The fly-map dataset the live map reads: corrected ROI sums per channel.
ROI_CORRECTED = by_dataset("roi_corrected")


class LiveMap(QtAwareCallback):
    """One panel per ROI (dead-time corrected, summed over channels), filled
    as frames land.

    >>> live = LiveMap()                  # every ROI of the detector
    >>> RE(fly_map(...), live)            # or RE.subscribe(live)
    >>> live.images["Fe"]                 # (ny, nx), NaN where no frame yet
    >>> live.save("map.png")

    ``rois``: which ROIs (default: all, in the detector's order); ``redraw``:
    seconds between redraws; ``show``: draw at all (False: fill the images
    only); ``title``: above the panels (default: the plan and scan id).
    """

    def __init__(
        self,
        rois: Sequence[str] | None = None,
        *,
        redraw: float = 0.5,
        show: bool = True,
        cmap: str = "viridis",
        title: str | None = None,
        use_teleporter: bool | None = None,
    ) -> None:
        super().__init__(use_teleporter=use_teleporter)
        self._wanted = tuple(rois) if rois is not None else None
        self.redraw = redraw
        self.show = show
        self.cmap = cmap
        self.title = title
        self.grid: MapGrid | None = None
        self.images: MapImages | None = None
        self._view: Any = None
        self._roi_index: list[int] = []
        self._keys: list[str] = []
        self._resource: tuple[str, str] | None = None
        self._files: dict[str, Any] = {}
        self._primary: set[str] = set()
        self._drawn = 0.0
        #: Seconds spent filling pixels and redrawing (for measurements).
        self.fill_seconds = 0.0
        self.draw_seconds = 0.0

    # -- documents ----------------------------------------------------------------
    def start(self, doc: RunStart) -> None:
        try:
            grid = MapGrid.from_metadata(doc)
        except KeyError:
            self.grid = self.images = None  # not a map: nothing to draw
            return
        names = self._wanted if self._wanted is not None else grid.rois
        missing = [n for n in names if n not in grid.rois]
        if missing:
            raise ValueError(
                f"ROIs {missing} are not among the detector's {list(grid.rois)}"
            )
        self.grid = grid
        self.images = MapImages(grid, names)
        self._roi_index = [grid.rois.index(n) for n in names]
        self._keys = [f"{grid.detector}-{n}" for n in names]
        self._resource = None
        self._primary.clear()
        self._drawn = 0.0
        if self.show:
            from ._view import MapView

            title = (
                self.title or f"{doc.get('plan_name', 'map')} {doc.get('scan_id', '')}"
            )
            self._view = MapView(grid, names, cmap=self.cmap, title=title)

    def descriptor(self, doc: EventDescriptor) -> None:
        if doc.get("name") == "primary":
            self._primary.add(doc["uid"])

    def event(self, doc: Event) -> Event:
        images = self.images
        data = doc["data"]
        if (
            images is None
            or doc["descriptor"] not in self._primary
            or not all(k in data for k in self._keys)
        ):
            return doc
        t0 = time.perf_counter()
        images.fill([doc["seq_num"] - 1], [[data[k] for k in self._keys]])
        self.fill_seconds += time.perf_counter() - t0
        self._maybe_draw()
        return doc

    def stream_resource(self, doc: StreamResource) -> None:
        grid = self.grid
        if grid is None or doc.get("data_key") != ROI_CORRECTED.key(grid.detector):
            return
        path = urlparse(doc["uri"]).path
        self._resource = (doc["uid"], path)
        self._dataset = str(doc["parameters"].get("dataset", ROI_CORRECTED.path))

    def stream_datum(self, doc: StreamDatum) -> None:
        images, resource = self.images, self._resource
        if images is None or resource is None or doc["stream_resource"] != resource[0]:
            return
        start, stop = doc["indices"]["start"], doc["indices"]["stop"]
        t0 = time.perf_counter()
        rows = self._rows(resource[1], start, stop)  # (n, channels, rois)
        values = rows.sum(axis=1)[:, self._roi_index]
        images.fill(np.arange(start, start + len(values)), values)
        self.fill_seconds += time.perf_counter() - t0
        self._maybe_draw()

    def stop(self, doc: RunStop) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._draw()

    # -- reading and drawing ------------------------------------------------------
    def _rows(self, path: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the corrected ROI sums in the file at ``path``
        (kept open while the run lasts; refreshed to see new rows)."""
        import h5py

        f = self._files.get(path)
        if f is None:
            f = self._files[path] = h5py.File(path, "r", swmr=True)
        dataset = f[self._dataset]
        if not isinstance(dataset, h5py.Dataset):
            raise TypeError(f"{path}: {self._dataset} is not a dataset")
        dataset.refresh()
        return np.asarray(dataset[start:stop], dtype=np.float64)

    def _maybe_draw(self) -> None:
        if time.monotonic() - self._drawn >= self.redraw:
            self._draw()

    def _draw(self) -> None:
        if self._view is None or self.images is None:
            return
        t0 = time.perf_counter()
        self._view.update(self.images)
        self.draw_seconds += time.perf_counter() - t0
        self._drawn = time.monotonic()

    @property
    def figure(self) -> Any:
        """The matplotlib figure (None before a map starts or with ``show=False``)."""
        return None if self._view is None else self._view.figure

    def save(self, path: str | Path) -> Path:
        """Write the current images as a PNG (one panel per ROI)."""
        from ._view import MapView

        if self.grid is None or self.images is None:
            raise RuntimeError("no map yet: save() after a map run has started")
        view = self._view or MapView(
            self.grid, self.images.names, cmap=self.cmap, files_only=True
        )
        view.update(self.images, interactive=False)
        return view.save(path)
