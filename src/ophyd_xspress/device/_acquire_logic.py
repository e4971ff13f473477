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
import time
from typing import Final

from ophyd_async.core import DEFAULT_TIMEOUT, DetectorAcquireLogic, DetectorTrigger

from ..transport import Run, StreamStalledError
from ._control import XspressControl
from ._session import StreamSession
from ._settings import AcquisitionSettings
from ._tango_errors import (
    DeviceBusyError,
    device_errors,
    is_unreachable,
    progress,
    summary,
)
from ._tango_signals import answers, is_stale, mark_stale, reconnect

__all__ = [
    "HEARTBEAT",
    "AcquisitionInProgressError",
    "RunWatch",
    "TriggerTimeoutError",
    "XspressAcquireLogic",
]

log = logging.getLogger("ophyd_xspress.device")

#: Seconds between re-publications of the counter while an acquisition is
#: healthy (well below ophyd-async's shortest per-update time-out).
HEARTBEAT: Final = 0.25
#: Seconds between FAULT checks of the device during an acquisition.
FAULT_POLL: Final = 0.5
#: Extra time for the sink to store what arrived (beyond the stall time-out).
STORE_GRACE: Final = 30.0
#: Seconds to connect again to a device whose server restarted (at stage).
RECONNECT_TIMEOUT: Final = DEFAULT_TIMEOUT


class TriggerTimeoutError(TimeoutError):
    """The device waited longer than ``trigger_timeout`` for an external trigger."""


class AcquisitionInProgressError(RuntimeError):
    """``stage()`` while an acquisition of the same detector is running."""


class RunWatch:
    """Waits for one run's frames and watches the device while it acquires.

    A silent stream is a stall, except with external triggers while the
    device is RUNNING and has acquired no more frames than arrived: then it is
    waiting for triggers, and only ``trigger_timeout`` (or the plan) limits
    the wait.
    """

    def __init__(
        self,
        run: Run,
        session: StreamSession,
        control: XspressControl | None,
        settings: AcquisitionSettings,
        name: str,
    ) -> None:
        self.run = run
        self.session = session
        self.control = control
        self.stall_timeout = settings.stall_timeout_for_run()
        self.external = settings.trigger is not DetectorTrigger.INTERNAL
        self.trigger_timeout = settings.trigger_timeout
        self.name = name
        #: While waiting for triggers: what the device said (for messages).
        self.waiting: str | None = None
        #: Set when the watch ends (its polls stop).
        self.ended = asyncio.Event()
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
                "%s: complete() ended: the detector was unstaged after %d of %s "
                "frames%s",
                self.name,
                run.received,
                run.expected if run.expected is not None else "?",
                f" ({self.waiting})" if self.waiting else "",
            )
            self.session.release(run)

    async def _until_done(self) -> None:
        waits = [asyncio.ensure_future(self._frames())]
        if self.control is not None:
            waits.append(asyncio.ensure_future(self._fault_poll(self.control)))
        beat = asyncio.ensure_future(self._heartbeat())
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            self.ended.set()
            for task in (*waits, beat):
                task.cancel()
            for task in (*waits, beat):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _frames(self) -> None:
        since = 0.0
        # ends on the flag too, as _fault_poll does: a cancel swallowed by a
        # signal read below would otherwise start another stall-long wait
        while not self.ended.is_set():
            try:
                await self.run.wait(self.stall_timeout, since)
                return
            except StreamStalledError as stall:
                if not self.external or self.control is None:
                    raise
                await self._still_waiting_for_triggers(self.control, stall)
                since = time.monotonic()

    async def _still_waiting_for_triggers(
        self, control: XspressControl, stall: StreamStalledError
    ) -> None:
        """No frame for the stall time-out with external triggers: return if the
        device is only waiting for triggers; raise what it really is."""
        run = self.run
        with device_errors(self.name, control, run):
            state, acquired = await asyncio.gather(
                control.state_name(), control.n_frames_acquired.get_value()
            )
        expected = run.expected if run.expected is not None else "?"
        if state != "RUNNING" or acquired > run.received:
            raise StreamStalledError(
                f"{stall}; the device {control.trl} is {state} and acquired "
                f"{acquired} of {expected} frames"
            ) from None
        waited = time.monotonic() - run.last_frame_time
        first = self.waiting is None
        self.waiting = (
            f"no trigger for {waited:.1f} s (device RUNNING, {acquired} of "
            f"{expected} frames acquired)"
        )
        if self.trigger_timeout is not None and waited >= self.trigger_timeout:
            raise TriggerTimeoutError(f"{self.name}: {self.waiting}")
        if first:
            log.info("%s: waiting for triggers: %s", self.name, self.waiting)

    async def _fault_poll(self, control: XspressControl) -> None:
        # Ends on the flag, not only on cancel(): on Python 3.11 the
        # asyncio.wait_for inside a signal read can swallow a cancel() that
        # meets its result, and a `while True` poll would then never end.
        while not self.ended.is_set():
            with device_errors(self.name, control, self.run):
                await control.raise_if_fault()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FAULT_POLL):
                    await self.ended.wait()

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

    def refuse_while_acquiring(self) -> None:
        """Raise :class:`AcquisitionInProgressError` while an acquisition runs.

        A second ``stage()`` (a nested plan staging the detector again, or a
        second script using the same object) would otherwise Stop the
        acquisition in progress, end its run quietly (the plan ends in
        success with frames missing) and reset the anomaly counts; refused,
        the acquisition goes on.
        """
        watch = self.watch
        if watch is None or watch.task.done():
            return
        run = watch.run
        expected = run.expected if run.expected is not None else "?"
        raise AcquisitionInProgressError(
            f"{self.name}: cannot stage while an acquisition is running "
            f"({run.received} of {expected} frames received so far); it goes "
            "on: wait for it to complete, or unstage the detector to stop it, "
            "then stage again (a nested plan must not stage a detector that "
            "its outer plan staged)"
        )

    async def ensure_ready(self) -> None:
        self.refuse_while_acquiring()
        await self._end_watch()
        c = self.control
        if c is not None:
            with device_errors(self.name, c):
                await self._reach(c)
                await c.stop_if_running(self.settings.stall_timeout)
        self.session.reset()
        await self.session.start()
        if c is not None:
            with device_errors(self.name, c):
                await c.raise_if_fault()

    async def _reach(self, control: XspressControl) -> None:
        """Make sure the device answers; once its server was found
        unreachable (by any call since the last connect) or restarted, connect
        again with fresh proxies (see :mod:`._tango_signals`)."""
        if not is_stale(control):
            try:
                await control.state_name()
                return
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
        await answers(control.trl)  # a new proxy does: the server is back
        log.info(
            "%s: the Tango device at %s answers again: reconnecting",
            self.name,
            control.trl,
        )
        await reconnect(control, RECONNECT_TIMEOUT)
        await control.state_name()

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
            with device_errors(self.name, c, run):
                await self._refuse_if_busy(c, run)
            with device_errors(self.name, c, run, "Arm"):
                await c.arm.trigger()
            if self.settings.trigger is DetectorTrigger.INTERNAL:
                with device_errors(self.name, c, run, "SoftwareTrigger"):
                    await c.software_trigger.trigger()
        self.watch = RunWatch(run, self.session, c, self.settings, self.name)

    async def _refuse_if_busy(self, control: XspressControl, run: Run) -> None:
        """Before Arm: a device in FAULT, or RUNNING an acquisition this
        detector did not start (stage and every wait_for_idle leave it
        STANDBY: another client armed it), is not armed."""
        state = await control.state_name()
        if state == "FAULT":
            await control.raise_if_fault()
        if state == "RUNNING":
            raise DeviceBusyError(
                f"{self.name}: the Tango device at {control.trl} is RUNNING an "
                "acquisition this detector did not start (another client armed "
                f"it), so it was not armed ({progress(run)}); stop the other "
                "acquisition (staging again Stops it), then retry"
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
                with device_errors(self.name, self.control, watch.run):
                    await self.control.wait_not_running(self.settings.stall_timeout)
        finally:
            self.session.end_run()

    async def ensure_stopped(self) -> None:
        try:
            c = self.control
            if c is not None:
                with device_errors(self.name, c, self.session.run, "Stop"):
                    await self._stop_if_reachable(c)
        finally:
            await self._end_watch()
            await self.session.stop()

    async def _stop_if_reachable(self, control: XspressControl) -> None:
        """Stop a RUNNING device. One that does not answer is logged, not
        raised: unstage runs after a failure too, and the failure the plan
        reports (the acquisition's, with its frame counts) must stay the one
        the user reads; the next stage reconnects or says so."""
        try:
            await control.stop_if_running(self.settings.stall_timeout)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            mark_stale(control)
            log.warning(
                "%s: could not Stop the Tango device at %s: it restarted or is "
                "unreachable (%s)",
                self.name,
                control.trl,
                summary(exc),
            )

    async def _end_watch(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:
            self.session.end_run()  # the watch sees the run closed and ends
            await watch.finish()
