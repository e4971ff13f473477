"""Safe decoding and encoding of the per-frame metadata pickle.

The detector sends, with every frame, a Python pickle of a list of numpy arrays
(the per-channel scalers). Unpickling network bytes with :func:`pickle.loads`
would run any callable the sender names, so this module never does. It uses a
:class:`pickle.Unpickler` whose ``find_class`` hands out *inert stand-ins* for
the only three globals a numpy array pickle needs
(``numpy[._]core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``;
plus ``numpy[._]core.numeric._frombuffer`` for protocol 5). The stand-ins record
and validate their arguments; real arrays are then built with
:func:`numpy.frombuffer` from validated bytes, shape and a plain numeric dtype.
Anything else (another global, an object or structured dtype, a shape that does
not match the bytes, a pickle larger than :data:`MAX_METADATA_BYTES`) raises
:class:`~ophyd_xspress.protocol.UnsafeMetadataError` and executes nothing.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._errors import ProtocolError, UnsafeMetadataError

__all__ = ["MAX_METADATA_BYTES", "decode_metadata", "encode_metadata"]

#: Largest metadata pickle accepted (real ones are 0.5-0.7 kB).
MAX_METADATA_BYTES: Final = 1 << 20
#: Largest number of arrays accepted in one metadata pickle.
MAX_METADATA_ARRAYS: Final = 64

_NUMERIC_KINDS: Final = frozenset("biufc")
_DTYPE_NAME = re.compile(r"^[<>|=]?[a-zA-Z]{1,10}[0-9]{0,3}$")
_BYTEORDERS: Final = frozenset("<>|=")

_RECONSTRUCT_NAMES: Final = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }
)
_FROMBUFFER_NAMES: Final = frozenset(
    {
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class _NdarrayType:
    """Stand-in for ``numpy.ndarray`` (only ever passed as an argument)."""

    __slots__ = ()


_NDARRAY: Final = _NdarrayType()


class _DtypeStandIn:
    """Records ``numpy.dtype(name, align, copy)`` and its ``__setstate__``."""

    __slots__ = ("byteorder", "name")

    def __init__(self, name: object, align: object = False, copy: object = False):
        if not isinstance(name, str) or not _DTYPE_NAME.match(name):
            raise UnsafeMetadataError(f"metadata dtype {name!r:.40} is not allowed")
        self.name = name
        self.byteorder: str | None = None

    def __setstate__(self, state: object) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields,
        # elsize, alignment, flags); only plain scalar dtypes are accepted.
        if not isinstance(state, tuple) or len(state) not in (8, 9):
            raise UnsafeMetadataError(f"unexpected dtype state {state!r:.80}")
        byteorder, subarray, names, fields = state[1], state[2], state[3], state[4]
        if byteorder not in _BYTEORDERS:
            raise UnsafeMetadataError(f"unexpected dtype byte order {byteorder!r:.10}")
        if subarray is not None or names is not None or fields is not None:
            raise UnsafeMetadataError("structured or sub-array dtypes are not allowed")
        self.byteorder = byteorder

    def resolve(self) -> np.dtype[Any]:
        try:
            dtype = np.dtype(self.name)
        except TypeError as exc:
            raise UnsafeMetadataError(f"unknown dtype {self.name!r}") from exc
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
            raise UnsafeMetadataError(
                f"metadata dtype {self.name!r} (kind {dtype.kind!r}) is not a plain "
                "numeric type"
            )
        if self.byteorder in ("<", ">"):
            dtype = dtype.newbyteorder(self.byteorder)
        return dtype


class _ArrayStandIn:
    """Records ``_reconstruct(ndarray, (0,), b'b')`` and the array's state."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: npt.NDArray[Any] | None = None

    def __setstate__(self, state: object) -> None:
        # ndarray state: (version, shape, dtype, is_fortran, rawdata)
        if not isinstance(state, tuple) or len(state) != 5:
            raise UnsafeMetadataError(f"unexpected array state {state!r:.80}")
        _, shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, _DtypeStandIn):
            raise UnsafeMetadataError("array state without a plain dtype")
        self.array = _build_array(raw, dtype.resolve(), shape, bool(is_fortran))


def _reconstruct(subtype: object, shape: object, dtype_code: object) -> _ArrayStandIn:
    if subtype is not _NDARRAY:
        raise UnsafeMetadataError("_reconstruct of something other than ndarray")
    if shape != (0,) or not isinstance(dtype_code, bytes | str):
        raise UnsafeMetadataError(f"unexpected _reconstruct arguments {shape!r:.40}")
    return _ArrayStandIn()


def _frombuffer(
    buf: object, dtype: object, shape: object, order: object
) -> _ArrayStandIn:
    if isinstance(dtype, _DtypeStandIn):
        resolved = dtype.resolve()
    else:
        raise UnsafeMetadataError("_frombuffer without a plain dtype")
    out = _ArrayStandIn()
    out.array = _build_array(buf, resolved, shape, order == "F")
    return out


def _build_array(
    raw: object, dtype: np.dtype[Any], shape: object, fortran: bool
) -> npt.NDArray[Any]:
    if not isinstance(raw, bytes | bytearray):
        raise UnsafeMetadataError(f"array data is {type(raw).__name__}, not bytes")
    if (
        not isinstance(shape, tuple)
        or len(shape) > 8
        or not all(isinstance(n, int) and 0 <= n < 1 << 31 for n in shape)
    ):
        raise UnsafeMetadataError(f"invalid array shape {shape!r:.60}")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise UnsafeMetadataError(
            f"array of shape {shape} and dtype {dtype.str} needs {expected} bytes, "
            f"the pickle carries {len(raw)}"
        )
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return arr


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _RECONSTRUCT_NAMES:
            return _reconstruct
        if key in _FROMBUFFER_NAMES:
            return _frombuffer
        if key == ("numpy", "ndarray"):
            return _NDARRAY
        if key == ("numpy", "dtype"):
            return _DtypeStandIn
        raise UnsafeMetadataError(
            f"metadata pickle references {module}.{name}: only numpy arrays of plain "
            "numeric dtypes are allowed"
        )

    def persistent_load(self, pid: object) -> Any:
        raise UnsafeMetadataError("metadata pickle uses persistent ids")


def decode_metadata(data: bytes | bytearray | memoryview) -> list[npt.NDArray[Any]]:
    """Decode a metadata pickle into a list of numpy arrays, executing nothing.

    Raises :class:`UnsafeMetadataError` for anything but a list of plain numeric
    numpy arrays, and :class:`ProtocolError` for a corrupt pickle.
    """
    size = len(data) if not isinstance(data, memoryview) else data.nbytes
    if size > MAX_METADATA_BYTES:
        raise UnsafeMetadataError(
            f"metadata pickle of {size} bytes exceeds the {MAX_METADATA_BYTES} limit"
        )
    if size == 0:
        raise ProtocolError("empty metadata part")
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if view[0] != 0x80:
        raise ProtocolError(
            f"metadata part is not a pickle (first byte {view[0]:#04x}, expected 0x80)"
        )
    try:
        result = _RestrictedUnpickler(io.BytesIO(view), encoding="bytes").load()
    except ProtocolError:
        raise
    except RecursionError as exc:
        raise UnsafeMetadataError("metadata pickle nests too deeply") from exc
    except Exception as exc:  # any corruption of the pickle stream
        raise ProtocolError(
            f"corrupt metadata pickle: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, list | tuple):
        raise UnsafeMetadataError(
            f"metadata pickle holds {type(result).__name__}, expected a list of arrays"
        )
    if len(result) > MAX_METADATA_ARRAYS:
        raise UnsafeMetadataError(f"metadata pickle holds {len(result)} arrays")
    arrays: list[npt.NDArray[Any]] = []
    for i, item in enumerate(result):
        if not isinstance(item, _ArrayStandIn) or item.array is None:
            raise UnsafeMetadataError(
                f"metadata element {i} is {type(item).__name__}, not a numpy array"
            )
        arrays.append(item.array)
    return arrays


def encode_metadata(arrays: Sequence[npt.NDArray[Any]], protocol: int = 4) -> bytes:
    """Pickle a list of numpy arrays as the detector does (protocol 3 or 4)."""
    if protocol not in (3, 4):
        raise ValueError("the detector sends pickle protocol 3 or 4")
    return pickle.dumps([np.asarray(a) for a in arrays], protocol=protocol)
