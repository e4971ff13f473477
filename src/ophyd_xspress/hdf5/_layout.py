"""The file's layout: one dataset per schema quantity, its chunks and attributes.

Names, dtypes, units and per-frame shapes come from :mod:`ophyd_xspress._schema`
(their only home); this module adds what is particular to the file: the chunk
shape (whole frames; about :data:`CHUNK_BYTES`, or ``chunk_frames`` frames for
the spectra), the compression of the spectra, the NeXus classes of the groups,
the ``units`` / ``note`` / ``windows`` attributes, the fields PyMca reads (the
bin index, the per-channel calibration and one NXdetector group per channel,
:data:`~ophyd_xspress._schema.CHANNEL_FIELDS`), and how the file is created
(libver latest, chunks aligned for ``O_DIRECT``, the spectra's chunks
allocated at once for an uncompressed run of known length).

Every dataset has one row per frame of the run; rows of frames never received
stay zero (``frame_number`` -1: its fill value). ``window_counts`` is created
by the writer only when the first frames written carry them
(:func:`create_dataset`), so the file enters SWMR mode then, not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np
import numpy.typing as npt

from .._schema import (
    CHANNEL_GROUP,
    GROUP,
    QUANTITIES,
    STREAM_OCR_FACTOR,
    Source,
    frame_shape,
    quantities,
)
from ..protocol import Calibration
from ._chunk_io import ALIGN
from ._codec import Codec, Compression, codec_for

__all__ = [
    "CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "SCALERS",
    "DatasetSpec",
    "check_storage",
    "create_dataset",
    "create_file",
    "dataset_specs",
]

#: Target size of one HDF5 chunk (the spectra of 16 frames of 4 x 4096 uint32).
CHUNK_BYTES: Final = 1 << 20
#: The largest chunk of spectra ``chunk_frames`` may ask for (a chunk must fit
#: in one of the writer's blocks).
MAX_CHUNK_BYTES: Final = 16 << 20
#: Datasets whose rows are spectra: chunked by ``chunk_frames``, compressed.
SPECTRA: Final = ("data", "summed_spectrum")

#: ``(dataset, dtype, units)`` of every per-channel column the stream sends (the
#: raw scalers, its own ``dead_time_correction`` and ``output_count_rate``),
#: read from the schema. Compatibility for callers that unpack tuples (the soak
#: tests); new code reads :mod:`ophyd_xspress._schema` directly.
SCALERS: Final = tuple(
    (q.dataset, q.dtype, q.units)
    for q in QUANTITIES
    if q.source == "stream" and q.shape == ("C",)
)

#: Attributes that say what a dataset holds when its name does not.
NOTES: Final[Mapping[str, str]] = {
    "output_count_rate": (
        "the stream's own output_count_rate, as sent (and as the MAX IV writer "
        "stores it): all_good / (total_ticks * 80e6), a units bug in the device. "
        f"Times {STREAM_OCR_FACTOR:g} it is in counts/s; the rate computed from "
        "the raw scalers is in ocr"
    ),
    "ocr": (
        "all_good / (clock_ticks / 80 MHz) in counts/s, from the raw scalers; "
        "output_count_rate holds the stream's own field (a units bug)"
    ),
    "dtc": (
        "clock_ticks / (clock_ticks - dead_ticks), from the raw scalers; "
        "dead_time_correction is the device's own factor, as streamed"
    ),
    "summed_spectrum": (
        "sum over channels of data * dtc; NaN or inf in a frame where a "
        "channel's dtc is (no clock ticks, or saturated)"
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
    #: Rows per chunk; None: about :data:`CHUNK_BYTES` (1 to 4096 rows).
    rows_per_chunk: int | None = None
    #: The compression of its chunks (spectra only), None: none.
    compression: str | None = None

    @property
    def path(self) -> str:
        return f"{GROUP}/{self.name}"

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def chunk_rows(self) -> int:
        """Rows per chunk."""
        if self.rows_per_chunk is not None:
            return self.rows_per_chunk
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
    summed: bool = False,
    chunk_frames: int | None = None,
    compression: str | None = None,
) -> list[DatasetSpec]:
    """The datasets of a run, in schema order (``data`` first): the ROI sums
    only with ROIs, ``window_counts`` only when the stream carries them, the
    summed spectrum on request. ``chunk_frames``: frames per chunk of the
    spectra (default: about 1 MiB of ``data``)."""
    row_bytes = channels * bins * np.dtype(spectra_dtype).itemsize
    if chunk_frames is None:
        chunk_frames = max(1, min(4096, CHUNK_BYTES // row_bytes))
    elif isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int):
        raise TypeError(f"chunk_frames must be an integer, got {chunk_frames!r}")
    elif not 1 <= chunk_frames * row_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(
            f"chunk_frames must be 1..{max(1, MAX_CHUNK_BYTES // row_bytes)} for "
            f"{channels} x {bins} spectra (chunks of at most "
            f"{MAX_CHUNK_BYTES >> 20} MiB), got {chunk_frames}"
        )
    specs: list[DatasetSpec] = []
    for q in quantities(window_counts=window_counts, rois=n_rois > 0, summed=summed):
        shape = frame_shape(q, channels=channels, bins=bins, rois=n_rois)
        spectra = q.dataset in SPECTRA
        specs.append(
            DatasetSpec(
                q.dataset,
                shape,
                spectra_dtype if q.dataset == "data" else q.dtype,
                q.units,
                q.source,
                rows_per_chunk=chunk_frames if spectra else None,
                compression=compression if spectra else None,
            )
        )
    return specs


def check_storage(
    channels: int, bins: int, compression: Compression | None, chunk_frames: int | None
) -> None:
    """Refuse a compression or chunk size the writer would refuse, early (at
    the detector's construction, not at its first fly scan)."""
    if compression is not None:
        codec_for(compression)
    dataset_specs(channels, bins, 0, chunk_frames=chunk_frames)


def create_file(
    path: Path,
    specs: Sequence[DatasetSpec],
    *,
    rows: int,
    windows: npt.NDArray[np.integer[Any]],
    aligned: bool,
    codec: Codec | None = None,
    calibration: npt.NDArray[np.float64] | None = None,
) -> tuple[h5py.File, dict[str, h5py.Dataset]]:
    """Create the file at ``path`` with every dataset ``rows`` long, not yet in
    SWMR mode (the writer switches it on once the datasets all exist).

    ``aligned``: chunks of uncompressed spectra start on a page boundary (as
    ``O_DIRECT`` needs) and, when ``rows`` is known, are all allocated now with
    nothing written (rows never written stay holes of a sparse file: zeros).
    ``windows``: the ROI bin windows, stored as an attribute of ``roi``.
    ``codec``: the compression of the spectra (their specs name it).
    ``calibration``: ``(channels, 3)`` PyMca coefficients in keV (see
    :meth:`ophyd_xspress.protocol.Calibration.pymca`).
    """
    data = specs[0]
    early = aligned and rows > 0 and codec is None
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
        f["/entry/instrument"].attrs["NX_class"] = "NXinstrument"
        group.attrs["NX_class"] = "NXdetector"
        datasets = {
            spec.name: create_dataset(
                group, spec, rows, early=spec is data and early, codec=codec
            )
            for spec in specs
        }
        if "roi" in datasets:
            datasets["roi"].attrs["windows"] = windows
        channels, bins = data.shape
        if calibration is None:  # the detector's default calibration
            calibration = np.array([Calibration().pymca()] * channels)
        calibration = np.asarray(calibration, np.float64)
        _spectrum_fields(group, calibration, bins)
        _channel_groups(f, group, specs, rows, calibration)
    except BaseException:
        f.close()
        raise
    return f, datasets


def create_dataset(
    group: h5py.Group,
    spec: DatasetSpec,
    rows: int,
    *,
    early: bool = False,
    codec: Codec | None = None,
) -> h5py.Dataset:
    """One dataset of ``spec`` with ``rows`` rows; ``early``: every chunk
    allocated now (for ``pwrite``), ``codec``: compressed (spectra only)."""
    options: dict[str, Any] = {}
    if early:
        # every chunk allocated now, nothing written by HDF5: the writer
        # thread fills them with pwrite (rows never written are the file's
        # holes: zeros)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        options = {"dcpl": dcpl, "fill_time": "never"}
    elif codec is not None and spec.compression is not None:
        options = dict(codec.filter_options)
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
        **options,
    )
    if spec.units:
        ds.attrs["units"] = spec.units
    note = NOTES.get(spec.name)
    if note:
        ds.attrs["note"] = note
    return ds


def _spectrum_fields(
    group: h5py.Group, calibration: npt.NDArray[np.float64], bins: int
) -> None:
    """The bin index and the per-channel calibration beside ``data``."""
    group.create_dataset("channels", data=np.arange(bins, dtype="<i4"))
    cal = group.create_dataset("calibration", data=calibration)
    cal.attrs["units"] = "keV"
    cal.attrs["note"] = (
        "per channel (c0, c1, c2): the centre of bin i is at "
        "c0 + c1*i + c2*i**2 keV (PyMca's calibration)"
    )


def _channel_groups(
    f: h5py.File,
    group: h5py.Group,
    specs: Sequence[DatasetSpec],
    rows: int,
    calibration: npt.NDArray[np.float64],
) -> None:
    """One NXdetector group per channel, as PyMca's NeXus reader expects an
    MCA: ``data`` (``interpretation="spectrum"``), ``live_time``,
    ``elapsed_time``, ``channels``, ``calibration``. The per-frame fields are
    virtual datasets on the detector group's (no copy), unlimited: they grow
    with it, and read in whatever file the file is copied to."""
    by_name = {s.name: s for s in specs}
    rows_axis = slice(None, h5py.h5s.UNLIMITED)
    # an unlimited mapping made on a zero-length extent selects nothing: the
    # layouts are described one row long, their extent follows the source's
    n = max(rows, 1)
    for c in range(by_name["data"].shape[0]):
        g = f.require_group(CHANNEL_GROUP.format(c=c))
        g.attrs["NX_class"] = "NXdetector"
        for name in ("data", "live_time", "elapsed_time"):
            spec = by_name[name]
            tail = spec.shape[1:]  # per-frame shape without the channel axis
            whole = (slice(None),) * len(tail)
            source = h5py.VirtualSource(
                ".", spec.path, shape=(n, *spec.shape), maxshape=(None, *spec.shape)
            )
            layout = h5py.VirtualLayout(
                shape=(n, *tail), dtype=spec.dtype, maxshape=(None, *tail)
            )
            layout[(rows_axis, *whole)] = source[(rows_axis, c, *whole)]
            ds = g.create_virtual_dataset(name, layout, fillvalue=0)
            ds.attrs["units"] = spec.units
        g["data"].attrs["interpretation"] = "spectrum"
        g["channels"] = group["channels"]
        cal = g.create_dataset("calibration", data=calibration[c])
        cal.attrs["units"] = "keV"
