"""The receiver thread survives what it cannot decode."""

from __future__ import annotations

import logging
import threading
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


def _recorder(last: int) -> tuple[list[int], threading.Event]:
    """An ``on_progress`` list, and an event set once ``last`` is published."""
    reached = threading.Event()

    class Values(list[int]):
        def append(self, value: int) -> None:
            super().append(value)
            if value == last:
                reached.set()

    return Values(), reached


def test_progress_is_published_only_when_it_moves(stream: Any, tmp_path: Any) -> None:
    """Progress goes out (and waiters are woken) when the stored count changes,
    not after every batch of messages: with an HDF5 sink it moves once per
    file flush. The values published never fall, repeat at most once (when the
    run becomes done: every frame received, not all stored yet) and end at the
    run's length."""
    import numpy as np

    from ophyd_xspress.hdf5 import Hdf5FrameWriter

    writer = Hdf5FrameWriter(
        tmp_path / "p.h5", 2, 4096, np.zeros((2, 0, 2), int), expected=300
    )
    writer.open()
    values, reached = _recorder(300)
    run = stream.rx.begin(
        300,
        writer,
        active=False,
        durable=writer.durable,
        on_progress=values.append,
    )
    stream.send_series(list(range(300)))
    assert run.wait_blocking(TIMEOUT)
    assert reached.wait(TIMEOUT), values[-5:]
    stream.rx.end(run)
    writer.close()
    assert values == sorted(values)
    assert len(values) - len(set(values)) <= 1, values
    assert len(values) < 20, values  # a few flushes, not one per batch
    assert run.error is None

    # an in-memory sink: stored moves with every frame, published per batch
    values2, reached2 = _recorder(50)
    sink = stream.sink()
    run2 = stream.rx.begin(50, sink, active=False, on_progress=values2.append)
    stream.send_series(list(range(50)))
    assert run2.wait_blocking(TIMEOUT)
    assert reached2.wait(TIMEOUT), values2[-5:]
    stream.rx.end(run2)
    assert values2 == sorted(values2)
    assert len(values2) - len(set(values2)) <= 1, values2


def _odd_and_good_series(stream: Any) -> tuple[list[Any], list[Any]]:
    """A header, frame 0, frame 1 with 1024 bins (the file has 4096), the real
    frames 1 and 2, series_end; returns (messages, the good frames)."""
    from ophyd_xspress.protocol import SeriesEndMessage, make_frame

    good = [stream.frame(1, n) for n in range(3)]
    odd = make_frame(
        1, good[1].spectra[:, :1024], dict(good[1].metadata), exptime=good[1].exptime
    )
    enc = stream.encoder
    messages = list(enc.encode(stream.sim.header()))
    for frame in (good[0], odd, good[1], good[2]):
        messages += enc.encode(frame)
    messages += enc.encode(SeriesEndMessage())
    return messages, good


def test_a_frame_of_the_wrong_shape_fails_the_run_with_the_true_cause(
    stream: Any, tmp_path: Any, caplog: Any
) -> None:
    """A frame of another bin count than the file was opened for is a setting,
    not a glitch: the run fails at the first one, saying what the stream sends,
    what the file holds, and what to pass; one log line; the thread goes on."""
    import numpy as np

    from ophyd_xspress.hdf5 import Hdf5FrameWriter
    from ophyd_xspress.transport import StreamShapeError

    caplog.set_level(logging.WARNING, logger="ophyd_xspress.transport")
    for active in (True, False):
        path = tmp_path / f"odd-{active}.h5"
        writer = Hdf5FrameWriter(path, 2, 4096, np.zeros((2, 0, 2), int), expected=3)
        writer.open()
        run = stream.rx.begin(3, writer, active=active, durable=writer.durable)
        messages, _ = _odd_and_good_series(stream)
        stream.push.send(messages)
        assert run.wait_blocking(TIMEOUT)
        assert stream.rx.running
        assert isinstance(run.error, StreamShapeError)
        assert str(run.error) == (
            f"the stream from {stream.rx.endpoint} sends 2 channels x 1024 bins "
            f"(frame 1), but the file {path} was opened for 2 x 4096: the "
            "detector is set up for 4096 bins: pass bins=1024"
        )
        assert run.summary()["refused"] == [1]
        stream.rx.end(run)
        writer.close()
    refused = [m for m in caplog.messages if "sends 2 channels x 1024 bins" in m]
    assert len(refused) == 2  # one line per run


def test_a_failing_sink_fails_the_run_not_the_thread(stream: Any) -> None:
    """Any other exception from the sink (here: a writer already closed) fails
    the run with it; the receiver thread keeps serving the next run."""
    import numpy as np

    from ophyd_xspress.hdf5 import Hdf5FrameWriter

    closed = Hdf5FrameWriter("unused.h5", 2, 4096, np.zeros((2, 0, 2), int))
    run = stream.rx.begin(3, closed, active=False)  # never opened: put refuses
    stream.send_series([0, 1, 2])
    assert run.wait_blocking(TIMEOUT)
    assert isinstance(run.error, RuntimeError)
    assert "put after close" in str(run.error)
    assert stream.rx.running
    stream.rx.end(run)
    sink = stream.sink()
    run2 = stream.rx.begin(3, sink, active=False)
    stream.send_series([0, 1, 2])
    assert run2.wait_blocking(TIMEOUT)
    assert run2.error is None
    assert sorted(sink.rows) == [0, 1, 2]


def test_a_run_that_begins_mid_batch_gets_its_own_header(stream: Any) -> None:
    """Run 1 ends (and run 2 begins, and the detector is armed again) while
    the receiver thread is still working through a batch of messages: the
    messages after that moment go to run 2, its header first. (They used to
    go to the run current when the batch began, and run 2 stalled with "the
    series header never arrived".)"""
    import time

    header = stream.encoder.encode(stream.sim.header())
    runs: dict[int, Any] = {}

    class EndsTheRunMidBatch:
        def put(self, row: int, frame: Any) -> None:
            if row == 1:  # run 1's last frame: as the asyncio thread would
                stream.rx.end(runs[1])
                runs[2] = stream.rx.begin(1, active=True)
                stream.push.send(header + stream.encoder.encode(stream.frame(9, 0)))
                time.sleep(0.05)  # let them queue behind this batch

        def flush(self) -> None:
            return None

    runs[1] = stream.rx.begin(2, EndsTheRunMidBatch(), active=True)
    # (no series_end: the sink sends from the receiver thread, and a ZeroMQ
    # socket must not be used by two threads at once)
    stream.send_series([0, 1], end=False)
    assert runs[1].wait_blocking(TIMEOUT)
    assert runs[1].error is None
    assert runs[2].wait_blocking(TIMEOUT)
    assert runs[2].error is None
    assert runs[2].header is not None
    assert runs[2].received == 1
    stream.rx.end(runs[2])
