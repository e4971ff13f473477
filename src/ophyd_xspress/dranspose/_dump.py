"""Recorded streams as dranspose ingester dumps, for ``dranspose.replay``.

dranspose replays what its ingesters dumped: one ``InternalWorkerMessage``
per event, each with the stream's ZeroMQ frames of that event. Its Xspress3
ingester makes one event of each detector message: the header, each frame
(the three parts of the newer firmware's message, or the older firmware's
three single-part messages together) and the series end. :func:`write_dump`
does the same with a recorded stream (a ``.cbors`` capture, see
:mod:`ophyd_xspress.tools`), numbering events from 1, and writes them with
dranspose's own ``Dumper``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..protocol import ImageMessage, ProtocolError, parse_json_part

__all__ = ["events_of", "write_dump"]


def _is_image(part: bytes) -> bool:
    """A JSON part announcing a frame (its spectra and metadata follow)."""
    try:
        return isinstance(parse_json_part(part), ImageMessage)
    except ProtocolError:
        return False


def events_of(messages: Iterable[Sequence[bytes]]) -> Iterator[list[bytes]]:
    """The stream's messages grouped as dranspose's Xspress3 ingester groups
    them: a single-part image JSON takes the two messages after it."""
    pending: list[bytes] = []
    for message in messages:
        parts = [bytes(p) for p in message]
        if pending:
            pending += parts
            if len(pending) >= 3:
                yield pending
                pending = []
        elif len(parts) == 1 and _is_image(parts[0]):
            pending = parts
        else:
            yield parts
    if pending:
        yield pending


def write_dump(
    messages: Iterable[Sequence[bytes]], path: str | Path, stream: str = "xspress3"
) -> int:
    """Write ``messages`` (e.g. ``tools.read_capture(...)``) as a dranspose
    ingester dump of ``stream`` at ``path``; returns the number of events."""
    from dranspose.event import InternalWorkerMessage, StreamData
    from dranspose.ingester import Dumper
    from dranspose.protocol import EventNumber, StreamName

    target = Path(path)
    target.unlink(missing_ok=True)  # the Dumper appends
    dumper = Dumper(str(target))
    n = 0
    try:
        for n, frames in enumerate(events_of(messages), start=1):
            data = StreamData(typ="xspress", frames=frames)
            dumper.write_dump(
                InternalWorkerMessage(
                    event_number=EventNumber(n), streams={StreamName(stream): data}
                )
            )
    finally:
        dumper.close()
    return n
