"""ZeroMQ transport: receive the detector stream and hand each run its frames.

``_message`` (one message: a socket with the stream's limits, receiving within
them, decoding; shared by the receiver and the tools), ``_receiver`` (socket,
thread, byte-bounded backlog), ``_run`` (one run's progress, completion and
errors, pushed by events), ``_sink`` (the contract a sink of frames
implements).
"""

from ._errors import (
    StreamIncompleteError,
    StreamRestartedError,
    StreamShapeError,
    StreamStalledError,
)
from ._message import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RCVHWM,
    MAX_PARTS,
    Decoded,
    Part,
    Received,
    decode_message,
    log_anomalies,
    open_stream_socket,
    rcvhwm_for,
    receive_message,
)
from ._receiver import (
    DEFAULT_BACKLOG_BYTES,
    DEFAULT_BACKLOG_FRAMES,
    StreamConnectError,
    StreamReceiver,
)
from ._run import Run
from ._sink import DurableRows, FrameRefusedError, FrameShapeError, FrameSink

__all__ = [
    "DEFAULT_BACKLOG_BYTES",
    "DEFAULT_BACKLOG_FRAMES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_RCVHWM",
    "MAX_PARTS",
    "Decoded",
    "DurableRows",
    "FrameRefusedError",
    "FrameShapeError",
    "FrameSink",
    "Part",
    "Received",
    "Run",
    "StreamConnectError",
    "StreamIncompleteError",
    "StreamReceiver",
    "StreamRestartedError",
    "StreamShapeError",
    "StreamStalledError",
    "decode_message",
    "log_anomalies",
    "open_stream_socket",
    "rcvhwm_for",
    "receive_message",
]
