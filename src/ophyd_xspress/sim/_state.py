"""The simulated device's states, and every transition between them.

Theory of operation (the MAX IV ``Xspress3DS``, ``xspress3/DeviceServer.py`` in
maxiv-science/xspress3-streamer; line numbers of that file)::

    STANDBY/RUNNING --arm()------------> RUNNING  a new series (324-341); an Arm
                                                  while RUNNING starts another,
                                                  with no series_end for the first
    STANDBY/RUNNING --arm(), frames----> RUNNING  with no series: the device set
                      rule broken                 RUNNING before the SDK call
                                                  refused (326, Instrument.py 222);
                                                  only Stop ends it
    RUNNING --acquired(n == due)-------> STANDBY  the hook's done == due (358-363),
                                                  before the stream has ended
    RUNNING --finish()-----------------> STANDBY  Stop (348-353), or the series
                                                  ended another way
    any     --fault()------------------> FAULT    a planned fault, or the stream
                                                  failed (364-368)
    FAULT   --clear_fault()------------> STANDBY  the Tango ``Init`` (114-149)

``Status`` is empty except in FAULT: the device sets it to ``''`` at Init (149)
and only writes it again when it faults (368).

``ReadyForSwTrigger`` (313-322) is False unless RUNNING in ``SOFTWARE`` mode;
then True when the frames acquired equal the SoftwareTrigger commands so far,
and otherwise *no value at all* (the method returns None, so a client's read
fails with ``API_AttrValueNotSet``): :attr:`DeviceState.ready_for_sw_trigger`
returns None there.

Commands (``arm``, ``software_trigger``, ``clear_fault``) come from any thread;
the worker thread drives the rest. One lock guards every transition. ``idle``
is set whenever no series runs (``wait_idle``): unlike ``state`` it waits for
the series' end to be sent.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import Final

__all__ = [
    "ArmLeftRunningError",
    "DevState",
    "DeviceState",
    "SimulatorError",
    "TriggerMode",
]

#: The device's Status outside FAULT (DeviceServer.py:149).
EMPTY_STATUS: Final = ""


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


class ArmLeftRunningError(SimulatorError):
    """Arm refused *after* the device went to RUNNING, as the real one does
    with nFramesPerTrigger > 1 and nTriggers > 1: it stays RUNNING until Stop."""


class DeviceState:
    """State, status and acquisition counters of one simulated device."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = DevState.STANDBY
        self._status: str = EMPTY_STATUS
        self._arms = 0  # Arm commands accepted so far
        self._due = 0  # frames of the current series (nTriggers * nFramesPerTrigger)
        self._software_mode = True
        self._idle = threading.Event()
        self._idle.set()
        #: Frames acquired in the current series (written by the worker).
        self.n_frames_acquired = 0
        #: SoftwareTrigger commands since the last Arm.
        self.software_triggers = 0

    @property
    def state(self) -> DevState:
        return self._state

    @property
    def status(self) -> str:
        return self._status

    @property
    def arms(self) -> int:
        """Arm commands accepted so far: the number of the current series' Arm."""
        with self._lock:
            return self._arms

    @property
    def ready_for_sw_trigger(self) -> bool | None:
        """The device's ``ReadyForSwTrigger``: None where it has no value."""
        if self._state is not DevState.RUNNING or not self._software_mode:
            return False
        if self.n_frames_acquired == self.software_triggers:
            return True
        return None

    def arm(self, validate: Callable[[], None], due: int, software_mode: bool) -> int:
        """-> RUNNING with a new series of ``due`` frames; the Arm's number.

        ``validate`` checks what the simulator refuses outright (state
        unchanged when it raises). An Arm while RUNNING is accepted: the
        device starts the new series at once."""
        with self._lock:
            if self._state is DevState.FAULT:
                raise SimulatorError(f"cannot Arm in FAULT: {self._status}")
            validate()
            self._state = DevState.RUNNING
            self._due = due
            self._software_mode = software_mode
            self.n_frames_acquired = 0
            self.software_triggers = 0
            self._idle.clear()
            self._arms += 1
            return self._arms

    def software_trigger(self) -> None:
        with self._lock:
            self.software_triggers += 1

    def acquired(self, number: int, stay_running: bool = False) -> None:
        """``number`` frames of the current series are acquired; the last one
        ends RUNNING at once (the stream may still be sending), unless the
        fault plan keeps the device RUNNING."""
        with self._lock:
            self.n_frames_acquired = number
            done = number == self._due and not stay_running
            if self._state is DevState.RUNNING and done:
                self._state = DevState.STANDBY

    def stopped(self) -> None:
        """The Stop command: RUNNING -> STANDBY at once (DeviceServer.py 352).
        (The device's Stop also leaves FAULT, after which its dead streaming
        thread hangs the next request; here FAULT stays until Init.)"""
        with self._lock:
            if self._state is DevState.RUNNING:
                self._state = DevState.STANDBY

    def fault(self, status: str) -> None:
        """-> FAULT with ``status`` (the series' clean-up follows: finish())."""
        with self._lock:
            self._state = DevState.FAULT
            self._status = status

    def worker_died(self, status: str) -> None:
        """-> FAULT with nothing left to finish the series."""
        self.fault(status)
        self._idle.set()

    def clear_fault(self) -> None:
        """FAULT -> STANDBY (the Tango ``Init``); nothing in another state."""
        with self._lock:
            if self._state is DevState.FAULT:
                self._state = DevState.STANDBY
                self._status = EMPTY_STATUS

    def finish(
        self, arm: int, forget_plan: Callable[[], None], stay_running: bool = False
    ) -> None:
        """The series of Arm number ``arm`` ended: RUNNING -> STANDBY, idle.

        A client may Arm again (or Init and Arm after a FAULT) before this
        clean-up runs: that newer Arm's state, idle flag and fault plan are
        not ours, so nothing changes then. ``forget_plan`` runs under the
        lock, so a plan set for the next Arm is never cleared by this one's
        clean-up.
        """
        with self._lock:
            if self._arms != arm:
                return
            forget_plan()
            if self._state is DevState.RUNNING and not stay_running:
                self._state = DevState.STANDBY
            self._idle.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no series runs (STANDBY or FAULT)."""
        return self._idle.wait(timeout)
