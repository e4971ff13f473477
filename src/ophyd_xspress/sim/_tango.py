# pyright: reportRedeclaration=false
# pyright: reportRedeclaration=false
"""A Tango device server with the interface of the MAX IV ``Xspress3DS``.

Every attribute, command and device property has the name, Tango type, access,
format and default of the device's (``xspress3/DeviceServer.py`` in
maxiv-science/xspress3-streamer; ``tests/sim/test_device_interface.py`` checks
them against a table citing its lines), and answers out-of-range values as it
does: any number is accepted for times and counts (an impossible combination
is refused at Arm), a hardware window is clamped into the spectrum, a
``TriggerMode`` outside the three modes fails with the device's message,
``ReadyForSwTrigger`` has no value while frames are due, ``Status`` is empty
outside FAULT.

It is a thin shell around :class:`SimulatedXspress3`: every read, write and
command goes straight to the engine. It runs without a Tango database through
pytango's :class:`~tango.test_context.DeviceTestContext`; the engine is found
through a registry keyed by the device's name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from tango import Attr, AttrWriteType, CmdArgType, DevState, SpectrumAttr
from tango.server import Device, attribute, command, device_property
from tango.test_context import DeviceTestContext

from .._constants import HARDWARE_WINDOWS
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
#: The device's message for a TriggerMode it does not know (DeviceServer.py 72-73).
TRIGGER_MODE_ERROR = "TriggerMode can be " + " or ".join(m.value for m in TriggerMode)
#: (command, window, dead-time corrected) served with ``ReturnCounters``.
COUNTER_COMMANDS = (
    ("ReadRawCounts_Window1", 1, False),
    ("ReadRawCounts_Window2", 2, False),
    ("ReadDtcCounts_Window1", 1, True),
    ("ReadDtcCounts_Window2", 2, True),
)


class Xspress3DS(Device):
    """Simulated Xspress3 (the attributes, commands and states of MAX IV's)."""

    HeaderPath = device_property(dtype=str, default_value="/opt/xspress3-sdk/include")
    Name = device_property(dtype=str, default_value="")
    ConfigPath = device_property(dtype=str, default_value="/home/xspress3/settings")
    StreamerPort = device_property(dtype=int, default_value=9999)
    MonitorPort = device_property(dtype=int, default_value=9998)
    BaseIP = device_property(dtype=str, default_value="")
    BasePort = device_property(dtype=int, default_value=-1)
    BaseMAC = device_property(dtype=str, default_value="")
    ReturnCounters = device_property(dtype=bool, default_value=False)
    EventWidths = device_property(dtype=(int,), default_value=[])
    engine: SimulatedXspress3

    def init_device(self) -> None:
        super().init_device()
        with _ENGINES_LOCK:
            self.engine = _ENGINES[str(self.get_name()).lower()]
        engine = self.engine
        widths: Any = self.EventWidths  # the property's value once initialised
        engine.hardware.override_event_widths([int(v) for v in widths])
        engine.return_counters = bool(self.ReturnCounters)
        # Tango's Init command re-runs init_device: like the real device, a
        # re-initialisation leaves FAULT.
        engine.clear_fault()
        self._add_channel_attributes()
        if engine.return_counters:
            self._add_counter_commands()

    def dev_state(self) -> DevState:
        return _STATES[self.engine.state]

    def dev_status(self) -> str:
        return self.engine.status

    # -- scalar attributes (DeviceServer.py 34-90, 293-322) --------------------
    @attribute(dtype=float, format="%e")
    def ExposureTime(self) -> float:
        return self.engine.exposure_time

    @ExposureTime.setter
    def ExposureTime(self, value: float) -> None:
        self.engine.exposure_time = float(value)

    @attribute(dtype=int)
    def nTriggers(self) -> int:
        return self.engine.n_triggers

    @nTriggers.setter
    def nTriggers(self, value: int) -> None:
        self.engine.n_triggers = int(value)

    @attribute(dtype=int)
    def nFramesPerTrigger(self) -> int:
        return self.engine.n_frames_per_trigger

    @nFramesPerTrigger.setter
    def nFramesPerTrigger(self, value: int) -> None:
        self.engine.n_frames_per_trigger = int(value)

    @attribute(dtype=float, format="%.2e")
    def LatencyTime(self) -> float:
        return self.engine.latency_time

    @LatencyTime.setter
    def LatencyTime(self, value: float) -> None:
        self.engine.latency_time = float(value)

    @attribute(dtype=str)
    def TriggerMode(self) -> str:
        return str(self.engine.trigger_mode)

    @TriggerMode.setter
    def TriggerMode(self, value: str) -> None:
        if value not in tuple(TriggerMode):
            raise AssertionError(TRIGGER_MODE_ERROR)
        self.engine.trigger_mode = TriggerMode(value)

    @attribute(dtype=str, hw_memorized=True)
    def DestinationFileName(self) -> str:
        return self.engine.destination_file_name

    @DestinationFileName.setter
    def DestinationFileName(self, value: str) -> None:
        self.engine.destination_file_name = value

    @attribute(dtype=bool)
    def DestinationFileOverwritable(self) -> bool:
        return self.engine.destination_file_overwritable

    @DestinationFileOverwritable.setter
    def DestinationFileOverwritable(self, value: bool) -> None:
        self.engine.destination_file_overwritable = bool(value)

    @attribute(
        dtype=bool,
        doc="At every Arm, the device writes its own stream to an HDF5 file "
        "(DestinationFileName).",
    )
    def WriteHdf5(self) -> bool:
        return self.engine.write_hdf5

    @WriteHdf5.setter
    def WriteHdf5(self, value: bool) -> None:
        self.engine.write_hdf5 = bool(value)

    @attribute(dtype=float, format="%.2e")
    def ReadoutTime(self) -> float:
        return self.engine.readout_time

    @attribute(dtype=int)
    def nFramesAcquired(self) -> int:
        return self.engine.n_frames_acquired

    @attribute(dtype=int)
    def nChannels(self) -> int:
        return self.engine.n_channels

    @attribute(dtype=bool)
    def ReadyForSwTrigger(self) -> bool | None:
        # None: no value, the client's read fails as on the device
        return self.engine.ready_for_sw_trigger

    # -- per-channel attributes (DeviceServer.py 160-212, 282-291) ---------------
    def _add_channel_attributes(self) -> None:
        for ch in range(self.engine.n_channels):
            for w in range(HARDWARE_WINDOWS):
                window = SpectrumAttr(
                    f"Window{w + 1}_Ch{ch}",
                    CmdArgType.DevLong,
                    AttrWriteType.READ_WRITE,
                    2,
                )
                self.add_attribute(
                    window, r_meth=self.read_window, w_meth=self.write_window
                )
            width = Attr(f"EventWidth_Ch{ch}", CmdArgType.DevShort, AttrWriteType.READ)
            self.add_attribute(width, r_meth=self.read_event_width)

    @staticmethod
    def _window_of(attr: Any) -> tuple[int, int]:
        name = str(attr.get_name())
        return (0 if name.startswith("Window1") else 1), int(name.split("Ch")[1])

    def read_window(self, attr: Any) -> None:
        w, ch = self._window_of(attr)
        attr.set_value([int(x) for x in self.engine.windows[w, ch]])

    def write_window(self, attr: Any) -> None:
        w, ch = self._window_of(attr)
        value = attr.get_write_value()
        self.engine.hardware.set_window(w, ch, int(value[0]), int(value[1]))

    def read_event_width(self, attr: Any) -> None:
        ch = int(str(attr.get_name()).split("Ch")[1])
        attr.set_value(int(self.engine.event_widths[ch]))

    # -- commands (DeviceServer.py 174-183, 214-279, 324-353) --------------------
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

    def _add_counter_commands(self) -> None:
        for name, window, corrected in COUNTER_COMMANDS:
            what = "dead-time corrected" if corrected else "raw"
            self.add_command(
                command(
                    f=self._counter_command(name, window, corrected),
                    dtype_in=(int,),
                    dtype_out=(float,) if corrected else (int,),
                    doc_in="[channel, first frame, last frame] (frames from 1)",
                    doc_out=f"{what} counts of hardware window {window}, one "
                    "per frame (-1 for a frame not acquired yet)",
                ),
                True,
            )

    def _counter_command(
        self, name: str, window: int, corrected: bool
    ) -> Callable[[Any], Any]:
        def read(args: Any) -> Any:
            engine = self.engine
            return engine.counters.read(
                window, args, engine.n_frames_acquired, corrected
            )

        read.__name__ = name
        return read


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
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.device_name = device_name
        self.host = host
        self.port = port
        #: Device properties (the device's names); StreamerPort and
        #: MonitorPort default to the simulator's real ports.
        self.properties = dict(properties or {})
        self._key = ""
        self._ctx: DeviceTestContext | None = None

    def _properties(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for prop, endpoint in (
            ("StreamerPort", self.engine.stream_endpoint),
            ("MonitorPort", self.engine.live_endpoint),
        ):
            port = (endpoint or "").rsplit(":", 1)[-1]
            if port.isdigit() and int(port) > 0:
                found[prop] = int(port)
        found.update(self.properties)
        return found

    def start(self) -> str:
        if not TangoServer._active.acquire(blocking=False):
            raise RuntimeError(
                "a simulated Xspress3 Tango server is already running in this "
                "process (pytango allows one device server per process)"
            )
        try:
            self._key = self.device_name.lower()
            with _ENGINES_LOCK:
                _ENGINES[self._key] = self.engine
            self._ctx = DeviceTestContext(
                Xspress3DS,
                device_name=self.device_name,
                host=self.host,
                port=self.port,
                properties=self._properties(),
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
