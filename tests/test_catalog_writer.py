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

from ophyd_xspress.catalog import EVENT_ROWS, MAX_DELAY, TimelyWriter


class Recorder:
    """Stands in for TiledWriter: records (time, thread, name, doc), and the
    options of each TiledWriter made (one per run)."""

    def __init__(self) -> None:
        self.options: list[dict[str, Any]] = []
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

    def make(self, client: Any, **options: Any) -> Recorder:
        self.options.append(options)
        return self


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch, recorder: Recorder) -> Any:
    monkeypatch.setattr(bluesky_tiled_plugins, "TiledWriter", recorder.make)
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


def test_stream_datum_are_joined_and_written_within_max_delay(
    writer: Any, recorder: Recorder
) -> None:
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
    # a run with StreamDatum: each written at once (TiledWriter would hold one)
    assert recorder.options == [{"batch_size": 1, "max_array_size": 0}]


def test_order_is_kept_and_stop_is_written_before_it_returns(
    writer: Any, recorder: Recorder
) -> None:
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


def test_a_failed_write_raises_with_the_next_document(
    writer: Any, recorder: Recorder
) -> None:
    recorder.fail_on = "event"
    writer("start", {"uid": "run"})
    writer("event", {"uid": "e1"})
    with pytest.raises(RuntimeError, match="the catalog refused a event"):
        writer("stop", {"uid": "end"})
    writer("start", {"uid": "next"})  # raised once: the next run goes on


def test_step_scans_write_events_in_batches_and_fly_scans_at_once(
    writer: Any, recorder: Recorder
) -> None:
    """Each run gets a TiledWriter of its own, sized by its first data: a
    step scan's events EVENT_ROWS rows a write (one row a write cost ~1.2 s a
    point on the local server), a run with StreamDatum one at a time. The
    baseline's events say nothing; until the run's kind shows, its documents
    wait, in order."""
    baseline = {"uid": "b", "name": "baseline", "data_keys": {"m": {}}}
    primary = {"uid": "p", "name": "primary", "data_keys": {"x": {}}}
    fly = {"uid": "f", "name": "primary", "data_keys": {"x": {"external": "STREAM:"}}}
    step_run = [
        ("start", {"uid": "s1"}),
        ("descriptor", baseline),
        ("event", {"uid": "e0", "descriptor": "b"}),
        ("descriptor", primary),
        ("event", {"uid": "e1", "descriptor": "p"}),
        ("stop", {"uid": "end1"}),
    ]
    fly_run = [
        ("start", {"uid": "s2"}),
        ("descriptor", baseline),
        ("event", {"uid": "e2", "descriptor": "b"}),
        ("descriptor", fly),
        ("stream_resource", {"uid": "r"}),
        ("stop", {"uid": "end2"}),
    ]
    for name, doc in step_run + fly_run:
        writer(name, doc)
    assert recorder.options == [
        {"batch_size": EVENT_ROWS, "max_array_size": 0},
        {"batch_size": 1, "max_array_size": 0},
    ]
    got = [doc["uid"] for _, _, _, doc in recorder.calls]
    assert got == [doc["uid"] for _, doc in step_run + fly_run]
