"""The simulated Xspress3: state machine, trigger modes, frame pacing, faults.

:class:`SimulatedXspress3` is the in-process control object. Its attributes and
commands mirror the MAX IV ``Xspress3DS`` Tango device (``exposure_time`` ↔
``ExposureTime``, ``arm()`` ↔ ``Arm`` ...); the Tango device server in
:mod:`._tango` is a thin shell around it. One worker thread owns the stream
socket and runs the acquisitions; commands from any thread are queued to it.

Frames are deterministic: frame ``n`` of series ``s`` is drawn from a random
generator seeded with ``(seed, s, n)``, so :meth:`SimulatedXspress3.expected_frame`
regenerates exactly what was sent (tests compare bit for bit without keeping
every frame in memory).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..protocol import (
    DEFAULT_SCALER_NAMES,
    Frame,
    Framing,
    HeaderMessage,
    RoiWindows,
    SeriesEndMessage,
    make_frame,
)
from ._publisher import DEFAULT_ENDPOINT, DEFAULT_SNDHWM, LiveView, StreamPublisher
from ._spectrum import (
    CLOCK_HZ,
    DEFAULT_SAMPLE,
    ELEMENT_LINES,
    READOUT_TIME_S,
    SampleModel,
    bin_of_energy,
    clock_ticks_for_exposure,
    fwhm_ev,
    simulate_frame,
)

__all__ = [
    "DevState",
    "FaultPlan",
    "SimulatedXspress3",
    "SimulatorError",
    "TriggerMode",
]

log = logging.getLogger("ophyd_xspress.sim")

BINS: Final = 4096
MAX_CHANNELS: Final = 8
WINDOW_TAGS: Final = (*DEFAULT_SCALER_NAMES, "window_counts")


class TriggerMode(enum.StrEnum):
    SOFTWARE = "SOFTWARE"
    EXTERNAL_MULTI = "EXTERNAL_MULTI"
    EXTERNAL_MULTI_GATE = "EXTERNAL_MULTI_GATE"


class DevState(enum.StrEnum):
    STANDBY = "STANDBY"
    RUNNING = "RUNNING"
    FAULT = "FAULT"


class SimulatorError(RuntimeError):
    """A command the device would refuse (wrong state, bad configuration)."""


@dataclass
class FaultPlan:
    """Faults to inject into the next series; frame numbers are per series.

    * ``drop_frames``: frames generated but never sent;
    * ``drop_parts``: ``(frame, part)`` pairs, part 0 JSON, 1 spectra, 2 pickle;
    * ``repeat_frames``: frame -> extra copies sent right after it;
    * ``swap_frames``: frame n is held back and sent after frame n + 1;
    * ``stall_after``: stop sending after this frame (-1: right after the
      header) until :meth:`release` (acquisition goes on; frames queue up and
      are sent on release);
    * ``restart_publisher_after``: close and re-bind the socket after this frame;
    * ``fault_after``: go to FAULT after this frame with ``fault_status``.
    """

    drop_frames: set[int] = field(default_factory=set)
    drop_parts: set[tuple[int, int]] = field(default_factory=set)
    repeat_frames: dict[int, int] = field(default_factory=dict)
    swap_frames: set[int] = field(default_factory=set)
    stall_after: int | None = None
    restart_publisher_after: int | None = None
    fault_after: int | None = None
    fault_status: str = (
        "FAULT: hardware circular buffer overrun, frames lost; Init the device "
        "and re-Arm"
    )
    _release: threading.Event = field(default_factory=threading.Event, repr=False)

    def release(self) -> None:
        """End a stall: the held frames are sent."""
        self._release.set()

    def clear(self) -> None:
        self.drop_frames.clear()
        self.drop_parts.clear()
        self.repeat_frames.clear()
        self.swap_frames.clear()
        self.stall_after = None
        self.restart_publisher_after = None
        self.fault_after = None
        self._release.set()


@dataclass(frozen=True)
class _SeriesSettings:
    exptime: float
    ticks: int
    count_rate: npt.NDArray[np.float64]
    event_widths: npt.NDArray[np.int32]
    windows: npt.NDArray[np.int64]


class _Cmd(enum.Enum):
    ARM = enum.auto()
    TRIGGER = enum.auto()
    TTL_RISE = enum.auto()
    TTL_FALL = enum.auto()
    STOP = enum.auto()
    CLOSE = enum.auto()


class _StopRequestedError(Exception):
    pass


class _CloseRequestedError(Exception):
    pass


def line_window(sample: SampleModel, element: str, line: str) -> tuple[int, int]:
    """Inclusive bin window of +/- one FWHM around an emission line."""
    matches = [ln for ln in ELEMENT_LINES[element] if ln.name == line]
    if not matches:
        raise ValueError(f"{element} has no line {line!r}")
    energy = matches[0].energy_ev
    half = float(fwhm_ev(energy))
    cal, off = sample.calibration_ev_per_bin, sample.offset_ev
    lo = max(0, bin_of_energy(energy - half, cal, off))
    hi = min(sample.bins - 1, bin_of_energy(energy + half, cal, off))
    return lo, hi


def _per_channel(value: float | Sequence[float] | npt.ArrayLike, n: int) -> Any:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"expected a scalar or {n} values, got shape {arr.shape}")
    return arr.copy()


class SimulatedXspress3:
    """A simulated Xspress3 box: control object plus ZeroMQ stream.

    >>> with SimulatedXspress3(channels=4) as det:
    ...     det.exposure_time = 0.01
    ...     det.n_frames_per_trigger = 10
    ...     det.arm(); det.software_trigger(); det.wait_idle(5)
    """

    def __init__(
        self,
        channels: int = 4,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        framing: Framing = "multipart",
        socket_type: str = "pub",
        live_endpoint: str | None = None,
        sample: SampleModel = DEFAULT_SAMPLE,
        count_rate: float | Sequence[float] = 2.0e5,
        event_width: int | Sequence[int] = 6,
        seed: int = 0,
        pace: bool = True,
        pickle_protocol: int = 4,
        sndhwm: int | None = None,
    ) -> None:
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
        self.n_channels = channels
        self.framing: Framing = framing
        self.sample = sample
        self.seed = seed
        self.pace = pace
        self.count_rate = _per_channel(count_rate, channels)
        self.event_widths = _per_channel(event_width, channels).astype(np.int32)
        # Tango-like attributes (snake_case of the device's names)
        self.exposure_time = 0.1
        self.latency_time = 100e-9
        self.n_triggers = 1
        self.n_frames_per_trigger = 1
        self.trigger_mode = TriggerMode.SOFTWARE
        self.destination_file_name = "/tmp/xspress3_sim.hdf5"
        self.destination_file_overwritable = False
        self.write_hdf5 = False
        self.readout_time = READOUT_TIME_S
        # windows[w][c] = [lo, hi] inclusive bins; default: Fe Kα and Cu Kα
        self.windows = np.zeros((2, channels, 2), dtype=np.int64)
        self.windows[0, :] = line_window(self.sample, "Fe", "Ka1")
        self.windows[1, :] = line_window(self.sample, "Cu", "Ka1")
        self.faults = FaultPlan()
        # read-only state
        self._lock = threading.Lock()
        self._state = DevState.STANDBY
        self._status = "Device is in STANDBY"
        self._n_frames_acquired = 0
        self._ready_for_sw_trigger = False
        self._arms = 0  # Arm commands accepted so far
        self._series = -1
        self._series_settings: dict[int, _SeriesSettings] = {}
        self._ended_series = False
        self._idle = threading.Event()
        self._idle.set()
        self._cmds: queue.Queue[tuple[_Cmd, float]] = queue.Queue()
        self._prepared = self.sample.prepared()
        self.publisher = StreamPublisher(
            endpoint,
            framing=framing,
            socket_type="push" if socket_type == "push" else "pub",
            sndhwm=DEFAULT_SNDHWM if sndhwm is None else sndhwm,
        )
        self.publisher.encoder.pickle_protocol = pickle_protocol
        self.live = LiveView(live_endpoint) if live_endpoint else None
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._started = threading.Event()
        self.frames_sent = 0

    # -- life cycle ------------------------------------------------------------
    def start(self) -> SimulatedXspress3:
        if self._thread is not None:
            return self
        self.publisher.open()
        if self.live is not None:
            self.live.start()
        self._thread = threading.Thread(
            target=self._worker, name="xspress-sim-worker", daemon=True
        )
        self._thread.start()
        log.info("simulated Xspress3 streaming on %s", self.stream_endpoint)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._cmds.put((_Cmd.CLOSE, time.monotonic()))
            self.faults._release.set()
            self._thread.join(10)
            self._thread = None
        self.publisher.close()
        if self.live is not None:
            self.live.close()

    def __enter__(self) -> SimulatedXspress3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stream_endpoint(self) -> str:
        return self.publisher.endpoint or self.publisher.requested_endpoint

    @property
    def live_endpoint(self) -> str | None:
        return self.live.endpoint if self.live is not None else None

    # -- read-only attributes ----------------------------------------------------
    @property
    def state(self) -> DevState:
        return self._state

    @property
    def status(self) -> str:
        return self._status

    @property
    def n_frames_acquired(self) -> int:
        return self._n_frames_acquired

    @property
    def ready_for_sw_trigger(self) -> bool:
        return self._ready_for_sw_trigger

    @property
    def series_index(self) -> int:
        """Number of Arms so far, minus one (the series being acquired)."""
        return self._series

    def frame_timing(self) -> tuple[float, int]:
        """``(exptime, clock_ticks)`` of one internally timed frame."""
        return clock_ticks_for_exposure(
            self.exposure_time, self.latency_time, self.readout_time, CLOCK_HZ
        )

    # -- commands ----------------------------------------------------------------
    def arm(self) -> None:
        with self._lock:
            if self._state is DevState.FAULT:
                raise SimulatorError(f"cannot Arm in FAULT: {self._status}")
            if self._state is DevState.RUNNING:
                raise SimulatorError("cannot Arm: already RUNNING (Stop first)")
            if self.n_triggers < 1 or self.n_frames_per_trigger < 1:
                raise SimulatorError("nTriggers and nFramesPerTrigger must be >= 1")
            if self.n_triggers != 1 and self.n_frames_per_trigger != 1:
                raise SimulatorError(
                    "one of nTriggers and nFramesPerTrigger must be 1 "
                    f"(got {self.n_triggers} and {self.n_frames_per_trigger})"
                )
            self.frame_timing()  # validates exposure vs latency
            self._state = DevState.RUNNING
            self._status = "Armed, waiting for triggers"
            self._n_frames_acquired = 0
            self._idle.clear()
            self._arms += 1
        self._cmds.put((_Cmd.ARM, time.monotonic()))

    def software_trigger(self) -> None:
        if self.trigger_mode is not TriggerMode.SOFTWARE:
            raise SimulatorError(
                f"SoftwareTrigger refused in TriggerMode {self.trigger_mode}"
            )
        if self._state is not DevState.RUNNING:
            raise SimulatorError(f"SoftwareTrigger refused in state {self._state}")
        self._cmds.put((_Cmd.TRIGGER, time.monotonic()))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop an acquisition; returns once the device has left RUNNING (like
        the real command) or after ``timeout``."""
        self._cmds.put((_Cmd.STOP, time.monotonic()))
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._idle.wait(timeout)

    def ttl_rise(self) -> None:
        """Rising edge on TTL input 1."""
        self._cmds.put((_Cmd.TTL_RISE, time.monotonic()))

    def ttl_fall(self) -> None:
        """Falling edge on TTL input 1."""
        self._cmds.put((_Cmd.TTL_FALL, time.monotonic()))

    def ttl_pulse(self, width: float = 1e-3) -> None:
        """A TTL pulse of ``width`` seconds (a gate in EXTERNAL_MULTI_GATE)."""
        self.ttl_rise()
        time.sleep(width)
        self.ttl_fall()

    def clear_fault(self) -> None:
        """Leave FAULT (the Tango ``Init``)."""
        with self._lock:
            if self._state is DevState.FAULT:
                self._state = DevState.STANDBY
                self._status = "Device is in STANDBY"

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the acquisition ends (STANDBY or FAULT)."""
        return self._idle.wait(timeout)

    # -- frames --------------------------------------------------------------------
    def header(self) -> HeaderMessage:
        fields: dict[str, Any] = {
            "filename": self.destination_file_name,
            "overwritable": bool(self.destination_file_overwritable),
        }
        if self.framing == "multipart":
            fields["limits"] = RoiWindows.from_wire(self.windows.tolist())
            fields["extra_tags"] = WINDOW_TAGS
        return HeaderMessage(**fields)

    def _settings(self) -> _SeriesSettings:
        exptime, ticks = self.frame_timing()
        return _SeriesSettings(
            exptime=exptime,
            ticks=ticks,
            count_rate=self.count_rate.copy(),
            event_widths=self.event_widths.copy(),
            windows=self.windows.copy(),
        )

    def expected_frame(
        self, series: int, frame: int, clock_ticks: int | None = None
    ) -> Frame:
        """Frame ``frame`` of series ``series`` exactly as the simulator sends it,
        with the settings that series was armed with (pass ``clock_ticks`` for
        gated frames)."""
        settings = self._series_settings.get(series) or self._settings()
        return self._make_frame(settings, series, frame, clock_ticks)

    def _make_frame(
        self,
        settings: _SeriesSettings,
        series: int,
        frame: int,
        clock_ticks: int | None,
    ) -> Frame:
        ticks = settings.ticks if clock_ticks is None else clock_ticks
        rng = np.random.default_rng((self.seed, series, frame))
        sim = simulate_frame(
            rng, self._prepared, settings.count_rate, ticks, settings.event_widths
        )
        multipart = self.framing == "multipart"
        arrays = sim.scaler_list(settings.windows if multipart else None)
        names = WINDOW_TAGS if multipart else DEFAULT_SCALER_NAMES
        return make_frame(
            frame,
            sim.spectra,
            dict(zip(names, arrays, strict=True)),
            exptime=settings.exptime,
        )

    # -- worker ------------------------------------------------------------------
    def _set(self, state: DevState, status: str) -> None:
        with self._lock:
            self._state = state
            self._status = status

    def _worker(self) -> None:
        try:
            while True:
                cmd, _ = self._cmds.get()
                if cmd is _Cmd.CLOSE:
                    return
                if cmd is _Cmd.ARM:
                    with self._lock:
                        arm = self._arms
                    try:
                        self._acquire()
                    except _StopRequestedError:
                        pass
                    except _CloseRequestedError:
                        return
                    except Exception as exc:  # the streaming "thread" died
                        log.exception("simulated acquisition failed")
                        self._set(
                            DevState.FAULT,
                            f"FAULT: streaming failed ({type(exc).__name__}: {exc})",
                        )
                    finally:
                        self._ready_for_sw_trigger = False
                        with self._lock:
                            # A client that saw FAULT may Init and Arm again
                            # before this clean-up runs: that newer Arm's
                            # state, idle flag and fault plan are not ours
                            if self._arms == arm:
                                # a FaultPlan applies to one series, fired or not
                                self.faults.clear()
                                if self._state is DevState.RUNNING:
                                    self._state = DevState.STANDBY
                                    self._status = "Device is in STANDBY"
                                self._idle.set()
                elif cmd is _Cmd.STOP and self._series >= 0:
                    # The real device answers a Stop after completion with a
                    # second series_end.
                    self._send(SeriesEndMessage())
                # triggers while idle are ignored, as on the hardware
        except Exception:  # pragma: no cover - keep the reason visible
            log.exception("simulator worker died")
            self._set(DevState.FAULT, "FAULT: streaming thread died (see log)")
            self._idle.set()

    def _send(self, packet: HeaderMessage | Frame | SeriesEndMessage) -> None:
        self.publisher.send(packet)

    def _next_cmd(self, deadline: float | None) -> _Cmd | None:
        """Next command before ``deadline`` (monotonic), None on time-out."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            cmd, stamp = self._cmds.get(timeout=timeout)
        except queue.Empty:
            return None
        self._last_stamp = stamp
        if cmd is _Cmd.STOP:
            raise _StopRequestedError
        if cmd is _Cmd.CLOSE:
            raise _CloseRequestedError
        return cmd

    def _sleep_until(self, deadline: float) -> None:
        """Wait for the deadline, serving commands (Stop raises) meanwhile; the
        queue is looked at even when the deadline has passed (a slow host)."""
        while True:
            cmd = self._next_cmd(deadline)
            if cmd is None:
                return
            # triggers during a running burst are ignored (hardware does too)

    def _wait_trigger(self) -> float:
        mode = self.trigger_mode
        want = _Cmd.TRIGGER if mode is TriggerMode.SOFTWARE else _Cmd.TTL_RISE
        self._ready_for_sw_trigger = mode is TriggerMode.SOFTWARE
        while True:
            cmd = self._next_cmd(None)
            if cmd is want:
                self._ready_for_sw_trigger = False
                return self._last_stamp

    def _wait_gate_end(self) -> float:
        while True:
            cmd = self._next_cmd(None)
            if cmd is _Cmd.TTL_FALL:
                return self._last_stamp

    def _acquire(self) -> None:
        self._series += 1
        series = self._series
        settings = self._settings()
        self._series_settings[series] = settings
        self._series_settings.pop(series - 1000, None)
        plan = self.faults
        if plan.stall_after is not None:
            plan._release.clear()
        self._pending: list[HeaderMessage | Frame | SeriesEndMessage] = []
        self._held: Frame | None = None
        self._stalled = False
        self._out(self.header())
        exposure = self.exposure_time
        mode = self.trigger_mode
        gated = mode is TriggerMode.EXTERNAL_MULTI_GATE
        n_triggers, per_trigger = self.n_triggers, self.n_frames_per_trigger
        if gated:  # one frame per gate
            n_triggers, per_trigger = n_triggers * per_trigger, 1
        number = 0
        try:
            for _ in range(n_triggers):
                t0 = self._wait_trigger()
                self._set(DevState.RUNNING, "Acquiring")
                for k in range(per_trigger):
                    ticks: int | None = None
                    if gated:
                        t1 = self._wait_gate_end()
                        ticks = max(1, min(int((t1 - t0) * CLOCK_HZ), 2**32 - 1))
                    elif self.pace:
                        self._sleep_until(t0 + (k + 1) * exposure)
                    else:
                        self._next_cmd(time.monotonic())  # honour Stop at once
                    frame = self._make_frame(settings, series, number, ticks)
                    self._emit(frame, number)
                    number += 1
                    self._n_frames_acquired = number
                    if plan.fault_after is not None and number - 1 >= plan.fault_after:
                        plan.fault_after = None
                        self._set(DevState.FAULT, plan.fault_status)
                        log.warning("simulator FAULT: %s", plan.fault_status)
                        return
                self._set(DevState.RUNNING, "Armed, waiting for triggers")
            if self._held is not None:
                held, self._held = self._held, None
                self._out(held)
            self._out(SeriesEndMessage())
            while self._pending:  # stalled: wait for release (or Stop)
                self._next_cmd(time.monotonic() + 0.02)
                self._pump()
        except _StopRequestedError:
            # frames not yet sent are dropped, as on the real device
            self._pending.clear()
            self._held = None
            self._stalled = False
            self._send(SeriesEndMessage())
            raise

    def _emit(self, frame: Frame, number: int) -> None:
        plan = self.faults
        if self.live is not None:
            head = self.publisher.encoder.encode_frame(frame)[0][0]
            self.live.update(bytes(head), frame.spectra.tobytes())
        if number in plan.drop_frames:
            return
        if number in plan.swap_frames:
            self._held = frame
            return
        self._pending.append(frame)
        self._pending.extend([frame] * plan.repeat_frames.get(number, 0))
        if self._held is not None and self._held.frame == number - 1:
            held, self._held = self._held, None
            self._pending.append(held)
        if plan.stall_after is not None and number > plan.stall_after:
            self._stalled = True  # stall_after=-1: nothing after the header
        self._pump()
        if plan.stall_after is not None and number >= plan.stall_after:
            self._stalled = True
        if plan.restart_publisher_after == number:
            plan.restart_publisher_after = None
            self.publisher.restart()

    def _out(self, packet: HeaderMessage | Frame | SeriesEndMessage) -> None:
        self._pending.append(packet)
        self._pump()

    def _pump(self) -> None:
        if self._stalled:
            if not self.faults._release.is_set():
                return
            self._stalled = False
            self.faults.stall_after = None
        pending, self._pending = self._pending, []
        drop_parts = self.faults.drop_parts
        for packet in pending:
            messages = self.publisher.encode(packet)
            if isinstance(packet, Frame):
                if drop_parts:
                    parts = [p for m in messages for p in m]
                    kept = [
                        p
                        for i, p in enumerate(parts)
                        if (packet.frame, i) not in drop_parts
                    ]
                    if self.framing == "multipart":
                        messages = [kept] if kept else []
                    else:
                        messages = [[p] for p in kept]
                self.frames_sent += 1
            for message in messages:
                self.publisher.send_message(message)
