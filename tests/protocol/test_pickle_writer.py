"""The metadata pickle as the device writes it (``protocol/_pickle_writer.py``).

The device pickles with a numpy 1.x: ``numpy.core.multiarray._reconstruct``.
numpy 2's own pickles name ``numpy._core``, which consumers on numpy < 1.26 (a
dranspose worker, MAX IV's receivers) cannot import. These tests pin what the
writer sends: byte for byte the pickles of both real captures, under whatever
numpy is installed, and readable by this project's decoder and by the
standard unpickler.
"""

from __future__ import annotations

import pickle
import pickletools
import subprocess
import sys
import warnings

import numpy as np
import pytest

from ophyd_xspress.protocol import decode_metadata, encode_metadata

from .conftest import DUMP_NAME, MULTIPART_NAME, load_capture


def _pickles(name: str) -> list[bytes]:
    return [p for m in load_capture(name) for p in m if p[:1] == b"\x80"]


def _globals(data: bytes) -> set[str]:
    """``module name`` of every global the pickle loads (strings fetched from
    the memo resolved, as protocol 4's STACK_GLOBAL reuses them)."""
    names: set[str] = set()
    memo: dict[int, object] = {}
    stack: list[object] = []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            names.add(str(arg))
        elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            stack.append(arg)
        elif opcode.name in ("BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(arg)))
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif opcode.name in ("BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1] if stack else None
        elif opcode.name == "STACK_GLOBAL":
            names.add(f"{stack[-2]} {stack[-1]}")
            stack[-2:] = [None]
        else:
            stack.append(None)
    return names


DEVICE_GLOBALS = {
    "numpy.core.multiarray _reconstruct",
    "numpy ndarray",
    "numpy dtype",
}


@pytest.mark.parametrize(("name", "protocol"), [(DUMP_NAME, 3), (MULTIPART_NAME, 4)])
def test_the_captures_pickles_are_written_byte_for_byte(name: str, protocol: int):
    captured = _pickles(name)
    assert captured, name
    for number, original in enumerate(captured):
        arrays = decode_metadata(original)
        assert original[:2] == bytes([0x80, protocol])
        assert encode_metadata(arrays, protocol) == original, f"{name} pickle {number}"
        assert _globals(original) == DEVICE_GLOBALS


#: dtypes, orders and shapes beyond the device's (the writer is general).
ODD_ARRAYS = [
    np.array([1, 2, 3], dtype=">u4"),
    np.array([True, False]),
    np.array([1 + 2j], dtype=np.complex128),
    np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    np.arange(12.0).reshape(3, 4)[:, ::2],  # not contiguous
    np.arange(300, dtype=np.int64),  # data over 255 bytes: BINBYTES
    np.array([-(2**63), 2**40, -1, 70000], dtype=np.int64),
    np.zeros((0,)),
    np.arange(24, dtype=np.int8).reshape(2, 3, 4),
]


@pytest.mark.parametrize("protocol", [3, 4])
def test_names_numpy_core_and_reads_back_with_both_unpicklers(protocol: int):
    data = encode_metadata(ODD_ARRAYS, protocol)
    assert _globals(data) == DEVICE_GLOBALS
    ours = decode_metadata(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 2 reads numpy.core silently
        standard = pickle.loads(data)  # our own bytes: a trusted pickle
    for want, a, b in zip(ODD_ARRAYS, ours, standard, strict=True):
        assert a.shape == b.shape == want.shape
        np.testing.assert_array_equal(a, want)
        np.testing.assert_array_equal(b, want)
    assert ours[3].flags.f_contiguous


@pytest.mark.parametrize("protocol", [3, 4])
def test_the_same_array_twice_is_one_memo_entry_as_with_the_pickler(protocol: int):
    array = np.arange(4, dtype=np.uint32)
    data = encode_metadata([array, array, np.zeros(2)], protocol)
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert ops.count("REDUCE") == 1 + 1 + 2  # 2 arrays, 2 dtypes (u4, f8)
    got = pickle.loads(data)
    np.testing.assert_array_equal(got[1], array)


@pytest.mark.parametrize("protocol", [3, 4])
def test_lists_of_one_and_none_and_many(protocol: int):
    assert pickle.loads(encode_metadata([], protocol)) == []
    one = pickle.loads(encode_metadata([np.arange(3)], protocol))
    np.testing.assert_array_equal(one[0], np.arange(3))
    many = [np.full(1, i, dtype=np.int16) for i in range(1001)]  # two APPENDS
    got = pickle.loads(encode_metadata(many, protocol))
    assert [int(a[0]) for a in got] == list(range(1001))


def test_protocol_5_and_2_are_refused():
    for protocol in (2, 5):
        with pytest.raises(ValueError, match="protocol 3 or 4"):
            encode_metadata([np.zeros(2)], protocol)


def test_a_fresh_interpreter_reads_it_without_a_warning(tmp_path):
    """A consumer that only unpickles (numpy 1.x or 2.x): the globals it
    imports are ``numpy.core.multiarray`` and ``numpy``, never ``numpy._core``
    (which numpy < 1.26 lacks), and numpy 2 imports them without a
    deprecation warning (``-W error``)."""
    data = encode_metadata(ODD_ARRAYS[:3], 4)
    path = tmp_path / "meta.pickle"
    path.write_bytes(data)
    script = (
        "import pickle\n"
        "seen = []\n"
        "class Spy(pickle.Unpickler):\n"
        "    def find_class(self, module, name):\n"
        "        seen.append(module)\n"
        "        return super().find_class(module, name)\n"
        f"arrays = Spy(open({str(path)!r}, 'rb')).load()\n"
        "print(sorted(set(seen)), [a.tolist() for a in arrays])\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == (
        "['numpy', 'numpy.core.multiarray'] [[1, 2, 3], [True, False], [(1+2j)]]"
    )
