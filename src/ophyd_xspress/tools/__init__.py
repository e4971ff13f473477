"""Tools around a recorded or live stream: capture files, replay, inspection,
live monitoring.

``_capture`` (read and write ``.cbors`` captures), ``_replay`` (send a capture
on a ZeroMQ socket, framing preserved), ``_inspection`` (summarise recorded
messages: ``ophyd-xspress inspect``), ``_monitor`` (live figures of a stream:
``ophyd-xspress listen``). The inspection and the monitor take each message
through the receiver's own steps
(:func:`~ophyd_xspress.transport.receive_message`,
:func:`~ophyd_xspress.transport.decode_message`), so they see a stream exactly
as a detector run would.
"""

from ._capture import CaptureError, read_capture, write_capture
from ._inspection import inspect_messages
from ._monitor import StreamMonitor
from ._replay import PeerTimeoutError, replay_capture

__all__ = [
    "CaptureError",
    "PeerTimeoutError",
    "StreamMonitor",
    "inspect_messages",
    "read_capture",
    "replay_capture",
    "write_capture",
]
