"""Trigger, acquire and data logics of :class:`XspressDetector` (ophyd-async 0.21)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from ophyd_async.core import (
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTrigger,
    DetectorTriggerLogic,
    PathProvider,
    ReadableDataProvider,
    SignalDict,
    SignalR,
    StreamableDataProvider,
    TriggerInfo,
)

from ..hdf5 import Hdf5FrameWriter
from ._providers import (
    Hdf5DataProvider,
    InlineDataProvider,
    ProgressOnlyProvider,
    hinted_keys,
)
from ._rois import windows_array
from ._runtime import XspressRuntime

__all__ = [
    "MIN_LATENCY",
    "READOUT_TIME",
    "XspressAcquireLogic",
    "XspressHdf5DataLogic",
    "XspressInlineDataLogic",
    "XspressTriggerLogic",
]

log = logging.getLogger("ophyd_xspress.device")

#: Fixed readout time the device subtracts from every frame (s).
READOUT_TIME = 25e-9
#: Smallest LatencyTime (s); MAX IV runs with this.
MIN_LATENCY = 100e-9

_MODES = {
    DetectorTrigger.INTERNAL: "SOFTWARE",
    DetectorTrigger.EXTERNAL_EDGE: "EXTERNAL_MULTI",
    DetectorTrigger.EXTERNAL_LEVEL: "EXTERNAL_MULTI_GATE",
}


class XspressTriggerLogic(DetectorTriggerLogic):
    """INTERNAL ↔ SOFTWARE, EXTERNAL_EDGE ↔ EXTERNAL_MULTI,
    EXTERNAL_LEVEL ↔ EXTERNAL_MULTI_GATE.

    Frame time: the device's ``ExposureTime`` is the frame period including
    ``LatencyTime`` and the 25 ns readout, so ``livetime`` (the frame's ``exptime``)
    is ``ExposureTime - LatencyTime - 25 ns`` and the deadtime between frames is
    ``LatencyTime + 25 ns``.
    """

    def __init__(self, rt: XspressRuntime) -> None:
        self.rt = rt

    def config_sigs(self) -> set[SignalR[Any]]:
        c = self.rt.control
        if c is None:
            return set()
        return {c.exposure_time, c.latency_time, c.trigger_mode}

    def get_deadtime(self, config_values: SignalDict) -> float:
        c = self.rt.control
        latency = MIN_LATENCY
        if c is not None and c.latency_time in config_values:
            latency = float(config_values[c.latency_time])
        return latency + READOUT_TIME

    async def _setup(
        self,
        trigger: DetectorTrigger,
        num: int,
        livetime: float,
        deadtime: float,
    ) -> None:
        rt = self.rt
        if rt.data_mode == "inline" and num != 1:
            raise ValueError(
                f"{rt.name}: data='inline' puts one frame in each event (step "
                f"scans); a prepare for {num} frames (a fly scan) needs "
                "XspressDetector(data='auto') or data='hdf5'"
            )
        rt.trigger, rt.num = trigger, num
        c = rt.control
        if c is None:
            rt.livetime, rt.deadtime = livetime, deadtime
            return
        if num < 1:
            raise ValueError(
                f"{rt.name}: the Xspress3 needs a finite number of frames (got {num})"
            )
        if trigger is DetectorTrigger.INTERNAL:
            n_triggers, per_trigger = 1, num
        else:
            n_triggers, per_trigger = num, 1
        coros = [
            c.trigger_mode.set(_MODES[trigger]),
            c.n_triggers.set(n_triggers),
            c.n_frames_per_trigger.set(per_trigger),
        ]
        if livetime > 0 and trigger is not DetectorTrigger.EXTERNAL_LEVEL:
            latency = max(deadtime - READOUT_TIME, MIN_LATENCY)
            coros.append(c.latency_time.set(latency))
            coros.append(c.exposure_time.set(livetime + latency + READOUT_TIME))
        await asyncio.gather(*coros)
        exposure, latency = await asyncio.gather(
            c.exposure_time.get_value(), c.latency_time.get_value()
        )
        rt.livetime = exposure - latency - READOUT_TIME
        rt.deadtime = latency + READOUT_TIME

    async def prepare_internal(
        self, num: int, livetime: float, deadtime: float
    ) -> None:
        await self._setup(DetectorTrigger.INTERNAL, num, livetime, deadtime)

    async def prepare_edge(self, num: int, livetime: float) -> None:
        await self._setup(DetectorTrigger.EXTERNAL_EDGE, num, livetime, 0.0)

    async def prepare_level(self, num: int) -> None:
        await self._setup(DetectorTrigger.EXTERNAL_LEVEL, num, 0.0, 0.0)

    async def default_trigger_info(self) -> TriggerInfo:
        c = self.rt.control
        if c is None:
            return TriggerInfo()
        exposure, latency = await asyncio.gather(
            c.exposure_time.get_value(), c.latency_time.get_value()
        )
        return TriggerInfo(
            livetime=max(exposure - latency - READOUT_TIME, 0.0),
            deadtime=latency + READOUT_TIME,
        )


class XspressAcquireLogic(DetectorAcquireLogic):
    """Subscribe before Arm; Arm (+ SoftwareTrigger for INTERNAL); Stop on unstage."""

    def __init__(self, rt: XspressRuntime) -> None:
        self.rt = rt

    async def ensure_ready(self) -> None:
        rt = self.rt
        await self._stop_device()
        rt.reset_counts()
        await rt.start_receiver()
        await rt.check_fault()

    async def start_acquiring(self) -> None:
        rt = self.rt
        await rt.start_receiver()  # no-op when staged; covers unstaged use
        rt.begin_run()
        c = rt.control
        if c is None:
            return
        await rt.check_fault()
        await c.arm.trigger()
        if rt.trigger is DetectorTrigger.INTERNAL:
            await c.software_trigger.trigger()

    async def wait_for_idle(self) -> None:
        rt = self.rt
        run = rt.run
        if run is not None:
            await rt.watch(run)
            await run.wait_stored(timeout=rt.stall_timeout_for_run() + 30)
        await rt.wait_not_running(timeout=rt.stall_timeout)
        rt.end_run()

    async def ensure_stopped(self) -> None:
        rt = self.rt
        try:
            await self._stop_device()
        finally:
            await rt.stop_receiver()

    async def _stop_device(self) -> None:
        c = self.rt.control
        if c is None:
            return
        state = await c.state.get_value()
        if str(getattr(state, "value", state)).upper() == "RUNNING":
            await c.stop_cmd.trigger()
            await self.rt.wait_not_running(timeout=self.rt.stall_timeout)


class _InlineSkippedFilter(logging.Filter):
    """ophyd-async warns that an inline (single-collection) data logic is skipped
    whenever a detector is prepared for many frames. For XspressDetector that is
    the design (fly-scan frames go to HDF5), so the warning would only alarm."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("XspressInlineDataLogic" in msg and "only supports a single" in msg)


logging.getLogger("ophyd_async").addFilter(_InlineSkippedFilter())


class XspressInlineDataLogic(DetectorDataLogic):
    """Readings in the event documents (step scans, one frame per event)."""

    def __init__(self, rt: XspressRuntime) -> None:
        self.rt = rt

    async def prepare_single(self, datakey_name: str) -> ReadableDataProvider:
        self.rt.sink = None
        return InlineDataProvider(self.rt, datakey_name)

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return hinted_keys(self.rt, datakey_name)


class XspressHdf5DataLogic(DetectorDataLogic):
    """Spectra and scalers to an HDF5 file with StreamResource / StreamDatum.

    In ``data="auto"`` mode a single-frame prepare (a step scan) reports only
    progress and leaves the data to the inline logic.
    """

    def __init__(self, rt: XspressRuntime, path_provider: PathProvider) -> None:
        self.rt = rt
        self.path_provider = path_provider
        self.writer: Hdf5FrameWriter | None = None

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        rt = self.rt
        await self.stop()
        if rt.data_mode == "auto" and rt.num == 1:
            rt.hdf5_active = False
            rt.sink = None
            return ProgressOnlyProvider(rt.frames_done)
        info = self.path_provider(datakey_name)
        path = info.directory_path / f"{info.filename}.h5"
        writer = Hdf5FrameWriter(
            path,
            rt.channels,
            rt.bins,
            windows_array(rt.rois, rt.channels),
            expected=rt.num if rt.num > 1 else None,
            window_counts=True,
            clock_hz=80e6,
        )
        await asyncio.to_thread(writer.open)
        self.writer = writer
        rt.sink = writer
        rt.hdf5_active = True
        uri = f"{info.directory_uri}{info.filename}.h5"
        return Hdf5DataProvider(rt, datakey_name, uri, writer)

    async def stop(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            if self.rt.run is not None and self.rt.sink is writer:
                self.rt.end_run()
            self.rt.sink = None
            await asyncio.to_thread(writer.close)

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return []
