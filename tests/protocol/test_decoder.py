"""StreamDecoder on the two real captures, on every kind of bad input, and on
lost parts of the legacy framing."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import zmq

from ophyd_xspress.protocol import (
    DEFAULT_SCALER_NAMES,
    MAX_FRAME_BYTES,
    BufferLengthError,
    Frame,
    HeaderMessage,
    InvalidJSONError,
    MissingPartError,
    ProtocolError,
    SeriesEndMessage,
    ShapeTooLargeError,
    StrayFrame,
    StreamDecoder,
    UnknownHtypeError,
    UnsafeMetadataError,
    UnsupportedEncodingError,
    dead_time_from_scalers,
    decode_metadata,
    encode_metadata,
)

TAGS = (*DEFAULT_SCALER_NAMES, "window_counts")


def frames_of(packets):
    return [p for p in packets if isinstance(p, Frame)]


def edit_json(raw: bytes, compact: bool = False, **changes) -> bytes:
    """The JSON part with fields changed (``...`` deletes a field)."""
    obj = json.loads(raw)
    for key, value in changes.items():
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(obj, separators=separators).encode()


def bytes_view(buffer) -> np.ndarray:
    return np.frombuffer(buffer, dtype=np.uint8)


# -- the real captures ---------------------------------------------------------
def test_legacy_dump_decodes(dump_capture, decode_messages):
    decoder, packets = decode_messages(dump_capture)

    assert isinstance(packets[0], HeaderMessage)
    assert isinstance(packets[-1], SeriesEndMessage)
    frames = frames_of(packets)
    assert len(packets) == 22
    assert [f.frame for f in frames] == list(range(20))
    assert decoder.framing == "legacy"
    assert decoder.frames_decoded == 20
    assert not decoder.tracker.counts
    for frame in frames:
        assert frame.framing == "legacy"
        assert (frame.channels, frame.bins) == (4, 4096)
        assert frame.spectra.shape == (4, 4096)
        assert frame.spectra.dtype == np.dtype("<u4")
        assert frame.exptime == 0.099999875
        assert list(frame.metadata) == list(DEFAULT_SCALER_NAMES)
        assert frame.window_counts is None
        assert frame.extra == {}
        np.testing.assert_array_equal(
            frame.spectra.sum(axis=1, dtype=np.uint64), frame["all_good"]
        )
        dt = dead_time_from_scalers(frame.scalers)
        np.testing.assert_allclose(
            dt.dtc, frame["dead_time_correction"], rtol=1e-12, atol=0
        )
    # One concrete frame, by value.
    assert frames[0]["all_good"].tolist() == [0, 0, 0, 1]
    assert frames[19]["all_events"].tolist() == [0, 2, 0, 8]


def test_multipart_capture_decodes(multipart_capture, decode_messages):
    decoder, packets = decode_messages(multipart_capture)

    header = packets[0]
    assert isinstance(header, HeaderMessage)
    assert header.extra_tags == TAGS
    assert isinstance(packets[-1], SeriesEndMessage)
    frames = frames_of(packets)
    assert [f.frame for f in frames] == [0, 1, 2, 3, 4]
    assert decoder.framing == "multipart"
    assert not decoder.tracker.counts
    for frame in frames:
        assert frame.framing == "multipart"
        assert (frame.channels, frame.bins) == (4, 4096)
        assert frame.exptime == 0.049999875
        assert tuple(frame.metadata) == header.extra_tags
        assert frame.window_counts is not None
        assert frame.window_counts.shape == (2, 4)
        assert frame.window_counts.dtype == np.dtype("<u4")
        assert set(frame.scalers) == set(DEFAULT_SCALER_NAMES)
        np.testing.assert_array_equal(
            frame.spectra.sum(axis=1, dtype=np.uint64), frame["all_good"]
        )
        dt = dead_time_from_scalers(frame.scalers)
        np.testing.assert_allclose(
            dt.dtc, frame["dead_time_correction"], rtol=1e-12, atol=0
        )
    assert frames[0]["all_good"].tolist() == [0, 0, 0, 12303]
    assert frames[1].window_counts.tolist() == [[0, 0, 0, 2], [0, 0, 0, 2]]
    assert frames[0].spectra[3].sum() == 12303


def test_header_extra_tags_name_the_arrays(multipart_capture):
    header = json.loads(multipart_capture[0][0])
    header["extra_tags"] = [*DEFAULT_SCALER_NAMES, "hw_windows"]
    decoder = StreamDecoder()
    decoder.feed([json.dumps(header).encode()])
    (frame,) = decoder.feed(multipart_capture[1])
    assert list(frame.metadata)[-1] == "hw_windows"
    assert frame.window_counts is None
    assert list(frame.extra) == ["hw_windows"]
    assert frame.extra["hw_windows"].shape == (2, 4)


def test_extra_tags_without_a_scaler_name_is_refused(multipart_capture):
    header = json.loads(multipart_capture[0][0])
    header["extra_tags"] = ["good" if t == "all_good" else t for t in TAGS]
    decoder = StreamDecoder()
    decoder.feed([json.dumps(header).encode()])
    with pytest.raises(ProtocolError, match="frame 0: metadata lacks all_good"):
        decoder.feed(multipart_capture[1])
    assert decoder.tracker.counts["bad_frame"] == 1


def test_without_extra_tags_a_ninth_array_is_window_counts(
    multipart_capture, dump_capture
):
    decoder = StreamDecoder()
    decoder.feed(dump_capture[0])  # legacy header: no extra_tags
    (frame,) = decoder.feed(multipart_capture[2])
    assert list(frame.metadata) == list(TAGS)
    assert frame.window_counts.tolist() == [[0, 0, 0, 2], [0, 0, 0, 2]]


def test_unknown_extra_arrays_are_kept_by_position(multipart_capture):
    decoder = StreamDecoder()
    decoder.feed([b'{"htype": "header"}'])
    arrays = [np.zeros(4, dtype=np.uint32) for _ in range(8)]
    arrays += [np.ones((2, 4), np.uint32), np.arange(3.0), np.ones((3, 4))]
    (frame,) = decoder.feed(
        [multipart_capture[1][0], multipart_capture[1][1], encode_metadata(arrays)]
    )
    assert frame.window_counts.tolist() == [[1] * 4] * 2
    assert list(frame.extra) == ["extra_9", "extra_10"]
    assert frame.extra["extra_9"].tolist() == [0.0, 1.0, 2.0]


def test_metadata_arrays_are_named_in_order_and_shape_checked(multipart_capture):
    decoder = StreamDecoder()
    decoder.feed(multipart_capture[0])
    head, data, _ = multipart_capture[1]
    seven = encode_metadata([np.zeros(4)] * 7)
    with pytest.raises(
        ProtocolError, match="metadata has 7 arrays, expected at least 8"
    ):
        decoder.feed([head, data, seven])
    five_channels = encode_metadata([np.zeros(5)] * 8)
    with pytest.raises(
        ProtocolError,
        match=r"scaler output_count_rate has shape \(5,\), expected \(4,\)",
    ):
        decoder.feed([head, data, five_channels])
    bad_windows = encode_metadata([np.zeros(4)] * 8 + [np.zeros((2, 5))])
    with pytest.raises(ProtocolError, match=r"window_counts has shape \(2, 5\)"):
        decoder.feed([head, data, bad_windows])
    assert decoder.tracker.counts["bad_frame"] == 3
    assert decoder.feed(multipart_capture[2])[0].frame == 1


# -- input types and zero copy -------------------------------------------------
def test_feed_accepts_bytes_memoryview_bytearray_and_zmq_frames(multipart_capture):
    decoder = StreamDecoder()
    decoder.feed([memoryview(multipart_capture[0][0])])

    as_bytes = multipart_capture[1]
    (f0,) = decoder.feed(as_bytes)
    assert np.shares_memory(f0.spectra, bytes_view(as_bytes[1]))

    as_views = [memoryview(p) for p in multipart_capture[2]]
    (f1,) = decoder.feed(as_views)
    assert np.shares_memory(f1.spectra, bytes_view(as_views[1]))

    as_bytearrays = [bytearray(p) for p in multipart_capture[3]]
    (f2,) = decoder.feed(as_bytearrays)
    assert np.shares_memory(f2.spectra, bytes_view(as_bytearrays[1]))

    as_zmq = [zmq.Frame(p) for p in multipart_capture[4]]
    (f3,) = decoder.feed(as_zmq)
    assert np.shares_memory(f3.spectra, bytes_view(as_zmq[1].buffer))

    as_tuple = tuple(multipart_capture[5])
    (f4,) = decoder.feed(as_tuple)
    for frame in (f0, f1, f2, f3, f4):
        assert frame.spectra.flags.owndata is False
    assert [f.frame for f in (f0, f1, f2, f3, f4)] == [0, 1, 2, 3, 4]
    assert f3.spectra[3].sum() == f3["all_good"][3]
    assert decoder.feed(multipart_capture[6]) == [SeriesEndMessage()]


def test_legacy_single_parts_as_zmq_frames_and_bare_bytes(dump_capture):
    decoder = StreamDecoder()
    assert isinstance(decoder.feed(dump_capture[0][0])[0], HeaderMessage)
    parts = [zmq.Frame(m[0]) for m in dump_capture[1:4]]
    assert decoder.feed([parts[0]]) == []
    assert decoder.feed([parts[1]]) == []
    (frame,) = decoder.feed([parts[2]])
    assert np.shares_memory(frame.spectra, bytes_view(parts[1].buffer))
    # A bare bytes object is one single-part message.
    assert decoder.feed(dump_capture[4][0]) == []
    assert decoder.feed(memoryview(dump_capture[5][0])) == []
    (frame,) = decoder.feed(dump_capture[6][0])
    assert frame.frame == 1
    assert np.shares_memory(frame.spectra, bytes_view(dump_capture[5][0]))


@pytest.mark.parametrize("kind", ["zmq.Frame", "bytearray", "memoryview", "bytes"])
def test_spectra_view_is_read_only_for_writable_buffers(multipart_capture, kind):
    make = {
        "zmq.Frame": zmq.Frame,
        "bytearray": bytearray,
        "memoryview": lambda p: memoryview(bytearray(p)),
        "bytes": bytes,
    }[kind]
    decoder = StreamDecoder()
    decoder.feed(multipart_capture[0])
    for message in multipart_capture[1:3]:  # the full VM, then the fast path
        parts = [make(p) for p in message]
        (frame,) = decoder.feed(parts)
        assert not frame.spectra.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            frame.spectra[0, 0] = 1
        for name, array in frame.metadata.items():
            assert not array.flags.writeable, name
        # still a view on the received buffer, not a copy
        buffer = parts[1].buffer if kind == "zmq.Frame" else parts[1]
        assert np.shares_memory(frame.spectra, bytes_view(buffer))


# -- one test per bad input ----------------------------------------------------
@pytest.fixture
def mp(multipart_capture):
    """(decoder after the multipart header, frame-0 parts, next good message)."""
    decoder = StreamDecoder()
    decoder.feed(multipart_capture[0])
    return decoder, list(multipart_capture[1]), multipart_capture[2]


def recovers(decoder: StreamDecoder, good_message, frame_number: int = 1) -> None:
    (frame,) = decoder.feed(good_message)
    assert frame.frame == frame_number
    assert frame.spectra[3].sum() == frame["all_good"][3]


@pytest.mark.parametrize(
    ("json_part", "fragment"),
    [
        (b'{"htype": "image", "frame": ', "invalid JSON part (Expecting value"),
        (b'{"htype": "\xff\xfe"}', "invalid JSON part ('utf-8' codec can't decode"),
        (b"{" * 100_000 + b"}" * 100_000, "invalid JSON part"),
    ],
    ids=["truncated", "not-utf8", "too-deep"],
)
def test_invalid_json_multipart(mp, json_part, fragment):
    decoder, (_, data, meta), good = mp
    with pytest.raises(InvalidJSONError) as info:
        decoder.feed([json_part, data, meta])
    assert fragment in str(info.value)
    assert repr(json_part[:20])[2:-1] in str(info.value)  # a preview of the bytes
    recovers(decoder, good)


def test_invalid_json_single_part(dump_capture):
    decoder = StreamDecoder()
    decoder.feed(dump_capture[0])
    with pytest.raises(InvalidJSONError, match="invalid JSON part"):
        decoder.feed([b'{"htype":"image","frame":0,'])
    decoder.feed(dump_capture[4])
    decoder.feed(dump_capture[5])
    assert decoder.feed(dump_capture[6])[0].frame == 1


def test_oversized_json_part(mp):
    decoder, (_, data, meta), good = mp
    big = b'{"htype": "image", "pad": "' + b"x" * (1 << 20) + b'"}'
    with pytest.raises(
        InvalidJSONError, match=f"JSON part of {len(big)} bytes exceeds"
    ):
        decoder.feed([big, data, meta])
    recovers(decoder, good)


@pytest.mark.parametrize(
    ("json_part", "kind"),
    [(b"[1, 2]", "list"), (b'"image"', "str"), (b"42", "int"), (b"null", "NoneType")],
)
def test_json_that_is_not_an_object_multipart(mp, json_part, kind):
    decoder, (_, data, meta), good = mp
    with pytest.raises(InvalidJSONError) as info:
        decoder.feed([json_part, data, meta])
    assert f"JSON part is a {kind}, expected an object with 'htype'" in str(info.value)
    recovers(decoder, good)


@pytest.mark.parametrize(
    "part", [b'[{"htype": "image", "frame": 0}]', b"[]", b" [1, 2]\n", b"[null]"]
)
def test_json_list_single_part(dump_capture, part):
    decoder = StreamDecoder()
    decoder.feed(dump_capture[0])
    with pytest.raises(InvalidJSONError, match="JSON part is a list"):
        decoder.feed([part])
    assert decoder.tracker.counts["resync"] == 0
    decoder.feed(dump_capture[1])
    decoder.feed(dump_capture[2])
    assert decoder.feed(dump_capture[3])[0].frame == 0


def test_json_list_single_part_while_a_frame_is_pending(dump_capture):
    """A JSON list instead of the data or metadata part: the frame is lost
    (counted as a resync), the list is reported."""
    for lost in (1, 2):
        decoder = StreamDecoder()
        decoder.feed(dump_capture[0])
        for message in dump_capture[1 : 1 + lost]:
            decoder.feed(message)
        with pytest.raises(InvalidJSONError, match="JSON part is a list"):
            decoder.feed([b'[{"htype": "image"}]'])
        assert decoder.tracker.counts["resync"] == 1


@pytest.mark.parametrize("state", ["data", "meta", "idle"])
def test_binary_parts_starting_with_a_bracket_are_not_json(dump_capture, state):
    """Spectra whose first byte is '[' (0x5B) are data; a stray binary part that
    starts with '[' but does not end with ']' is counted, not raised."""
    decoder = StreamDecoder()
    decoder.feed(dump_capture[0])
    head, data, meta = (m[0] for m in dump_capture[1:4])
    bracket = b"[" + data[1:]
    assert bracket[-1:] != b"]"
    if state == "data":
        decoder.feed([head])
        assert decoder.feed([bracket]) == []
        (frame,) = decoder.feed([meta])
        assert frame.spectra.view(np.uint8)[0, 0] == ord("[")
        assert not decoder.tracker.counts
    elif state == "meta":
        decoder.feed([head])
        decoder.feed([data])
        with pytest.raises(ProtocolError, match="not a pickle"):
            decoder.feed([b"[" + meta[1:]])
    else:
        assert decoder.feed([bracket]) == []
        assert decoder.tracker.counts["resync"] == 1
        assert "stray 65536-byte binary part" in decoder.tracker.anomalies[-1].message
    # The right length ending in ']' is still data where data is expected.
    decoder = StreamDecoder()
    decoder.feed(dump_capture[0])
    decoder.feed([head])
    assert decoder.feed([b"[" + data[1:-1] + b"]"]) == []
    assert decoder.feed([meta])[0].frame == 0


def test_json_list_single_part_is_at_least_counted(dump_capture):
    decoder = StreamDecoder()
    decoder.feed(dump_capture[0])
    with pytest.raises(InvalidJSONError):
        decoder.feed([b'[{"htype": "image", "frame": 0}]'])
    assert decoder.tracker.counts["resync"] == 0
    decoder.feed(dump_capture[1])
    decoder.feed(dump_capture[2])
    assert decoder.feed(dump_capture[3])[0].frame == 0


@pytest.mark.parametrize(
    ("json_part", "shown"),
    [
        (b'{"htype": "dimage", "frame": 0}', "'dimage'"),
        (b'{"htype": 3}', "3"),
        (b'{"frame": 0, "shape": [4, 4096]}', "None"),
        (b'{"htype": ["image", 1, {"a": 2}]}', "a JSON list of 3 items"),
        (b'{"htype": {"image": 1}}', "a JSON dict of 1 items"),
        (b'{"htype": "' + b"x" * 5000 + b'"}', "'" + "x" * 40 + "'..."),
        (b'{"htype": ' + b"9" * 1000 + b"}", "a huge integer"),
    ],
)
def test_unknown_htype(mp, json_part, shown):
    decoder, (_, data, meta), good = mp
    with pytest.raises(UnknownHtypeError) as info:
        decoder.feed([json_part, data, meta])
    assert f"unknown htype {shown}" in str(info.value)
    assert "expected header, image or series_end" in str(info.value)
    recovers(decoder, good)


def test_unknown_htype_single_part(mp):
    decoder, _, good = mp
    with pytest.raises(UnknownHtypeError, match="'dseries_end'"):
        decoder.feed([b'{"htype": "dseries_end"}'])
    recovers(decoder, good)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"frame": ...}, "frame: Field required"),
        ({"shape": ...}, "shape: Field required"),
        ({"frame": -1}, "frame: Input should be greater than or equal to 0"),
        ({"frame": "first"}, "frame: Input should be a valid integer"),
        ({"exptime": "long"}, "exptime: Input should be a valid number"),
        ({"compression": None}, "compression: Input should be a valid string"),
    ],
)
def test_missing_or_bad_required_field(mp, change, fragment):
    decoder, (head, data, meta), good = mp
    with pytest.raises(InvalidJSONError) as info:
        decoder.feed([edit_json(head, **change), data, meta])
    assert "bad image packet" in str(info.value)
    assert fragment in str(info.value)
    recovers(decoder, good)


def test_bad_field_message_names_only_the_real_problem(mp):
    decoder, (head, data, meta), _ = mp
    with pytest.raises(InvalidJSONError) as info:
        decoder.feed([edit_json(head, frame=...), data, meta])
    assert str(info.value) == "bad image packet: frame: Field required"
    with pytest.raises(InvalidJSONError) as info:
        decoder.feed([b'{"htype": "header", "overwritable": "maybe"}'])
    assert str(info.value) == (
        "bad header packet: overwritable: Input should be a valid boolean, "
        "unable to interpret input"
    )


@pytest.mark.parametrize("dtype", ["complex128", "object", "float16", ">u4", "U4"])
def test_unsupported_type(mp, dtype):
    decoder, (head, data, meta), good = mp
    with pytest.raises(UnsupportedEncodingError) as info:
        decoder.feed([edit_json(head, type=dtype), data, meta])
    assert f"frame 0: spectra type {dtype!r} is not supported" in str(info.value)
    assert "expected one of" in str(info.value)
    assert "uint32" in str(info.value)
    recovers(decoder, good)


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "zlib", ""])
def test_unsupported_compression(mp, compression):
    decoder, (head, data, meta), good = mp
    with pytest.raises(UnsupportedEncodingError) as info:
        decoder.feed([edit_json(head, compression=compression), data, meta])
    assert f"compression {compression!r} is not supported (expected 'none')" in str(
        info.value
    )
    recovers(decoder, good)


@pytest.mark.parametrize(
    ("dtype", "expected"), [("uint16", 32768), ("uint64", 131072), ("float32", 65536)]
)
def test_other_supported_types_check_their_own_length(mp, dtype, expected):
    decoder, (head, data, meta), good = mp
    with pytest.raises(BufferLengthError) as info:
        decoder.feed([edit_json(head, type=dtype), data + b"\0", meta])
    assert f"spectra buffer is 65537 bytes, expected {expected}" in str(info.value)
    recovers(decoder, good)


@pytest.mark.parametrize("delta", [-4, -1, 1, 4, -65536])
def test_buffer_length_multipart(mp, delta):
    decoder, (head, data, meta), good = mp
    bad = data[:delta] if delta < 0 else data + b"\0" * delta
    with pytest.raises(BufferLengthError) as info:
        decoder.feed([head, bad, meta])
    message = str(info.value)
    assert f"frame 0: spectra buffer is {len(bad)} bytes, expected 65536" in message
    assert "shape [4, 4096] x uint32" in message
    assert decoder.tracker.counts["bad_frame"] == 1
    assert decoder.tracker.anomalies[-1].frames == (0,)
    recovers(decoder, good)


@pytest.mark.parametrize("delta", [-4, 4])
def test_buffer_length_legacy(dump_capture, delta):
    decoder = StreamDecoder()
    decoder.feed(dump_capture[0])
    (head,), (data,), (meta,) = dump_capture[1:4]
    bad = data[:delta] if delta < 0 else data + b"\0" * delta
    assert decoder.feed([head]) == []
    with pytest.raises(BufferLengthError) as info:
        decoder.feed([bad])
    assert f"frame 0: spectra buffer is {len(bad)} bytes, expected 65536" in str(
        info.value
    )
    assert decoder.feed([meta]) == []  # the orphan pickle is swallowed
    assert decoder.tracker.counts["bad_frame"] == 1
    assert decoder.tracker.counts["resync"] == 0
    for message in dump_capture[4:7]:
        packets = decoder.feed(message)
    assert packets[0].frame == 1


def test_absurd_shape_is_refused_without_allocating(mp):
    decoder, (head, data, meta), good = mp
    bad = edit_json(head, shape=[10**9, 4096])
    tracemalloc.start()
    try:
        with pytest.raises(ShapeTooLargeError) as info:
            decoder.feed([bad, data, meta])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024
    assert "shape [1000000000, 4096] outside 1..256 channels x 1..65536 bins" in str(
        info.value
    )
    recovers(decoder, good)


@pytest.mark.parametrize(
    ("dtype", "shape", "refused"),
    [
        ("uint64", [256, 65536], True),  # 128 MiB
        ("uint64", [129, 65536], True),  # just over 64 MiB
        ("uint32", [256, 65536], False),  # exactly 64 MiB
        ("uint64", [128, 65536], False),
    ],
)
def test_max_frame_bytes_is_enforced(mp, dtype, shape, refused):
    assert MAX_FRAME_BYTES == 64 * 1024 * 1024
    decoder, (head, data, meta), good = mp
    part = edit_json(head, type=dtype, shape=shape)
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    error = ShapeTooLargeError if refused else BufferLengthError
    with pytest.raises(error) as info:
        decoder.feed([part, data, meta])
    if refused:
        assert f"is {nbytes} bytes, over the {MAX_FRAME_BYTES} limit" in str(info.value)
    else:
        assert f"expected {nbytes}" in str(info.value)
    recovers(decoder, good)


def test_absurd_shape_single_part(dump_capture):
    decoder = StreamDecoder()
    decoder.feed(dump_capture[0])
    bad = edit_json(dump_capture[1][0], compact=True, shape=[4, 10**12])
    with pytest.raises(ShapeTooLargeError, match=r"\[4, 1000000000000\]"):
        decoder.feed([bad])
    # Its data and metadata parts still arrive: stray, counted, not raised.
    assert decoder.feed(dump_capture[2]) == []
    assert decoder.feed(dump_capture[3]) == []
    assert decoder.tracker.counts["resync"] == 2
    decoder.feed(dump_capture[4])
    decoder.feed(dump_capture[5])
    assert decoder.feed(dump_capture[6])[0].frame == 1


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([1, 4, 4096], "shape [1, 4, 4096] is not [channels, bins]"),
        ([16384], "shape [16384] is not [channels, bins]"),
        ([], "shape [] is not [channels, bins]"),
        ([0, 4096], "shape [0, 4096] outside"),
        ([4, 0], "shape [4, 0] outside"),
        ([4, -4096], "shape [4, -4096] outside"),
        ([257, 4096], "shape [257, 4096] outside"),
        ([4, 65537], "shape [4, 65537] outside"),
    ],
)
def test_bad_shapes(mp, shape, fragment):
    decoder, (head, data, meta), good = mp
    with pytest.raises(ShapeTooLargeError) as info:
        decoder.feed([edit_json(head, shape=shape), data, meta])
    assert fragment in str(info.value)
    recovers(decoder, good)


def test_image_before_any_header_multipart(multipart_capture):
    decoder = StreamDecoder()
    (stray,) = decoder.feed(multipart_capture[1])
    assert isinstance(stray, StrayFrame)  # a packet, with the decoded frame
    assert stray.where == "before any header"
    assert stray.frame.frame == 0
    assert decoder.tracker.counts["frame_outside_series"] == 1
    assert decoder.tracker.anomalies[-1].frames == (0,)
    assert decoder.frames_decoded == 0
    decoder.feed(multipart_capture[0])
    recovers(decoder, multipart_capture[2])


def test_image_before_any_header_legacy(dump_capture):
    decoder = StreamDecoder()
    assert decoder.feed(dump_capture[1]) == []
    assert decoder.feed(dump_capture[2]) == []
    (stray,) = decoder.feed(dump_capture[3])
    assert isinstance(stray, StrayFrame)
    assert stray.frame.frame == 0
    assert decoder.tracker.counts["frame_outside_series"] == 1
    decoder.feed(dump_capture[0])
    for message in dump_capture[4:7]:
        packets = decoder.feed(message)
    assert packets[0].frame == 1


@pytest.mark.parametrize("n_parts", [2, 4, 5])
def test_multipart_with_wrong_number_of_parts(mp, n_parts):
    decoder, (head, data, meta), good = mp
    parts = [head, data, meta, meta, meta][:n_parts]
    with pytest.raises(MissingPartError) as info:
        decoder.feed(parts)
    assert f"frame 0: multipart message has {n_parts} parts, expected 3" in str(
        info.value
    )
    recovers(decoder, good)


@pytest.mark.parametrize("which", ["header", "series_end"])
def test_header_or_series_end_with_extra_parts(mp, multipart_capture, which):
    decoder, (_, data, _), good = mp
    json_part = (
        multipart_capture[0][0] if which == "header" else multipart_capture[6][0]
    )
    with pytest.raises(ProtocolError) as info:
        decoder.feed([json_part, data])
    assert str(info.value) == (
        f"{which} packet sent with 1 extra part(s); expected a single-part "
        f"message: the whole 2-part message was ignored (the {which} was not "
        "applied)"
    )
    tracker = decoder.tracker
    assert tracker.counts["malformed_message"] == 1
    assert tracker.anomalies[-1].kind == "malformed_message"
    assert tracker.anomalies[-1].message == str(info.value)
    # Not applied: still the same series, not ended.
    assert len(tracker.series) == 1
    assert not tracker.series[0].ended
    recovers(decoder, good)


def test_empty_message(mp):
    decoder, _, good = mp
    with pytest.raises(MissingPartError, match="empty ZeroMQ message"):
        decoder.feed([])
    recovers(decoder, good)


def test_empty_single_part_is_counted_as_stray(mp):
    decoder, _, good = mp
    assert decoder.feed([b""]) == []
    assert decoder.tracker.counts["resync"] == 1
    assert "stray 0-byte binary part" in decoder.tracker.anomalies[-1].message
    recovers(decoder, good)


def test_part_that_is_not_bytes_like(mp):
    decoder, (head, _, meta), good = mp
    with pytest.raises(ProtocolError, match="part of type int is not bytes-like"):
        decoder.feed([head, 12345, meta])
    with pytest.raises(ProtocolError, match="part of type str is not bytes-like"):
        decoder.feed(["{}"])
    recovers(decoder, good)


def test_hostile_metadata_in_a_frame(mp, tmp_path):
    decoder, (head, data, _), good = mp
    target = tmp_path / "pwned"
    evil = (
        b"\x80\x03cbuiltins\nopen\n(X"
        + len(str(target)).to_bytes(4, "little")
        + str(target).encode()
        + b"X\x01\x00\x00\x00wtR."
    )
    with pytest.raises(UnsafeMetadataError, match=r"builtins\.open"):
        decoder.feed([head, data, evil])
    assert not target.exists()
    assert decoder.tracker.counts["bad_frame"] == 1
    assert "frame 0 dropped" in decoder.tracker.anomalies[-1].message
    recovers(decoder, good)


@pytest.mark.parametrize("frame_number", [2**63, 2**64 + 1, 10**30])
def test_huge_frame_number_is_a_protocol_error(mp, frame_number):
    decoder, (head, data, meta), good = mp
    with pytest.raises(InvalidJSONError) as info:
        decoder.feed([edit_json(head, frame=frame_number), data, meta])
    assert (
        str(info.value)
        == "bad image packet: frame: Input should be less than 9223372036854775808"
    )
    recovers(decoder, good)


def test_frame_number_just_below_2_63_is_decoded(mp):
    decoder, (head, data, meta), _ = mp
    (frame,) = decoder.feed([edit_json(head, frame=2**63 - 1), data, meta])
    assert frame.frame == 2**63 - 1
    assert decoder.tracker.current.missing_count == 2**63 - 1
    (again,) = decoder.feed([edit_json(head, frame=5), data, meta])  # late
    assert decoder.tracker.current.missing_count == 2**63 - 2
    assert again.frame == 5
    assert again.arrival.kind == "late"


def test_large_frame_numbers_below_2_63_are_decoded(mp, multipart_capture):
    decoder, (head, data, meta), _ = mp
    (frame,) = decoder.feed([edit_json(head, frame=2**62), data, meta])
    assert frame.frame == 2**62
    decoder.feed(multipart_capture[6])


# -- legacy framing: lost parts ------------------------------------------------
def legacy_index(frame: int, part: int) -> int:
    """Index in the dump of frame ``frame``'s part 0 (JSON), 1 (data) or 2 (pickle)."""
    return 1 + 3 * frame + part


@pytest.mark.parametrize(
    ("k", "dropped", "resyncs"),
    [
        (5, (1,), 1),  # data part lost: the pickle arrives when data is expected
        (5, (2,), 1),  # pickle lost: the next JSON arrives when metadata is expected
        (5, (1, 2), 1),  # both lost: the next JSON arrives when data is expected
        (5, (0,), 2),  # JSON lost: data and pickle are stray parts
        (0, (1,), 1),
        (18, (2,), 1),
    ],
    ids=["data", "pickle", "data+pickle", "json", "first-data", "late-pickle"],
)
def test_legacy_resync_after_lost_part(
    dump_capture, decode_messages, k, dropped, resyncs
):
    drop = {legacy_index(k, p) for p in dropped}
    messages = [m for i, m in enumerate(dump_capture) if i not in drop]

    decoder, packets = decode_messages(messages)

    frames = frames_of(packets)
    assert [f.frame for f in frames] == [n for n in range(20) if n != k]
    for frame in frames:
        np.testing.assert_array_equal(frame.spectra.sum(axis=1), frame["all_good"])
    counts = decoder.tracker.counts
    assert counts["resync"] == resyncs
    assert counts["missing"] == 1
    missing = [a for a in decoder.tracker.anomalies if a.kind == "missing"]
    assert [a.frames for a in missing] == [(k,)]
    assert f"never received: {k}" in missing[0].message
    assert decoder.tracker.series[0].missing_frames == [k]
    assert isinstance(packets[-1], SeriesEndMessage)


def test_legacy_last_pickle_lost_before_series_end(dump_capture, decode_messages):
    messages = [m for i, m in enumerate(dump_capture) if i != legacy_index(19, 2)]
    decoder, packets = decode_messages(messages)
    assert [f.frame for f in frames_of(packets)] == list(range(19))
    assert isinstance(packets[-1], SeriesEndMessage)
    assert decoder.tracker.counts["resync"] == 1
    assert "frame 19: metadata part lost" in decoder.tracker.anomalies[0].message


def test_legacy_stream_ending_inside_a_frame(dump_capture):
    decoder = StreamDecoder()
    for message in dump_capture[:6]:  # header, frame 0, JSON + data of frame 1
        decoder.feed(message)
    decoder.finish()
    assert decoder.tracker.counts["resync"] == 1
    assert "stream ended inside frame 1" in decoder.tracker.anomalies[-1].message


def test_multipart_message_interrupting_a_legacy_frame(dump_capture, multipart_capture):
    decoder = StreamDecoder()
    decoder.feed(dump_capture[0])
    decoder.feed(dump_capture[1])  # JSON of legacy frame 0, then nothing
    (frame,) = decoder.feed(multipart_capture[2])  # multipart frame 1
    assert frame.frame == 1
    assert frame.framing == "multipart"
    assert decoder.tracker.counts["resync"] == 1
    assert "interrupted legacy frame 0" in decoder.tracker.anomalies[0].message


def test_metadata_fast_path_is_used_per_decoder(
    dump_capture, multipart_capture, decode_messages
):
    decoder, packets = decode_messages(multipart_capture)
    assert decoder.metadata_decoder.full_decodes == 1
    assert decoder.metadata_decoder.fast_hits == 4
    # A fresh decoder starts with no template; the legacy pickles (protocol 3)
    # have another layout.
    other, legacy = decode_messages(dump_capture)
    assert other.metadata_decoder is not decoder.metadata_decoder
    assert (other.metadata_decoder.full_decodes, other.metadata_decoder.fast_hits) == (
        1,
        19,
    )
    # What the fast path gives equals the full VM's result.
    for frame, message in zip(frames_of(packets), multipart_capture[1:6], strict=True):
        expected = decode_metadata(message[2])
        for got, want in zip(frame.metadata.values(), expected, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    assert len(frames_of(legacy)) == 20


def test_hostile_metadata_after_a_template_is_still_refused(mp, multipart_capture):
    decoder, _, _ = mp
    decoder.feed(multipart_capture[1])
    head, data, meta = multipart_capture[2]
    evil = meta.replace(b"\x8c\x05numpy", b"\x8c\x05posix", 1)
    assert len(evil) == len(meta)
    with pytest.raises(UnsafeMetadataError, match=r"posix\."):
        decoder.feed([head, data, evil])
    assert decoder.tracker.counts["bad_frame"] == 1
    assert decoder.metadata_decoder.full_decodes == 2
    (frame,) = decoder.feed(multipart_capture[3])
    assert frame.frame == 2
    assert decoder.metadata_decoder.fast_hits == 1


def test_mixed_framings_in_one_stream(dump_capture, multipart_capture):
    decoder = StreamDecoder()
    decoder.feed(multipart_capture[0])
    packets = []
    for message in [*dump_capture[1:4], multipart_capture[2], *dump_capture[7:10]]:
        packets += decoder.feed(message)
    assert [(f.frame, f.framing) for f in packets] == [
        (0, "legacy"),
        (1, "multipart"),
        (2, "legacy"),
    ]
    assert not decoder.tracker.counts
