"""The simulated device's worker thread: commands in, series acquired, packets out.

:class:`Worker` is the body of the one thread that owns the stream socket. It
takes commands from :class:`Commands` (Arm, triggers, TTL edges, Stop,
Close), paces each frame, makes it (:mod:`._frames`), hands it to the series'
:class:`~._faults.FaultInjector` and sends what comes out through an
:class:`Outbox`, which holds everything at a stall until the plan's release.
It reports through the device's :class:`~._state.DeviceState`.
"""

from __future__ import annotations

import enum
import logging
import queue
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from .._constants import CLOCK_HZ
from ..protocol import Frame, SeriesEndMessage
from ._faults import FaultInjector, FaultPlan, Injection, Outgoing, Stall
from ._frames import SeriesSettings
from ._publisher import StreamPublisher
from ._state import TriggerMode

if TYPE_CHECKING:
    from ._engine import SimulatedXspress3

__all__ = ["Cmd", "Commands", "Outbox", "Worker"]

log = logging.getLogger("ophyd_xspress.sim")

#: How often a series stalled at its end looks for the plan's release (s).
_STALL_POLL_S: Final = 0.02
_UINT32_MAX: Final = 2**32 - 1


class Cmd(enum.Enum):
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


class Commands:
    """The worker's command queue; each command carries the monotonic time it
    was given (a trigger's time stamp starts its frames)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Cmd, float]] = queue.Queue()

    def put(self, cmd: Cmd) -> None:
        self._queue.put((cmd, time.monotonic()))

    def get(self) -> Cmd:
        """The next command, waiting as long as it takes (between series)."""
        return self._queue.get()[0]

    def next(self, deadline: float | None) -> tuple[Cmd, float] | None:
        """Next command and its time before ``deadline`` (monotonic), None on
        time-out; Stop and Close raise."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            cmd, stamp = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if cmd is Cmd.STOP:
            raise _StopRequestedError
        if cmd is Cmd.CLOSE:
            raise _CloseRequestedError
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
    :meth:`~._faults.FaultPlan.release`."""

    def __init__(self, publisher: StreamPublisher) -> None:
        self._publisher = publisher
        self._queue: deque[Outgoing] = deque()
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
                    self._publisher.send_message(message)
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
            while True:
                cmd = self._commands.get()
                if cmd is Cmd.CLOSE:
                    return
                if cmd is Cmd.ARM:
                    if not self._run_series():
                        return
                elif cmd is Cmd.STOP and self._device.series_index >= 0:
                    # The real device answers a Stop after completion with a
                    # second series_end.
                    self._device.publisher.send(SeriesEndMessage())
                # triggers while idle are ignored, as on the hardware
        except Exception:  # pragma: no cover - keep the reason visible
            log.exception("simulator worker died")
            self._state.worker_died("FAULT: streaming thread died (see log)")

    def _run_series(self) -> bool:
        """One armed series, then its clean-up; False when Close was asked."""
        arm = self._state.arms
        try:
            self._acquire()
        except _StopRequestedError:
            pass
        except _CloseRequestedError:
            return False
        except Exception as exc:  # the streaming "thread" died
            log.exception("simulated acquisition failed")
            self._state.fault(f"FAULT: streaming failed ({type(exc).__name__}: {exc})")
        finally:
            # a FaultPlan applies to one series, fired or not
            self._state.finish(arm, self._device.faults.clear)
        return True

    def _acquire(self) -> None:
        device = self._device
        settings = device.series_settings()
        series = device.frames.start_series(settings)
        plan = device.faults
        plan.begin_series()
        injector = FaultInjector(device.publisher.encoder)
        self.outbox.clear()
        self.outbox.put(injector.header(device.header()), plan)
        try:
            if not self._acquire_frames(settings, series, injector, plan):
                return  # a planned FAULT: no series_end, as on the device
            self.outbox.put(injector.end(plan), plan)
            while self.outbox.pending:  # stalled: wait for release (or Stop)
                self._commands.next(time.monotonic() + _STALL_POLL_S)
                self.outbox.pump(plan)
        except _StopRequestedError:
            # frames not yet sent are dropped, as on the real device
            self.outbox.clear()
            device.publisher.send(SeriesEndMessage())
            raise

    def _acquire_frames(
        self,
        settings: SeriesSettings,
        series: int,
        injector: FaultInjector,
        plan: FaultPlan,
    ) -> bool:
        """Every trigger's frames; False when the plan's FAULT ended the series."""
        device = self._device
        exposure = device.exposure_time
        gated = device.trigger_mode is TriggerMode.EXTERNAL_MULTI_GATE
        n_triggers, per_trigger = device.n_triggers, device.n_frames_per_trigger
        if gated:  # one frame per gate
            n_triggers, per_trigger = n_triggers * per_trigger, 1
        number = 0
        for _ in range(n_triggers):
            t0 = self._wait_trigger()
            self._state.acquiring()
            for k in range(per_trigger):
                ticks: int | None = None
                if gated:
                    t1 = self._commands.wait_for(Cmd.TTL_FALL)
                    ticks = max(1, min(int((t1 - t0) * CLOCK_HZ), _UINT32_MAX))
                elif device.pace:
                    self._commands.sleep_until(t0 + (k + 1) * exposure)
                else:
                    self._commands.next(time.monotonic())  # honour Stop at once
                frame = device.frames.frame(settings, series, number, ticks)
                injection = self._emit(frame, injector, plan)
                number += 1
                self._state.n_frames_acquired = number
                if injection.fault:
                    plan.fault_after = None
                    self._state.fault(plan.fault_status)
                    log.warning("simulator FAULT: %s", plan.fault_status)
                    return False
            self._state.armed()
        return True

    def _wait_trigger(self) -> float:
        mode = self._device.trigger_mode
        want = Cmd.TRIGGER if mode is TriggerMode.SOFTWARE else Cmd.TTL_RISE
        self._state.ready_for_sw_trigger = mode is TriggerMode.SOFTWARE
        stamp = self._commands.wait_for(want)
        self._state.ready_for_sw_trigger = False
        return stamp

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
