"""The simulated device's states, and every transition between them.

Theory of operation (the MAX IV ``Xspress3DS`` Tango states)::

    STANDBY --arm()--------> RUNNING  "Armed, waiting for triggers"
    RUNNING --acquiring()--> RUNNING  "Acquiring" (a trigger came)
    RUNNING --armed()------> RUNNING  "Armed, waiting for triggers" (burst done)
    RUNNING --finish()-----> STANDBY  (the series ended: last frame, or Stop)
    any     --fault()------> FAULT    (a planned fault, or the stream failed)
    FAULT   --clear_fault()> STANDBY  (the Tango ``Init``)

Commands (``arm``, ``clear_fault``) come from any thread; the worker thread
drives the rest. One lock guards every transition; readers see one attribute
at a time. ``idle`` is set whenever no series runs (``wait_idle``).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["DevState", "DeviceState", "SimulatorError", "TriggerMode"]

STANDBY_STATUS: Final = "Device is in STANDBY"
ARMED_STATUS: Final = "Armed, waiting for triggers"
ACQUIRING_STATUS: Final = "Acquiring"


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


class DeviceState:
    """State, status and acquisition counters of one simulated device."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = DevState.STANDBY
        self._status: str = STANDBY_STATUS
        self._arms = 0  # Arm commands accepted so far
        self._idle = threading.Event()
        self._idle.set()
        #: Frames acquired in the current series (written by the worker).
        self.n_frames_acquired = 0
        #: The device waits for a SoftwareTrigger (written by the worker).
        self.ready_for_sw_trigger = False

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

    def arm(self, validate: Callable[[], None]) -> None:
        """STANDBY -> RUNNING; ``validate`` checks the settings (it raises
        :class:`SimulatorError` or ``ValueError``) once the state allows Arm."""
        with self._lock:
            if self._state is DevState.FAULT:
                raise SimulatorError(f"cannot Arm in FAULT: {self._status}")
            if self._state is DevState.RUNNING:
                raise SimulatorError("cannot Arm: already RUNNING (Stop first)")
            validate()
            self._state = DevState.RUNNING
            self._status = ARMED_STATUS
            self.n_frames_acquired = 0
            self._idle.clear()
            self._arms += 1

    def acquiring(self) -> None:
        """A trigger came: RUNNING, acquiring its frames."""
        self._set(DevState.RUNNING, ACQUIRING_STATUS)

    def armed(self) -> None:
        """A trigger's frames are done: RUNNING, waiting for the next."""
        self._set(DevState.RUNNING, ARMED_STATUS)

    def fault(self, status: str) -> None:
        """-> FAULT with ``status`` (the series' clean-up follows: finish())."""
        self._set(DevState.FAULT, status)

    def worker_died(self, status: str) -> None:
        """-> FAULT with nothing left to finish the series."""
        self._set(DevState.FAULT, status)
        self._idle.set()

    def clear_fault(self) -> None:
        """FAULT -> STANDBY (the Tango ``Init``); nothing in another state."""
        with self._lock:
            if self._state is DevState.FAULT:
                self._state = DevState.STANDBY
                self._status = STANDBY_STATUS

    def finish(self, arm: int, forget_plan: Callable[[], None]) -> None:
        """The series of Arm number ``arm`` ended: RUNNING -> STANDBY, idle.

        A client that saw FAULT may Init and Arm again before this clean-up
        runs: that newer Arm's state, idle flag and fault plan are not ours, so
        nothing changes then. ``forget_plan`` runs under the lock, so a plan
        set for the next Arm is never cleared by this one's clean-up.
        """
        self.ready_for_sw_trigger = False
        with self._lock:
            if self._arms != arm:
                return
            forget_plan()
            if self._state is DevState.RUNNING:
                self._state = DevState.STANDBY
                self._status = STANDBY_STATUS
            self._idle.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no series runs (STANDBY or FAULT)."""
        return self._idle.wait(timeout)

    def _set(self, state: DevState, status: str) -> None:
        with self._lock:
            self._state = state
            self._status = status
