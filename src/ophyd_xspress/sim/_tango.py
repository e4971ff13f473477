# pyright: reportRedeclaration=false
"""A Tango device server with the interface of the MAX IV ``Xspress3DS``.

It is a thin shell around :class:`SimulatedXspress3`: every attribute read or
write and every command goes straight to the engine. It runs without a Tango
database through pytango's :class:`~tango.test_context.DeviceTestContext`; the
engine is found through a registry keyed by the ``EngineKey`` device property.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
from tango import AttrWriteType, DevState
from tango.server import Device, attribute, command, device_property
from tango.test_context import DeviceTestContext

from .._constants import DEFAULT_BINS, HARDWARE_WINDOWS
from ._engine import SimulatedXspress3
from ._state import DevState as SimState
from ._state import SimulatorError, TriggerMode

__all__ = ["TangoServer", "Xspress3DS"]

_ENGINES: dict[str, SimulatedXspress3] = {}
_ENGINES_LOCK = threading.Lock()

_STATES = {
    SimState.STANDBY: DevState.STANDBY,
    SimState.RUNNING: DevState.RUNNING,
    SimState.FAULT: DevState.FAULT,
}


class Xspress3DS(Device):
    """Simulated Xspress3 (same attributes, commands and states as MAX IV's)."""

    EngineKey = device_property(dtype=str, mandatory=True)
    engine: SimulatedXspress3

    def init_device(self) -> None:
        super().init_device()
        with _ENGINES_LOCK:
            self.engine = _ENGINES[str(self.EngineKey)]
        # Tango's Init command re-runs init_device: like the real device, a
        # re-initialisation leaves FAULT.
        self.engine.clear_fault()

    def dev_state(self) -> DevState:
        return _STATES[self.engine.state]

    def dev_status(self) -> str:
        return self.engine.status

    # -- scalar attributes ---------------------------------------------------
    @attribute(dtype=float, access=AttrWriteType.READ_WRITE, unit="s", format="%.9f")
    def ExposureTime(self) -> float:
        return self.engine.exposure_time

    @ExposureTime.write
    def ExposureTime(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"ExposureTime must be > 0, got {value}")
        self.engine.exposure_time = float(value)

    @attribute(dtype=float, access=AttrWriteType.READ_WRITE, unit="s", format="%.9f")
    def LatencyTime(self) -> float:
        return self.engine.latency_time

    @LatencyTime.write
    def LatencyTime(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"LatencyTime must be >= 0, got {value}")
        self.engine.latency_time = float(value)

    @attribute(dtype=int, access=AttrWriteType.READ_WRITE)
    def nTriggers(self) -> int:
        return self.engine.n_triggers

    @nTriggers.write
    def nTriggers(self, value: int) -> None:
        self.engine.n_triggers = int(value)

    @attribute(dtype=int, access=AttrWriteType.READ_WRITE)
    def nFramesPerTrigger(self) -> int:
        return self.engine.n_frames_per_trigger

    @nFramesPerTrigger.write
    def nFramesPerTrigger(self, value: int) -> None:
        self.engine.n_frames_per_trigger = int(value)

    @attribute(dtype=str, access=AttrWriteType.READ_WRITE)
    def TriggerMode(self) -> str:
        return str(self.engine.trigger_mode)

    @TriggerMode.write
    def TriggerMode(self, value: str) -> None:
        try:
            self.engine.trigger_mode = TriggerMode(value)
        except ValueError:
            modes = ", ".join(m.value for m in TriggerMode)
            raise ValueError(
                f"TriggerMode must be one of {modes}, not {value!r}"
            ) from None

    @attribute(dtype=str, access=AttrWriteType.READ_WRITE)
    def DestinationFileName(self) -> str:
        return self.engine.destination_file_name

    @DestinationFileName.write
    def DestinationFileName(self, value: str) -> None:
        self.engine.destination_file_name = value

    @attribute(dtype=bool, access=AttrWriteType.READ_WRITE)
    def DestinationFileOverwritable(self) -> bool:
        return self.engine.destination_file_overwritable

    @DestinationFileOverwritable.write
    def DestinationFileOverwritable(self, value: bool) -> None:
        self.engine.destination_file_overwritable = bool(value)

    @attribute(dtype=bool, access=AttrWriteType.READ_WRITE)
    def WriteHdf5(self) -> bool:
        return self.engine.write_hdf5

    @WriteHdf5.write
    def WriteHdf5(self, value: bool) -> None:
        self.engine.write_hdf5 = bool(value)

    @attribute(dtype=int)
    def nFramesAcquired(self) -> int:
        return self.engine.n_frames_acquired

    @attribute(dtype=int)
    def nChannels(self) -> int:
        return self.engine.n_channels

    @attribute(dtype=float, unit="s")
    def ReadoutTime(self) -> float:
        return self.engine.readout_time

    @attribute(dtype=bool)
    def ReadyForSwTrigger(self) -> bool:
        return self.engine.ready_for_sw_trigger

    # -- per-channel attributes ------------------------------------------------
    def initialize_dynamic_attributes(self) -> None:
        for ch in range(self.engine.n_channels):
            for w in range(HARDWARE_WINDOWS):
                self.add_attribute(
                    attribute(
                        name=f"Window{w + 1}_Ch{ch}",
                        dtype=(int,),
                        max_dim_x=2,
                        access=AttrWriteType.READ_WRITE,
                        fget=self._window_reader(w, ch),
                        fset=self._window_writer(w, ch),
                    )
                )
            self.add_attribute(
                attribute(
                    name=f"EventWidth_Ch{ch}",
                    dtype=int,
                    access=AttrWriteType.READ_WRITE,
                    unit="ticks",
                    fget=self._event_width_reader(ch),
                    fset=self._event_width_writer(ch),
                )
            )

    def _window_reader(self, w: int, ch: int) -> Callable[..., Any]:
        def read(device: Xspress3DS, attr: Any) -> list[int]:
            return [int(x) for x in self.engine.windows[w, ch]]

        read.__name__ = f"read_Window{w + 1}_Ch{ch}"
        return read

    def _window_writer(self, w: int, ch: int) -> Callable[..., None]:
        def write(device: Xspress3DS, attr: Any) -> None:
            value = [int(x) for x in attr.get_write_value()]
            if len(value) != 2 or not 0 <= value[0] <= value[1] < DEFAULT_BINS:
                raise ValueError(
                    f"window must be [low, high] bins in 0..{DEFAULT_BINS - 1}: {value}"
                )
            self.engine.windows[w, ch] = np.asarray(value, dtype=np.int64)

        write.__name__ = f"write_Window{w + 1}_Ch{ch}"
        return write

    def _event_width_reader(self, ch: int) -> Callable[..., int]:
        def read(device: Xspress3DS, attr: Any) -> int:
            return int(self.engine.event_widths[ch])

        read.__name__ = f"read_EventWidth_Ch{ch}"
        return read

    def _event_width_writer(self, ch: int) -> Callable[..., None]:
        def write(device: Xspress3DS, attr: Any) -> None:
            value = int(attr.get_write_value())
            if not 0 <= value < 1024:
                raise ValueError(f"event width must be 0..1023 ticks, got {value}")
            self.engine.event_widths[ch] = value

        write.__name__ = f"write_EventWidth_Ch{ch}"
        return write

    # -- commands ----------------------------------------------------------------
    @command
    def Arm(self) -> None:
        try:
            self.engine.arm()
        except SimulatorError as exc:
            raise RuntimeError(str(exc)) from None

    @command
    def SoftwareTrigger(self) -> None:
        try:
            self.engine.software_trigger()
        except SimulatorError as exc:
            raise RuntimeError(str(exc)) from None

    @command
    def Stop(self) -> None:
        # returns once STANDBY, within the 3 s default Tango client timeout
        self.engine.stop(timeout=2.0)


_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    if hasattr(signal, name)
)


@contextlib.contextmanager
def _keep_python_signal_handlers() -> Iterator[None]:
    """The in-process Tango server installs C handlers for SIGINT/SIGTERM/...,
    after which Ctrl-C would silently kill the server instead of raising
    KeyboardInterrupt: put the Python handlers back (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Tango's C++ server prints 'Ready to accept request' on fd 1."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


class TangoServer:
    """Runs :class:`Xspress3DS` for one engine in a database-less test context.

    pytango allows one device server per process at a time: a second
    simultaneous :class:`TangoServer` raises ``RuntimeError``.
    """

    _active: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        engine: SimulatedXspress3,
        device_name: str = "sim/xspress3/1",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.engine = engine
        self.device_name = device_name
        self.host = host
        self.port = port
        self._key = ""
        self._ctx: DeviceTestContext | None = None

    def start(self) -> str:
        if not TangoServer._active.acquire(blocking=False):
            raise RuntimeError(
                "a simulated Xspress3 Tango server is already running in this "
                "process (pytango allows one device server per process)"
            )
        try:
            self._key = uuid.uuid4().hex
            with _ENGINES_LOCK:
                _ENGINES[self._key] = self.engine
            self._ctx = DeviceTestContext(
                Xspress3DS,
                device_name=self.device_name,
                host=self.host,
                port=self.port,
                properties={"EngineKey": self._key},
                process=False,
                timeout=15,
            )
            with _keep_python_signal_handlers(), _quiet_stdout():
                self._ctx.start()
            # Exiting Python with the server running hangs in C++ clean-up.
            atexit.register(self.stop)
        except BaseException:
            self.stop()
            raise
        return self.trl

    @property
    def trl(self) -> str:
        if self._ctx is None:
            raise RuntimeError("Tango server not started")
        return str(self._ctx.get_device_access())

    def stop(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            atexit.unregister(self.stop)
        try:
            if ctx is not None:
                with contextlib.suppress(Exception):
                    ctx.stop()
        finally:
            with _ENGINES_LOCK:
                _ENGINES.pop(self._key, None)
            if TangoServer._active.locked():
                TangoServer._active.release()
