"""ophyd-async signals of the MAX IV ``Xspress3DS`` Tango device (the control plane).

Each signal has the device's access (``xspress3/DeviceServer.py`` in
maxiv-science/xspress3-streamer): read-write only where the device has a
setter, so ophyd-async's ``get_current_settings`` / ``apply_settings`` never
write an attribute the real device refuses (``EventWidth_Ch{n}`` is
read-only there: its event widths come from a device property).

Besides the signals, :class:`XspressControl` answers the questions the acquire
logic asks the device: is it in FAULT (and why), is it still RUNNING.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
from ophyd_async.core import Array1D, Device, DeviceVector, SignalR, SignalRW
from ophyd_async.tango.core import (
    DevStateEnum,
    get_full_attr_trl,
    tango_triggerable_command,
)

# ophyd-async's factories that also let a reconnect make fresh proxies
from ._tango_signals import tango_signal_r, tango_signal_rw

__all__ = [
    "DetectorFaultError",
    "DeviceStuckError",
    "XspressChannelControl",
    "XspressControl",
    "bind_tango_to_running_loop",
]


class DetectorFaultError(RuntimeError):
    """The Xspress3 device is in FAULT (its status string says why)."""


class DeviceStuckError(TimeoutError):
    """The device did not return to STANDBY after its frames arrived."""


def bind_tango_to_running_loop() -> None:
    """Make pytango's asyncio executor use the running event loop.

    pytango keeps one global asyncio executor, bound to the loop that first
    used it; a later RunEngine (a new loop: a second demo, a notebook that
    makes a new RunEngine, the next test) would then fail to connect. Through
    pytango's public executor API, a new executor bound to the running loop
    replaces one bound to another loop. (Upstream: an executor per loop in
    pytango's green mode would make this unnecessary.)
    """
    from tango.asyncio_executor import (
        AsyncioExecutor,
        get_global_executor,
        set_global_executor,
    )

    running = asyncio.get_running_loop()
    if get_global_executor().loop is not running:
        set_global_executor(AsyncioExecutor(loop=running))


class XspressChannelControl(Device):
    """Per-channel attributes of the device: ``EventWidth_Ch{n}`` (read-only,
    ticks) and the two hardware windows ``Window1_Ch{n}``, ``Window2_Ch{n}``
    (``[low, high]`` inclusive bins; the device clamps them into the
    spectrum)."""

    def __init__(self, trl: str, channel: int, name: str = "") -> None:
        def attr(n: str) -> str:
            return get_full_attr_trl(trl, f"{n}_Ch{channel}")

        self.event_width: SignalR[int] = tango_signal_r(int, attr("EventWidth"))
        # DevLong spectra: ophyd-async reads them as the platform's int
        self.window1: SignalRW[Array1D[np.int_]] = tango_signal_rw(
            Array1D[np.int_], attr("Window1")
        )
        self.window2: SignalRW[Array1D[np.int_]] = tango_signal_rw(
            Array1D[np.int_], attr("Window2")
        )
        super().__init__(name=name)

    @property
    def windows(self) -> tuple[SignalRW[Array1D[np.int_]], ...]:
        return (self.window1, self.window2)


class XspressControl(Device):
    """Attributes and commands of ``Xspress3DS``; ``Stop`` is ``stop_cmd`` because
    ``stop`` is reserved in ophyd-async devices."""

    def __init__(self, trl: str, name: str = "") -> None:
        self.trl = trl
        attr: Callable[[str], str] = lambda n: get_full_attr_trl(trl, n)  # noqa: E731
        self.exposure_time = tango_signal_rw(float, attr("ExposureTime"))
        self.latency_time = tango_signal_rw(float, attr("LatencyTime"))
        self.n_triggers = tango_signal_rw(int, attr("nTriggers"))
        self.n_frames_per_trigger = tango_signal_rw(int, attr("nFramesPerTrigger"))
        self.trigger_mode = tango_signal_rw(str, attr("TriggerMode"))
        self.destination_file_name = tango_signal_rw(str, attr("DestinationFileName"))
        #: The device writes its own HDF5 file at every Arm (default True).
        self.write_hdf5 = tango_signal_rw(bool, attr("WriteHdf5"))
        self.n_frames_acquired: SignalR[int] = tango_signal_r(
            int, attr("nFramesAcquired")
        )
        self.n_channels: SignalR[int] = tango_signal_r(int, attr("nChannels"))
        self.readout_time: SignalR[float] = tango_signal_r(float, attr("ReadoutTime"))
        self.state: SignalR[DevStateEnum] = tango_signal_r(DevStateEnum, attr("State"))
        self.status: SignalR[str] = tango_signal_r(str, attr("Status"))
        self.arm = tango_triggerable_command(attr("Arm"))
        self.software_trigger = tango_triggerable_command(attr("SoftwareTrigger"))
        self.stop_cmd = tango_triggerable_command(attr("Stop"))
        self.channels: DeviceVector[XspressChannelControl] = DeviceVector({})
        super().__init__(name=name)

    def add_channels(self, n: int) -> None:
        """Create the per-channel signals once the channel count is known."""
        self.channels = DeviceVector(
            {i: XspressChannelControl(self.trl, i) for i in range(n)}
        )

    async def set_hardware_windows(
        self, windows: Sequence[Sequence[tuple[int, int]]]
    ) -> None:
        """``windows[w][n]``: ``[low, high]`` bins of window ``w`` (0, 1) of
        channel ``n``; windows not given are left as they are."""
        coros = [
            channel.windows[w].set(np.asarray(per_channel[n], dtype=np.int_))
            for w, per_channel in enumerate(windows)
            for n, channel in self.channels.items()
        ]
        await asyncio.gather(*coros)

    # -- questions the acquire logic asks ------------------------------------------
    async def state_name(self) -> str:
        state = await self.state.get_value()
        return str(getattr(state, "value", state)).upper()

    async def raise_if_fault(self) -> None:
        if await self.state_name() == "FAULT":
            status = await self.status.get_value()
            raise DetectorFaultError(
                f"Xspress3 {self.trl} is in FAULT: {status}".rstrip()
            )

    async def wait_not_running(self, timeout: float) -> None:
        """Return once the device left RUNNING; raise on FAULT or time-out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            name = await self.state_name()
            if name == "FAULT":
                await self.raise_if_fault()
            if name != "RUNNING":
                return
            if loop.time() > deadline:
                raise DeviceStuckError(
                    f"Xspress3 {self.trl} still RUNNING {timeout:.1f} s after its "
                    "last frame arrived"
                )
            await asyncio.sleep(0.01)

    async def stop_if_running(self, timeout: float) -> None:
        if await self.state_name() == "RUNNING":
            await self.stop_cmd.trigger()
            await self.wait_not_running(timeout)
