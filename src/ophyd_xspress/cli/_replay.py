"""``ophyd-xspress replay CAPTURE.cbors --endpoint tcp://127.0.0.1:PORT``."""

from __future__ import annotations

import argparse
import sys

from ..tools import CaptureError, PeerTimeoutError, replay_capture

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("capture", help="a .cbors stream capture")
    parser.add_argument(
        "--endpoint",
        default="tcp://127.0.0.1:9999",
        help="endpoint to bind (default %(default)s; port 0 picks a free port)",
    )
    parser.add_argument("--socket", choices=("pub", "push"), default="pub")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="frames per second (default: as fast as possible)",
    )
    parser.add_argument("--loop", type=int, default=1, help="send the capture N times")
    parser.add_argument(
        "--wait-for-peer",
        action="store_true",
        help="wait for a consumer (PUSH) or subscriber (PUB) before sending",
    )
    parser.add_argument(
        "--peer-timeout", type=float, default=60.0, help="seconds to wait for a peer"
    )


def run(args: argparse.Namespace) -> int:
    def bound(endpoint: str) -> None:
        print(f"replaying {args.capture} on {endpoint} ({args.socket})", flush=True)

    try:
        sent = replay_capture(
            args.capture,
            args.endpoint,
            socket=args.socket,
            rate=args.rate,
            loop=args.loop,
            wait_for_peer=args.wait_for_peer,
            peer_timeout=args.peer_timeout,
            on_bound=bound,
        )
    except (CaptureError, PeerTimeoutError, OSError) as exc:
        print(f"ophyd-xspress replay: error: {exc}", file=sys.stderr)
        return 2
    print(f"sent {sent} messages", flush=True)
    return 0
