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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "GROUP",
    "QUANTITIES",
    "RAW_SCALERS",
    "SUMMARY_KEYS",
    "Quantity",
    "Source",
    "by_dataset",
    "by_suffix",
    "frame_shape",
    "markdown_table",
    "quantities",
]

#: Where the datasets live in the HDF5 file (the MAX IV device writer's group).
GROUP: Final = "/entry/instrument/xspress3"

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
        "live_time",
        "live_time",
        "<f8",
        "s",
        ("C",),
        "derived",
        "real_time / dtc",
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
        "output_count_rate",
        "<f8",
        "counts/s",
        ("C",),
        "derived",
        "all_good / real_time (recomputed: the stream's field has a units bug)",
        precision=1,
    ),
    Quantity(
        "window_counts",
        "window_counts",
        "<u4",
        "counts",
        ("W", "C"),
        "stream",
        "raw hardware window counts, when the stream carries them",
        optional=True,
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
        "frame_number",
        "frame_number",
        "<i8",
        "",
        (),
        "detector",
        "the detector's frame counter; -1 in a file row never written",
    ),
)


#: Scalars of step-scan events only (inline readings; hinted for live tables):
#: ``(key pattern, dtype, units, value)``.
SUMMARY_KEYS: Final = (
    ("<roi>", "<f8", "counts", "corrected sum of ROI <roi> over all channels"),
    ("<roi>-ch<c>", "<f8", "counts", "corrected sum of ROI <roi> in channel c"),
    ("dead_time-ch<c>", "<f8", "%", "dead time of channel c"),
    (
        "anomalies",
        "<i8",
        "",
        "frames missing / repeated / out of order / stale since stage",
    ),
)


def markdown_table() -> str:
    """The README's table of data keys (``N`` is the detector's name)."""

    def shape(q: Quantity) -> str:
        return "(" + ", ".join(q.shape) + ("," if len(q.shape) == 1 else "") + ")"

    rows = [
        "| key | HDF5 dataset | shape | dtype | units | value |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for q in QUANTITIES:
        key = f"`{q.key('N')}`"
        note = " (file only)" if q.dataset == "window_counts" else ""
        rows.append(
            f"| {key} | `{q.dataset}` | {shape(q)} | {q.dtype} | {q.units} | "
            f"{q.description}{note} |"
        )
    for pattern, dtype, units, value in SUMMARY_KEYS:
        rows.append(
            f"| `N-{pattern}` | (events only) | () | {dtype} | {units} | {value} |"
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


def quantities(*, window_counts: bool, rois: bool) -> Iterator[Quantity]:
    """The quantities of one run: ``window_counts`` when the stream carries
    them, the ROI sums when ROIs are defined."""
    for q in QUANTITIES:
        if q.dataset == "window_counts" and not window_counts:
            continue
        if q.dataset in ("roi", "roi_corrected") and not rois:
            continue
        yield q


def frame_shape(
    q: Quantity, *, channels: int, bins: int, rois: int, windows: int = 2
) -> tuple[int, ...]:
    """The per-frame shape of ``q`` for a run of the given sizes."""
    sizes = {"C": channels, "B": bins, "R": rois, "W": windows}
    return tuple(sizes[s] for s in q.shape)
