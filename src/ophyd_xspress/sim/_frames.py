"""What a series of the simulated device contains: its header and its frames.

Frames are deterministic: frame ``n`` of series ``s`` is drawn from a random
generator seeded with ``(seed, s, n)`` with the settings the series was armed
with, so any frame sent can be made again, bit for bit, without keeping it
(:meth:`FrameSource.frame`). The physics is :func:`._processor.simulate_frame`;
the packets are the protocol's :class:`~ophyd_xspress.protocol.Frame` and
:class:`~ophyd_xspress.protocol.HeaderMessage`.

With a :class:`~._sample_map.SampleMap` a frame also depends on where the beam
was during its exposure: the positions it was made with are kept (for the
latest :data:`_KEPT_PATH_SERIES` series), so it can still be made again bit for
bit, and they tell where each frame of a map really was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..protocol import (
    DEFAULT_SCALER_NAMES,
    Frame,
    Framing,
    HeaderMessage,
    RoiWindows,
    make_frame,
)
from ._processor import simulate_frame
from ._sample_map import BeamPath, FixedBeam, SampleMap, path_times
from ._spectrum import PreparedShape, SampleModel

__all__ = ["WINDOW_TAGS", "FrameSource", "SeriesSettings"]

#: The scalers of the newer firmware (multipart framing), in the stream's order.
WINDOW_TAGS: Final = (*DEFAULT_SCALER_NAMES, "window_counts")
#: Series whose settings are kept for :meth:`FrameSource.settings_of`.
_KEPT_SERIES: Final = 1000
#: Series whose frames' beam paths are kept (a sample map only).
_KEPT_PATH_SERIES: Final = 4


@dataclass(frozen=True)
class SeriesSettings:
    """What an Arm fixes for its series (a copy: later writes do not change it)."""

    exptime: float
    ticks: int
    count_rate: npt.NDArray[np.float64]
    event_widths: npt.NDArray[np.int32] | npt.NDArray[np.int64]
    windows: npt.NDArray[np.int64]


class FrameSource:
    """Headers and frames of one simulated device, and its series so far."""

    def __init__(
        self, sample: SampleModel | SampleMap, seed: int, framing: Framing
    ) -> None:
        self.seed = seed
        self.framing: Framing = framing
        self.sample = sample
        if isinstance(sample, SampleModel):
            sample.prepared()  # made once, here, not at the first frame
        #: Where the beam is on a sample map (see :class:`BeamPath`); the
        #: extent's centre by default. A :class:`SampleModel` is the same
        #: everywhere.
        self.beam: BeamPath = _centre(sample)
        self._series = -1
        self._settings: dict[int, SeriesSettings] = {}
        #: series -> frame number -> the beam's ``(PATH_SAMPLES, 2)`` path
        self._paths: dict[int, dict[int, npt.NDArray[np.float64]]] = {}

    @property
    def series(self) -> int:
        """Index of the latest series (-1 before the first)."""
        return self._series

    def start_series(self, settings: SeriesSettings) -> int:
        """Count a new series armed with ``settings``; its index."""
        self._series += 1
        self._settings[self._series] = settings
        self._settings.pop(self._series - _KEPT_SERIES, None)
        self._paths.pop(self._series - _KEPT_PATH_SERIES, None)
        return self._series

    def settings_of(self, series: int) -> SeriesSettings | None:
        """The settings series ``series`` was armed with, if still kept."""
        return self._settings.get(series)

    def header(
        self, filename: str, overwritable: bool, windows: npt.NDArray[np.int64]
    ) -> HeaderMessage:
        """The header packet; the newer firmware adds windows and scaler tags."""
        fields: dict[str, Any] = {"filename": filename, "overwritable": overwritable}
        if self.framing == "multipart":
            fields["limits"] = RoiWindows.from_wire(windows.tolist())
            fields["extra_tags"] = WINDOW_TAGS
        return HeaderMessage(**fields)

    def beam_paths(self, series: int) -> dict[int, npt.NDArray[np.float64]]:
        """Frame number -> the ``(PATH_SAMPLES, 2)`` beam positions frame was
        made with, for a kept series of a sample map (else empty)."""
        return dict(self._paths.get(series, {}))

    def beam_positions(self, series: int) -> npt.NDArray[np.float64]:
        """``(frames, 2)``: the mean ``(x, y)`` of the beam during each frame
        of ``series`` (one of the latest few) on a sample map, as the frames
        were made: the truth a map's recorded positions can be checked
        against. NaN for frames not made; empty without a sample map."""
        paths = self._paths.get(series, {})
        out = np.full((max(paths, default=-1) + 1, 2), np.nan)
        for number, path in paths.items():
            out[number] = path.mean(axis=0)
        return out

    def frame(
        self,
        settings: SeriesSettings,
        series: int,
        number: int,
        clock_ticks: int | None = None,
        span: tuple[float, float] | None = None,
    ) -> Frame:
        """Frame ``number`` of ``series`` (``clock_ticks`` for a gated frame;
        ``span``: the monotonic start and end of its exposure, where the beam
        is looked up on a sample map; default: now)."""
        ticks = settings.ticks if clock_ticks is None else clock_ticks
        rng = np.random.default_rng((self.seed, series, number))
        shape, rate = self._shape_and_rate(settings, series, number, span)
        sim = simulate_frame(rng, shape, rate, ticks, settings.event_widths)
        multipart = self.framing == "multipart"
        arrays = sim.scaler_list(settings.windows if multipart else None)
        names = WINDOW_TAGS if multipart else DEFAULT_SCALER_NAMES
        metadata = dict(zip(names, arrays, strict=True))
        # int32 as read from the hardware; int64 when the EventWidths property
        # overrides them (a list of Python ints, Instrument.py 113-118, 330)
        metadata["event_width"] = metadata["event_width"].astype(
            settings.event_widths.dtype, copy=False
        )
        return make_frame(number, sim.spectra, metadata, exptime=settings.exptime)

    def _shape_and_rate(
        self,
        settings: SeriesSettings,
        series: int,
        number: int,
        span: tuple[float, float] | None,
    ) -> tuple[PreparedShape, npt.NDArray[np.float64]]:
        """The spectrum shape and true count rates of one frame: the
        sample's, or on a sample map those along the beam's path."""
        sample = self.sample
        if isinstance(sample, SampleModel):
            return sample.prepared(), settings.count_rate
        paths = self._paths.setdefault(series, {})
        path = paths.get(number)
        if path is None:
            now = time.monotonic()
            start, stop = span if span is not None else (now, now)
            beam = self.beam
            path = np.array(
                [beam.position(float(t)) for t in path_times(start, stop)],
                dtype=np.float64,
            )
            paths[number] = path
        concentrations = sample.along(path)
        rate = settings.count_rate * sample.rate_factor(concentrations)
        return sample.prepared(concentrations), rate


def _centre(sample: SampleModel | SampleMap) -> BeamPath:
    if isinstance(sample, SampleMap):
        x0, x1, y0, y1 = sample.extent
        return FixedBeam((x0 + x1) / 2, (y0 + y1) / 2)
    return FixedBeam()
