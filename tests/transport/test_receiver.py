"""The receiver thread survives what it cannot decode."""

from __future__ import annotations

import logging
from typing import Any

from ophyd_xspress.protocol import StreamDecoder
from ophyd_xspress.transport import StreamIncompleteError

TIMEOUT = 10.0


def test_an_unexpected_decoder_error_skips_the_message_not_the_thread(
    stream: Any, caplog: Any, monkeypatch: Any
) -> None:
    """The decoder only raises ProtocolError (the fuzz tests hold it to that);
    should a bug raise anything else, the receiver logs it with the message
    number, skips the message and keeps receiving."""
    caplog.set_level(logging.ERROR, logger="ophyd_xspress.transport")
    real_feed = StreamDecoder.feed
    calls = {"n": 0}

    def feed(self: StreamDecoder, message: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # header, frame 0, then this: frame 1
            raise RuntimeError("decoder bug")
        return real_feed(self, message)

    monkeypatch.setattr(StreamDecoder, "feed", feed)
    sink = stream.sink()
    run = stream.rx.begin(4, sink, active=False)
    stream.send_series([0, 1, 2, 3])
    assert run.wait_blocking(TIMEOUT)
    assert stream.rx.running
    # frame 1 is lost to the bug: its row stays empty, the run says so
    assert {r: f.frame for r, f in sink.rows.items()} == {0: 0, 2: 2, 3: 3}
    assert isinstance(run.error, StreamIncompleteError)
    assert "missing 1" in str(run.error)
    assert stream.rx.counts["internal_error"] == 1
    assert "message 3 could not be decoded (internal error" in caplog.text
    assert "RuntimeError: decoder bug" in caplog.text
    stream.rx.end(run)
