"""Recorded streams into ``dranspose.replay``, with any cbor2.

``dranspose replay`` reads ingester dumps itself (``-f``), or takes events
from a *source* class (``--source module:Class``, instantiated without
arguments, whose ``get_source_generators()`` yields ``InternalWorkerMessage``
per stream). dranspose 0.2.0 reads dumps with a CBOR tag hook of the
signature cbor2 < 5.8 used; from 5.8 on cbor2 calls it as ``(tag,
immutable)`` and the replay of a dump fails (``CBORDecodeError: error
decoding semantic tag 42878``; dranspose's repository pins ``cbor2 < 5.8``
since, unreleased). :class:`ReplaySource` reads both dumps and this
package's stream captures (``.cbors``, one array of ZeroMQ frames a message,
grouped into events as the ingester groups them: :func:`~._dump.events_of`)
with a hook that works with every cbor2, so the replay runs anyway:

    OPHYD_XSPRESS_REPLAY=scan.cbors dranspose replay \\
        -w ophyd_xspress.dranspose:XrfMapWorker \\
        -r ophyd_xspress.dranspose:XrfMapReducer \\
        --source ophyd_xspress.dranspose:ReplaySource -p parameters.json

(paths separated by ``os.pathsep``, one stream each; the stream is named by
``OPHYD_XSPRESS_REPLAY_STREAM``, default ``xspress3``.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import cbor2

from ._dump import events_of

__all__ = ["REPLAY_ENV", "STREAM_ENV", "ReplaySource", "read_dump"]

#: The files :class:`ReplaySource` replays (``os.pathsep``-separated).
REPLAY_ENV: Final = "OPHYD_XSPRESS_REPLAY"
#: The stream name a capture's events get (default ``xspress3``).
STREAM_ENV: Final = "OPHYD_XSPRESS_REPLAY_STREAM"
#: dranspose's CBOR tags: an InternalWorkerMessage and a StreamData.
_MESSAGE_TAG: Final = 42877
_STREAM_TAG: Final = 42878


def _tag_hook(*args: Any) -> Any:
    """dranspose's tags as its objects, for the hook signatures of cbor2
    before 5.8 ``(decoder, tag[, shareable])`` and after ``(tag, immutable)``."""
    from dranspose.event import InternalWorkerMessage, StreamData

    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    if tag.tag == _MESSAGE_TAG:
        number, streams = tag.value[0], tag.value[1]
        return InternalWorkerMessage(event_number=number, streams=streams)
    if tag.tag == _STREAM_TAG:
        return StreamData(typ=tag.value[0], frames=list(tag.value[1]))
    return tag


def _items(path: Path) -> Iterator[Any]:
    with path.open("rb") as fh:
        while fh.peek(1):
            yield cbor2.load(fh, tag_hook=_tag_hook)


def read_dump(path: str | Path, stream: str = "xspress3") -> Iterator[Any]:
    """The events of ``path`` as ``InternalWorkerMessage``: an ingester dump
    as dumped, a stream capture grouped into events numbered from 1."""
    from dranspose.event import InternalWorkerMessage, StreamData
    from dranspose.protocol import EventNumber, StreamName

    items = _items(Path(path))
    first = next(items, None)
    if first is None:
        return
    if isinstance(first, InternalWorkerMessage):
        yield first
        yield from items
        return

    def messages() -> Iterator[Sequence[bytes]]:
        yield first
        yield from items

    for n, frames in enumerate(events_of(messages()), start=1):
        data = StreamData(typ="xspress", frames=frames)
        yield InternalWorkerMessage(
            event_number=EventNumber(n), streams={StreamName(stream): data}
        )


class ReplaySource:
    """A dranspose replay source over the files named by :data:`REPLAY_ENV`."""

    def __init__(
        self, paths: Sequence[str | Path] | None = None, stream: str | None = None
    ) -> None:
        if paths is None:
            listed = os.environ.get(REPLAY_ENV, "")
            paths = [p for p in listed.split(os.pathsep) if p]
        if not paths:
            raise ValueError(f"no files to replay: set {REPLAY_ENV}")
        self.paths = [Path(p) for p in paths]
        self.stream = stream or os.environ.get(STREAM_ENV) or "xspress3"

    def get_source_generators(self) -> list[Iterator[Any]]:
        return [read_dump(p, self.stream) for p in self.paths]
