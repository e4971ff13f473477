"""Trigger modes and frame timing of the Xspress3 (ophyd-async trigger logic).

INTERNAL ↔ ``SOFTWARE``, EXTERNAL_EDGE ↔ ``EXTERNAL_MULTI``, EXTERNAL_LEVEL ↔
``EXTERNAL_MULTI_GATE``. The device's ``ExposureTime`` is the frame period
including ``LatencyTime`` and the readout time, so ``livetime`` (the frame's
``exptime``) is ``ExposureTime - LatencyTime - READOUT_TIME`` and the
deadtime between frames is ``LatencyTime + READOUT_TIME``.
"""

from __future__ import annotations

import asyncio
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
    ) -> None:
        self.control = control
        self.settings = settings
        self.config = config

    def config_sigs(self) -> set[SignalR[Any]]:
        c = self.control
        if c is None:
            return set()
        return {c.exposure_time, c.latency_time, c.trigger_mode}

    def get_deadtime(self, config_values: SignalDict) -> float:
        c = self.control
        latency = MIN_LATENCY
        if c is not None and c.latency_time in config_values:
            latency = float(config_values[c.latency_time])
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
        coros = [
            c.trigger_mode.set(TANGO_TRIGGER_MODES[trigger]),
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
        settings.livetime = exposure - latency - READOUT_TIME
        settings.deadtime = latency + READOUT_TIME

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
