"""The simulated Xspress3: physics, acquisition engine, stream and Tango device."""

from ._engine import (
    DevState,
    FaultPlan,
    SimulatedXspress3,
    SimulatorError,
    TriggerMode,
    line_window,
)
from ._simulator import XspressSimulator
from ._spectrum import (
    DEFAULT_SAMPLE,
    ELEMENT_LINES,
    EmissionLine,
    SampleModel,
    clock_ticks_for_exposure,
    fwhm_ev,
)

__all__ = [
    "DEFAULT_SAMPLE",
    "ELEMENT_LINES",
    "DevState",
    "EmissionLine",
    "FaultPlan",
    "SampleModel",
    "SimulatedXspress3",
    "SimulatorError",
    "TriggerMode",
    "XspressSimulator",
    "clock_ticks_for_exposure",
    "fwhm_ev",
    "line_window",
]
