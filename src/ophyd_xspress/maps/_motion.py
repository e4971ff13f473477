"""Where the motors are at any instant: the beam on the simulator's sample.

An ophyd-async motor reports its position as readback updates (``SimMotor``
at 10 Hz while it moves); a frame of a fly map lasts milliseconds.
:class:`MotorTracker` keeps the recent updates (with the time each came,
``time.monotonic()``) and the motor's setpoint and velocity, and answers
``position(t)`` for any instant:

* between two updates the motor stood at the first and then moved to the
  second at its velocity, arriving when the second came (a motor moving at a
  constant velocity is interpolated exactly; an instant move, velocity 0, is
  a step at the update);
* after the last update it moves on towards its setpoint at its velocity and
  stops there (an encoder read between readback updates).

:class:`MotorBeam` pairs two trackers into the simulator's
:class:`~ophyd_xspress.sim.BeamPath`: ``sim.control.beam = MotorBeam(x, y)``.
Both are thread-safe (updates come in the RunEngine's event loop, the
simulator asks from its worker thread).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from bluesky.protocols import Reading

__all__ = [
    "MotorBeam",
    "MotorTracker",
    "TrackedMotor",
    "in_bluesky_loop",
    "wait_for_update",
]

#: Readback updates kept per motor (6 s of a 10 Hz SimMotor move).
KEPT_UPDATES: Final = 64


class _Subscribable(Protocol):
    def subscribe_reading(self, function: Callable[[dict[str, Reading]], None]) -> None:
        """Call ``function`` with every new reading."""
        ...

    def clear_sub(self, function: Callable[..., None]) -> None:
        """Stop calling ``function``."""
        ...


class TrackedMotor(Protocol):
    """What a tracker reads: the signals every ophyd-async motor has."""

    @property
    def name(self) -> str: ...

    @property
    def user_readback(self) -> _Subscribable: ...

    @property
    def user_setpoint(self) -> _Subscribable: ...

    @property
    def velocity(self) -> _Subscribable: ...


@dataclass(frozen=True, slots=True)
class _Update:
    t: float
    position: float
    velocity: float


def in_bluesky_loop(function: Callable[[], None]) -> None:
    """Run ``function`` in the RunEngine's event loop (ophyd-async subscribes
    only there): at once when called from that loop, else through bluesky."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        from bluesky.run_engine import call_in_bluesky_event_loop

        async def call() -> None:
            function()

        call_in_bluesky_event_loop(call())
        return
    function()


class MotorTracker:
    """A motor's position at any instant, from its readback updates."""

    def __init__(self, motor: TrackedMotor) -> None:
        self.motor = motor
        self._lock = threading.Lock()
        self._updates: deque[_Update] = deque(maxlen=KEPT_UPDATES)
        self._velocity = 0.0
        self._setpoint = math.nan
        self._subscriptions: list[tuple[_Subscribable, Callable[..., None]]] = []

    @property
    def name(self) -> str:
        return self.motor.name

    # -- subscriptions -----------------------------------------------------------------
    def attach(self) -> None:
        """Follow the motor's readback, setpoint and velocity (in the
        RunEngine's loop: see :func:`in_bluesky_loop`)."""
        for signal, handler in (
            (self.motor.velocity, self._on_velocity),
            (self.motor.user_setpoint, self._on_setpoint),
            (self.motor.user_readback, self._on_readback),
        ):
            signal.subscribe_reading(handler)
            self._subscriptions.append((signal, handler))

    def detach(self) -> None:
        """Stop following the motor."""
        for signal, handler in self._subscriptions:
            signal.clear_sub(handler)
        self._subscriptions.clear()

    def _on_readback(self, reading: dict[str, Reading]) -> None:
        value = float(_value(reading))
        with self._lock:
            self._updates.append(_Update(time.monotonic(), value, self._velocity))

    def _on_setpoint(self, reading: dict[str, Reading]) -> None:
        value = float(_value(reading))
        now = time.monotonic()
        with self._lock:
            # a move begins: the motor is where it was, now (its first
            # readback update comes only after a while)
            if self._updates and value != self._setpoint:
                here = self._position(now)
                self._updates.append(_Update(now, here, self._velocity))
            self._setpoint = value

    def _on_velocity(self, reading: dict[str, Reading]) -> None:
        with self._lock:
            self._velocity = abs(float(_value(reading)))

    # -- where it is -------------------------------------------------------------------
    def position(self, t: float) -> float:
        """The position at the ``time.monotonic()`` instant ``t`` (NaN before
        the first update)."""
        with self._lock:
            return self._position(t)

    def latest_update(self) -> float:
        """When the last readback update came (``-inf`` before any)."""
        with self._lock:
            return self._updates[-1].t if self._updates else -math.inf

    def velocity(self) -> float:
        """The motor's velocity (units/s, >= 0; 0 for an instant motor)."""
        with self._lock:
            return self._velocity

    def time_at(self, position: float) -> float:
        """When the motor, moving on from its last update at its velocity
        towards its setpoint, passes ``position`` (``inf`` if it never does)."""
        with self._lock:
            if not self._updates or self._velocity <= 0.0:
                return math.inf
            last = self._updates[-1]
            direction = math.copysign(1.0, self._setpoint - last.position)
            ahead = (position - last.position) * direction
            if ahead > abs(self._setpoint - last.position):
                return math.inf
            return last.t + ahead / self._velocity

    def _position(self, t: float) -> float:
        updates = self._updates
        if not updates:
            return math.nan
        last = updates[-1]
        if t >= last.t:
            return _towards(last.position, self._setpoint, self._velocity, t - last.t)
        for i in range(len(updates) - 1, 0, -1):
            before, after = updates[i - 1], updates[i]
            if before.t <= t:
                return _between(before, after, t)
        return updates[0].position


def _between(before: _Update, after: _Update, t: float) -> float:
    """Between two updates the motor stood at the first until it had to
    leave, at its velocity, to reach the second when that came (an instant
    move, velocity 0, jumps when it came)."""
    if after.velocity <= 0.0:
        return before.position
    gap = after.position - before.position
    covered = max(0.0, abs(gap) - after.velocity * (after.t - t))
    return before.position + math.copysign(covered, gap)


def _towards(start: float, target: float, velocity: float, dt: float) -> float:
    """From ``start`` towards ``target`` at ``velocity`` for ``dt``, never past
    it (nowhere without a target)."""
    if math.isnan(target) or target == start:
        return start
    gap = target - start
    return start + math.copysign(min(abs(gap), velocity * dt), gap)


def _value(reading: dict[str, Reading]) -> Any:
    (only,) = reading.values()
    return only["value"]


class MotorBeam:
    """The beam where two ophyd-async motors put the sample: the simulator's
    :class:`~ophyd_xspress.sim.BeamPath` (``sim.control.beam = MotorBeam(x, y)``).

    Subscribes to both motors at once (call it after the motors are
    connected, with the RunEngine made); :meth:`detach` undoes it.
    """

    def __init__(self, x: TrackedMotor, y: TrackedMotor) -> None:
        self.x = MotorTracker(x)
        self.y = MotorTracker(y)
        in_bluesky_loop(self._attach)

    def _attach(self) -> None:
        self.x.attach()
        self.y.attach()

    def detach(self) -> None:
        """Stop following the motors."""
        in_bluesky_loop(self._detach)

    def _detach(self) -> None:
        self.x.detach()
        self.y.detach()

    def position(self, t: float) -> tuple[float, float]:
        return self.x.position(t), self.y.position(t)


async def wait_for_update(tracker: MotorTracker, after: float, timeout: float) -> None:
    """Wait (polling every ms) for a readback update that came after
    ``after``; ``TimeoutError`` naming the motor after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while tracker.latest_update() <= after:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{tracker.name}: no readback update for {timeout} s while flying "
                "(is it moving? the readback must update during the move)"
            )
        await asyncio.sleep(0.001)
