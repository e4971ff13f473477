"""Facts about the Xspress3 hardware and the MAX IV device: their only home.

Everything else (physics, simulator, trigger logic, HDF5 writer) imports these.
Sources: the Quantum Detectors Xspress3 manual (clock), the MAX IV ``Xspress3DS``
Tango device (readout time, latency, bins), checked against real captures.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLOCK_HZ",
    "DEFAULT_BINS",
    "HARDWARE_WINDOWS",
    "MIN_LATENCY",
    "READOUT_TIME",
    "SIM_MAX_CHANNELS",
    "TICK_S",
]

#: The Xspress3 / Xspress3-Mini processing clock: 80 MHz. Every tick count in
#: the stream (``clock_ticks``, ``reset_ticks``, ``event_width``) is in these.
CLOCK_HZ: Final = 80e6
#: One clock tick, 12.5 ns.
TICK_S: Final = 1.0 / CLOCK_HZ
#: Time the device subtracts from every frame for readout (its ``ReadoutTime``):
#: ``exptime = ExposureTime - LatencyTime - READOUT_TIME``.
READOUT_TIME: Final = 25e-9
#: Smallest gap between frames this project sets (MAX IV's scan program uses it).
MIN_LATENCY: Final = 100e-9
#: Spectrum length of the Xspress3 (12-bit ADC histogram).
DEFAULT_BINS: Final = 4096
#: Hardware ROI windows per channel (``Window1_Ch{n}``, ``Window2_Ch{n}``).
HARDWARE_WINDOWS: Final = 2
#: Most channels the simulator makes: the largest systems in use (Xspress4 in
#: Odin runs 36 on four cards; EPICS ships up to 32) with room to spare, at
#: 1 MiB of spectra a frame. The stream format itself allows more.
SIM_MAX_CHANNELS: Final = 64
