"""Exceptions raised by the sans-IO protocol core.

Every problem with bytes that came from the network is a :class:`ProtocolError`
(or a subclass), whose message names what was expected and what arrived.
"""

from __future__ import annotations

__all__ = [
    "BufferLengthError",
    "InvalidJSONError",
    "MissingPartError",
    "OutOfSeriesError",
    "ProtocolError",
    "ShapeTooLargeError",
    "UnknownHtypeError",
    "UnsafeMetadataError",
    "UnsupportedEncodingError",
]


class ProtocolError(ValueError):
    """A message from the detector stream could not be decoded."""


class InvalidJSONError(ProtocolError):
    """A JSON part was not valid UTF-8 JSON, or not the expected object."""


class UnknownHtypeError(ProtocolError):
    """A JSON part carried an ``htype`` the decoder does not know."""


class UnsupportedEncodingError(ProtocolError):
    """An image declared a ``type`` (dtype) or ``compression`` we cannot decode."""


class BufferLengthError(ProtocolError):
    """A data buffer's length does not match ``prod(shape) * itemsize``."""


class ShapeTooLargeError(ProtocolError):
    """A header declared a shape whose allocation would be absurd."""


class MissingPartError(ProtocolError):
    """A frame lacked its data or metadata part."""


class OutOfSeriesError(ProtocolError):
    """An image arrived before any header (no series to attribute it to)."""


class UnsafeMetadataError(ProtocolError):
    """The metadata pickle referenced something other than plain numpy arrays."""
