"""ophyd-xspress: Quantum Detectors Xspress3 / Xspress3-Mini detectors in Bluesky."""

from .protocol import (
    Frame,
    HeaderMessage,
    ProtocolError,
    SeriesEndMessage,
    StreamDecoder,
    StreamEncoder,
)

__all__ = [
    "Frame",
    "HeaderMessage",
    "ProtocolError",
    "SeriesEndMessage",
    "StreamDecoder",
    "StreamEncoder",
]
