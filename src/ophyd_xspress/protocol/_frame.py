"""The decoded frame: spectra plus the per-channel metadata arrays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ._models import DEFAULT_SCALER_NAMES, ImageMessage
from ._series import Arrival

__all__ = ["Frame", "Framing", "StrayFrame"]

Framing = Literal["legacy", "multipart"]

_SCALERS = frozenset(DEFAULT_SCALER_NAMES)


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One frame of one series, as assembled by :class:`StreamDecoder`.

    ``spectra`` is a read-only ``(channels, bins)`` view on the received buffer
    (no copy; read-only even when that buffer is writable, such as a
    ``zmq.Frame`` or a ``bytearray``). ``metadata`` holds every array of the
    metadata pickle, read-only too, by name, in
    the order sent: the eight scalers (``output_count_rate``, ``all_events``,
    ``all_good``, ``clock_ticks``, ``total_ticks``, ``reset_ticks``,
    ``event_width``, ``dead_time_correction``), ``window_counts`` when the
    firmware sends it, and any unknown extra arrays. From the decoder it is
    usually a :class:`~ophyd_xspress.protocol.FrameMetadata` (the pickle's bytes
    and a layout shared by the frames of one template; arrays built on first
    read), otherwise a dict.

    >>> frame.frame, frame.spectra.shape, frame.scalers["all_good"]
    (0, (4, 4096), array([..., ..., ..., ...], dtype=uint32))
    """

    info: ImageMessage
    spectra: npt.NDArray[Any]
    metadata: Mapping[str, npt.NDArray[Any]]
    framing: Framing = "multipart"
    #: The series tracker's verdict (series index, next / late / repeat), set
    #: by the decoder; None for a frame built by hand. Not part of equality.
    arrival: Arrival | None = None

    @property
    def frame(self) -> int:
        """The detector's frame counter (per Arm, starts at 0)."""
        return self.info.frame

    @property
    def channels(self) -> int:
        return int(self.spectra.shape[0])

    @property
    def bins(self) -> int:
        return int(self.spectra.shape[1])

    @property
    def exptime(self) -> float | None:
        return self.info.exptime

    @property
    def scalers(self) -> dict[str, npt.NDArray[Any]]:
        """The per-channel scalers (``(channels,)`` arrays) by name."""
        return {k: v for k, v in self.metadata.items() if k in _SCALERS}

    @property
    def window_counts(self) -> npt.NDArray[Any] | None:
        """Raw hardware ROI window counts ``(2, channels)``, when sent."""
        return self.metadata.get("window_counts")

    @property
    def extra(self) -> dict[str, npt.NDArray[Any]]:
        """Metadata arrays this decoder does not know, kept as received."""
        return {
            k: v
            for k, v in self.metadata.items()
            if k not in _SCALERS and k != "window_counts"
        }

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        """A metadata array by name, e.g. ``frame["all_good"]``."""
        return self.metadata[name]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            self.info == other.info
            and self.spectra.dtype == other.spectra.dtype
            and self.spectra.shape == other.spectra.shape
            and np.array_equal(self.spectra, other.spectra)
            and list(self.metadata) == list(other.metadata)
            and all(
                a.dtype == b.dtype
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
                for a, b in zip(
                    self.metadata.values(), other.metadata.values(), strict=True
                )
            )
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class StrayFrame:
    """A frame that arrived outside any announced series: before the first
    header (a consumer that joined a running stream, or another consumer of a
    PUSH stream took the header), or after ``series_end``. Its data are intact;
    the tracker puts it and the frames after it, up to the next header, in a
    *headless* series of their own (``frame.arrival.headless``), which a
    passive run can take and an active run never does. ``where`` says which
    case it was."""

    frame: Frame
    where: str

    @property
    def number(self) -> int:
        return self.frame.frame
