"""``inspect`` counts each frame once: a repeated frame (sent again, as a real
2-channel capture repeated 11 frames) is reported and left out of the totals,
rates and dead-time statistics, which were twice the unique frames' before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ophyd_xspress.tools import inspect_messages, read_capture


def test_repeats_are_listed_and_counted_once(wire: Any) -> None:
    numbers = [0, 1, 1, 2, 1, 3]
    messages = [wire.header(), *(wire.frame(n) for n in numbers), wire.end()]
    (series,) = inspect_messages(messages)["series"]
    assert series["frames"] == 6
    assert series["unique_frames"] == 4
    assert series["repeats_excluded"] == 2
    assert series["anomalies"]["repeated"] == [1, 1]  # each copy
    unique = [wire.sim.expected_frame(1, n) for n in range(4)]
    sums = np.sum([f.spectra.sum(axis=1, dtype=np.int64) for f in unique], axis=0)
    assert series["channel_totals"] == sums.tolist()
    good = np.sum([f["all_good"].astype(np.int64) for f in unique], axis=0)
    assert series["all_good_totals"] == good.tolist()
    counts = np.sum([f.window_counts.astype(np.int64) for f in unique], axis=0)
    assert series["window_counts_totals"] == counts.tolist()


def test_a_real_capture_with_repeats_has_the_totals_of_the_capture(
    shared_data: Path,
) -> None:
    messages = [list(m) for m in read_capture(shared_data / "xspress3-multipart.cbors")]
    header, frames, end = messages[0], messages[1:-1], messages[-1]
    once = inspect_messages(messages)["series"][0]
    twice = inspect_messages([header, *frames, *frames, end])["series"][0]
    assert twice["frames"] == 2 * once["frames"]
    assert twice["repeats_excluded"] == once["frames"]
    for key in ("channel_totals", "all_good_totals", "dtc", "dead_time_percent"):
        assert twice[key] == once[key], key
    assert twice["icr_mean_cps"] == once["icr_mean_cps"]
    assert twice["ocr_mean_cps"] == once["ocr_mean_cps"]
