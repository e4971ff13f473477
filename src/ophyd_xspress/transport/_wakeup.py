"""Waking the waiters of a run: asyncio tasks in any event loop, and threads.

A run changes on the receiver thread and on the sink's writer thread; its
waiters sit in event loops (the RunEngine's) or block in threads. :class:`Wakeup`
holds them, and :meth:`Wakeup.until` waits, event-driven, for a condition with
a deadline that is re-read after every wake-up (a stall is a deadline counted
from the last frame, not a poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

__all__ = ["Wakeup"]


class Wakeup:
    """Waiters of one run, woken by :meth:`notify` from any thread."""

    def __init__(self) -> None:
        self._finished = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def notify(self, finished: bool) -> None:
        """Something changed; ``finished``: the run is over (done or closed)."""
        if finished:
            self._finished.set()
        for loop, event in list(self._waiters):
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    def wait_finished(self, timeout: float) -> bool:
        """Block a thread until the run is over (or ``timeout``)."""
        return self._finished.wait(timeout)

    async def until(
        self,
        ready: Callable[[], bool],
        failed: Callable[[], BaseException | None],
        deadline: Callable[[], float],
        on_timeout: Callable[[], BaseException],
    ) -> None:
        """Return when ``ready()``; raise ``failed()`` when it is not None, or
        ``on_timeout()`` once ``deadline()`` (re-read after every wake-up, in
        ``time.monotonic()`` seconds) has passed."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        self._waiters.append(entry)
        try:
            while True:
                event.clear()
                error = failed()
                if error is not None:
                    raise error
                if ready():
                    return
                left = deadline() - time.monotonic()
                if left <= 0:
                    raise on_timeout()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for
                # returns the inner result when a cancel() meets it in the same
                # tick, and the cancelled waiter would wait on (a FAULT seen by
                # RunWatch then waited for the stall time-out)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await event.wait()
        finally:
            self._waiters.remove(entry)
