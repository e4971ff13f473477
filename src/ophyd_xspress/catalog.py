"""An embedded tiled catalog for runs, with the detector's HDF5 files readable.

>>> from ophyd_xspress.catalog import LocalCatalog
>>> catalog = LocalCatalog()                 # default: the user's data dir
>>> RE.subscribe(catalog.writer)              # TiledWriter
>>> xspress = XspressDetector(..., path=catalog.data_dir)
>>> catalog[uid]["primary"]["xspress"].read()

The same code works against a facility tiled server:

>>> catalog = RemoteCatalog("https://tiled.facility.example", api_key="...")

databroker habits (:mod:`ophyd_xspress._runs`): runs live in a catalog of runs
(``catalog.runs``, the server's ``raw`` node), so ``catalog[-1]``,
``catalog[-3:]``, ``catalog[scan_id]``, ``catalog["a8c2b"]`` (partial uid),
``catalog.search(plan_name="count")``, ``catalog[-1].documents()`` and, with
``databroker`` installed, the v1 ``db = catalog.v1``: ``db[-1].table()`` (a fly
scan's too), ``db(plan_name=...)``.

Data live in ``<directory>/catalog`` (SQLite + internal arrays) and
``<directory>/data`` (the detector's HDF5 files, registered as readable storage
so tiled can serve them). Restarting on the same directory reads old runs back,
and repairs first the files a killed writer left in ``data``
(:func:`ophyd_xspress.hdf5.repair_leftovers`).

Fresh data: ``TiledWriter`` writes Events and StreamDatum in batches of
``batch_size`` (10,000 by default) and, in bluesky-tiled-plugins 2.0.12, has
no time-based flush: a fly scan's StreamDatum reached the catalog only at its
end, and a crash lost them all. Written one at a time instead, from the
RunEngine's thread, each costs an HTTP request per stream resource (measured
~40 ms each on the local server, ~20 stream resources a detector): the
RunEngine stalled for seconds. :class:`TimelyWriter` writes from a thread of
its own and joins StreamDatum while they wait, at most :data:`MAX_DELAY`:
``catalog[uid]`` shows a fly scan's frames while it runs, and a crash loses
about the last second. Step scans' events go in batches of
:data:`EVENT_ROWS` (:class:`RunWriters`): one event a write took ~1.2 s a
point.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import platformdirs

from ._runs import RunsMixin, enable_documents_export, runs_container

if TYPE_CHECKING:
    from event_model import StreamDatum

__all__ = [
    "EVENT_ROWS",
    "MAX_DELAY",
    "LocalCatalog",
    "RemoteCatalog",
    "RunWriters",
    "TimelyWriter",
    "default_directory",
]

log = logging.getLogger("ophyd_xspress.catalog")

#: Seconds a StreamDatum waits at most before it is written to the catalog.
MAX_DELAY: Final = 0.5
#: Event rows a step scan's stream writes to the catalog at once (see
#: :class:`RunWriters`).
EVENT_ROWS: Final = 10


def default_directory() -> Path:
    """``<user data dir>/ophyd-xspress`` (e.g. ``~/.local/share/ophyd-xspress``)."""
    return Path(platformdirs.user_data_dir("ophyd-xspress"))


class TimelyWriter:
    """A ``TiledWriter`` whose StreamDatum reach the catalog within about
    ``max_delay`` seconds, written off the RunEngine's thread.

    Documents are handed, in their order, to a thread of its own that passes
    them to a :class:`RunWriters` (a ``TiledWriter`` per run): a write to the
    catalog (an HTTP request per data key, ~20 per detector) never holds up
    the RunEngine. StreamDatum are joined while they wait (consecutive
    ones of a stream resource, as ``TiledWriter`` would) and written once the
    first of them is ``max_delay`` old, or before any other document. The
    ``stop`` document is written before the RunEngine gets it back: a run is
    whole in the catalog when ``RE(plan)`` returns. ``max_array_size=0``:
    every array field is an array node (with tiled's default, small 2-D fields
    such as the ``(channels, rois)`` ROI sums go to the SQL table, which
    cannot hold them).

    A write that failed raises its error with the next document.
    """

    def __init__(
        self, client: Any, *, max_delay: float = MAX_DELAY, timeout: float = 120.0
    ) -> None:
        from bluesky_tiled_plugins import TiledWriter

        self.max_delay = max_delay
        #: How long ``stop`` and :meth:`flush` wait for the writes.
        self.timeout = timeout
        self.writer = RunWriters(client, TiledWriter)
        self._cond = threading.Condition()
        self._queue: list[tuple[str, Any]] = []  # in order, ready to write
        self._pending: dict[str, StreamDatum] = {}  # joined, by stream resource
        self._since = 0.0  # when the oldest pending StreamDatum came
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        #: StreamDatum written, after joining (for tests and diagnostics).
        self.writes = 0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        with self._cond:
            error, self._error = self._error, None
            if error is not None:
                raise error
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="xspress-catalog", daemon=True
                )
                self._thread.start()
            if name == "stream_datum":
                self._pend(cast("StreamDatum", doc))
            else:
                self._release_pending()
                self._queue.append((name, doc))
            self._cond.notify_all()
        if name == "stop":
            self.flush()

    def flush(self) -> None:
        """Write everything held now, and wait for it (raises a write's error)."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self._release_pending()
            self._cond.notify_all()
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"the catalog took more than {self.timeout:.0f} s to take "
                        f"{len(self._queue)} documents"
                    )
                self._cond.wait(left)
            error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Write what is held and end the writing thread."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            thread = self._thread
            if thread is not None:
                thread.join(self.timeout)

    # -- with the condition held ---------------------------------------------------
    def _pend(self, doc: StreamDatum) -> None:
        from bluesky_tiled_plugins.writing.tiled_writer import (
            concatenate_stream_datums,
        )

        key = doc["stream_resource"]
        held = self._pending.pop(key, None)
        if held is not None:
            try:
                doc = concatenate_stream_datums(held, doc)
            except ValueError:  # not consecutive: what was held goes first
                self._queue.append(("stream_datum", held))
        if not self._pending:
            self._since = time.monotonic()
        self._pending[key] = doc

    def _release_pending(self) -> None:
        self._queue += [("stream_datum", d) for d in self._pending.values()]
        self._pending = {}

    # -- the writing thread --------------------------------------------------------
    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._pending and (
                        time.monotonic() - self._since >= self.max_delay
                    ):
                        self._release_pending()
                    if self._queue:
                        break
                    due = self._since + self.max_delay - time.monotonic()
                    self._cond.wait(due if self._pending else None)
                if self._closed and not self._queue:
                    return
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: list[tuple[str, Any]]) -> None:
        for name, doc in batch:
            try:
                self.writer(name, doc)
            except Exception as exc:  # raised with the next document
                log.exception("writing a %s document to the catalog failed", name)
                with self._cond:
                    if self._error is None:
                        self._error = exc
                continue
            if name == "stream_datum":
                self.writes += 1


class RunWriters:
    """Each run to a ``TiledWriter(client, batch_size, max_array_size=0)`` of
    its own, with the batch size that run needs.

    ``TiledWriter`` writes a stream's event rows once ``batch_size`` of them
    wait, each write an HTTP request per array field (~20 for a detector,
    ~60 ms each on the local server): one row at a time, a step scan's points
    took ~1.2 s each to reach the catalog, and ``RE(count(...))`` waited for
    them at its end. A run whose data are events gets :data:`EVENT_ROWS` rows
    a write (they reach the catalog every few points, and at ``stop``). A run
    with StreamDatum (fly scans, files) gets 1: ``TiledWriter`` would hold a
    StreamDatum until the next came otherwise, and :class:`TimelyWriter`
    joins them already. Which kind a run is shows in its first data (the
    baseline's events say nothing): until then its documents are held, in
    order. ``max_array_size=0``: every array field is an array node (with
    tiled's default, small 2-D fields such as the ``(channels, rois)`` ROI
    sums go to the SQL table, which cannot hold them).
    """

    def __init__(self, client: Any, make: Callable[..., Any]) -> None:
        self._client = client
        self._make = make
        self._writer: Any = None
        self._held: list[tuple[str, Any]] = []
        #: descriptor uid -> "baseline", "events" (inline data) or "files"
        self._kinds: dict[str, str] = {}

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self._writer, self._held, self._kinds = None, [], {}
        if self._writer is None:
            rows = self._rows_for(name, doc)
            if rows is None:
                self._held.append((name, doc))
                return
            self._writer = self._make(self._client, batch_size=rows, max_array_size=0)
            held, self._held = self._held, []
            for held_name, held_doc in held:
                self._writer(held_name, held_doc)
        self._writer(name, doc)

    def _rows_for(self, name: str, doc: dict[str, Any]) -> int | None:
        """The run's batch size, once ``doc`` shows it; None: not yet."""
        if name == "start":
            return None
        if name == "descriptor":
            external = any("external" in k for k in doc["data_keys"].values())
            kind = "files" if external else "events"
            if doc.get("name") == "baseline":
                kind = "baseline"
            self._kinds[doc["uid"]] = kind
            return None
        if name in ("event", "event_page"):
            kind = self._kinds.get(doc.get("descriptor", ""), "events")
            return {"baseline": None, "events": EVENT_ROWS}.get(kind, 1)
        return 1  # stream_resource, stream_datum, resource, datum, stop


class LocalCatalog(RunsMixin):
    """A local tiled server (SQLite + files) with a TiledWriter for the RunEngine."""

    def __init__(self, directory: str | Path | None = None) -> None:
        from tiled.client import from_uri
        from tiled.server import SimpleTiledServer

        self.directory = Path(directory or default_directory()).expanduser().resolve()
        self.data_dir = self.directory / "data"
        self.catalog_dir = self.directory / "catalog"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.catalog_dir.mkdir(parents=True, exist_ok=True)
        from .hdf5 import repair_leftovers

        repair_leftovers(self.data_dir)  # files a killed writer left
        enable_documents_export()
        self.server = SimpleTiledServer(
            directory=self.catalog_dir, readable_storage=[self.data_dir]
        )
        self.uri: str = self.server.uri
        self.client = from_uri(self.uri)
        #: The catalog of runs (runs written before it existed are at the root)
        self.runs = runs_container(self.client)
        self.writer = TimelyWriter(self.runs)
        log.info("tiled catalog at %s (%s)", self.uri, self.directory)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            self.client.context.close()
        self.server.close()

    def __enter__(self) -> LocalCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteCatalog(RunsMixin):
    """A facility tiled server: same ``client`` / ``writer`` interface.

    ``uri`` is the server's catalog of runs (or a node holding one as
    ``runs``, made there when missing)."""

    def __init__(self, uri: str, api_key: str | None = None) -> None:
        from tiled.client import from_uri

        self.uri = uri
        self.client = from_uri(uri, api_key=api_key)
        self.runs = runs_container(self.client)
        self.writer = TimelyWriter(self.runs)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            self.client.context.close()
