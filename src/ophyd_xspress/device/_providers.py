"""Data providers: inline readings, HDF5 stream resources, progress only.

Every data key comes from :mod:`ophyd_xspress._schema` (suffix, dtype, units,
precision); the inline provider adds the per-ROI and per-channel scalars that
live tables plot (:func:`summary_keys`). Inline readings carry what the stream
sent in the dtype it was sent in (the keys say which: they are made from the
frame in hand); ``window_counts`` is a data key only when the stream carries
them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
from bluesky.protocols import Reading, StreamAsset
from event_model import DataKey
from ophyd_async.core import (
    ReadableDataProvider,
    SignalR,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
)

from .._schema import Quantity, by_dataset, frame_shape, quantities
from ..hdf5 import DatasetSpec
from ..protocol import Frame, derive
from ._session import Diagnostics, LatestFrames
from ._settings import DataConfig

__all__ = [
    "Hdf5DataProvider",
    "InlineDataProvider",
    "ProgressOnlyProvider",
    "hinted_keys",
    "summary_keys",
]

log = logging.getLogger("ophyd_xspress.device")


def _data_key(
    source: str,
    shape: list[int],
    dtype_numpy: str,
    units: str = "",
    precision: int | None = None,
) -> DataKey:
    kind = np.dtype(dtype_numpy).kind
    dk: dict[str, Any] = {
        "source": source,
        "shape": shape,
        "dtype": "array" if shape else ("integer" if kind in "iu" else "number"),
        "dtype_numpy": dtype_numpy,
    }
    if units:
        dk["units"] = units
    if precision is not None:
        dk["precision"] = precision
    return DataKey(**dk)  # type: ignore[typeddict-item]


def summary_keys(name: str, config: DataConfig) -> list[tuple[str, str, str]]:
    """``(key, source tag, units)`` of the scalars live tables plot: the
    corrected sum of each ROI (over channels, and per channel), the dead time
    of each channel and the largest of them."""
    keys: list[tuple[str, str, str]] = []
    for roi in config.rois:
        keys.append((f"{name}-{roi.name}", f"roi:{roi.name}", "counts"))
        keys += [
            (f"{name}-{roi.name}-ch{c}", f"roi:{roi.name}:ch{c}", "counts")
            for c in range(config.channels)
        ]
    keys += [
        (f"{name}-dead_time-ch{c}", f"dead_time:ch{c}", "%")
        for c in range(config.channels)
    ]
    keys.append((f"{name}-dead_time_max", "dead_time:max", "%"))
    return keys


def hinted_keys(name: str, config: DataConfig) -> list[str]:
    """The step-scan scalars BestEffortCallback plots, one panel each: by
    default the corrected sum of each ROI over channels and the largest
    channel dead time; with ``per_channel_hints`` every channel's too."""
    if config.per_channel_hints:
        return [key for key, _, _ in summary_keys(name, config)]
    return [f"{name}-{roi.name}" for roi in config.rois] + [f"{name}-dead_time_max"]


def _inline_quantities(config: DataConfig, frame: Frame | None) -> list[Quantity]:
    """The quantities of an event: window_counts when the frame carries them,
    the summed spectrum when configured."""
    carried = frame is not None and frame.window_counts is not None
    chosen = quantities(window_counts=carried, rois=True, summed=config.summed_spectrum)
    return [q for q in chosen if q.dataset != "data"]


def _sent_dtype(q: Quantity, frame: Frame | None) -> str:
    """The dtype ``q`` has in ``frame`` as sent (the schema's without one)."""
    if frame is None or q.source != "stream":
        return q.dtype
    values = frame.spectra if q.dataset == "data" else frame.metadata.get(q.dataset)
    return q.dtype if values is None else np.asarray(values).dtype.str


class InlineDataProvider(ReadableDataProvider):
    """One frame's spectra, scalers and physics as event readings."""

    def __init__(
        self,
        name: str,
        config: DataConfig,
        latest: LatestFrames,
        diagnostics: Diagnostics,
    ) -> None:
        self.name = name
        self.config = config
        self.latest = latest
        self.diagnostics = diagnostics
        self.windows = config.windows()

    def _source(self, what: str) -> str:
        return f"zmq:{self.config.stream}#{what}"

    def _frame(self) -> Frame | None:
        frames = self.latest.frames
        return frames[min(frames)] if frames else None

    async def make_datakeys(self) -> dict[str, DataKey]:
        cfg, n = self.config, self.name
        sizes = {"channels": cfg.channels, "bins": cfg.bins, "rois": len(cfg.rois)}
        frame = self._frame()  # described after the first trigger: in hand
        spectra = by_dataset("data")
        keys = {
            n: _data_key(
                self._source("spectra"),
                list(frame_shape(spectra, **sizes)),
                _sent_dtype(spectra, frame),
                spectra.units,
            )
        }
        for q in _inline_quantities(cfg, frame):
            tag = "frame" if q.dataset == "frame_number" else q.suffix
            keys[q.key(n)] = _data_key(
                self._source(tag),
                list(frame_shape(q, **sizes)),
                _sent_dtype(q, frame),
                q.units,
                q.precision,
            )
        for key, tag, units in summary_keys(n, cfg):
            precision = 3 if units == "%" else 1
            keys[key] = _data_key(self._source(tag), [], "<f8", units, precision)
        keys[f"{n}-anomalies"] = _data_key(self._source("anomalies"), [], "<i8")
        return keys

    async def make_readings(self) -> dict[str, Reading]:
        cfg, n = self.config, self.name
        frames = self.latest.frames
        if not frames:
            raise RuntimeError(
                f"{n}: no frame from {cfg.stream} to read (trigger did not complete?)"
            )
        frame = frames[min(frames)]
        if frame.spectra.shape != (cfg.channels, cfg.bins):
            channels, bins = frame.spectra.shape
            advice = (
                f"pass channels={channels}"
                if channels != cfg.channels
                else f"pass bins={bins}"
            )
            raise ValueError(
                f"{n}: the stream sends {channels} channels x {bins} bins but the "
                f"detector was configured for {cfg.channels} x {cfg.bins}: {advice}"
            )
        ts = time.time()
        derived = derive(
            frame.metadata,
            frame.spectra,
            self.windows,
            warn=False,
            summed=cfg.summed_spectrum,
        )
        columns = derived.columns()
        # as sent, in the dtype sent: never cast
        values: dict[str, Any] = {n: np.array(frame.spectra, copy=True)}
        for q in _inline_quantities(cfg, frame):
            if q.source == "stream":
                values[q.key(n)] = np.array(frame[q.dataset], copy=True)
            elif q.dataset == "frame_number":
                values[q.key(n)] = frame.frame
            else:
                values[q.key(n)] = columns[q.dataset]
        corrected = columns["roi_corrected"]
        dead = columns["dead_time_percent"]
        for r, roi in enumerate(cfg.rois):
            values[f"{n}-{roi.name}"] = float(corrected[:, r].sum())
            for ch in range(cfg.channels):
                values[f"{n}-{roi.name}-ch{ch}"] = float(corrected[ch, r])
        for ch in range(cfg.channels):
            values[f"{n}-dead_time-ch{ch}"] = float(dead[ch])
        values[f"{n}-dead_time_max"] = float(np.max(dead))  # NaN if one has none
        values[f"{n}-anomalies"] = int(sum(self.diagnostics.anomalies.values()))
        return {k: Reading(value=v, timestamp=ts) for k, v in values.items()}


class ProgressOnlyProvider(StreamableDataProvider):
    """No data keys; its counter lets trigger() wait for the frame to arrive."""

    def __init__(self, frames_done: SignalR[int]) -> None:
        self.collections_written_signal = frames_done

    async def make_datakeys(self, collections_per_event: int) -> dict[str, DataKey]:
        return {}

    async def make_stream_docs(
        self, collections_written: int, collections_per_event: int
    ) -> AsyncIterator[StreamAsset]:
        for _ in ():
            yield _


class Hdf5DataProvider(StreamResourceDataProvider):
    """StreamResource per dataset; StreamDatum as frames reach disk.

    Data keys have the per-frame shape (the leading ``collections_per_event``
    axis ophyd-async would add is dropped when it is 1), so tiled returns
    ``(N, channels, 4096)`` for spectra, as for inline readings. Stream datum
    documents follow ``frames_stored`` (rows durably on disk), never a count
    released to end a failed acquisition's wait. The StreamResource of a
    compressed dataset names its compression and chunk shape.

    ``window_counts``: the file's spec, when the stream is known to carry them
    (the key is declared); ``in_file`` tells, once rows are on disk, whether
    the file has them (a stream that stopped carrying them: no StreamResource).
    """

    def __init__(
        self,
        name: str,
        uri: str,
        specs: Sequence[DatasetSpec],
        frames_done: SignalR[int],
        frames_stored: SignalR[int],
        *,
        window_counts: DatasetSpec | None = None,
        in_file: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.frames_stored = frames_stored
        self.in_file = in_file
        resources: list[StreamResourceInfo] = []
        self.meta: dict[str, tuple[str, int | None]] = {}
        every = [*specs, *([window_counts] if window_counts is not None else [])]
        for spec in every:
            q = by_dataset(spec.name)
            key = q.key(name)
            parameters: dict[str, Any] = {"dataset": spec.path}
            if spec.compression is not None:
                parameters["compression"] = spec.compression
            resources.append(
                StreamResourceInfo(
                    data_key=key,
                    shape=spec.shape,
                    chunk_shape=(spec.chunk_rows(), *spec.shape),
                    dtype_numpy=spec.dtype,
                    parameters=parameters,
                    source=f"{uri}#{spec.path}",
                )
            )
            self.meta[key] = (q.units, q.precision)
        super().__init__(
            uri=uri,
            resources=resources,
            mimetype="application/x-hdf5",
            collections_written_signal=frames_done,
        )
        self._window_counts_key = (
            by_dataset("window_counts").key(name) if window_counts else None
        )

    async def make_datakeys(self, collections_per_event: int) -> dict[str, DataKey]:
        keys = await super().make_datakeys(collections_per_event)
        for key, dk in keys.items():
            shape = list(dk["shape"])
            if collections_per_event == 1 and shape and shape[0] == 1:
                shape = shape[1:]
            dk["shape"] = shape
            kind = np.dtype(dk.get("dtype_numpy", "<f8")).kind
            dk["dtype"] = (
                "array" if shape else ("integer" if kind in "iu" else "number")
            )
            units, precision = self.meta[key]
            if units:
                dk["units"] = units
            if precision is not None:
                dk["precision"] = precision
        return keys

    async def make_stream_docs(
        self, collections_written: int, collections_per_event: int
    ) -> AsyncIterator[StreamAsset]:
        stored = await self.frames_stored.get_value()
        if stored and not self.last_emitted:
            self._drop_absent_window_counts()
        async for doc in super().make_stream_docs(
            min(collections_written, stored), collections_per_event
        ):
            yield doc

    def _drop_absent_window_counts(self) -> None:
        """Declared, but the first frames written did not carry them: no
        StreamResource would point at a dataset that is not in the file."""
        key = self._window_counts_key
        if key is None or self.in_file is None or self.in_file():
            return
        log.warning(
            "%s: the stream no longer carries window_counts: %s is declared "
            "but has no data in this run",
            self.name,
            key,
        )
        self.bundles = [
            b for b in self.bundles if b.stream_resource_doc["data_key"] != key
        ]
