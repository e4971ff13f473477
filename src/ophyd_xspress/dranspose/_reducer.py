"""The dranspose reducer: the workers' frame values assembled into a map.

Frame ``n`` of the series is pixel ``n`` of the map (``map_shape`` rows,
every other one backwards with ``snake``), placed as this package's live
map and catalog reader place them (:class:`~ophyd_xspress.maps.MapGrid`).
dranspose's Xspress3 ingester follows one series per scan, as a map armed
once (``fly_map``) sends it; a new header starts a new map. Results may come
out of order from many workers: a frame is placed by its number, and one
older than the latest header (by event number) is dropped.

``publish`` (served by dranspose as HDF5 over HTTP) holds ``map/<roi>``
(``(ny, nx)``, dead-time corrected, summed over the channels),
``dead_time`` (the largest channel's, %), ``frames`` and ``errors``; with
the ``output`` parameter the same is written to an HDF5 file at the end.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from ..maps._grid import MapGrid, MapImages
from ._parameters import MapParameters, describe

__all__ = ["XrfMapReducer"]

log = logging.getLogger("ophyd_xspress.dranspose")


class XrfMapReducer:
    """A dranspose reducer class (``ophyd_xspress.dranspose:XrfMapReducer``)."""

    @staticmethod
    def describe_parameters() -> list[Any]:
        return describe()

    def __init__(self, parameters: Any = None, *args: Any, **kwargs: Any) -> None:
        self.settings = MapParameters.parse(parameters)
        ny, nx = self.settings.shape
        self.grid = MapGrid(
            nx=nx,
            ny=ny,
            x=(0.0, float(nx - 1)),
            y=(0.0, float(ny - 1)),
            snake=self.settings.snake,
            kind="fly",
            rois=self.settings.roi_names,
        )
        self.publish_rlock = threading.RLock()
        self._header_event = -1
        self.publish: dict[str, Any] = {}
        self._new_map()

    def _new_map(self) -> None:
        names = self.settings.roi_names
        self.images = MapImages(self.grid, [*names, "dead_time"])
        #: frame -> (channels, rois) corrected sums, as the workers sent them
        self.per_channel: dict[int, np.ndarray] = {}
        with self.publish_rlock:
            self.publish = {
                "map": {n: self.images[n] for n in names},
                "dead_time": self.images["dead_time"],
                "frames": 0,
                "errors": 0,
            }

    def process_result(self, result: Any, parameters: Any = None) -> None:
        payload = result.payload
        if not isinstance(payload, dict):
            return
        event = int(result.event_number)
        with self.publish_rlock:
            if "header" in payload and event > self._header_event:
                if self._header_event >= 0:
                    self._new_map()
                self._header_event = event
            elif "error" in payload:
                self.publish["errors"] += 1
            elif "frame" in payload and event > self._header_event:
                self._place(int(payload["frame"]), payload)

    def _place(self, frame: int, payload: dict[str, Any]) -> None:
        if not 0 <= frame < self.grid.frames:
            log.warning("frame %d is outside the %s map", frame, self.grid.shape)
            return
        roi = np.asarray(payload["roi"], dtype=np.float64)
        dead = np.asarray(payload["dead_time"], dtype=np.float64)
        self.per_channel[frame] = roi
        self.images.fill([frame], [[*roi.sum(axis=0), float(dead.max())]])
        self.publish["frames"] = len(self.per_channel)

    def finish(self, parameters: Any = None) -> None:
        if self.settings.output:
            self.write(self.settings.output)

    def write(self, path: str) -> None:
        """The map as HDF5: ``map/<roi>``, ``dead_time``, ``frames``."""
        import h5py

        with self.publish_rlock, h5py.File(path, "w") as f:
            group = f.create_group("map")
            group.attrs["NX_class"] = "NXdata"
            for name in self.settings.roi_names:
                group[name] = self.images[name]
            f["dead_time"] = self.images["dead_time"]
            f["frames"] = self.publish["frames"]
            f["errors"] = self.publish["errors"]
