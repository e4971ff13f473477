"""Pre-scan of a metadata pickle with :func:`pickletools.genops`, before any
unpickler sees it (the first gate of :mod:`._pickle`).

:func:`pickletools.genops` reads an :class:`io.BytesIO`, which never returns
more than the bytes present, so a lying declared length costs nothing. Before
each opcode is parsed, its byte is checked against :data:`ALLOWED_OPCODES`;
after, its declared length against what remains. The scan then follows the
*kind* of every stack item (list, tuple, a string's value, an allowed global,
an array or dtype being built; never a value that could be large), which
bounds the stack, the MARK nesting, the memo index and the list items, names
globals only with allow-listed strings (also when STACK_GLOBAL takes them from
the memo), and lets REDUCE call only an allowed global, BUILD apply only to an
array or dtype and APPEND(S) target only a list. Stack underflows, missing memo
entries and a malformed end are corrupt pickles. What passes can make the C
unpickler allocate no more than the pickle's own size: every length fits in it,
the memo array it resizes to the largest index stays under :data:`MAX_MEMO`.

Why kinds, not just opcodes: STACK_GLOBAL takes its names from the stack, and
numpy's own pickles fetch them from the memo (``BINGET`` of ``'numpy'``), so
allow-listing the strings that can name a global means knowing which strings
are on the stack; and a REDUCE or BUILD aimed at a list, a tuple or a global
must be refused before the C unpickler would call it or set its attributes.
No value other than a string is kept, so this is no second unpickler.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import Final, NoReturn, TypeAlias

from ._errors import ProtocolError, UnsafeMetadataError

__all__ = [
    "ALLOWED_GLOBALS",
    "ALLOWED_OPCODES",
    "MAX_LIST_ITEMS",
    "MAX_MARKS",
    "MAX_MEMO",
    "MAX_OPCODES",
    "MAX_STACK",
    "prescan",
    "refuse_global",
]

#: Bounds (a real 9-array pickle has about 300 opcodes, a stack of 12, 3 nested
#: MARKs, 100 memo entries and 9 list items).
MAX_OPCODES: Final = 16_384
MAX_STACK: Final = 1_024
MAX_MARKS: Final = 32
#: Memo indices must be below this (the C unpickler's memo is an array as long
#: as the largest index used).
MAX_MEMO: Final = 4_096
#: Items appended to lists, all lists together.
MAX_LIST_ITEMS: Final = 1_024
#: Longest LONG1 integer, in bytes.
MAX_LONG_BYTES: Final = 8

#: The opcodes of numpy array pickles, protocol 2 to 5 (PROTO only first).
#: BINBYTES8 and BINUNICODE8 are left out: a pickler writes them only for
#: payloads over 4 GiB, far beyond any metadata pickle we accept.
ALLOWED_OPCODES: Final = frozenset(
    {
        *("PROTO", "FRAME", "STOP", "MARK", "EMPTY_LIST", "EMPTY_TUPLE"),
        *("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "APPEND", "APPENDS"),
        *("GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD"),
        *("SHORT_BINUNICODE", "BINUNICODE", "SHORT_BINBYTES", "BINBYTES"),
        *("BYTEARRAY8", "BININT1", "BININT2", "BININT", "LONG1"),
        *("NONE", "NEWTRUE", "NEWFALSE"),
        *("MEMOIZE", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET"),
    }
)

_NDARRAY_MAKERS: Final = {"_reconstruct", "_frombuffer"}
#: The globals a metadata pickle may name: numpy's array reconstruction.
ALLOWED_GLOBALS: Final = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)

_CODES: Final[dict[int, str]] = {ord(op.code): op.name for op in pickletools.opcodes}
_CODE_OF: Final[dict[str, int]] = {name: code for code, name in _CODES.items()}
#: Width of the declared length (or size) that follows these opcodes.
_LENGTH_WIDTH: Final = {
    "SHORT_BINBYTES": 1,
    "BINBYTES": 4,
    "BYTEARRAY8": 8,
    "SHORT_BINUNICODE": 1,
    "BINUNICODE": 4,
    "LONG1": 1,
}
#: What an opcode outside the allowlist would have built, for the message when
#: it is the pickle's top-level object.
_BUILDS: Final = {
    **dict.fromkeys(("EMPTY_DICT", "DICT"), "dict"),
    **dict.fromkeys(("EMPTY_SET",), "set"),
    **dict.fromkeys(("FROZENSET",), "frozenset"),
    **dict.fromkeys(("BINFLOAT", "FLOAT"), "float"),
    **dict.fromkeys(("INT", "LONG", "LONG4"), "int"),
    **dict.fromkeys(("LIST",), "list"),
    **dict.fromkeys(("BINBYTES8",), "bytes"),
    **dict.fromkeys(
        ("UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINUNICODE8"), "str"
    ),
}


class _Kind:
    """What a stack item is; ``makes`` is what REDUCE on it builds (None: it
    cannot be called)."""

    __slots__ = ("makes", "name")

    def __init__(self, name: str, makes: _Kind | None = None) -> None:
        self.name = name
        self.makes = makes


_LIST, _TUPLE, _INT, _BOOL = _Kind("list"), _Kind("tuple"), _Kind("int"), _Kind("bool")
_NONE, _BYTES, _BYTEARRAY = _Kind("NoneType"), _Kind("bytes"), _Kind("bytearray")
_ARRAY, _DTYPE = _Kind("a numpy array"), _Kind("a numpy dtype")
_GLOBAL_KINDS: Final = {
    (module, name): _Kind(
        f"the global {module}.{name}",
        _ARRAY if name in _NDARRAY_MAKERS else (_DTYPE if name == "dtype" else None),
    )
    for module, name in ALLOWED_GLOBALS
}
#: What the opcodes that push a fixed kind push.
_PUSHES: Final = {
    "EMPTY_LIST": _LIST,
    "EMPTY_TUPLE": _TUPLE,
    "NONE": _NONE,
    "NEWTRUE": _BOOL,
    "NEWFALSE": _BOOL,
    "BININT1": _INT,
    "BININT2": _INT,
    "BININT": _INT,
    "LONG1": _INT,
    "SHORT_BINBYTES": _BYTES,
    "BINBYTES": _BYTES,
    "BYTEARRAY8": _BYTEARRAY,
}
#: A stack item: its kind, or a string's value (the only values kept).
_Slot: TypeAlias = "_Kind | str"


def _slot_name(slot: _Slot) -> str:
    return "str" if isinstance(slot, str) else slot.name


def safe_text(text: str, limit: int = 100) -> str:
    """A name from the network, shortened, shown as-is only if printable."""
    short = text[:limit]
    if not short.isprintable():
        short = short.encode("ascii", "backslashreplace").decode("ascii")
    return short + ("..." if len(text) > limit else "")


def _opname(name: str) -> str:
    return f"{name} ({_CODE_OF[name]:#04x})"


def _corrupt(what: str, at: int) -> NoReturn:
    raise ProtocolError(f"corrupt metadata pickle: {what} at offset {at}")


def _unsafe(what: str) -> NoReturn:
    raise UnsafeMetadataError(what)


def refuse_global(module: str, name: str) -> NoReturn:
    raise UnsafeMetadataError(
        f"metadata pickle references {safe_text(module)}.{safe_text(name)}: "
        "only numpy arrays of plain numeric dtypes are allowed"
    )


class _NamedError(Exception):
    """The name an extension code is registered under (see _extension)."""


class _NameOnly(pickle.Unpickler):
    def find_class(self, module_name: str, global_name: str, /) -> NoReturn:
        raise _NamedError(f"{safe_text(module_name)}.{safe_text(global_name)}")


def _extension(data: bytes, at: int, width: int) -> str:
    """What an EXT opcode's code is registered as, for the message: asked of
    copyreg's registry through a throwaway unpickler that resolves nothing (a
    code already resolved in this process comes back as its cached object,
    which is named, never called)."""
    if at + 1 + width > len(data):
        return " (extension code truncated)"
    code = int.from_bytes(data[at + 1 : at + 1 + width], "little")
    probe = b"\x80\x02\x84" + code.to_bytes(4, "little") + b"."
    try:
        found = _NameOnly(io.BytesIO(probe), fix_imports=False).load()
    except _NamedError as named:
        return f" (extension code {code}, registered as {named})"
    except Exception:
        return f" (extension code {code}, not registered)"
    module = safe_text(str(getattr(found, "__module__", "?")))
    return f" (extension code {code}, registered as {module}.{type(found).__name__})"


def _refuse_opcode(data: bytes, at: int, top_level: bool) -> NoReturn:
    code = data[at]
    name = _CODES.get(code)
    if name is None:
        _corrupt(f"byte {code:#04x} is not a pickle opcode", at)
    reason = ""
    if name in ("PERSID", "BINPERSID"):
        reason = " (persistent ids are not allowed)"
    elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
        reason = " (out-of-band buffers are not allowed)"
    elif name in ("EXT1", "EXT2", "EXT4"):
        reason = _extension(data, at, int(name[3]))
    elif name == "PROTO":
        reason = " (only as the first opcode)"
    message = (
        f"metadata pickle opcode {name} ({code:#04x}) at offset {at} is not "
        f"allowed{reason}: only numpy arrays of plain numeric dtypes are accepted"
    )
    if top_level and name in _BUILDS:
        message = (
            f"metadata pickle holds {_BUILDS[name]}, expected a list of arrays "
            f"({message})"
        )
    raise UnsafeMetadataError(message)


def _bad_argument(data: bytes, at: int, name: str) -> NoReturn:
    """Why genops could not read the argument of the allowed opcode at ``at``."""
    width = _LENGTH_WIDTH.get(name)
    start = at + 1
    if width is not None and start + width <= len(data):
        declared = int.from_bytes(data[start : start + width], "little")
        remain = len(data) - start - width
        if declared > remain:
            _corrupt(f"{_opname(name)} declares {declared} bytes, {remain} remain", at)
        _corrupt(f"{_opname(name)} is not UTF-8", at)  # (the only other failure)
    if name == "GLOBAL" and data.count(b"\n", start) >= 2:
        _corrupt("GLOBAL name is not UTF-8", at)
    _corrupt(f"truncated {_opname(name)}", at)


class _Scan:
    """One pass over a pickle; :meth:`run` returns its bytes payloads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.stack: list[_Slot] = []
        self.marks: list[int] = []
        self.memo: dict[int, _Slot] = {}
        self.appended = 0
        #: (offset, length) of every SHORT_BINBYTES / BINBYTES / BYTEARRAY8 payload
        self.payloads: list[tuple[int, int]] = []

    def run(self) -> list[tuple[int, int]]:
        data = self.data
        n = len(data)
        if n < 2:
            _corrupt("PROTO opcode without its version", n)
        if not 2 <= data[1] <= 5:
            raise ProtocolError(
                f"metadata pickle protocol {data[1]} is not supported (expected 2 to 5)"
            )
        stream = io.BytesIO(data)
        ops = pickletools.genops(stream)
        for count in range(MAX_OPCODES + 1):
            at = stream.tell()
            if at >= n:
                _corrupt("pickle ended without STOP", at)
            name = _CODES.get(data[at], "")
            if name not in ALLOWED_OPCODES or (name == "PROTO" and at):
                _refuse_opcode(data, at, top_level=not self.stack and not self.marks)
            if count == MAX_OPCODES:
                break
            try:
                arg = next(ops)[1]
            except ValueError:
                _bad_argument(data, at, name)
            if name == "STOP":
                self._stop(at)
                return self.payloads
            self._step(name, arg, at)
        _unsafe(f"metadata pickle runs more than {MAX_OPCODES} opcodes")

    # -- the stack -----------------------------------------------------------
    def _push(self, slot: _Slot) -> None:
        self.stack.append(slot)
        if len(self.stack) > MAX_STACK:
            _unsafe(f"metadata pickle stack exceeds {MAX_STACK} items")

    def _pop(self, k: int, name: str, at: int) -> list[_Slot]:
        """The top ``k`` items, which must be above the current MARK."""
        stack = self.stack
        if len(stack) - k < (self.marks[-1] if self.marks else 0):
            _corrupt(f"stack underflow in {_opname(name)}", at)
        items = stack[len(stack) - k :]
        del stack[len(stack) - k :]
        return items

    def _pop_mark(self, name: str, at: int) -> list[_Slot]:
        """Everything above the last MARK, and the MARK."""
        if not self.marks:
            _corrupt(f"{_opname(name)} without MARK", at)
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def _top(self, name: str, at: int) -> _Slot:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            _corrupt(f"stack underflow in {_opname(name)}", at)
        return self.stack[-1]

    # -- the opcodes ---------------------------------------------------------
    def _step(self, name: str, arg: object, at: int) -> None:
        kind = _PUSHES.get(name)
        if kind is not None:
            if kind is _BYTES or kind is _BYTEARRAY:
                length = len(arg)  # type: ignore[arg-type]
                self.payloads.append((at + 1 + _LENGTH_WIDTH[name], length))
            elif name == "LONG1" and self.data[at + 1] > MAX_LONG_BYTES:
                _unsafe(
                    f"metadata pickle LONG1 at offset {at} has {self.data[at + 1]} "
                    f"bytes (at most {MAX_LONG_BYTES} allowed)"
                )
            self._push(kind)
        elif name in ("SHORT_BINUNICODE", "BINUNICODE"):
            self._push(str(arg))
        elif name in ("MEMOIZE", "BINPUT", "LONG_BINPUT"):
            index = len(self.memo) if name == "MEMOIZE" else int(arg)  # type: ignore[call-overload]
            if index >= MAX_MEMO:
                _unsafe(
                    f"metadata pickle memo exceeds {MAX_MEMO} entries ({name} of "
                    f"entry {index} at offset {at})"
                )
            self.memo[index] = self._top(name, at)
        elif name in ("BINGET", "LONG_BINGET"):
            slot = self.memo.get(int(arg))  # type: ignore[call-overload]
            if slot is None:
                _corrupt(f"memo entry {arg} is missing", at)
            self._push(slot)
        elif name == "MARK":
            if len(self.marks) >= MAX_MARKS:
                _unsafe(f"metadata pickle nests more than {MAX_MARKS} MARKs")
            self.marks.append(len(self.stack))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            self._pop(int(name[5]), name, at)
            self._push(_TUPLE)
        elif name == "TUPLE":
            self._pop_mark(name, at)
            self._push(_TUPLE)
        elif name in ("APPEND", "APPENDS"):
            self._append(name, at)
        elif name in ("REDUCE", "BUILD"):
            self._call(name, at)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            self._global(name, arg, at)
        elif name == "FRAME":
            remain = len(self.data) - at - 9
            if int(arg) > remain:  # type: ignore[call-overload]
                _corrupt(f"FRAME declares {arg} bytes, {remain} remain", at)
        # PROTO (first opcode only): its version was checked before the scan

    def _append(self, name: str, at: int) -> None:
        if name == "APPEND":
            target = self._pop(2, name, at)[0]
            count = 1
        else:
            count = len(self._pop_mark(name, at))
            target = self._pop(1, name, at)[0]
        if target is not _LIST:
            _unsafe(
                f"metadata pickle appends to {_slot_name(target)} at offset {at}: "
                "not allowed"
            )
        self.appended += count
        if self.appended > MAX_LIST_ITEMS:
            _unsafe(f"metadata pickle appends more than {MAX_LIST_ITEMS} list items")
        self.stack.append(target)

    def _call(self, name: str, at: int) -> None:
        """REDUCE (call an allowed global) or BUILD (set an array or dtype's state)."""
        target, arg = self._pop(2, name, at)
        if name == "REDUCE":
            makes = target.makes if isinstance(target, _Kind) else None
            if makes is None:
                _unsafe(f"metadata pickle calls {_slot_name(target)}: not allowed")
            if arg is not _TUPLE:
                _unsafe(
                    f"metadata pickle REDUCE arguments are {_slot_name(arg)}, "
                    "not a tuple"
                )
            self.stack.append(makes)
        else:
            if target is not _ARRAY and target is not _DTYPE:
                _unsafe(
                    f"metadata pickle applies BUILD to {_slot_name(target)}: "
                    "not allowed"
                )
            self.stack.append(target)

    def _global(self, name: str, arg: object, at: int) -> None:
        if name == "GLOBAL":
            # genops gives "module name"; allowed names hold no space, so the
            # first space splits every allowed pair right.
            module, _, attr = str(arg).partition(" ")
        else:
            module_slot, attr_slot = self._pop(2, name, at)
            if not isinstance(module_slot, str) or not isinstance(attr_slot, str):
                _unsafe(
                    f"metadata pickle STACK_GLOBAL at offset {at} needs two "
                    f"strings, got {_slot_name(module_slot)} and "
                    f"{_slot_name(attr_slot)}"
                )
            module, attr = module_slot, attr_slot
        kind = _GLOBAL_KINDS.get((module, attr))
        if kind is None:
            refuse_global(module, attr)
        self._push(kind)

    def _stop(self, at: int) -> None:
        if self.marks:
            _corrupt("STOP inside an unclosed MARK", at)
        if len(self.stack) != 1:
            _corrupt(f"STOP with {len(self.stack)} objects on the stack", at)
        extra = len(self.data) - at - 1
        if extra:
            _corrupt(f"{extra} bytes after STOP", at + 1)


def prescan(data: bytes) -> list[tuple[int, int]]:
    """Check ``data`` (a pickle) opcode by opcode, as the module docstring says;
    return the (offset, length) of every bytes payload. Raises
    UnsafeMetadataError or ProtocolError."""
    return _Scan(data).run()
