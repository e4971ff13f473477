"""The simulated Xspress3: the control object users and the Tango device drive.

:class:`SimulatedXspress3`'s attributes and commands mirror the MAX IV
``Xspress3DS`` Tango device (``exposure_time`` ↔ ``ExposureTime``, ``arm()`` ↔
``Arm`` ...); the Tango device server in :mod:`._tango` is a thin shell around
it. Its parts: the states and their transitions (:mod:`._state`), the frames
of a series (:mod:`._frames`), the worker thread that acquires and sends them
(:mod:`._worker`) through the fault injection (:mod:`._faults`) and the
publisher (:mod:`._publisher`). Commands from any thread are queued to the
worker.

Defaults, types and out-of-range behaviour are the device's
(``xspress3/DeviceServer.py`` in maxiv-science/xspress3-streamer): ``WriteHdf5``
true (the device then writes its own file, :mod:`._device_file`),
``LatencyTime`` 0, ``DestinationFileName`` ``/tmp/temp.h5``; hardware windows
clamped into the spectrum; an Arm with both ``nTriggers`` and
``nFramesPerTrigger`` above 1 refused *after* going to RUNNING. The
``tests/sim/test_device_interface.py`` table cites each fact.

Frames are deterministic: frame ``n`` of series ``s`` is drawn from a random
generator seeded with ``(seed, s, n)``, so :meth:`SimulatedXspress3.expected_frame`
regenerates exactly what was sent (tests compare bit for bit without keeping
every frame in memory).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .._constants import CLOCK_HZ, READOUT_TIME, SIM_MAX_CHANNELS
from ..protocol import Frame, Framing, HeaderMessage
from ._channels import ChannelSettings
from ._counters import WindowCounters
from ._faults import FaultPlan
from ._frames import FrameSource, SeriesSettings
from ._processor import clock_ticks_for_exposure
from ._publisher import DEFAULT_ENDPOINT, DEFAULT_SNDHWM, LiveView, StreamPublisher
from ._sample_map import BeamControls, SampleMap
from ._spectrum import DEFAULT_SAMPLE, SampleModel, line_window
from ._state import (
    ArmLeftRunningError,
    DeviceState,
    DevState,
    SimulatorError,
    TriggerMode,
)
from ._worker import Cmd, Commands, SeriesPlan, Worker

__all__ = ["DEVICE_DEFAULTS", "FRAMES_RULE", "DeviceDefaults", "SimulatedXspress3"]

log = logging.getLogger("ophyd_xspress.sim")

MAX_CHANNELS: Final = SIM_MAX_CHANNELS


@dataclass(frozen=True)
class DeviceDefaults:
    """The device's attribute values at start-up (DeviceServer.py 25-31, 112)."""

    exposure_time: float = 0.1
    n_triggers: int = 1
    n_frames_per_trigger: int = 1
    latency_time: float = 0.0
    trigger_mode: str = "SOFTWARE"
    destination_file_name: str = "/tmp/temp.h5"
    destination_file_overwritable: bool = False
    write_hdf5: bool = True


DEVICE_DEFAULTS: Final = DeviceDefaults()
#: The Arm the device refuses once RUNNING (Instrument.py 222-223).
FRAMES_RULE: Final = "nFramesPerTrigger can only be > 1 if nTriggers = 1"


def _per_channel(value: float | Sequence[float] | npt.ArrayLike, n: int) -> Any:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"expected a scalar or {n} values, got shape {arr.shape}")
    return arr.copy()


class SimulatedXspress3(BeamControls):
    """A simulated Xspress3 box: control object plus ZeroMQ stream.

    >>> with SimulatedXspress3(channels=4) as det:
    ...     det.exposure_time = 0.01
    ...     det.n_frames_per_trigger = 10
    ...     det.arm(); det.software_trigger(); det.wait_idle(5)
    """

    def __init__(
        self,
        channels: int = 4,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        framing: Framing = "multipart",
        socket_type: str = "pub",
        live_endpoint: str | None = None,
        sample: SampleModel | SampleMap = DEFAULT_SAMPLE,
        count_rate: float | Sequence[float] = 2.0e5,
        event_width: int | Sequence[int] = 6,
        seed: int = 0,
        pace: bool = True,
        pickle_protocol: int | None = None,
        sndhwm: int | None = None,
        write_hdf5: bool = DEVICE_DEFAULTS.write_hdf5,
        destination_file_name: str = DEVICE_DEFAULTS.destination_file_name,
    ) -> None:
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
        self.n_channels = channels
        self.sample = sample
        self.frames = FrameSource(sample, seed, framing)
        self.pace = pace
        self.count_rate = _per_channel(count_rate, channels)
        # Tango-like attributes (snake_case of the device's names)
        self.exposure_time = DEVICE_DEFAULTS.exposure_time
        self.latency_time = DEVICE_DEFAULTS.latency_time
        self.n_triggers = DEVICE_DEFAULTS.n_triggers
        self.n_frames_per_trigger = DEVICE_DEFAULTS.n_frames_per_trigger
        self.trigger_mode = TriggerMode(DEVICE_DEFAULTS.trigger_mode)
        self.destination_file_name = destination_file_name
        self.destination_file_overwritable = (
            DEVICE_DEFAULTS.destination_file_overwritable
        )
        #: The device writes its own HDF5 file at every Arm (default True).
        self.write_hdf5 = write_hdf5
        self.readout_time = READOUT_TIME
        #: Hardware windows and event widths (default windows: Fe Kα, Cu Kα).
        self.hardware = ChannelSettings(
            channels,
            _per_channel(event_width, channels).astype(np.int32),
            [line_window(sample, "Fe", "Ka1"), line_window(sample, "Cu", "Ka1")],
        )
        #: ``windows[w][c] = [lo, hi]`` inclusive bins (``hardware.windows``).
        self.windows = self.hardware.windows
        #: Window counts per frame for ReadRaw/DtcCounts (``return_counters``).
        self.counters = WindowCounters()
        self.faults = FaultPlan()
        #: State, status and counters, with every transition (read-only here).
        self.device_state = DeviceState()
        self._commands = Commands()
        self.publisher = StreamPublisher(
            endpoint,
            framing=framing,
            socket_type="push" if socket_type == "push" else "pub",
            sndhwm=DEFAULT_SNDHWM if sndhwm is None else sndhwm,
        )
        if pickle_protocol is not None:
            self.publisher.encoder.pickle_protocol = pickle_protocol
        self.live = LiveView(live_endpoint) if live_endpoint else None
        self._worker = Worker(self, self._commands)
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------
    def start(self) -> SimulatedXspress3:
        if self._thread is not None:
            return self
        self.publisher.open()
        if self.live is not None:
            self.live.start()
        self._thread = threading.Thread(
            target=self._worker.run, name="xspress-sim-worker", daemon=True
        )
        self._thread.start()
        log.info("simulated Xspress3 streaming on %s", self.stream_endpoint)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._commands.put(Cmd.CLOSE)
            self.faults.release()
            self._thread.join(10)
            self._thread = None
        self.publisher.close()
        if self.live is not None:
            self.live.close()

    def __enter__(self) -> SimulatedXspress3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stream_endpoint(self) -> str:
        return self.publisher.endpoint or self.publisher.requested_endpoint

    @property
    def live_endpoint(self) -> str | None:
        return self.live.endpoint if self.live is not None else None

    @property
    def framing(self) -> Framing:
        return self.frames.framing

    @property
    def seed(self) -> int:
        """Seed of every frame's random generator, with the series and frame."""
        return self.frames.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.frames.seed = value

    # -- read-only attributes ----------------------------------------------------
    @property
    def state(self) -> DevState:
        return self.device_state.state

    @property
    def status(self) -> str:
        return self.device_state.status

    @property
    def n_frames_acquired(self) -> int:
        return self.device_state.n_frames_acquired

    @property
    def ready_for_sw_trigger(self) -> bool | None:
        """The device's ``ReadyForSwTrigger``: None where it has no value
        (RUNNING in SOFTWARE mode with frames acquired != triggers sent)."""
        return self.device_state.ready_for_sw_trigger

    @property
    def return_counters(self) -> bool:
        """The ``ReturnCounters`` property: keep window counts for Tango."""
        return self.counters.enabled

    @return_counters.setter
    def return_counters(self, value: bool) -> None:
        self.counters.enabled = bool(value)

    @property
    def event_widths(self) -> npt.NDArray[np.int32] | npt.NDArray[np.int64]:
        """Per-channel event widths (ticks): see :class:`ChannelSettings`."""
        return self.hardware.event_widths

    @property
    def series_index(self) -> int:
        """Number of Arms so far, minus one (the series being acquired)."""
        return self.frames.series

    @property
    def frames_sent(self) -> int:
        """Frames handed to the publisher so far, every series and copy counted
        (a frame whose parts were all dropped too)."""
        return self._worker.outbox.frames_sent

    def frame_timing(self) -> tuple[float, int]:
        """``(exptime, clock_ticks)`` of one internally timed frame."""
        return clock_ticks_for_exposure(
            self.exposure_time, self.latency_time, self.readout_time, CLOCK_HZ
        )

    # -- commands ----------------------------------------------------------------
    def arm(self) -> None:
        """Start a series (also while one runs: the device starts another)."""
        plan = self._series_plan()
        software = self.trigger_mode is TriggerMode.SOFTWARE
        due = self.n_triggers * self.n_frames_per_trigger
        arm = self.device_state.arm(self._check_arm, due, software)
        self.counters.reset()
        if self.n_triggers != 1 and self.n_frames_per_trigger != 1:
            self._commands.put(Cmd.ARM_NO_SERIES, replace(plan, arm=arm))
            raise ArmLeftRunningError(FRAMES_RULE)
        self._commands.put(Cmd.ARM, replace(plan, arm=arm))

    def _check_arm(self) -> None:
        """What the simulator refuses outright, state unchanged (the device
        would hand it to the SDK)."""
        if self.n_triggers < 1 or self.n_frames_per_trigger < 1:
            raise SimulatorError(
                f"nTriggers ({self.n_triggers}) and nFramesPerTrigger "
                f"({self.n_frames_per_trigger}) must be >= 1"
            )
        self.frame_timing()  # validates exposure vs latency

    def _series_plan(self) -> SeriesPlan:
        try:
            settings = self.series_settings()
        except ValueError as exc:
            raise SimulatorError(str(exc)) from None
        return SeriesPlan(
            arm=0,
            settings=settings,
            header=self.header(),
            mode=self.trigger_mode,
            n_triggers=self.n_triggers,
            per_trigger=self.n_frames_per_trigger,
            exposure=self.exposure_time,
            # DeviceServer.py 328: WriteHdf5 and a file name
            device_file=bool(self.write_hdf5 and self.destination_file_name),
        )

    def software_trigger(self) -> None:
        if self.trigger_mode is not TriggerMode.SOFTWARE:
            raise SimulatorError(
                f"SoftwareTrigger refused in TriggerMode {self.trigger_mode}"
            )
        if self.state is not DevState.RUNNING:
            raise SimulatorError(f"SoftwareTrigger refused in state {self.state}")
        self.device_state.software_trigger()
        self._commands.put(Cmd.TRIGGER)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop an acquisition: STANDBY at once, like the real command; returns
        once the series has ended (its series_end sent) or after ``timeout``."""
        self._commands.put(Cmd.STOP)
        self.device_state.stopped()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self.device_state.wait_idle(timeout)

    def ttl_rise(self, at: float | None = None) -> None:
        """Rising edge on TTL input 1, now or at the ``time.monotonic()``
        instant ``at`` (edges given ahead of time, as from a timing box,
        happen then, in order)."""
        self._commands.put(Cmd.TTL_RISE, at=at)

    def ttl_fall(self, at: float | None = None) -> None:
        """Falling edge on TTL input 1, now or at ``at`` (as :meth:`ttl_rise`)."""
        self._commands.put(Cmd.TTL_FALL, at=at)

    def ttl_pulse(self, width: float = 1e-3) -> None:
        """A TTL pulse of ``width`` seconds (a gate in EXTERNAL_MULTI_GATE)."""
        self.ttl_rise()
        time.sleep(width)
        self.ttl_fall()

    def clear_fault(self) -> None:
        """Leave FAULT (the Tango ``Init``)."""
        self.device_state.clear_fault()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the acquisition ends (STANDBY or FAULT)."""
        return self.device_state.wait_idle(timeout)

    # -- frames --------------------------------------------------------------------
    def header(self) -> HeaderMessage:
        return self.frames.header(
            self.destination_file_name,
            bool(self.destination_file_overwritable),
            self.windows,
        )

    def series_settings(self) -> SeriesSettings:
        """What an Arm now fixes for its series (copies of the settings)."""
        exptime, ticks = self.frame_timing()
        return SeriesSettings(
            exptime=exptime,
            ticks=ticks,
            count_rate=self.count_rate.copy(),
            event_widths=self.event_widths.copy(),
            windows=self.windows.copy(),
        )

    def expected_frame(
        self, series: int, frame: int, clock_ticks: int | None = None
    ) -> Frame:
        """Frame ``frame`` of series ``series`` exactly as the simulator sends it,
        with the settings that series was armed with (pass ``clock_ticks`` for
        gated frames)."""
        settings = self.frames.settings_of(series) or self.series_settings()
        return self.frames.frame(settings, series, frame, clock_ticks)
