"""The file's layout: one dataset per schema quantity, its chunks and attributes.

Names, dtypes, units and per-frame shapes come from :mod:`ophyd_xspress._schema`
(their only home); this module adds what is particular to the file: the chunk
shape (about :data:`CHUNK_BYTES` of rows, whole frames), the NeXus classes of
the groups, the ``units`` / ``note`` / ``windows`` attributes, and how the file
is created (libver latest, SWMR, chunks aligned for ``O_DIRECT``, the spectra's
chunks allocated at once for a run of known length).

Every dataset has one row per frame of the run; rows of frames never received
stay zero (``frame_number`` -1: its fill value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np
import numpy.typing as npt

from .._schema import GROUP, QUANTITIES, Source, frame_shape, quantities
from ._chunk_io import ALIGN

__all__ = [
    "CHUNK_BYTES",
    "SCALERS",
    "DatasetSpec",
    "create_file",
    "dataset_specs",
]

#: Target size of one HDF5 chunk (the spectra of 16 frames of 4 x 4096 uint32).
CHUNK_BYTES: Final = 1 << 20

#: ``(dataset, dtype, units)`` of every per-channel column the stream sends (the
#: raw scalers and its own ``dead_time_correction``), read from the schema.
#: Compatibility for callers that unpack tuples (the soak tests); new code reads
#: :mod:`ophyd_xspress._schema` directly.
SCALERS: Final = tuple(
    (q.dataset, q.dtype, q.units)
    for q in QUANTITIES
    if q.source == "stream" and q.shape == ("C",)
)

#: Attributes that say what a dataset holds when its name does not.
NOTES: Final[Mapping[str, str]] = {
    "output_count_rate": (
        "all_good / (clock_ticks / 80 MHz) in counts/s; the stream's "
        "output_count_rate field is all_good / (ticks * 80e6), a units bug "
        "in the device, and is not stored"
    ),
    "dtc": (
        "clock_ticks / (clock_ticks - dead_ticks), from the raw scalers; "
        "dead_time_correction is the device's own factor, as streamed"
    ),
}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the file: name, per-frame shape, dtype, units, source."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    units: str
    #: Where its values come from (see :class:`ophyd_xspress._schema.Quantity`).
    source: Source = "stream"

    @property
    def path(self) -> str:
        return f"{GROUP}/{self.name}"

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def chunk_rows(self) -> int:
        """Rows per chunk: about :data:`CHUNK_BYTES`, 1 to 4096 rows."""
        return max(1, min(4096, CHUNK_BYTES // max(1, self.row_bytes)))

    def chunk_bytes(self) -> int:
        return self.chunk_rows() * self.row_bytes


def dataset_specs(
    channels: int,
    bins: int,
    n_rois: int,
    *,
    spectra_dtype: str = "<u4",
    window_counts: bool = False,
) -> list[DatasetSpec]:
    """The datasets of a run, in schema order (``data`` first): the ROI sums
    only with ROIs, ``window_counts`` only when the stream carries them."""
    specs: list[DatasetSpec] = []
    for q in quantities(window_counts=window_counts, rois=n_rois > 0):
        shape = frame_shape(q, channels=channels, bins=bins, rois=n_rois)
        dtype = spectra_dtype if q.dataset == "data" else q.dtype
        specs.append(DatasetSpec(q.dataset, shape, dtype, q.units, q.source))
    return specs


def create_file(
    path: Path,
    specs: list[DatasetSpec],
    *,
    rows: int,
    windows: npt.NDArray[np.integer[Any]],
    aligned: bool,
) -> tuple[h5py.File, dict[str, h5py.Dataset]]:
    """Create the file at ``path`` with every dataset ``rows`` long, in SWMR mode.

    ``aligned``: chunks of the spectra start on a page boundary (as ``O_DIRECT``
    needs) and, when ``rows`` is known, are all allocated now with nothing
    written (rows never written stay holes of a sparse file: zeros).
    ``windows``: the ROI bin windows, stored as an attribute of ``roi``.
    """
    data = specs[0]
    # large objects (the spectra's chunks) start on a page boundary; the small
    # datasets' chunks mostly stay below the threshold
    f = h5py.File(
        path,
        "w",
        libver="latest",
        alignment_threshold=max(ALIGN, data.chunk_bytes()) if aligned else 1,
        alignment_interval=ALIGN if aligned else 1,
    )
    try:
        group = f.require_group(GROUP)
        f["/entry"].attrs["NX_class"] = "NXentry"
        group.attrs["NX_class"] = "NXdetector"
        datasets = {
            spec.name: _create_dataset(
                group, spec, rows, early=spec is data and aligned and rows > 0
            )
            for spec in specs
        }
        for name, note in NOTES.items():
            if name in datasets:
                datasets[name].attrs["note"] = note
        if "roi" in datasets:
            datasets["roi"].attrs["windows"] = windows
        f.swmr_mode = True
    except BaseException:
        f.close()
        raise
    return f, datasets


def _create_dataset(
    group: h5py.Group, spec: DatasetSpec, rows: int, *, early: bool
) -> h5py.Dataset:
    allocation: dict[str, Any] = {}
    if early:
        # every chunk allocated now, nothing written by HDF5: the writer
        # thread fills them with pwrite (rows never written are the file's
        # holes: zeros)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        allocation = {"dcpl": dcpl, "fill_time": "never"}
    ds = group.create_dataset(
        spec.name,
        shape=(rows, *spec.shape),
        maxshape=(None, *spec.shape),
        dtype=spec.dtype,
        chunks=(spec.chunk_rows(), *spec.shape),
        fillvalue=-1 if spec.name == "frame_number" else 0,
        # room for the chunk being filled and the next; rows are written
        # once, so finished chunks are evicted at once (the default 1 MiB
        # cache per dataset kept growing RSS)
        rdcc_nbytes=2 * spec.chunk_bytes(),
        rdcc_w0=1.0,
        **allocation,
    )
    if spec.units:
        ds.attrs["units"] = spec.units
    return ds
