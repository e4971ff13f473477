"""Safe decoding and encoding of the per-frame metadata pickle.

The detector sends, with every frame, a Python pickle of a list of numpy arrays
(the per-channel scalers). Unpickling network bytes with :func:`pickle.loads`
would run any callable the sender names, and even a restricted
:class:`pickle.Unpickler` trusts the lengths the stream declares (a 14-byte
``BINBYTES8`` makes it allocate 1 GiB). So this module does not use the
:mod:`pickle` machinery to decode at all: it runs its own small, pure-Python
*pickle VM* that understands only the opcodes numpy array pickles of protocol 2
to 5 use.

* Every declared length is checked against the bytes that remain before
  anything is read; byte strings are never copied (the VM records where they
  are), and the stack, the memo, the MARK nesting and the number of opcodes are
  bounded. Nothing recurses on the pickle's nesting.
* Globals resolve only to *inert stand-ins* for ``numpy[._]core.multiarray.
  _reconstruct``, ``numpy[._]core.numeric._frombuffer``, ``numpy.ndarray`` and
  ``numpy.dtype``; REDUCE calls only those, BUILD applies only to the array and
  dtype stand-ins, once. Dtypes are looked up in a fixed table of plain numeric
  types (bool, integers, floats, complex).
* Any other opcode raises :class:`~ophyd_xspress.protocol.UnsafeMetadataError`
  naming the opcode and its offset; a pickle that is merely broken raises
  :class:`~ophyd_xspress.protocol.ProtocolError`. Error messages describe values
  by type and length only: nothing from the network is ever ``repr``'d.

The result is a list of read-only numpy arrays built with :func:`numpy.frombuffer`
on the validated bytes.

:class:`MetadataDecoder` adds a fast path for a stream of pickles: the detector
pickles the same list of arrays every frame, so all bytes but the raw array data
are identical from one frame to the next. After a full, validated decode the
decoder keeps a *template* (the pickle's bytes outside the array data, and the
offset, dtype and shape of each array); a later pickle of the same length whose
non-data bytes all equal the template's is decoded by slicing the arrays out at
the known offsets, without running the VM. That is exactly as safe as the full
decode: the VM's every decision depends only on those identical bytes, and the
data regions only ever become array contents of the lengths already checked.
Anything else goes through the full VM again (and becomes the new template if
it passes).

:class:`FrameMetadata` is what :class:`~ophyd_xspress.protocol.StreamDecoder`
puts in a frame decoded through such a template: the pickle's bytes and a shared
:class:`MetadataLayout` (name, dtype, shape and offset of every array), with the
arrays built only when first read. A consumer that stores many frames can copy
the bytes of each into one block and view every column of every frame at once
(:meth:`MetadataLayout.columns`).
"""

from __future__ import annotations

import copyreg
import math
import pickle
import pickletools
import re
import struct
from collections.abc import ItemsView, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn

import numpy as np
import numpy.typing as npt

from ._errors import ProtocolError, UnsafeMetadataError

__all__ = [
    "MAX_METADATA_BYTES",
    "FrameMetadata",
    "MetadataDecoder",
    "MetadataField",
    "MetadataLayout",
    "decode_metadata",
    "encode_metadata",
]

#: Largest metadata pickle accepted (real ones are 0.5-0.7 kB).
MAX_METADATA_BYTES: Final = 1 << 20
#: Largest number of arrays accepted in one metadata pickle.
MAX_METADATA_ARRAYS: Final = 64
#: Bounds on the pickle VM (a real 9-array pickle needs about 300 opcodes, a
#: stack of 12, 3 nested MARKs and 100 memo entries).
MAX_OPCODES: Final = 16_384
MAX_STACK: Final = 1_024
MAX_MARKS: Final = 32
MAX_MEMO: Final = 4_096
MAX_LIST_ITEMS: Final = 1_024
MAX_GLOBAL_LINE: Final = 128
MAX_NDIM: Final = 8

_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# -- opcodes (the allowlist) ---------------------------------------------------
_MARK = 0x28  # (
_EMPTY_TUPLE = 0x29  # )
_STOP = 0x2E  # .
_BINBYTES = 0x42  # B
_SHORT_BINBYTES = 0x43  # C
_BININT = 0x4A  # J
_BININT1 = 0x4B  # K
_BININT2 = 0x4D  # M
_NONE = 0x4E  # N
_REDUCE = 0x52  # R
_BINUNICODE = 0x58  # X
_EMPTY_LIST = 0x5D  # ]
_APPEND = 0x61  # a
_BUILD = 0x62  # b
_GLOBAL = 0x63  # c
_APPENDS = 0x65  # e
_BINGET = 0x68  # h
_LONG_BINGET = 0x6A  # j
_BINPUT = 0x71  # q
_LONG_BINPUT = 0x72  # r
_TUPLE = 0x74  # t
_PROTO = 0x80
_TUPLE1 = 0x85
_TUPLE2 = 0x86
_TUPLE3 = 0x87
_NEWTRUE = 0x88
_NEWFALSE = 0x89
_LONG1 = 0x8A
_SHORT_BINUNICODE = 0x8C
_STACK_GLOBAL = 0x93
_MEMOIZE = 0x94
_FRAME = 0x95
_BYTEARRAY8 = 0x96

#: Every opcode the VM executes (PROTO only as the first one).
ALLOWED_OPCODES: Final = frozenset(
    {
        _PROTO,
        _FRAME,
        _EMPTY_LIST,
        _EMPTY_TUPLE,
        _MARK,
        _GLOBAL,
        _STACK_GLOBAL,
        _SHORT_BINUNICODE,
        _BINUNICODE,
        _SHORT_BINBYTES,
        _BINBYTES,
        _BYTEARRAY8,
        _BININT1,
        _BININT2,
        _BININT,
        _LONG1,
        _NONE,
        _NEWTRUE,
        _NEWFALSE,
        _TUPLE,
        _TUPLE1,
        _TUPLE2,
        _TUPLE3,
        _REDUCE,
        _BUILD,
        _BINPUT,
        _LONG_BINPUT,
        _MEMOIZE,
        _BINGET,
        _LONG_BINGET,
        _APPEND,
        _APPENDS,
        _STOP,
    }
)

_OPCODE_NAMES: Final[dict[int, str]] = {
    ord(op.code): op.name for op in pickletools.opcodes
}

#: What an opcode outside the allowlist would have built, for the message when
#: it is the pickle's top-level object.
_BUILDS: Final[dict[str, str]] = {
    "EMPTY_DICT": "dict",
    "DICT": "dict",
    "EMPTY_SET": "set",
    "FROZENSET": "frozenset",
    "BINFLOAT": "float",
    "FLOAT": "float",
    "INT": "int",
    "LONG": "int",
    "LONG4": "int",
    "LIST": "list",
    "UNICODE": "str",
    "STRING": "str",
    "BINSTRING": "str",
    "SHORT_BINSTRING": "str",
    "BINUNICODE8": "str",
    "BINBYTES8": "bytes",
}

# -- stand-ins -----------------------------------------------------------------


class _Raw:
    """A byte string of the pickle: where it is, never copied.

    ``role`` is what it was used as: ``"data"`` (array contents) or ``"code"``
    (the ``b'b'`` argument of ``_reconstruct``). One byte string cannot be both.
    """

    __slots__ = ("length", "mutable", "offset", "role")

    def __init__(self, offset: int, length: int, mutable: bool) -> None:
        self.offset = offset
        self.length = length
        self.mutable = mutable
        self.role: str | None = None


class _Global:
    """An allowed global, as an inert token (never the real callable)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_RECONSTRUCT: Final = _Global("numpy.core.multiarray._reconstruct")
_FROMBUFFER: Final = _Global("numpy.core.numeric._frombuffer")
_NDARRAY: Final = _Global("numpy.ndarray")
_DTYPE: Final = _Global("numpy.dtype")

_GLOBALS: Final[dict[tuple[str, str], _Global]] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
}


class _Dtype:
    """``numpy.dtype(name, align, copy)``, then at most one BUILD (byte order)."""

    __slots__ = ("built", "dtype")

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self.built = False


@dataclass(frozen=True, slots=True)
class _ArraySpec:
    """Where one array's data is in the pickle, and how to view it."""

    offset: int
    nbytes: int
    dtype: np.dtype[Any]
    count: int
    shape: tuple[int, ...]
    #: None when frombuffer's 1-D result is already the array.
    order: Literal["C", "F"] | None


class _Array:
    """``_reconstruct(ndarray, (0,), b'b')`` awaiting its BUILD, or a finished
    ``_frombuffer(...)``: an array known by its :class:`_ArraySpec`."""

    __slots__ = ("raw", "spec")

    def __init__(self) -> None:
        self.spec: _ArraySpec | None = None
        self.raw: _Raw | None = None


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
_MISSING: Final = object()


# -- error helpers -------------------------------------------------------------
def _type_name(obj: object) -> str:
    """What ``obj`` is, by type only (never its value)."""
    if isinstance(obj, _Array):
        return "a numpy array" if obj.spec is not None else "an array without data"
    if isinstance(obj, _Dtype):
        return "a numpy dtype"
    if isinstance(obj, _Global):
        return f"the global {obj.name}"
    if isinstance(obj, _Raw):
        return "bytearray" if obj.mutable else "bytes"
    return type(obj).__name__


def _describe(obj: object) -> str:
    """Type and, for containers, length: safe to put in a message."""
    if isinstance(obj, tuple | list | str):
        unit = "characters" if isinstance(obj, str) else "items"
        return f"{type(obj).__name__} of {len(obj)} {unit}"
    if isinstance(obj, _Raw):
        return f"{_type_name(obj)} of {obj.length} bytes"
    return _type_name(obj)


def _safe_text(text: str, limit: int = 100) -> str:
    """A name from the network, shortened, shown as-is only if printable."""
    short = text[:limit]
    if not short.isprintable():
        short = short.encode("ascii", "backslashreplace").decode("ascii")
    return short + ("..." if len(text) > limit else "")


def _opname(op: int) -> str:
    return f"{_OPCODE_NAMES.get(op, 'unknown opcode')} ({op:#04x})"


def _corrupt(what: str, at: int) -> NoReturn:
    raise ProtocolError(f"corrupt metadata pickle: {what} at offset {at}")


def _unsafe(what: str) -> NoReturn:
    raise UnsafeMetadataError(what)


def _refuse_global(module: str, name: str) -> NoReturn:
    raise UnsafeMetadataError(
        f"metadata pickle references {_safe_text(module)}.{_safe_text(name)}: "
        "only numpy arrays of plain numeric dtypes are allowed"
    )


def _refuse_opcode(data: bytes, op: int, at: int, top_level: bool) -> NoReturn:
    name = _OPCODE_NAMES.get(op)
    if name is None:
        _corrupt(f"byte {op:#04x} is not a pickle opcode", at)
    reason = ""
    if name in ("PERSID", "BINPERSID"):
        reason = " (persistent ids are not allowed)"
    elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
        reason = " (out-of-band buffers are not allowed)"
    elif name in ("EXT1", "EXT2", "EXT4"):
        size = {"EXT1": 1, "EXT2": 2, "EXT4": 4}[name]
        if at + 1 + size <= len(data):
            code = int.from_bytes(data[at + 1 : at + 1 + size], "little")
            # A read-only look-up in the registry the real unpickler would use.
            key = getattr(copyreg, "_inverted_registry", {}).get(code)
            if key is None:
                reason = f" (extension code {code}, not registered)"
            else:
                module, attr = key
                reason = (
                    f" (extension code {code}, registered as "
                    f"{_safe_text(str(module))}.{_safe_text(str(attr))})"
                )
        else:
            reason = " (extension code truncated)"
    elif name == "PROTO":
        reason = " (only as the first opcode)"
    message = (
        f"metadata pickle opcode {name} ({op:#04x}) at offset {at} is not "
        f"allowed{reason}: only numpy arrays of plain numeric dtypes are accepted"
    )
    if top_level and name in _BUILDS:
        message = (
            f"metadata pickle holds {_BUILDS[name]}, expected a list of arrays "
            f"({message})"
        )
    raise UnsafeMetadataError(message)


# -- the stand-ins' semantics --------------------------------------------------
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
        extra = ""
        if kind == "V":
            extra = " (void, structured or sub-array dtypes are not allowed)"
        _unsafe(
            f"metadata dtype {name!r} (kind {kind!r}) is not a plain numeric "
            f"type{extra}"
        )
    _unsafe(
        f"metadata dtype {name!r} is not allowed (expected a plain numeric type "
        f"as numpy pickles it: {', '.join(sorted(_NUMERIC_DTYPES))})"
    )


def _build_dtype(target: _Dtype, state: object) -> None:
    # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize,
    # alignment, flags[, metadata]); only plain scalar dtypes are accepted.
    if target.built:
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
    target.built = True
    if byteorder in "<>" and target.dtype.itemsize > 1:
        target.dtype = target.dtype.newbyteorder("<" if byteorder == "<" else ">")


def _make_spec(
    raw: object, dtype: np.dtype[Any], shape: tuple[int, ...], fortran: bool
) -> tuple[_Raw, _ArraySpec]:
    if not isinstance(raw, _Raw):
        _unsafe(f"array data is {_type_name(raw)}, not bytes")
    expected = math.prod(shape) * dtype.itemsize
    if raw.length != expected:
        _unsafe(
            f"array of shape {shape} and dtype {dtype.str} needs {expected} bytes, "
            f"the pickle carries {raw.length}"
        )
    if raw.role == "code":
        _unsafe("metadata pickle uses one byte string as array data and as code")
    raw.role = "data"
    order: Literal["C", "F"] | None = None
    if len(shape) != 1:
        order = "F" if fortran else "C"
    return raw, _ArraySpec(
        offset=raw.offset,
        nbytes=raw.length,
        dtype=dtype,
        count=math.prod(shape),
        shape=shape,
        order=order,
    )


def _reduce(func: object, args: object) -> object:
    if not isinstance(func, _Global) or func is _NDARRAY:
        _unsafe(f"metadata pickle calls {_type_name(func)}: not allowed")
    if type(args) is not tuple:
        _unsafe(f"REDUCE arguments are {_type_name(args)}, not a tuple")
    if func is _DTYPE:
        return _make_dtype(args)
    if func is _RECONSTRUCT:
        # numpy: _reconstruct(ndarray, (0,), b'b'), then BUILD with the state.
        if len(args) != 3:
            _unsafe(f"unexpected _reconstruct arguments ({_describe(args)})")
        subtype, shape, code = args
        if subtype is not _NDARRAY:
            _unsafe(
                f"_reconstruct of something other than ndarray ({_type_name(subtype)})"
            )
        if (
            type(shape) is not tuple
            or len(shape) != 1
            or type(shape[0]) is not int
            or shape[0] != 0
            or not isinstance(code, _Raw)
            or code.length != 1
        ):
            _unsafe(f"unexpected _reconstruct arguments ({_describe(args)})")
        if code.role == "data":
            _unsafe("metadata pickle uses one byte string as array data and as code")
        code.role = "code"
        return _Array()
    # _frombuffer(buffer, dtype, shape, order): protocol 5, in-band buffer.
    if len(args) != 4:
        _unsafe(f"unexpected _frombuffer arguments ({_describe(args)})")
    buf, dtype, shape, order = args
    if not isinstance(dtype, _Dtype):
        _unsafe("_frombuffer without a plain dtype")
    if type(order) is not str or order not in ("C", "F"):
        _unsafe(f"unexpected _frombuffer order ({_describe(order)})")
    array = _Array()
    array.raw, array.spec = _make_spec(
        buf, dtype.dtype, _check_shape(shape), order == "F"
    )
    return array


def _build(target: object, state: object) -> None:
    if isinstance(target, _Dtype):
        _build_dtype(target, state)
        return
    if not isinstance(target, _Array):
        _unsafe(f"metadata pickle applies BUILD to {_type_name(target)}: not allowed")
    if target.spec is not None:
        _unsafe("metadata pickle applies BUILD to an array that already has data")
    # ndarray state: (version, shape, dtype, is_fortran, rawdata)
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
    target.raw, target.spec = _make_spec(raw, dtype.dtype, shape, bool(fortran))


# -- the VM --------------------------------------------------------------------
def _run(data: bytes) -> object:
    """Execute the restricted pickle ``data``; return its top-level object.

    One ``if`` chain, most frequent opcodes first (MEMOIZE, BINGET, BININT1,
    TUPLE1-3, MARK, ... in real pickles), opcodes as literals: this loop is the
    whole cost of a full decode.
    """
    n = len(data)
    if n < 2:
        _corrupt("PROTO opcode without its version", n)
    proto = data[1]
    if not 2 <= proto <= 5:
        raise ProtocolError(
            f"metadata pickle protocol {proto} is not supported (expected 2 to 5)"
        )
    stack: list[Any] = []
    push = stack.append
    marks: list[int] = []
    memo: dict[int, object] = {}
    fence = 0
    pos = 2
    budget = MAX_OPCODES
    while True:
        if pos >= n:
            _corrupt("pickle ended without STOP", pos)
        budget -= 1
        if budget < 0:
            _unsafe(f"metadata pickle runs more than {MAX_OPCODES} opcodes")
        if len(stack) >= MAX_STACK:
            _unsafe(f"metadata pickle stack exceeds {MAX_STACK} items")
        at = pos
        op = data[pos]
        pos += 1

        if op == 0x94 or op == 0x71:  # MEMOIZE, BINPUT
            if op == 0x94:
                key = len(memo)
            else:
                if pos >= n:
                    _corrupt("truncated BINPUT", at)
                key = data[pos]
                pos += 1
            if len(stack) <= fence:
                _corrupt(f"stack underflow in {_opname(op)}", at)
            if len(memo) >= MAX_MEMO and key not in memo:
                _unsafe(f"metadata pickle memo exceeds {MAX_MEMO} entries")
            memo[key] = stack[-1]
        elif op == 0x68:  # BINGET
            if pos >= n:
                _corrupt("truncated BINGET", at)
            key = data[pos]
            pos += 1
            value = memo.get(key, _MISSING)
            if value is _MISSING:
                _corrupt(f"memo entry {key} is missing", at)
            push(value)
        elif op == 0x4B:  # BININT1
            if pos >= n:
                _corrupt("truncated BININT1", at)
            push(data[pos])
            pos += 1
        elif 0x85 <= op <= 0x87:  # TUPLE1, TUPLE2, TUPLE3
            k = op - 0x84
            if len(stack) - k < fence:
                _corrupt(f"stack underflow in {_opname(op)}", at)
            items = tuple(stack[-k:])
            del stack[-k:]
            push(items)
        elif op == 0x28:  # MARK
            if len(marks) >= MAX_MARKS:
                _unsafe(f"metadata pickle nests more than {MAX_MARKS} MARKs")
            fence = len(stack)
            marks.append(fence)
        elif op == 0x74 or op == 0x65:  # TUPLE, APPENDS
            if not marks:
                _corrupt(f"{_opname(op)} without MARK", at)
            start = marks.pop()
            fence = marks[-1] if marks else 0
            items = stack[start:]
            del stack[start:]
            if op == 0x74:
                push(tuple(items))
            else:
                if len(stack) <= fence:
                    _corrupt("stack underflow in APPENDS", at)
                target = stack[-1]
                if type(target) is not list:
                    _unsafe(
                        f"metadata pickle appends to {_type_name(target)} at "
                        f"offset {at}: not allowed"
                    )
                if len(target) + len(items) > MAX_LIST_ITEMS:
                    _unsafe(f"metadata pickle list exceeds {MAX_LIST_ITEMS} items")
                target.extend(items)
        elif op == 0x52:  # REDUCE
            if len(stack) - 2 < fence:
                _corrupt("stack underflow in REDUCE", at)
            args = stack.pop()
            stack[-1] = _reduce(stack[-1], args)
        elif op == 0x62:  # BUILD
            if len(stack) - 2 < fence:
                _corrupt("stack underflow in BUILD", at)
            state = stack.pop()
            _build(stack[-1], state)
        elif op == 0x89:  # NEWFALSE
            push(False)
        elif op == 0x4E:  # NONE
            push(None)
        elif op == 0x88:  # NEWTRUE
            push(True)
        elif op == 0x43 or op == 0x42 or op == 0x96:
            # SHORT_BINBYTES, BINBYTES, BYTEARRAY8: where they are, not a copy
            width = 1 if op == 0x43 else (4 if op == 0x42 else 8)
            if pos + width > n:
                _corrupt(f"truncated {_opname(op)} length", at)
            length = int.from_bytes(data[pos : pos + width], "little")
            pos += width
            if length > n - pos:
                _corrupt(f"{_opname(op)} declares {length} bytes, {n - pos} remain", at)
            push(_Raw(pos, length, op == 0x96))
            pos += length
        elif op == 0x8C or op == 0x58:  # SHORT_BINUNICODE, BINUNICODE
            width = 1 if op == 0x8C else 4
            if pos + width > n:
                _corrupt(f"truncated {_opname(op)} length", at)
            length = int.from_bytes(data[pos : pos + width], "little")
            pos += width
            if length > n - pos:
                _corrupt(f"{_opname(op)} declares {length} bytes, {n - pos} remain", at)
            try:
                text = data[pos : pos + length].decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                _corrupt(f"{_opname(op)} is not UTF-8", at)
            push(text)
            pos += length
        elif op == 0x4A:  # BININT
            if pos + 4 > n:
                _corrupt("truncated BININT", at)
            push(_I32.unpack_from(data, pos)[0])
            pos += 4
        elif op == 0x4D:  # BININT2
            if pos + 2 > n:
                _corrupt("truncated BININT2", at)
            push(_U16.unpack_from(data, pos)[0])
            pos += 2
        elif op == 0x8A:  # LONG1
            if pos >= n:
                _corrupt("truncated LONG1", at)
            length = data[pos]
            pos += 1
            if length > 8:
                _unsafe(
                    f"metadata pickle LONG1 at offset {at} has {length} bytes "
                    "(at most 8 allowed)"
                )
            if length > n - pos:
                _corrupt(f"LONG1 declares {length} bytes, {n - pos} remain", at)
            push(int.from_bytes(data[pos : pos + length], "little", signed=True))
            pos += length
        elif op == 0x29:  # EMPTY_TUPLE
            push(())
        elif op == 0x5D:  # EMPTY_LIST
            push([])
        elif op == 0x61:  # APPEND
            if len(stack) - 2 < fence:
                _corrupt("stack underflow in APPEND", at)
            value = stack.pop()
            target = stack[-1]
            if type(target) is not list:
                _unsafe(
                    f"metadata pickle appends to {_type_name(target)} at offset "
                    f"{at}: not allowed"
                )
            if len(target) >= MAX_LIST_ITEMS:
                _unsafe(f"metadata pickle list exceeds {MAX_LIST_ITEMS} items")
            target.append(value)
        elif op == 0x93:  # STACK_GLOBAL
            if len(stack) - 2 < fence:
                _corrupt("stack underflow in STACK_GLOBAL", at)
            name_obj = stack.pop()
            module_obj = stack.pop()
            if type(module_obj) is not str or type(name_obj) is not str:
                _unsafe(
                    f"STACK_GLOBAL at offset {at} needs two strings, got "
                    f"{_type_name(module_obj)} and {_type_name(name_obj)}"
                )
            found = _GLOBALS.get((module_obj, name_obj))
            if found is None:
                _refuse_global(module_obj, name_obj)
            push(found)
        elif op == 0x63:  # GLOBAL
            module = _read_line(data, pos, at)
            pos += len(module) + 1
            name = _read_line(data, pos, at)
            pos += len(name) + 1
            names = (_decode_line(module, at), _decode_line(name, at))
            found = _GLOBALS.get(names)
            if found is None:
                _refuse_global(*names)
            push(found)
        elif op == 0x72 or op == 0x6A:  # LONG_BINPUT, LONG_BINGET
            if pos + 4 > n:
                _corrupt(f"truncated {_opname(op)}", at)
            key = _U32.unpack_from(data, pos)[0]
            pos += 4
            if op == 0x72:
                if len(stack) <= fence:
                    _corrupt("stack underflow in LONG_BINPUT", at)
                if len(memo) >= MAX_MEMO and key not in memo:
                    _unsafe(f"metadata pickle memo exceeds {MAX_MEMO} entries")
                memo[key] = stack[-1]
            else:
                value = memo.get(key, _MISSING)
                if value is _MISSING:
                    _corrupt(f"memo entry {key} is missing", at)
                push(value)
        elif op == 0x95:  # FRAME: checked, then ignored (no buffering)
            if pos + 8 > n:
                _corrupt("truncated FRAME", at)
            length = _U64.unpack_from(data, pos)[0]
            pos += 8
            if length > n - pos:
                _corrupt(f"FRAME declares {length} bytes, {n - pos} remain", at)
        elif op == 0x2E:  # STOP
            if marks:
                _corrupt("STOP inside an unclosed MARK", at)
            if len(stack) != 1:
                _corrupt(f"STOP with {len(stack)} objects on the stack", at)
            if pos != n:
                _corrupt(f"{n - pos} bytes after STOP", pos)
            return stack[0]
        else:
            _refuse_opcode(data, op, at, top_level=not stack and not marks)


def _read_line(data: bytes, pos: int, at: int) -> bytes:
    end = data.find(b"\n", pos, min(len(data), pos + MAX_GLOBAL_LINE + 1))
    if end < 0:
        if len(data) - pos <= MAX_GLOBAL_LINE:
            _corrupt("GLOBAL name without its newline", at)
        _unsafe(
            f"metadata pickle GLOBAL at offset {at} names something longer than "
            f"{MAX_GLOBAL_LINE} bytes"
        )
    return data[pos:end]


def _decode_line(raw: bytes, at: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        _corrupt("GLOBAL name is not UTF-8", at)


# -- results and templates -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Template:
    """What a validated pickle looked like outside its array data."""

    size: int
    #: (offset, bytes) of every stretch of the pickle that is not array data.
    checks: tuple[tuple[int, bytes], ...]
    #: The distinct arrays, and which one each element of the list is.
    specs: tuple[_ArraySpec, ...]
    layout: tuple[int, ...]
    #: True when every element is a distinct 1-D array (the usual case).
    simple: bool
    #: ``checks`` as one integer comparison, for pickles up to
    #: ``_INT_MATCH_MAX`` bytes: ``int.from_bytes(raw, "little") & mask ==
    #: expected`` exactly when every byte outside the array data equals the
    #: template's (``mask`` is 0 when the loop over ``checks`` is used instead).
    mask: int
    expected: int
    #: True when every element is a distinct array in C order: the arrays can be
    #: described by a :class:`MetadataLayout` and built lazily.
    one_to_one: bool


#: Largest pickle matched with one integer comparison (one pass over ~0.7 kB
#: beats ten ``startswith`` calls; a huge pickle with few arrays would not).
_INT_MATCH_MAX: Final = 4096


def _matches(raw: bytes, template: _Template) -> bool:
    """Whether ``raw`` (of the template's size) equals the template outside the
    array data, byte for byte."""
    if template.mask:
        return int.from_bytes(raw, "little") & template.mask == template.expected
    return all(raw.startswith(chunk, offset) for offset, chunk in template.checks)


def _materialise(data: bytes, template: _Template) -> list[npt.NDArray[Any]]:
    """Read-only arrays viewing ``data`` (bytes) as the template says."""
    frombuffer = np.frombuffer
    if template.simple:
        # (positional arguments: np.frombuffer is ~3x slower with keywords)
        return [frombuffer(data, s.dtype, s.count, s.offset) for s in template.specs]
    built: list[npt.NDArray[Any]] = []
    for spec in template.specs:
        arr = frombuffer(data, spec.dtype, spec.count, spec.offset)
        if spec.order is not None:
            arr = arr.reshape(spec.shape, order=spec.order)
        built.append(arr)
    return [built[i] for i in template.layout]


def _decode_full(data: bytes) -> tuple[list[npt.NDArray[Any]], _Template]:
    try:
        result = _run(data)
    except RecursionError as exc:  # not expected: the VM does not recurse
        raise UnsafeMetadataError("metadata pickle nests too deeply") from exc
    if not isinstance(result, list | tuple):
        raise UnsafeMetadataError(
            f"metadata pickle holds {_type_name(result)}, expected a list of arrays"
        )
    if len(result) > MAX_METADATA_ARRAYS:
        raise UnsafeMetadataError(
            f"metadata pickle holds {len(result)} arrays (at most "
            f"{MAX_METADATA_ARRAYS} allowed)"
        )
    specs: list[_ArraySpec] = []
    index: dict[int, int] = {}
    layout: list[int] = []
    regions: dict[int, int] = {}
    for i, item in enumerate(result):
        if not isinstance(item, _Array) or item.spec is None or item.raw is None:
            raise UnsafeMetadataError(
                f"metadata element {i} is {_type_name(item)}, not a numpy array"
            )
        key = id(item)
        if key not in index:
            index[key] = len(specs)
            specs.append(item.spec)
            regions[item.raw.offset] = item.raw.length
        layout.append(index[key])
    checks: list[tuple[int, bytes]] = []
    pos = 0
    for offset in sorted(regions):
        if offset > pos:
            checks.append((pos, data[pos:offset]))
        pos = max(pos, offset + regions[offset])
    if pos < len(data):
        checks.append((pos, data[pos:]))
    mask = 0
    if len(data) <= _INT_MATCH_MAX:
        for offset, chunk in checks:
            mask |= ((1 << (8 * len(chunk))) - 1) << (8 * offset)
    distinct = layout == list(range(len(specs)))
    template = _Template(
        size=len(data),
        checks=tuple(checks),
        specs=tuple(specs),
        layout=tuple(layout),
        simple=distinct and all(spec.order is None for spec in specs),
        mask=mask,
        expected=int.from_bytes(data, "little") & mask,
        one_to_one=distinct and all(spec.order != "F" for spec in specs),
    )
    return _materialise(data, template), template


def _check_size(size: int) -> None:
    if size > MAX_METADATA_BYTES:
        raise UnsafeMetadataError(
            f"metadata pickle of {size} bytes exceeds the {MAX_METADATA_BYTES} limit"
        )
    if size == 0:
        raise ProtocolError("empty metadata part")


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """The pickle as an immutable bytes object (a copy only if it is not one).

    Decoding from ``bytes`` makes the arrays read-only and immune to the
    caller reusing a writable buffer (a ``bytearray``, a ``zmq.Frame``).
    """
    if type(data) is bytes:
        raw = data
        _check_size(len(raw))
    else:
        view = memoryview(data)
        _check_size(view.nbytes)  # before any copy
        obj = view.obj
        if type(obj) is bytes and len(obj) == view.nbytes and view.c_contiguous:
            raw = obj  # a view of a whole bytes object: no copy needed
        else:
            raw = view.tobytes()
    if raw[0] != 0x80:
        raise ProtocolError(
            f"metadata part is not a pickle (first byte {raw[0]:#04x}, expected 0x80)"
        )
    return raw


def decode_metadata(data: bytes | bytearray | memoryview) -> list[npt.NDArray[Any]]:
    """Decode a metadata pickle into a list of numpy arrays, executing nothing.

    Runs the restricted pickle VM every time (see :class:`MetadataDecoder` for
    the fast path of a stream). The arrays are read-only views of an immutable
    copy of ``data`` (no copy when ``data`` is ``bytes``). Raises
    :class:`UnsafeMetadataError` for anything but a list of plain numeric numpy
    arrays, and :class:`ProtocolError` for a corrupt pickle.
    """
    return _decode_full(_as_bytes(data))[0]


class MetadataDecoder:
    """Decode a stream of metadata pickles, fast when they share a layout.

    >>> decoder = MetadataDecoder()
    >>> arrays = decoder.decode(pickle_bytes)     # the full VM, then a template
    >>> arrays = decoder.decode(next_frame_bytes)  # same layout: sliced directly
    >>> decoder.fast_hits, decoder.full_decodes
    (1, 1)

    ``decode`` gives exactly what :func:`decode_metadata` gives, and raises the
    same errors. Not thread-safe: use one per stream.
    """

    __slots__ = ("_layouts", "_template", "fast_hits", "full_decodes")

    def __init__(self) -> None:
        self._template: _Template | None = None
        #: Every layout handed out, so that equal layouts are one object.
        self._layouts: dict[MetadataLayout, MetadataLayout] = {}
        #: Pickles decoded from the template, without running the VM.
        self.fast_hits = 0
        #: Pickles that went through the full VM (successfully or not).
        self.full_decodes = 0

    def decode(self, data: bytes | bytearray | memoryview) -> list[npt.NDArray[Any]]:
        raw, template, arrays = self._decode_template(data)
        return _materialise(raw, template) if arrays is None else arrays

    def _decode_template(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[bytes, _Template, list[npt.NDArray[Any]] | None]:
        """The pickle as bytes and the validated template it matches; the arrays
        too when the full VM ran (None on a fast hit: nothing built yet)."""
        raw = _as_bytes(data)
        template = self._template
        if template is not None and len(raw) == template.size:
            if template.mask:
                if int.from_bytes(raw, "little") & template.mask == template.expected:
                    self.fast_hits += 1
                    return raw, template, None
            elif _matches(raw, template):
                self.fast_hits += 1
                return raw, template, None
        self.full_decodes += 1
        arrays, self._template = _decode_full(raw)
        return raw, self._template, arrays

    def _layout(
        self, template: _Template, names: Sequence[str]
    ) -> MetadataLayout | None:
        """The layout of ``template``'s arrays under ``names`` (one name per
        array), or None when the arrays cannot be described by one: an array
        listed twice, a Fortran-ordered one, or names that are not distinct."""
        if (
            not template.one_to_one
            or len(names) != len(template.specs)
            or len(set(names)) != len(names)
        ):
            return None
        layout = MetadataLayout(
            size=template.size,
            fields=tuple(
                MetadataField(name, spec.dtype, spec.shape, spec.offset)
                for name, spec in zip(names, template.specs, strict=True)
            ),
        )
        if len(self._layouts) >= _MAX_LAYOUTS:
            self._layouts.clear()
        return self._layouts.setdefault(layout, layout)

    def reset(self) -> None:
        """Forget the template (the next pickle runs the full VM)."""
        self._template = None


#: Distinct layouts a :class:`MetadataDecoder` remembers (a stream has one or two).
_MAX_LAYOUTS: Final = 64


# -- lazy metadata -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MetadataField:
    """One named array of a metadata pickle ``raw``: in C order, it is
    ``np.frombuffer(raw, dtype, math.prod(shape), offset).reshape(shape)``."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int

    @property
    def count(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def view(self, raw: bytes) -> npt.NDArray[Any]:
        """This array of the pickle ``raw``: a view (read-only for ``bytes``)."""
        arr = np.frombuffer(raw, self.dtype, math.prod(self.shape), self.offset)
        return arr if len(self.shape) == 1 else arr.reshape(self.shape)


@dataclass(frozen=True, slots=True)
class MetadataLayout:
    """Where every named array is in a metadata pickle of ``size`` bytes.

    Frames decoded through the same validated template and the same names
    share one layout object, so a consumer can group frames by ``layout`` (an
    ``is`` test), copy their pickles into one block and view all of a column
    at once with :meth:`columns`. Hashable; compares by value.
    """

    size: int
    fields: tuple[MetadataField, ...]
    #: The names of ``fields``, in order.
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _name_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(f.name for f in self.fields)
        if len(set(names)) != len(names):
            raise ValueError(f"metadata layout names are not distinct: {names}")
        for f in self.fields:
            if f.offset < 0 or f.offset + f.nbytes > self.size:
                raise ValueError(
                    f"metadata field {f.name} ({f.nbytes} bytes at offset "
                    f"{f.offset}) does not fit in {self.size} bytes"
                )
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "_name_set", frozenset(names))

    def columns(
        self,
        block: bytes | bytearray | memoryview | npt.NDArray[Any],
        count: int | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Every field of ``count`` pickles of this layout laid end to end in
        ``block`` (C-contiguous, e.g. ``bytes`` or a ``(count, size)`` uint8
        array; ``count`` defaults to all of it).

        The column ``name`` is a ``(count, *shape)`` strided view of ``block``
        whose row ``i`` equals ``FrameMetadata(pickle_i, layout)[name]``. No
        copy: read-only when ``block`` is, writable views of it otherwise.
        """
        buf = block.data if isinstance(block, np.ndarray) else memoryview(block)
        if buf.ndim != 1 or buf.itemsize != 1:
            buf = buf.cast("B")
        total = buf.nbytes
        if count is None:
            if total % self.size:
                raise ValueError(
                    f"block of {total} bytes is not a whole number of "
                    f"{self.size}-byte pickles"
                )
            count = total // self.size
        elif count < 0 or count * self.size > total:
            raise ValueError(
                f"block of {total} bytes does not hold {count} pickles of "
                f"{self.size} bytes"
            )
        out: dict[str, npt.NDArray[Any]] = {}
        for f in self.fields:
            shape = (count, *f.shape)
            if count == 0 or f.count == 0:
                empty = np.zeros(shape, f.dtype)
                empty.flags.writeable = False
                out[f.name] = empty
                continue
            inner = [f.dtype.itemsize] * len(f.shape)
            for i in range(len(f.shape) - 2, -1, -1):
                inner[i] = inner[i + 1] * f.shape[i + 1]
            out[f.name] = np.ndarray(shape, f.dtype, buf, f.offset, (self.size, *inner))
        return out


class FrameMetadata(Mapping[str, npt.NDArray[Any]]):
    """The metadata arrays of one frame, built from its pickle when first read.

    A read-only mapping, name to array, in the order of ``layout.fields``; the
    arrays are read-only views of ``raw`` (built all at once on the first
    access to a value, then kept). ``raw`` is the pickle, already validated by
    the decoder's template; ``layout`` says where each array is and is shared by
    every frame of the same template and names.
    """

    __slots__ = ("_arrays", "_layout", "_raw")

    def __init__(self, raw: bytes, layout: MetadataLayout) -> None:
        if type(raw) is not bytes:
            raise TypeError(
                f"FrameMetadata needs the pickle as bytes, not {type(raw).__name__}"
            )
        if len(raw) != layout.size:
            raise ValueError(
                f"pickle of {len(raw)} bytes does not match a {layout.size}-byte layout"
            )
        self._raw = raw
        self._layout = layout
        self._arrays: dict[str, npt.NDArray[Any]] | None = None

    @property
    def raw(self) -> bytes:
        """The metadata pickle, as received."""
        return self._raw

    @property
    def layout(self) -> MetadataLayout:
        return self._layout

    def _materialise(self) -> dict[str, npt.NDArray[Any]]:
        arrays = self._arrays
        if arrays is None:
            raw = self._raw
            arrays = {f.name: f.view(raw) for f in self._layout.fields}
            self._arrays = arrays
        return arrays

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        return self._materialise()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout.names)

    def __len__(self) -> int:
        return len(self._layout.names)

    def __contains__(self, name: object) -> bool:
        return name in self._layout._name_set

    def values(self) -> ValuesView[npt.NDArray[Any]]:
        return self._materialise().values()

    def items(self) -> ItemsView[str, npt.NDArray[Any]]:
        return self._materialise().items()

    def __repr__(self) -> str:
        return f"FrameMetadata({self._materialise()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrameMetadata, (self._raw, self._layout))


def encode_metadata(arrays: Sequence[npt.NDArray[Any]], protocol: int = 4) -> bytes:
    """Pickle a list of numpy arrays as the detector does (protocol 3 or 4)."""
    if protocol not in (3, 4):
        raise ValueError("the detector sends pickle protocol 3 or 4")
    return pickle.dumps([np.asarray(a) for a in arrays], protocol=protocol)
