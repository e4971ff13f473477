"""Software regions of interest: energy windows (eV) or bin windows, per channel."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from ..protocol import Calibration
from ..protocol import per_channel as calibrations_per_channel

__all__ = ["Roi", "RoiSpec", "make_rois", "windows_array"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Roi:
    """One ROI: a name and an inclusive bin window per channel."""

    name: str
    windows: tuple[tuple[int, int], ...]  # per channel, inclusive bins
    unit: Literal["eV", "bin"]
    requested: tuple[float, float] | tuple[tuple[float, float], ...]

    def describe(self, calibration: Calibration | Sequence[Calibration]) -> str:
        """``"Fe: bins 625-655 (6250-6560 eV)"``; bins per channel when they
        differ, with the energies asked for."""
        cals = calibrations_per_channel(calibration, len(self.windows))
        lo, hi = self.windows[0]
        if all(w == self.windows[0] for w in self.windows) and all(
            c == cals[0] for c in cals
        ):
            e_lo, e_hi = cals[0].low_edge(lo), cals[0].low_edge(hi + 1)
            return f"{self.name}: bins {lo}-{hi} ({e_lo:.0f}-{e_hi:.0f} eV)"
        asked = ""
        if self.unit == "eV" and _is_pair(self.requested):
            e_lo, e_hi = cast(tuple[float, float], self.requested)
            asked = f" ({e_lo:.0f}-{e_hi:.0f} eV)"
        return f"{self.name}: bins {list(self.windows)}{asked}"


#: ``{"Fe": (6250.0, 6550.0)}`` (one window for all channels) or
#: ``{"Fe": [(6250, 6550), (6240, 6560), ...]}`` (one per channel).
RoiSpec = Mapping[str, tuple[float, float] | Sequence[tuple[float, float]]]


def _is_pair(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and len(value) == 2
        # numbers.Real: numpy integers and floats too
        and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in value)
    )


def _windows_per_channel(
    name: str, value: object, channels: int
) -> list[tuple[float, float]]:
    windows = _windows_as_given(name, value, channels)
    if not all(math.isfinite(x) for window in windows for x in window):
        raise ValueError(f"ROI {name}: windows must be finite numbers, got {value!r}")
    return windows


def _windows_as_given(
    name: str, value: object, channels: int
) -> list[tuple[float, float]]:
    if _is_pair(value):
        lo, hi = cast(Sequence[float], value)
        return [(float(lo), float(hi))] * channels
    if isinstance(value, Sequence) and value and all(_is_pair(v) for v in value):
        pairs = [cast(Sequence[float], v) for v in value]
        if len(pairs) != channels:
            raise ValueError(
                f"ROI {name}: {len(pairs)} windows for {channels} channels"
            )
        return [(float(a), float(b)) for a, b in pairs]
    raise ValueError(
        f"ROI {name}: expected (low, high) or one (low, high) per channel, "
        f"got {value!r}"
    )


def make_rois(
    spec: RoiSpec | None,
    *,
    unit: Literal["eV", "bin"],
    channels: int,
    bins: int,
    calibration: Calibration | Sequence[Calibration],
) -> list[Roi]:
    """Validate ROI definitions and convert them to per-channel bin windows,
    energies through each channel's own calibration."""
    cals = calibrations_per_channel(calibration, channels)
    rois: list[Roi] = []
    for name, value in (spec or {}).items():
        if not _NAME.match(name):
            raise ValueError(
                f"ROI name {name!r} must start with a letter and use letters, digits "
                "and _ (it becomes part of data keys)"
            )
        per_channel = _windows_per_channel(name, value, channels)
        windows: list[tuple[int, int]] = []
        for c, (lo, hi) in enumerate(per_channel):
            if unit == "eV":
                b_lo, b_hi = cals[c].bin_of(float(lo)), cals[c].bin_of(float(hi))
            else:
                if int(lo) != lo or int(hi) != hi:
                    raise ValueError(f"ROI {name}: bin windows must be integers")
                b_lo, b_hi = int(lo), int(hi)
            if not 0 <= b_lo <= b_hi < bins:
                raise ValueError(
                    f"ROI {name} channel {c}: ({lo}, {hi}) {unit} gives bins "
                    f"{b_lo}-{b_hi}, outside 0-{bins - 1} or reversed"
                )
            windows.append((b_lo, b_hi))
        requested: tuple[float, float] | tuple[tuple[float, float], ...] = (
            per_channel[0] if _is_pair(value) else tuple(per_channel)
        )
        rois.append(Roi(name, tuple(windows), unit, requested))
    names = [r.name for r in rois]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate ROI names in {names}")
    return rois


def windows_array(rois: Sequence[Roi], channels: int) -> npt.NDArray[np.int64]:
    """``(channels, R, 2)`` inclusive bin windows for :func:`roi_sums`."""
    out = np.zeros((channels, len(rois), 2), dtype=np.int64)
    for r, roi in enumerate(rois):
        out[:, r, :] = np.asarray(roi.windows, dtype=np.int64)
    return out
