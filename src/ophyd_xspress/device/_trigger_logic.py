"""Trigger modes and frame timing of the Xspress3 (ophyd-async trigger logic).

INTERNAL ↔ ``SOFTWARE``, EXTERNAL_EDGE ↔ ``EXTERNAL_MULTI``, EXTERNAL_LEVEL ↔
``EXTERNAL_MULTI_GATE``. The device's ``ExposureTime`` is the frame period
including ``LatencyTime`` and the readout time, so ``livetime`` (the frame's
``exptime``) is ``ExposureTime - LatencyTime - READOUT_TIME`` and the
deadtime between frames is ``LatencyTime + READOUT_TIME``. The device starts
with ``LatencyTime`` 0; this logic never runs it with less than
:data:`MIN_LATENCY` between internally timed frames (what MAX IV's scan
program sets).

Also at every prepare, deliberately: ``WriteHdf5`` (off unless the detector
was told to let the device write its own file too: left on, the device writes
an extra file at every Arm) and the hardware windows, when the detector was
given them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ophyd_async.core import (
    DetectorTrigger,
    DetectorTriggerLogic,
    SignalDict,
    SignalR,
    TriggerInfo,
)

from .._constants import MIN_LATENCY, READOUT_TIME
from ._control import XspressControl
from ._settings import AcquisitionSettings, DataConfig
from ._windows import HardwareWindows

__all__ = ["TANGO_TRIGGER_MODES", "XspressTriggerLogic"]

#: ophyd-async trigger -> the device's ``TriggerMode``.
TANGO_TRIGGER_MODES = {
    DetectorTrigger.INTERNAL: "SOFTWARE",
    DetectorTrigger.EXTERNAL_EDGE: "EXTERNAL_MULTI",
    DetectorTrigger.EXTERNAL_LEVEL: "EXTERNAL_MULTI_GATE",
}


class XspressTriggerLogic(DetectorTriggerLogic):
    """Sets the device's trigger mode, frame counts and times at prepare, and
    records them in the :class:`AcquisitionSettings` the other logics read."""

    def __init__(
        self,
        control: XspressControl | None,
        settings: AcquisitionSettings,
        config: DataConfig,
        hardware_windows: HardwareWindows | None = None,
        device_writes_hdf5: bool = False,
    ) -> None:
        self.control = control
        self.settings = settings
        self.config = config
        #: The hardware windows to set at prepare (``rois`` None: leave the
        #: device's).
        self.hardware_windows = hardware_windows
        #: ``WriteHdf5`` at prepare: the device writes its own file as well.
        self.device_writes_hdf5 = bool(device_writes_hdf5)

    def config_sigs(self) -> set[SignalR[Any]]:
        c = self.control
        if c is None:
            return set()
        return {c.exposure_time, c.latency_time, c.trigger_mode}

    def get_deadtime(self, config_values: SignalDict) -> float:
        """The device's latency (at least the one prepare sets) + readout."""
        c = self.control
        latency = MIN_LATENCY
        if c is not None and c.latency_time in config_values:
            latency = max(float(config_values[c.latency_time]), MIN_LATENCY)
        return latency + READOUT_TIME

    async def _setup(
        self, trigger: DetectorTrigger, num: int, livetime: float, deadtime: float
    ) -> None:
        if self.config.data_mode == "inline" and num != 1:
            raise ValueError(
                f"{self.config.name}: data='inline' puts one frame in each event "
                f"(step scans); a prepare for {num} frames (a fly scan) needs "
                "XspressDetector(data='auto') or data='hdf5'"
            )
        settings = self.settings
        settings.trigger, settings.num = trigger, num
        mode = self.config.data_mode
        self.config.inline_events = mode == "inline" or (mode == "auto" and num == 1)
        c = self.control
        if c is None:
            settings.livetime, settings.deadtime = livetime, deadtime
            return
        if num < 1:
            raise ValueError(
                f"{self.config.name}: the Xspress3 needs a finite number of frames "
                f"(got {num})"
            )
        if trigger is DetectorTrigger.INTERNAL:
            n_triggers, per_trigger = 1, num
        else:
            n_triggers, per_trigger = num, 1
        coros: list[Awaitable[Any]] = [
            c.trigger_mode.set(TANGO_TRIGGER_MODES[trigger]),
            c.n_triggers.set(n_triggers),
            c.n_frames_per_trigger.set(per_trigger),
            c.write_hdf5.set(self.device_writes_hdf5),
        ]
        if trigger is not DetectorTrigger.EXTERNAL_LEVEL:
            coros += await self._timing(c, livetime, deadtime)
        rois = self.hardware_windows.rois if self.hardware_windows else None
        if rois:
            coros.append(c.set_hardware_windows([roi.windows for roi in rois]))
        await asyncio.gather(*coros)
        exposure, latency = await asyncio.gather(
            c.exposure_time.get_value(), c.latency_time.get_value()
        )
        settings.livetime = exposure - latency - READOUT_TIME
        settings.deadtime = latency + READOUT_TIME

    async def _timing(
        self, c: XspressControl, livetime: float, deadtime: float
    ) -> list[Awaitable[Any]]:
        """Writes for internally timed frames: the exposure when a livetime is
        asked for, and a latency of at least MIN_LATENCY."""
        if livetime > 0:
            latency = max(deadtime - READOUT_TIME, MIN_LATENCY)
            return [
                c.latency_time.set(latency),
                c.exposure_time.set(livetime + latency + READOUT_TIME),
            ]
        if await c.latency_time.get_value() < MIN_LATENCY:
            return [c.latency_time.set(MIN_LATENCY)]  # the exposure is kept
        return []

    async def prepare_internal(
        self, num: int, livetime: float, deadtime: float
    ) -> None:
        await self._setup(DetectorTrigger.INTERNAL, num, livetime, deadtime)

    async def prepare_edge(self, num: int, livetime: float) -> None:
        await self._setup(DetectorTrigger.EXTERNAL_EDGE, num, livetime, 0.0)

    async def prepare_level(self, num: int) -> None:
        await self._setup(DetectorTrigger.EXTERNAL_LEVEL, num, 0.0, 0.0)

    async def default_trigger_info(self) -> TriggerInfo:
        c = self.control
        if c is None:
            return TriggerInfo()
        exposure, latency = await asyncio.gather(
            c.exposure_time.get_value(), c.latency_time.get_value()
        )
        return TriggerInfo(
            livetime=max(exposure - latency - READOUT_TIME, 0.0),
            deadtime=latency + READOUT_TIME,
        )
