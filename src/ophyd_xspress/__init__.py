"""ophyd-xspress: Quantum Detectors Xspress3 / Xspress3-Mini detectors in Bluesky.

>>> from ophyd_xspress import XspressDetector, XspressSimulator

Names are imported lazily, so ``ophyd_xspress.protocol`` (the sans-IO core) can
be used without loading ZeroMQ, Tango or ophyd-async.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .device import DetectorFaultError, XspressDetector
    from .protocol import (
        Frame,
        HeaderMessage,
        ProtocolError,
        SeriesEndMessage,
        StreamDecoder,
        StreamEncoder,
    )
    from .sim import XspressSimulator
    from .transport import StreamIncompleteError, StreamStalledError

_LAZY = {
    "DetectorFaultError": ".device",
    "XspressDetector": ".device",
    "Frame": ".protocol",
    "HeaderMessage": ".protocol",
    "ProtocolError": ".protocol",
    "SeriesEndMessage": ".protocol",
    "StreamDecoder": ".protocol",
    "StreamEncoder": ".protocol",
    "XspressSimulator": ".sim",
    "StreamStalledError": ".transport",
    "StreamIncompleteError": ".transport",
}

__all__ = [
    "DetectorFaultError",
    "Frame",
    "HeaderMessage",
    "ProtocolError",
    "SeriesEndMessage",
    "StreamDecoder",
    "StreamEncoder",
    "StreamIncompleteError",
    "StreamStalledError",
    "XspressDetector",
    "XspressSimulator",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
