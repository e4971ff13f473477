"""Two consumers on one PUSH stream: each gets every other message.

A PULL detector beside another PULL consumer (for example ``ophyd-xspress
listen --socket pull``) sees the header and every other frame, or no header
at all. Either way the error says what most likely happened, not just that
frames or the header never came.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

from ophyd_xspress.protocol import SeriesEndMessage, StreamEncoder
from ophyd_xspress.sim import SimulatedXspress3
from ophyd_xspress.transport import (
    StreamIncompleteError,
    StreamReceiver,
    StreamStalledError,
)

TIMEOUT = 10.0
N = 19  # with the header and the end: the first consumer gets both
SHARED = "frames are being taken by another consumer of this PUSH stream"


def test_two_pull_consumers_are_told_why_frames_are_missing(
    push_stream: Any, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    push = push_stream()
    first = StreamReceiver(push.endpoint, "pull")
    second = StreamReceiver(push.endpoint, "pull")
    first.start(connect_timeout=TIMEOUT)
    second.start(connect_timeout=TIMEOUT)
    time.sleep(0.2)  # both peers known to the PUSH socket: it alternates
    try:
        got_header = first.begin(N, active=True)
        no_header = second.begin(N, active=True)
        sim = SimulatedXspress3(channels=2, pace=False)
        encoder = StreamEncoder("multipart")
        messages = list(encoder.encode(sim.header()))
        for n in range(N):
            messages += encoder.encode(sim.expected_frame(1, n))
        messages += encoder.encode(SeriesEndMessage())
        push.send(messages)
        assert got_header.wait_blocking(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while (
            second.counts["outside_series"] < N // 2 + 1 and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        # the consumer that got the header: every other frame, then the end
        error = got_header.error
        assert isinstance(error, StreamIncompleteError), error
        assert SHARED in str(error), str(error)
        assert got_header.received == N // 2  # frames 1, 3, ... 17
        warned = [m for m in caplog.messages if "only every 2nd frame arrives" in m]
        # told once by each consumer: series 0, and the headless one (-1)
        assert sorted(m.split(": ")[1] for m in warned) == ["series -1", "series 0"]
        # the other one never saw a header: its frames are not its run's, and
        # the stall says what that most likely means
        stall = no_header.stall_error(1.0)
        assert isinstance(stall, StreamStalledError)
        assert f"but {N // 2 + 1} frame(s) outside this run's series did" in str(stall)
        assert SHARED in str(stall)
        assert second.counts["outside_series"] == N // 2 + 1  # frames 0, 2, ... 18
    finally:
        first.stop()
        second.stop()


def test_listen_with_a_pull_socket_warns_that_it_takes_frames(
    push_stream: Any,
) -> None:
    push = push_stream()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ophyd_xspress",
            "listen",
            push.endpoint,
            "--socket",
            "pull",
            "--json",
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "a PULL socket takes its share of a PUSH stream's messages" in (
        result.stderr
    )
