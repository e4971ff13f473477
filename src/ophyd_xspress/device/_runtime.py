"""State shared by the trigger, acquire and data logics of one XspressDetector.

Like the pattern generator of ophyd-async's simulated blob detector, this is the
one object the small logic classes talk through: it owns the stream receiver,
the current run, the frames-written counter and the data sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from ophyd_async.core import DetectorTrigger, SignalR, soft_signal_r_and_setter

from ..protocol import Frame
from ..transport import FrameSink, RunTracker, StreamReceiver
from ._control import XspressControl
from ._rois import Calibration, Roi

__all__ = ["DataMode", "LatestFrames", "XspressRuntime"]

log = logging.getLogger("ophyd_xspress.device")

DataMode = Literal["auto", "inline", "hdf5"]


class LatestFrames:
    """A sink keeping the frames of the current step (inline readings)."""

    def __init__(self) -> None:
        self.frames: dict[int, Frame] = {}

    def put(self, row: int, frame: Frame) -> None:
        self.frames[row] = frame

    def flush(self) -> None:
        return None

    def clear(self) -> None:
        self.frames.clear()


@dataclass
class XspressRuntime:
    """Everything the logics share (one per detector)."""

    name: str
    stream: str
    socket: Literal["sub", "pull"]
    control: XspressControl | None
    channels: int
    bins: int
    calibration: Calibration
    rois: list[Roi]
    data_mode: DataMode
    stall_timeout: float
    connect_timeout: float
    receiver: StreamReceiver = field(init=False)
    trigger: DetectorTrigger = DetectorTrigger.INTERNAL
    num: int = 1
    livetime: float = 0.0
    deadtime: float = 0.0
    hdf5_active: bool = False
    run: RunTracker | None = None
    sink: FrameSink | None = None
    latest: LatestFrames = field(default_factory=LatestFrames)
    frames_base: int = 0
    anomalies: Counter[str] = field(default_factory=Counter)
    last_header: dict[str, Any] = field(default_factory=dict)
    run_summaries: list[dict[str, object]] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        self.receiver = StreamReceiver(self.stream, self.socket)
        self.frames_done: SignalR[int]
        self.frames_done, self._set_frames_done = soft_signal_r_and_setter(int, 0)
        self.header_filename, self._set_header_filename = soft_signal_r_and_setter(
            str, ""
        )

    @property
    def active(self) -> bool:
        """True when we arm the detector (Tango), False in passive mode."""
        return self.control is not None

    # -- receiver ----------------------------------------------------------------
    async def start_receiver(self) -> None:
        if not self.receiver.running:
            timeout = self.connect_timeout if self.active else None
            await asyncio.to_thread(self.receiver.start, timeout)

    async def stop_receiver(self) -> None:
        if self.run is not None:
            self.end_run()
        if self.receiver.running:
            await asyncio.to_thread(self.receiver.stop)

    # -- runs ------------------------------------------------------------------------
    def begin_run(self) -> RunTracker:
        """Announce the frames of the next acquisition to the receiver."""
        if self.run is not None:
            self.end_run()
        self._loop = asyncio.get_running_loop()
        sink = self.sink if self.sink is not None else self.latest
        if sink is self.latest:
            self.latest.clear()
        base = self.frames_base
        loop = self._loop
        setter = self._set_frames_done

        def progress(contiguous: int) -> None:
            loop.call_soon_threadsafe(setter, base + contiguous)

        self.run = self.receiver.begin(
            self.num,
            sink,
            active=self.active,
            row_offset=base if sink is not self.latest else 0,
            on_progress=progress,
        )
        return self.run

    def end_run(self) -> None:
        run = self.run
        if run is None:
            return
        self.receiver.end(run)
        self.run = None
        summary = run.summary()
        self.run_summaries.append(summary)
        del self.run_summaries[:-1000]
        for key in ("missing", "repeated", "out_of_order"):
            value = summary[key]
            if isinstance(value, list) and value:
                self.anomalies[key] += len(value)
        stale = summary["stale_discarded"]
        if isinstance(stale, int) and stale:
            self.anomalies["stale"] += stale
        if run.header is not None:
            self.last_header = run.header.to_wire()
            if run.header.filename:
                self._set_header_filename(run.header.filename)
        self.frames_base += run.contiguous
        self._set_frames_done(self.frames_base)

    def reset_counts(self) -> None:
        self.frames_base = 0
        self._set_frames_done(0)
        self.anomalies.clear()

    # -- waiting -----------------------------------------------------------------------
    def stall_timeout_for_run(self) -> float:
        period = self.livetime + self.deadtime
        return self.stall_timeout + 2 * period

    async def watch(self, run: RunTracker) -> None:
        """Return when ``run`` has its frames; raise on stall, FAULT or error."""
        tasks = [asyncio.ensure_future(run.wait(self.stall_timeout_for_run()))]
        if self.control is not None:
            tasks.append(asyncio.ensure_future(self._watch_fault()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def check_fault(self) -> None:
        control = self.control
        if control is None:
            return
        state = await control.state.get_value()
        if str(getattr(state, "value", state)).upper() == "FAULT":
            status = await control.status.get_value()
            raise DetectorFaultError(
                f"Xspress3 {control.trl} is in FAULT: {status}".rstrip()
            )

    async def _watch_fault(self) -> None:
        while True:
            await self.check_fault()
            await asyncio.sleep(0.5)

    async def wait_not_running(self, timeout: float) -> None:
        control = self.control
        if control is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = await control.state.get_value()
            name = str(getattr(state, "value", state)).upper()
            if name == "FAULT":
                await self.check_fault()
            if name != "RUNNING":
                return
            if loop.time() > deadline:
                raise DeviceStuckError(
                    f"Xspress3 {control.trl} still RUNNING {timeout:.1f} s after its "
                    "last frame arrived"
                )
            await asyncio.sleep(0.01)


class DetectorFaultError(RuntimeError):
    """The Xspress3 device is in FAULT (its status string says why)."""


class DeviceStuckError(TimeoutError):
    """The device did not return to STANDBY after its frames arrived."""
