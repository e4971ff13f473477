"""The data schema is the one home of every key, dataset, dtype and unit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from ophyd_xspress._schema import (
    MAXIV_DATASETS,
    QUANTITIES,
    STREAM_OCR_FACTOR,
    SUMMARY_KEYS,
    by_dataset,
    by_suffix,
    file_table,
    markdown_table,
)
from ophyd_xspress.device._providers import InlineDataProvider
from ophyd_xspress.device._rois import make_rois
from ophyd_xspress.device._session import Diagnostics, LatestFrames
from ophyd_xspress.device._settings import DataConfig
from ophyd_xspress.protocol import Calibration, derive

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tables_are_the_schema() -> None:
    readme = README.read_text()
    assert markdown_table() in readme
    assert file_table() in readme


def test_maxiv_names_hold_maxiv_values() -> None:
    """MAX IV's writer stores the stream's arrays under these names, as sent:
    here too (the stream's own output_count_rate included, with its real
    unit); this package's own values have names of their own."""
    for name in MAXIV_DATASETS:
        assert by_dataset(name).source == "stream", name
    stream_ocr = by_dataset("output_count_rate")
    assert stream_ocr.suffix == "stream_output_count_rate"
    assert stream_ocr.units == f"{1 / STREAM_OCR_FACTOR:g} counts/s"
    assert by_suffix("ocr").dataset == "ocr"
    assert by_suffix("ocr").units == "counts/s"


def test_keys_and_datasets_are_unique_and_found_both_ways() -> None:
    suffixes = [q.suffix for q in QUANTITIES]
    datasets = [q.dataset for q in QUANTITIES]
    assert len(set(suffixes)) == len(suffixes)
    assert len(set(datasets)) == len(datasets)
    for q in QUANTITIES:
        assert by_suffix(q.suffix) is q
        assert by_dataset(q.dataset) is q


def test_every_derived_quantity_is_what_derive_computes() -> None:
    derived = {q.dataset for q in QUANTITIES if q.source == "derived"}
    scalers = {
        "all_events": np.array([10, 20]),
        "all_good": np.array([5, 5]),
        "clock_ticks": np.array([1000, 1000]),
        "reset_ticks": np.array([0, 0]),
        "event_width": np.array([5, 5]),
    }
    spectra = np.ones((2, 16), np.uint32)
    columns = derive(scalers, spectra, [[0, 3]], summed=True).columns()
    assert set(columns) == derived
    for name, value in columns.items():
        assert value.dtype == np.dtype(by_dataset(name).dtype), name


def test_inline_keys_are_the_schemas() -> None:
    """Every key an inline event carries is a schema quantity or a summary key
    (window_counts are in the file only)."""
    cal = Calibration()
    config = DataConfig(
        name="x", stream="tcp://h:9999", channels=2, bins=16, calibration=cal
    )
    config.rois = make_rois(
        {"Fe": (0, 3)}, unit="bin", channels=2, bins=16, calibration=cal
    )
    provider = InlineDataProvider("x", config, LatestFrames(), Diagnostics())
    keys = asyncio.run(provider.make_datakeys())
    # no frame in hand: no window_counts; no summed spectrum unless asked
    optional = ("window_counts", "summed_spectrum")
    schema = {q.key("x") for q in QUANTITIES if q.dataset not in optional}
    summary = {"x-Fe", "x-Fe-ch0", "x-Fe-ch1", "x-dead_time-ch0", "x-dead_time-ch1"}
    summary.add("x-dead_time_max")
    assert set(keys) == schema | summary | {"x-anomalies"}
    assert {p for p, *_ in SUMMARY_KEYS} == {
        "<roi>",
        "<roi>-ch<c>",
        "dead_time-ch<c>",
        "dead_time_max",
        "anomalies",
    }
    for q in QUANTITIES:
        if q.dataset in optional:
            continue
        key = keys[q.key("x")]
        assert key["dtype_numpy"] == q.dtype, q.key("x")
        assert key.get("units", "") == q.units, q.key("x")
