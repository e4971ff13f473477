"""JSON parts in, typed messages out; the image JSON fast path.

:func:`parse_json_part` turns one JSON part into its :class:`HeaderMessage`,
:class:`ImageMessage` or :class:`SeriesEndMessage` with pydantic's
``TypeAdapter.validate_json``. Whatever that refuses is read again with
:func:`json.loads` and ``validate_python``, which gives the error texts (they
quote :mod:`json`'s reason) and accepts the few documents :mod:`json` reads and
pydantic's parser does not (lone surrogates in strings, a UTF-16/32 encoding);
``tests/protocol/test_fast_path.py`` checks that ``validate_json`` never accepts
anything the :mod:`json` path would read differently. :func:`validate_image`
checks an image's dtype, compression and shape before any buffer is touched.

The detector sends the same image JSON every frame but for the frame number.
:class:`ImageTemplate` keeps the last validated image part, keyed by the bytes
around its frame number, with its message and spectra layout: a part that is
those bytes with other digits gets the message copied with the new number
(pydantic's ``model_copy(update=...)``), without parsing or validating again.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final, TypeAlias

import numpy as np
import pydantic

from ._errors import (
    InvalidJSONError,
    ShapeTooLargeError,
    UnknownHtypeError,
    UnsupportedEncodingError,
)
from ._models import (
    MAX_FRAME_NUMBER,
    HeaderMessage,
    ImageMessage,
    JsonMessage,
    SeriesEndMessage,
)

__all__ = [
    "JSON_WHITESPACE",
    "MAX_BINS",
    "MAX_CHANNELS",
    "MAX_FRAME_BYTES",
    "MAX_JSON_BYTES",
    "SUPPORTED_TYPES",
    "ImageLayout",
    "ImageTemplate",
    "parse_json_part",
    "validate_image",
]

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

#: The bytes JSON allows between tokens.
JSON_WHITESPACE: Final = frozenset(b" \t\r\n")

#: An image's spectra layout: ``(dtype, (channels, bins), nbytes)``.
ImageLayout: TypeAlias = tuple[np.dtype[Any], tuple[int, int], int]

# The discriminated union: validation errors name only the model ``htype`` picks.
_JSON_ADAPTER: pydantic.TypeAdapter[HeaderMessage | ImageMessage | SeriesEndMessage] = (
    pydantic.TypeAdapter(JsonMessage)
)


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
    data = view if type(view) is bytes else bytes(view)
    try:
        return _JSON_ADAPTER.validate_json(data)
    except pydantic.ValidationError:
        pass  # refused: the json module's reading says why (or accepts it)
    return _parse_with_json_module(data)


def _parse_with_json_module(
    data: bytes,
) -> HeaderMessage | ImageMessage | SeriesEndMessage:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        preview = data[:60]
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


def validate_image(info: ImageMessage) -> ImageLayout:
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


#: Digits of a frame number below MAX_FRAME_NUMBER (2**63 has 19).
_MAX_FRAME_DIGITS: Final = len(str(MAX_FRAME_NUMBER - 1))


def _skip_whitespace(part: bytes, i: int) -> int:
    n = len(part)
    while i < n and part[i] in JSON_WHITESPACE:
        i += 1
    return i


class ImageTemplate:
    """A validated image JSON part, to recognise the next ones by their bytes.

    A part ``prefix + digits + suffix`` (``digits`` 1 to 19 ASCII digits, no
    leading zero) is, for the JSON parsers and for the model, the template's
    message with ``frame=int(digits)``: the template holds ``"frame"`` exactly
    once, has no backslash (no escaped key can also spell ``frame``), no NUL
    byte and no non-ASCII byte (the parsers read it as UTF-8), and its frame
    value is an integer literal ending at whitespace, ``,`` or ``}``. So the one
    JSON token that differs is the number that is the top-level ``frame``; the
    only check left is the model's bound on it.

    :meth:`match` gives ``message.model_copy(update={"frame": n})``: each
    message has its own ``__dict__``, fields-set and extras dict, but the
    extras' *values* are shared by all the (frozen) messages of one template,
    not copied: a nested list or dict in an extra field must not be mutated.
    """

    __slots__ = (
        "layout",
        "max_len",
        "message",
        "min_len",
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
        message: ImageMessage,
        layout: ImageLayout,
    ) -> None:
        #: The bytes before and after the frame number: the cache key.
        self.prefix = part[:prefix_len]
        self.suffix = part[len(part) - suffix_len :]
        self.prefix_len = prefix_len
        self.suffix_len = suffix_len
        self.min_len = prefix_len + suffix_len + 1
        self.max_len = min(prefix_len + suffix_len + _MAX_FRAME_DIGITS, MAX_JSON_BYTES)
        #: The validated message and its spectra layout (validate_image's).
        self.message = message
        self.layout = layout

    @classmethod
    def learn(
        cls, part: bytes, info: ImageMessage, layout: ImageLayout
    ) -> ImageTemplate | None:
        """The template of ``part`` (parsed as ``info``), or None if the fast
        path could not be exact for it."""
        if (
            type(info) is not ImageMessage
            or not part.isascii()
            or b"\\" in part
            or b"\x00" in part
        ):
            return None
        start = part.find(b'"frame"')
        if start < 0 or part.find(b'"frame"', start + 1) >= 0:
            return None
        n = len(part)
        i = _skip_whitespace(part, start + 7)
        if i >= n or part[i] != 0x3A:  # ":"
            return None
        i = _skip_whitespace(part, i + 1)
        j = i
        while j < n and 0x30 <= part[j] <= 0x39:
            j += 1
        if part[i:j] != str(info.frame).encode():
            return None
        k = _skip_whitespace(part, j)
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
        # (no validation needed: ``frame`` is within the field's bounds)
        return self.message.model_copy(update={"frame": frame})
