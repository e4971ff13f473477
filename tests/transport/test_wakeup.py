"""Wakeup.until: a cancelled waiter ends, whatever else happens in that tick.

A run's waiter (RunWatch's frame wait) is cancelled when the device FAULTs;
if a frame's notification lands in the same loop iteration, the cancel must
still end the wait (Python 3.11's ``asyncio.wait_for`` returns the inner
result instead and swallows the cancel: the watch then hung until the stall
time-out, and ``trigger()`` failed with ophyd-async's generic time-out instead
of the FAULT).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ophyd_xspress.transport._wakeup import Wakeup


def far_deadline() -> float:
    return time.monotonic() + 60.0


def never_fails() -> BaseException | None:
    return None


async def wait_forever(wakeup: Wakeup) -> None:
    await wakeup.until(lambda: False, never_fails, far_deadline, TimeoutError)


@pytest.mark.parametrize("ticks_between", [0, 1, 2, 3])
async def test_a_cancel_meeting_a_notification_ends_the_wait(
    ticks_between: int,
) -> None:
    wakeup = Wakeup()
    task = asyncio.ensure_future(wait_forever(wakeup))
    await asyncio.sleep(0)  # the task now waits on its event
    wakeup.notify(False)
    for _ in range(ticks_between):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    assert done == {task}, "the cancelled waiter is still waiting"
    assert task.cancelled()


async def test_a_notification_re_checks_the_condition_and_the_deadline() -> None:
    wakeup = Wakeup()
    state = {"ready": False}
    deadline = time.monotonic() + 0.2
    task = asyncio.ensure_future(
        wakeup.until(
            lambda: state["ready"], never_fails, lambda: deadline, TimeoutError
        )
    )
    await asyncio.sleep(0.01)
    wakeup.notify(False)  # nothing changed: keeps waiting
    await asyncio.sleep(0.01)
    assert not task.done()
    state["ready"] = True
    wakeup.notify(False)
    await asyncio.wait_for(task, 1.0)
    assert task.result() is None


async def test_the_deadline_raises_its_error() -> None:
    wakeup = Wakeup()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="late"):
        await wakeup.until(
            lambda: False,
            never_fails,
            lambda: t0 + 0.1,
            lambda: TimeoutError("late"),
        )
    assert time.monotonic() - t0 >= 0.1
