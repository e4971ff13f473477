"""The ophyd-async device: :class:`XspressDetector` and what it is made of.

``_detector`` composes; ``_trigger_logic``, ``_acquire_logic`` and
``_data_logic`` are the ophyd-async logics; ``_session`` (receiver, current
run, progress), ``_settings`` (data geometry, acquisition settings),
``_control`` (the Tango device), ``_providers`` (data keys and readings),
``_rois`` (ROIs in eV or bins).
"""

from ..protocol import Calibration
from ._acquire_logic import AcquisitionInProgressError, TriggerTimeoutError
from ._control import DetectorFaultError, DeviceStuckError
from ._detector import XspressDetector, default_path_provider
from ._rois import Roi

__all__ = [
    "AcquisitionInProgressError",
    "Calibration",
    "DetectorFaultError",
    "DeviceStuckError",
    "Roi",
    "TriggerTimeoutError",
    "XspressDetector",
    "default_path_provider",
]
