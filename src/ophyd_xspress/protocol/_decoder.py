"""``StreamDecoder``: ZeroMQ messages in, typed packets out (sans-IO).

>>> decoder = StreamDecoder()
>>> for message in messages:          # each a list of frames from recv_multipart
...     for packet in decoder.feed(message):
...         if isinstance(packet, Frame):
...             print(packet.frame, packet.spectra.sum(axis=1))

Both framings the detector uses are understood, even mixed in one stream:

* ``legacy``: JSON, spectra buffer and metadata pickle as three single-part
  messages. A lost part misaligns the sequence; the decoder notices (by length
  and by content), drops the incomplete frame, resynchronises on the next JSON
  part and counts the loss (``decoder.tracker.counts["resync"]``).
* ``multipart``: one three-part message per frame.

Series bookkeeping (missing / repeated / out-of-order frames, stray packets) is
kept by :attr:`StreamDecoder.tracker`. Bad input raises a :class:`ProtocolError`
subclass naming what was wrong; the decoder stays usable afterwards.

Fast paths: the detector sends the same image JSON every frame but for the
frame number, and the same metadata pickle but for the array data. The decoder
keeps the last validated image JSON as a template (:class:`ImageTemplate`, in
``_image.py`` with the JSON parsing): a JSON part that equals it byte for byte
except for the digits of ``"frame"`` gets a copy of the template's message with
the new number, without parsing, validation or :func:`validate_image`. The
metadata pickle goes through :class:`MetadataDecoder`'s template, and the
naming and shape checks of its arrays run once per template, header and channel
count. A frame decoded through a template carries a :class:`FrameMetadata`
(arrays built on first read). Anything that is not an exact match takes the
full path.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, auto
from typing import Protocol, TypeAlias, cast

import numpy as np

from ._errors import (
    BufferLengthError,
    MissingPartError,
    ProtocolError,
)
from ._frame import Frame, Framing, StrayFrame
from ._image import JSON_WHITESPACE as _WHITESPACE
from ._image import (
    MAX_JSON_BYTES,
    ImageLayout,
    ImageTemplate,
    parse_json_part,
    validate_image,
)
from ._metadata import (
    MetadataDecoder,
)
from ._models import (
    DEFAULT_SCALER_NAMES,
    HeaderMessage,
    ImageMessage,
    SeriesEndMessage,
)
from ._naming import MetadataReader
from ._series import SeriesTracker

__all__ = ["Packet", "StreamDecoder"]

Packet: TypeAlias = HeaderMessage | Frame | SeriesEndMessage | StrayFrame


class _HasBuffer(Protocol):
    @property
    def buffer(self) -> memoryview: ...


Part: TypeAlias = bytes | bytearray | memoryview | _HasBuffer


def _view(part: Part) -> memoryview:
    """A flat byte view of one ZeroMQ frame (bytes, memoryview or zmq.Frame)."""
    kind = type(part)
    if kind is memoryview or kind is bytearray or kind is bytes:
        view = memoryview(cast(bytes, part))
    else:
        # zmq.Frame first (what recv_multipart(copy=False) gives): its
        # ``buffer`` is already a memoryview.
        try:
            buffer = part.buffer  # type: ignore[union-attr]
        except AttributeError:
            buffer = None
        if buffer is None:
            if not isinstance(part, bytes | bytearray | memoryview):
                raise ProtocolError(
                    f"message part of type {kind.__name__} is not bytes-like"
                )
            buffer = part
        view = buffer if type(buffer) is memoryview else memoryview(buffer)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _looks_like_json(view: bytes | memoryview) -> bool:
    """A JSON object (``{...``), or a JSON array (``[...]``, both brackets).

    JSON parts of this protocol are objects; an array is a (bad) JSON part too,
    but it needs its closing bracket so that a binary part that merely starts
    with ``[`` (0x5B) is not mistaken for one.
    """
    n = len(view)
    if n < 2 or n > MAX_JSON_BYTES:
        return False
    i = 0
    while i < n and view[i] in _WHITESPACE:
        i += 1
    if i >= n:
        return False
    if view[i] == 0x7B:  # "{"
        return True
    if view[i] != 0x5B:  # "["
        return False
    j = n - 1
    while j > i and view[j] in _WHITESPACE:
        j -= 1
    return j > i and view[j] == 0x5D  # "]"


def _ends_like_json(view: bytes | memoryview) -> bool:
    """Ends with ``}`` or ``]`` (trailing whitespace allowed)."""
    j = len(view) - 1
    while j >= 0 and view[j] in _WHITESPACE:
        j -= 1
    return j >= 0 and view[j] in (0x7D, 0x5D)


def _looks_like_pickle(view: bytes | memoryview) -> bool:
    """A pickle of protocol 2-5: ``0x80 <proto> ... .`` (STOP)."""
    return len(view) >= 3 and view[0] == 0x80 and 2 <= view[1] <= 5 and view[-1] == 0x2E


class _State(Enum):
    IDLE = auto()  # expecting a JSON part
    DATA = auto()  # legacy: expecting the spectra buffer
    META = auto()  # legacy: expecting the metadata pickle
    SKIP_META = auto()  # legacy: data part was bad, swallow its pickle


class StreamDecoder:
    """Assemble the detector's ZeroMQ messages into typed packets.

    ``feed(message)`` takes one received message as a sequence of frames and
    returns the packets completed by it: :class:`HeaderMessage`, :class:`Frame`
    and :class:`SeriesEndMessage`. A message that cannot be decoded raises a
    :class:`ProtocolError`; the decoder then carries on with the next message.
    """

    def __init__(self, tracker: SeriesTracker | None = None) -> None:
        self.tracker = tracker or SeriesTracker()
        self.header: HeaderMessage | None = None
        self.framing: Framing | None = None
        self._state = _State.IDLE
        self._image: ImageMessage | None = None
        self._image_layout: ImageLayout | None = None
        self._data: bytes | memoryview | None = None
        self.frames_decoded = 0
        #: Names and checks each frame's metadata arrays.
        self.metadata = MetadataReader()
        #: The last validated image JSON part, for the fast path.
        self._image_template: ImageTemplate | None = None
        #: Image JSON parts recognised from the template (no json.loads).
        self.json_fast_hits = 0

    # -- public --------------------------------------------------------------
    def feed(self, message: Sequence[Part]) -> list[Packet]:
        """Decode one ZeroMQ message (a sequence of frames) into packets."""
        # Parts stay ``bytes`` when they are (no memoryview needed); anything
        # else becomes a flat byte view.
        if type(message) is list:
            if len(message) == 1:  # legacy framing: skip the list
                part = message[0]
                return self._feed_single(part if type(part) is bytes else _view(part))
            parts: list[bytes | memoryview] = [
                p if type(p) is bytes else _view(p) for p in message
            ]
        elif isinstance(message, bytes | bytearray | memoryview):
            part = cast(Part, message)
            parts = [part if type(part) is bytes else _view(part)]
        else:
            parts = [p if type(p) is bytes else _view(p) for p in message]
        if not parts:
            raise MissingPartError("empty ZeroMQ message")
        if len(parts) == 1:
            return self._feed_single(parts[0])
        return self._feed_multipart(parts)

    def finish(self) -> None:
        """No more messages will come: report an incomplete frame and gaps."""
        if self._state is not _State.IDLE and self._image is not None:
            self._resync(f"stream ended inside frame {self._image.frame}")
        self.tracker.finish()

    @property
    def metadata_decoder(self) -> MetadataDecoder:
        """The metadata pickle decoder (its ``fast_hits`` / ``full_decodes``)."""
        return self.metadata.decoder

    @property
    def scaler_names(self) -> tuple[str, ...]:
        return self.header.scaler_names if self.header else DEFAULT_SCALER_NAMES

    # -- framing -------------------------------------------------------------
    def _feed_multipart(self, parts: list[bytes | memoryview]) -> list[Packet]:
        if self._state is not _State.IDLE:
            what = self._image.frame if self._image else "?"
            self._resync(f"multipart message interrupted legacy frame {what}")
        template = self._image_template
        if template is not None:
            info = template.match(parts[0])
            if info is not None:
                self.json_fast_hits += 1
                if len(parts) != 3:
                    raise MissingPartError(
                        f"frame {info.frame}: multipart message has {len(parts)} "
                        "parts, expected 3 (JSON, spectra, metadata)"
                    )
                return [
                    self._assemble(
                        info, template.layout, parts[1], parts[2], "multipart"
                    )
                ]
        info = parse_json_part(parts[0])
        if not isinstance(info, ImageMessage):
            msg = (
                f"{info.htype} packet sent with {len(parts) - 1} extra part(s); "
                f"expected a single-part message: the whole {len(parts)}-part "
                f"message was ignored (the {info.htype} was not applied)"
            )
            self.tracker.report("malformed_message", msg)
            raise ProtocolError(msg)
        if len(parts) != 3:
            raise MissingPartError(
                f"frame {info.frame}: multipart message has {len(parts)} parts, "
                "expected 3 (JSON, spectra, metadata)"
            )
        layout = validate_image(info)
        self._learn_image(parts[0], info, layout)
        return [self._assemble(info, layout, parts[1], parts[2], "multipart")]

    def _learn_image(
        self, part: bytes | memoryview, info: ImageMessage, layout: ImageLayout
    ) -> None:
        """Make a validated image JSON part the template of the fast path."""
        self._image_template = ImageTemplate.learn(bytes(part), info, layout)

    def _feed_single(self, part: bytes | memoryview) -> list[Packet]:
        state = self._state
        image, layout = self._image, self._image_layout
        if state is _State.DATA and image is not None and layout is not None:
            nbytes = layout[2]
            if len(part) == nbytes:
                self._data = part
                self._state = _State.META
                return []
            # A part of the wrong length is the next JSON or this frame's
            # metadata pickle only if it also ends like one: a damaged spectra
            # buffer can start with "{" or 0x80 (bin 0 = 123 or 128 counts),
            # but ending in "}" or "." needs a last bin >= 0x2E000000 counts.
            if _looks_like_json(part) and _ends_like_json(part):
                self._resync(
                    f"frame {image.frame}: spectra and metadata parts lost "
                    "(next JSON arrived)"
                )
                return self._handle_json(part)
            if len(part) < nbytes and _looks_like_pickle(part):
                self._resync(f"frame {image.frame}: spectra part lost")
                return []
            self._state = _State.SKIP_META
            msg = (
                f"frame {image.frame}: spectra buffer is {len(part)} bytes, expected "
                f"{nbytes} (shape {list(image.shape)} x {image.type})"
            )
            self.tracker.report(
                "bad_frame",
                f"frame {image.frame} dropped: {msg}",
                frames=(image.frame,),
            )
            raise BufferLengthError(msg)
        data = self._data
        if (
            state is _State.META
            and image is not None
            and layout is not None
            and data is not None
        ):
            # (a pickle starts with 0x80: never JSON, no need to scan it)
            if not (len(part) and part[0] == 0x80) and _looks_like_json(part):
                self._resync(
                    f"frame {image.frame}: metadata part lost (next JSON arrived)"
                )
                return self._handle_json(part)
            self._clear()
            return [self._assemble(image, layout, data, part, "legacy")]
        if state is _State.SKIP_META:
            self._clear()
            if _looks_like_json(part):
                return self._handle_json(part)
            return []
        # IDLE: the template first (a part that matches it is JSON)
        template = self._image_template
        if template is not None:
            info = template.match(part)
            if info is not None:
                return self._start_image(info, template.layout)
        if _looks_like_json(part):
            return self._handle_json(part, template_tried=True)
        self._resync(
            f"stray {len(part)}-byte binary part outside any frame (lost JSON part?)"
        )
        return []

    def _start_image(self, info: ImageMessage, layout: ImageLayout) -> list[Packet]:
        """Legacy: a JSON part matched the image template; await the data."""
        self.json_fast_hits += 1
        self._image_layout = layout
        self._image = info
        self._state = _State.DATA
        return []

    def _handle_json(
        self, part: bytes | memoryview, template_tried: bool = False
    ) -> list[Packet]:
        template = self._image_template
        if template is not None and not template_tried:
            info = template.match(part)
            if info is not None:
                return self._start_image(info, template.layout)
        msg = parse_json_part(part)
        if isinstance(msg, ImageMessage):
            self._image_layout = layout = validate_image(msg)
            self._image = msg
            self._state = _State.DATA
            self._learn_image(part, msg, layout)
            return []
        if isinstance(msg, HeaderMessage):
            self.header = msg
            self.tracker.on_header(msg.filename)
            return [msg]
        self.tracker.on_series_end()
        return [msg]

    def _clear(self) -> None:
        self._state = _State.IDLE
        self._image = None
        self._image_layout = None
        self._data = None

    def _resync(self, why: str) -> None:
        self._clear()
        self.tracker.report("resync", f"legacy framing resynchronised: {why}")

    # -- assembly ------------------------------------------------------------
    def _assemble(
        self,
        info: ImageMessage,
        layout: ImageLayout,
        data: bytes | memoryview,
        meta: bytes | memoryview,
        framing: Framing,
    ) -> Frame | StrayFrame:
        dtype, shape, nbytes = layout
        try:
            if len(data) != nbytes:
                raise BufferLengthError(
                    f"frame {info.frame}: spectra buffer is {len(data)} bytes, "
                    f"expected {nbytes} (shape {list(shape)} x {info.type})"
                )
            # Read-only even when the buffer is writable (zmq.Frame, bytearray),
            # for good: a bytes part is immutable, any other is viewed through
            # a read-only memoryview (the array's base, so that the flag cannot
            # be set back; np.ndarray(buffer=...) would skip to the writable
            # object behind it).
            if isinstance(data, memoryview):
                spectra = np.frombuffer(data.toreadonly(), dtype).reshape(shape)
            else:
                spectra = np.ndarray(shape, dtype, data)
            metadata = self.metadata.read(info, meta, shape[0], self.header)
        except ProtocolError as exc:
            self.tracker.report(
                "bad_frame", f"frame {info.frame} dropped: {exc}", frames=(info.frame,)
            )
            raise
        self.framing = framing
        arrival = self.tracker.track(info.frame)
        frame = Frame(info, spectra, metadata, framing, arrival)
        current = self.tracker.current
        if arrival.headless and current is not None:
            return StrayFrame(frame, current.where)
        self.frames_decoded += 1
        return frame
