"""Reading and writing ``.cbors`` stream captures."""

from __future__ import annotations

import cbor2
import pytest

from ophyd_xspress.protocol import ProtocolError
from ophyd_xspress.tools import CaptureError, read_capture, write_capture

DUMP_NAME = "xspress3-dump.cbors"
MULTIPART_NAME = "xspress3-multipart.cbors"


def test_read_the_legacy_dump(capture_file):
    messages = list(read_capture(capture_file(DUMP_NAME)))
    assert len(messages) == 62
    assert all(len(m) == 1 for m in messages)
    assert all(isinstance(p, bytes) for m in messages for p in m)
    assert messages[0][0].startswith(b'{"htype":"header"')
    assert messages[-1] == [b'{"htype":"series_end"}']
    assert [len(messages[i][0]) for i in (1, 2, 3)] == [103, 65536, 658]


def test_read_the_multipart_capture(capture_file):
    messages = list(read_capture(str(capture_file(MULTIPART_NAME))))  # str works too
    assert len(messages) == 7
    assert [len(m) for m in messages] == [1, 3, 3, 3, 3, 3, 1]
    assert messages[-1] == [b'{"htype": "series_end"}']
    assert [len(p) for p in messages[1]] == [115, 65536, 653]


@pytest.mark.parametrize("name", [DUMP_NAME, MULTIPART_NAME])
def test_write_read_round_trip_is_byte_identical(tmp_path, capture_file, name):
    source = capture_file(name)
    out = tmp_path / "copy.cbors"
    n = write_capture(out, read_capture(source))
    assert n == {DUMP_NAME: 62, MULTIPART_NAME: 7}[name]
    assert list(read_capture(out)) == list(read_capture(source))
    assert out.read_bytes() == source.read_bytes()


def test_write_accepts_memoryviews_and_empty_messages(tmp_path):
    messages = [
        [b'{"htype": "header"}'],
        [memoryview(b"json"), bytearray(b"\x00" * 16), memoryview(b"\x80\x04.")],
        [],
        [b""],
    ]
    out = tmp_path / "synthetic.cbors"
    assert write_capture(out, messages) == 4
    assert list(read_capture(out)) == [
        [b'{"htype": "header"}'],
        [b"json", b"\x00" * 16, b"\x80\x04."],
        [],
        [b""],
    ]


def test_empty_file_has_no_messages(tmp_path):
    out = tmp_path / "empty.cbors"
    out.write_bytes(b"")
    assert list(read_capture(out)) == []


def test_truncated_file(tmp_path, capture_file):
    data = capture_file(DUMP_NAME).read_bytes()
    out = tmp_path / "truncated.cbors"
    out.write_bytes(data[:-100])
    reader = read_capture(out)
    # Items before the damage are delivered; the error names the item.
    assert len([next(reader) for _ in range(60)]) == 60
    with pytest.raises(CaptureError) as info:
        next(reader)
    assert "CBOR item 60 is corrupt" in str(info.value)
    assert str(out) in str(info.value)


@pytest.mark.parametrize(
    "blob",
    [b"\xff\xff\xff", b"\x5b\x00\x00\x00\x40\x00\x00\x00\x00", b"\x9f\x41"],
    ids=["break-codes", "huge-declared-bytestring", "unterminated-array"],
)
def test_corrupt_file(tmp_path, blob):
    out = tmp_path / "corrupt.cbors"
    out.write_bytes(blob)
    with pytest.raises(CaptureError, match="CBOR item 0 is corrupt"):
        list(read_capture(out))


@pytest.mark.parametrize(
    ("item", "kind"),
    [
        ({"htype": "header"}, "dict"),
        ("header", "str"),
        (42, "int"),
        (b"raw", "bytes"),
        ([b"ok", 5], "list"),
        ([b"ok", "text"], "list"),
    ],
)
def test_item_that_is_not_an_array_of_byte_strings(tmp_path, item, kind):
    out = tmp_path / "odd.cbors"
    out.write_bytes(cbor2.dumps([b"first"]) + cbor2.dumps(item))
    reader = read_capture(out)
    assert next(reader) == [b"first"]
    with pytest.raises(CaptureError) as info:
        next(reader)
    assert f"CBOR item 1 is {kind}, expected an array of byte strings" in str(
        info.value
    )


def test_missing_file(tmp_path):
    with pytest.raises(CaptureError, match="cannot open"):
        list(read_capture(tmp_path / "nope.cbors"))


def test_capture_error_is_a_protocol_error():
    assert issubclass(CaptureError, ProtocolError)
