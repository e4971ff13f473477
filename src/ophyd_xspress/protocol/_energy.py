"""Energy calibration of the spectrum bins: the one bin <-> energy conversion.

Bin ``i`` covers ``[offset + i * ev_per_bin, offset + (i + 1) * ev_per_bin)`` eV;
its centre is ``offset + (i + 0.5) * ev_per_bin``. The Xspress3 default is
10 eV a bin from 0 eV. The simulator, the ROIs, the HDF5 file and the plots all
use :class:`Calibration`.

Each channel of a detector has its own amplifier, so each can have its own
calibration: :func:`per_channel` turns one calibration for all channels, or
one per channel, into one per channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Calibration", "per_channel"]


@dataclass(frozen=True, slots=True)
class Calibration:
    """Linear energy calibration: ``ev_per_bin`` (gain) and ``offset_ev``.

    >>> Calibration(10.0, 0.0).bin_of(6403.84)
    640
    """

    ev_per_bin: float = 10.0
    offset_ev: float = 0.0

    def __post_init__(self) -> None:
        for name in ("ev_per_bin", "offset_ev"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"calibration {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"calibration {name} must be finite, got {value!r}")
        if self.ev_per_bin <= 0:
            raise ValueError(
                f"calibration ev_per_bin must be > 0, got {self.ev_per_bin!r}"
            )

    def bin_of(self, energy_ev: float) -> int:
        """Index of the bin containing ``energy_ev`` (not clipped to the
        spectrum: it can be negative or past the last bin)."""
        return math.floor((energy_ev - self.offset_ev) / self.ev_per_bin)

    def energy_of(self, bin_index: float) -> float:
        """Centre energy (eV) of bin ``bin_index``."""
        return self.offset_ev + (bin_index + 0.5) * self.ev_per_bin

    def low_edge(self, bin_index: float) -> float:
        """Lower edge (eV) of bin ``bin_index``."""
        return self.offset_ev + bin_index * self.ev_per_bin

    def centres(self, bins: int) -> npt.NDArray[np.float64]:
        """Centre energies (eV) of bins ``0 .. bins - 1``."""
        return self.offset_ev + (np.arange(bins, dtype=np.float64) + 0.5) * (
            self.ev_per_bin
        )

    def edges(self, bins: int) -> npt.NDArray[np.float64]:
        """The ``bins + 1`` bin edges (eV)."""
        return self.offset_ev + np.arange(bins + 1, dtype=np.float64) * self.ev_per_bin

    def pymca(self) -> tuple[float, float, float]:
        """PyMca's calibration ``(c0, c1, c2)`` in keV: the centre of bin ``i``
        is at ``c0 + c1 * i + c2 * i**2`` keV (PyMca plots bin ``i`` at ``i``)."""
        return (
            (self.offset_ev + 0.5 * self.ev_per_bin) / 1000.0,
            self.ev_per_bin / 1000.0,
            0.0,
        )


def per_channel(
    calibration: Calibration | Sequence[Calibration], channels: int
) -> tuple[Calibration, ...]:
    """One calibration per channel: ``calibration`` for every channel, or
    the sequence given, which must have one per channel."""
    if isinstance(calibration, Calibration):
        return (calibration,) * channels
    calibrations = tuple(calibration)
    if len(calibrations) != channels:
        raise ValueError(
            f"{len(calibrations)} calibrations for {channels} channels: give one "
            "(eV per bin, offset eV) for all channels or one per channel"
        )
    for c, cal in enumerate(calibrations):
        if not isinstance(cal, Calibration):
            raise TypeError(f"calibration of channel {c} is not a Calibration: {cal!r}")
    return calibrations
