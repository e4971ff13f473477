"""What the logics of one detector share: the data geometry and the settings of
the current acquisition.

:class:`DataConfig` is what the data logics need to describe and store frames
(channels, bins, calibration, ROIs); the detector owns it and changes it only
at ``connect`` (the device's channel count) and :meth:`set_rois`.
:class:`AcquisitionSettings` is written by the trigger logic at ``prepare``
and read by the acquire and data logics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from ophyd_async.core import DetectorTrigger

from ..protocol import Calibration
from ._rois import Roi, windows_array

__all__ = ["AcquisitionSettings", "DataConfig", "DataMode"]

DataMode = Literal["auto", "inline", "hdf5"]


@dataclass
class DataConfig:
    """The shape of the data and how it is reduced (ROIs)."""

    #: The detector's name (the data-key prefix), set when it is named.
    name: str
    stream: str
    channels: int
    bins: int
    calibration: Calibration
    rois: list[Roi] = field(default_factory=list)
    data_mode: DataMode = "auto"

    def windows(self) -> npt.NDArray[np.int64]:
        """``(channels, R, 2)`` inclusive bin windows of the ROIs."""
        return windows_array(self.rois, self.channels)


@dataclass
class AcquisitionSettings:
    """How the next acquisition runs (set by the trigger logic at prepare)."""

    trigger: DetectorTrigger = DetectorTrigger.INTERNAL
    #: Frames of one acquisition (1 for a step-scan point).
    num: int = 1
    livetime: float = 0.0
    deadtime: float = 0.0
    #: A run fails when no frame arrives for this long (plus two frame periods).
    stall_timeout: float = 5.0

    @property
    def frame_period(self) -> float:
        return self.livetime + self.deadtime

    def stall_timeout_for_run(self) -> float:
        return self.stall_timeout + 2 * self.frame_period
