"""Where a motor is at any instant, from its moves' profiles."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ophyd_xspress.maps import MotorTracker


class _Signal:
    """A signal that calls its subscribers with each value it is given."""

    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value
        self.subscribers: list[Callable[..., None]] = []

    def subscribe_reading(self, function: Callable[..., None]) -> None:
        self.subscribers.append(function)
        function({self.name: {"value": self.value, "timestamp": 0.0}})

    def clear_sub(self, function: Callable[..., None]) -> None:
        self.subscribers.remove(function)

    def put(self, value: float) -> None:
        self.value = value
        for function in list(self.subscribers):
            function({self.name: {"value": value, "timestamp": 0.0}})


class _Motor:
    def __init__(
        self, position: float = 0.0, velocity: float = 0.0, acceleration: float = 0.0
    ) -> None:
        self.name = "m"
        self.user_readback = _Signal("m", position)
        self.user_setpoint = _Signal("m-setpoint", position)
        self.velocity = _Signal("m-velocity", velocity)
        self.acceleration_time = _Signal("m-acceleration_time", acceleration)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``time.monotonic`` as the tracker sees it, set by the test."""

    class Clock:
        now = 100.0

    monkeypatch.setattr(time, "monotonic", lambda: Clock.now)
    return Clock


def test_an_instant_motor_jumps_when_its_setpoint_changes(clock: Any) -> None:
    motor = _Motor(0.0)
    tracker = MotorTracker(motor)
    tracker.attach()
    assert tracker.position(50.0) == 0.0  # at rest: its readback
    clock.now = 101.0
    motor.user_setpoint.put(2.0)
    motor.user_readback.put(2.0)
    assert tracker.position(100.999) == 0.0
    assert tracker.position(101.0) == 2.0
    assert tracker.position(150.0) == 2.0  # velocity 0: it stays
    assert math.isinf(tracker.time_at(1.0))  # a jump passes nothing
    tracker.detach()
    assert not motor.user_readback.subscribers
    assert not motor.acceleration_time.subscribers


def test_a_move_ramps_up_cruises_and_ramps_down(clock: Any) -> None:
    """10 units at 10/s reached in 0.2 s: 1 unit on each ramp, 1.2 s long."""
    motor = _Motor(0.0, velocity=10.0, acceleration=0.2)
    tracker = MotorTracker(motor)
    tracker.attach()
    clock.now = 101.0
    motor.user_setpoint.put(10.0)  # the move begins at 101.0
    # readbacks, late or not, change nothing while it moves
    clock.now = 101.35
    motor.user_readback.put(1.0)
    assert tracker.position(100.9) == 0.0
    assert tracker.position(101.1) == pytest.approx(0.25)  # half way up the ramp
    assert tracker.position(101.2) == pytest.approx(1.0)
    assert tracker.position(101.5) == pytest.approx(4.0)  # cruising at 10/s
    assert tracker.position(102.1) == pytest.approx(9.75)
    assert tracker.position(102.2) == 10.0
    assert tracker.position(103.0) == 10.0
    for t in (101.05, 101.1, 101.3, 101.7, 102.05, 102.15):
        assert tracker.time_at(tracker.position(t)) == pytest.approx(t)
    assert math.isinf(tracker.time_at(11.0))  # beyond the setpoint
    assert math.isinf(tracker.time_at(-1.0))  # behind its start
    assert tracker.velocity() == 10.0


def test_a_short_move_is_a_triangle_and_backwards_is_the_same(clock: Any) -> None:
    """1 unit at up to 10/s, 0.2 s to full speed (50/s^2): it turns back
    down half way, at sqrt(50)/s, after 1/sqrt(50) s."""
    motor = _Motor(5.0, velocity=10.0, acceleration=0.2)
    tracker = MotorTracker(motor)
    tracker.attach()
    clock.now = 101.0
    motor.user_setpoint.put(4.0)
    ramp = 1.0 / math.sqrt(50.0)
    assert tracker.position(101.0 + ramp) == pytest.approx(4.5)
    assert tracker.position(101.0 + 2 * ramp) == 4.0
    assert tracker.time_at(4.5) == pytest.approx(101.0 + ramp)
    # a new move from where it is at rest: its readback
    motor.user_readback.put(4.0)
    clock.now = 110.0
    motor.user_setpoint.put(4.5)
    assert tracker.position(110.0) == 4.0
    assert tracker.position(111.0) == 4.5


def test_a_move_begun_mid_move_starts_where_the_motor_is(clock: Any) -> None:
    motor = _Motor(0.0, velocity=1.0)  # no acceleration: full speed at once
    tracker = MotorTracker(motor)
    tracker.attach()
    clock.now = 101.0
    motor.user_setpoint.put(10.0)
    clock.now = 103.0
    motor.user_setpoint.put(0.0)  # turned back at 2.0
    assert tracker.position(102.0) == pytest.approx(1.0)
    assert tracker.position(104.0) == pytest.approx(1.0)
    assert tracker.position(106.0) == 0.0


def test_before_any_readback_the_position_is_unknown() -> None:
    tracker = MotorTracker(_Motor())  # never attached
    assert math.isnan(tracker.position(0.0))
    assert math.isinf(tracker.time_at(0.0))


async def test_the_profile_is_a_sim_motor_s() -> None:
    """A real ``SimMotor``: each readback update is late but never early
    against the profile, and the profile puts the updates' values exactly
    the 10 Hz apart at which the motor computes them (the wall clock's
    jitter does not enter)."""
    from ophyd_async.core import init_devices
    from ophyd_async.sim import SimMotor

    async with init_devices():
        motor = SimMotor(instant=False)
    await motor.velocity.set(20.0)
    await motor.acceleration_time.set(0.15)
    tracker = MotorTracker(motor)
    tracker.attach()
    updates: list[tuple[float, float]] = []  # (arrival, value)

    def on_readback(reading: dict[str, Any]) -> None:
        (only,) = reading.values()
        updates.append((time.monotonic(), float(only["value"])))

    motor.user_readback.subscribe_reading(on_readback)
    await motor.set(5.0)  # 0.15 s up, 0.1 s cruise, 0.15 s down
    await asyncio.sleep(0)
    motor.user_readback.clear_sub(on_readback)
    tracker.detach()
    arrivals, values = np.array(updates[1:]).T  # the first: at subscription
    assert values[-1] == 5.0
    assert len(values) == 4  # 0.1, 0.2, 0.3 s and the end, 0.4 s
    times = np.array([tracker.time_at(v) for v in values])
    assert (times <= arrivals).all()
    np.testing.assert_allclose(np.diff(times), 0.1, rtol=0, atol=1e-9)
