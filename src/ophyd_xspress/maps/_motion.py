"""Where the motors are at any instant: the beam on the simulator's sample.

A fly map's frames last milliseconds; an ophyd-async motor's readback
updates come far less often (``SimMotor``: 10 Hz while it moves) and each
comes late by however long its event loop was busy, so positions read off
them wander by that jitter times the speed (half a pixel for a few ms on a
loaded machine). A timing box at a beamline reads the encoder instead.
:class:`MotorTracker` is that encoder for the simulator: it knows each move
from the moment its setpoint changes (``time.monotonic()``), where it began
and the motor's velocity and acceleration time then, and answers
``position(t)`` and ``time_at(position)`` from the move's profile
(:class:`Move`: the trapezoid a ``SimMotor`` follows, accelerate, cruise,
decelerate; a triangle when the move is too short to reach the velocity; a
jump for an instant motor, velocity 0). At rest the motor is where its last
readback says: a move begins there.

:class:`MotorBeam` pairs two trackers into the simulator's
:class:`~ophyd_xspress.sim.BeamPath`: ``sim.control.beam = MotorBeam(x, y)``.
The simulator makes each frame, and the timing box times its pulses and
reads each frame's position, from the same profiles: the positions recorded
are where the frames were, whatever the machine's load.
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

__all__ = ["MotorBeam", "MotorTracker", "Move", "TrackedMotor", "in_bluesky_loop"]

#: Moves kept per motor (those a frame may still ask about).
KEPT_MOVES: Final = 64


class _Subscribable(Protocol):
    def subscribe_reading(self, function: Callable[[dict[str, Reading]], None]) -> None:
        """Call ``function`` with every new reading."""
        ...

    def clear_sub(self, function: Callable[..., None]) -> None:
        """Stop calling ``function``."""
        ...


class TrackedMotor(Protocol):
    """What a tracker reads: the signals every ophyd-async motor has (and
    ``acceleration_time`` when it has one: without, it starts and stops at
    full speed)."""

    @property
    def name(self) -> str: ...

    @property
    def user_readback(self) -> _Subscribable: ...

    @property
    def user_setpoint(self) -> _Subscribable: ...

    @property
    def velocity(self) -> _Subscribable: ...


@dataclass(frozen=True, slots=True)
class Move:
    """A move from ``start`` to ``target`` begun at ``t0`` (monotonic s), at
    ``velocity`` (units/s, 0: instant) reached in ``acceleration_time`` s, as
    ``ophyd_async.sim.SimMotor`` moves."""

    t0: float
    start: float
    target: float
    velocity: float
    acceleration_time: float

    @property
    def _distance(self) -> float:
        return abs(self.target - self.start)

    def _profile(self) -> tuple[float, float, float]:
        """Peak velocity, ramp time, duration (0 for a jump)."""
        distance, v, a = self._distance, self.velocity, self.acceleration_time
        if v <= 0.0 or distance == 0.0:
            return 0.0, 0.0, 0.0
        if a * v >= distance:  # the two ramps cover it: a triangle
            peak = math.sqrt(distance * v / a)
            return peak, distance / peak, 2 * distance / peak
        return v, a, a + distance / v

    @property
    def end(self) -> float:
        """When the motor arrives."""
        return self.t0 + self._profile()[2]

    def position(self, t: float) -> float:
        """Where the move has the motor at ``t`` (``start`` before it began,
        ``target`` once done)."""
        peak, ramp, duration = self._profile()
        s = t - self.t0
        if s < 0.0:
            return self.start
        if s >= duration:
            return self.target
        if s < ramp:
            covered = peak * s * s / (2 * ramp)
        elif s > duration - ramp:
            left = duration - s
            covered = self._distance - peak * left * left / (2 * ramp)
        else:
            covered = peak * (s - ramp / 2)
        return self.start + math.copysign(covered, self.target - self.start)

    def time_at(self, position: float) -> float:
        """When the move passes ``position`` (``inf`` if it does not)."""
        peak, ramp, duration = self._profile()
        covered = (position - self.start) * math.copysign(1.0, self.target - self.start)
        if duration == 0.0 or not 0.0 <= covered <= self._distance:
            return math.inf
        ramp_distance = peak * ramp / 2
        if covered < ramp_distance:
            s = math.sqrt(2 * covered * ramp / peak)
        elif covered > self._distance - ramp_distance:
            s = duration - math.sqrt(2 * (self._distance - covered) * ramp / peak)
        else:
            s = covered / peak + ramp / 2
        return self.t0 + s


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
    """A motor's position at any instant, from its moves (see the module)."""

    def __init__(self, motor: TrackedMotor) -> None:
        self.motor = motor
        self._lock = threading.Lock()
        self._moves: deque[Move] = deque(maxlen=KEPT_MOVES)
        self._rest = math.nan  # the latest readback
        self._velocity = 0.0
        self._acceleration_time = 0.0
        self._setpoint = math.nan
        self._subscriptions: list[tuple[_Subscribable, Callable[..., None]]] = []

    @property
    def name(self) -> str:
        return self.motor.name

    # -- subscriptions -----------------------------------------------------------------
    def attach(self) -> None:
        """Follow the motor's readback, setpoint, velocity and acceleration
        time (in the RunEngine's loop: see :func:`in_bluesky_loop`)."""
        acceleration: _Subscribable | None = getattr(
            self.motor, "acceleration_time", None
        )
        for signal, handler in (
            (self.motor.velocity, self._on_velocity),
            (acceleration, self._on_acceleration_time),
            (self.motor.user_readback, self._on_readback),
            (self.motor.user_setpoint, self._on_setpoint),
        ):
            if signal is not None:
                signal.subscribe_reading(handler)
                self._subscriptions.append((signal, handler))

    def detach(self) -> None:
        """Stop following the motor."""
        for signal, handler in self._subscriptions:
            signal.clear_sub(handler)
        self._subscriptions.clear()

    def _on_readback(self, reading: dict[str, Reading]) -> None:
        with self._lock:
            self._rest = float(_value(reading))

    def _on_setpoint(self, reading: dict[str, Reading]) -> None:
        value = float(_value(reading))
        now = time.monotonic()
        with self._lock:
            if not math.isnan(self._setpoint) and value != self._setpoint:
                # a move begins, from where the motor is: mid-move where the
                # profile has it, at rest where its readback says
                moving = bool(self._moves) and now < self._moves[-1].end
                start = self._position(now) if moving else self._rest
                self._moves.append(
                    Move(now, start, value, self._velocity, self._acceleration_time)
                )
            self._setpoint = value

    def _on_velocity(self, reading: dict[str, Reading]) -> None:
        with self._lock:
            self._velocity = abs(float(_value(reading)))

    def _on_acceleration_time(self, reading: dict[str, Reading]) -> None:
        with self._lock:
            self._acceleration_time = abs(float(_value(reading)))

    # -- where it is -------------------------------------------------------------------
    def position(self, t: float) -> float:
        """The position at the ``time.monotonic()`` instant ``t`` (NaN before
        the first readback and move)."""
        with self._lock:
            return self._position(t)

    def velocity(self) -> float:
        """The motor's velocity (units/s, >= 0; 0 for an instant motor)."""
        with self._lock:
            return self._velocity

    def time_at(self, position: float) -> float:
        """When the motor's latest move passes ``position`` (``inf`` if it
        does not: no move, an instant one, or not on its way)."""
        with self._lock:
            return self._moves[-1].time_at(position) if self._moves else math.inf

    def _position(self, t: float) -> float:
        for move in reversed(self._moves):
            if move.t0 <= t:
                return move.position(t)
        # before the moves kept: where the first began, else the readback
        return self._moves[0].start if self._moves else self._rest


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
