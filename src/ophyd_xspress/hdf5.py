"""HDF5 writer for a run's frames, laid out as the MAX IV Xspress3 device writes.

``/entry/instrument/xspress3/``:

=========================  ==================  =======================================
dataset                    shape               meaning
=========================  ==================  =======================================
``data``                   (N, channels, bins) raw spectra (stream dtype, uint32)
``all_events``             (N, channels)       raw scaler
``all_good``               (N, channels)       raw scaler (== spectrum sum)
``clock_ticks``            (N, channels)       raw scaler (80 MHz ticks)
``total_ticks``            (N, channels)       raw scaler
``reset_ticks``            (N, channels)       raw scaler
``event_width``            (N, channels)       raw scaler (ticks)
``dead_time_correction``   (N, channels)       as streamed (== the formula)
``output_count_rate``      (N, channels)       OCR in counts/s, *recomputed*: the
                                               stream's field has a units bug
``window_counts``          (N, 2, channels)    raw hardware window counts, if sent
``dead_time_percent``      (N, channels)       100 * dead_ticks / clock_ticks
``live_time``              (N, channels)       s
``input_count_rate``       (N, channels)       ICR estimate, counts/s
``roi``                    (N, channels, R)    raw ROI sums (software ROIs)
``roi_corrected``          (N, channels, R)    ROI sums x dead-time correction
``frame_number``           (N,)                the detector's frame counter
=========================  ==================  =======================================

Row ``i`` holds frame ``i`` of the run whatever order frames arrive in; rows of
frames never received stay zero and ``frame_number`` -1. Frames are written in
batches (one write per dataset per contiguous block, no per-frame resize) with
SWMR on, and flushed before the frames-written counter advances, so a reader
(tiled) never sees a row promised but not on disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Final

import h5py
import numpy as np
import numpy.typing as npt

from .protocol import CLOCK_HZ, Frame, correct, dead_time, roi_sums

__all__ = ["GROUP", "RAW_SCALERS", "DatasetSpec", "Hdf5FrameWriter", "dataset_specs"]

log = logging.getLogger("ophyd_xspress.hdf5")

GROUP: Final = "/entry/instrument/xspress3"

#: The raw per-channel scalers: (name, dtype, units).
RAW_SCALERS: Final = (
    ("all_events", "<u4", "counts"),
    ("all_good", "<u4", "counts"),
    ("clock_ticks", "<u4", "ticks"),
    ("total_ticks", "<u4", "ticks"),
    ("reset_ticks", "<u4", "ticks"),
    ("event_width", "<i4", "ticks"),
)
SCALERS: Final = (*RAW_SCALERS, ("dead_time_correction", "<f8", ""))
DERIVED: Final = (
    ("output_count_rate", "<f8", "counts/s"),
    ("dead_time_percent", "<f8", "%"),
    ("live_time", "<f8", "s"),
    ("input_count_rate", "<f8", "counts/s"),
)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the file: name, per-frame shape, dtype, units."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    units: str

    @property
    def path(self) -> str:
        return f"{GROUP}/{self.name}"

    def chunk_rows(self) -> int:
        per_row = (
            int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize
        )
        return max(1, min(4096, (256 * 1024) // max(1, per_row)))


def dataset_specs(
    channels: int,
    bins: int,
    n_rois: int,
    *,
    spectra_dtype: str = "<u4",
    window_counts: bool = False,
) -> list[DatasetSpec]:
    specs = [DatasetSpec("data", (channels, bins), spectra_dtype, "counts")]
    specs += [DatasetSpec(n, (channels,), d, u) for n, d, u in SCALERS]
    specs += [DatasetSpec(n, (channels,), d, u) for n, d, u in DERIVED]
    if window_counts:
        specs.append(DatasetSpec("window_counts", (2, channels), "<u4", "counts"))
    if n_rois:
        specs.append(DatasetSpec("roi", (channels, n_rois), "<u8", "counts"))
        specs.append(DatasetSpec("roi_corrected", (channels, n_rois), "<f8", "counts"))
    specs.append(DatasetSpec("frame_number", (), "<i8", ""))
    return specs


class Hdf5FrameWriter:
    """Buffers frames by row and writes them in batches (receiver-thread use).

    ``windows``: software ROI bin windows, ``(channels, R, 2)`` inclusive.
    """

    def __init__(
        self,
        path: str | PurePath,
        channels: int,
        bins: int,
        windows: npt.NDArray[np.integer[Any]],
        *,
        expected: int | None = None,
        window_counts: bool = False,
        clock_hz: float = CLOCK_HZ,
        spectra_dtype: str = "<u4",
    ) -> None:
        self.path = Path(path)
        self.channels = channels
        self.bins = bins
        self.windows = np.asarray(windows, dtype=np.int64).reshape(channels, -1, 2)
        self.n_rois = int(self.windows.shape[1])
        self.expected = expected
        self.clock_hz = clock_hz
        self.specs = dataset_specs(
            channels,
            bins,
            self.n_rois,
            spectra_dtype=spectra_dtype,
            window_counts=window_counts,
        )
        self._pending: dict[int, Frame] = {}
        self._lock = threading.Lock()
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self.rows = 0  # current dataset length
        self.frames_written = 0
        self.warned_shape = False

    # -- file ----------------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(self.path, "w", libver="latest")
        group = f.require_group(GROUP)
        entry = f["/entry"]
        entry.attrs["NX_class"] = "NXentry"
        group.attrs["NX_class"] = "NXdetector"
        initial = self.expected or 0
        for spec in self.specs:
            ds = group.create_dataset(
                spec.name,
                shape=(initial, *spec.shape),
                maxshape=(None, *spec.shape),
                dtype=spec.dtype,
                chunks=(spec.chunk_rows(), *spec.shape),
                fillvalue=-1 if spec.name == "frame_number" else 0,
            )
            if spec.units:
                ds.attrs["units"] = spec.units
            self._datasets[spec.name] = ds
        self._datasets["output_count_rate"].attrs["note"] = (
            "all_good / (clock_ticks / 80 MHz) in counts/s; the stream's "
            "output_count_rate field is all_good / (ticks * 80e6), a units bug in "
            "the device, and is not stored"
        )
        if self.n_rois:
            self._datasets["roi"].attrs["windows"] = self.windows
        f.swmr_mode = True
        self._file = f
        self.rows = initial

    def close(self) -> None:
        # The receiver thread may be flushing: the lock makes close wait for it.
        with self._lock:
            if self._file is not None:
                try:
                    self._flush_locked()
                finally:
                    self._file.close()
                    self._file = None
                    self._datasets = {}

    @property
    def is_open(self) -> bool:
        return self._file is not None

    # -- FrameSink -------------------------------------------------------------
    def put(self, row: int, frame: Frame) -> None:
        if frame.spectra.shape != (self.channels, self.bins):
            raise ValueError(
                f"frame {frame.frame} has shape {frame.spectra.shape}, the file "
                f"{self.path} was opened for {(self.channels, self.bins)}"
            )
        with self._lock:
            self._pending[row] = frame

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending or self._file is None:
            return
        pending, self._pending = self._pending, {}
        rows = sorted(pending)
        top = rows[-1] + 1
        if top > self.rows:
            for ds in self._datasets.values():
                ds.resize(top, axis=0)
            self.rows = top
        start = 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i] != rows[i - 1] + 1:
                block = [pending[r] for r in rows[start:i]]
                self._write_block(rows[start], block)
                start = i
        self._file.flush()
        self.frames_written += len(rows)

    def _write_block(self, row: int, frames: Sequence[Frame]) -> None:
        n = len(frames)
        sl = slice(row, row + n)
        ds = self._datasets
        spectra = np.stack([f.spectra for f in frames])
        ds["data"][sl] = spectra
        scal = {
            name: np.stack([f.metadata[name] for f in frames]) for name, _, _ in SCALERS
        }
        for name, value in scal.items():
            ds[name][sl] = value
        dt = dead_time(
            scal["all_events"],
            scal["all_good"],
            scal["clock_ticks"],
            scal["reset_ticks"],
            scal["event_width"],
            clock_hz=self.clock_hz,
            warn=False,
        )
        ds["output_count_rate"][sl] = dt.ocr
        ds["dead_time_percent"][sl] = dt.dead_percent
        ds["live_time"][sl] = dt.live_time
        ds["input_count_rate"][sl] = dt.icr
        if "window_counts" in ds:
            wc = [f.window_counts for f in frames]
            if all(w is not None and w.shape == (2, self.channels) for w in wc):
                ds["window_counts"][sl] = np.stack(wc)  # type: ignore[arg-type]
        if self.n_rois:
            raw = roi_sums(spectra, self.windows)
            ds["roi"][sl] = raw
            ds["roi_corrected"][sl] = correct(raw, dt.dtc)
        ds["frame_number"][sl] = np.array([f.frame for f in frames], dtype=np.int64)
