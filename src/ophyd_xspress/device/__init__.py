"""The ophyd-async device."""

from ._detector import XspressDetector, default_path_provider
from ._rois import Calibration, Roi
from ._runtime import DetectorFaultError, DeviceStuckError

__all__ = [
    "Calibration",
    "DetectorFaultError",
    "DeviceStuckError",
    "Roi",
    "XspressDetector",
    "default_path_provider",
]
