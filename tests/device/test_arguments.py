"""XspressDetector's arguments: a bad one fails at construction, naming it.

No device is needed: the checks run in the constructor, before anything
connects. ROI names that would give one of the detector's own data keys are
refused with the list of reserved names, which comes from the data schema.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ophyd_xspress._schema import QUANTITIES, SUMMARY_KEYS
from ophyd_xspress.device import XspressDetector
from ophyd_xspress.device._arguments import RESERVED_ROI_NAMES
from ophyd_xspress.protocol import MAX_CHANNELS

STREAM = "tcp://127.0.0.1:9999"
RESERVED = ", ".join(RESERVED_ROI_NAMES)


def make(tmp_path: Path, **options: Any) -> XspressDetector:
    return XspressDetector(STREAM, name="xspress", path=tmp_path, **options)


def raises_exactly(kind: type[Exception], text: str) -> Any:
    """``pytest.raises`` for ``kind`` with exactly ``text`` as its message."""
    return pytest.raises(kind, match=f"^{re.escape(text)}$")


# -- time-outs -------------------------------------------------------------------------
@pytest.mark.parametrize("argument", ["stall_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [math.nan, 0, 0.0, -1.0, math.inf, -math.inf])
def test_timeouts_must_be_finite_and_positive(
    tmp_path: Path, argument: str, value: float
) -> None:
    expected = f"{argument} must be a finite number of seconds > 0, got {value!r}"
    with raises_exactly(ValueError, expected):
        make(tmp_path, **{argument: value})


@pytest.mark.parametrize("argument", ["stall_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", ["5", True, None])
def test_timeouts_must_be_numbers(tmp_path: Path, argument: str, value: object) -> None:
    with raises_exactly(
        TypeError, f"{argument} must be a number of seconds, got {value!r}"
    ):
        make(tmp_path, **{argument: value})


def test_stall_timeout_set_later_is_checked_too(tmp_path: Path) -> None:
    det = make(tmp_path, stall_timeout=np.float32(2.5))
    assert det.stall_timeout == 2.5
    with pytest.raises(ValueError, match=r"^stall_timeout must be a finite number"):
        det.stall_timeout = math.nan
    assert det.stall_timeout == 2.5
    det.stall_timeout = np.float64(3)
    assert det.stall_timeout == 3.0


# -- sizes -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, -4, MAX_CHANNELS + 1])
def test_channels_must_be_in_range(tmp_path: Path, value: int) -> None:
    with raises_exactly(
        ValueError, f"channels must be in 1..{MAX_CHANNELS}, got {value}"
    ):
        make(tmp_path, channels=value)


@pytest.mark.parametrize("value", [2.0, "4", True])
def test_channels_must_be_an_integer(tmp_path: Path, value: object) -> None:
    with raises_exactly(TypeError, f"channels must be an integer, got {value!r}"):
        make(tmp_path, channels=value)


def test_bins_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^bins must be in 1\.\.65536, got 0$"):
        make(tmp_path, bins=0)


def test_numpy_sizes_are_accepted(tmp_path: Path) -> None:
    det = make(tmp_path, channels=np.int64(2), bins=np.int32(1024))
    assert det.rois == {"total": ((0, 1023), (0, 1023))}


# -- calibration -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("calibration", "reason"),
    [
        ((0.0, 0.0), "calibration ev_per_bin must be > 0, got 0.0"),
        ((-10.0, 0.0), "calibration ev_per_bin must be > 0, got -10.0"),
        ((math.nan, 0.0), "calibration ev_per_bin must be finite, got nan"),
        ((10.0, math.inf), "calibration offset_ev must be finite, got inf"),
    ],
)
def test_calibration_with_a_bad_gain_or_offset(
    tmp_path: Path, calibration: tuple[float, float], reason: str
) -> None:
    with raises_exactly(ValueError, f"calibration={calibration!r}: {reason}"):
        make(tmp_path, calibration=calibration)


@pytest.mark.parametrize("calibration", [10.0, (10.0,), ("10", 0.0), (True, 0.0)])
def test_calibration_must_be_two_numbers(tmp_path: Path, calibration: object) -> None:
    expected = r"^calibration must be \(eV per bin, offset eV\)"
    with pytest.raises(TypeError, match=expected):
        make(tmp_path, calibration=calibration)


def test_numpy_calibration_is_accepted(tmp_path: Path) -> None:
    det = make(tmp_path, calibration=(np.int64(5), np.float32(0.0)), channels=1)
    det.set_rois(rois={"Fe": (6400.0, 6500.0)})
    assert det.rois == {"Fe": ((1280, 1300),)}


# -- ROI windows -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(("argument", "window"), [("rois", 6550.0), ("bin_rois", 655)])
def test_roi_windows_must_be_finite(
    tmp_path: Path, argument: str, window: float, bad: float
) -> None:
    spec = {"Fe": (bad, window)}
    expected = (
        f"{argument}: ROI Fe: windows must be finite numbers, got {(bad, window)!r}"
    )
    with raises_exactly(ValueError, expected):
        make(tmp_path, **{argument: spec})


def test_per_channel_windows_must_be_finite(tmp_path: Path) -> None:
    windows = [(6250.0, 6550.0), (6250.0, math.nan)]
    with pytest.raises(ValueError, match=r"^rois: ROI Fe: windows must be finite"):
        make(tmp_path, channels=2, rois={"Fe": windows})


def test_numpy_windows_are_accepted(tmp_path: Path) -> None:
    det = make(
        tmp_path,
        channels=2,
        rois={"Fe": (np.float64(6400.0), np.float32(6500.0))},
        bin_rois={
            "Cu": (np.int64(800), np.int32(810)),
            "Zn": [(np.uint16(860), np.int64(870)), (np.float64(861.0), 871)],
        },
    )
    assert det.rois == {
        "Fe": ((640, 650), (640, 650)),
        "Cu": ((800, 810), (800, 810)),
        "Zn": ((860, 870), (861, 871)),
    }


# -- ROI names -------------------------------------------------------------------------
@pytest.mark.parametrize("argument", ["rois", "bin_rois"])
@pytest.mark.parametrize("name", [5, None, ("Fe",), b"Fe"])
def test_roi_names_must_be_strings(tmp_path: Path, argument: str, name: object) -> None:
    expected = (
        f"{argument}: ROI names must be strings, got {name!r} ({type(name).__name__})"
    )
    with raises_exactly(TypeError, expected):
        make(tmp_path, **{argument: {name: (10, 20)}})


def test_rois_must_be_a_mapping(tmp_path: Path) -> None:
    with raises_exactly(TypeError, "rois must map ROI names to windows, got list"):
        make(tmp_path, rois=[("Fe", (6400.0, 6500.0))])


def test_reserved_names_come_from_the_schema() -> None:
    """Every data-key suffix, every step-scan summary key, and ``X`` for a
    summary key ``X-ch<c>`` (an ROI named X would give that key too)."""
    suffixes = {q.suffix for q in QUANTITIES if q.suffix}
    summary = [p for p, *_ in SUMMARY_KEYS if "<roi>" not in p]
    words = {p for p in summary if re.fullmatch(r"\w+", p)}
    per_channel = {p.removesuffix("-ch<c>") for p in summary if p.endswith("-ch<c>")}
    assert set(RESERVED_ROI_NAMES) == suffixes | words | per_channel
    assert {"dtc", "roi", "dead_time", "live_time", "frame_number", "anomalies"} <= (
        set(RESERVED_ROI_NAMES)
    )
    assert tuple(sorted(RESERVED_ROI_NAMES)) == RESERVED_ROI_NAMES


@pytest.mark.parametrize("argument", ["rois", "bin_rois"])
@pytest.mark.parametrize(
    "name",
    ["dtc", "roi", "dead_time", "live_time", "frame_number", "anomalies", "icr"],
)
def test_roi_names_colliding_with_the_detectors_keys_are_refused(
    tmp_path: Path, argument: str, name: str
) -> None:
    expected = (
        f"{argument}: ROI name {name!r} would overwrite one of the detector's own "
        f"data keys; reserved names: {RESERVED}"
    )
    with raises_exactly(ValueError, expected):
        make(tmp_path, **{argument: {name: (10, 20)}})


def test_reserved_names_are_refused_by_set_rois_too(tmp_path: Path) -> None:
    det = make(tmp_path, bin_rois={"Fe": (640, 650)})
    with pytest.raises(ValueError, match=r"^bin_rois: ROI name 'anomalies' would"):
        det.set_rois(bin_rois={"anomalies": (640, 650)})
    assert det.rois == {"Fe": ((640, 650),) * 4}  # unchanged


def test_an_roi_name_in_both_rois_and_bin_rois_is_refused(tmp_path: Path) -> None:
    expected = (
        "ROI name 'Fe' is in both rois= and bin_rois=: ROI names must be unique "
        "(each becomes a data key)"
    )
    with raises_exactly(ValueError, expected):
        make(tmp_path, rois={"Fe": (6400.0, 6500.0)}, bin_rois={"Fe": (640, 650)})


def test_names_that_only_contain_a_reserved_word_are_fine(tmp_path: Path) -> None:
    det = make(tmp_path, bin_rois={"roi1": (1, 2), "dtc_Fe": (3, 4), "Dtc": (5, 6)})
    assert list(det.rois) == ["roi1", "dtc_Fe", "Dtc"]
