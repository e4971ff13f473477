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

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_SCALER_NAMES",
    "MAX_FRAME_NUMBER",
    "HeaderMessage",
    "ImageMessage",
    "JsonMessage",
    "RoiWindow",
    "RoiWindows",
    "SeriesEndMessage",
]

#: Frame numbers are accepted below this (the device's counter is 32-bit; the
#: bound keeps every frame number a machine-sized integer downstream).
MAX_FRAME_NUMBER: Final = 2**63

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
    """One hardware ROI window of one channel: inclusive bin indices,
    ``0 <= low <= high``."""

    model_config = ConfigDict(frozen=True)

    low: int = Field(ge=0)
    high: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RoiWindow:
        if self.low > self.high:
            raise ValueError(f"window low {self.low} > high {self.high}")
        return self


class RoiWindows(BaseModel):
    """The header's ``limits``: ``windows[window][channel]`` as :class:`RoiWindow`.

    On the wire: ``[[[lo, hi], ...channels], ...windows]``.
    """

    model_config = ConfigDict(frozen=True)

    windows: tuple[tuple[RoiWindow, ...], ...]

    @model_validator(mode="after")
    def _same_channels(self) -> RoiWindows:
        counts = {len(window) for window in self.windows}
        if len(counts) > 1:
            raise ValueError(
                "limits windows have different numbers of channels: "
                f"{[len(window) for window in self.windows]}"
            )
        return self

    @classmethod
    def from_wire(cls, value: object) -> RoiWindows:
        """Parse ``[[[lo, hi], ...channels], ...windows]``; raise ValueError.

        Every window must list the same channels, each ``0 <= lo <= hi``.
        """
        if not isinstance(value, list | tuple):
            raise ValueError(
                f"limits must be a list of windows, got {type(value).__name__}"
            )
        windows: list[tuple[RoiWindow, ...]] = []
        for w, window in enumerate(value):
            if not isinstance(window, list | tuple):
                raise ValueError(f"limits[{w}] must be a list of channels")
            if w and len(window) != len(value[0]):
                raise ValueError(
                    f"limits[{w}] has {len(window)} channels, limits[0] has "
                    f"{len(value[0])}: every window must list every channel"
                )
            chans: list[RoiWindow] = []
            for c, pair in enumerate(window):
                if (
                    not isinstance(pair, list | tuple)
                    or len(pair) != 2
                    or not all(
                        isinstance(x, int) and not isinstance(x, bool) for x in pair
                    )
                ):
                    shown = (
                        f"{type(pair).__name__} of {len(pair)} items"
                        if isinstance(pair, list | tuple)
                        else type(pair).__name__
                    )
                    raise ValueError(
                        f"limits[{w}][{c}] must be [low, high] integers, got {shown}"
                    )
                low, high = pair
                if low < 0 or low > high:
                    raise ValueError(
                        f"limits[{w}][{c}] must have 0 <= low <= high, got "
                        f"[{low}, {high}]"
                    )
                chans.append(RoiWindow(low=low, high=high))
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
    frame: int = Field(ge=0, lt=MAX_FRAME_NUMBER)
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
