"""Where the frames go: inline readings (step scans) or an HDF5 file with
StreamResource / StreamDatum (fly scans, and step scans with ``data="hdf5"``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ophyd_async.core import (
    DetectorDataLogic,
    PathProvider,
    ReadableDataProvider,
    StreamableDataProvider,
)

from .._constants import CLOCK_HZ
from ..hdf5 import Hdf5FrameWriter
from ._providers import (
    Hdf5DataProvider,
    InlineDataProvider,
    ProgressOnlyProvider,
    hinted_keys,
)
from ._session import StreamSession
from ._settings import AcquisitionSettings, DataConfig

__all__ = ["XspressHdf5DataLogic", "XspressInlineDataLogic"]


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
        )
        await asyncio.to_thread(writer.open)
        self.writer = writer
        self.session.use_sink(writer, writer.durable)
        return Hdf5DataProvider(
            datakey_name,
            f"{info.directory_uri}{info.filename}.h5",
            writer.specs,
            self.session.frames_done,
            self.session.frames_stored,
        )

    async def stop(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            if self.session.sink is writer:
                self.session.use_sink(None, None)  # ends a run still writing
            await asyncio.to_thread(writer.close)
