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
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from enum import Enum, auto
from typing import Any, Final, Protocol, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import pydantic

from ._errors import (
    BufferLengthError,
    InvalidJSONError,
    MissingPartError,
    OutOfSeriesError,
    ProtocolError,
    ShapeTooLargeError,
    UnknownHtypeError,
    UnsupportedEncodingError,
)
from ._frame import Frame, Framing
from ._metadata import MetadataDecoder
from ._models import (
    DEFAULT_SCALER_NAMES,
    HeaderMessage,
    ImageMessage,
    JsonMessage,
    SeriesEndMessage,
)
from ._series import SeriesTracker

__all__ = [
    "MAX_BINS",
    "MAX_CHANNELS",
    "MAX_FRAME_BYTES",
    "Packet",
    "StreamDecoder",
    "parse_json_part",
    "validate_image",
]

log = logging.getLogger("ophyd_xspress.protocol")

#: Upper bounds on what a header may declare (Xspress4 has up to 36 channels).
MAX_CHANNELS: Final = 256
MAX_BINS: Final = 65_536
#: Largest spectra buffer accepted: 64 MiB (36 channels x 4096 bins x uint32
#: is 590 kB; 256 channels x 65536 bins x uint64 would be 128 MiB).
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
MAX_JSON_BYTES: Final = 1 << 20

#: Spectra dtypes the detector may declare in ``type``.
SUPPORTED_TYPES: Final = frozenset(
    {
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float32",
        "float64",
    }
)

Packet: TypeAlias = HeaderMessage | Frame | SeriesEndMessage

# The discriminated union: validation errors name only the model ``htype`` picks.
_JSON_ADAPTER: pydantic.TypeAdapter[HeaderMessage | ImageMessage | SeriesEndMessage] = (
    pydantic.TypeAdapter(JsonMessage)
)


class _HasBuffer(Protocol):
    @property
    def buffer(self) -> memoryview: ...


Part: TypeAlias = bytes | bytearray | memoryview | _HasBuffer


def _view(part: Part) -> memoryview:
    """A flat byte view of one ZeroMQ frame (bytes, memoryview or zmq.Frame)."""
    if isinstance(part, bytes | bytearray | memoryview):
        view = memoryview(part)
    else:
        buffer = getattr(part, "buffer", None)
        if buffer is None:
            raise ProtocolError(
                f"message part of type {type(part).__name__} is not bytes-like"
            )
        view = memoryview(buffer)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


_WHITESPACE: Final = frozenset(b" \t\r\n")


def _looks_like_json(view: memoryview) -> bool:
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


def _shown(value: object, limit: int = 40) -> str:
    """A JSON value for a message: strings shortened, small scalars as written,
    anything else by type and length (never the repr of a whole container)."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() < 128 else "a huge integer"
    if isinstance(value, list | dict):
        return f"a JSON {type(value).__name__} of {len(value)} items"
    return type(value).__name__


def parse_json_part(
    view: memoryview | bytes,
) -> HeaderMessage | ImageMessage | SeriesEndMessage:
    """Parse one JSON part into its typed message, or raise a ProtocolError."""
    size = len(view)
    if size > MAX_JSON_BYTES:
        raise InvalidJSONError(f"JSON part of {size} bytes exceeds {MAX_JSON_BYTES}")
    try:
        obj = json.loads(bytes(view))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        preview = bytes(view[:60])
        raise InvalidJSONError(f"invalid JSON part ({exc}): {preview!r}") from exc
    if not isinstance(obj, dict):
        raise InvalidJSONError(
            f"JSON part is a {type(obj).__name__}, expected an object with 'htype'"
        )
    htype = obj.get("htype")
    if htype not in ("header", "image", "series_end"):
        raise UnknownHtypeError(
            f"unknown htype {_shown(htype)} (expected header, image or series_end)"
        )
    try:
        return _JSON_ADAPTER.validate_python(obj)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}"
            for e in exc.errors()
        )
        raise InvalidJSONError(f"bad {htype} packet: {problems}") from exc


def validate_image(info: ImageMessage) -> tuple[np.dtype[Any], tuple[int, int], int]:
    """Check an image packet's dtype, compression and shape before any use.

    Returns ``(dtype, (channels, bins), nbytes)``.
    """
    if info.compression != "none":
        raise UnsupportedEncodingError(
            f"frame {info.frame}: compression {_shown(info.compression)} is not "
            "supported (expected 'none')"
        )
    if info.type not in SUPPORTED_TYPES:
        raise UnsupportedEncodingError(
            f"frame {info.frame}: spectra type {_shown(info.type)} is not supported "
            f"(expected one of {', '.join(sorted(SUPPORTED_TYPES))})"
        )
    shape = info.shape
    if len(shape) != 2:
        raise ShapeTooLargeError(
            f"frame {info.frame}: shape {list(shape)} is not [channels, bins]"
        )
    channels, bins = shape
    if not (1 <= channels <= MAX_CHANNELS and 1 <= bins <= MAX_BINS):
        raise ShapeTooLargeError(
            f"frame {info.frame}: shape {list(shape)} outside 1..{MAX_CHANNELS} "
            f"channels x 1..{MAX_BINS} bins; refusing it"
        )
    dtype = np.dtype(info.type).newbyteorder("<")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_FRAME_BYTES:
        raise ShapeTooLargeError(
            f"frame {info.frame}: shape {list(shape)} of {info.type} is {nbytes} "
            f"bytes, over the {MAX_FRAME_BYTES} limit"
        )
    return dtype, (channels, bins), nbytes


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
        self._image_layout: tuple[np.dtype[Any], tuple[int, int], int] | None = None
        self._data: memoryview | None = None
        self.frames_decoded = 0
        #: Decodes the metadata pickles (fast once their layout repeats).
        self.metadata_decoder = MetadataDecoder()

    # -- public --------------------------------------------------------------
    def feed(self, message: Sequence[Part]) -> list[Packet]:
        """Decode one ZeroMQ message (a sequence of frames) into packets."""
        if isinstance(message, bytes | bytearray | memoryview):
            parts = [_view(cast(Part, message))]
        else:
            parts = [_view(p) for p in message]
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
    def scaler_names(self) -> tuple[str, ...]:
        return self.header.scaler_names if self.header else DEFAULT_SCALER_NAMES

    # -- framing -------------------------------------------------------------
    def _feed_multipart(self, parts: list[memoryview]) -> list[Packet]:
        out: list[Packet] = []
        if self._state is not _State.IDLE:
            what = self._image.frame if self._image else "?"
            self._resync(f"multipart message interrupted legacy frame {what}")
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
        out.append(self._assemble(info, layout, parts[1], parts[2], "multipart"))
        return out

    def _feed_single(self, part: memoryview) -> list[Packet]:
        state = self._state
        image, layout = self._image, self._image_layout
        if state is _State.DATA and image is not None and layout is not None:
            nbytes = layout[2]
            if len(part) == nbytes:
                self._data = part
                self._state = _State.META
                return []
            if _looks_like_json(part):
                self._resync(
                    f"frame {image.frame}: spectra and metadata parts lost "
                    "(next JSON arrived)"
                )
                return self._handle_json(part)
            if len(part) and part[0] == 0x80 and len(part) < nbytes:
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
            if _looks_like_json(part):
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
        # IDLE
        if _looks_like_json(part):
            return self._handle_json(part)
        self._resync(
            f"stray {len(part)}-byte binary part outside any frame (lost JSON part?)"
        )
        return []

    def _handle_json(self, part: memoryview) -> list[Packet]:
        msg = parse_json_part(part)
        if isinstance(msg, ImageMessage):
            self._image_layout = validate_image(msg)
            self._image = msg
            self._state = _State.DATA
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
        layout: tuple[np.dtype[Any], tuple[int, int], int],
        data: memoryview,
        meta: memoryview,
        framing: Framing,
    ) -> Frame:
        dtype, shape, nbytes = layout
        try:
            if len(data) != nbytes:
                raise BufferLengthError(
                    f"frame {info.frame}: spectra buffer is {len(data)} bytes, "
                    f"expected {nbytes} (shape {list(shape)} x {info.type})"
                )
            spectra = np.frombuffer(data, dtype=dtype).reshape(shape)
            # Read-only even when the buffer is writable (zmq.Frame, bytearray).
            spectra.flags.writeable = False
            arrays = self.metadata_decoder.decode(meta)
            metadata = self._name_metadata(info, arrays, shape[0])
        except ProtocolError as exc:
            self.tracker.report(
                "bad_frame", f"frame {info.frame} dropped: {exc}", frames=(info.frame,)
            )
            raise
        frame = Frame(info=info, spectra=spectra, metadata=metadata, framing=framing)
        self.framing = framing
        series = self.tracker.check_frame(info.frame)
        if series is None:
            exc = OutOfSeriesError(
                f"frame {info.frame} arrived outside any series (no header since "
                "the last series_end): not attributed"
            )
            exc.frame = frame  # type: ignore[attr-defined]
            raise exc
        self.frames_decoded += 1
        return frame

    def _name_metadata(
        self, info: ImageMessage, arrays: list[npt.NDArray[Any]], channels: int
    ) -> dict[str, npt.NDArray[Any]]:
        names = list(self.scaler_names)
        if len(arrays) < len(DEFAULT_SCALER_NAMES):
            raise ProtocolError(
                f"frame {info.frame}: metadata has {len(arrays)} arrays, expected "
                f"at least {len(DEFAULT_SCALER_NAMES)} ({', '.join(names)})"
            )
        if len(names) < len(arrays):
            extra_start = len(names)
            for i in range(extra_start, len(arrays)):
                if (
                    "window_counts" not in names
                    and arrays[i].ndim == 2
                    and arrays[i].shape[1] == channels
                ):
                    names.append("window_counts")
                else:
                    names.append(f"extra_{i}")
        metadata: dict[str, npt.NDArray[Any]] = {}
        for name, arr in zip(names, arrays, strict=False):
            if name in DEFAULT_SCALER_NAMES and arr.shape != (channels,):
                raise ProtocolError(
                    f"frame {info.frame}: scaler {name} has shape {arr.shape}, "
                    f"expected ({channels},)"
                )
            if name == "window_counts" and (arr.ndim != 2 or arr.shape[1] != channels):
                raise ProtocolError(
                    f"frame {info.frame}: window_counts has shape {arr.shape}, "
                    f"expected (windows, {channels})"
                )
            metadata[name] = arr
        missing = [n for n in DEFAULT_SCALER_NAMES if n not in metadata]
        if missing:
            raise ProtocolError(
                f"frame {info.frame}: metadata lacks {', '.join(missing)}"
            )
        return metadata
