"""Safe unpickling of the per-frame metadata pickle, with the standard library.

The detector sends, with every frame, a Python pickle of a list of numpy arrays
(the per-channel scalers). :func:`pickle.loads` would run any callable the
sender names, and the C unpickler trusts declared lengths (a 14-byte
``BINBYTES8`` makes it allocate 1 GiB; a ``LONG_BINPUT`` of 2**31 resizes its
memo to gigabytes). So a pickle passes three gates:

1. **Pre-scan** (:func:`._pickle_scan.prescan`): :func:`pickletools.genops` over an
   :class:`io.BytesIO` parses every opcode; only those numpy array pickles use
   are allowed, declared lengths are checked against the bytes that remain, and
   opcodes, MARK nesting, stack, memo index and list items are bounded. It
   follows the *kind* of every stack item, so globals are named only by
   allow-listed strings, REDUCE only calls an allowed global, BUILD only applies
   to an array or dtype and APPEND only targets a list. Nothing the C unpickler
   is then given can make it allocate more than the pickle's size.
2. **Restricted unpickler** (:class:`_Unpickler`): ``find_class`` resolves only
   ``numpy[._]core.multiarray._reconstruct``, ``numpy[._]core.numeric.
   _frombuffer``, ``numpy.ndarray`` and ``numpy.dtype``, to *inert stand-ins* of
   ours (:class:`_Global`) that validate their arguments and their BUILD state
   (ndarray subtype only, at most :data:`MAX_NDIM` dimensions, plain numeric
   dtypes in either byte order, data of exactly ``prod(shape) * itemsize``
   bytes). numpy never sees a hostile shape: we build the arrays with
   :func:`numpy.frombuffer`.
3. **Result check**: a list (or tuple) of at most :data:`MAX_METADATA_ARRAYS`
   built arrays.

An opcode, global or value outside these rules raises
:class:`~ophyd_xspress.protocol.UnsafeMetadataError`; a pickle that is merely
broken raises :class:`~ophyd_xspress.protocol.ProtocolError`. Messages name
opcodes, offsets and sizes, and describe values by type and length only.

**Where the array data is.** To return read-only views of the caller's bytes
and to give :class:`~ophyd_xspress.protocol.MetadataDecoder` its template,
:func:`unpickle_arrays` loads the pickle a second time, with every bytes payload
whose length equals some array's data length overwritten by a marker (region
``k`` filled with byte ``k + 1``; at most 255 such regions). The second load
must give the same structure (list layout, dtypes, shapes, orders), and each
array's data must then be one uniform marker: it names the region the array's
data comes from.

*Why this is exact.* The pre-scan and the unpickler look at a bytes payload's
length, never at its contents, and the stand-ins use a bytes object's contents
only as array data (``_reconstruct``'s ``b'b'`` typecode is checked for type and
length only). So which payload feeds which array, and all the rest of the
result, depend only on the pickle's bytes outside the payloads' contents, and
the marker load reads that data flow off exactly. Hence any pickle of the same
size that equals this one outside the array-data regions unpickles to the same
structure with each array's data taken from its region: slicing the regions is
what the full decode gives. Were a payload's contents to matter in any other
way, the marker load would differ or fail; then no regions are returned, the
arrays are built from the unpickled copies, and there is no template (every such
pickle takes the full path).
"""

from __future__ import annotations

import io
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, NoReturn

import numpy as np
import numpy.typing as npt

from ._errors import ProtocolError, UnsafeMetadataError
from ._pickle_scan import ALLOWED_GLOBALS, prescan, refuse_global

__all__ = [
    "MAX_METADATA_ARRAYS",
    "MAX_NDIM",
    "ArraySpec",
    "Unpickled",
    "unpickle_arrays",
    "view_arrays",
]

#: Largest number of arrays accepted in one metadata pickle.
MAX_METADATA_ARRAYS: Final = 64
#: Most dimensions of one array.
MAX_NDIM: Final = 8
#: Most byte regions the marker load can tell apart (one byte value each).
_MAX_REGIONS: Final = 255


def _unsafe(what: str) -> NoReturn:
    raise UnsafeMetadataError(what)


# -- the stand-ins -------------------------------------------------------------
class _Global:
    """An allowed global as the unpickler sees it: calling it runs our
    validator (never numpy's function); nothing can be set on it."""

    __slots__ = ("_call", "name")

    def __init__(self, name: str, call: Callable[[tuple[object, ...]], object]) -> None:
        self.name = name
        self._call = call

    def __call__(self, *args: object) -> object:
        return self._call(args)

    def __setstate__(self, state: object) -> None:
        _unsafe(f"metadata pickle applies BUILD to the global {self.name}: not allowed")


class _Dtype:
    """``numpy.dtype(name, align, copy)``, then at most one BUILD (byte order)."""

    __slots__ = ("built", "dtype")

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self.built = False

    def __call__(self, *args: object) -> NoReturn:
        _unsafe("metadata pickle calls a numpy dtype: not allowed")

    def __setstate__(self, state: object) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields,
        # elsize, alignment, flags[, metadata]); plain scalar dtypes only.
        if self.built:
            _unsafe("metadata pickle applies BUILD twice to one dtype")
        if (
            type(state) is not tuple
            or len(state) not in (8, 9)
            or (len(state) == 9 and state[8] is not None)
        ):
            _unsafe(f"unexpected dtype state ({_describe(state)})")
        byteorder = state[1]
        if state[2] is not None or state[3] is not None or state[4] is not None:
            _unsafe("structured or sub-array dtypes are not allowed")
        if type(byteorder) is not str or byteorder not in _BYTEORDERS:
            _unsafe(f"unexpected dtype byte order ({_describe(byteorder)})")
        if not all(type(x) is int for x in (state[0], state[5], state[6], state[7])):
            _unsafe("unexpected dtype state (version, size or flags not integers)")
        self.built = True
        if byteorder in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder("<" if byteorder == "<" else ">")


class _Array:
    """``_reconstruct(ndarray, (0,), b'b')`` awaiting its BUILD, or a finished
    ``_frombuffer(...)``: dtype, shape, order and the data bytes."""

    __slots__ = ("data", "dtype", "fortran", "shape")

    def __init__(self) -> None:
        self.dtype: np.dtype[Any] = _NUMERIC_DTYPES["u1"]
        self.shape: tuple[int, ...] = ()
        self.fortran = False
        self.data: bytes | bytearray | None = None

    def __call__(self, *args: object) -> NoReturn:
        _unsafe(f"metadata pickle calls {_type_name(self)}: not allowed")

    def __setstate__(self, state: object) -> None:
        # ndarray state: (version, shape, dtype, is_fortran, rawdata)
        if self.data is not None:
            _unsafe("metadata pickle applies BUILD to an array that already has data")
        if type(state) is not tuple or len(state) != 5:
            _unsafe(f"unexpected array state ({_describe(state)})")
        version, shape, dtype, fortran, raw = state
        if type(version) is not int:
            _unsafe(f"unexpected array state version ({_type_name(version)})")
        shape = _check_shape(shape)
        if not isinstance(dtype, _Dtype):
            _unsafe("array state without a plain dtype")
        if type(fortran) is not bool and type(fortran) is not int:
            _unsafe(f"unexpected array order flag ({_type_name(fortran)})")
        self._fill(raw, dtype.dtype, shape, bool(fortran))

    def _fill(
        self, raw: object, dtype: np.dtype[Any], shape: tuple[int, ...], fortran: bool
    ) -> None:
        if type(raw) is not bytes and type(raw) is not bytearray:
            _unsafe(f"array data is {_type_name(raw)}, not bytes")
        expected = math.prod(shape) * dtype.itemsize
        if len(raw) != expected:
            _unsafe(
                f"array of shape {shape} and dtype {dtype.str} needs {expected} "
                f"bytes, the pickle carries {len(raw)}"
            )
        self.dtype, self.shape, self.fortran, self.data = dtype, shape, fortran, raw


def _numeric_dtypes() -> dict[str, np.dtype[Any]]:
    out: dict[str, np.dtype[Any]] = {}
    for char in np.typecodes["AllInteger"] + np.typecodes["AllFloat"] + "?":
        dtype = np.dtype(char)
        out.setdefault(f"{dtype.kind}{dtype.itemsize}", dtype)
    return out


#: The plain numeric dtypes, by the name numpy pickles them with (kind and size):
#: b1, i1..i8, u1..u8, f2..f16, c8..c32.
_NUMERIC_DTYPES: Final = _numeric_dtypes()
_DTYPE_NAME = re.compile(r"[<>|=]?[a-zA-Z]{1,10}[0-9]{0,3}")
_BYTEORDERS: Final = frozenset("<>|=")


def _type_name(obj: object) -> str:
    """What ``obj`` is, by type only (never its value)."""
    if isinstance(obj, _Array):
        return "a numpy array" if obj.data is not None else "an array without data"
    if isinstance(obj, _Dtype):
        return "a numpy dtype"
    if isinstance(obj, _Global):
        return f"the global {obj.name}"
    return type(obj).__name__


def _describe(obj: object) -> str:
    """Type and, for sequences, length: safe to put in a message."""
    if isinstance(obj, tuple | list | str):
        unit = "characters" if isinstance(obj, str) else "items"
        return f"{type(obj).__name__} of {len(obj)} {unit}"
    if isinstance(obj, bytes | bytearray):
        return f"{type(obj).__name__} of {len(obj)} bytes"
    return _type_name(obj)


def _check_shape(shape: object) -> tuple[int, ...]:
    if (
        type(shape) is not tuple
        or len(shape) > MAX_NDIM
        or not all(type(n) is int and 0 <= n < 1 << 31 for n in shape)
    ):
        _unsafe(
            f"invalid array shape ({_describe(shape)}): expected a tuple of at "
            f"most {MAX_NDIM} integers in 0..2**31-1"
        )
    return shape


def _make_dtype(args: tuple[object, ...]) -> _Dtype:
    """``numpy.dtype(name, align, copy)`` for a plain numeric ``name`` only."""
    if not 1 <= len(args) <= 3 or not all(
        type(a) is bool or type(a) is int for a in args[1:]
    ):
        _unsafe(f"unexpected numpy.dtype arguments ({_describe(args)})")
    name = args[0]
    if type(name) is not str or not _DTYPE_NAME.fullmatch(name):
        _unsafe(f"metadata dtype name ({_describe(name)}) is not allowed")
    dtype = _NUMERIC_DTYPES.get(name)
    if dtype is not None:
        return _Dtype(dtype)
    # ``name`` matched the pattern above: short, printable, safe to show.
    kind = name.lstrip("<>|=")[:1]
    if kind in "OUSaVMm":
        extra = " (void, structured or sub-array dtypes are not allowed)"
        _unsafe(
            f"metadata dtype {name!r} (kind {kind!r}) is not a plain numeric "
            f"type{extra if kind == 'V' else ''}"
        )
    _unsafe(
        f"metadata dtype {name!r} is not allowed (expected a plain numeric type "
        f"as numpy pickles it: {', '.join(sorted(_NUMERIC_DTYPES))})"
    )


def _reconstruct(args: tuple[object, ...]) -> _Array:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``; BUILD then gives the state."""
    if len(args) != 3:
        _unsafe(f"unexpected _reconstruct arguments ({_describe(args)})")
    subtype, shape, code = args
    if subtype is not _NDARRAY:
        _unsafe(f"_reconstruct of something other than ndarray ({_type_name(subtype)})")
    # The typecode's contents are never read (see "why this is exact").
    if (
        type(shape) is not tuple
        or len(shape) != 1
        or type(shape[0]) is not int
        or shape[0] != 0
        or not isinstance(code, bytes | bytearray)
        or len(code) != 1
    ):
        _unsafe(f"unexpected _reconstruct arguments ({_describe(args)})")
    return _Array()


def _frombuffer(args: tuple[object, ...]) -> _Array:
    """numpy's ``_frombuffer(buffer, dtype, shape, order)`` (protocol 5)."""
    if len(args) != 4:
        _unsafe(f"unexpected _frombuffer arguments ({_describe(args)})")
    buffer, dtype, shape, order = args
    if not isinstance(dtype, _Dtype):
        _unsafe("_frombuffer without a plain dtype")
    if type(order) is not str or order not in ("C", "F"):
        _unsafe(f"unexpected _frombuffer order ({_describe(order)})")
    array = _Array()
    array._fill(buffer, dtype.dtype, _check_shape(shape), order == "F")
    return array


def _not_callable(args: tuple[object, ...]) -> NoReturn:
    _unsafe("metadata pickle calls the global numpy.ndarray: not allowed")


_NDARRAY: Final = _Global("numpy.ndarray", _not_callable)
_STAND_INS: Final[dict[str, _Global]] = {
    "_reconstruct": _Global("numpy.core.multiarray._reconstruct", _reconstruct),
    "_frombuffer": _Global("numpy.core.numeric._frombuffer", _frombuffer),
    "ndarray": _NDARRAY,
    "dtype": _Global("numpy.dtype", _make_dtype),
}
#: What ``find_class`` resolves each allowed global to.
_GLOBALS: Final[dict[tuple[str, str], _Global]] = {
    key: _STAND_INS[key[1]] for key in ALLOWED_GLOBALS
}


class _Unpickler(pickle.Unpickler):
    """The C unpickler, resolving globals to our stand-ins only."""

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        found = _GLOBALS.get((module_name, global_name))
        if found is None:  # the pre-scan refused it already: a second gate
            refuse_global(module_name, global_name)
        return found


def _load(data: bytes) -> object:
    """Unpickle pre-scanned ``data`` with the stand-ins."""
    try:
        return _Unpickler(io.BytesIO(data), fix_imports=False).load()
    except ProtocolError:
        raise
    except Exception as exc:  # not expected after the pre-scan
        raise ProtocolError(
            f"corrupt metadata pickle: the unpickler stopped ({type(exc).__name__})"
        ) from None


# -- the result ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One array of a pickle: ``np.frombuffer(pickle, dtype, count, offset)``,
    reshaped to ``shape`` in ``order`` (None: already the 1-D array)."""

    offset: int
    dtype: np.dtype[Any]
    count: int
    shape: tuple[int, ...]
    order: Literal["C", "F"] | None

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


class Unpickled(NamedTuple):
    """What :func:`unpickle_arrays` found."""

    #: The result: read-only arrays (views of the pickle when ``specs`` is set).
    arrays: list[npt.NDArray[Any]]
    #: Each distinct array, where its data is in the pickle; None when that
    #: could not be established exactly (then there is no template).
    specs: tuple[ArraySpec, ...] | None
    #: Which distinct array each element of the result is.
    layout: tuple[int, ...]


def _arrays_of(result: object) -> tuple[list[_Array], tuple[int, ...]]:
    """The distinct built arrays of a list/tuple result, and which one each
    element is; raises UnsafeMetadataError for anything else."""
    if not isinstance(result, list | tuple):
        _unsafe(
            f"metadata pickle holds {_type_name(result)}, expected a list of arrays"
        )
    if len(result) > MAX_METADATA_ARRAYS:
        _unsafe(
            f"metadata pickle holds {len(result)} arrays (at most "
            f"{MAX_METADATA_ARRAYS} allowed)"
        )
    distinct: list[_Array] = []
    index: dict[int, int] = {}
    layout: list[int] = []
    for i, item in enumerate(result):
        if not isinstance(item, _Array) or item.data is None:
            _unsafe(f"metadata element {i} is {_type_name(item)}, not a numpy array")
        if id(item) not in index:
            index[id(item)] = len(distinct)
            distinct.append(item)
        layout.append(index[id(item)])
    return distinct, tuple(layout)


def _structure(result: object, arrays: list[_Array], layout: tuple[int, ...]) -> object:
    return type(result), layout, [(a.dtype.str, a.shape, a.fortran) for a in arrays]


def _spec(array: _Array, offset: int) -> ArraySpec:
    order: Literal["C", "F"] | None = None
    if len(array.shape) != 1:
        order = "F" if array.fortran else "C"
    count = math.prod(array.shape)
    return ArraySpec(offset, array.dtype, count, array.shape, order)


def view_arrays(
    data: bytes, specs: tuple[ArraySpec, ...], layout: tuple[int, ...] | None
) -> list[npt.NDArray[Any]]:
    """The arrays ``specs`` describe, viewing ``data`` (read-only for bytes);
    ``layout`` None means one element per spec, all 1-D (the usual case)."""
    frombuffer = np.frombuffer
    if layout is None:
        # (positional arguments: np.frombuffer is ~3x slower with keywords)
        return [frombuffer(data, s.dtype, s.count, s.offset) for s in specs]
    built: list[npt.NDArray[Any]] = []
    for s in specs:
        arr = frombuffer(data, s.dtype, s.count, s.offset)
        if s.order is not None:
            arr = arr.reshape(s.shape, order=s.order)
        built.append(arr)
    return [built[i] for i in layout]


def _locate(
    data: bytes,
    payloads: list[tuple[int, int]],
    structure: object,
    arrays: list[_Array],
) -> tuple[int, ...] | None:
    """The offset of each array's data in ``data``, read off a marker load (see
    the module docstring), or None when it cannot be established exactly."""
    lengths = {len(a.data) for a in arrays if a.data}
    regions = [(offset, n) for offset, n in payloads if n in lengths]
    if len(regions) > _MAX_REGIONS:
        return None
    marked = bytearray(data)
    for k, (offset, n) in enumerate(regions):
        marked[offset : offset + n] = bytes([k + 1]) * n
    try:
        result = _load(bytes(marked))
        again, layout = _arrays_of(result)
    except ProtocolError:
        return None
    if _structure(result, again, layout) != structure:
        return None
    offsets: list[int] = []
    for array in again:
        raw = array.data or b""
        if not raw:  # no data: any offset views nothing
            offsets.append(0)
            continue
        k = raw[0] - 1
        if not 0 <= k < len(regions) or regions[k][1] != len(raw):
            return None
        if raw.count(raw[:1]) != len(raw):
            return None
        offsets.append(regions[k][0])
    return tuple(offsets)


def unpickle_arrays(data: bytes) -> Unpickled:
    """Pre-scan, unpickle with the stand-ins, check and locate the arrays of the
    metadata pickle ``data`` (size and first byte already checked)."""
    payloads = prescan(data)
    result = _load(data)
    arrays, layout = _arrays_of(result)
    offsets = _locate(data, payloads, _structure(result, arrays, layout), arrays)
    if offsets is None:
        own = [bytes(a.data or b"") for a in arrays]
        built = [
            view_arrays(raw, (_spec(a, 0),), (0,))[0]
            for raw, a in zip(own, arrays, strict=True)
        ]
        return Unpickled([built[i] for i in layout], None, layout)
    specs = tuple(_spec(a, o) for a, o in zip(arrays, offsets, strict=True))
    return Unpickled(view_arrays(data, specs, layout), specs, layout)
