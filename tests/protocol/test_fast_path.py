"""The decoder's fast paths give exactly what the full path gives.

* image JSON: a part equal to the last validated one but for the frame digits
  skips parsing and validation; anything else (and every error) is the full
  path's; the full path (pydantic's validate_json, then the json module for
  what it refuses) is the json module's reading, errors included;
* metadata: a pickle that deviates from the template outside its array data
  takes the full path (hostile ones are still refused);
* :class:`FrameMetadata`: lazy arrays equal the eager ones, one layout object
  per template and names, and its columns over stacked pickles equal the
  per-frame arrays bit for bit.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
from typing import Any

import numpy as np
import pydantic
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ophyd_xspress.protocol import (
    DEFAULT_SCALER_NAMES,
    MAX_FRAME_NUMBER,
    Frame,
    FrameMetadata,
    HeaderMessage,
    InvalidJSONError,
    MetadataField,
    MetadataLayout,
    ProtocolError,
    StreamDecoder,
    StreamEncoder,
    UnsafeMetadataError,
    _image,
    decode_metadata,
    make_frame,
    parse_json_part,
)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
pytestmark = pytest.mark.timeout(120)

TAGS = (*DEFAULT_SCALER_NAMES, "window_counts")
_FRAME_VALUE = re.compile(rb'("frame"\s*:\s*)(\d+)')


def frames_of(packets: list[Any]) -> list[Frame]:
    return [p for p in packets if isinstance(p, Frame)]


def renumber(head: bytes, number: int | bytes) -> bytes:
    """The JSON part with the digits of its (first) frame value replaced."""
    digits = number if isinstance(number, bytes) else str(number).encode()
    out, n = _FRAME_VALUE.subn(lambda m: m.group(1) + digits, head, count=1)
    assert n == 1
    return out


def as_messages(framing: str, head: bytes, data: bytes, meta: bytes) -> list[Any]:
    if framing == "multipart":
        return [[head, data, meta]]
    return [[head], [data], [meta]]


def feed_all(decoder: StreamDecoder, messages: list[Any]) -> list[Any]:
    return [packet for message in messages for packet in decoder.feed(message)]


def outcome(decoder: StreamDecoder, messages: list[Any]) -> tuple[Any, ...]:
    """What feeding ``messages`` gives: every packet (by value, down to the
    model's fields set, its extras and the array bytes), or the error raised."""
    packets: list[Any] = []
    try:
        for message in messages:
            packets.extend(decoder.feed(message))
    except ProtocolError as exc:
        return ("raised", type(exc), str(exc), [describe(p) for p in packets])
    return ("ok", [describe(p) for p in packets])


def describe(packet: Any) -> tuple[Any, ...]:
    if not isinstance(packet, Frame):
        return ("packet", type(packet), repr(packet))
    info = packet.info
    return (
        "frame",
        type(info),
        # repr: extras may hold NaN (json.loads accepts it), which != itself
        repr(list(info)),
        sorted(info.model_fields_set),
        repr(info.model_extra),
        packet.framing,
        packet.spectra.dtype.str,
        packet.spectra.shape,
        packet.spectra.tobytes(),
        list(packet.metadata),
        [(a.dtype.str, a.shape, a.tobytes()) for a in packet.metadata.values()],
    )


@pytest.fixture
def parts(multipart_capture):
    """(header message, JSON part, spectra, metadata pickle) of multipart frame 0."""
    head, data, meta = multipart_capture[1]
    return multipart_capture[0], head, data, meta


def warm_decoder(header, head: bytes, data: bytes, meta: bytes, framing: str):
    """A decoder after ``header`` and one frame whose JSON part is ``head``."""
    decoder = StreamDecoder()
    decoder.feed(header)
    for message in as_messages(framing, head, data, meta):
        decoder.feed(message)
    assert decoder.frames_decoded == 1
    return decoder


def fresh_decoder(header) -> StreamDecoder:
    decoder = StreamDecoder()
    decoder.feed(header)
    return decoder


def compare(header, template: bytes, part: bytes, data, meta, framing) -> bool:
    """Feed ``part`` to a decoder that learnt ``template`` and to a fresh one;
    assert equal outcomes; return whether the JSON fast path was taken."""
    warm = warm_decoder(header, template, data, meta, framing)
    hits = warm.json_fast_hits
    messages = as_messages(framing, part, data, meta)
    fast = outcome(warm, messages)
    slow_decoder = fresh_decoder(header)
    slow = outcome(slow_decoder, messages)
    assert slow_decoder.json_fast_hits == 0
    assert fast == slow
    return warm.json_fast_hits > hits


# -- image JSON ----------------------------------------------------------------
@pytest.mark.parametrize("framing", ["multipart", "legacy"])
def test_json_fast_path_is_taken_for_a_new_frame_number(parts, framing):
    header, head, data, meta = parts
    for number in (1, 9, 10, 12345, 0, MAX_FRAME_NUMBER - 1):
        assert compare(header, head, renumber(head, number), data, meta, framing)


def test_real_streams_take_the_json_fast_path(
    dump_capture, multipart_capture, decode_messages
):
    decoder, packets = decode_messages(multipart_capture)
    assert decoder.json_fast_hits == 4
    assert len(frames_of(packets)) == 5
    decoder, packets = decode_messages(dump_capture)
    assert decoder.json_fast_hits == 19
    assert len(frames_of(packets)) == 20


@pytest.mark.parametrize("framing", ["multipart", "legacy"])
@pytest.mark.parametrize(
    ("digits", "error"),
    [
        (b"007", InvalidJSONError),  # json.loads refuses leading zeros
        (b"00", InvalidJSONError),
        (str(MAX_FRAME_NUMBER).encode(), InvalidJSONError),
        (b"99999999999999999999", InvalidJSONError),
        (b"9" * 5000, InvalidJSONError),  # beyond int()'s digit limit
        (b"", InvalidJSONError),
        (b"-1", InvalidJSONError),
        (b"1.5", InvalidJSONError),
    ],
)
def test_json_digits_the_fast_path_refuses_raise_as_before(
    parts, framing, digits, error
):
    header, head, data, meta = parts
    part = renumber(head, digits)
    assert not compare(header, head, part, data, meta, framing)
    with pytest.raises(error):
        fresh_decoder(header).feed(as_messages(framing, part, data, meta)[0])


@pytest.mark.parametrize("framing", ["multipart", "legacy"])
@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda h: h.replace(b"0.049999875", b"0.1"), id="exptime"),
        pytest.param(lambda h: h.replace(b"}", b', "x": [1, {"a": 2}]}'), id="extra"),
        pytest.param(lambda h: h.replace(b'"frame": 0', b'"frame":0'), id="ws-1"),
        pytest.param(lambda h: h.replace(b'"frame": 0', b'"frame" : 0'), id="ws-2"),
        pytest.param(lambda h: h.replace(b'"frame": 0', b'"frame": 3 '), id="ws-3"),
        pytest.param(lambda h: b" " + renumber(h, 3), id="leading-space"),
        pytest.param(lambda h: renumber(h, 3) + b"\n", id="trailing-newline"),
        pytest.param(
            lambda h: h.replace(b"}", b', "frame": 7}'), id="frame-twice-last-wins"
        ),
        pytest.param(lambda h: h.replace(b"uint32", b"uint16"), id="type"),
        pytest.param(lambda h: h.replace(b"4096", b"4095"), id="shape"),
        pytest.param(lambda h: h.replace(b'"none"', b'"lz4"'), id="compression"),
        pytest.param(lambda h: h.replace(b'"image"', b'"header"'), id="htype"),
        pytest.param(lambda h: renumber(h, 3)[:-1], id="truncated"),
        pytest.param(lambda h: renumber(h, 3).replace(b"{", b"["), id="not-object"),
        pytest.param(lambda h: renumber(h, "३".encode()), id="unicode-digit"),
    ],
)
def test_json_variants_get_exactly_the_full_paths_result(parts, framing, edit):
    header, head, data, meta = parts
    assert not compare(header, head, edit(head), data, meta, framing)


@pytest.mark.parametrize("framing", ["multipart", "legacy"])
@pytest.mark.parametrize(
    ("template", "fast"),
    [
        # "frame" twice, even with the same value: never a template
        (b'{"htype": "image", "frame": 5, "shape": [4, 4096], "frame": 5}', False),
        # an escaped key also spelling frame (the top-level one), a nested
        # literal one: the digits next to the literal are not the frame
        (
            b'{"htype": "image", "x": {"frame": 5}, "fr\\u0061me": 5, '
            b'"shape": [4, 4096]}',
            False,
        ),
        (
            b'{"htype": "image", "abc\\"frame": 5, "fr\\u0061me": 5, '
            b'"shape": [4, 4096]}',
            False,
        ),
        # non-integer literals of an integer frame
        (b'{"htype": "image", "frame": 5.0, "shape": [4, 4096]}', False),
        (b'{"htype": "image", "frame": 5e0, "shape": [4, 4096]}', False),
        (b'{"htype": "image", "frame": 50e-1, "shape": [4, 4096]}', False),
        # non-ASCII elsewhere in the part
        (b'{"htype": "image", "frame": 5, "shape": [4, 4096], "u": "\xc3\xa4"}', False),
        # fine: frame last, odd whitespace, extras, unicode escapes elsewhere
        (b'{"htype": "image", "shape": [4, 4096], "frame": 5}', True),
        (b'{"htype":"image","shape":[4,4096],"frame"\t:\n5\r}', True),
        (b' {"frame": 5, "htype": "image", "shape": [4, 4096], "n": null} ', True),
        (b'{"frame": 5, "htype": "image", "shape": [4, 4096], "l": [1, {}]}', True),
    ],
)
def test_odd_templates_are_safe(parts, framing, template, fast):
    header, _, data, meta = parts
    for digits in (b"6", b"5", b"10", b"0", b"007", b"-6", b"60e-1", b"6.0"):
        part = template.replace(b"5", digits, 1) if b"5e0" not in template else None
        if part is None:
            part = template.replace(b"5e0", digits + b"e0", 1)
        took = compare(header, template, part, data, meta, framing)
        assert took == (fast and digits in (b"6", b"5", b"10", b"0"))


def test_extras_are_shared_by_the_messages_of_one_template(parts):
    """A template hit is the template's message copied with the new number
    (pydantic's model_copy): its own field values, fields set and extras dict,
    the extras' values shared between the frozen messages, never deep-copied
    per frame (a 1 MiB extra used to cost 268 ms a frame)."""
    header, head, data, meta = parts
    template = head.replace(b"}", b', "x": [1, {"a": [2]}], "s": "t"}')
    decoder = warm_decoder(header, template, data, meta, "multipart")
    (one,) = decoder.feed([renumber(template, 1), data, meta])
    (two,) = decoder.feed([renumber(template, 2), data, meta])
    assert decoder.json_fast_hits == 2
    assert (one.info.frame, two.info.frame) == (1, 2)
    assert one.info.model_extra == {"x": [1, {"a": [2]}], "s": "t"}
    assert one.info.model_extra is not two.info.model_extra
    assert one.info.model_extra["x"] is two.info.model_extra["x"]  # shared
    assert one.info.model_fields_set == two.info.model_fields_set
    assert one.info.model_fields_set is not two.info.model_fields_set
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        one.info.frame = 7  # type: ignore[misc]
    (three,) = decoder.feed([renumber(template, 3), data, meta])
    (slow,) = fresh_decoder(header).feed([renumber(template, 3), data, meta])
    assert three.info == slow.info
    assert three.info.model_fields_set == slow.info.model_fields_set
    assert three.info.to_wire() == json.loads(renumber(template, 3))


@pytest.mark.parametrize("framing", ["multipart", "legacy"])
def test_a_bad_frame_after_the_fast_path_is_reported_as_before(parts, framing):
    header, head, data, meta = parts
    decoder = warm_decoder(header, head, data, meta, framing)
    fresh = fresh_decoder(header)
    for d in (decoder, fresh):
        bad = as_messages(framing, renumber(head, 1), data[:-4], meta)
        with pytest.raises(ProtocolError) as info:
            feed_all(d, bad)
        assert "spectra buffer is 65532 bytes, expected 65536" in str(info.value)
    assert decoder.json_fast_hits == 1
    assert decoder.tracker.counts["bad_frame"] == fresh.tracker.counts["bad_frame"] == 1
    (frame,) = feed_all(decoder, as_messages(framing, renumber(head, 2), data, meta))
    assert frame.frame == 2


_SEPARATORS = [(",", ":"), (", ", ": "), (" ,", " : "), ("\t,\n", "\n:\r")]
_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=6)
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def image_templates(draw) -> bytes:
    """An image JSON part for 4 x 4096 uint32, in many spellings."""
    obj: dict[str, Any] = {
        "htype": "image",
        "frame": draw(st.integers(0, 40) | st.integers(0, MAX_FRAME_NUMBER - 1)),
        "shape": [4, 4096],
    }
    if draw(st.booleans()):
        obj["exptime"] = draw(st.floats(0, 10) | st.none())
    if draw(st.booleans()):
        obj["type"] = "uint32"
    if draw(st.booleans()):
        obj["compression"] = "none"
    extras = draw(st.dictionaries(st.text(max_size=6), _json_value, max_size=3))
    for key, value in extras.items():
        obj.setdefault(key, value)
    keys = draw(st.permutations(list(obj)))
    separators = draw(st.sampled_from(_SEPARATORS))
    text = json.dumps(
        {k: obj[k] for k in keys},
        separators=separators,
        ensure_ascii=draw(st.booleans()),
    )
    return text.encode()


_BYTES = b'0123456789 \t\n-+.eE"\\{}[],:fram\x00\xff'


@st.composite
def mutations(draw, template: bytes) -> bytes:
    """``template`` with its frame digits replaced, or a byte changed,
    inserted or removed somewhere."""
    kind = draw(st.sampled_from(["digits", "digits", "replace", "insert", "delete"]))
    if kind == "digits" and _FRAME_VALUE.search(template):
        digits = draw(
            st.integers(0, 2 * MAX_FRAME_NUMBER).map(lambda n: str(n).encode())
            | st.text("0123456789-+.eE ", max_size=24).map(str.encode)
        )
        return renumber(template, digits)
    at = draw(st.integers(0, len(template)))
    byte = bytes([draw(st.sampled_from(_BYTES))])
    if kind == "insert":
        return template[:at] + byte + template[at:]
    at = min(at, len(template) - 1)
    if kind == "delete":
        return template[:at] + template[at + 1 :]
    return template[:at] + byte + template[at + 1 :]


@PROPERTY
@given(data=st.data(), framing=st.sampled_from(["multipart", "legacy"]))
def test_fast_and_slow_json_paths_agree_on_mutated_parts(
    multipart_capture_shared, data, framing
):
    header = list(multipart_capture_shared[0])
    _, spectra, meta = multipart_capture_shared[1]
    template = data.draw(image_templates(), label="template")
    part = data.draw(mutations(template), label="part")
    compare(header, template, part, spectra, meta, framing)


@PROPERTY
@given(data=st.data())
def test_fast_path_decodes_every_valid_renumbering(multipart_capture_shared, data):
    header = list(multipart_capture_shared[0])
    _, spectra, meta = multipart_capture_shared[1]
    template = data.draw(image_templates(), label="template")
    number = data.draw(st.integers(0, MAX_FRAME_NUMBER - 1), label="number")
    part = renumber(template, number)
    if b"\\" in template or not template.isascii() or template.count(b'"frame"') > 1:
        return  # not a template (the property test above covers these)
    assert compare(header, template, part, spectra, meta, "multipart")


# -- the full JSON path ---------------------------------------------------------
def parsed(part: bytes, parse) -> tuple[Any, ...]:
    """What ``parse(part)`` gives, by value (repr: extras may hold NaN), or the
    error it raises."""
    try:
        msg = parse(part)
    except ProtocolError as exc:
        return ("raised", type(exc), str(exc))
    return ("ok", type(msg), repr(list(msg)), sorted(msg.model_fields_set))


_FIELD_VALUES = (
    st.integers(-1, 2**64)
    | st.sampled_from([[4, 4096], "uint32", "none", [[[0, 1]]], ["a"], "4"])
    | _json_value
)
_ODD_BYTES = [b"NaN", b"-Infinity", b"1e400", b"01", b"\\ud800", b"\xed\xa0\x80"]
_ODD_BYTES += [b"\\u0000", b"\x00", b"\xff", b"\xef\xbb\xbf", b"[" * 300, b" \x0c"]


@st.composite
def json_parts(draw) -> bytes:
    """A JSON part of any htype, fields of any JSON type, in many spellings,
    sometimes with odd bytes spliced in."""
    htype = draw(st.sampled_from(["header", "image", "series_end", "x"]) | _json_value)
    keys = ["frame", "shape", "type", "compression", "exptime", "filename"]
    keys += ["overwritable", "limits", "extra_tags", "x"]
    obj = {"htype": htype}
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=6)):
        obj[key] = draw(_FIELD_VALUES)
    text = json.dumps(
        obj,
        separators=draw(st.sampled_from(_SEPARATORS)),
        ensure_ascii=draw(st.booleans()),
    ).encode()
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        odd = draw(st.sampled_from(_ODD_BYTES))
        text = text[:at] + odd + text[at + draw(st.integers(0, 2)) :]
    return text


@PROPERTY
@given(part=json_parts())
def test_parse_json_part_is_the_json_modules_reading(part):
    """validate_json first, the json module for what it refuses: the same
    messages and the same errors as the json module's reading alone."""
    assert parsed(part, parse_json_part) == parsed(part, _image._parse_with_json_module)


@pytest.mark.parametrize(
    "part",
    [
        b'{"htype": "series_end", "x": "\\ud800"}',  # a lone surrogate
        '{"htype": "series_end"}'.encode("utf-16"),
        b'\xef\xbb\xbf{"htype": "series_end"}',  # a UTF-8 BOM
        b'{"htype": "series_end", "x": ' + b"[" * 500 + b"]" * 500 + b"}",
    ],
    ids=["surrogate", "utf-16", "bom", "deep"],
)
def test_what_validate_json_refuses_the_json_module_still_reads(part):
    with pytest.raises(pydantic.ValidationError):
        _image._JSON_ADAPTER.validate_json(part)
    msg = parse_json_part(part)
    assert msg.htype == "series_end"
    assert parsed(part, parse_json_part) == parsed(part, _image._parse_with_json_module)


# -- metadata pickles ----------------------------------------------------------
def hostile_pickle(target, length: int) -> bytes:
    """``builtins.open(target, "w")``, padded to exactly ``length`` bytes."""
    path = str(target).encode()
    body = (
        b"\x80\x03cbuiltins\nopen\n(X"
        + len(path).to_bytes(4, "little")
        + path
        + b"X\x01\x00\x00\x00wtR"
    )
    filler = length - len(body) - 7  # BINBYTES + 4-byte length, POP, STOP
    assert filler >= 0
    out = body + b"B" + filler.to_bytes(4, "little") + b"\x00" * filler + b"0."
    assert len(out) == length
    return out


@pytest.mark.parametrize("framing", ["multipart", "legacy"])
def test_hostile_pickle_after_100_good_frames_is_refused(
    multipart_capture, dump_capture, framing, tmp_path
):
    if framing == "multipart":
        header = multipart_capture[0]
        frames = [tuple(m) for m in multipart_capture[1:6]]
    else:
        header = dump_capture[0]
        flat = [m[0] for m in dump_capture[1:-1]]
        frames = [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]
    decoder = fresh_decoder(header)
    for i in range(100):
        head, data, meta = frames[i % len(frames)]
        for message in as_messages(framing, renumber(head, i), data, meta):
            decoder.feed(message)
    assert decoder.frames_decoded == 100
    assert decoder.metadata_decoder.full_decodes == 1
    assert decoder.metadata_decoder.fast_hits == 99
    head, data, meta = frames[0]
    target = tmp_path / "pwned"
    evil = hostile_pickle(target, len(meta))
    messages = as_messages(framing, renumber(head, 100), data, evil)
    with pytest.raises(UnsafeMetadataError, match=r"builtins\.open"):
        feed_all(decoder, messages)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    assert decoder.metadata_decoder.full_decodes == 2
    assert decoder.tracker.counts["bad_frame"] == 1
    # The template survives a refused pickle: the next good frame is fast.
    for message in as_messages(framing, renumber(head, 101), data, meta):
        packets = decoder.feed(message)
    (frame,) = packets
    assert frame.frame == 101
    assert decoder.metadata_decoder.fast_hits == 100
    assert isinstance(frame.metadata, FrameMetadata)


def test_every_non_data_byte_of_the_template_is_checked(parts):
    """Changing any single byte outside the array data takes the pickle off the
    fast path; the result (frame or error) is the full path's."""
    header, head, data, meta = parts
    decoder = warm_decoder(header, head, data, meta, "multipart")
    (frame,) = decoder.feed([renumber(head, 1), data, meta])
    layout = frame.metadata.layout  # type: ignore[attr-defined]
    data_bytes = {
        i
        for field in layout.fields
        for i in range(field.offset, field.offset + field.nbytes)
    }
    assert len(data_bytes) == sum(a.nbytes for a in decode_metadata(meta))
    checked = 0
    for i in range(len(meta)):
        if i in data_bytes:
            continue
        for flip in (0x01, 0x80):
            bad = meta[:i] + bytes([meta[i] ^ flip]) + meta[i + 1 :]
            hits = decoder.metadata_decoder.fast_hits
            fast = outcome(decoder, [[renumber(head, 1), data, bad]])
            assert decoder.metadata_decoder.fast_hits == hits, i
            slow = outcome(fresh_decoder(header), [[renumber(head, 1), data, bad]])
            assert fast == slow, i
            # the real pickle again (a template again if ``bad`` replaced it)
            decoder.feed([renumber(head, 2), data, meta])
            checked += 1
    assert checked == 2 * (len(meta) - len(data_bytes))


def test_data_bytes_take_the_fast_path_and_are_the_arrays(parts):
    header, head, data, meta = parts
    decoder = warm_decoder(header, head, data, meta, "multipart")
    rng = np.random.default_rng(7)
    arrays = decode_metadata(meta)
    mutable = bytearray(meta)
    for arr in arrays:
        start = meta.find(arr.tobytes())
        mutable[start : start + arr.nbytes] = rng.integers(
            0, 256, arr.nbytes, dtype=np.uint8
        ).tobytes()
    (frame,) = decoder.feed([renumber(head, 1), data, bytes(mutable)])
    assert decoder.metadata_decoder.fast_hits == 1
    expected = decode_metadata(bytes(mutable))
    for got, want in zip(frame.metadata.values(), expected, strict=True):
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        assert got.tobytes() == want.tobytes()


# -- FrameMetadata -------------------------------------------------------------
@pytest.mark.parametrize("capture", ["multipart", "dump"])
def test_layout_columns_of_stacked_pickles_equal_the_frames_arrays(
    capture, multipart_capture, dump_capture, decode_messages
):
    messages = multipart_capture if capture == "multipart" else dump_capture
    _, packets = decode_messages(messages)
    frames = frames_of(packets)
    assert len(frames) == (5 if capture == "multipart" else 20)
    layout = frames[0].metadata.layout  # type: ignore[attr-defined]
    assert isinstance(layout, MetadataLayout)
    for frame in frames:
        assert isinstance(frame.metadata, FrameMetadata)
        assert frame.metadata.layout is layout
    names = TAGS if capture == "multipart" else DEFAULT_SCALER_NAMES
    assert layout.names == names == tuple(frames[0].metadata)
    raws = [f.metadata.raw for f in frames]  # type: ignore[attr-defined]
    assert all(len(raw) == layout.size for raw in raws)
    block = b"".join(raws)
    writable = np.frombuffer(block, np.uint8).reshape(len(frames), -1).copy()
    for columns in (layout.columns(block), layout.columns(writable)):
        assert list(columns) == list(names)
        for name in names:
            stacked = np.stack([f.metadata[name] for f in frames])
            col = columns[name]
            assert col.dtype == stacked.dtype
            assert col.shape == stacked.shape
            assert col.tobytes() == stacked.tobytes()
    assert not layout.columns(block)["all_good"].flags.writeable
    # each field is where it says
    for frame in frames:
        raw = frame.metadata.raw  # type: ignore[attr-defined]
        for field in layout.fields:
            arr = np.frombuffer(
                raw, field.dtype, count=int(np.prod(field.shape)), offset=field.offset
            ).reshape(field.shape)
            assert arr.tobytes() == frame.metadata[field.name].tobytes()
            assert arr.dtype == frame.metadata[field.name].dtype
    # the first rows only
    part = layout.columns(block, 2)
    assert part["all_good"].shape == (2, 4)
    with pytest.raises(ValueError, match="does not hold"):
        layout.columns(block, len(frames) + 1)
    with pytest.raises(ValueError, match="whole number"):
        layout.columns(block[:-1])
    empty = layout.columns(b"")
    assert empty["all_good"].shape == (0, 4)


@pytest.mark.parametrize("capture", ["multipart", "dump"])
def test_lazy_and_eager_metadata_give_equal_frames(
    capture, multipart_capture, dump_capture, decode_messages
):
    messages = multipart_capture if capture == "multipart" else dump_capture
    _, packets = decode_messages(messages)
    for frame in frames_of(packets):
        lazy = frame.metadata
        assert isinstance(lazy, FrameMetadata)
        assert lazy._arrays is None  # nothing built until read
        eager = dict(zip(lazy, decode_metadata(lazy.raw), strict=True))
        twin = Frame(frame.info, frame.spectra, eager, frame.framing)
        assert frame == twin
        assert twin == frame
        assert lazy._arrays is not None
        assert list(lazy.keys()) == list(eager)
        assert len(lazy) == len(eager)
        for name, arr in lazy.items():
            assert not arr.flags.writeable
            assert arr.tobytes() == eager[name].tobytes()
            assert lazy.get(name) is arr
            assert lazy[name] is arr
            assert name in lazy
        assert "nope" not in lazy
        assert lazy.get("nope") is None
        with pytest.raises(KeyError):
            lazy["nope"]
        assert frame.scalers.keys() == set(DEFAULT_SCALER_NAMES)
        assert frame["all_good"] is lazy["all_good"]
        if capture == "multipart":
            assert frame.window_counts is lazy["window_counts"]
        else:
            assert frame.window_counts is None
        assert frame.extra == {}
        assert repr(lazy).startswith("FrameMetadata({'output_count_rate': array(")


def test_one_layout_object_per_template_and_names(multipart_capture, dump_capture):
    decoder = StreamDecoder()
    frames: list[Frame] = []
    for _ in range(2):  # two series with equal headers: new header objects
        for message in multipart_capture:
            frames.extend(frames_of(decoder.feed(message)))
    assert decoder.metadata_decoder.full_decodes == 1
    layouts = {id(f.metadata.layout) for f in frames}  # type: ignore[attr-defined]
    assert len(layouts) == 1
    # another template (the legacy pickles) and back: still one object each
    for message in dump_capture:
        frames.extend(frames_of(decoder.feed(message)))
    for message in multipart_capture:
        frames.extend(frames_of(decoder.feed(message)))
    assert decoder.metadata_decoder.full_decodes == 3
    by_size: dict[int, set[int]] = {}
    for f in frames:
        layout = f.metadata.layout  # type: ignore[attr-defined]
        by_size.setdefault(layout.size, set()).add(id(layout))
    assert sorted(len(ids) for ids in by_size.values()) == [1, 1]


def test_names_from_another_header_give_another_layout(parts):
    header, head, data, meta = parts
    decoder = warm_decoder(header, head, data, meta, "multipart")
    (a,) = decoder.feed([renumber(head, 1), data, meta])
    decoder.feed([b'{"htype": "series_end"}'])
    tags = [*DEFAULT_SCALER_NAMES, "rois"]
    decoder.feed([json.dumps({"htype": "header", "extra_tags": tags}).encode()])
    (b,) = decoder.feed([renumber(head, 0), data, meta])
    assert tuple(b.metadata) == tuple(tags)
    assert b.metadata.layout is not a.metadata.layout  # type: ignore[attr-defined]
    assert b.metadata.layout.size == a.metadata.layout.size  # type: ignore[attr-defined]
    assert b.extra.keys() == {"rois"}
    # a header without names: the defaults, window_counts inferred again
    decoder.feed([b'{"htype": "series_end"}'])
    decoder.feed([b'{"htype": "header"}'])
    (c,) = decoder.feed([renumber(head, 0), data, meta])
    assert tuple(c.metadata) == TAGS
    assert c.metadata.layout is a.metadata.layout  # type: ignore[attr-defined]
    assert decoder.metadata_decoder.full_decodes == 1


def test_naming_checks_rerun_for_new_names_and_channels(parts):
    header, head, data, meta = parts
    decoder = warm_decoder(header, head, data, meta, "multipart")
    # 4 channels of metadata under a 2 x 8192 image of the same byte size
    other = head.replace(b"[4, 4096]", b"[2, 8192]")
    for number in (1, 2):
        with pytest.raises(ProtocolError, match=r"has shape \(4,\), expected \(2,\)"):
            decoder.feed([renumber(other, number), data, meta])
    (frame,) = decoder.feed([renumber(head, 3), data, meta])
    assert frame.frame == 3
    # a header naming too few scalers: refused on every frame, fast or not
    decoder.feed([b'{"htype": "series_end"}'])
    decoder.feed([json.dumps({"htype": "header", "extra_tags": ["a"] * 9}).encode()])
    for number in (0, 1):
        with pytest.raises(ProtocolError, match="metadata lacks output_count_rate"):
            decoder.feed([renumber(head, number), data, meta])
    assert decoder.metadata_decoder.full_decodes == 1
    assert decoder.tracker.counts["bad_frame"] == 4


def _synthetic_messages(frames: list[Frame], header: HeaderMessage, framing: str):
    encoder = StreamEncoder(framing)  # type: ignore[arg-type]
    out = encoder.encode(header)
    for frame in frames:
        out += encoder.encode(frame)
    return [[bytes(p) for p in m] for m in out]


def _eager_cases(make_synthetic_frames) -> dict[str, tuple[list[Frame], HeaderMessage]]:
    base = make_synthetic_frames(3, window_counts=True)
    fortran = [
        make_frame(
            f.frame,
            f.spectra,
            {
                **f.metadata,
                "window_counts": np.asfortranarray(f.metadata["window_counts"]),
            },
            exptime=f.exptime,
        )
        for f in base
    ]
    shared = []
    for f in base:
        metadata = dict(f.metadata)
        metadata["total_ticks"] = metadata["clock_ticks"]  # one object, twice
        shared.append(make_frame(f.frame, f.spectra, metadata, exptime=f.exptime))
    tags = (*DEFAULT_SCALER_NAMES, "x", "x")
    duplicated = [
        make_frame(
            f.frame,
            f.spectra,
            {
                **f.metadata,
                "y": f.metadata["all_good"] + 1,
                "z": f.metadata["all_good"] + 2,
            },
            exptime=f.exptime,
        )
        for f in make_synthetic_frames(3)
    ]
    plain = HeaderMessage()
    return {
        "fortran": (fortran, plain),
        "shared-array": (shared, plain),
        "duplicate-names": (duplicated, HeaderMessage(extra_tags=tags)),
    }


@pytest.mark.parametrize("case", ["fortran", "shared-array", "duplicate-names"])
@pytest.mark.parametrize("framing", ["multipart", "legacy"])
def test_layouts_a_lazy_mapping_cannot_describe_stay_eager(
    make_synthetic_frames, case, framing
):
    frames, header = _eager_cases(make_synthetic_frames)[case]
    messages = _synthetic_messages(frames, header, framing)
    decoder = StreamDecoder()
    packets = [p for m in messages for p in decoder.feed(m)]
    decoded = frames_of(packets)
    assert len(decoded) == 3
    assert decoder.metadata_decoder.fast_hits == 2
    for got, sent in zip(decoded, frames, strict=True):
        assert type(got.metadata) is dict
        if case == "duplicate-names":
            # as ever: a name given twice keeps its first place, its last array
            assert list(got.metadata) == [*DEFAULT_SCALER_NAMES, "x"]
            assert got.metadata["x"].tobytes() == sent.metadata["z"].tobytes()
            continue
        assert got == sent
        for arr in got.metadata.values():
            assert not arr.flags.writeable
    if case == "shared-array":
        assert decoded[1]["total_ticks"] is decoded[1]["clock_ticks"]
    if case == "fortran":
        assert decoded[2]["window_counts"].flags.f_contiguous


@pytest.mark.parametrize("framing", ["multipart", "legacy"])
def test_encoder_accepts_lazy_frames(multipart_capture, decode_messages, framing):
    _, packets = decode_messages(multipart_capture)
    frames = frames_of(packets)
    assert all(isinstance(f.metadata, FrameMetadata) for f in frames)
    header = packets[0]
    again = StreamDecoder()
    encoder = StreamEncoder(framing)  # type: ignore[arg-type]
    out: list[Any] = []
    for packet in [header, *frames]:
        for message in encoder.encode(packet):
            out.extend(again.feed(message))
    assert frames_of(out) == frames
    # and make_frame copies a lazy mapping into a dict
    copy_ = make_frame(7, frames[0].spectra, frames[0].metadata, exptime=0.1)
    assert type(copy_.metadata) is dict
    assert list(copy_.metadata) == list(TAGS)


def test_frame_metadata_pickles_copies_and_checks_its_input(parts):
    header, head, data, meta = parts
    decoder = warm_decoder(header, head, data, meta, "multipart")
    (frame,) = decoder.feed([renumber(head, 1), data, meta])
    lazy = frame.metadata
    assert isinstance(lazy, FrameMetadata)
    # (our own object: pickling it is not decoding network bytes)
    back = pickle.loads(pickle.dumps(lazy))
    assert isinstance(back, FrameMetadata)
    assert back.raw == lazy.raw
    assert back.layout == lazy.layout
    assert hash(back.layout) == hash(lazy.layout)
    assert Frame(frame.info, frame.spectra, back) == frame
    assert not back["all_good"].flags.writeable
    dup = copy.copy(lazy)
    assert next(iter(dup.items()))[1].tobytes() == lazy["output_count_rate"].tobytes()
    with pytest.raises(TypeError, match="bytes"):
        FrameMetadata(bytearray(meta), lazy.layout)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not match"):
        FrameMetadata(meta + b"\x00", lazy.layout)
    with pytest.raises(AttributeError):
        lazy.raw = b""  # type: ignore[misc]
    with pytest.raises(TypeError):
        lazy["all_good"] = lazy["all_good"]  # type: ignore[index]
    field = lazy.layout.fields[0]
    with pytest.raises(ValueError, match="does not fit"):
        MetadataLayout(size=field.offset, fields=(field,))
    with pytest.raises(ValueError, match="not distinct"):
        MetadataLayout(size=lazy.layout.size, fields=(field, field))
    assert MetadataField("a", np.dtype("<u4"), (2, 3), 0).nbytes == 24


# -- spectra -------------------------------------------------------------------
def _as_kind(kind: str, parts: list[bytes]) -> list[Any]:
    if kind == "bytes":
        return list(parts)
    if kind == "bytearray":
        return [bytearray(p) for p in parts]
    if kind == "memoryview":
        return [memoryview(bytearray(p)) for p in parts]
    return [zmq.Frame(p) for p in parts]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "zmq"])
@pytest.mark.parametrize("framing", ["multipart", "legacy"])
def test_spectra_stay_read_only_and_bit_exact_on_the_fast_path(
    multipart_capture, kind, framing
):
    decoder = StreamDecoder()
    decoder.feed(multipart_capture[0])
    for i in range(12):
        head, data, meta = multipart_capture[1 + i % 5]
        raw = [renumber(head, i), data, meta]
        frame = None
        for message in as_messages(framing, *raw):
            packets = decoder.feed(_as_kind(kind, message))
            frame = packets[0] if packets else frame
        assert isinstance(frame, Frame)
        assert frame.frame == i
        assert frame.spectra.tobytes() == data
        assert frame.spectra.dtype == np.dtype("<u4")
        assert frame.spectra.shape == (4, 4096)
        assert not frame.spectra.flags.writeable
        with pytest.raises(ValueError, match=r"(?i)writeable"):
            frame.spectra.flags.writeable = True
        with pytest.raises(ValueError, match="read-only"):
            frame.spectra[0, 0] = 1
        for arr in frame.metadata.values():
            assert not arr.flags.writeable
        assert frame.spectra[3].sum() == frame["all_good"][3]
    assert decoder.json_fast_hits == 11
    assert decoder.metadata_decoder.fast_hits == 11
