"""Where a motor is at any instant, from its readback updates."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

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
    def __init__(self, position: float = 0.0, velocity: float = 0.0) -> None:
        self.name = "m"
        self.user_readback = _Signal("m", position)
        self.user_setpoint = _Signal("m-setpoint", position)
        self.velocity = _Signal("m-velocity", velocity)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``time.monotonic`` as the tracker sees it, set by the test."""

    class Clock:
        now = 100.0

    monkeypatch.setattr(time, "monotonic", lambda: Clock.now)
    return Clock


def test_an_instant_motor_jumps_when_its_readback_changes(clock: Any) -> None:
    motor = _Motor(0.0)
    tracker = MotorTracker(motor)
    tracker.attach()
    clock.now = 101.0
    motor.user_setpoint.put(2.0)
    motor.user_readback.put(2.0)
    assert tracker.position(100.5) == 0.0
    assert tracker.position(100.999) == 0.0
    assert tracker.position(101.0) == 2.0
    assert tracker.position(150.0) == 2.0  # velocity 0: it stays
    assert math.isinf(tracker.time_at(3.0))
    tracker.detach()
    assert not motor.user_readback.subscribers


def test_a_moving_motor_is_interpolated_and_carried_on(clock: Any) -> None:
    motor = _Motor(0.0, velocity=10.0)
    tracker = MotorTracker(motor)
    tracker.attach()
    clock.now = 101.0
    motor.user_setpoint.put(5.0)  # the move begins at 101.0
    for k in range(1, 4):  # readbacks at 10 Hz, at 10 units/s
        clock.now = 101.0 + 0.1 * k
        motor.user_readback.put(1.0 * k)
    assert tracker.position(100.9) == 0.0
    assert tracker.position(101.05) == pytest.approx(0.5)
    assert tracker.position(101.25) == pytest.approx(2.5)
    # after the last update it moves on at its velocity, up to its setpoint
    assert tracker.position(101.35) == pytest.approx(3.5)
    assert tracker.position(102.0) == 5.0
    assert tracker.time_at(4.0) == pytest.approx(101.4)
    assert math.isinf(tracker.time_at(6.0))  # beyond the setpoint
    assert tracker.latest_update() == pytest.approx(101.3)
    assert tracker.velocity() == 10.0


def test_a_late_start_is_a_late_start(clock: Any) -> None:
    """Between a readback at rest and one far away the motor left as late as
    it could at its velocity, not at the first update."""
    motor = _Motor(0.0, velocity=1.0)
    tracker = MotorTracker(motor)
    tracker.attach()
    clock.now = 110.0
    motor.user_readback.put(2.0)
    assert tracker.position(105.0) == 0.0
    assert tracker.position(108.0) == 0.0
    assert tracker.position(109.0) == pytest.approx(1.0)
    assert tracker.position(99.0) == 0.0  # before the first update: its value


def test_before_any_update_the_position_is_unknown() -> None:
    tracker = MotorTracker(_Motor())  # never attached
    assert math.isnan(tracker.position(0.0))
    assert tracker.latest_update() == -math.inf
