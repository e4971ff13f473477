"""``StreamEncoder``: typed packets out to ZeroMQ messages, in either framing.

Used by the simulator and by capture replay. ``StreamDecoder().feed`` of what
:meth:`StreamEncoder.encode` returns gives back an equal packet, with the
spectra bytes identical; re-encoding a real capture gives its bytes back, the
metadata pickles included (:mod:`._pickle_writer`).

>>> enc = StreamEncoder("multipart")
>>> for message in enc.encode(header) + enc.encode(frame) + enc.encode(end):
...     socket.send_multipart(message)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ._frame import Frame, Framing
from ._metadata import encode_metadata
from ._models import HeaderMessage, ImageMessage, SeriesEndMessage

__all__ = ["PICKLE_PROTOCOLS", "Message", "StreamEncoder", "make_frame"]

#: One ZeroMQ message: its frames in order.
Message = list[bytes | memoryview]
#: The metadata pickle protocol each firmware's stream uses (the captures).
PICKLE_PROTOCOLS: dict[Framing, int] = {"legacy": 3, "multipart": 4}


def make_frame(
    frame: int,
    spectra: npt.NDArray[Any],
    metadata: Mapping[str, npt.NDArray[Any]],
    exptime: float | None = None,
    **extra: Any,
) -> Frame:
    """Build a :class:`Frame` to encode (e.g. in a simulator)."""
    spectra = np.ascontiguousarray(spectra)
    info = ImageMessage(
        frame=frame,
        shape=tuple(int(n) for n in spectra.shape),
        exptime=exptime,
        type=spectra.dtype.name,
        compression="none",
        **extra,
    )
    return Frame(info=info, spectra=spectra, metadata=dict(metadata))


class StreamEncoder:
    """Encode packets as the detector sends them.

    ``framing="legacy"`` gives three single-part messages per frame (older
    firmware, compact JSON, metadata pickle protocol 3); ``"multipart"`` one
    three-part message (newer firmware, JSON with spaces, pickle protocol 4),
    as in the real captures. ``pickle_protocol`` (3 or 4) overrides the
    framing's; either way the pickle names ``numpy.core.multiarray`` as the
    device's does, so consumers on numpy 1.x and 2.x read it.
    """

    def __init__(
        self,
        framing: Framing = "multipart",
        *,
        pickle_protocol: int | None = None,
        compact_json: bool | None = None,
    ) -> None:
        if framing not in ("legacy", "multipart"):
            raise ValueError(
                f"framing must be 'legacy' or 'multipart', not {framing!r}"
            )
        self.framing: Framing = framing
        self.pickle_protocol = (
            PICKLE_PROTOCOLS[framing] if pickle_protocol is None else pickle_protocol
        )
        compact = framing == "legacy" if compact_json is None else compact_json
        self._separators = (",", ":") if compact else (", ", ": ")

    @property
    def pickle_protocol(self) -> int:
        """3 or 4, as on the device; checked when set, not at the first frame."""
        return self._pickle_protocol

    @pickle_protocol.setter
    def pickle_protocol(self, value: int) -> None:
        if value not in (3, 4) or isinstance(value, bool):
            raise ValueError(
                "pickle_protocol must be 3 or 4 (what the detector sends), "
                f"not {value!r}"
            )
        self._pickle_protocol = value

    def _json(self, obj: dict[str, object]) -> bytes:
        return json.dumps(obj, separators=self._separators).encode()

    def encode(self, packet: HeaderMessage | Frame | SeriesEndMessage) -> list[Message]:
        """The ZeroMQ messages carrying ``packet`` (each a list of frames)."""
        if isinstance(packet, Frame):
            return self.encode_frame(packet)
        return [[self._json(packet.to_wire())]]

    def encode_frame(self, frame: Frame) -> list[Message]:
        spectra = frame.spectra
        if not spectra.flags.c_contiguous:
            spectra = np.ascontiguousarray(spectra)
        if spectra.dtype.byteorder == ">":
            spectra = spectra.astype(spectra.dtype.newbyteorder("<"))
        data = memoryview(spectra.data).cast("B")
        meta = encode_metadata(list(frame.metadata.values()), self.pickle_protocol)
        head = self._json(frame.info.to_wire())
        if self.framing == "multipart":
            return [[head, data, meta]]
        return [[head], [data], [meta]]
