"""The data schema: one row per quantity, read by every writer of data.

A quantity is one thing the detector reports per frame: the spectra, a raw
scaler, a derived dead-time quantity, ROI sums, the frame counter. Each row
says its data-key suffix (``xspress-<suffix>``; the spectra are the bare
detector name), its HDF5 dataset under :data:`GROUP`, its dtype, units, the
per-frame shape and where it comes from. The HDF5 layout, the inline and file
data providers and the README's data table all come from :data:`QUANTITIES`;
``tests/test_schema.py`` checks the README against it.

Shapes are symbolic: ``C`` channels, ``B`` bins, ``R`` software ROIs, ``W``
hardware windows (2).

Besides the per-frame quantities, the file has a few fields that describe the
spectra (:data:`FILE_FIELDS`: the bin index and the per-channel energy
calibration) and one NeXus group per channel (:data:`CHANNEL_FIELDS`, views of
the detector group's datasets) laid out as PyMca's NeXus reader expects an MCA.
Datasets named as in the MAX IV device writer hold what that writer stores from
the same stream (:data:`MAXIV_DATASETS`); this package's own values have names
of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "CHANNEL_FIELDS",
    "CHANNEL_GROUP",
    "FILE_FIELDS",
    "GROUP",
    "MAXIV_DATASETS",
    "QUANTITIES",
    "RAW_SCALERS",
    "STREAM_OCR_FACTOR",
    "SUMMARY_KEYS",
    "FileField",
    "Quantity",
    "Source",
    "by_dataset",
    "by_suffix",
    "file_table",
    "frame_shape",
    "markdown_table",
    "quantities",
]

#: Where the datasets live in the HDF5 file (the MAX IV device writer's group).
GROUP: Final = "/entry/instrument/xspress3"
#: One NeXus group per channel, for analysis programs (``{c}``: the channel).
CHANNEL_GROUP: Final = "/entry/instrument/xspress3_ch{c}"

#: The stream's ``output_count_rate`` is ``all_good / (total_ticks * 80e6)``, a
#: units bug in the device: times this factor (80e6 ** 2) it is in counts/s.
STREAM_OCR_FACTOR: Final = 6.4e15

Source = Literal["stream", "derived", "detector"]


@dataclass(frozen=True, slots=True)
class Quantity:
    """One per-frame quantity: its key suffix, dataset, dtype, units, shape."""

    #: Data-key suffix: the key is ``f"{name}-{suffix}"`` (``name`` for "").
    suffix: str
    #: HDF5 dataset name under :data:`GROUP`.
    dataset: str
    #: numpy dtype string as written (little-endian).
    dtype: str
    units: str
    #: Per-frame shape in symbols: ``"C"``, ``"B"``, ``"R"``, ``"W"``.
    shape: tuple[str, ...]
    #: ``stream``: as the detector sent it; ``derived``: computed from the
    #: stream (:func:`ophyd_xspress.protocol.derive`); ``detector``: this
    #: package's bookkeeping.
    source: Source
    description: str
    #: Digits shown by live tables (event-model ``precision``), if any.
    precision: int | None = None
    #: Present only when the stream carries it / ROIs are defined.
    optional: bool = False

    def key(self, name: str) -> str:
        """The data key of this quantity for the detector called ``name``."""
        return f"{name}-{self.suffix}" if self.suffix else name

    @property
    def path(self) -> str:
        """The dataset's absolute path in the file."""
        return f"{GROUP}/{self.dataset}"


def _scaler(name: str, dtype: str, units: str, description: str) -> Quantity:
    return Quantity(name, name, dtype, units, ("C",), "stream", description)


#: The raw per-channel scalers of the stream, in the order the device sends them
#: (after ``output_count_rate``).
RAW_SCALERS: Final = (
    _scaler("all_events", "<u4", "counts", "every event the processor saw"),
    _scaler("all_good", "<u4", "counts", "events in the spectrum (its sum)"),
    _scaler("clock_ticks", "<u4", "ticks", "80 MHz ticks the frame lasted"),
    _scaler("total_ticks", "<u4", "ticks", "ticks of the frame as counted"),
    _scaler("reset_ticks", "<u4", "ticks", "ticks lost to detector resets"),
    _scaler("event_width", "<i4", "ticks", "processing time of one event"),
)

QUANTITIES: Final = (
    Quantity("", "data", "<u4", "counts", ("C", "B"), "stream", "raw spectra"),
    *RAW_SCALERS,
    Quantity(
        "dead_time_correction",
        "dead_time_correction",
        "<f8",
        "",
        ("C",),
        "stream",
        "the device's own correction factor, as streamed",
        precision=6,
    ),
    Quantity(
        "stream_output_count_rate",
        "output_count_rate",
        "<f8",
        "1.5625e-16 counts/s",
        ("C",),
        "stream",
        "the stream's own field, as sent and as MAX IV's writer stores it: "
        "all_good / (total_ticks * 80e6), a units bug (times 6.4e15 it is "
        "counts/s); the rate is `ocr`",
    ),
    Quantity(
        "window_counts",
        "window_counts",
        "<u4",
        "counts",
        ("W", "C"),
        "stream",
        "raw hardware window counts; only when the stream carries them",
        optional=True,
    ),
    Quantity(
        "dtc",
        "dtc",
        "<f8",
        "",
        ("C",),
        "derived",
        "dead-time correction factor clock_ticks / (clock_ticks - dead_ticks)",
        precision=6,
    ),
    Quantity(
        "dead_time",
        "dead_time_percent",
        "<f8",
        "%",
        ("C",),
        "derived",
        "100 * dead_ticks / clock_ticks",
        precision=3,
    ),
    Quantity(
        "elapsed_time",
        "elapsed_time",
        "<f8",
        "s",
        ("C",),
        "derived",
        "real time of the frame, clock_ticks / 80 MHz",
        precision=6,
    ),
    Quantity(
        "live_time",
        "live_time",
        "<f8",
        "s",
        ("C",),
        "derived",
        "elapsed_time / dtc",
        precision=6,
    ),
    Quantity(
        "icr",
        "input_count_rate",
        "<f8",
        "counts/s",
        ("C",),
        "derived",
        "input count rate estimate, ocr * dtc",
        precision=1,
    ),
    Quantity(
        "ocr",
        "ocr",
        "<f8",
        "counts/s",
        ("C",),
        "derived",
        "output count rate all_good / elapsed_time",
        precision=1,
    ),
    Quantity(
        "roi",
        "roi",
        "<u8",
        "counts",
        ("C", "R"),
        "derived",
        "software ROI sums, raw",
        optional=True,
    ),
    Quantity(
        "roi_corrected",
        "roi_corrected",
        "<f8",
        "counts",
        ("C", "R"),
        "derived",
        "software ROI sums * dtc",
        precision=1,
        optional=True,
    ),
    Quantity(
        "summed_spectrum",
        "summed_spectrum",
        "<f8",
        "counts",
        ("B",),
        "derived",
        "sum over channels of data * dtc (with `summed_spectrum=True`)",
        optional=True,
    ),
    Quantity(
        "frame_number",
        "frame_number",
        "<i8",
        "",
        (),
        "detector",
        "the detector's frame counter; -1 in a file row not written whole",
    ),
)


#: Scalars of step-scan events only (inline readings; hinted for live tables):
#: ``(key pattern, dtype, units, value)``.
SUMMARY_KEYS: Final = (
    ("<roi>", "<f8", "counts", "corrected sum of ROI <roi> over all channels"),
    ("<roi>-ch<c>", "<f8", "counts", "corrected sum of ROI <roi> in channel c"),
    ("dead_time-ch<c>", "<f8", "%", "dead time of channel c"),
    ("dead_time_max", "<f8", "%", "the largest dead time of the channels"),
    (
        "anomalies",
        "<i8",
        "",
        "frames missing / repeated / out of order / stale since stage",
    ),
)


@dataclass(frozen=True, slots=True)
class FileField:
    """A dataset of the file that is not one value per frame, or a view."""

    #: Its path; ``{c}`` stands for the channel in per-channel groups.
    path: str
    dtype: str
    units: str
    #: Symbols as in :class:`Quantity`, ``N`` for frames.
    shape: tuple[str, ...]
    description: str


#: Fields of the detector group that describe the spectra.
FILE_FIELDS: Final = (
    FileField(
        f"{GROUP}/channels",
        "<i4",
        "",
        ("B",),
        "bin index of each point of a spectrum (PyMca's x axis)",
    ),
    FileField(
        f"{GROUP}/calibration",
        "<f8",
        "keV",
        ("C", "3"),
        "per channel (c0, c1, c2): the centre of bin i is at c0 + c1*i + c2*i**2 keV",
    ),
)

#: The group of each channel, for PyMca's NeXus reader: ``data`` carries
#: ``interpretation="spectrum"`` and its siblings are the MCA's live time, real
#: time, x axis and calibration. The per-frame fields are virtual datasets
#: (views of the detector group's, no copy) and grow with it.
CHANNEL_FIELDS: Final = (
    FileField(
        f"{CHANNEL_GROUP}/data",
        "<u4",
        "counts",
        ("N", "B"),
        f"view of {GROUP}/data[:, c, :]",
    ),
    FileField(
        f"{CHANNEL_GROUP}/live_time",
        "<f8",
        "s",
        ("N",),
        f"view of {GROUP}/live_time[:, c]",
    ),
    FileField(
        f"{CHANNEL_GROUP}/elapsed_time",
        "<f8",
        "s",
        ("N",),
        f"view of {GROUP}/elapsed_time[:, c]",
    ),
    FileField(
        f"{CHANNEL_GROUP}/channels",
        "<i4",
        "",
        ("B",),
        f"{GROUP}/channels (a hard link)",
    ),
    FileField(
        f"{CHANNEL_GROUP}/calibration",
        "<f8",
        "keV",
        ("3",),
        f"{GROUP}/calibration[c]",
    ),
)

#: The MAX IV device writer's datasets (its ``Receivers.py``), all of which
#: this file has under the same names with the same values.
MAXIV_DATASETS: Final = (
    "data",
    "output_count_rate",
    "all_events",
    "all_good",
    "clock_ticks",
    "total_ticks",
    "reset_ticks",
    "event_width",
    "dead_time_correction",
)


def _shape(shape: tuple[str, ...]) -> str:
    return "(" + ", ".join(shape) + ("," if len(shape) == 1 else "") + ")"


def markdown_table() -> str:
    """The README's table of data keys (``N`` is the detector's name)."""
    rows = [
        "| key | HDF5 dataset | shape | dtype | units | value |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for q in QUANTITIES:
        key = f"`{q.key('N')}`"
        rows.append(
            f"| {key} | `{q.dataset}` | {_shape(q.shape)} | {q.dtype} | {q.units} | "
            f"{q.description} |"
        )
    for pattern, dtype, units, value in SUMMARY_KEYS:
        rows.append(
            f"| `N-{pattern}` | (events only) | () | {dtype} | {units} | {value} |"
        )
    return "\n".join(rows)


def file_table() -> str:
    """The README's table of the file's other fields (paths in full)."""
    rows = [
        "| HDF5 path | shape | dtype | units | value |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in (*FILE_FIELDS, *CHANNEL_FIELDS):
        rows.append(
            f"| `{f.path}` | {_shape(f.shape)} | {f.dtype} | {f.units} | "
            f"{f.description} |"
        )
    return "\n".join(rows)


def by_dataset(dataset: str) -> Quantity:
    """The quantity stored in ``dataset``."""
    for q in QUANTITIES:
        if q.dataset == dataset:
            return q
    raise KeyError(f"no quantity is stored in dataset {dataset!r}")


def by_suffix(suffix: str) -> Quantity:
    """The quantity whose data key ends in ``suffix`` ("" for the spectra)."""
    for q in QUANTITIES:
        if q.suffix == suffix:
            return q
    raise KeyError(f"no quantity has the key suffix {suffix!r}")


def quantities(
    *, window_counts: bool, rois: bool, summed: bool = False
) -> Iterator[Quantity]:
    """The quantities of one run: ``window_counts`` when the stream carries
    them, the ROI sums when ROIs are defined, the summed spectrum on request."""
    for q in QUANTITIES:
        if q.dataset == "window_counts" and not window_counts:
            continue
        if q.dataset in ("roi", "roi_corrected") and not rois:
            continue
        if q.dataset == "summed_spectrum" and not summed:
            continue
        yield q


def frame_shape(
    q: Quantity, *, channels: int, bins: int, rois: int, windows: int = 2
) -> tuple[int, ...]:
    """The per-frame shape of ``q`` for a run of the given sizes."""
    sizes = {"C": channels, "B": bins, "R": rois, "W": windows}
    return tuple(sizes[s] for s in q.shape)
