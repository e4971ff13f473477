"""An embedded tiled catalog for runs, with the detector's HDF5 files readable.

>>> from ophyd_xspress.catalog import LocalCatalog
>>> catalog = LocalCatalog()                 # default: the user's data dir
>>> RE.subscribe(catalog.writer)              # TiledWriter
>>> xspress = XspressDetector(..., path=catalog.data_dir)
>>> catalog.client[uid]["primary"]["xspress"].read()

The same code works against a facility tiled server:

>>> catalog = RemoteCatalog("https://tiled.facility.example", api_key="...")

Data live in ``<directory>/catalog`` (SQLite + internal arrays) and
``<directory>/data`` (the detector's HDF5 files, registered as readable storage
so tiled can serve them). Restarting on the same directory reads old runs back.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import platformdirs

__all__ = ["LocalCatalog", "RemoteCatalog", "default_directory"]

log = logging.getLogger("ophyd_xspress.catalog")


def default_directory() -> Path:
    """``<user data dir>/ophyd-xspress`` (e.g. ``~/.local/share/ophyd-xspress``)."""
    return Path(platformdirs.user_data_dir("ophyd-xspress"))


def _tiled_writer(client: Any) -> Any:
    from bluesky_tiled_plugins import TiledWriter

    # max_array_size=0: every array field is stored as an array node. With the
    # default (16) small 2-D fields such as (channels, rois) ROI sums go to the
    # SQL table, which cannot hold them.
    return TiledWriter(client, max_array_size=0)


class LocalCatalog:
    """A local tiled server (SQLite + files) with a TiledWriter for the RunEngine."""

    def __init__(self, directory: str | Path | None = None) -> None:
        from tiled.client import from_uri
        from tiled.server import SimpleTiledServer

        self.directory = Path(directory or default_directory()).expanduser().resolve()
        self.data_dir = self.directory / "data"
        self.catalog_dir = self.directory / "catalog"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.catalog_dir.mkdir(parents=True, exist_ok=True)
        self.server = SimpleTiledServer(
            directory=self.catalog_dir, readable_storage=[self.data_dir]
        )
        self.uri: str = self.server.uri
        self.client = from_uri(self.uri)
        self.writer = _tiled_writer(self.client)
        log.info("tiled catalog at %s (%s)", self.uri, self.directory)

    def __getitem__(self, uid: str) -> Any:
        return self.client[uid]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.context.close()
        self.server.close()

    def __enter__(self) -> LocalCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteCatalog:
    """A facility tiled server: same ``client`` / ``writer`` interface."""

    def __init__(self, uri: str, api_key: str | None = None) -> None:
        from tiled.client import from_uri

        self.uri = uri
        self.client = from_uri(uri, api_key=api_key)
        self.writer = _tiled_writer(self.client)

    def __getitem__(self, uid: str) -> Any:
        return self.client[uid]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.context.close()
