"""What a series of the simulated device contains: its header and its frames.

Frames are deterministic: frame ``n`` of series ``s`` is drawn from a random
generator seeded with ``(seed, s, n)`` with the settings the series was armed
with, so any frame sent can be made again, bit for bit, without keeping it
(:meth:`FrameSource.frame`). The physics is :func:`._processor.simulate_frame`;
the packets are the protocol's :class:`~ophyd_xspress.protocol.Frame` and
:class:`~ophyd_xspress.protocol.HeaderMessage`.
"""

from __future__ import annotations

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
from ._spectrum import SampleModel

__all__ = ["WINDOW_TAGS", "FrameSource", "SeriesSettings"]

#: The scalers of the newer firmware (multipart framing), in the stream's order.
WINDOW_TAGS: Final = (*DEFAULT_SCALER_NAMES, "window_counts")
#: Series whose settings are kept for :meth:`FrameSource.settings_of`.
_KEPT_SERIES: Final = 1000


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

    def __init__(self, sample: SampleModel, seed: int, framing: Framing) -> None:
        self.seed = seed
        self.framing: Framing = framing
        self._prepared = sample.prepared()
        self._series = -1
        self._settings: dict[int, SeriesSettings] = {}

    @property
    def series(self) -> int:
        """Index of the latest series (-1 before the first)."""
        return self._series

    def start_series(self, settings: SeriesSettings) -> int:
        """Count a new series armed with ``settings``; its index."""
        self._series += 1
        self._settings[self._series] = settings
        self._settings.pop(self._series - _KEPT_SERIES, None)
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

    def frame(
        self,
        settings: SeriesSettings,
        series: int,
        number: int,
        clock_ticks: int | None = None,
    ) -> Frame:
        """Frame ``number`` of ``series`` (``clock_ticks`` for a gated frame)."""
        ticks = settings.ticks if clock_ticks is None else clock_ticks
        rng = np.random.default_rng((self.seed, series, number))
        sim = simulate_frame(
            rng, self._prepared, settings.count_rate, ticks, settings.event_widths
        )
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
