"""Data providers: inline readings, HDF5 stream resources, progress-only.

Data keys (``N`` is the detector name, e.g. ``xspress``; ``C`` channels, ``R`` ROIs):

=======================  =========  ===========  =====================================
key                      shape      units        value
=======================  =========  ===========  =====================================
``N``                    (C, 4096)  counts       raw spectra (uint32)
``N-dtc``                (C,)                    dead-time correction factor
``N-dead_time``          (C,)       %            100 * dead_ticks / clock_ticks
``N-live_time``          (C,)       s            real_time / dtc
``N-icr``                (C,)       counts/s     input count rate estimate (ocr * dtc)
``N-ocr``                (C,)       counts/s     all_good / real_time
``N-all_events`` ...     (C,)       counts/ticks raw scalers: all_events, all_good,
                                                 clock_ticks, total_ticks,
                                                 reset_ticks, event_width
``N-roi``                (C, R)     counts       raw ROI sums
``N-roi_corrected``      (C, R)     counts       ROI sums x dtc
``N-frame_number``       ()                      the detector's frame counter
``N-<roi>``              ()         counts       corrected ROI sum over channels
                                                 (inline only, hinted)
``N-<roi>-ch<c>``        ()         counts       corrected ROI sum, channel c
                                                 (inline only, hinted)
``N-dead_time-ch<c>``    ()         %            dead time, channel c (inline, hinted)
``N-anomalies``          ()                      frames missing/repeated/out of
                                                 order/stale since stage (inline)
=======================  =========  ===========  =====================================
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

from ..hdf5 import RAW_SCALERS, Hdf5FrameWriter
from ..protocol import correct, dead_time_from_scalers, roi_sums
from ._rois import windows_array
from ._runtime import XspressRuntime

__all__ = [
    "Hdf5DataProvider",
    "InlineDataProvider",
    "ProgressOnlyProvider",
    "hinted_keys",
]

_RAW = RAW_SCALERS
#: key suffix -> (HDF5 dataset, dtype, units, precision)
_PER_CHANNEL: dict[str, tuple[str, str, str, int | None]] = {
    "dtc": ("dead_time_correction", "<f8", "", 6),
    "dead_time": ("dead_time_percent", "<f8", "%", 3),
    "live_time": ("live_time", "<f8", "s", 6),
    "icr": ("input_count_rate", "<f8", "counts/s", 1),
    "ocr": ("output_count_rate", "<f8", "counts/s", 1),
    **{name: (name, dt, units, None) for name, dt, units in _RAW},
}


def _key(
    source: str,
    shape: list[int],
    dtype_numpy: str,
    units: str = "",
    precision: int | None = None,
) -> DataKey:
    dk: dict[str, Any] = {
        "source": source,
        "shape": shape,
        "dtype": "array"
        if shape
        else ("number" if dtype_numpy[1] in "fiu" else "string"),
        "dtype_numpy": dtype_numpy,
    }
    if dtype_numpy[1] in "iu" and not shape:
        dk["dtype"] = "integer"
    if units:
        dk["units"] = units
    if precision is not None:
        dk["precision"] = precision
    return DataKey(**dk)  # type: ignore[typeddict-item]


def hinted_keys(rt: XspressRuntime, name: str) -> list[str]:
    keys: list[str] = []
    for roi in rt.rois:
        keys.append(f"{name}-{roi.name}")
        keys += [f"{name}-{roi.name}-ch{c}" for c in range(rt.channels)]
    keys += [f"{name}-dead_time-ch{c}" for c in range(rt.channels)]
    return keys


class InlineDataProvider(ReadableDataProvider):
    """One frame's spectra, scalers and physics as event readings."""

    def __init__(self, rt: XspressRuntime, name: str) -> None:
        self.rt = rt
        self.name = name
        self.windows = windows_array(rt.rois, rt.channels)

    def _source(self, what: str) -> str:
        return f"zmq:{self.rt.stream}#{what}"

    async def make_datakeys(self) -> dict[str, DataKey]:
        rt, n = self.rt, self.name
        c, r = rt.channels, len(rt.rois)
        keys: dict[str, DataKey] = {
            n: _key(self._source("spectra"), [c, rt.bins], "<u4", "counts")
        }
        for suffix, (_, dt, units, prec) in _PER_CHANNEL.items():
            keys[f"{n}-{suffix}"] = _key(self._source(suffix), [c], dt, units, prec)
        keys[f"{n}-roi"] = _key(self._source("roi"), [c, r], "<u8", "counts")
        keys[f"{n}-roi_corrected"] = _key(
            self._source("roi_corrected"), [c, r], "<f8", "counts", 1
        )
        keys[f"{n}-frame_number"] = _key(self._source("frame"), [], "<i8")
        for roi in rt.rois:
            keys[f"{n}-{roi.name}"] = _key(
                self._source(f"roi:{roi.name}"), [], "<f8", "counts", 1
            )
            for ch in range(c):
                keys[f"{n}-{roi.name}-ch{ch}"] = _key(
                    self._source(f"roi:{roi.name}:ch{ch}"), [], "<f8", "counts", 1
                )
        for ch in range(c):
            keys[f"{n}-dead_time-ch{ch}"] = _key(
                self._source(f"dead_time:ch{ch}"), [], "<f8", "%", 3
            )
        keys[f"{n}-anomalies"] = _key(self._source("anomalies"), [], "<i8")
        return keys

    async def make_readings(self) -> dict[str, Reading]:
        rt, n = self.rt, self.name
        frames = rt.latest.frames
        if not frames:
            raise RuntimeError(
                f"{n}: no frame from {rt.stream} to read (trigger did not complete?)"
            )
        frame = frames[min(frames)]
        if frame.spectra.shape != (rt.channels, rt.bins):
            raise ValueError(
                f"{n}: the stream sends {frame.spectra.shape[0]} channels x "
                f"{frame.spectra.shape[1]} bins but the detector was configured for "
                f"{rt.channels} x {rt.bins}: pass channels={frame.spectra.shape[0]}"
            )
        ts = time.time()
        dt = dead_time_from_scalers(frame.metadata, warn=False)
        raw_roi = roi_sums(frame.spectra, self.windows)
        corr_roi = correct(raw_roi, dt.dtc)
        values: dict[str, Any] = {
            n: np.array(frame.spectra, dtype=np.uint32, copy=True),
            f"{n}-dtc": frame["dead_time_correction"].astype(np.float64),
            f"{n}-dead_time": dt.dead_percent,
            f"{n}-live_time": dt.live_time,
            f"{n}-icr": dt.icr,
            f"{n}-ocr": dt.ocr,
            f"{n}-roi": raw_roi,
            f"{n}-roi_corrected": corr_roi,
            f"{n}-frame_number": frame.frame,
            f"{n}-anomalies": int(sum(rt.anomalies.values())),
        }
        for name, dtype, _ in _RAW:
            values[f"{n}-{name}"] = frame[name].astype(dtype)
        for r, roi in enumerate(rt.rois):
            values[f"{n}-{roi.name}"] = float(corr_roi[:, r].sum())
            for ch in range(rt.channels):
                values[f"{n}-{roi.name}-ch{ch}"] = float(corr_roi[ch, r])
        for ch in range(rt.channels):
            values[f"{n}-dead_time-ch{ch}"] = float(dt.dead_percent[ch])
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

    Data keys have the per-frame shape (the leading ``collections_per_event`` axis
    ophyd-async would add is dropped when it is 1), so tiled returns
    ``(N, channels, 4096)`` for spectra, as for inline readings.
    """

    def __init__(
        self, rt: XspressRuntime, name: str, uri: str, writer: Hdf5FrameWriter
    ) -> None:
        self.rt = rt
        self.name = name
        self.writer = writer
        by_dataset = {spec.name: spec for spec in writer.specs}
        resources: list[StreamResourceInfo] = []
        self.meta: dict[str, tuple[str, int | None]] = {}

        def add(key: str, dataset: str, units: str, precision: int | None) -> None:
            spec = by_dataset[dataset]
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
            self.meta[key] = (units, precision)

        add(name, "data", "counts", None)
        for suffix, (dataset, _, units, prec) in _PER_CHANNEL.items():
            add(f"{name}-{suffix}", dataset, units, prec)
        if "roi" in by_dataset:
            add(f"{name}-roi", "roi", "counts", None)
            add(f"{name}-roi_corrected", "roi_corrected", "counts", 1)
        add(f"{name}-frame_number", "frame_number", "", None)
        super().__init__(
            uri=uri,
            resources=resources,
            mimetype="application/x-hdf5",
            collections_written_signal=rt.frames_done,
        )

    async def make_datakeys(self, collections_per_event: int) -> dict[str, DataKey]:
        keys = await super().make_datakeys(collections_per_event)
        for key, dk in keys.items():
            shape = list(dk["shape"])
            if collections_per_event == 1 and shape and shape[0] == 1:
                shape = shape[1:]
            dk["shape"] = shape
            dk["dtype"] = "array" if shape else "number"
            if not shape and dk.get("dtype_numpy", "")[1:2] in ("i", "u"):
                dk["dtype"] = "integer"
            units, precision = self.meta[key]
            if units:
                dk["units"] = units
            if precision is not None:
                dk["precision"] = precision
        return keys
