"""The ophyd-async device."""

from ._detector import XspressDetector, default_path_provider
from ._rois import Calibration, Roi
from ._runtime import DetectorFaultError

__all__ = [
    "Calibration",
    "DetectorFaultError",
    "Roi",
    "XspressDetector",
    "default_path_provider",
]
