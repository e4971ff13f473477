"""The metadata pickle: decoded safely, never with ``pickle.loads``.

Hostile pickles are written opcode by opcode (helpers below) so that the tests
control exactly which globals and arguments the unpickler sees.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import pickletools
import struct
import time
import tracemalloc

import numpy as np
import pytest

from ophyd_xspress.protocol import (
    MAX_METADATA_BYTES,
    MetadataDecoder,
    ProtocolError,
    UnsafeMetadataError,
    _pickle,
    _pickle_scan,
    decode_metadata,
    encode_metadata,
)

REAL_DTYPES = ["<f8", "<u4", "<u4", "<u4", "<u4", "<u4", "<i4", "<f8"]


# -- hand-written pickle opcodes -----------------------------------------------
def op_str(s: str) -> bytes:
    """BINUNICODE."""
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_bytes(b: bytes) -> bytes:
    """BINBYTES."""
    return b"B" + struct.pack("<I", len(b)) + b


def op_int(n: int) -> bytes:
    """BININT, or LONG1 outside the 32-bit range."""
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def op_tuple(*items: bytes) -> bytes:
    """MARK items TUPLE."""
    return b"(" + b"".join(items) + b"t"


def op_global(module: str, name: str) -> bytes:
    """GLOBAL (protocol 0-3 style)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_stack_global(module: str, name: str) -> bytes:
    """SHORT_BINUNICODE x2 + STACK_GLOBAL (protocol 4 style)."""
    m, n = module.encode(), name.encode()
    return b"\x8c" + bytes([len(m)]) + m + b"\x8c" + bytes([len(n)]) + n + b"\x93"


def op_dtype(name: str, byteorder: str = "<", names: bytes = b"N") -> bytes:
    """As numpy writes it: dtype(name, False, True) then BUILD (3, bo, ...)."""
    state = op_tuple(
        op_int(3),
        op_str(byteorder),
        b"N",
        names,
        b"N",
        op_int(-1),
        op_int(-1),
        op_int(0),
    )
    return (
        op_global("numpy", "dtype")
        + op_tuple(op_str(name), b"\x89", b"\x88")
        + b"R"
        + state
        + b"b"
    )


def op_array(
    shape: tuple[int, ...],
    dtype_name: str,
    raw: bytes,
    *,
    byteorder: str = "<",
    module: str = "numpy.core.multiarray",
    subtype: bytes | None = None,
    dtype_ops: bytes | None = None,
    fortran: bool = False,
) -> bytes:
    """One ndarray as numpy pickles it: _reconstruct(ndarray, (0,), b'b') + BUILD."""
    if subtype is None:
        subtype = op_global("numpy", "ndarray")
    if dtype_ops is None:
        dtype_ops = op_dtype(dtype_name, byteorder)
    return (
        op_global(module, "_reconstruct")
        + subtype
        + op_tuple(op_int(0))
        + op_bytes(b"b")
        + b"\x87R"
        + op_tuple(
            op_int(1),
            op_tuple(*(op_int(n) for n in shape)),
            dtype_ops,
            b"\x88" if fortran else b"\x89",
            op_bytes(raw),
        )
        + b"b"
    )


def list_pickle(*items: bytes, proto: int = 3) -> bytes:
    """PROTO, EMPTY_LIST, MARK items APPENDS, STOP."""
    return b"\x80" + bytes([proto]) + b"]" + b"(" + b"".join(items) + b"e."


def globals_in(data: bytes) -> list[str]:
    """The ``module name`` strings a pickle's GLOBAL / STACK_GLOBAL opcodes load."""
    found, strings = [], []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            found.append(arg)
        elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            found.append(f"{strings[-2]} {strings[-1]}")
    return found


def open_for_writing_pickle(path: str) -> bytes:
    """``builtins.open(path, "w")`` via GLOBAL + REDUCE, written by hand."""
    return (
        b"\x80\x03"
        + op_global("builtins", "open")
        + op_tuple(op_str(path), op_str("w"))
        + b"R."
    )


class _OpenOnUnpickle:
    """Pickles as ``open(path, "w")``: what an attacker's object looks like."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- the real pickles ----------------------------------------------------------
def test_real_protocol3_pickle_from_the_dump(dump_capture):
    data = dump_capture[3][0]  # frame 0's metadata part
    assert data[:2] == b"\x80\x03"
    assert "numpy.core.multiarray _reconstruct" in globals_in(data)

    arrays = decode_metadata(data)

    assert [a.dtype.str for a in arrays] == REAL_DTYPES
    assert all(a.shape == (4,) for a in arrays)
    ocr, events, good, clock, total, reset, width, dtc = arrays
    assert events.tolist() == [2, 0, 0, 3]
    assert good.tolist() == [0, 0, 0, 1]
    assert clock.tolist() == [7_999_990] * 4
    assert total.tolist() == [7_999_990] * 4
    assert reset.tolist() == [0, 0, 0, 91]
    assert width.tolist() == [6, 6, 6, 6]
    assert dtc.tolist() == [1.00000175000525, 1.0, 1.0, 1.0000140002135032]
    assert ocr[3] == pytest.approx(1 / (7_999_990 * 80e6), rel=1e-12)


def test_real_protocol4_pickle_from_the_multipart_capture(multipart_capture):
    data = multipart_capture[2][2]  # frame 1's metadata part
    assert data[:2] == b"\x80\x04"
    assert "numpy.core.multiarray _reconstruct" in globals_in(data)

    arrays = decode_metadata(data)

    assert [a.dtype.str for a in arrays] == [*REAL_DTYPES, "<u4"]
    assert [a.shape for a in arrays] == [(4,)] * 8 + [(2, 4)]
    events, good, reset, dtc, windows = (arrays[i] for i in (1, 2, 5, 7, 8))
    assert events.tolist() == [0, 0, 0, 14079]
    assert good.tolist() == [0, 0, 0, 14079]
    assert reset.tolist() == [0, 0, 0, 1_722_482]
    assert dtc[3] == 1.8357377733821947
    assert windows.tolist() == [[0, 0, 0, 2], [0, 0, 0, 2]]


def test_every_real_pickle_decodes(dump_capture, multipart_capture):
    legacy = [m[0] for m in dump_capture if m[0][:1] == b"\x80"]
    multipart = [m[2] for m in multipart_capture if len(m) == 3]
    assert (len(legacy), len(multipart)) == (20, 5)
    for data in legacy:
        assert len(decode_metadata(data)) == 8
    for data in multipart:
        assert len(decode_metadata(data)) == 9


def test_accepts_bytes_bytearray_and_memoryview(multipart_capture):
    data = multipart_capture[1][2]
    expected = decode_metadata(data)
    for form in (bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        got = decode_metadata(form)
        assert [a.tolist() for a in got] == [a.tolist() for a in expected]


# -- round trips ---------------------------------------------------------------
ROUND_TRIP_ARRAYS = [
    np.array([0.0, 1.5e-15, np.nan, np.inf]),
    np.array([0, 1, 2**32 - 1, 7], dtype=np.uint32),
    np.array([-1, 0, 6, 2**31 - 1], dtype=np.int32),
    np.arange(8, dtype=np.uint32).reshape(2, 4),
    np.asfortranarray(np.arange(12, dtype=np.uint16).reshape(3, 4)),
    np.array([1, 2, 3], dtype=">u4"),
    np.array([1 + 2j], dtype=np.complex128),
    np.array([True, False]),
    np.array([-(2**63)], dtype=np.int64),
    np.array([1.25], dtype=np.float32),
    np.zeros((0,), dtype=np.float64),
    np.arange(24, dtype=np.int8).reshape(2, 3, 4),
]


@pytest.mark.parametrize("protocol", [3, 4])
def test_encode_decode_round_trip(protocol):
    data = encode_metadata(ROUND_TRIP_ARRAYS, protocol=protocol)
    assert data[:2] == bytes([0x80, protocol])
    got = decode_metadata(data)
    assert len(got) == len(ROUND_TRIP_ARRAYS)
    for a, b in zip(got, ROUND_TRIP_ARRAYS, strict=True):
        assert a.dtype == b.dtype
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert got[4].flags.f_contiguous


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_numpy2_pickles_decode(protocol):
    """What ``pickle.dumps`` writes with the installed numpy (2.x: numpy._core)."""
    data = pickle.dumps(ROUND_TRIP_ARRAYS, protocol=protocol)
    names = globals_in(data)
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert any(n.startswith("numpy._core") for n in names)
    if protocol == 5:
        assert any(n.endswith(" _frombuffer") for n in names)
    got = decode_metadata(data)
    for a, b in zip(got, ROUND_TRIP_ARRAYS, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_protocol5_frombuffer_pickle_decodes():
    arrays = [np.arange(4, dtype=np.uint32), np.linspace(0, 1, 4)]
    data = pickle.dumps(arrays, protocol=5)
    assert "numpy._core.numeric _frombuffer" in globals_in(data) or (
        "numpy.core.numeric _frombuffer" in globals_in(data)
    )
    got = decode_metadata(data)
    assert [a.dtype.str for a in got] == ["<u4", "<f8"]
    np.testing.assert_array_equal(got[0], arrays[0])
    np.testing.assert_array_equal(got[1], arrays[1])


def test_protocol5_out_of_band_buffers_are_rejected():
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(
        [np.arange(4, dtype=np.uint32)], protocol=5, buffer_callback=buffers.append
    )
    assert buffers
    with pytest.raises(ProtocolError, match="out-of-band"):
        decode_metadata(data)


def test_frombuffer_with_a_non_dtype_is_rejected():
    data = list_pickle(
        op_global("numpy._core.numeric", "_frombuffer")
        + op_tuple(op_bytes(b"\0" * 16), op_str("u4"), op_tuple(op_int(4)), op_str("C"))
        + b"R",
        proto=4,
    )
    with pytest.raises(UnsafeMetadataError, match="_frombuffer without a plain dtype"):
        decode_metadata(data)


def test_hand_built_array_pickles_match_numpy():
    """The opcode helpers below write what numpy writes (checked with the real
    unpickler on these trusted bytes), so the hostile variants are faithful."""
    raw = np.array([1, 2, 3, 4], dtype="<u4").tobytes()
    data = list_pickle(
        op_array((4,), "u4", raw),
        op_array((2, 2), "u4", raw, fortran=True),
        op_array((4,), "u4", np.arange(4, dtype=">u4").tobytes(), byteorder=">"),
    )
    trusted = pickle.loads(data)  # our own bytes, no untrusted input
    ours = decode_metadata(data)
    for a, b in zip(ours, trusted, strict=True):
        # (numpy itself unpickles '>u4' as native '<u4' with the same values)
        assert (a.dtype.kind, a.dtype.itemsize) == (b.dtype.kind, b.dtype.itemsize)
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert ours[1].tolist() == [[1, 3], [2, 4]]
    assert ours[2].dtype.str == ">u4"
    assert ours[2].tolist() == [0, 1, 2, 3]


def test_encode_metadata_refuses_other_protocols():
    with pytest.raises(ValueError, match="protocol 3 or 4"):
        encode_metadata([np.zeros(2)], protocol=5)
    with pytest.raises(ValueError, match="protocol 3 or 4"):
        encode_metadata([np.zeros(2)], protocol=2)


# -- the hostile pickle --------------------------------------------------------
def test_hostile_pickle_would_create_a_file_but_decode_metadata_refuses(tmp_path):
    target = tmp_path / "pwned"
    proof = tmp_path / "proof-that-the-payload-works"
    payload = open_for_writing_pickle(str(target))
    assert globals_in(payload) == ["builtins open"]
    assert "REDUCE" in [op.name for op, _, _ in pickletools.genops(payload)]

    # The same payload, aimed at another file, really does create it when
    # unpickled with pickle.loads (this is the attack decode_metadata prevents).
    handle = pickle.loads(open_for_writing_pickle(str(proof)))
    handle.close()
    assert proof.exists()

    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(payload)
    assert "builtins.open" in str(info.value)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_hostile_object_hidden_after_a_real_array_is_refused(tmp_path, protocol):
    target = tmp_path / "pwned"
    data = pickle.dumps(
        [np.arange(4, dtype=np.uint32), _OpenOnUnpickle(str(target))],
        protocol=protocol,
    )
    # (open pickles as builtins.open or io.open, depending on the protocol)
    assert {"builtins open", "io open"} & set(globals_in(data))
    with pytest.raises(UnsafeMetadataError, match="open"):
        decode_metadata(data)
    assert not target.exists()


def test_os_system_payload_is_refused(tmp_path):
    target = tmp_path / "pwned"
    payload = (
        b"\x80\x03"
        + op_global("os", "system")
        + op_tuple(op_str(f"touch {target}"))
        + b"R."
    )
    assert globals_in(payload) == ["os system"]
    with pytest.raises(UnsafeMetadataError, match=r"os\.system"):
        decode_metadata(payload)
    assert not target.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("posix", "system"),
        ("subprocess", "Popen"),
        ("copyreg", "_reconstructor"),
        ("numpy", "load"),
        ("numpy", "frombuffer"),
        ("numpy", "fromfile"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct_ex"),
        ("numpy.lib.format", "read_array"),
        ("numpy.testing", "measure"),
        ("numpy", "ndarray.tofile"),
    ],
)
@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL"])
def test_other_globals_are_refused(module, name, opcode):
    ref = (
        op_global(module, name) if opcode == "GLOBAL" else op_stack_global(module, name)
    )
    data = b"\x80\x04" + ref + op_tuple() + b"R."
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(data)
    assert f"{module}.{name}" in str(info.value)


def test_protocol2_numpy_pickles_are_refused():
    """Protocol 2 has no bytes opcode: numpy routes the data through
    _codecs.encode, which is not allowed (the device sends protocol 3 or 4)."""
    data = pickle.dumps([np.arange(4, dtype=np.uint32)], protocol=2)
    assert "_codecs encode" in globals_in(data)
    with pytest.raises(UnsafeMetadataError, match=r"_codecs\.encode"):
        decode_metadata(data)


def test_numpy_scalar_in_the_list_is_refused():
    data = pickle.dumps([np.float64(3.0)], protocol=3)
    assert any(n.endswith(" scalar") for n in globals_in(data))
    with pytest.raises(UnsafeMetadataError, match="scalar"):
        decode_metadata(data)


def test_ext_opcode_resolves_through_the_restricted_lookup(tmp_path):
    target = tmp_path / "pwned"
    code = 0xF3
    copyreg.add_extension("builtins", "open", code)
    try:
        payload = (
            b"\x80\x02\x82"
            + bytes([code])
            + op_tuple(op_str(str(target)), op_str("w"))
            + b"R."
        )
        assert "EXT1" in [op.name for op, _, _ in pickletools.genops(payload)]
        with pytest.raises(UnsafeMetadataError, match=r"builtins\.open"):
            decode_metadata(payload)
    finally:
        copyreg.remove_extension("builtins", "open", code)
    assert not target.exists()


def test_unregistered_ext_code_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="extension code"):
        decode_metadata(b"\x80\x02\x82\xf3.")


@pytest.mark.parametrize(
    "payload",
    [b"\x80\x02" + op_str("id") + b"Q.", b"\x80\x02Pid\n."],
    ids=["BINPERSID", "PERSID"],
)
def test_persistent_ids_are_refused(payload):
    with pytest.raises(UnsafeMetadataError, match="persistent"):
        decode_metadata(payload)


# -- dtypes and shapes ---------------------------------------------------------
def test_object_dtype_array_is_refused():
    data = pickle.dumps([np.array([1, "a", None], dtype=object)], protocol=3)
    with pytest.raises(UnsafeMetadataError, match="'O8'"):
        decode_metadata(data)


def test_structured_dtype_is_refused():
    """numpy pickles a structured dtype's fields as a dict in its BUILD state:
    the pre-scan refuses that dict before anything is unpickled (the hand-built
    state below, without a dict, is refused by the dtype stand-in instead)."""
    arr = np.zeros(2, dtype=[("a", "<u4"), ("b", "<f8")])
    for protocol in (3, 4, 5):
        data = pickle.dumps([arr], protocol=protocol)
        dict_at = next(
            pos for op, _, pos in pickletools.genops(data) if op.name == "EMPTY_DICT"
        )
        with pytest.raises(UnsafeMetadataError) as info:
            decode_metadata(data)
        assert f"opcode EMPTY_DICT (0x7d) at offset {dict_at} is not allowed" in str(
            info.value
        )


def test_hand_built_structured_dtype_state_is_refused():
    dtype_ops = op_dtype("V12", names=op_tuple(op_str("a"), op_str("b")))
    data = list_pickle(op_array((1,), "V12", b"\0" * 12, dtype_ops=dtype_ops))
    with pytest.raises(UnsafeMetadataError, match="structured"):
        decode_metadata(data)


@pytest.mark.parametrize(
    "arr",
    [
        np.array(["ab", "c"]),
        np.array([b"ab"]),
        np.zeros(2, dtype="datetime64[s]"),
        np.zeros(2, dtype="timedelta64[ms]"),
        np.zeros(2, dtype="V4"),
    ],
    ids=["unicode", "bytes", "datetime", "timedelta", "void"],
)
def test_non_numeric_dtypes_are_refused(arr):
    with pytest.raises(UnsafeMetadataError, match="not a plain numeric type"):
        decode_metadata(pickle.dumps([arr], protocol=4))


@pytest.mark.parametrize(
    "name", ["f8, i4", "numpy.float64", "u4" * 10, "", "<u4>", "O8\n"]
)
def test_odd_dtype_names_are_refused(name):
    data = list_pickle(op_array((1,), name, b"\0" * 8))
    with pytest.raises(UnsafeMetadataError, match="dtype"):
        decode_metadata(data)


def test_unknown_byteorder_is_refused():
    data = list_pickle(op_array((1,), "u4", b"\0" * 4, byteorder="!"))
    with pytest.raises(UnsafeMetadataError, match="byte order"):
        decode_metadata(data)


def test_reconstruct_of_something_else_than_ndarray_is_refused():
    data = list_pickle(
        op_array((1,), "u4", b"\0" * 4, subtype=op_global("numpy", "dtype"))
    )
    with pytest.raises(UnsafeMetadataError, match="other than ndarray"):
        decode_metadata(data)


@pytest.mark.parametrize(
    ("shape", "raw_len", "fragment"),
    [
        ((5,), 16, "needs 20 bytes, the pickle carries 16"),
        ((4,), 20, "needs 16 bytes, the pickle carries 20"),
        ((2, 3), 16, "needs 24 bytes, the pickle carries 16"),
        ((1 << 30, 1 << 30), 0, "the pickle carries 0"),
        ((-1,), 4, "invalid array shape"),
        ((1 << 31,), 4, "invalid array shape"),
        ((1,) * 9, 4, "invalid array shape"),
    ],
)
def test_array_bytes_must_match_shape(shape, raw_len, fragment):
    data = list_pickle(op_array(shape, "u4", b"\0" * raw_len))
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(data)
    assert fragment in str(info.value)


def test_array_data_must_be_bytes():
    data = list_pickle(
        op_global("numpy.core.multiarray", "_reconstruct")
        + op_global("numpy", "ndarray")
        + op_tuple(op_int(0))
        + op_bytes(b"b")
        + b"\x87R"
        + op_tuple(
            op_int(1),
            op_tuple(op_int(1)),
            op_dtype("u4"),
            b"\x89",
            op_str("abcd"),
        )
        + b"b"
    )
    with pytest.raises(UnsafeMetadataError, match="array data is str, not bytes"):
        decode_metadata(data)


# -- the container -------------------------------------------------------------
@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"all_good": np.arange(4)}, "holds dict, expected a list of arrays"),
        ("all_good", "holds str, expected a list of arrays"),
        (42, "holds int, expected a list of arrays"),
        (None, "holds NoneType, expected a list of arrays"),
        ([1, 2], "metadata element 0 is int, not a numpy array"),
        ([np.arange(2), "x"], "metadata element 1 is str, not a numpy array"),
        ([np.arange(2)] * 65, "holds 65 arrays"),
    ],
)
def test_only_a_list_of_arrays_is_accepted(obj, fragment):
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(pickle.dumps(obj, protocol=4))
    assert fragment in str(info.value)


def test_a_bare_array_is_not_a_list():
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(pickle.dumps(np.arange(3), protocol=4))
    assert str(info.value) == (
        "metadata pickle holds a numpy array, expected a list of arrays"
    )


def test_a_tuple_of_arrays_and_an_empty_list_are_accepted():
    assert [a.tolist() for a in decode_metadata(pickle.dumps((np.arange(3),)))] == [
        [0, 1, 2]
    ]
    assert decode_metadata(pickle.dumps([])) == []


def test_unbuilt_array_stand_in_is_refused():
    data = list_pickle(
        op_global("numpy.core.multiarray", "_reconstruct")
        + op_global("numpy", "ndarray")
        + op_tuple(op_int(0))
        + op_bytes(b"b")
        + b"\x87R"
    )
    with pytest.raises(UnsafeMetadataError, match="not a numpy array"):
        decode_metadata(data)


# -- size, truncation, garbage -------------------------------------------------
def test_oversized_pickle_is_refused_before_unpickling(tmp_path):
    target = tmp_path / "pwned"
    payload = open_for_writing_pickle(str(target))
    # Pad with a long string loaded before the payload: still a valid pickle.
    padded = (
        b"\x80\x03"
        + op_str("x" * MAX_METADATA_BYTES)
        + b"0"  # POP
        + payload[2:]
    )
    assert len(padded) > MAX_METADATA_BYTES
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(padded)
    # The size check fired, not the global check: nothing was unpickled.
    assert f"exceeds the {MAX_METADATA_BYTES} limit" in str(info.value)
    assert str(len(padded)) in str(info.value)
    assert not target.exists()


def test_size_limit_boundary():
    def pickle_of(n: int) -> bytes:
        return pickle.dumps([np.zeros(n, dtype=np.uint8)], protocol=4)

    overhead = len(pickle_of(1 << 16)) - (1 << 16)
    exact = pickle_of(MAX_METADATA_BYTES - overhead)
    assert len(exact) == MAX_METADATA_BYTES
    assert decode_metadata(exact)[0].size == MAX_METADATA_BYTES - overhead
    too_big = pickle_of(MAX_METADATA_BYTES - overhead + 1)
    with pytest.raises(UnsafeMetadataError, match="exceeds"):
        decode_metadata(too_big)
    with pytest.raises(UnsafeMetadataError, match="exceeds"):
        decode_metadata(memoryview(too_big))


def test_every_truncation_of_a_real_pickle_is_a_protocol_error(multipart_capture):
    data = multipart_capture[1][2]
    for n in range(len(data)):
        with pytest.raises(ProtocolError):
            decode_metadata(data[:n])


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty metadata part"),
        (b"hello world", "not a pickle (first byte 0x68, expected 0x80)"),
        (b'{"htype": "image"}', "not a pickle"),
        (b"\x80", "corrupt metadata pickle"),
        (b"\x80\x03", "corrupt metadata pickle"),
        (b"\x80\x03]", "corrupt metadata pickle"),
        (b"\x80\x03\xff.", "corrupt metadata pickle"),
        (b"\x80\x03]h\x07.", "corrupt metadata pickle"),
        (b"\x80\x03(.", "corrupt metadata pickle"),
    ],
)
def test_non_pickles_and_broken_pickles_are_protocol_errors(data, fragment):
    with pytest.raises(ProtocolError) as info:
        decode_metadata(data)
    assert fragment in str(info.value)


def test_protocol_errors_are_value_errors():
    assert issubclass(UnsafeMetadataError, ProtocolError)
    assert issubclass(ProtocolError, ValueError)


# -- hardening: the pre-scan and the restricted unpickler ----------------------
def _nested_tuple_bomb(depth: int) -> bytes:
    """A tuple DAG whose repr doubles at each level: ~150 bytes, 2**depth repr."""
    out = b")\x940"  # (), memo 0
    for k in range(depth):
        get = b"h" + bytes([k])
        out += get + get + b"\x86\x940"  # (t_k, t_k), memo k+1
    return out + b"h" + bytes([depth])


def _nested_tuple_bomb_without_pop(depth: int) -> bytes:
    """The same DAG with allowed opcodes only (POP is refused on sight)."""
    out = b")\x94"  # (), memo 0
    for k in range(depth):
        out += b"h" + bytes([k]) + b"\x86\x94"  # (t_k, t_k), memo k+1
    return out


@pytest.mark.parametrize("depth", [23, 200])
@pytest.mark.parametrize("pops", [True, False], ids=["with-POP", "without-POP"])
@pytest.mark.parametrize("site", ["array state", "dtype name"])
def test_exponential_repr_bomb_is_refused_quickly(site, pops, depth):
    # depth 23 took about 1.5 s and 100 MB with repr(); 200 would never end.
    bomb = _nested_tuple_bomb(depth) if pops else _nested_tuple_bomb_without_pop(depth)
    if site == "array state":
        body = (
            op_global("numpy.core.multiarray", "_reconstruct")
            + op_global("numpy", "ndarray")
            + op_tuple(op_int(0))
            + op_bytes(b"b")
            + b"\x87R"
            + bomb
            + b"b"
        )
    else:
        body = op_global("numpy", "dtype") + bomb + b"\x85R"
    data = list_pickle(body, proto=4)
    assert len(data) < 2000
    start = time.perf_counter()
    with pytest.raises(ProtocolError) as info:
        decode_metadata(data)
    assert time.perf_counter() - start < 0.2
    if pops:
        assert "POP (0x30)" in str(info.value)
    else:
        assert isinstance(info.value, UnsafeMetadataError)
        assert "tuple of 2 items" in str(info.value)


_GLOBAL_NAMES = [
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
]


@pytest.mark.parametrize(("module", "name"), _GLOBAL_NAMES)
@pytest.mark.parametrize("state", ["dict", "tuple"])
def test_build_on_a_global_is_refused(module, name, state):
    marker = "ophyd_xspress_test_marker"
    if state == "dict":
        build_state = b"}" + op_str(marker) + b"\x88s"  # {marker: True}
    else:
        build_state = op_tuple(op_str(marker), b"\x88")  # (marker, True)
    data = b"\x80\x02" + op_global(module, name) + build_state + b"b]."
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(data)
    if state == "dict":
        assert "EMPTY_DICT (0x7d) at offset" in str(info.value)
    else:
        assert "BUILD" in str(info.value)
        assert "the global" in str(info.value)
    assert marker not in str(info.value)


def test_globals_resolve_to_inert_stand_ins():
    """What find_class gives is an object of ours, never numpy's: no state a
    pickle could change (no __dict__, no new attributes, BUILD refused)."""
    assert set(_pickle._GLOBALS) == set(_GLOBAL_NAMES)
    assert set(_pickle_scan.ALLOWED_GLOBALS) == set(_GLOBAL_NAMES)
    unpickler = _pickle._Unpickler(io.BytesIO(b""))
    for key, stand_in in _pickle._GLOBALS.items():
        assert unpickler.find_class(*key) is stand_in
        assert type(stand_in).__module__ == _pickle.__name__
        assert not hasattr(stand_in, "__dict__")
        with pytest.raises(AttributeError):
            stand_in.__defaults__ = (1,)  # type: ignore[attr-defined]
        with pytest.raises(UnsafeMetadataError, match="BUILD"):
            stand_in.__setstate__({"name": "x"})
    with pytest.raises(UnsafeMetadataError, match=r"builtins\.open"):
        unpickler.find_class("builtins", "open")


def test_numpy_reconstruction_is_never_called(monkeypatch, multipart_capture):
    """The arrays come from np.frombuffer over the pickle, not from numpy's
    unpickling functions (which would allocate what a hostile shape asks)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("numpy's reconstruction called")

    protocol5 = pickle.dumps([np.arange(3)], protocol=5)
    for module in (np._core.multiarray, np._core.numeric):  # type: ignore[attr-defined]
        for name in ("_reconstruct", "_frombuffer"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, forbidden)
    assert len(decode_metadata(multipart_capture[1][2])) == 9
    assert decode_metadata(protocol5)[0].tolist() == [0, 1, 2]


def test_reduce_only_calls_the_allowed_stand_ins():
    """REDUCE on ndarray (a type, not a callable here) or on a built array."""
    on_ndarray = list_pickle(op_global("numpy", "ndarray") + op_tuple() + b"R")
    with pytest.raises(UnsafeMetadataError, match=r"calls the global numpy\.ndarray"):
        decode_metadata(on_ndarray)
    on_array = list_pickle(op_array((1,), "u4", b"\0" * 4) + op_tuple() + b"R")
    with pytest.raises(UnsafeMetadataError, match="calls a numpy array"):
        decode_metadata(on_array)
    on_list = b"\x80\x04]" + op_tuple() + b"R."
    with pytest.raises(UnsafeMetadataError, match="calls list"):
        decode_metadata(on_list)


def test_build_applies_once_and_only_to_arrays_and_dtypes():
    array = op_array((1,), "u4", b"\0" * 4)
    state = op_tuple(
        op_int(1), op_tuple(op_int(1)), op_dtype("u4"), b"\x89", op_bytes(b"\0" * 4)
    )
    with pytest.raises(UnsafeMetadataError, match="already has data"):
        decode_metadata(list_pickle(array + state + b"b"))
    dtype_twice = list_pickle(
        op_array(
            (1,),
            "u4",
            b"\0" * 4,
            dtype_ops=op_dtype("u4") + op_tuple(*[b"N"] * 8) + b"b",
        )
    )
    with pytest.raises(UnsafeMetadataError, match="BUILD twice to one dtype"):
        decode_metadata(dtype_twice)
    on_list = b"\x80\x04]" + op_tuple() + b"b."
    with pytest.raises(UnsafeMetadataError, match="BUILD to list"):
        decode_metadata(on_list)


def test_one_byte_string_as_code_and_as_data_decodes_exactly():
    """The b'b' code of _reconstruct, memoized, reused as a 1-byte array's data.

    The code's contents are never read (only its type and length), so the byte
    is array data and nothing else: the fast path slicing it gives what the full
    path gives, whatever the byte."""
    body = (
        op_global("numpy.core.multiarray", "_reconstruct")
        + op_global("numpy", "ndarray")
        + op_tuple(op_int(0))
        + op_bytes(b"b")
        + b"\x94"  # MEMOIZE as 0
        + b"\x87R"
        + op_tuple(op_int(1), op_tuple(op_int(1)), op_dtype("u1"), b"\x89", b"h\x00")
        + b"b"
    )
    data = list_pickle(body, proto=4)
    (arr,) = decode_metadata(data)
    assert (arr.dtype.str, arr.tolist()) == ("|u1", [ord("b")])
    decoder = MetadataDecoder()
    decoder.decode(data)
    at = data.index(b"B\x01\x00\x00\x00b") + 5
    for byte in (0, 0x63, 0xFF):
        other = data[:at] + bytes([byte]) + data[at + 1 :]
        assert decoder.decode(other)[0].tolist() == [byte]
        assert decode_metadata(other)[0].tolist() == [byte]
    assert (decoder.full_decodes, decoder.fast_hits) == (1, 3)


def test_arrays_that_cannot_be_located_are_decoded_without_a_template(
    monkeypatch, multipart_capture
):
    """When the marker load cannot place the arrays (here: no marker left), the
    arrays come from the unpickled copies and there is no template."""
    data = multipart_capture[1][2]
    expected = decode_metadata(data)
    monkeypatch.setattr(_pickle, "_MAX_REGIONS", 0)
    decoder = MetadataDecoder()
    for _ in range(3):
        got = decoder.decode(data)
        assert [(a.dtype, a.shape, a.tobytes()) for a in got] == [
            (a.dtype, a.shape, a.tobytes()) for a in expected
        ]
        assert not any(a.flags.writeable for a in got)
        assert not any(np.shares_memory(a, np.frombuffer(data, np.uint8)) for a in got)
    assert (decoder.full_decodes, decoder.fast_hits) == (3, 0)
    assert decoder.decode_template(data)[1] is None


@pytest.mark.parametrize(
    ("opcode", "width", "declared"),
    [
        (b"\x8e", 8, 1 << 30),  # BINBYTES8
        (b"\x96", 8, 1 << 30),  # BYTEARRAY8
        (b"\x8d", 8, 1 << 30),  # BINUNICODE8
        (b"\x96", 8, (1 << 64) - 1),  # BYTEARRAY8
        (b"\x95", 8, 1 << 62),  # FRAME
        (b"B", 4, (1 << 32) - 1),  # BINBYTES
        (b"X", 4, (1 << 32) - 1),  # BINUNICODE
        (b"C", 1, 255),  # SHORT_BINBYTES
        (b"\x8c", 1, 255),  # SHORT_BINUNICODE
    ],
    ids=[
        "BINBYTES8",
        "BYTEARRAY8",
        "BINUNICODE8",
        "BYTEARRAY8-max",
        "FRAME",
        "BINBYTES",
        "BINUNICODE",
        "SHORT_BINBYTES",
        "SHORT_BINUNICODE",
    ],
)
@pytest.mark.parametrize("where", ["top", "in-list"])
def test_declared_length_does_not_allocate(opcode, width, declared, where):
    length = declared.to_bytes(width, "little")
    prefix = b"\x80\x05" if where == "top" else b"\x80\x05](N"
    data = prefix + opcode + length + b"abc"
    assert len(data) < 25
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            decode_metadata(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "MemoryError" not in message
    assert peak < 1024 * 1024
    if opcode in (b"\x8e", b"\x8d"):  # not in the allowlist at all
        assert isinstance(info.value, UnsafeMetadataError)
        assert f"({opcode[0]:#04x}) at offset {len(prefix)} is not allowed" in message
    else:
        assert f"declares {declared} bytes, 3 remain" in message


def test_bytearray8_within_the_pickle_is_accepted():
    """Protocol 5 writes in-band buffers of writable arrays as BYTEARRAY8."""
    raw = np.arange(4, dtype="<u4").tobytes()
    body = (
        op_stack_global("numpy._core.numeric", "_frombuffer")
        + op_tuple(
            b"\x96" + struct.pack("<Q", len(raw)) + raw,
            op_stack_global("numpy", "dtype")
            + op_tuple(op_str("u4"), b"\x89", b"\x88")
            + b"R",
            op_tuple(op_int(2), op_int(2)),
            op_str("F"),
        )
        + b"R"
    )
    (arr,) = decode_metadata(list_pickle(body, proto=5))
    assert arr.tolist() == [[0, 2], [1, 3]]
    assert arr.flags.f_contiguous
    assert not arr.flags.writeable


def _lowered_recursion_limit(extra: int = 60):
    """A context manager: the recursion limit just above the current depth."""
    import contextlib
    import sys

    @contextlib.contextmanager
    def manager():
        depth, frame = 0, sys._getframe()
        while frame is not None:
            depth, frame = depth + 1, frame.f_back
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(depth + extra)
        try:
            yield
        finally:
            sys.setrecursionlimit(old)

    return manager()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"N" + b"\x85" * 10_000, "metadata element 0 is tuple, not a numpy"),
        (b"]N" + b"\x85" * 10_000 + b"a", "metadata element 0 is tuple"),
        (b"N" + b"\x85" * 20_000, "more than 16384 opcodes"),
        (b"(" * 1_000, "nests more than 32 MARKs"),
        (b"]" * 1_100 + b"a" * 1_099, "stack exceeds 1024 items"),
        (b"]" * 2_000, "stack exceeds 1024 items"),
        (b"N" * 5_000, "stack exceeds 1024 items"),
        (b"]" + b"Na" * 2_000, "appends more than 1024 list items"),
        (b"](" + b"N" * 1_000 + b"e(" + b"N" * 100 + b"e", "more than 1024 list"),
    ],
    ids=[
        "nested-tuples",
        "nested-tuple-element",
        "opcode-budget",
        "marks",
        "nested-lists",
        "lists",
        "stack",
        "append",
        "appends",
    ],
)
def test_deep_nesting_and_floods_are_bounded(body, fragment):
    data = b"\x80\x04" + body + b"."
    start = time.perf_counter()
    with _lowered_recursion_limit(), pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(data)
    assert time.perf_counter() - start < 0.5
    assert fragment in str(info.value)
    assert "nests too deeply" not in str(info.value)  # not a RecursionError


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"N" + b"\x94" * 5_000, "memo exceeds 4096 entries"),
        (
            b"N" + b"".join(b"r" + struct.pack("<I", k * 7919) for k in range(5_000)),
            "memo exceeds 4096 entries",
        ),
        (b"N" + b"q\x00" * 8_000 + b"h\x00" * 2_000, "stack exceeds"),
        (b"N" + b"q\x05" * 20_000, "more than 16384 opcodes"),
    ],
    ids=["MEMOIZE", "LONG_BINPUT", "BINPUT-BINGET", "BINPUT-same-key"],
)
def test_memo_abuse_is_bounded(body, fragment):
    data = b"\x80\x04" + body + b"."
    start = time.perf_counter()
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(data)
    assert time.perf_counter() - start < 0.5
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"j" + struct.pack("<I", 1 << 31), "memo entry 2147483648 is missing"),
        (b"N\x94h\x01", "memo entry 1 is missing"),
        (b"q\x00", "stack underflow in BINPUT"),
        (b"\x94", "stack underflow in MEMOIZE"),
        (b"R", "stack underflow in REDUCE"),
        (b"NR", "stack underflow in REDUCE"),
        (b"Nb", "stack underflow in BUILD"),
        (b"a", "stack underflow in APPEND"),
        (b"](Na", "stack underflow in APPEND"),  # the list is below the MARK
        (b"N(N\x86", "stack underflow in TUPLE2"),
        (b"\x87", "stack underflow in TUPLE3"),
        (b"N\x93", "stack underflow in STACK_GLOBAL"),
        (b"t", "TUPLE (0x74) without MARK"),
        (b"e", "APPENDS (0x65) without MARK"),
        (b"(e", "stack underflow in APPENDS"),
        (b"", "STOP with 0 objects on the stack"),
        (b"NN", "STOP with 2 objects on the stack"),
        (b"](", "STOP inside an unclosed MARK"),
    ],
)
def test_stack_underflow_and_bad_memo_references_are_corrupt(body, fragment):
    with pytest.raises(ProtocolError) as info:
        decode_metadata(b"\x80\x04" + body + b".")
    assert "corrupt metadata pickle" in str(info.value)
    assert fragment in str(info.value)


def test_bytes_after_stop_are_refused():
    data = pickle.dumps([np.arange(3)], protocol=4)
    with pytest.raises(ProtocolError, match="1 bytes after STOP"):
        decode_metadata(data + b".")


@pytest.mark.parametrize("proto", [0, 1, 6, 255])
def test_unknown_protocol_versions_are_refused(proto):
    with pytest.raises(ProtocolError, match=f"protocol {proto} is not supported"):
        decode_metadata(bytes([0x80, proto]) + b"]" + b".")


_CODE = {op.name: ord(op.code) for op in pickletools.opcodes}


def _refused_opcodes():
    return [
        op
        for op in pickletools.opcodes
        if op.name not in _pickle_scan.ALLOWED_OPCODES or op.name == "PROTO"
    ]


def test_the_allowlist_is_what_numpy_array_pickles_use(dump_capture, multipart_capture):
    used: set[str] = set()
    pickles = [m[0] for m in dump_capture if m[0][:1] == b"\x80"]
    pickles += [m[2] for m in multipart_capture if len(m) == 3]
    for protocol in (3, 4, 5):
        pickles.append(pickle.dumps(ROUND_TRIP_ARRAYS, protocol=protocol))
        pickles.append(pickle.dumps(tuple(ROUND_TRIP_ARRAYS), protocol=protocol))
        pickles.append(pickle.dumps([np.zeros(300)], protocol=protocol))  # BINBYTES
        pickles.append(pickle.dumps([np.array(2.5)], protocol=protocol))  # 0-d
    for data in pickles:
        used |= {op.name for op, _, _ in pickletools.genops(data)}
        decode_metadata(data)
    allowed = set(_pickle_scan.ALLOWED_OPCODES)
    assert allowed <= {op.name for op in pickletools.opcodes}
    assert used <= allowed
    # Allowed but not written by numpy for these arrays: other encodings of
    # ints / memo indices / strings that a pickler may choose, and LONG1 (shapes
    # of 2**31 and more, refused later, with a clear message).
    assert allowed - used <= {
        "BININT2",
        "LONG1",
        "LONG_BINPUT",
        "LONG_BINGET",
        "BINPUT",
        "BINGET",
        "BINUNICODE",
        "GLOBAL",
        "BYTEARRAY8",
    }


@pytest.mark.parametrize("opcode", _refused_opcodes(), ids=lambda op: op.name)
@pytest.mark.parametrize("prefix", [b"\x80\x04", b"\x80\x04]("], ids=["top", "nested"])
def test_every_opcode_outside_the_allowlist_is_refused(opcode, prefix):
    code = ord(opcode.code)
    data = prefix + bytes([code]) + b"\x00" * 16 + b"."
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(data)
    message = str(info.value)
    assert f"opcode {opcode.name} ({code:#04x}) at offset {len(prefix)}" in message
    assert "is not allowed" in message


@pytest.mark.parametrize(
    "name", sorted(_pickle_scan.ALLOWED_OPCODES - {"PROTO"}), ids=str
)
def test_every_allowed_opcode_is_executed_not_refused(name):
    """The allowlist and the pre-scan agree: an allowed opcode may fail on its
    operands, never as 'not allowed'."""
    code = _CODE[name]
    for data in (
        b"\x80\x04" + bytes([code]) + b"\x00" * 16 + b".",
        b"\x80\x04](NN" + bytes([code]) + b"\x01\x00\x00\x00" + b"x\n" * 8,
    ):
        message = ""
        try:
            decode_metadata(data)
        except ProtocolError as exc:
            message = str(exc)
        assert f"opcode {name} (" not in message


def test_an_unknown_byte_is_a_corrupt_pickle_naming_the_offset():
    with pytest.raises(ProtocolError) as info:
        decode_metadata(b"\x80\x04]\xff.")
    assert not isinstance(info.value, UnsafeMetadataError)
    assert "byte 0xff is not a pickle opcode at offset 3" in str(info.value)


def test_top_level_containers_are_named_in_the_message():
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(pickle.dumps({"all_good": 1}, protocol=4))
    assert str(info.value).startswith(
        "metadata pickle holds dict, expected a list of arrays (metadata pickle "
        "opcode EMPTY_DICT (0x7d) at offset 11 is not allowed"
    )
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(pickle.dumps([{"all_good": 1}], protocol=4))
    assert "holds dict" not in str(info.value)  # the dict is not the top level
    assert "EMPTY_DICT (0x7d) at offset 13" in str(info.value)


SECRET = "SeCrEt-VaLuE"


@pytest.mark.parametrize(
    "body",
    [
        # A dtype name that is not a plain identifier (shown by type and length).
        op_global("numpy", "dtype") + op_tuple(op_str(SECRET * 100)) + b"R",
        # A dtype "name" that is a tuple holding the secret.
        op_global("numpy", "dtype") + op_tuple(op_tuple(op_str(SECRET))) + b"R",
        # An array shape that is a string.
        op_global("numpy.core.multiarray", "_reconstruct")
        + op_global("numpy", "ndarray")
        + op_tuple(op_int(0))
        + op_bytes(b"b")
        + b"\x87R"
        + op_tuple(op_int(1), op_str(SECRET), op_dtype("u4"), b"\x89", op_bytes(b""))
        + b"b",
        # An array state of the wrong size, holding the secret.
        op_global("numpy.core.multiarray", "_reconstruct")
        + op_global("numpy", "ndarray")
        + op_tuple(op_int(0))
        + op_bytes(b"b")
        + b"\x87R"
        + op_tuple(op_str(SECRET), op_str(SECRET))
        + b"b",
        # _reconstruct with odd arguments.
        op_global("numpy.core.multiarray", "_reconstruct")
        + op_global("numpy", "ndarray")
        + op_tuple(op_str(SECRET))
        + op_bytes(SECRET.encode())
        + b"\x87R",
        # A dtype state with a strange byte order.
        op_dtype("u4", byteorder=SECRET),
        # A list element that is a string.
        op_str(SECRET),
    ],
    ids=[
        "dtype-name",
        "dtype-tuple",
        "shape",
        "array-state",
        "reconstruct",
        "byteorder",
        "element",
    ],
)
def test_messages_never_show_untrusted_values(body):
    with pytest.raises(UnsafeMetadataError) as info:
        decode_metadata(list_pickle(body, proto=4))
    assert SECRET not in str(info.value)
    assert SECRET[:6] not in str(info.value)


def test_arrays_are_read_only_views_of_immutable_bytes(multipart_capture):
    data = multipart_capture[1][2]
    for arr in decode_metadata(data):
        assert not arr.flags.writeable
        assert np.shares_memory(arr, np.frombuffer(data, np.uint8))
    mutable = bytearray(data)
    arrays = decode_metadata(mutable)
    before = [a.copy() for a in arrays]
    for arr in arrays:
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[...] = 0
    mutable[:] = b"\0" * len(mutable)  # the caller reuses its buffer
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b)


# -- MetadataDecoder: the template fast path -----------------------------------
def _assert_same_arrays(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype
        assert a.shape == b.shape
        assert a.flags.f_contiguous == b.flags.f_contiguous
        assert not a.flags.writeable
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("capture", ["dump_capture", "multipart_capture"])
def test_fast_path_matches_the_full_vm_on_real_captures(request, capture):
    messages = request.getfixturevalue(capture)
    if capture == "dump_capture":
        pickles = [m[0] for m in messages if m[0][:1] == b"\x80"]
    else:
        pickles = [m[2] for m in messages if len(m) == 3]
    decoder = MetadataDecoder()
    for i, data in enumerate(pickles):
        got = decoder.decode(data)
        _assert_same_arrays(got, decode_metadata(data))
        # the first takes the full path, every later one is sliced from the template
        assert (decoder.full_decodes, decoder.fast_hits) == (1, i)
    # Memoryview / bytearray / zmq-like inputs take the fast path too.
    for form in (memoryview(pickles[0]), bytearray(pickles[1])):
        _assert_same_arrays(
            decoder.decode(form),
            decode_metadata(pickles[0 if isinstance(form, memoryview) else 1]),
        )
    assert decoder.full_decodes == 1


def test_fast_path_with_synthetic_arrays_of_every_kind():
    decoder = MetadataDecoder()
    rng = np.random.default_rng(5)
    for protocol in (3, 4, 5):
        decoder.reset()
        for k in range(4):
            arrays = [a.copy() for a in ROUND_TRIP_ARRAYS]
            arrays[1] = rng.integers(0, 2**32, 4, dtype=np.uint32)
            arrays[4] = np.asfortranarray(rng.integers(0, 99, (3, 4), dtype=np.uint16))
            data = pickle.dumps(arrays, protocol=protocol)
            got = decoder.decode(data)
            _assert_same_arrays(got, decode_metadata(data))
            _assert_same_arrays(got, arrays)
            assert decoder.fast_hits == 3 * (protocol - 3) + k
    assert decoder.full_decodes == 3


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1
    assert len(old) == len(new)
    return data.replace(old, new, 1)


@pytest.fixture
def warm(multipart_capture, dump_capture):
    """(decoder with a template of the multipart frame 0, a frame-1 pickle)."""
    decoder = MetadataDecoder()
    decoder.decode(multipart_capture[1][2])
    assert (decoder.full_decodes, decoder.fast_hits) == (1, 0)
    return decoder, multipart_capture[2][2], dump_capture[3][0]


def test_data_only_changes_take_the_fast_path(warm):
    decoder, data, _ = warm
    expected = decode_metadata(data)
    got = decoder.decode(data)
    assert (decoder.full_decodes, decoder.fast_hits) == (1, 1)
    _assert_same_arrays(got, expected)
    assert got[1].tolist() == [0, 0, 0, 14079]  # frame 1's all_events


@pytest.mark.parametrize(
    ("old", "new", "error", "fragment"),
    [
        (b"ndarray", b"ndarrax", UnsafeMetadataError, "numpy.ndarrax"),
        (b"_reconstruct", b"_reconstrucT", UnsafeMetadataError, "_reconstrucT"),
        (b"\x8c\x05numpy", b"\x8c\x05posix", UnsafeMetadataError, "posix."),
        (b"\x8c\x02u4", b"\x8c\x02O8", UnsafeMetadataError, "'O8'"),
        (b"\x8c\x02u4", b"\x8c\x02V4", UnsafeMetadataError, "structured"),
        (b"\x8c\x01<", b"\x8c\x01!", UnsafeMetadataError, "byte order"),
        (
            b"R\x94(K\x01K\x04\x85",
            b"R\x94(K\x01K\x05\x85",
            UnsafeMetadataError,
            "needs 40 bytes, the pickle carries 32",
        ),
        (b"C\x20", b"C\x1f", ProtocolError, "corrupt metadata pickle"),
        (b"C\x20", b"\x8e\x20", UnsafeMetadataError, "BINBYTES8"),
        (b"\x93\x94", b"\x930", UnsafeMetadataError, "POP (0x30)"),
    ],
    ids=[
        "global-name",
        "global-name-2",
        "global-module",
        "object-dtype",
        "void-dtype",
        "byteorder",
        "shape",
        "length",
        "opcode",
        "memoize-to-pop",
    ],
)
def test_a_hostile_deviation_from_the_template_takes_the_full_path(
    warm, old, new, error, fragment
):
    decoder, data, _ = warm
    bad = _replace_once(data, old, new)
    assert len(bad) == len(data)
    with pytest.raises(error) as info:
        decoder.decode(bad)
    assert fragment in str(info.value)
    assert (decoder.full_decodes, decoder.fast_hits) == (2, 0)
    # The template survives the failure: the next good frame is fast again.
    decoder.decode(data)
    assert (decoder.full_decodes, decoder.fast_hits) == (2, 1)


def test_a_hostile_same_length_global_in_a_protocol3_pickle(warm):
    _, _, legacy = warm
    decoder = MetadataDecoder()
    decoder.decode(legacy)
    bad = _replace_once(legacy, b"numpy\ndtype\n", b"posix\nwrite\n")
    with pytest.raises(UnsafeMetadataError, match=r"posix\.write"):
        decoder.decode(bad)
    assert (decoder.full_decodes, decoder.fast_hits) == (2, 0)


def test_a_valid_deviation_takes_the_full_path_and_becomes_the_template(warm):
    decoder, data, _ = warm
    signed = _replace_once(data, b"\x8c\x02u4", b"\x8c\x02i4")
    got = decoder.decode(signed)
    assert (decoder.full_decodes, decoder.fast_hits) == (2, 0)
    assert got[1].dtype == np.dtype("<i4")  # the first u4 array became i4
    _assert_same_arrays(got, decode_metadata(signed))
    decoder.decode(signed)
    assert (decoder.full_decodes, decoder.fast_hits) == (2, 1)
    # Back to the original layout: the full path once more, then fast again.
    decoder.decode(data)
    decoder.decode(data)
    assert (decoder.full_decodes, decoder.fast_hits) == (3, 2)


def test_other_lengths_and_layouts_take_the_full_path(warm):
    decoder, data, legacy = warm
    five = encode_metadata([np.zeros(5)] * 8 + [np.zeros((2, 5), np.uint32)])
    assert len(decoder.decode(five)) == 9
    assert len(decoder.decode(legacy)) == 8
    assert (decoder.full_decodes, decoder.fast_hits) == (3, 0)
    with pytest.raises(ProtocolError):
        decoder.decode(data[:-1])
    with pytest.raises(ProtocolError):
        decoder.decode(data + b".")
    assert decoder.full_decodes == 5
    decoder.reset()
    decoder.decode(data)
    assert (decoder.full_decodes, decoder.fast_hits) == (6, 0)


def test_fast_path_keeps_the_size_and_magic_checks(warm):
    decoder, _, _ = warm
    with pytest.raises(UnsafeMetadataError, match="exceeds"):
        decoder.decode(b"\x80" * (MAX_METADATA_BYTES + 1))
    with pytest.raises(ProtocolError, match="not a pickle"):
        decoder.decode(b"{}")
    with pytest.raises(ProtocolError, match="empty metadata part"):
        decoder.decode(b"")


def test_decoding_uses_no_real_unpickler_loads(monkeypatch, multipart_capture):
    """decode_metadata never reaches pickle.loads / pickle.load."""

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle.loads called on network bytes")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    assert len(decode_metadata(multipart_capture[1][2])) == 9
