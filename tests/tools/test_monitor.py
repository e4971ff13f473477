"""``StreamMonitor`` (``ophyd-xspress listen``) over a real loopback socket:
the figures, the series tracker's counts, the receiver's limits, and no log
output unless asked for."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ophyd_xspress.protocol import Anomaly
from ophyd_xspress.tools import StreamMonitor
from ophyd_xspress.transport import MAX_PARTS

TIMEOUT = 10.0
BAD_JSON = [b"{not json", b"x", b"y"]


def stream_with_faults(wire: Any) -> list[list[bytes]]:
    """Two strays, a series 0, 2, 1, 1, 4 (late 1, repeated 1, missing 3), a
    bad message and one of too many parts."""
    frames = [wire.frame(n) for n in (0, 2, 1, 1, 4)]
    return [
        wire.frame(7),
        wire.frame(8),
        wire.header(),
        *frames,
        wire.end(),
        BAD_JSON,
        [*wire.frame(5), b"extra", b"parts"],
    ]


def run_monitor(
    push: Any, messages: list[list[bytes]], **options: Any
) -> dict[str, Any]:
    with StreamMonitor(push.endpoint, "pull", **options) as monitor:
        push.send(messages)
        deadline = time.monotonic() + TIMEOUT
        while monitor.messages < len(messages) and time.monotonic() < deadline:
            monitor.poll(0.2)
        return monitor.summary()


def test_the_summary_reports_what_the_tracker_reports(
    push_stream: Callable[[], Any], wire: Any, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    messages = stream_with_faults(wire)
    summary = run_monitor(push_stream(), messages)
    assert summary["messages"] == len(messages)
    assert summary["frames"] == 7  # the strays' figures count too
    assert (summary["headers"], summary["series_ends"]) == (1, 1)
    assert summary["missing"] == 1
    assert summary["repeated"] == 1
    assert summary["out_of_order"] == 1
    assert summary["frames_outside_series"] == 2
    assert summary["protocol_errors"] == 2
    assert summary["last_error"] == (
        f"message {len(messages)} had {MAX_PARTS + 2} parts (at most {MAX_PARTS} "
        "in this protocol): refused"
    )
    assert summary["last_frame"] == 4
    assert summary["channels"] == 2
    assert len(summary["dead_time_percent"]) == 2
    assert not [r for r in caplog.records if r.name.startswith("ophyd_xspress")]


def test_anomalies_go_to_the_reporter_once_each(
    push_stream: Callable[[], Any], wire: Any
) -> None:
    found: list[Anomaly] = []
    run_monitor(push_stream(), stream_with_faults(wire), on_anomalies=found.extend)
    kinds = [a.kind for a in found]
    assert kinds.count("repeated") == 1
    assert kinds.count("out_of_order") == 1
    assert kinds.count("frame_outside_series") == 3  # two strays, then their sum
    assert kinds.count("missing") == 1  # told when series_end closes the series
