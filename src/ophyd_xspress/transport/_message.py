"""One message of the stream: a socket with its limits, receiving, decoding.

Every consumer of the stream goes through the same steps: the receiver thread
(:class:`~ophyd_xspress.transport.StreamReceiver`), ``ophyd-xspress listen``
and, for recorded messages, ``ophyd-xspress inspect``::

    sock = open_stream_socket(ctx, "sub")      # MAXMSGSIZE, RCVHWM, subscribed
    sock.connect(endpoint)
    received = receive_message(sock)           # None: nothing waiting
    if received is not None and not received.refused:
        decoded = decode_message(decoder, received.parts)
        log_anomalies(log, endpoint, decoded.anomalies)   # each one once
        for packet in decoded.packets: ...

Sizes the peer controls are bounded before anything large is kept: ZeroMQ
refuses a part over ``max_message_bytes`` (``MAXMSGSIZE``: the peer is
disconnected before the part is allocated), and :func:`receive_message` keeps
at most :data:`MAX_PARTS` parts of a message, reading and freeing the others.
:func:`decode_message` never raises: a :class:`ProtocolError` (bad input) or
any other exception (a decoder bug) comes back in :attr:`Decoded.error`, with
the anomalies the series tracker queued meanwhile. Nothing here logs but
:func:`log_anomalies`, which the caller chooses to call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import zmq

from ..protocol import MAX_FRAME_BYTES, Anomaly, Packet, ProtocolError, StreamDecoder

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_QUEUE_BYTES",
    "DEFAULT_RCVHWM",
    "MAX_PARTS",
    "SMALL_PART",
    "Decoded",
    "Part",
    "Received",
    "decode_message",
    "log_anomalies",
    "open_stream_socket",
    "rcvhwm_for",
    "receive_message",
]

#: Parts up to this size are received as bytes, larger ones as zmq.Frame.
SMALL_PART: Final = 8192
#: Default receive high-water mark (messages). Bounded, so a consumer slower
#: than the detector cannot grow without limit: PUSH senders then block, PUB
#: senders drop, and the gap is reported as missing frames.
DEFAULT_RCVHWM: Final = 4096
#: Bytes of frames the socket's queue may hold: the high-water mark counts
#: messages, so it is set from the frame size (:func:`rcvhwm_for`).
DEFAULT_QUEUE_BYTES: Final = 256 << 20
#: Most parts a message of this protocol has (JSON, spectra, metadata).
MAX_PARTS: Final = 3
#: Largest part accepted: the largest spectra buffer plus room for its JSON.
DEFAULT_MAX_MESSAGE_BYTES: Final = MAX_FRAME_BYTES + (1 << 20)

#: One received part: small ones as bytes, large ones zero-copy.
Part: TypeAlias = bytes | zmq.Frame

_LEVELS: Final = {"warning": logging.WARNING, "info": logging.INFO}


def rcvhwm_for(frame_bytes: int, queue_bytes: int = DEFAULT_QUEUE_BYTES) -> int:
    """The receive high-water mark that keeps the socket's queue of frames of
    ``frame_bytes`` under ``queue_bytes`` (at least 16 messages, at most
    :data:`DEFAULT_RCVHWM`): 4096 for 4 x 4096-bin frames, 256 for 64
    channels."""
    return max(16, min(DEFAULT_RCVHWM, queue_bytes // max(1, frame_bytes)))


def open_stream_socket(
    context: zmq.Context[zmq.Socket[bytes]],
    socket_type: Literal["sub", "pull"],
    *,
    rcvhwm: int = DEFAULT_RCVHWM,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> zmq.Socket[bytes]:
    """A SUB (subscribed to everything) or PULL socket with the stream's
    limits, not yet connected (so a monitor can be attached first)."""
    sock = context.socket(zmq.SUB if socket_type == "sub" else zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.RCVBUF, 4 * 1024 * 1024)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if socket_type == "sub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    return sock


@dataclass(frozen=True, slots=True)
class Received:
    """One message as read from the socket.

    ``parts`` holds its parts, or nothing when it was ``refused`` (more than
    :data:`MAX_PARTS` parts); ``part_count`` and ``nbytes`` count everything
    that was read, refused or not.
    """

    parts: list[Part]
    part_count: int
    nbytes: int

    @property
    def refused(self) -> bool:
        return self.part_count > MAX_PARTS

    def refusal(self, number: int) -> str:
        """Why message ``number`` (the caller's count) was refused."""
        return (
            f"message {number} had {self.part_count} parts (at most "
            f"{MAX_PARTS} in this protocol): refused"
        )


def receive_message(sock: zmq.Socket[bytes]) -> Received | None:
    """The next message waiting on ``sock``, or None when there is none.

    Large parts (spectra) stay zero-copy ``zmq.Frame``; small ones (JSON,
    pickle) become bytes, which the decoder's fast paths handle best. Beyond
    :data:`MAX_PARTS` parts are read and freed, never kept."""
    try:
        part = sock.recv(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
    parts: list[Part] = []
    count = nbytes = 0
    while True:
        count += 1
        nbytes += len(part)
        if count <= MAX_PARTS:
            parts.append(part if len(part) > SMALL_PART else part.bytes)
        if not part.more:
            break
        part = sock.recv(copy=False)  # the rest of a message is already here
    return Received(parts if count <= MAX_PARTS else [], count, nbytes)


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one message gave: its packets, the anomalies the series tracker
    queued while decoding it (to report once each), and the error, if any: a
    :class:`ProtocolError` for bad input, anything else a decoder bug
    (:attr:`internal`)."""

    packets: list[Packet]
    anomalies: list[Anomaly]
    error: Exception | None = None

    @property
    def internal(self) -> bool:
        return self.error is not None and not isinstance(self.error, ProtocolError)


def decode_message(
    decoder: StreamDecoder, message: Sequence[Part | bytearray | memoryview]
) -> Decoded:
    """Feed one message (received, recorded or encoded) to ``decoder``; never
    raises (see :class:`Decoded`)."""
    try:
        packets = decoder.feed(message)
    except Exception as exc:  # a bad message, or a decoder bug: never fatal
        return Decoded([], decoder.tracker.drain(), exc)
    return Decoded(packets, decoder.tracker.drain())


def log_anomalies(
    logger: logging.Logger, source: str, anomalies: Iterable[Anomaly]
) -> None:
    """Log each anomaly once, at its severity, prefixed with ``source``."""
    for anomaly in anomalies:
        level = _LEVELS.get(anomaly.severity, logging.DEBUG)
        logger.log(level, "%s: %s", source, anomaly.message)
