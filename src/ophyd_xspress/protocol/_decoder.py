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
keeps the last validated image JSON as a template (:class:`_ImageTemplate`): a
JSON part that equals it byte for byte except for the digits of ``"frame"``
gets the template's message with the new number, without json.loads, pydantic
or :func:`validate_image`. The metadata pickle goes through
:class:`MetadataDecoder`'s template, and the naming and shape checks of its
arrays run once per template, header and channel count. A frame decoded
through a template carries a :class:`FrameMetadata` (arrays built on first
read). Anything that is not an exact match takes the full path.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping, Sequence
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
from ._metadata import (
    FrameMetadata,
    MetadataDecoder,
    MetadataLayout,
    _materialise,
    _Template,
)
from ._models import (
    DEFAULT_SCALER_NAMES,
    MAX_FRAME_NUMBER,
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


_WHITESPACE: Final = frozenset(b" \t\r\n")


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


ImageLayout: TypeAlias = tuple[np.dtype[Any], tuple[int, int], int]

#: Digits of a frame number below MAX_FRAME_NUMBER (2**63 has 19).
_MAX_FRAME_DIGITS: Final = len(str(MAX_FRAME_NUMBER - 1))


def _slot_setter(name: str) -> Any:
    """The ``__set__`` of ImageMessage's ``name`` slot: what
    ``object.__setattr__(message, name, value)`` calls, minus the look-up."""
    for klass in ImageMessage.__mro__:
        if name in vars(klass):
            return vars(klass)[name].__set__
    raise AttributeError(name)  # pragma: no cover - pydantic v2 has all four


_new_object = object.__new__
_set_dict = _slot_setter("__dict__")
_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


class _ImageTemplate:
    """A validated image JSON part, to recognise the next ones by their bytes.

    A part ``prefix + digits + suffix`` (``digits`` 1 to 19 ASCII digits, no
    leading zero) is, for json.loads and for the model, the template's message
    with ``frame=int(digits)``: the template holds ``"frame"`` exactly once,
    has no backslash (no escaped key can also spell ``frame``), no NUL byte and
    no non-ASCII byte (json.loads reads it as UTF-8), and its frame value is an
    integer literal ending at whitespace, ``,`` or ``}``. So the one JSON token
    that differs is the number that is the top-level ``frame``; the only check
    left is the model's bound on it.
    """

    __slots__ = (
        "extra",
        "fields",
        "fields_set",
        "info",
        "layout",
        "max_len",
        "min_len",
        "part",
        "prefix",
        "prefix_len",
        "suffix",
        "suffix_len",
    )

    def __init__(
        self,
        part: bytes,
        prefix_len: int,
        suffix_len: int,
        info: ImageMessage,
        layout: ImageLayout,
    ) -> None:
        self.part = part
        self.prefix = part[:prefix_len]
        self.suffix = part[len(part) - suffix_len :]
        self.prefix_len = prefix_len
        self.suffix_len = suffix_len
        self.min_len = prefix_len + suffix_len + 1
        self.max_len = min(prefix_len + suffix_len + _MAX_FRAME_DIGITS, MAX_JSON_BYTES)
        self.info = info
        self.layout = layout
        self.fields: dict[str, Any] = dict(info.__dict__)
        self.fields_set: set[str] = set(info.__pydantic_fields_set__)
        self.extra: dict[str, Any] = dict(info.__pydantic_extra__ or {})

    @classmethod
    def learn(
        cls, part: bytes, info: ImageMessage, layout: ImageLayout
    ) -> _ImageTemplate | None:
        """The template of ``part`` (parsed as ``info``), or None if the fast
        path could not be exact for it."""
        if (
            type(info) is not ImageMessage
            or info.__pydantic_private__ is not None
            or type(info.__pydantic_extra__) is not dict
            or not part.isascii()
            or b"\\" in part
            or b"\x00" in part
        ):
            return None
        start = part.find(b'"frame"')
        if start < 0 or part.find(b'"frame"', start + 1) >= 0:
            return None
        n = len(part)
        i = start + 7
        while i < n and part[i] in _WHITESPACE:
            i += 1
        if i >= n or part[i] != 0x3A:  # ":"
            return None
        i += 1
        while i < n and part[i] in _WHITESPACE:
            i += 1
        j = i
        while j < n and 0x30 <= part[j] <= 0x39:
            j += 1
        if part[i:j] != str(info.frame).encode():
            return None
        k = j
        while k < n and part[k] in _WHITESPACE:
            k += 1
        if k >= n or part[k] not in (0x2C, 0x7D):  # "," or "}"
            return None
        return cls(part, i, n - j, info, layout)

    def match(self, part: bytes | memoryview) -> ImageMessage | None:
        """The message of ``part`` if it is this template with another frame
        number within the model's bounds; None for anything else."""
        n = len(part)
        if not self.min_len <= n <= self.max_len:
            return None
        if type(part) is not bytes:
            part = bytes(part)
        if not (part.startswith(self.prefix) and part.endswith(self.suffix)):
            return None
        digits = part[self.prefix_len : n - self.suffix_len]
        if not digits.isdigit() or (digits[0] == 0x30 and len(digits) > 1):
            return None
        frame = int(digits)
        if frame >= MAX_FRAME_NUMBER:
            return None
        fields = self.fields.copy()
        fields["frame"] = frame
        # What BaseModel.__copy__ does, with nothing mutable shared.
        info = _new_object(ImageMessage)
        _set_dict(info, fields)
        _set_fields_set(info, self.fields_set.copy())
        _set_extra(info, copy.deepcopy(self.extra) if self.extra else {})
        _set_private(info, None)
        return info


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
        #: Decodes the metadata pickles (fast once their layout repeats).
        self.metadata_decoder = MetadataDecoder()
        #: The last validated image JSON part, for the fast path.
        self._image_template: _ImageTemplate | None = None
        #: Image JSON parts recognised from the template (no json.loads).
        self.json_fast_hits = 0
        #: (metadata template, header, channels) whose naming checks passed,
        #: with the names and the layout (None: build plain dicts).
        self._naming: (
            tuple[
                _Template,
                HeaderMessage | None,
                int,
                tuple[str, ...],
                MetadataLayout | None,
            ]
            | None
        ) = None

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
        self._image_template = _ImageTemplate.learn(bytes(part), info, layout)

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
    ) -> Frame:
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
            metadata = self._decode_metadata(info, meta, shape[0])
        except ProtocolError as exc:
            self.tracker.report(
                "bad_frame", f"frame {info.frame} dropped: {exc}", frames=(info.frame,)
            )
            raise
        frame = Frame(info, spectra, metadata, framing)
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

    def _decode_metadata(
        self, info: ImageMessage, meta: bytes | memoryview, channels: int
    ) -> Mapping[str, npt.NDArray[Any]]:
        """The frame's metadata arrays by name, lazily when the template allows.

        The naming and shape checks depend only on the pickle's template, the
        header's names and the channel count: they run once per combination.
        """
        raw, template, arrays = self.metadata_decoder._decode_template(meta)
        header = self.header
        naming = self._naming
        if (
            naming is not None
            and naming[0] is template
            and naming[1] is header
            and naming[2] == channels
        ):
            names, layout = naming[3], naming[4]
            if layout is not None:
                return FrameMetadata(raw, layout)
        else:
            if arrays is None:
                arrays = _materialise(raw, template)
            names = self._metadata_names(info, arrays, channels)
            layout = self.metadata_decoder._layout(template, names)
            self._naming = (template, header, channels, names, layout)
            if layout is not None:
                return FrameMetadata(raw, layout)
        if arrays is None:
            arrays = _materialise(raw, template)
        # (a name given twice keeps its first place and its last array)
        return dict(zip(names, arrays, strict=True))

    def _metadata_names(
        self, info: ImageMessage, arrays: list[npt.NDArray[Any]], channels: int
    ) -> tuple[str, ...]:
        """One name per array (checked: scaler and window shapes, all eight
        scalers present); raises ProtocolError."""
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
        del names[len(arrays) :]
        for name, arr in zip(names, arrays, strict=True):
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
        missing = [n for n in DEFAULT_SCALER_NAMES if n not in names]
        if missing:
            raise ProtocolError(
                f"frame {info.frame}: metadata lacks {', '.join(missing)}"
            )
        return tuple(names)
