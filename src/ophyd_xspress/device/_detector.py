"""``XspressDetector``: an ophyd-async StandardDetector for Xspress3 (and -Mini).

It only composes: a trigger logic over the Tango device, an acquire logic over
the device and the stream session, and one or two data logics (inline
readings, HDF5 files). The shared state is three small objects: the
:class:`DataConfig`, the :class:`AcquisitionSettings` and the
:class:`StreamSession`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

from bluesky.utils import NoReplayAllowed
from ophyd_async.core import (
    DEFAULT_TIMEOUT,
    AsyncStatus,
    DetectorDataLogic,
    DeviceMock,
    PathProvider,
    StandardDetector,
    StaticPathProvider,
    UUIDFilenameProvider,
    WatchableAsyncStatus,
)
from ophyd_async.tango.core import get_full_attr_trl, tango_signal_r

from .._constants import DEFAULT_BINS
from ..hdf5 import DEFAULT_COMPRESSION, Compression, check_storage
from ..transport import Run, StreamReceiver
from ._acquire_logic import XspressAcquireLogic
from ._arguments import (
    check_bins,
    check_calibration,
    check_channels,
    check_data_mode,
    check_seconds,
)
from ._configuration import DetectorConfiguration
from ._control import XspressControl, bind_tango_to_running_loop
from ._data_logic import XspressHdf5DataLogic, XspressInlineDataLogic
from ._rois import RoiSpec
from ._session import StreamSession
from ._settings import AcquisitionSettings, DataConfig, DataMode
from ._tango_errors import device_errors
from ._tango_signals import forget_proxies
from ._trigger_logic import XspressTriggerLogic
from ._windows import HardwareWindows

__all__ = ["XspressDetector", "default_path_provider"]

log = logging.getLogger("ophyd_xspress.device")


def default_path_provider(directory: str | Path | None = None) -> PathProvider:
    """UUID file names in ``directory`` (default: the user data dir)."""
    if directory is None:
        import platformdirs

        directory = Path(platformdirs.user_data_dir("ophyd-xspress")) / "data"
    # created when the first file is written, not here
    path = Path(directory).expanduser().resolve()
    return StaticPathProvider(UUIDFilenameProvider(), path)


def storage_logics(
    data: DataMode,
    path: str | Path | PathProvider | None,
    session: StreamSession,
    settings: AcquisitionSettings,
    config: DataConfig,
) -> list[DetectorDataLogic]:
    """Inline readings (step scans) and/or HDF5 files, as ``data`` says."""
    logics: list[DetectorDataLogic] = []
    if data in ("auto", "inline"):
        logics.append(XspressInlineDataLogic(session, config))
    if data != "inline":
        provider = (
            path
            if path is not None and not isinstance(path, str | Path)
            else default_path_provider(path)
        )
        logics.append(XspressHdf5DataLogic(session, settings, config, provider))
    return logics


class XspressDetector(StandardDetector):
    """An Xspress3 / Xspress3-Mini in Bluesky.

    >>> xspress = XspressDetector(tango="tango://host:10000/b/xspress3/1",
    ...                           stream="tcp://host:9999", name="xspress")
    >>> RE(count([xspress], 5))

    Without ``tango`` the detector is *passive*: someone else arms and triggers
    the hardware and the detector only consumes the stream (``socket="sub"`` or
    ``"pull"``). ``data="auto"`` puts step-scan frames inline in the events and
    fly-scan frames in HDF5 files (``path``); ``"hdf5"`` uses files for both,
    ``"inline"`` never writes files (fly scans then need ``"auto"``/``"hdf5"``).

    ROIs: ``rois`` maps a name to an energy window in eV (``(low, high)``, or one
    per channel), converted to bins with ``calibration=(eV per bin, offset eV)``
    (one pair for all channels, or one per channel: each channel's ROIs through
    its own); ``bin_rois`` takes bin windows (inclusive) instead.

    The HDF5 file: ``compression`` of the spectra, ``"blosc"`` (default:
    Blosc LZ4 with bit shuffle, as Odin writes, ~17x smaller on fluorescence
    spectra and the fastest codec, see docs/benchmarks.md), ``"bslz4"``
    (bitshuffle + LZ4, as Eiger writes), ``"gzip"`` (these three readable by
    h5py once ``hdf5plugin`` is imported; tiled, silx and PyMca do), or
    ``None`` (the least CPU, and readable by any HDF5 program);
    ``chunk_frames``: frames per chunk of the spectra (default: about 1 MiB);
    ``summed_spectrum=True`` adds the dead-time corrected sum over channels to
    the file and to step-scan events.

    The two hardware windows per channel: ``hardware_windows`` (eV) or
    ``hardware_bin_windows`` (bins), like ``rois``; set at every prepare.
    ``device_writes_hdf5=True`` leaves the device's ``WriteHdf5`` on (its own
    extra file at every Arm); by default prepare switches it off.

    Hints (what BestEffortCallback plots in step scans): each ROI's corrected
    sum over channels and the largest dead time; ``per_channel_hints=True``
    adds every channel's. Fly scans hint nothing (their frames are in files).
    """

    def __init__(
        self,
        stream: str,
        tango: str | None = None,
        *,
        name: str = "",
        socket: Literal["sub", "pull"] = "sub",
        channels: int | None = None,
        bins: int = DEFAULT_BINS,
        rois: RoiSpec | None = None,
        bin_rois: RoiSpec | None = None,
        calibration: tuple[float, float] | Sequence[tuple[float, float]] = (10.0, 0.0),
        data: DataMode = "auto",
        path: str | Path | PathProvider | None = None,
        stall_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        hardware_windows: RoiSpec | None = None,
        hardware_bin_windows: RoiSpec | None = None,
        device_writes_hdf5: bool = False,
        per_channel_hints: bool = False,
        compression: Compression | None = DEFAULT_COMPRESSION,
        chunk_frames: int | None = None,
        summed_spectrum: bool = False,
    ) -> None:
        check_data_mode(data)
        stall_timeout = check_seconds("stall_timeout", stall_timeout)
        connect_timeout = check_seconds("connect_timeout", connect_timeout)
        if channels is not None:
            channels = check_channels(channels)
        bins = check_bins(bins)
        self._tango_trl = tango
        self._channels_given = channels
        #: the latest trigger() / complete() status, and the run a pause found
        #: in progress (see :meth:`pause`)
        self._busy_status: AsyncStatus | WatchableAsyncStatus[int] | None = None
        self._paused_run: Run | None = None
        self.control = XspressControl(tango) if tango else None
        n_channels = channels or 4
        cal = check_calibration(calibration)
        check_storage(n_channels, bins, compression, chunk_frames)
        self._config = DataConfig(
            name=name,
            stream=stream,
            channels=n_channels,
            bins=bins,
            calibration=cal,
            data_mode=data,
            compression=compression,
            chunk_frames=chunk_frames,
            summed_spectrum=bool(summed_spectrum),
            per_channel_hints=bool(per_channel_hints),
        )
        self._settings = AcquisitionSettings(stall_timeout=stall_timeout)
        self._session = StreamSession(
            stream,
            socket,
            active=tango is not None,
            connect_timeout=connect_timeout,
            frame_bytes=self._config.frame_bytes,
        )
        self._acquire = XspressAcquireLogic(
            self.control, self._session, self._settings, name
        )
        hw = HardwareWindows(hardware_windows, hardware_bin_windows, self._config)
        self._configuration = DetectorConfiguration(
            self._config, rois, bin_rois, hw, self._session
        )
        self._trigger = XspressTriggerLogic(
            self.control, self._settings, self._config, hw, device_writes_hdf5
        )
        data_logics = storage_logics(
            data, path, self._session, self._settings, self._config
        )
        logics = [self._trigger, self._acquire, *data_logics]
        self.add_detector_logics(*logics)
        for attribute, signal in self._configuration.signals().items():
            setattr(self, attribute, signal)  # children: their keys follow
        self.add_config_signals(*self._configuration.signals().values())
        super().__init__(name=name)

    def set_name(self, name: str, *, child_name_separator: str | None = None) -> None:
        super().set_name(name, child_name_separator=child_name_separator)
        self._config.name = name
        self._acquire.name = name

    # -- ROIs ------------------------------------------------------------------------
    def set_rois(
        self, rois: RoiSpec | None = None, bin_rois: RoiSpec | None = None
    ) -> None:
        """Replace the software ROIs (takes effect at the next prepare; refused
        ones leave the ROIs as they were)."""
        self._configuration.set_rois(rois, bin_rois)

    @property
    def rois(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """Current software ROIs as inclusive bin windows per channel."""
        return {r.name: r.windows for r in self._config.rois}

    def set_hardware_windows(
        self, windows: RoiSpec | None = None, bin_windows: RoiSpec | None = None
    ) -> None:
        """Replace the hardware windows (written at the next prepare); with
        neither, the detector leaves the device's windows alone again."""
        self._configuration.set_hardware_windows(windows, bin_windows)

    # -- diagnostics -----------------------------------------------------------------
    @property
    def anomalies(self) -> dict[str, int]:
        """Missing / repeated / out-of-order / stale frames counted since stage."""
        return dict(self._session.diagnostics.anomalies)

    @property
    def run_summaries(self) -> list[dict[str, object]]:
        """Per acquisition: frames expected / received and the anomalies."""
        return list(self._session.diagnostics.run_summaries)

    @property
    def receiver(self) -> StreamReceiver:
        """The stream receiver (its ``counts`` and ``errors`` diagnose the stream)."""
        return self._session.receiver

    @property
    def current_run(self) -> Run | None:
        """The acquisition in progress, if any."""
        return self._session.run

    @property
    def stall_timeout(self) -> float:
        """Seconds without a frame after which an acquisition fails."""
        return self._settings.stall_timeout

    @stall_timeout.setter
    def stall_timeout(self, value: float) -> None:
        self._settings.stall_timeout = check_seconds("stall_timeout", value)

    @property
    def trigger_timeout(self) -> float | None:
        """With external triggers: how long to wait for a trigger while the
        device is RUNNING before failing with ``TriggerTimeoutError`` (None,
        the default: as long as the plan waits). Waiting for triggers is never
        a stall."""
        return self._settings.trigger_timeout

    @trigger_timeout.setter
    def trigger_timeout(self, value: float | None) -> None:
        self._settings.trigger_timeout = (
            None if value is None else check_seconds("trigger_timeout", value)
        )

    # -- connection --------------------------------------------------------------------
    async def connect(
        self,
        mock: bool | DeviceMock[Any] = False,
        timeout: float = DEFAULT_TIMEOUT,
        force_reconnect: bool = False,
    ) -> None:
        control = self.control if mock is False else None
        with device_errors(self.name, control):
            if control is not None:
                bind_tango_to_running_loop()
                if force_reconnect:  # with fresh proxies: see _tango_signals
                    forget_proxies(control)
                if not control.channels:
                    await self._add_channels(control, timeout)
            await super().connect(
                mock=mock, timeout=timeout, force_reconnect=force_reconnect
            )

    async def _add_channels(self, control: XspressControl, timeout: float) -> None:
        """Per-channel signals for the device's ``nChannels``."""
        trl = cast(str, self._tango_trl)
        probe = tango_signal_r(int, get_full_attr_trl(trl, "nChannels"))
        await probe.connect(timeout=timeout)
        n = int(await probe.get_value())
        if self._channels_given is not None and self._channels_given != n:
            raise ValueError(
                f"{self.name}: channels={self._channels_given} but the device "
                f"{trl} has nChannels={n}"
            )
        control.add_channels(n)
        self.add_config_signals(
            *(ch.event_width for ch in control.channels.values()),
            *(w for ch in control.channels.values() for w in ch.windows),
        )
        self.set_name(self.name)
        if n != self._config.channels:
            self._configuration.channels_changed(n)

    # -- staging ---------------------------------------------------------------------
    @AsyncStatus.wrap
    async def stage(self) -> None:
        """Refused while an acquisition runs, before ``StandardDetector.stage``
        stops the data logics (closing that acquisition's file). (Upstream: a
        ``stage`` awaiting ``ensure_ready`` first would make this unneeded.)"""
        self._acquire.refuse_while_acquiring()
        await super().stage()

    # -- RunEngine pause / resume ------------------------------------------------------
    def trigger(self) -> AsyncStatus:  # type: ignore[override]
        status = cast(AsyncStatus, super().trigger())
        self._busy_status = status
        return status

    def complete(self) -> WatchableAsyncStatus[int]:  # type: ignore[override]
        status = cast(WatchableAsyncStatus[int], super().complete())
        self._busy_status = status
        return status

    async def pause(self) -> None:
        """The RunEngine pauses: an acquisition in progress keeps going.

        The detector has no pause command, and replaying the plan from its last
        checkpoint would arm it again while it is still acquiring. So while
        frames are due this refuses the replay
        (:class:`~bluesky.utils.NoReplayAllowed`): frames keep arriving and
        being written during the pause, and :meth:`resume` waits for the rest
        of them (a fly scan's ``complete()`` or a step's ``trigger()``). Abort
        or stop instead to end the acquisition early.
        """
        run = self._session.run
        if run is not None and not run.done and not run.closed:
            self._paused_run = run
            log.warning(
                "%s: paused while acquiring (%d of %s frames so far): the "
                "acquisition continues; resume waits for the rest, abort or stop "
                "ends it",
                self.name,
                run.received,
                run.expected if run.expected is not None else "?",
            )
            raise NoReplayAllowed()
        self._paused_run = None

    async def resume(self) -> None:
        """After a pause mid-acquisition, wait for the acquisition to finish.

        The RunEngine forgets a ``wait`` it interrupted, so a resumed fly plan
        would otherwise collect what is on disk at that moment and end early.
        Waiting here for the ``complete()`` (or ``trigger()``) status gives the
        plan every frame. A failure (stalled stream, FAULT) is logged here and
        fails the status, which the RunEngine reports.
        """
        run, self._paused_run = self._paused_run, None
        status = self._busy_status
        if run is None or run.closed or status is None or status.done:
            return
        log.info("%s: resuming: waiting for the acquisition to finish", self.name)
        try:
            await status
        except Exception as exc:
            log.error("%s: the acquisition failed during the pause: %s", self.name, exc)

    async def read_configuration(self):  # type: ignore[no-untyped-def]
        self._configuration.note_header(self._session.diagnostics.last_header)
        return await super().read_configuration()
