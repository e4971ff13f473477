"""Replay a recorded stream (``.cbors``) on a ZeroMQ socket, framing preserved.

Messages are sent exactly as recorded, one ZeroMQ message per CBOR item.
``rate`` paces *frames* (each image JSON starts a frame), so a legacy capture
and a multipart capture replay at the same frame rate.

With ``socket="push"`` a PUSH socket blocks until a consumer connects, so with
``wait_for_peer`` nothing is lost. With ``socket="pub"`` and ``wait_for_peer``
an XPUB socket waits for the first subscription before sending.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import zmq

from ._capture import read_capture

__all__ = ["PeerTimeoutError", "replay_capture"]

log = logging.getLogger("ophyd_xspress.replay")


class PeerTimeoutError(TimeoutError):
    """No consumer connected within the time allowed."""


def _is_image_start(message: Sequence[bytes]) -> bool:
    head = message[0][:64] if message else b""
    return b'"htype"' in head and b'"image"' in head


def replay_capture(
    capture: str | Path | Sequence[list[bytes]],
    endpoint: str = "tcp://127.0.0.1:9999",
    *,
    socket: Literal["pub", "push"] = "pub",
    rate: float | None = None,
    loop: int = 1,
    wait_for_peer: bool = False,
    peer_timeout: float = 60.0,
    linger: float = 10.0,
    on_bound: Callable[[str], None] | None = None,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
) -> int:
    """Send a capture ``loop`` times; returns the number of messages sent.

    ``on_bound(endpoint)`` is called once the socket is bound (with the real
    port when ``endpoint`` ends in ``:0``).
    """
    messages = (
        list(read_capture(capture))
        if isinstance(capture, str | Path)
        else [list(m) for m in capture]
    )
    ctx = context or zmq.Context.instance()
    kind = zmq.PUSH if socket == "push" else (zmq.XPUB if wait_for_peer else zmq.PUB)
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, 0 if socket == "push" else 50_000)
    sock.setsockopt(zmq.LINGER, int(linger * 1000))
    try:
        if endpoint.rsplit(":", 1)[-1] in ("0", "*"):
            host = endpoint.rsplit(":", 1)[0]
            bound = f"{host}:{sock.bind_to_random_port(host)}"
        else:
            sock.bind(endpoint)
            bound = endpoint
        if on_bound is not None:
            on_bound(bound)
        log.info("replaying %d messages on %s (%s)", len(messages), bound, socket)
        if wait_for_peer:
            _wait_for_peer(sock, socket, peer_timeout, bound)
        period = 1.0 / rate if rate else 0.0
        sent = 0
        next_t = time.monotonic()
        for _ in range(max(1, loop)):
            for message in messages:
                if period and _is_image_start(message):
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_t = max(next_t + period, time.monotonic() - period)
                if socket == "push":
                    _send_blocking(sock, message, peer_timeout, bound)
                else:
                    sock.send_multipart(message)
                sent += 1
        return sent
    finally:
        sock.close()


def _wait_for_peer(
    sock: zmq.Socket[bytes], socket: str, timeout: float, endpoint: str
) -> None:
    if socket == "push":
        # PUSH blocks in send until a peer is connected: poll for POLLOUT.
        if not sock.poll(int(timeout * 1000), zmq.POLLOUT):
            raise PeerTimeoutError(
                f"no consumer connected to {endpoint} in {timeout} s"
            )
        return
    if not sock.poll(int(timeout * 1000), zmq.POLLIN):
        raise PeerTimeoutError(f"no subscriber connected to {endpoint} in {timeout} s")
    sock.recv()  # the subscription message


def _send_blocking(
    sock: zmq.Socket[bytes], message: list[bytes], timeout: float, endpoint: str
) -> None:
    if not sock.poll(int(timeout * 1000), zmq.POLLOUT):
        raise PeerTimeoutError(
            f"consumer on {endpoint} stopped receiving for {timeout} s"
        )
    sock.send_multipart(message)
