"""The metadata pickle of a stream: decoding (fast when the layout repeats),
lazy per-frame arrays, and encoding.

:func:`decode_metadata` decodes one pickle safely (the pre-scan, restricted
unpickler and result check of :mod:`._pickle`; never :func:`pickle.loads`) into
a list of read-only numpy arrays viewing an immutable copy of the pickle.

:class:`MetadataDecoder` adds a fast path for a stream of pickles: the detector
pickles the same list of arrays every frame, so all bytes but the raw array data
are identical from one frame to the next. After a full decode the decoder keeps
a :class:`MetadataTemplate` (the pickle's bytes outside the array data, and the
offset, dtype and shape of each array, established exactly as :mod:`._pickle`
explains); a later pickle of the same size whose non-data bytes all equal the
template's is decoded by slicing the arrays out at the known offsets, without
unpickling. That is exactly what the full decode would give, and as safe: every
check the full decode makes depends only on those identical bytes, and the data
regions only ever become array contents of the lengths already checked.
Anything else takes the full path again (and becomes the new template if one
can be made of it).

:class:`FrameMetadata` is what :class:`~ophyd_xspress.protocol.StreamDecoder`
puts in a frame decoded through such a template: the pickle's bytes and a shared
:class:`MetadataLayout` (name, dtype, shape and offset of every array), with the
arrays built only when first read. A consumer that stores many frames can copy
the bytes of each into one block and view every column of every frame at once
(:meth:`MetadataLayout.columns`).
"""

from __future__ import annotations

import math
from collections.abc import ItemsView, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._errors import ProtocolError, UnsafeMetadataError
from ._pickle import ArraySpec, unpickle_arrays, view_arrays
from ._pickle_writer import pickle_arrays

__all__ = [
    "MAX_METADATA_BYTES",
    "FrameMetadata",
    "MetadataDecoder",
    "MetadataField",
    "MetadataLayout",
    "MetadataTemplate",
    "decode_metadata",
    "encode_metadata",
]

#: Largest metadata pickle accepted (real ones are 0.5-0.7 kB).
MAX_METADATA_BYTES: Final = 1 << 20

#: Largest pickle matched with one integer comparison (one pass over ~0.7 kB
#: beats ten ``startswith`` calls; a huge pickle with few arrays would not).
_INT_MATCH_MAX: Final = 4096
#: Distinct layouts a :class:`MetadataDecoder` remembers (a stream has one or two).
_MAX_LAYOUTS: Final = 64


class MetadataTemplate:
    """What a decoded pickle looked like outside its array data: a later pickle
    that :meth:`matches` it decodes to :meth:`arrays` (made by
    :class:`MetadataDecoder`; compare templates with ``is``)."""

    __slots__ = (
        "_checks",
        "_expected",
        "_layout",
        "_mask",
        "one_to_one",
        "size",
        "specs",
    )

    def __init__(
        self, raw: bytes, specs: tuple[ArraySpec, ...], layout: tuple[int, ...]
    ) -> None:
        #: The pickle's size in bytes.
        self.size = len(raw)
        #: The distinct arrays: where each one's data is.
        self.specs = specs
        distinct = layout == tuple(range(len(specs)))
        #: Which spec each element of the list is (None: one each, all 1-D).
        self._layout: tuple[int, ...] | None = layout
        if distinct and all(s.order is None for s in specs):
            self._layout = None
        #: True when every element is a distinct array in C order: the arrays
        #: can be described by a :class:`MetadataLayout` and built lazily.
        self.one_to_one = distinct and all(s.order != "F" for s in specs)
        regions = sorted((s.offset, s.nbytes) for s in specs if s.nbytes)
        checks: list[tuple[int, bytes]] = []
        pos = 0
        for offset, nbytes in regions:
            if offset > pos:
                checks.append((pos, raw[pos:offset]))
            pos = max(pos, offset + nbytes)
        if pos < len(raw):
            checks.append((pos, raw[pos:]))
        #: (offset, bytes) of every stretch of the pickle that is not array data.
        self._checks = tuple(checks)
        # ``checks`` as one integer comparison for small pickles:
        # ``int.from_bytes(raw, "little") & mask == expected`` exactly when every
        # byte outside the array data equals the template's (0: use ``checks``).
        mask = 0
        if len(raw) <= _INT_MATCH_MAX:
            for offset, chunk in checks:
                mask |= ((1 << (8 * len(chunk))) - 1) << (8 * offset)
        self._mask = mask
        self._expected = int.from_bytes(raw, "little") & mask

    def matches(self, raw: bytes) -> bool:
        """Whether ``raw`` equals the template outside the array data, byte
        for byte."""
        if len(raw) != self.size:
            return False
        if self._mask:
            return int.from_bytes(raw, "little") & self._mask == self._expected
        return all(raw.startswith(chunk, offset) for offset, chunk in self._checks)

    def arrays(self, raw: bytes) -> list[npt.NDArray[Any]]:
        """The arrays of ``raw`` (a pickle that :meth:`matches`): read-only
        views of it when it is ``bytes``."""
        return view_arrays(raw, self.specs, self._layout)


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

    Takes the full path every time (see :class:`MetadataDecoder` for the fast
    path of a stream). The arrays are read-only views of an immutable copy of
    ``data`` (no copy when ``data`` is ``bytes``). Raises
    :class:`UnsafeMetadataError` for anything but a list of plain numeric numpy
    arrays, and :class:`ProtocolError` for a corrupt pickle.
    """
    return unpickle_arrays(_as_bytes(data)).arrays


class MetadataDecoder:
    """Decode a stream of metadata pickles, fast when they share a layout.

    >>> decoder = MetadataDecoder()
    >>> arrays = decoder.decode(pickle_bytes)     # the full path, then a template
    >>> arrays = decoder.decode(next_frame_bytes)  # same layout: sliced directly
    >>> decoder.fast_hits, decoder.full_decodes
    (1, 1)

    ``decode`` gives exactly what :func:`decode_metadata` gives, and raises the
    same errors. Not thread-safe: use one per stream.
    """

    __slots__ = ("_layouts", "_template", "fast_hits", "full_decodes")

    def __init__(self) -> None:
        self._template: MetadataTemplate | None = None
        #: Every layout handed out, so that equal layouts are one object.
        self._layouts: dict[MetadataLayout, MetadataLayout] = {}
        #: Pickles decoded from the template, without unpickling.
        self.fast_hits = 0
        #: Pickles that took the full path (successfully or not).
        self.full_decodes = 0

    def decode(self, data: bytes | bytearray | memoryview) -> list[npt.NDArray[Any]]:
        raw = _as_bytes(data)
        template = self._match(raw)
        if template is not None:
            return template.arrays(raw)
        return self._decode_full(raw)[1]

    def decode_template(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[bytes, MetadataTemplate | None, list[npt.NDArray[Any]] | None]:
        """The pickle as bytes; the template it matched or made (None when no
        template can be made of it); and its arrays when the full path ran
        (None on a fast hit: nothing built yet, see
        :meth:`MetadataTemplate.arrays`)."""
        raw = _as_bytes(data)
        template = self._match(raw)
        if template is not None:
            return raw, template, None
        template, arrays = self._decode_full(raw)
        return raw, template, arrays

    def _match(self, raw: bytes) -> MetadataTemplate | None:
        """The template, if ``raw`` matches it (counted as a fast hit)."""
        template = self._template
        if template is None or len(raw) != template.size:
            return None
        # (MetadataTemplate.matches, inlined: this is the per-frame path)
        mask = template._mask
        if mask:
            if int.from_bytes(raw, "little") & mask != template._expected:
                return None
        elif not template.matches(raw):
            return None
        self.fast_hits += 1
        return template

    def _decode_full(
        self, raw: bytes
    ) -> tuple[MetadataTemplate | None, list[npt.NDArray[Any]]]:
        self.full_decodes += 1
        found = unpickle_arrays(raw)
        if found.specs is None:
            return None, found.arrays  # (the last template stays)
        self._template = MetadataTemplate(raw, found.specs, found.layout)
        return self._template, found.arrays

    def layout(
        self, template: MetadataTemplate, names: Sequence[str]
    ) -> MetadataLayout | None:
        """The layout of ``template``'s arrays under ``names`` (one name per
        array), or None when the arrays cannot be described by one: an array
        listed twice, a Fortran-ordered one, or names that are not distinct.
        Equal layouts are one object."""
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
        """Forget the template (the next pickle takes the full path)."""
        self._template = None


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
    # Computed once: consumers look layouts up per frame, and hashing the
    # fields tuple each time cost more than the rest of the lookup.
    _hash: int = field(init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        return self._hash

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
        object.__setattr__(self, "_hash", hash((self.size, self.fields)))

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
    """Pickle a list of numpy arrays as the detector does (protocol 3 or 4,
    naming ``numpy.core.multiarray`` whatever numpy is installed: see
    :mod:`._pickle_writer`)."""
    return pickle_arrays(arrays, protocol)
