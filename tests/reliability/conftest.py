"""Fixtures of the reliability suite (interruptions, stream faults, soak).

Tests marked ``slow`` (the soak) are skipped unless ``XSPRESS_SLOW=1`` is set::

    XSPRESS_SLOW=1 python -m pytest tests/reliability -m slow -q -p no:cacheprovider
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

GROUP = "/entry/instrument/xspress3"


def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    if os.environ.get("XSPRESS_SLOW") == "1":
        return
    skip = pytest.mark.skip(
        reason="slow soak test: set XSPRESS_SLOW=1 to run it "
        "(XSPRESS_SLOW=1 python -m pytest tests/reliability -m slow)"
    )
    here = Path(__file__).parent
    for item in items:
        if "slow" in item.keywords and Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(skip)


@pytest.fixture
def soak_frames(tmp_path: Path) -> Callable[[int], int]:
    """For a 1M-frame soak writing ``per_frame`` bytes a frame in ``tmp_path``:
    the frame count (``XSPRESS_SOAK_FRAMES``, default 1,000,000, at least
    200,000), or a skip when the disk has less than three times the bytes free."""

    def frames(per_frame: int) -> int:
        n = int(os.environ.get("XSPRESS_SOAK_FRAMES", "1000000"))
        assert n >= 200_000, "XSPRESS_SOAK_FRAMES must be at least 200000"
        needed = n * per_frame
        free = shutil.disk_usage(tmp_path).free
        if free < 3 * needed:
            pytest.skip(
                f"needs {3 * needed / 1e9:.1f} GB free in {tmp_path} (3x the "
                f"{needed / 1e9:.1f} GB written), has {free / 1e9:.1f} GB"
            )
        return n

    return frames


def receiver_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("xspress-rx") and t.is_alive()
    ]


def uri_path(uri: str) -> Path:
    prefix = "file://localhost"
    assert uri.startswith(prefix), uri
    return Path(uri[len(prefix) :])


@pytest.fixture
def check_stream_docs() -> Callable[..., int]:
    """``check_stream_docs(docs, sim, series)``: every stream_datum emitted refers
    only to rows that are on disk (``frame_number`` >= 0, equal to the row) and
    whose spectra equal the simulator's frame; returns the rows covered."""

    def check(docs: Any, sim: Any, series: int) -> int:
        resources = {r["uid"]: r for r in docs["stream_resource"]}
        covered = 0
        files: dict[str, h5py.File] = {}
        try:
            for datum in docs["stream_datum"]:
                resource = resources[datum["stream_resource"]]
                uri = resource["uri"]
                if uri not in files:
                    files[uri] = h5py.File(uri_path(uri), "r")
                g = files[uri][GROUP]
                start, stop = datum["indices"]["start"], datum["indices"]["stop"]
                if stop <= start:
                    continue
                fn = g["frame_number"][start:stop]
                assert (fn >= 0).all(), (
                    f"stream_datum {start}:{stop} refers to rows not on disk: "
                    f"{np.flatnonzero(fn < 0) + start}"
                )
                np.testing.assert_array_equal(fn, np.arange(start, stop))
                if resource["parameters"].get("dataset") == f"{GROUP}/data":
                    for row in range(start, stop):
                        np.testing.assert_array_equal(
                            g["data"][row],
                            sim.control.expected_frame(series, row).spectra,
                            err_msg=f"row {row}",
                        )
                covered = max(covered, stop)
        finally:
            for f in files.values():
                f.close()
        return covered

    return check


@pytest.fixture
def check_file() -> Callable[..., int]:
    """``check_file(path, sim, series)``: the file opens; every row with
    ``frame_number`` >= 0 is that frame, bit for bit; returns the rows on disk."""

    def check(path: Path, sim: Any, series: int) -> int:
        with h5py.File(path, "r") as f:
            g = f[GROUP]
            fn = g["frame_number"][:]
            rows = np.flatnonzero(fn >= 0)
            np.testing.assert_array_equal(fn[rows], rows)
            for row in rows:
                np.testing.assert_array_equal(
                    g["data"][row],
                    sim.control.expected_frame(series, int(row)).spectra,
                    err_msg=f"row {row}",
                )
            for row in np.flatnonzero(fn < 0):
                assert not g["data"][row].any(), f"row {row} has data, no frame"
            return len(rows)

    return check
