"""One message of the stream: receiving within the limits, decoding, reporting
(the steps the receiver, ``listen`` and ``inspect`` share)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from ophyd_xspress.protocol import (
    Frame,
    HeaderMessage,
    SeriesEndMessage,
    StrayFrame,
    StreamDecoder,
    StreamEncoder,
)
from ophyd_xspress.sim import SimulatedXspress3
from ophyd_xspress.transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RCVHWM,
    MAX_PARTS,
    decode_message,
    log_anomalies,
    open_stream_socket,
    receive_message,
)

TIMEOUT_MS = 10_000
ENCODER = StreamEncoder("multipart")
SIM = SimulatedXspress3(channels=2, pace=False)


def header() -> list[bytes]:
    return [bytes(p) for p in ENCODER.encode(SIM.header())[0]]


def frame(n: int) -> list[bytes]:
    (message,) = ENCODER.encode(SIM.expected_frame(1, n))
    return [bytes(p) for p in message]


@pytest.fixture
def pull(push_stream: Callable[[], Any]) -> Iterator[tuple[Any, zmq.Socket[bytes]]]:
    """A PUSH stream on loopback and a PULL socket with the stream's limits."""
    push = push_stream()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = open_stream_socket(ctx, "pull")
    sock.connect(push.endpoint)
    yield push, sock
    sock.close(linger=0)
    ctx.term()


def test_the_socket_has_the_streams_limits(pull: tuple[Any, Any]) -> None:
    _, sock = pull
    assert sock.getsockopt(zmq.MAXMSGSIZE) == DEFAULT_MAX_MESSAGE_BYTES
    assert sock.getsockopt(zmq.RCVHWM) == DEFAULT_RCVHWM
    assert sock.getsockopt(zmq.LINGER) == 0


def test_a_message_of_too_many_parts_is_refused_and_the_next_received(
    pull: tuple[Any, zmq.Socket[bytes]],
) -> None:
    push, sock = pull
    assert receive_message(sock) is None  # nothing waiting yet
    extra = [b"a" * 100, b"b" * 20_000]
    valid = frame(0)
    push.send([valid + extra, valid])
    assert sock.poll(TIMEOUT_MS)

    refused = receive_message(sock)
    assert refused is not None
    assert refused.refused
    assert refused.part_count == MAX_PARTS + 2
    assert refused.parts == []  # nothing of it is kept
    assert refused.nbytes == sum(len(p) for p in valid + extra)
    assert refused.refusal(7) == (
        f"message 7 had {MAX_PARTS + 2} parts (at most {MAX_PARTS} in this "
        "protocol): refused"
    )

    assert sock.poll(TIMEOUT_MS)
    received = receive_message(sock)
    assert received is not None
    assert not received.refused
    assert received.part_count == MAX_PARTS
    head, spectra, meta = received.parts
    # small parts as bytes (the decoder's fast paths), large ones zero-copy
    assert isinstance(head, bytes)
    assert isinstance(meta, bytes)
    assert isinstance(spectra, zmq.Frame)
    assert [p.bytes if isinstance(p, zmq.Frame) else p for p in received.parts] == (
        valid
    )
    (packet,) = decode_message(StreamDecoder(), received.parts).packets
    assert isinstance(packet, StrayFrame)  # no header was sent: outside a series
    assert packet.frame == SIM.expected_frame(1, 0)


def test_decoding_returns_packets_and_each_anomaly_once() -> None:
    decoder = StreamDecoder()
    stray = decode_message(decoder, frame(5))
    assert isinstance(stray.packets[0], StrayFrame)
    assert [a.kind for a in stray.anomalies] == ["frame_outside_series"]
    assert isinstance(decode_message(decoder, header()).packets[0], HeaderMessage)
    first = decode_message(decoder, frame(0))
    assert first.anomalies == []
    assert isinstance(first.packets[0], Frame)
    repeat = decode_message(decoder, frame(0))
    assert [a.kind for a in repeat.anomalies] == ["repeated"]
    assert repeat.error is None
    end = ENCODER.encode(SeriesEndMessage())[0]
    assert decode_message(decoder, end).anomalies == []  # told once, not again
    assert decoder.tracker.counts["repeated"] == 1


def test_a_bad_message_is_returned_as_its_error_not_raised() -> None:
    decoded = decode_message(StreamDecoder(), [b"{not json", b"x", b"y"])
    assert decoded.packets == []
    assert decoded.error is not None
    assert not decoded.internal
    assert "JSON" in str(decoded.error)


def test_a_decoder_bug_is_returned_as_internal() -> None:
    class Broken(StreamDecoder):
        def feed(self, message: Any) -> Any:
            raise RuntimeError("decoder bug")

    decoded = decode_message(Broken(), frame(0))
    assert decoded.internal
    assert isinstance(decoded.error, RuntimeError)


def test_anomalies_are_logged_at_their_severity(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="test.message")
    decoder = StreamDecoder()
    anomalies = [
        *decode_message(decoder, frame(3)).anomalies,  # warning: the first stray
        *decode_message(decoder, frame(4)).anomalies,  # debug: the streak goes on
    ]
    log_anomalies(logging.getLogger("test.message"), "tcp://here:1", anomalies)
    assert [(r.levelno, r.getMessage()[:31]) for r in caplog.records] == [
        (logging.WARNING, "tcp://here:1: frame 3 received "),
        (logging.DEBUG, "tcp://here:1: frame 4 received "),
    ]


def test_the_socket_queue_is_bounded_in_bytes_through_the_frame_size() -> None:
    """The high-water mark counts messages; from the frame size it is set so
    that the queue holds about 256 MiB of frames (the 4 x 4096 default: 4096
    messages; 64 channels: 256; huge frames: never under 16)."""
    from ophyd_xspress.transport import DEFAULT_RCVHWM, StreamReceiver, rcvhwm_for

    assert rcvhwm_for(4 * 4096 * 4) == DEFAULT_RCVHWM == 4096
    assert rcvhwm_for(64 * 4096 * 4) == 256
    assert rcvhwm_for(64 << 20) == 16
    rx = StreamReceiver("tcp://127.0.0.1:1", "pull", frame_bytes=64 * 4096 * 4)
    assert rx.queue_messages == 256
    assert StreamReceiver("tcp://127.0.0.1:1").queue_messages == DEFAULT_RCVHWM
