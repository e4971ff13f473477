"""ZeroMQ transport: receive the detector stream and attribute frames to a run."""

from ._receiver import (
    FrameSink,
    RunTracker,
    StreamConnectError,
    StreamIncompleteError,
    StreamReceiver,
    StreamStalledError,
)

__all__ = [
    "FrameSink",
    "RunTracker",
    "StreamConnectError",
    "StreamIncompleteError",
    "StreamReceiver",
    "StreamStalledError",
]
