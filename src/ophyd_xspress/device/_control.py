"""ophyd-async signals of the MAX IV ``Xspress3DS`` Tango device (the control plane)."""

from __future__ import annotations

from collections.abc import Callable

from ophyd_async.core import Device, DeviceVector, SignalR, SignalRW
from ophyd_async.tango.core import (
    DevStateEnum,
    get_full_attr_trl,
    tango_signal_r,
    tango_signal_rw,
    tango_triggerable_command,
)

__all__ = ["XspressChannelControl", "XspressControl"]


class XspressChannelControl(Device):
    """Per-channel attributes of the device (``EventWidth_Ch{n}``)."""

    def __init__(self, trl: str, channel: int, name: str = "") -> None:
        def attr(n: str) -> str:
            return get_full_attr_trl(trl, f"{n}_Ch{channel}")

        self.event_width: SignalRW[int] = tango_signal_rw(int, attr("EventWidth"))
        super().__init__(name=name)


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
