"""The dranspose worker: one Xspress3 message in, a frame's map values out.

dranspose spreads a stream's events over many workers; each event of the
Xspress3 stream (as dranspose's ``zmqsub_xspress3`` ingester makes them) is
one message of the detector: the header, one frame (its JSON, spectra and
metadata parts, from either firmware's framing) or the series end. The
worker decodes it with this package's :class:`~ophyd_xspress.protocol.StreamDecoder`
(the metadata pickle through the restricted unpickler: never ``pickle.loads``
on network bytes) and derives the frame's dead time and dead-time corrected
ROI sums with :func:`~ophyd_xspress.protocol.derive`, the same code the
detector's HDF5 file is written with. The reducer
(:class:`~._reducer.XrfMapReducer`) puts them in place.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..protocol import (
    Frame,
    HeaderMessage,
    ProtocolError,
    SeriesEndMessage,
    StrayFrame,
    StreamDecoder,
    derive,
)
from ._parameters import MapParameters, describe

__all__ = ["XrfMapWorker"]

log = logging.getLogger("ophyd_xspress.dranspose")


class XrfMapWorker:
    """A dranspose worker class (``ophyd_xspress.dranspose:XrfMapWorker``).

    Its result for an event: ``{"header": filename}``, ``{"end": True}``, or
    for a frame ``{"frame": n, "roi": (channels, rois) corrected sums,
    "dead_time": (channels,) %}``; ``{"error": text}`` for a message that
    cannot be decoded; None for an event without the Xspress3 stream.
    """

    @staticmethod
    def describe_parameters() -> list[Any]:
        return describe()

    def __init__(self, parameters: Any = None, *args: Any, **kwargs: Any) -> None:
        self.decoder = StreamDecoder()
        self._parsed: tuple[Any, MapParameters] | None = None

    def _parameters(self, parameters: Any) -> MapParameters:
        """Parsed once for each set of parameters dranspose hands over."""
        key = tuple(
            (name, getattr(p, "data", p))
            for name, p in sorted((parameters or {}).items())
        )
        if self._parsed is None or self._parsed[0] != key:
            self._parsed = (key, MapParameters.parse(parameters))
        return self._parsed[1]

    def process_event(
        self, event: Any, parameters: Any = None, *args: Any, **kwargs: Any
    ) -> dict[str, Any] | None:
        settings = self._parameters(parameters)
        stream = event.streams.get(settings.stream)
        if stream is None:
            return None
        try:
            packets = self.decoder.feed(list(stream.frames))
        except ProtocolError as exc:
            log.warning("event %s: %s", event.event_number, exc)
            return {"error": str(exc)}
        for packet in packets:
            if isinstance(packet, HeaderMessage):
                return {"header": packet.filename}
            if isinstance(packet, SeriesEndMessage):
                return {"end": True}
            frame = packet.frame if isinstance(packet, StrayFrame) else packet
            try:
                return _frame_result(frame, settings)
            except ValueError as exc:  # windows that do not fit the frame
                log.warning(
                    "event %s: frame %s: %s", event.event_number, frame.frame, exc
                )
                return {"error": f"frame {frame.frame}: {exc}"}
        return None  # a legacy part awaiting the rest of its frame

    def finish(self, parameters: Any = None) -> None:
        self.decoder.finish()


def _frame_result(frame: Frame, settings: MapParameters) -> dict[str, Any]:
    derived = derive(frame.metadata, frame.spectra, settings.windows, warn=False)
    roi = derived.roi_corrected
    channels = frame.spectra.shape[0]
    return {
        "frame": frame.frame,
        "roi": np.zeros((channels, 0)) if roi is None else roi,
        "dead_time": derived.dead_time.dead_percent,
    }
