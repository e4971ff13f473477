"""``inspect_messages``: a recorded stream summarised, anomalies as the series
tracker reports them (the real captures are checked in ``tests/test_cli.py``)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from ophyd_xspress.protocol import Anomaly
from ophyd_xspress.tools import inspect_messages

BAD_JSON = [b"{not json", b"x", b"y"]


def test_strays_gaps_repeats_and_bad_messages_are_summarised(wire: Any) -> None:
    messages = [
        wire.frame(7),  # before any header
        wire.header(),
        wire.frame(0),
        wire.frame(2),
        wire.frame(2),
        BAD_JSON,
        wire.end(),
    ]
    found: list[Anomaly] = []
    report = inspect_messages(messages, found.extend)

    json.dumps(report, allow_nan=False)  # plain data, as `inspect --json` prints
    assert (report["messages"], report["packets"], report["frames"]) == (7, 6, 4)
    strays, series = report["series"]
    assert strays["index"] is None
    assert strays["anomalies"]["frames_outside_series"] == [7]
    assert series["index"] == 0
    assert series["frames"] == 3
    assert series["channels"] == 2
    assert series["anomalies"]["missing"] == [1]
    assert series["anomalies"]["repeated"] == [2]
    assert series["anomalies"]["series_end_received"] == 1
    (error,) = report["errors"]
    assert error["message"] == 5
    assert "JSON" in error["detail"]
    # every anomaly reached the caller once, and they add up to the counts
    weighted: Counter[str] = Counter()
    for anomaly in found:
        weighted[anomaly.kind] += anomaly.count
    assert dict(+weighted) == report["anomaly_counts"]
    assert {"frame_outside_series", "missing", "repeated"} <= set(weighted)


def test_no_reporter_is_needed(wire: Any) -> None:
    report = inspect_messages([wire.header(), wire.frame(0), wire.end()])
    assert report["anomaly_counts"] == {}
    assert report["series"][0]["frames"] == 1
