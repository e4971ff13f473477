"""Data providers: inline readings, HDF5 stream resources, progress only.

Every data key comes from :mod:`ophyd_xspress._schema` (suffix, dtype, units,
precision); the inline provider adds the per-ROI and per-channel scalars that
live tables plot (:func:`summary_keys`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
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
from ..protocol import derive
from ._session import Diagnostics, LatestFrames
from ._settings import DataConfig

__all__ = [
    "Hdf5DataProvider",
    "InlineDataProvider",
    "ProgressOnlyProvider",
    "hinted_keys",
    "summary_keys",
]


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
    corrected sum of each ROI (over channels, and per channel) and the dead
    time of each channel."""
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
    return keys


def hinted_keys(name: str, config: DataConfig) -> list[str]:
    return [key for key, _, _ in summary_keys(name, config)]


def _inline_quantities() -> list[Quantity]:
    # window_counts are in the file only (the stream may not carry them)
    return [
        q for q in quantities(window_counts=False, rois=True) if q.dataset != "data"
    ]


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

    async def make_datakeys(self) -> dict[str, DataKey]:
        cfg, n = self.config, self.name
        sizes = {"channels": cfg.channels, "bins": cfg.bins, "rois": len(cfg.rois)}
        spectra = by_dataset("data")
        keys = {
            n: _data_key(
                self._source("spectra"),
                list(frame_shape(spectra, **sizes)),
                spectra.dtype,
                spectra.units,
            )
        }
        for q in _inline_quantities():
            tag = "frame" if q.dataset == "frame_number" else q.suffix
            keys[q.key(n)] = _data_key(
                self._source(tag),
                list(frame_shape(q, **sizes)),
                q.dtype,
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
            raise ValueError(
                f"{n}: the stream sends {frame.spectra.shape[0]} channels x "
                f"{frame.spectra.shape[1]} bins but the detector was configured for "
                f"{cfg.channels} x {cfg.bins}: pass channels={frame.spectra.shape[0]}"
            )
        ts = time.time()
        derived = derive(frame.metadata, frame.spectra, self.windows, warn=False)
        columns = derived.columns()
        values: dict[str, Any] = {
            n: np.array(frame.spectra, dtype=by_dataset("data").dtype, copy=True)
        }
        for q in _inline_quantities():
            if q.source == "stream":
                values[q.key(n)] = np.asarray(frame[q.dataset]).astype(q.dtype)
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
    released to end a failed acquisition's wait.
    """

    def __init__(
        self,
        name: str,
        uri: str,
        specs: list[Any],
        frames_done: SignalR[int],
        frames_stored: SignalR[int],
    ) -> None:
        self.name = name
        self.frames_stored = frames_stored
        resources: list[StreamResourceInfo] = []
        self.meta: dict[str, tuple[str, int | None]] = {}
        for spec in specs:
            q = by_dataset(spec.name)
            if q.dataset == "window_counts":
                continue  # in the file; a data key once the files issue lands
            key = q.key(name)
            resources.append(
                StreamResourceInfo(
                    data_key=key,
                    shape=spec.shape,
                    chunk_shape=(spec.chunk_rows(), *spec.shape),
                    dtype_numpy=spec.dtype,
                    parameters={"dataset": spec.path},
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
        async for doc in super().make_stream_docs(
            min(collections_written, stored), collections_per_event
        ):
            yield doc
