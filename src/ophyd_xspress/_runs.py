"""databroker habits on a tiled catalog of runs (``catalog.py``'s helpers).

Runs are written into a container with the ``CatalogOfBlueskyRuns`` spec, so
the tiled client gives it bluesky-tiled-plugins' conveniences (``catalog[-1]``,
scan ids, partial uids, ``search`` on the start document). On top of them:

* negative slices in time order (``catalog[-3:]``: the last three runs, oldest
  first, as databroker's ``db[-3:]``);
* ``search(plan_name="count")``: keyword arguments match the start document;
* ``.v1``: databroker's v1 ``Broker`` over the same runs, whose ``table()``
  of a fly scan lists its rows (:class:`XspressBroker`);
* ``run.documents()``: the documents of a run, through the JSON-seq exporter
  that :func:`enable_documents_export` registers for an in-process server (a
  facility server needs it in its configuration).

One workaround, in :func:`isolated`: bluesky-tiled-plugins 2.0.12's ``.v2``
(which databroker's v1 ``Header`` calls on every run) sets ``BlueskyRun`` to
its v2 class in a *shallow copy* of the structure-client map, which shares its
entries with the map every tiled client of the process uses: after one
``db[-1]``, ``catalog[-1]["primary"]["xspress"]`` raised ``KeyError``. The
catalog of runs and the v1 view here each get a map of their own. (Upstream:
``.v2`` / ``.v3`` copying the map's entries would remove the need.)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Final

__all__ = [
    "RUNS_KEY",
    "RunsMixin",
    "enable_documents_export",
    "runs_container",
    "xspress_broker",
]

#: Where the local catalog keeps its runs: ``raw``, as facility servers do
#: (databroker's ``Broker.named`` looks there too).
RUNS_KEY: Final = "raw"
#: The spec that makes the tiled client a catalog of runs (SQL-backed: v3).
RUNS_SPEC: Final = ("CatalogOfBlueskyRuns", "3.0")
#: External fields up to this many values a row are read by ``table()``
#: without ``fill`` (scalars and per-channel values, never the spectra).
SMALL_FIELD: Final = 64


def runs_container(client: Any, key: str = RUNS_KEY) -> Any:
    """``client`` when it is a catalog of runs, else its child ``key`` (made
    with the catalog-of-runs spec when missing)."""
    from bluesky_tiled_plugins import CatalogOfBlueskyRuns
    from tiled.structures.core import Spec

    if isinstance(client, CatalogOfBlueskyRuns):
        return isolated(client)
    if key not in client:
        name, version = RUNS_SPEC
        client.create_container(key, specs=[Spec(name, version=version)])
    return isolated(client[key])


def _same(value: Any) -> Any:
    return value


def isolated(client: Any) -> Any:
    """The same tiled node, with a structure-client map of its own in which
    ``BlueskyRun`` is bluesky-tiled-plugins' own (see the module docstring)."""
    from bluesky_tiled_plugins.clients.bluesky_run import BlueskyRun
    from tiled.utils import OneShotCachedMap

    shared = client.structure_clients
    resolved = {key: shared[key] for key in shared}
    resolved["BlueskyRun"] = BlueskyRun
    own = OneShotCachedMap(
        {key: functools.partial(_same, value) for key, value in resolved.items()}
    )
    return type(client)(client.context, item=client.item, structure_clients=own)


def enable_documents_export() -> None:
    """Let in-process tiled servers export a run's documents (JSON-seq), which
    ``run.documents()`` asks for; registered once, on tiled's default
    serialization registry (bluesky-tiled-plugins' own exporter)."""
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry

    media_type = "application/json-seq"
    if media_type not in default_serialization_registry.media_types("BlueskyRun"):
        default_serialization_registry.register(
            "BlueskyRun", media_type, json_seq_exporter
        )


class RunsMixin:
    """``catalog[...]``, ``search`` and ``v1`` over ``self.runs`` (a catalog of
    runs), falling back to ``self.client`` for a uid written before the runs
    had a container of their own."""

    runs: Any
    client: Any

    def __getitem__(self, key: Any) -> Any:
        """A uid or partial uid, a scan id (> 0), ``-1`` for the latest run, or
        a negative slice (``[-3:]``: the last three, oldest first)."""
        if (
            isinstance(key, slice)
            and key.step is None
            and key.start is not None
            and key.start < 0
            and (key.stop is None or key.stop < 0)
        ):
            # tiled slices from the end only backwards: take them, then turn
            last = list(self.runs.values()[-1 : key.start - 1 : -1])[::-1]
            return last if key.stop is None else last[: key.stop - key.start]
        try:
            return self.runs[key]
        except KeyError:
            if isinstance(key, str) and key in self.client:
                return self.client[key]
            raise

    def search(self, query: Any = None, **start: Any) -> Any:
        """Runs whose start document matches: ``search(plan_name="count",
        scan_id=3)``, or any tiled / bluesky-tiled-plugins query."""
        from tiled.queries import Key

        found = self.runs if query is None else self.runs.search(query)
        for name, value in start.items():
            found = found.search(Key(f"start.{name}") == value)
        return found

    @property
    def v1(self) -> Any:
        """databroker's v1 ``Broker`` over these runs (needs ``databroker``)."""
        return xspress_broker(self.runs)


def xspress_broker(runs: Any) -> Any:
    """databroker's v1 ``Broker`` whose ``table()`` without ``fill`` also
    reads the external fields of a few values a row (a fly scan's frame
    numbers, dead times, ROI sums), so a fly scan's table lists its rows; the
    spectra still need ``fill=True``."""
    from databroker.v1 import Broker

    class XspressBroker(Broker):
        def get_table(
            self,
            headers: Any,
            stream_name: str = "primary",
            fields: Any = None,
            fill: Any = False,
            handler_registry: Any = None,
            convert_times: bool = True,
            timezone: Any = None,
            localize_times: bool = True,
        ) -> Any:
            if not fill and fields is None:
                fields = _small_fields(headers, stream_name)
                fill = bool(fields)
            return super().get_table(
                headers,
                stream_name=stream_name,
                fields=fields,
                fill=fill,
                handler_registry=handler_registry,
                convert_times=convert_times,
                timezone=timezone,
                localize_times=localize_times,
            )

    return XspressBroker(isolated(runs))


def _small_fields(headers: Any, stream_name: str) -> list[str] | None:
    """All fields of the stream when some are external: the internal ones and
    the external ones of at most :data:`SMALL_FIELD` values a row (None when
    none is external: databroker's own table is right then)."""
    header = headers[0] if isinstance(headers, list | tuple) else headers
    keys: dict[str, Any] = {}
    for descriptor in header.descriptors:
        if descriptor.get("name") == stream_name:
            keys.update(descriptor["data_keys"])
    if not any(dk.get("external") for dk in keys.values()):
        return None
    return [
        name
        for name, dk in keys.items()
        if not dk.get("external") or math.prod(dk.get("shape") or []) <= SMALL_FIELD
    ]
