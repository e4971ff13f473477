"""Live XRF maps on dranspose: a worker and a reducer (``[dranspose]`` extra).

For beamlines whose live processing runs on a dranspose cluster (MAX IV):
the worker (:class:`XrfMapWorker`) decodes the Xspress3 stream with this
package's safe decoder and derives dead-time corrected ROI sums with the same
physics as the detector's files; the reducer (:class:`XrfMapReducer`)
assembles the map. Run them as dranspose's worker and reducer classes,
``ophyd_xspress.dranspose:XrfMapWorker`` and
``ophyd_xspress.dranspose:XrfMapReducer``, with dranspose's Xspress3
ingester on the detector's PUB stream (a SUB socket: it takes nothing from
the detector's own consumer). :func:`write_dump` turns a recorded stream
into an ingester dump; :class:`ReplaySource` feeds dumps and captures to
``dranspose replay`` with any cbor2 (see its module for why).

Only :func:`write_dump` and :meth:`XrfMapWorker.describe_parameters` import
dranspose; the classes themselves need only this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._dump import events_of, write_dump
    from ._parameters import MapParameters, parameter_list
    from ._reducer import XrfMapReducer
    from ._source import REPLAY_ENV, ReplaySource, read_dump
    from ._worker import XrfMapWorker

_LAZY = {
    "events_of": "._dump",
    "write_dump": "._dump",
    "MapParameters": "._parameters",
    "parameter_list": "._parameters",
    "XrfMapReducer": "._reducer",
    "REPLAY_ENV": "._source",
    "ReplaySource": "._source",
    "read_dump": "._source",
    "XrfMapWorker": "._worker",
}

__all__ = [
    "REPLAY_ENV",
    "MapParameters",
    "ReplaySource",
    "XrfMapReducer",
    "XrfMapWorker",
    "events_of",
    "parameter_list",
    "read_dump",
    "write_dump",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
