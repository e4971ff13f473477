"""Arming, waiting and stopping (ophyd-async acquire logic), and how a failed
acquisition reaches the plan with its true cause.

ophyd-async waits for an acquisition by watching the collections-written
counter (``frames_done``) with a per-update time-out, and calls
:meth:`XspressAcquireLogic.wait_for_idle` only once the counter reached its
target. A stream that stalls, a device in FAULT or a sink that fails would then
surface as ophyd-async's generic time-out, long after the fact. So each
acquisition has a :class:`RunWatch`: a task started with the acquisition that
waits for its frames and watches the device. While the acquisition is healthy
the watch re-publishes the counter every :data:`HEARTBEAT` seconds (so the
generic time-out never pre-empts the watch's better-informed one); when it
fails, or when unstage ends it early, the watch *releases* the counter
(:meth:`StreamSession.release`), ophyd-async stops waiting and calls
``wait_for_idle``, which raises the watch's error. Stream documents never
claim a released row: they follow ``frames_stored``, the true count.

This is the one workaround for a hook ophyd-async 0.21 lacks (a way for the
acquire logic to fail a ``trigger()`` / ``complete()`` in progress, e.g. a
``DetectorAcquireLogic.watch_for_errors()`` raced against the counter);
``tests/device/test_acquire_logic.py`` tests it against the installed version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from ophyd_async.core import DetectorAcquireLogic, DetectorTrigger

from ..transport import Run
from ._control import XspressControl
from ._session import StreamSession
from ._settings import AcquisitionSettings

__all__ = ["HEARTBEAT", "RunWatch", "XspressAcquireLogic"]

log = logging.getLogger("ophyd_xspress.device")

#: Seconds between re-publications of the counter while an acquisition is
#: healthy (well below ophyd-async's shortest per-update time-out).
HEARTBEAT: Final = 0.25
#: Seconds between FAULT checks of the device during an acquisition.
FAULT_POLL: Final = 0.5
#: Extra time for the sink to store what arrived (beyond the stall time-out).
STORE_GRACE: Final = 30.0


class RunWatch:
    """Waits for one run's frames and watches the device while it acquires."""

    def __init__(
        self,
        run: Run,
        session: StreamSession,
        control: XspressControl | None,
        stall_timeout: float,
        name: str,
    ) -> None:
        self.run = run
        self.session = session
        self.control = control
        self.stall_timeout = stall_timeout
        self.name = name
        self.task: asyncio.Task[None] = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        run = self.run
        try:
            await self._until_done()
        except Exception:
            self.session.release(run)
            raise
        if run.closed and not run.done:
            # unstaged mid-acquisition (an aborted or stopped plan): end the
            # wait quietly; failing it would turn the abort into a failure
            log.info(
                "%s: complete() ended: the detector was unstaged after %d of %s frames",
                self.name,
                run.received,
                run.expected if run.expected is not None else "?",
            )
            self.session.release(run)

    async def _until_done(self) -> None:
        waits = [asyncio.ensure_future(self.run.wait(self.stall_timeout))]
        if self.control is not None:
            waits.append(asyncio.ensure_future(self._fault_poll(self.control)))
        beat = asyncio.ensure_future(self._heartbeat())
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (*waits, beat):
                task.cancel()
            for task in (*waits, beat):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _fault_poll(self, control: XspressControl) -> None:
        while True:
            await control.raise_if_fault()
            await asyncio.sleep(FAULT_POLL)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            self.session.heartbeat()

    async def finish(self) -> None:
        """After the run was ended: let the watch see it and end (releasing
        any ``complete()`` still waiting), whatever its outcome."""
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self.task), HEARTBEAT)
        if not self.task.done():  # pragma: no cover - a closed run ends at once
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class XspressAcquireLogic(DetectorAcquireLogic):
    """Subscribe before Arm; Arm (+ SoftwareTrigger for INTERNAL); Stop on unstage."""

    def __init__(
        self,
        control: XspressControl | None,
        session: StreamSession,
        settings: AcquisitionSettings,
        name: str = "",
    ) -> None:
        self.control = control
        self.session = session
        self.settings = settings
        self.name = name
        self.watch: RunWatch | None = None

    async def ensure_ready(self) -> None:
        await self._end_watch()
        if self.control is not None:
            await self.control.stop_if_running(self.settings.stall_timeout)
        self.session.reset()
        await self.session.start()
        if self.control is not None:
            await self.control.raise_if_fault()

    async def start_acquiring(self) -> None:
        watch = self.watch
        if watch is not None and not watch.task.done():
            return  # a later kickoff of the same acquisition: it is running
        if watch is not None:
            self.watch = None
            self.session.end_run()
            watch.task.result()  # the previous part failed: say why
        await self.session.start()  # no-op when staged; covers unstaged use
        run = self.session.begin_run(self.settings.num)
        c = self.control
        if c is not None:
            await c.raise_if_fault()
            await c.arm.trigger()
            if self.settings.trigger is DetectorTrigger.INTERNAL:
                await c.software_trigger.trigger()
        self.watch = RunWatch(
            run,
            self.session,
            c,
            self.settings.stall_timeout_for_run(),
            self.name,
        )

    async def wait_for_idle(self) -> None:
        watch, self.watch = self.watch, None
        if watch is None:
            return
        try:
            await watch.task
            if not watch.run.closed:
                await watch.run.wait_stored(
                    timeout=self.settings.stall_timeout_for_run() + STORE_GRACE
                )
            if self.control is not None:
                await self.control.wait_not_running(self.settings.stall_timeout)
        finally:
            self.session.end_run()

    async def ensure_stopped(self) -> None:
        try:
            if self.control is not None:
                await self.control.stop_if_running(self.settings.stall_timeout)
        finally:
            await self._end_watch()
            await self.session.stop()

    async def _end_watch(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:
            self.session.end_run()  # the watch sees the run closed and ends
            await watch.finish()
