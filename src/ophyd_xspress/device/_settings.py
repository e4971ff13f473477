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

from .._schema import by_dataset
from ..hdf5 import Compression
from ..protocol import Calibration, per_channel
from ._rois import Roi, windows_array

__all__ = ["AcquisitionSettings", "DataConfig", "DataMode"]

DataMode = Literal["auto", "inline", "hdf5"]


@dataclass
class DataConfig:
    """The shape of the data, how it is reduced (ROIs) and stored."""

    #: The detector's name (the data-key prefix), set when it is named.
    name: str
    stream: str
    channels: int
    bins: int
    #: One calibration for every channel, or one per channel.
    calibration: Calibration | tuple[Calibration, ...]
    rois: list[Roi] = field(default_factory=list)
    data_mode: DataMode = "auto"
    #: The compression of the spectra in the file (None: none).
    compression: Compression | None = None
    #: Frames per chunk of the spectra in the file (None: about 1 MiB).
    chunk_frames: int | None = None
    #: Also the dead-time corrected sum over channels (file and events).
    summed_spectrum: bool = False
    #: Hint every channel's ROI sums and dead time too (live plots), not only
    #: the sums over channels and the largest dead time.
    per_channel_hints: bool = False
    #: The frames of the current prepare go into events (a step scan in
    #: ``"auto"`` / ``"inline"``), not files: set by the trigger logic.
    inline_events: bool = True

    def windows(self) -> npt.NDArray[np.int64]:
        """``(channels, R, 2)`` inclusive bin windows of the ROIs."""
        return windows_array(self.rois, self.channels)

    def frame_bytes(self) -> int:
        """Bytes of one frame's spectra as the device sends them."""
        itemsize = np.dtype(by_dataset("data").dtype).itemsize
        return self.channels * self.bins * itemsize

    def calibrations(self) -> tuple[Calibration, ...]:
        """One calibration per channel."""
        return per_channel(self.calibration, self.channels)


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
    #: With external triggers: how long the device may wait for a trigger
    #: (None: as long as the plan waits).
    trigger_timeout: float | None = None

    @property
    def frame_period(self) -> float:
        return self.livetime + self.deadtime

    def stall_timeout_for_run(self) -> float:
        return self.stall_timeout + 2 * self.frame_period
