"""Read and write ``.cbors`` stream captures (one CBOR array of frames a message).

This is the dump format the dranspose project uses for replaying streams: a
concatenation of CBOR items, each an array of byte strings, the ZeroMQ frames of
one received message in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from io import BufferedReader
from pathlib import Path

import cbor2

from ..protocol import ProtocolError

__all__ = ["CaptureError", "read_capture", "write_capture"]


class CaptureError(ProtocolError):
    """A capture file is not a sequence of CBOR arrays of byte strings."""


def _iter_items(fh: BufferedReader, name: str) -> Iterator[list[bytes]]:
    index = 0
    while fh.peek(1):
        try:
            item = cbor2.load(fh)
        except Exception as exc:
            raise CaptureError(
                f"{name}: CBOR item {index} is corrupt ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(item, list) or not all(
            isinstance(p, bytes | bytearray) for p in item
        ):
            raise CaptureError(
                f"{name}: CBOR item {index} is {type(item).__name__}, expected an "
                "array of byte strings (one ZeroMQ message)"
            )
        yield [bytes(p) for p in item]
        index += 1


def read_capture(path: str | Path) -> Iterator[list[bytes]]:
    """Yield the ZeroMQ messages of a ``.cbors`` capture, each a list of frames."""
    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise CaptureError(f"{p}: cannot open ({exc.strerror})") from exc
    with fh:
        yield from _iter_items(fh, str(p))


def write_capture(
    path: str | Path, messages: Iterable[Sequence[bytes | memoryview]]
) -> int:
    """Write messages as a ``.cbors`` capture; returns the number written."""
    n = 0
    with Path(path).open("wb") as fh:
        for message in messages:
            cbor2.dump([bytes(part) for part in message], fh)
            n += 1
    return n
