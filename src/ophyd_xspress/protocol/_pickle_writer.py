"""The metadata pickle written as the detector writes it, for any installed numpy.

The MAX IV device pickles its list of numpy arrays with a numpy 1.x, whose
arrays name ``numpy.core.multiarray._reconstruct``. numpy 2's own pickles name
``numpy._core.multiarray`` instead, which numpy < 1.26 cannot import: a
simulator pickling with :func:`pickle.dumps` under numpy 2 sends a stream that
the real device's consumers (a dranspose worker, MAX IV's receivers) cannot
read. The standard pickler cannot be told to write another module name for a
global (it checks that the name imports back to the same object), so this
module writes the opcodes itself: the values numpy's own ``__reduce__`` gives
for each array and dtype, under the names the device writes, with the memo
used exactly as CPython's pickler uses it. The result is byte-identical to the
real captures (``tests/protocol/test_pickle_writer.py``):

* protocol 3 (the legacy three-message firmware): ``GLOBAL`` opcodes, ``BINPUT``
  memo entries, dtype flags written as the integers ``0, 1`` (the device's
  numpy of that time);
* protocol 4 (the multipart firmware): one ``FRAME``, ``STACK_GLOBAL``,
  ``MEMOIZE``, dtype flags as booleans.

Both decode with :func:`~ophyd_xspress.protocol.decode_metadata`, and with the
standard unpickler under numpy 1.x and 2.x (numpy 2 keeps ``numpy.core`` as an
alias for reading old pickles). Sans-IO: bytes out, nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["RECONSTRUCT_MODULE", "pickle_arrays"]

#: Where the device's pickles find the array constructor.
RECONSTRUCT_MODULE: Final = "numpy.core.multiarray"
#: CPython's pickler writes no FRAME for a body shorter than this.
_FRAME_SIZE_MIN: Final = 4
#: CPython's pickler writes a list's items in APPENDS batches of this many.
_BATCH: Final = 1000


class _Writer:
    """Opcodes of one pickle, with a memo keyed like CPython's (see ``_memo``)."""

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.memo: dict[object, int] = {}

    # -- the memo ------------------------------------------------------------
    def _memo(self, key: object) -> None:
        """Remember the object just built under ``key`` (the pickler's memo is
        keyed by identity; for the device's arrays equal strings, numpy's
        shared ``b'b'`` and its canonical dtypes are the same objects, so
        value keys give the same references)."""
        index = len(self.memo)
        self.memo[key] = index
        if self.protocol >= 4:
            self.out += b"\x94"  # MEMOIZE
        elif index < 256:
            self.out += b"q" + bytes([index])  # BINPUT
        else:
            self.out += b"r" + struct.pack("<I", index)  # LONG_BINPUT

    def _get(self, key: object) -> bool:
        index = self.memo.get(key)
        if index is None:
            return False
        if index < 256:
            self.out += b"h" + bytes([index])  # BINGET
        else:
            self.out += b"j" + struct.pack("<I", index)  # LONG_BINGET
        return True

    # -- values ----------------------------------------------------------------
    def value(self, obj: object) -> None:
        if obj is None:
            self.out += b"N"
        elif obj is True or obj is False:
            self.out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, str):
            self._str(obj)
        elif isinstance(obj, bytes):
            self._bytes(obj)
        elif isinstance(obj, tuple):
            self._tuple(obj)
        elif isinstance(obj, np.dtype):
            self.dtype(obj)
        else:
            raise TypeError(f"cannot write a {type(obj).__name__} in a metadata pickle")

    def _int(self, n: int) -> None:
        if 0 <= n < 256:
            self.out += b"K" + bytes([n])  # BININT1
        elif 0 <= n < 65536:
            self.out += b"M" + struct.pack("<H", n)  # BININT2
        elif -(2**31) <= n < 2**31:
            self.out += b"J" + struct.pack("<i", n)  # BININT
        else:
            size = (n.bit_length() + 8) // 8
            self.out += (
                b"\x8a" + bytes([size]) + n.to_bytes(size, "little", signed=True)
            )

    def _str(self, s: str) -> None:
        if self._get(("str", s)):
            return
        raw = s.encode("utf-8", "surrogatepass")
        if self.protocol >= 4 and len(raw) < 256:
            self.out += b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE
        else:
            self.out += b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE
        self._memo(("str", s))

    def _bytes(self, b: bytes) -> None:
        # numpy's typecode b'b' is one shared object; array data never is
        key = ("bytes", b) if b == b"b" else ("data", len(self.memo))
        if self._get(key):
            return
        if len(b) < 256:
            self.out += b"C" + bytes([len(b)]) + b  # SHORT_BINBYTES
        else:
            self.out += b"B" + struct.pack("<I", len(b)) + b  # BINBYTES
        self._memo(key)

    def _tuple(self, items: tuple[object, ...]) -> None:
        if not items:
            self.out += b")"  # EMPTY_TUPLE (never memoised)
            return
        if len(items) > 3:
            self.out += b"("  # MARK
        for item in items:
            self.value(item)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t")
        self._memo(("tuple", len(self.memo)))  # a new tuple: never referenced again

    def global_(self, module: str, name: str) -> None:
        if self._get(("global", module, name)):
            return
        if self.protocol >= 4:
            self._str(module)
            self._str(name)
            self.out += b"\x93"  # STACK_GLOBAL
        else:
            self.out += b"c" + f"{module}\n{name}\n".encode()  # GLOBAL
        self._memo(("global", module, name))

    def list_(self, items: Sequence[npt.NDArray[Any]]) -> None:
        """A new list of arrays, appended in the pickler's batches."""
        self.out += b"]"  # EMPTY_LIST
        self._memo(("list", len(self.memo)))
        for start in range(0, len(items), _BATCH):
            batch = items[start : start + _BATCH]
            if len(batch) > 1:
                self.out += b"("  # MARK
            for item in batch:
                self.array(item)
            self.out += b"e" if len(batch) > 1 else b"a"  # APPENDS / APPEND

    # -- numpy -----------------------------------------------------------------
    def dtype(self, dtype: np.dtype[Any]) -> None:
        """``numpy.dtype(str, flags...)`` then its state, as numpy reduces it."""
        key = ("dtype", dtype.str)
        if self._get(key):
            return
        _, args, state = dtype.__reduce__()
        if self.protocol < 4:
            # the legacy capture's numpy wrote the two flags as 0 and 1
            args = tuple(int(a) if isinstance(a, bool) else a for a in args)
        self.global_("numpy", "dtype")
        self.value(args)
        self.out += b"R"  # REDUCE
        self._memo(key)
        self.value(state)
        self.out += b"b"  # BUILD

    def array(self, array: npt.NDArray[Any]) -> None:
        """``_reconstruct(ndarray, (0,), b'b')`` then the state numpy gives:
        ``(1, shape, dtype, fortran, raw bytes)``."""
        key = ("array", id(array))
        if self._get(key):
            return
        _, (_, base_shape, typecode), state = array.__reduce__()
        self.global_(RECONSTRUCT_MODULE, "_reconstruct")
        self.global_("numpy", "ndarray")
        self.value(base_shape)
        self.value(typecode)
        self.out += b"\x87"  # TUPLE3: the arguments
        self._memo(("tuple", len(self.memo)))
        self.out += b"R"  # REDUCE
        self._memo(key)
        self.value(state)
        self.out += b"b"  # BUILD


def pickle_arrays(arrays: Sequence[npt.NDArray[Any]], protocol: int) -> bytes:
    """A list of numpy arrays pickled as the detector pickles it (3 or 4)."""
    if protocol not in (3, 4):
        raise ValueError("the detector sends pickle protocol 3 or 4")
    writer = _Writer(protocol)
    writer.list_([np.asarray(a) for a in arrays])
    writer.out += b"."  # STOP
    body = bytes(writer.out)
    head = b"\x80" + bytes([protocol])
    if protocol >= 4 and len(body) >= _FRAME_SIZE_MIN:
        head += b"\x95" + struct.pack("<Q", len(body))  # FRAME
    return head + body
