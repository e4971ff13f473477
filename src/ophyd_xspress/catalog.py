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
about the last second.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import platformdirs

from ._runs import RunsMixin, enable_documents_export, runs_container

if TYPE_CHECKING:
    from event_model import StreamDatum

__all__ = [
    "MAX_DELAY",
    "LocalCatalog",
    "RemoteCatalog",
    "TimelyWriter",
    "default_directory",
]

log = logging.getLogger("ophyd_xspress.catalog")

#: Seconds a StreamDatum waits at most before it is written to the catalog.
MAX_DELAY: Final = 0.5


def default_directory() -> Path:
    """``<user data dir>/ophyd-xspress`` (e.g. ``~/.local/share/ophyd-xspress``)."""
    return Path(platformdirs.user_data_dir("ophyd-xspress"))


class TimelyWriter:
    """A ``TiledWriter`` whose StreamDatum reach the catalog within about
    ``max_delay`` seconds, written off the RunEngine's thread.

    Documents are handed, in their order, to a thread of its own that passes
    them to ``TiledWriter(client, batch_size=1, max_array_size=0)``: a write to
    the catalog (an HTTP request per stream resource, ~20 per detector) never
    holds up the RunEngine. StreamDatum are joined while they wait (consecutive
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
        self.writer = TiledWriter(client, batch_size=1, max_array_size=0)
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
