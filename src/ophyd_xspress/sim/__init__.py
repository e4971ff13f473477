"""The simulated Xspress3: physics, acquisition engine, stream and Tango device.

Modules, from the physics up:

* ``_lines``: the emission-line table (cited, checked against xraydb);
* ``_spectrum``: detector response and sample model, the spectrum's shape;
* ``_sample_map``: a sample with elements spread over an area (the built-in
  :func:`phantom`), and the beam's path on it;
* ``_processor``: rates, dead time, event sampling, the scalers of a frame;
* ``_faults``: :class:`FaultPlan` and the pure packet -> messages injector;
* ``_counters``: the hardware window counters served with ``ReturnCounters``;
* ``_device_file``: the device's own HDF5 file (``WriteHdf5``);
* ``_frames``: the header and the deterministic frames of a series;
* ``_state``: the device's states and every transition between them;
* ``_worker``: the worker thread: commands in, series acquired, packets out;
* ``_engine``: :class:`SimulatedXspress3`, the control object over them;
* ``_publisher``: the ZeroMQ stream and live view;
* ``_tango``, ``_simulator``: the Tango device and :class:`XspressSimulator`.

Names are imported lazily, so the line table and the physics can be used
without loading ZeroMQ or Tango.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._device_file import DeviceFileWriter, device_file_name
    from ._engine import DEVICE_DEFAULTS, FRAMES_RULE, SimulatedXspress3
    from ._faults import FaultPlan
    from ._lines import ELEMENT_LINES, EmissionLine, emission_line, energy_window
    from ._processor import clock_ticks_for_exposure
    from ._sample_map import (
        PHANTOM_REGIONS,
        BeamPath,
        FixedBeam,
        SampleMap,
        path_times,
        phantom,
    )
    from ._simulator import XspressSimulator
    from ._spectrum import DEFAULT_SAMPLE, SampleModel, fwhm_ev, line_window
    from ._state import ArmLeftRunningError, DevState, SimulatorError, TriggerMode
    from ._tango import Xspress3DS

_LAZY = {
    "DeviceFileWriter": "._device_file",
    "device_file_name": "._device_file",
    "DEVICE_DEFAULTS": "._engine",
    "FRAMES_RULE": "._engine",
    "SimulatedXspress3": "._engine",
    "FaultPlan": "._faults",
    "ELEMENT_LINES": "._lines",
    "EmissionLine": "._lines",
    "emission_line": "._lines",
    "energy_window": "._lines",
    "clock_ticks_for_exposure": "._processor",
    "PHANTOM_REGIONS": "._sample_map",
    "BeamPath": "._sample_map",
    "FixedBeam": "._sample_map",
    "SampleMap": "._sample_map",
    "path_times": "._sample_map",
    "phantom": "._sample_map",
    "XspressSimulator": "._simulator",
    "DEFAULT_SAMPLE": "._spectrum",
    "SampleModel": "._spectrum",
    "fwhm_ev": "._spectrum",
    "line_window": "._spectrum",
    "ArmLeftRunningError": "._state",
    "DevState": "._state",
    "SimulatorError": "._state",
    "TriggerMode": "._state",
    "Xspress3DS": "._tango",
}

__all__ = [
    "DEFAULT_SAMPLE",
    "DEVICE_DEFAULTS",
    "ELEMENT_LINES",
    "FRAMES_RULE",
    "PHANTOM_REGIONS",
    "ArmLeftRunningError",
    "BeamPath",
    "DevState",
    "DeviceFileWriter",
    "EmissionLine",
    "FaultPlan",
    "FixedBeam",
    "SampleMap",
    "SampleModel",
    "SimulatedXspress3",
    "SimulatorError",
    "TriggerMode",
    "Xspress3DS",
    "XspressSimulator",
    "clock_ticks_for_exposure",
    "device_file_name",
    "emission_line",
    "energy_window",
    "fwhm_ev",
    "line_window",
    "path_times",
    "phantom",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
