"""Where the frames go: inline readings (step scans) or an HDF5 file with
StreamResource / StreamDatum (fly scans, and step scans with ``data="hdf5"``).

Before it opens a file in a directory, the HDF5 logic repairs the files a
killed writer left there (:func:`ophyd_xspress.hdf5.repair_leftovers`), so
they open with plain ``h5py.File`` again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ophyd_async.core import (
    DetectorDataLogic,
    PathProvider,
    ReadableDataProvider,
    StreamableDataProvider,
)

from .._constants import CLOCK_HZ
from ..hdf5 import Hdf5FrameWriter, repair_leftovers
from ._providers import (
    Hdf5DataProvider,
    InlineDataProvider,
    ProgressOnlyProvider,
    hinted_keys,
)
from ._session import StreamSession
from ._settings import AcquisitionSettings, DataConfig

__all__ = ["XspressHdf5DataLogic", "XspressInlineDataLogic"]

log = logging.getLogger("ophyd_xspress.device")


class XspressInlineDataLogic(DetectorDataLogic):
    """Readings in the event documents (step scans, one frame per event).

    ophyd-async logs a warning naming this logic whenever the detector is
    prepared for more than one frame (a fly scan): inline readings are for
    step scans only, and in ``data="auto"`` mode fly-scan frames go to the
    HDF5 file instead. Its ``repr`` says so in that warning.
    """

    def __init__(self, session: StreamSession, config: DataConfig) -> None:
        self.session = session
        self.config = config

    def __repr__(self) -> str:
        return (
            "XspressInlineDataLogic (inline readings are for step scans; "
            "fly-scan frames go to the HDF5 file)"
        )

    async def prepare_single(self, datakey_name: str) -> ReadableDataProvider:
        self.session.use_sink(None, None)
        return InlineDataProvider(
            datakey_name, self.config, self.session.latest, self.session.diagnostics
        )

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        """The scalars of the events, when this prepare puts frames in events;
        nothing otherwise (a fly scan declares only the file's keys, and a
        hint naming an undeclared key breaks BestEffortCallback)."""
        if not self.config.inline_events:
            return []
        return hinted_keys(datakey_name, self.config)


class XspressHdf5DataLogic(DetectorDataLogic):
    """Spectra and scalers to an HDF5 file with StreamResource / StreamDatum.

    In ``data="auto"`` mode a single-frame prepare (a step scan) reports only
    progress and leaves the data to the inline logic.
    """

    def __init__(
        self,
        session: StreamSession,
        settings: AcquisitionSettings,
        config: DataConfig,
        path_provider: PathProvider,
    ) -> None:
        self.session = session
        self.settings = settings
        self.config = config
        self.path_provider = path_provider
        self.writer: Hdf5FrameWriter | None = None
        #: Whether the stream carries window_counts, as the last file written
        #: found (None: no file yet).
        self.window_counts_seen: bool | None = None

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        await self.stop()
        num, cfg = self.settings.num, self.config
        if cfg.data_mode == "auto" and num == 1:
            return ProgressOnlyProvider(self.session.frames_done)
        info = self.path_provider(datakey_name)
        path = info.directory_path / f"{info.filename}.h5"
        writer = Hdf5FrameWriter(
            path,
            cfg.channels,
            cfg.bins,
            cfg.windows(),
            expected=num if num > 1 else None,
            window_counts=True,
            clock_hz=CLOCK_HZ,
            compression=cfg.compression,
            chunk_frames=cfg.chunk_frames,
            summed_spectrum=cfg.summed_spectrum,
            calibration=cfg.calibrations(),
        )
        await asyncio.to_thread(self._open, writer)
        self.writer = writer
        self.session.use_sink(writer, writer.durable)
        carried = self._carries_window_counts()
        if carried is None:
            log.info(
                "%s: first file: window_counts go to the file if the stream "
                "carries them, and are data keys from the next run on",
                datakey_name,
            )
        return Hdf5DataProvider(
            datakey_name,
            f"{info.directory_uri}{info.filename}.h5",
            writer.specs,
            self.session.frames_done,
            self.session.frames_stored,
            window_counts=writer.window_counts_spec if carried else None,
            in_file=lambda: writer.has_window_counts,
        )

    @staticmethod
    def _open(writer: Hdf5FrameWriter) -> None:
        """Repair what a killed writer left in the directory, open the file."""
        repair_leftovers(writer.path.parent)
        writer.open()

    def _carries_window_counts(self) -> bool | None:
        """Whether the stream carries window_counts, as far as known before
        its frames arrive: the last file, else the last inline frame, else
        the last header's names; None when nothing tells."""
        if self.window_counts_seen is not None:
            return self.window_counts_seen
        frames = self.session.latest.frames
        if frames:
            return next(iter(frames.values())).window_counts is not None
        tags = self.session.diagnostics.last_header.get("extra_tags")
        return "window_counts" in tags if isinstance(tags, list) else None

    async def stop(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            if self.session.sink is writer:
                self.session.use_sink(None, None)  # ends a run still writing
            await asyncio.to_thread(writer.close)
            if writer.frames_written:
                self.window_counts_seen = writer.carried_window_counts
