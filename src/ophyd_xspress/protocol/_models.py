"""Typed packets of the Xspress3 ZeroMQ stream (pydantic v2).

The stream carries three kinds of JSON packets, told apart by ``htype``:

* ``{"htype": "header", "filename": "...hdf5", "overwritable": false, ...}``
  starts a series (newer firmware adds ``limits`` and ``extra_tags``);
* ``{"htype": "image", "frame": 0, "shape": [4, 4096], "exptime": 0.099999875,
  "type": "uint32", "compression": "none"}`` precedes each frame's data and
  metadata parts;
* ``{"htype": "series_end"}`` ends it.

Unknown extra fields are kept (``model_extra``), so nothing the detector sends is
lost when a packet is re-encoded.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "DEFAULT_SCALER_NAMES",
    "HeaderMessage",
    "ImageMessage",
    "JsonMessage",
    "RoiWindow",
    "RoiWindows",
    "SeriesEndMessage",
]

#: Names of the per-channel metadata arrays when the header has no ``extra_tags``.
DEFAULT_SCALER_NAMES: tuple[str, ...] = (
    "output_count_rate",
    "all_events",
    "all_good",
    "clock_ticks",
    "total_ticks",
    "reset_ticks",
    "event_width",
    "dead_time_correction",
)


class RoiWindow(BaseModel):
    """One hardware ROI window of one channel: inclusive bin indices."""

    model_config = ConfigDict(frozen=True)

    low: int
    high: int


class RoiWindows(BaseModel):
    """The header's ``limits``: ``windows[window][channel]`` as :class:`RoiWindow`.

    On the wire: ``[[[lo, hi], ...channels], ...windows]``.
    """

    model_config = ConfigDict(frozen=True)

    windows: tuple[tuple[RoiWindow, ...], ...]

    @classmethod
    def from_wire(cls, value: object) -> RoiWindows:
        if not isinstance(value, list | tuple):
            raise ValueError(f"limits must be a list of windows, got {value!r:.80}")
        windows: list[tuple[RoiWindow, ...]] = []
        for w, window in enumerate(value):
            if not isinstance(window, list | tuple):
                raise ValueError(f"limits[{w}] must be a list of channels")
            chans: list[RoiWindow] = []
            for c, pair in enumerate(window):
                if (
                    not isinstance(pair, list | tuple)
                    or len(pair) != 2
                    or not all(
                        isinstance(x, int) and not isinstance(x, bool) for x in pair
                    )
                ):
                    raise ValueError(
                        f"limits[{w}][{c}] must be [low, high] integers, "
                        f"got {pair!r:.40}"
                    )
                chans.append(RoiWindow(low=pair[0], high=pair[1]))
            windows.append(tuple(chans))
        return cls(windows=tuple(windows))

    def to_wire(self) -> list[list[list[int]]]:
        return [[[r.low, r.high] for r in window] for window in self.windows]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class HeaderMessage(_Message):
    """Start of a series.

    Example (real, newer firmware)::

        {"htype": "header", "filename": "/data/.../scan_000004_xspress3.hdf5",
         "overwritable": false, "limits": [[[0, 0], ...], [[0, 0], ...]],
         "extra_tags": ["output_count_rate", ..., "window_counts"]}
    """

    htype: Literal["header"] = "header"
    filename: str | None = None
    overwritable: bool | None = None
    limits: RoiWindows | None = None
    extra_tags: tuple[str, ...] | None = None

    @field_validator("limits", mode="before")
    @classmethod
    def _parse_limits(cls, value: object) -> object:
        if value is None or isinstance(value, RoiWindows):
            return value
        return RoiWindows.from_wire(value)

    @property
    def scaler_names(self) -> tuple[str, ...]:
        """Names of the metadata arrays of this series' frames."""
        return self.extra_tags if self.extra_tags else DEFAULT_SCALER_NAMES

    def to_wire(self) -> dict[str, object]:
        """The JSON object as the detector sends it (extras kept)."""
        out: dict[str, object] = {"htype": "header"}
        if self.filename is not None or "filename" in self.model_fields_set:
            out["filename"] = self.filename
        if self.overwritable is not None or "overwritable" in self.model_fields_set:
            out["overwritable"] = self.overwritable
        if self.limits is not None:
            out["limits"] = self.limits.to_wire()
        if self.extra_tags is not None:
            out["extra_tags"] = list(self.extra_tags)
        out.update(self.model_extra or {})
        return out


class ImageMessage(_Message):
    """The JSON part that precedes each frame's data and metadata parts.

    Example (real)::

        {"htype": "image", "exptime": 0.099999875, "frame": 0,
         "shape": [4, 4096], "type": "uint32", "compression": "none"}
    """

    htype: Literal["image"] = "image"
    frame: int = Field(ge=0)
    shape: tuple[int, ...]
    exptime: float | None = None
    type: str = "uint32"
    compression: str = "none"

    def to_wire(self) -> dict[str, object]:
        out: dict[str, object] = {"htype": "image"}
        if self.exptime is not None or "exptime" in self.model_fields_set:
            out["exptime"] = self.exptime
        out["frame"] = self.frame
        out["shape"] = list(self.shape)
        out["type"] = self.type
        out["compression"] = self.compression
        out.update(self.model_extra or {})
        return out


class SeriesEndMessage(_Message):
    """End of a series: ``{"htype": "series_end"}``."""

    htype: Literal["series_end"] = "series_end"

    def to_wire(self) -> dict[str, object]:
        out: dict[str, object] = {"htype": "series_end"}
        out.update(self.model_extra or {})
        return out


JsonMessage = Annotated[
    HeaderMessage | ImageMessage | SeriesEndMessage, Field(discriminator="htype")
]
