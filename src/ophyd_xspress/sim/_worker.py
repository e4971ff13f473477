"""The simulated device's worker thread: commands in, series acquired, packets out.

:class:`Worker` is the body of the one thread that owns the stream socket. It
takes commands from :class:`Commands` (Arm, triggers, TTL edges, Stop,
Close), paces each frame, makes it (:mod:`._frames`), hands it to the series'
:class:`~._faults.FaultInjector` and sends what comes out through an
:class:`Outbox`, which holds everything at a stall until the plan's release
and shows every message sent to the device's own file writer
(:mod:`._device_file`) when the series has one. It reports through the
device's :class:`~._state.DeviceState`.

As on the MAX IV device (``xspress3/DeviceServer.py``, ``xspress3/Streamer.py``
in maxiv-science/xspress3-streamer): an Arm while a series runs starts a new
series at once, with a new header and no ``series_end`` for the first
(Streamer.py 43-54 sends a header for every start); every Stop sends a
``series_end``, also when no series runs (Streamer.py 55-58).
"""

from __future__ import annotations

import enum
import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .._constants import CLOCK_HZ
from ..protocol import Frame, HeaderMessage, Message, SeriesEndMessage
from ._device_file import DeviceFileWriter
from ._faults import FaultInjector, FaultPlan, Injection, Outgoing, Stall
from ._frames import SeriesSettings
from ._publisher import StreamPublisher
from ._state import TriggerMode

if TYPE_CHECKING:
    from ._engine import SimulatedXspress3

__all__ = ["Cmd", "Commands", "Outbox", "SeriesPlan", "Worker"]

log = logging.getLogger("ophyd_xspress.sim")

#: How often a series stalled at its end looks for the plan's release (s).
_STALL_POLL_S: Final = 0.02
_UINT32_MAX: Final = 2**32 - 1


class Cmd(enum.Enum):
    ARM = enum.auto()
    #: An Arm the device refused once RUNNING: no series, RUNNING until Stop.
    ARM_NO_SERIES = enum.auto()
    TRIGGER = enum.auto()
    TTL_RISE = enum.auto()
    TTL_FALL = enum.auto()
    STOP = enum.auto()
    CLOSE = enum.auto()


@dataclass(frozen=True)
class SeriesPlan:
    """What an Arm fixed for its series (a copy of the settings at Arm)."""

    arm: int
    settings: SeriesSettings
    header: HeaderMessage
    mode: TriggerMode
    n_triggers: int
    per_trigger: int
    exposure: float
    #: WriteHdf5 and a DestinationFileName: the device writes its own file.
    device_file: bool


class _StopRequestedError(Exception):
    pass


class _CloseRequestedError(Exception):
    pass


class _RearmRequestedError(Exception):
    def __init__(self, cmd: Cmd, plan: SeriesPlan | None) -> None:
        super().__init__(cmd.name)
        self.cmd, self.plan = cmd, plan


_Queued = tuple[Cmd, float, "SeriesPlan | None"]
#: Trigger edges: what an acquisition waits for, each at the time it happens.
_EDGES: Final = frozenset({Cmd.TRIGGER, Cmd.TTL_RISE, Cmd.TTL_FALL})


class Commands:
    """The worker's command queue; each command carries the monotonic time it
    was given (a trigger's time stamp starts its frames), an Arm its plan.

    An edge may be given ahead of time (a timing box's pulse train): it
    happens at its time stamp. One that comes out of the queue while the
    worker waits for an earlier deadline is held until that deadline has
    passed, never taken as an edge during the frame before it."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Queued] = queue.Queue()
        self._held: deque[_Queued] = deque()

    def put(
        self, cmd: Cmd, plan: SeriesPlan | None = None, at: float | None = None
    ) -> None:
        self._queue.put((cmd, time.monotonic() if at is None else at, plan))

    def get(self) -> tuple[Cmd, SeriesPlan | None]:
        """The next command, waiting as long as it takes (between series)."""
        cmd, _, plan = self._held.popleft() if self._held else self._queue.get()
        return cmd, plan

    def next(self, deadline: float | None) -> tuple[Cmd, float] | None:
        """Next command and its time before ``deadline`` (monotonic), None on
        time-out; Stop, Close and Arm raise (and drop held edges)."""
        while True:
            if self._held and (deadline is None or self._held[0][1] <= deadline):
                cmd, stamp, _ = self._held.popleft()
                return cmd, stamp
            timeout = (
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
            cmd, stamp, plan = item
            if cmd in _EDGES:
                if deadline is not None and stamp > deadline:
                    self._held.append(item)  # it has not happened yet
                    continue
                return cmd, stamp
            self._held.clear()
            if cmd is Cmd.STOP:
                raise _StopRequestedError
            if cmd is Cmd.CLOSE:
                raise _CloseRequestedError
            if cmd in (Cmd.ARM, Cmd.ARM_NO_SERIES):
                raise _RearmRequestedError(cmd, plan)
            return cmd, stamp

    def sleep_until(self, deadline: float) -> None:
        """Wait for the deadline, serving commands (Stop raises) meanwhile; the
        queue is looked at even when the deadline has passed (a slow host).
        Triggers during a running burst are ignored, as on the hardware."""
        while self.next(deadline) is not None:
            pass

    def wait_for(self, wanted: Cmd) -> float:
        """The time of the next ``wanted`` command; others are ignored."""
        while True:
            got = self.next(None)
            if got is not None and got[0] is wanted:
                return got[1]


class Outbox:
    """What the worker sends, in order; held at a stall until the plan's
    :meth:`~._faults.FaultPlan.release`. ``tap`` sees every message sent."""

    def __init__(self, publisher: StreamPublisher) -> None:
        self._publisher = publisher
        self._queue: deque[Outgoing] = deque()
        self.tap: Callable[[Message], None] | None = None
        #: Frames handed to the publisher, every series and copy counted.
        self.frames_sent = 0

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def clear(self) -> None:
        self._queue.clear()

    def put(self, outgoing: Iterable[Outgoing], plan: FaultPlan) -> None:
        self._queue.extend(outgoing)
        self.pump(plan)

    def send(self, message: Message) -> None:
        self._publisher.send_message(message)
        if self.tap is not None:
            self.tap(message)

    def pump(self, plan: FaultPlan) -> None:
        """Send until the queue is empty or a stall not yet released."""
        while self._queue:
            item = self._queue[0]
            if isinstance(item, Stall):
                if not plan.released:
                    return
                plan.stall_after = None  # a stall is one-shot
            else:
                if item.frame is not None:
                    self.frames_sent += 1
                for message in item.messages:
                    self.send(message)
            self._queue.popleft()


class Worker:
    """The worker thread's body for one :class:`SimulatedXspress3`."""

    def __init__(self, device: SimulatedXspress3, commands: Commands) -> None:
        self._device = device
        self._commands = commands
        self._state = device.device_state
        self.outbox = Outbox(device.publisher)

    def run(self) -> None:
        """Serve commands until Close (the thread's target)."""
        try:
            cmd, plan = self._commands.get()
            while cmd is not Cmd.CLOSE:
                if cmd in (Cmd.ARM, Cmd.ARM_NO_SERIES) and plan is not None:
                    next_cmd = self._run_series(cmd, plan)
                    if next_cmd is not None:
                        cmd, plan = next_cmd
                        continue
                elif cmd is Cmd.STOP:
                    self.outbox.send(self._end_message())
                # triggers while idle are ignored, as on the hardware
                cmd, plan = self._commands.get()
        except Exception:  # pragma: no cover - keep the reason visible
            log.exception("simulator worker died")
            self._state.worker_died("FAULT: streaming thread died (see log)")

    def _end_message(self) -> Message:
        (message,) = self._device.publisher.encode(SeriesEndMessage())
        return message

    def _run_series(
        self, cmd: Cmd, plan: SeriesPlan
    ) -> tuple[Cmd, SeriesPlan | None] | None:
        """One armed series, then its clean-up; the command to serve next when
        it ended by another Arm or by Close."""
        writer = DeviceFileWriter() if plan.device_file else None
        self.outbox.tap = writer.put if writer is not None else None
        try:
            if cmd is Cmd.ARM_NO_SERIES:
                self._wait_for_stop()
            self._acquire(plan)
        except _StopRequestedError:
            pass
        except _CloseRequestedError:
            return Cmd.CLOSE, None
        except _RearmRequestedError as rearm:
            self.outbox.clear()  # the new series' header follows at once
            return rearm.cmd, rearm.plan
        except Exception as exc:  # the streaming "thread" died
            log.exception("simulated acquisition failed")
            self._state.fault(f"FAULT: streaming failed ({type(exc).__name__}: {exc})")
        finally:
            self.outbox.tap = None
            if writer is not None:
                writer.close()
            # a FaultPlan applies to one series, fired or not
            faults = self._device.faults
            self._state.finish(plan.arm, faults.clear, faults.stay_running)
        return None

    def _wait_for_stop(self) -> None:
        """RUNNING without a series: nothing is sent until Stop (which sends
        its series_end) or another Arm."""
        try:
            while True:
                self._commands.next(None)  # triggers are ignored
        except _StopRequestedError:
            self.outbox.send(self._end_message())
            raise

    def _acquire(self, series: SeriesPlan) -> None:
        device = self._device
        index = device.frames.start_series(series.settings)
        plan = device.faults
        plan.begin_series()
        injector = FaultInjector(device.publisher.encoder)
        self.outbox.clear()
        self.outbox.put(injector.header(series.header), plan)
        try:
            if not self._acquire_frames(series, index, injector, plan):
                return  # a planned FAULT: no series_end, as on the device
            self.outbox.put(injector.end(plan), plan)
            while self.outbox.pending:  # stalled: wait for release (or Stop)
                self._commands.next(time.monotonic() + _STALL_POLL_S)
                self.outbox.pump(plan)
        except _StopRequestedError:
            # frames not yet sent are dropped, as on the real device
            self.outbox.clear()
            self.outbox.send(self._end_message())
            raise

    def _acquire_frames(
        self,
        series: SeriesPlan,
        index: int,
        injector: FaultInjector,
        plan: FaultPlan,
    ) -> bool:
        """Every trigger's frames; False when the plan's FAULT ended the series."""
        device = self._device
        gated = series.mode is TriggerMode.EXTERNAL_MULTI_GATE
        n_triggers, per_trigger = series.n_triggers, series.per_trigger
        if gated:  # one frame per gate
            n_triggers, per_trigger = n_triggers * per_trigger, 1
        want = Cmd.TRIGGER if series.mode is TriggerMode.SOFTWARE else Cmd.TTL_RISE
        number = 0
        exptime = series.settings.exptime
        for _ in range(n_triggers):
            t0 = self._commands.wait_for(want)
            for k in range(per_trigger):
                ticks: int | None = None
                if gated:
                    t1 = self._commands.wait_for(Cmd.TTL_FALL)
                    if t1 > time.monotonic():  # an edge given ahead of time
                        self._commands.sleep_until(t1)
                    ticks = max(1, min(int((t1 - t0) * CLOCK_HZ), _UINT32_MAX))
                    span = (t0, t1)
                elif device.pace:
                    start = t0 + k * series.exposure
                    self._commands.sleep_until(start + series.exposure)
                    span = (start, start + exptime)
                else:
                    self._commands.next(time.monotonic())  # honour Stop at once
                    now = time.monotonic()
                    span = (now, now)
                frame = device.frames.frame(series.settings, index, number, ticks, span)
                device.counters.add(frame, series.settings.windows)
                injection = self._emit(frame, injector, plan)
                number += 1
                self._state.acquired(number, plan.stay_running)
                if injection.fault:
                    plan.fault_after = None
                    self._state.fault(plan.fault_status)
                    log.warning("simulator FAULT: %s", plan.fault_status)
                    return False
        return True

    def _emit(
        self, frame: Frame, injector: FaultInjector, plan: FaultPlan
    ) -> Injection:
        """Show ``frame`` on the live view, send what the plan makes of it."""
        device = self._device
        if device.live is not None:
            head = device.publisher.encoder.encode_frame(frame)[0][0]
            device.live.update(bytes(head), frame.spectra.tobytes())
        injection = injector.frame(frame, plan)
        self.outbox.put(injection.outgoing, plan)
        if injection.restart_publisher:
            plan.restart_publisher_after = None
            device.publisher.restart()
        return injection
