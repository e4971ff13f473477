"""TimelyWriter on its own, with a recording stand-in for TiledWriter: the
order of a run's documents is kept, StreamDatum are joined and written within
MAX_DELAY of their arrival from a thread of their own, ``stop`` is written
before the RunEngine gets it back, and a failed write raises with the next
document."""

from __future__ import annotations

import threading
import time
from typing import Any

import bluesky_tiled_plugins
import pytest

from ophyd_xspress.catalog import MAX_DELAY, TimelyWriter


class Recorder:
    """Stands in for TiledWriter: records (time, thread, name, doc)."""

    def __init__(self, client: Any, **options: Any) -> None:
        self.options = options
        self.calls: list[tuple[float, str, str, dict[str, Any]]] = []
        self.fail_on: str | None = None
        self.delay = 0.0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        time.sleep(self.delay)
        if name == self.fail_on:
            raise RuntimeError(f"the catalog refused a {name}")
        self.calls.append(
            (time.monotonic(), threading.current_thread().name, name, doc)
        )


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(bluesky_tiled_plugins, "TiledWriter", Recorder)
    timely = TimelyWriter(object())
    yield timely
    timely.close()


def datum(resource: str, start: int, stop: int) -> dict[str, Any]:
    return {
        "uid": f"{resource}/{stop}",
        "stream_resource": resource,
        "descriptor": "d",
        "indices": {"start": start, "stop": stop},
        "seq_nums": {"start": start + 1, "stop": stop + 1},
    }


def test_stream_datum_are_joined_and_written_within_max_delay(writer: Any) -> None:
    recorder = writer.writer
    assert recorder.options == {"batch_size": 1, "max_array_size": 0}
    writer("start", {"uid": "run"})
    sent = time.monotonic()
    for stop in (10, 20, 30):
        writer("stream_datum", datum("a", stop - 10, stop))
        writer("stream_datum", datum("b", stop - 10, stop))
    deadline = time.monotonic() + 5
    while len(recorder.calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    names = [(name, doc.get("stream_resource")) for _, _, name, doc in recorder.calls]
    assert names == [("start", None), ("stream_datum", "a"), ("stream_datum", "b")]
    for t, thread, _, doc in recorder.calls[1:]:
        assert thread == "xspress-catalog"  # never the RunEngine's thread
        assert doc["indices"] == {"start": 0, "stop": 30}  # joined
        assert MAX_DELAY * 0.9 <= t - sent < MAX_DELAY + 0.5
    assert writer.writes == 2


def test_order_is_kept_and_stop_is_written_before_it_returns(writer: Any) -> None:
    recorder = writer.writer
    recorder.delay = 0.05  # a slow catalog
    writer("start", {"uid": "run"})
    writer("stream_datum", datum("a", 0, 5))
    writer("event", {"uid": "e1"})  # any other document: the datum goes first
    writer("stream_datum", datum("a", 5, 9))
    writer("stream_datum", datum("a", 20, 25))  # not consecutive: not joined
    writer("stop", {"uid": "end"})
    # stop returned: everything is written, in order
    got = [(name, doc["uid"]) for _, _, name, doc in recorder.calls]
    assert got == [
        ("start", "run"),
        ("stream_datum", "a/5"),
        ("event", "e1"),
        ("stream_datum", "a/9"),
        ("stream_datum", "a/25"),
        ("stop", "end"),
    ]


def test_a_failed_write_raises_with_the_next_document(writer: Any) -> None:
    writer.writer.fail_on = "event"
    writer("start", {"uid": "run"})
    writer("event", {"uid": "e1"})
    with pytest.raises(RuntimeError, match="the catalog refused a event"):
        writer("stop", {"uid": "end"})
    writer("start", {"uid": "next"})  # raised once: the next run goes on
