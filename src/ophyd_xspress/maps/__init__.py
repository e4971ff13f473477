"""XRF maps: plans, live images, maps from the catalog.

* :func:`step_map` and :func:`fly_map` (``_plans``): a raster of the sample,
  an event per pixel or rows flown, recording the raster (:class:`MapGrid`,
  ``_grid``) and every frame's position in the run;
* :class:`MotorBeam` (``_motion``): the simulator's beam where two
  ophyd-async motors put the sample; :class:`SimPositionCompare`
  (``_position_compare``): per-pixel triggers and position capture for fly
  maps on the simulator;
* :class:`LiveMap` (``_live``): one image per ROI filled as frames land,
  from the documents alone;
* :func:`read_map` (``_catalog``): a run's map back from the catalog;
  :func:`plot_map` (``_view``): a PNG of it, one panel per ROI.

Names are imported lazily: :class:`MapGrid` and :class:`MapImages` (pure
numpy) load without bluesky or matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._catalog import XrfMap, read_map
    from ._grid import METADATA_KEY, MapGrid, MapImages
    from ._live import LiveMap
    from ._motion import MotorBeam, MotorTracker
    from ._plans import fly_map, map_grid, step_map
    from ._position_compare import RowPulses, SimPositionCompare
    from ._view import plot_map

_LAZY = {
    "XrfMap": "._catalog",
    "read_map": "._catalog",
    "METADATA_KEY": "._grid",
    "MapGrid": "._grid",
    "MapImages": "._grid",
    "LiveMap": "._live",
    "MotorBeam": "._motion",
    "MotorTracker": "._motion",
    "fly_map": "._plans",
    "map_grid": "._plans",
    "step_map": "._plans",
    "RowPulses": "._position_compare",
    "SimPositionCompare": "._position_compare",
    "plot_map": "._view",
}

__all__ = [
    "METADATA_KEY",
    "LiveMap",
    "MapGrid",
    "MapImages",
    "MotorBeam",
    "MotorTracker",
    "RowPulses",
    "SimPositionCompare",
    "XrfMap",
    "fly_map",
    "map_grid",
    "plot_map",
    "read_map",
    "step_map",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
