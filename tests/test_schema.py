"""The data schema is the one home of every key, dataset, dtype and unit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from ophyd_xspress._schema import (
    QUANTITIES,
    SUMMARY_KEYS,
    by_dataset,
    by_suffix,
    markdown_table,
)
from ophyd_xspress.device._providers import InlineDataProvider
from ophyd_xspress.device._rois import make_rois
from ophyd_xspress.device._session import Diagnostics, LatestFrames
from ophyd_xspress.device._settings import DataConfig
from ophyd_xspress.protocol import Calibration, derive

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_the_schema() -> None:
    assert markdown_table() in README.read_text()


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
    columns = derive(scalers, np.ones((2, 16), np.uint32), [[0, 3]]).columns()
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
    schema = {q.key("x") for q in QUANTITIES if q.dataset != "window_counts"}
    summary = {"x-Fe", "x-Fe-ch0", "x-Fe-ch1", "x-dead_time-ch0", "x-dead_time-ch1"}
    assert set(keys) == schema | summary | {"x-anomalies"}
    assert {p for p, *_ in SUMMARY_KEYS} == {
        "<roi>",
        "<roi>-ch<c>",
        "dead_time-ch<c>",
        "anomalies",
    }
    for q in QUANTITIES:
        if q.dataset == "window_counts":
            continue
        key = keys[q.key("x")]
        assert key["dtype_numpy"] == q.dtype, q.key("x")
        assert key.get("units", "") == q.units, q.key("x")
