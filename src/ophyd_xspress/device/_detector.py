"""``XspressDetector``: an ophyd-async StandardDetector for Xspress3 (and -Mini)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from bluesky.utils import NoReplayAllowed
from ophyd_async.core import (
    DEFAULT_TIMEOUT,
    AsyncStatus,
    DeviceMock,
    PathProvider,
    SignalR,
    StandardDetector,
    StaticPathProvider,
    StreamableDataProvider,
    TriggerInfo,
    UUIDFilenameProvider,
    WatchableAsyncStatus,
    WatcherUpdate,
    soft_signal_r_and_setter,
)
from ophyd_async.tango.core import get_full_attr_trl, tango_signal_r

from ..transport import RunTracker, StreamStalledError
from ._control import XspressControl
from ._logics import (
    XspressAcquireLogic,
    XspressHdf5DataLogic,
    XspressInlineDataLogic,
    XspressTriggerLogic,
)
from ._rois import Calibration, RoiSpec, make_rois
from ._runtime import DataMode, XspressRuntime

__all__ = ["XspressDetector"]

log = logging.getLogger("ophyd_xspress.device")


def _fresh_tango_executor() -> None:
    """pytango keeps one global asyncio executor bound to the loop that first
    used it; a later RunEngine (a new loop: a second demo, a notebook restart of
    the RunEngine, the next test) would then fail to connect. Forget an executor
    whose loop is not the running one so pytango makes a fresh one."""
    try:
        import tango.asyncio_executor as executors
    except ImportError:  # pragma: no cover - tango is a dependency
        return
    current = getattr(executors, "_MAIN_EXECUTOR", None)
    if current is None:
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    loop = getattr(current, "loop", None)
    if loop is not running:
        executors.set_global_executor(None)


def default_path_provider(directory: str | Path | None = None) -> PathProvider:
    """UUID file names in ``directory`` (default: the user data dir)."""
    if directory is None:
        import platformdirs

        directory = Path(platformdirs.user_data_dir("ophyd-xspress")) / "data"
    # created when the first file is written, not here
    path = Path(directory).expanduser().resolve()
    return StaticPathProvider(UUIDFilenameProvider(), path)


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
    per channel), converted to bins with ``calibration=(eV per bin, offset eV)``;
    ``bin_rois`` takes bin windows (inclusive) instead.
    """

    def __init__(
        self,
        stream: str,
        tango: str | None = None,
        *,
        name: str = "",
        socket: Literal["sub", "pull"] = "sub",
        channels: int | None = None,
        bins: int = 4096,
        rois: RoiSpec | None = None,
        bin_rois: RoiSpec | None = None,
        calibration: tuple[float, float] = (10.0, 0.0),
        data: DataMode = "auto",
        path: str | Path | PathProvider | None = None,
        stall_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if data not in ("auto", "inline", "hdf5"):
            raise ValueError(f"data must be 'auto', 'inline' or 'hdf5', not {data!r}")
        self._tango_trl = tango
        self._channels_given = channels
        #: the latest trigger() / complete() status, and the run a pause found
        #: in progress (see :meth:`pause`)
        self._busy_status: AsyncStatus | WatchableAsyncStatus[int] | None = None
        self._paused_run: RunTracker | None = None
        self._roi_spec = (rois, bin_rois)
        self.control = XspressControl(tango) if tango else None
        cal = Calibration(*calibration)
        n_channels = channels or 4
        self._rt = XspressRuntime(
            name=name,
            stream=stream,
            socket=socket,
            control=self.control,
            channels=n_channels,
            bins=bins,
            calibration=cal,
            rois=self._make_rois(n_channels, bins, cal),
            data_mode=data,
            stall_timeout=stall_timeout,
            connect_timeout=connect_timeout,
        )
        path_provider: PathProvider | None
        if data == "inline":
            path_provider = None
        elif path is None or isinstance(path, str | Path):
            path_provider = default_path_provider(path)
        else:
            path_provider = path
        logics: list[object] = [
            XspressTriggerLogic(self._rt),
            XspressAcquireLogic(self._rt),
        ]
        if data in ("auto", "inline"):
            logics.append(XspressInlineDataLogic(self._rt))
        if path_provider is not None:
            logics.append(XspressHdf5DataLogic(self._rt, path_provider))
        self.add_detector_logics(*logics)  # type: ignore[arg-type]
        # configuration shown in read_configuration()
        self.stream_endpoint, _ = soft_signal_r_and_setter(str, stream)
        self.n_channels_config, self._set_channels = soft_signal_r_and_setter(
            int, n_channels
        )
        self.calibration_ev_per_bin, _ = soft_signal_r_and_setter(
            float, cal.ev_per_bin, units="eV"
        )
        self.calibration_offset_ev, _ = soft_signal_r_and_setter(
            float, cal.offset_ev, units="eV"
        )
        self.roi_definitions, self._set_roi_text = soft_signal_r_and_setter(
            str, self._roi_text()
        )
        self.hardware_windows, self._set_hw_windows = soft_signal_r_and_setter(str, "")
        self.header_filename: SignalR[str] = self._rt.header_filename
        self.add_config_signals(
            self.stream_endpoint,
            self.n_channels_config,
            self.calibration_ev_per_bin,
            self.calibration_offset_ev,
            self.roi_definitions,
            self.hardware_windows,
            self.header_filename,
        )
        super().__init__(name=name)
        self._rt.name = name

    # -- set-up --------------------------------------------------------------------
    def _make_rois(self, channels: int, bins: int, cal: Calibration) -> list:  # type: ignore[type-arg]
        rois, bin_rois = self._roi_spec
        out = make_rois(rois, unit="eV", channels=channels, bins=bins, calibration=cal)
        out += make_rois(
            bin_rois, unit="bin", channels=channels, bins=bins, calibration=cal
        )
        if not out:
            out = make_rois(
                {"total": (0, bins - 1)},
                unit="bin",
                channels=channels,
                bins=bins,
                calibration=cal,
            )
        return out

    def _roi_text(self) -> str:
        cal = self._rt.calibration
        return "; ".join(r.describe(cal) for r in self._rt.rois)

    def set_rois(
        self, rois: RoiSpec | None = None, bin_rois: RoiSpec | None = None
    ) -> None:
        """Replace the software ROIs (takes effect at the next prepare)."""
        self._roi_spec = (rois, bin_rois)
        rt = self._rt
        rt.rois = self._make_rois(rt.channels, rt.bins, rt.calibration)
        self._set_roi_text(self._roi_text())

    @property
    def rois(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """Current software ROIs as inclusive bin windows per channel."""
        return {r.name: r.windows for r in self._rt.rois}

    @property
    def anomalies(self) -> dict[str, int]:
        """Missing / repeated / out-of-order / stale frames counted since stage."""
        return dict(self._rt.anomalies)

    @property
    def run_summaries(self) -> list[dict[str, object]]:
        """Per acquisition: frames expected / received and the anomalies."""
        return list(self._rt.run_summaries)

    async def connect(
        self,
        mock: bool | DeviceMock[Any] = False,
        timeout: float = DEFAULT_TIMEOUT,
        force_reconnect: bool = False,
    ) -> None:
        control = self.control
        if control is not None and mock is False:
            _fresh_tango_executor()
        if (
            control is not None
            and mock is False
            and self._tango_trl is not None
            and not control.channels
        ):
            probe = tango_signal_r(int, get_full_attr_trl(self._tango_trl, "nChannels"))
            await probe.connect(timeout=timeout)
            n = int(await probe.get_value())
            if self._channels_given is not None and self._channels_given != n:
                raise ValueError(
                    f"{self.name}: channels={self._channels_given} but the device "
                    f"{self._tango_trl} has nChannels={n}"
                )
            control.add_channels(n)
            self.add_config_signals(
                *(ch.event_width for ch in control.channels.values())
            )
            self.set_name(self.name)
            rt = self._rt
            if n != rt.channels:
                rt.channels = n
                rt.rois = self._make_rois(n, rt.bins, rt.calibration)
                self._set_channels(n)
                self._set_roi_text(self._roi_text())
        await super().connect(
            mock=mock, timeout=timeout, force_reconnect=force_reconnect
        )

    async def stage_and_check(self) -> None:  # pragma: no cover - convenience
        await self.stage()

    # -- error translation ---------------------------------------------------------
    async def _wait_for_index(
        self,
        data_providers: Sequence[StreamableDataProvider],
        trigger_info: TriggerInfo,
        initial_collections_written: int,
        collections_requested: int,
        wait_for_idle: bool,
        watcher_divisor: int = 1,
    ) -> AsyncIterator[WatcherUpdate]:
        """Like the base class, but a stalled stream, a FAULT or a sink error
        fails the status at once with the facts, not after a generic time-out."""
        rt = self._rt
        run = rt.run
        # count() prepares with TriggerInfo() (livetime 0: "what the device has"),
        # so ophyd-async's time-out would not include a long frame time that
        # the device is set to; the runtime knows it.
        frame_time = rt.livetime + rt.deadtime
        if trigger_info.exposure_timeout < frame_time + DEFAULT_TIMEOUT:
            trigger_info = trigger_info.model_copy(
                update={"exposure_timeout": frame_time + DEFAULT_TIMEOUT}
            )
        task = asyncio.current_task()
        failure: list[BaseException] = []
        ended: list[bool] = []
        cancels: list[int] = []

        async def guard() -> None:
            if run is None:
                return
            try:
                await rt.watch(run)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                failure.append(exc)
                await interrupt()
                return
            if run.closed and not run.done:
                # unstaged mid-acquisition (an aborted or stopped plan): end
                # this status now rather than let it wait for frames that will
                # never come. It ends quietly: failing it would turn the
                # RunEngine's abort into a FailedStatus.
                ended.append(True)
                await interrupt()

        async def interrupt() -> None:
            # Python 3.11's asyncio.wait_for swallows a cancel that lands just
            # as its inner wait completes (ophyd-async waits for frames with
            # it), leaving the status waiting for frames that never come: ask
            # again until the status has taken it. This task is cancelled in
            # the ``finally`` below, as the status ends.
            while task is not None and not task.done():
                task.cancel()
                cancels.append(1)
                await asyncio.sleep(0.05)

        guard_task = asyncio.ensure_future(guard())
        inner = cast(
            AsyncGenerator[WatcherUpdate[int], None],
            super()._wait_for_index(
                data_providers,
                trigger_info,
                initial_collections_written,
                collections_requested,
                wait_for_idle,
                watcher_divisor,
            ),
        )
        try:
            async for update in inner:
                yield update
        except asyncio.CancelledError:
            if failure:
                raise failure[0] from None
            if ended:
                if task is not None:
                    for _ in cancels:  # the cancels were ours, and are handled
                        task.uncancel()
                log.info(
                    "%s: complete() ended: the detector was unstaged after %d of "
                    "%d frames",
                    self.name,
                    len(run.received) if run is not None else 0,
                    collections_requested,
                )
                return
            raise
        except TimeoutError as exc:
            # only ophyd-async's own (generic) time-out gets the stream facts;
            # our errors (stalled stream, device stuck RUNNING) say what happened
            if type(exc) is TimeoutError and run is not None:
                raise run.stall_error(trigger_info.exposure_timeout) from exc
            raise
        finally:
            guard_task.cancel()
            await inner.aclose()
        if failure:
            raise failure[0]

    # -- RunEngine pause / resume -------------------------------------------------
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
        run = self._rt.run
        if run is not None and not run.done and not run.closed:
            self._paused_run = run
            log.warning(
                "%s: paused while acquiring (%d of %s frames so far): the "
                "acquisition continues; resume waits for the rest, abort or stop "
                "ends it",
                self.name,
                len(run.received),
                run.expected if run.expected is not None else "?",
            )
            raise NoReplayAllowed()
        self._paused_run = None

    async def resume(self) -> None:
        """After a pause mid-acquisition, wait for the acquisition to finish.

        The RunEngine forgets a ``wait`` it interrupted, so a resumed fly plan
        would otherwise collect what is on disk at that moment and end early.
        Waiting here for the ``complete()`` (or ``trigger()``) status gives the
        plan every frame.
        A failure (stalled stream, FAULT) is logged here and fails the status,
        which the RunEngine reports.
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
        header = self._rt.last_header
        if header.get("limits") is not None:
            self._set_hw_windows(json.dumps(header["limits"]))
        return await super().read_configuration()


__all__ += ["StreamStalledError"]
