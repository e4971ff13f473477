"""Property tests: whatever arrives, the decoder raises ProtocolError or nothing.

Frame numbers include values at and beyond 2**63 (refused by the image model
with an InvalidJSONError; they used to escape as OverflowError).
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ophyd_xspress.protocol import (
    DEFAULT_SCALER_NAMES,
    Frame,
    HeaderMessage,
    ProtocolError,
    SeriesEndMessage,
    StrayFrame,
    StreamDecoder,
    decode_metadata,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # The same 300 examples each run, so that CI is reproducible: once in a
    # dozen full-suite runs, hypothesis 6.170 stopped a passing example with
    # FlakyStrategyDefinition (generation differing from its own replay).
    # XSPRESS_FUZZ_RANDOM=1 draws new examples every run.
    derandomize=not os.environ.get("XSPRESS_FUZZ_RANDOM"),
)
pytestmark = pytest.mark.timeout(120)

HTYPES = ["header", "image", "series_end", "Image", "", "footer"]
TYPES = ["uint32", "uint16", "uint8", "uint64", "int32", "float64", "float32", "object"]
TYPES += ["complex128", "<u4", "U4", "bool", "float16"]

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
frame_numbers = (
    st.integers(-2, 40)
    | st.integers(2**31, 2**40)
    | st.just(2000)
    | st.integers(2**63 - 2, 2**63 + 2)
    | st.just(10**30)
)
dims = st.sampled_from([4, 4096, 1, 2, 0, -1, 257, 65537, 10**9])
shapes = st.just([4, 4096]) | st.lists(dims, max_size=3)
limits = st.lists(
    st.lists(st.lists(st.integers(-3, 5000), min_size=0, max_size=3), max_size=5),
    max_size=3,
)
tags = st.lists(
    st.sampled_from([*DEFAULT_SCALER_NAMES, "window_counts", "x"]), max_size=10
)

packet_dicts = st.fixed_dictionaries(
    {"htype": st.sampled_from(HTYPES) | json_value},
    optional={
        "frame": frame_numbers | json_value,
        "shape": shapes | json_value,
        "type": st.sampled_from(TYPES) | json_value,
        "compression": st.sampled_from(["none", "bslz4", ""]) | json_value,
        "exptime": st.floats(allow_nan=True) | json_value,
        "filename": st.text(max_size=20) | json_value,
        "overwritable": st.booleans() | json_value,
        "limits": limits | json_value,
        "extra_tags": tags | json_value,
        "extra": json_value,
    },
)


def json_part(obj) -> bytes:
    return json.dumps(obj).encode()


def check_packets(packets) -> None:
    for packet in packets:
        assert isinstance(packet, HeaderMessage | Frame | SeriesEndMessage | StrayFrame)
        frame = packet.frame if isinstance(packet, StrayFrame) else packet
        if isinstance(frame, Frame):
            assert frame.spectra.shape == tuple(frame.info.shape)
            assert set(DEFAULT_SCALER_NAMES) <= set(frame.metadata)


def feed_only_protocol_errors(decoder: StreamDecoder, message) -> None:
    try:
        packets = decoder.feed(message)
    except ProtocolError:
        return
    check_packets(packets)


@pytest.fixture(scope="module")
def real_parts(dump_capture_shared, multipart_capture_shared):
    """Every distinct real part, by role."""
    legacy = [m[0] for m in dump_capture_shared]
    multipart = [p for m in multipart_capture_shared for p in m]
    parts = legacy + multipart
    return {
        "json": [p for p in parts if p[:1] == b"{"],
        "data": [p for p in parts if len(p) == 65536],
        "meta": [p for p in parts if p[:1] == b"\x80"],
        "messages": [
            list(m) for m in (*dump_capture_shared, *multipart_capture_shared)
        ],
        "dump_header": dump_capture_shared[0],
        "multipart_header": multipart_capture_shared[0],
    }


def garble(part: bytes, draw) -> bytes:
    """Truncate, bit-flip or extend a part."""
    if not part:
        return draw(st.binary(max_size=16))
    how = draw(st.sampled_from(["truncate", "flip", "extend", "splice"]))
    if how == "truncate":
        return part[: draw(st.integers(0, len(part) - 1))]
    if how == "flip":
        buf = bytearray(part)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if how == "extend":
        return part + draw(st.binary(min_size=1, max_size=16))
    cut = draw(st.integers(0, len(part)))
    return part[:cut] + draw(st.binary(max_size=32)) + part[cut:]


@st.composite
def a_part(draw, real):
    kind = draw(
        st.sampled_from(["json", "data", "meta", "garbled", "dict", "bytes", "image"])
    )
    if kind in ("json", "data", "meta"):
        return draw(st.sampled_from(real[kind]))
    if kind == "garbled":
        role = draw(st.sampled_from(["json", "meta", "data"]))
        return garble(draw(st.sampled_from(real[role])), draw)
    if kind == "dict":
        return json_part(draw(packet_dicts))
    if kind == "image":
        # A well-formed image packet with a random frame number.
        base = json.loads(draw(st.sampled_from(real["json"][1:2])))
        base["frame"] = draw(st.integers(0, 30))
        return json_part(base)
    return draw(st.binary(max_size=64))


@st.composite
def a_message(draw, real):
    if draw(st.integers(0, 3)) == 0:
        return list(draw(st.sampled_from(real["messages"])))
    return draw(st.lists(a_part(real), min_size=1, max_size=4))


def decoder_in_state(real, state: str) -> StreamDecoder:
    """A decoder after a header, optionally in the middle of a legacy frame."""
    decoder = StreamDecoder()
    decoder.feed(real["dump_header"])
    if state in ("data", "meta"):
        decoder.feed([real["json"][1]])
    if state == "meta":
        decoder.feed([real["data"][0]])
    return decoder


# -- StreamDecoder.feed --------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=2048), state=st.sampled_from(["idle", "data", "meta"]))
def test_single_part_arbitrary_bytes(real_parts, data, state):
    decoder = decoder_in_state(real_parts, state)
    feed_only_protocol_errors(decoder, [data])
    feed_only_protocol_errors(decoder, data)
    decoder.finish()


@FUZZ
@given(
    parts=st.lists(st.binary(max_size=256), min_size=1, max_size=5),
    state=st.sampled_from(["idle", "data", "meta"]),
)
def test_multi_part_arbitrary_bytes(real_parts, parts, state):
    decoder = decoder_in_state(real_parts, state)
    feed_only_protocol_errors(decoder, parts)
    decoder.finish()


@FUZZ
@given(obj=packet_dicts, state=st.sampled_from(["idle", "data", "meta"]))
def test_random_json_packets(real_parts, obj, state):
    raw = json_part(obj)
    data, meta = real_parts["data"][0], real_parts["meta"][-1]
    decoder = decoder_in_state(real_parts, state)
    feed_only_protocol_errors(decoder, [raw])
    feed_only_protocol_errors(decoder, [data])
    feed_only_protocol_errors(decoder, [meta])
    feed_only_protocol_errors(decoder, [raw, data, meta])
    feed_only_protocol_errors(decoder, [raw, data])
    decoder.finish()


IMAGE_FIELDS = ["htype", "frame", "shape", "exptime", "type", "compression", "x"]


@FUZZ
@given(
    changes=st.dictionaries(
        st.sampled_from(IMAGE_FIELDS),
        st.none() | json_value | frame_numbers | shapes | st.sampled_from(TYPES),
        min_size=1,
        max_size=3,
    ),
    drop=st.lists(st.sampled_from(IMAGE_FIELDS), max_size=2),
    legacy=st.booleans(),
)
def test_mostly_valid_image_packets(real_parts, changes, drop, legacy):
    """The real image packet with a few fields replaced or removed."""
    obj = json.loads(real_parts["json"][1])
    obj.update(changes)
    for key in drop:
        obj.pop(key, None)
    raw = json_part(obj)
    data, meta = real_parts["data"][0], real_parts["meta"][0]
    decoder = decoder_in_state(real_parts, "idle")
    if legacy:
        for part in (raw, data, meta):
            feed_only_protocol_errors(decoder, [part])
    else:
        feed_only_protocol_errors(decoder, [raw, data, meta])
    # Whatever happened, the next real series decodes.
    decoder.feed(real_parts["multipart_header"])
    (frame,) = decoder.feed(real_parts["messages"][-3])  # multipart frame 3
    assert frame.spectra.shape == (4, 4096)
    decoder.finish()


@FUZZ
@given(data=st.data())
def test_message_sequences(real_parts, data):
    messages = data.draw(st.lists(a_message(real_parts), max_size=12))
    decoder = StreamDecoder()
    for message in messages:
        feed_only_protocol_errors(decoder, message)
    decoder.finish()
    counts = decoder.tracker.counts
    assert all(v > 0 for v in counts.values())


@FUZZ
@given(data=st.data())
def test_real_stream_with_one_part_garbled(real_parts, dump_capture_shared, data):
    """The real dump with one part damaged: every other frame still decodes."""
    index = data.draw(st.integers(1, len(dump_capture_shared) - 2))
    damaged = garble(dump_capture_shared[index][0], data.draw)
    decoder = StreamDecoder()
    frames = []
    for i, message in enumerate(dump_capture_shared):
        part = damaged if i == index else message[0]
        with contextlib.suppress(ProtocolError):
            frames += [p for p in decoder.feed([part]) if isinstance(p, Frame)]
    decoder.finish()
    damaged_frame = (index - 1) // 3
    assert {f.frame for f in frames} >= set(range(20)) - {damaged_frame}
    for frame in frames:
        if frame.frame != damaged_frame:
            assert (frame.spectra.sum(axis=1) == frame["all_good"]).all()


# -- decode_metadata -----------------------------------------------------------
def metadata_only_protocol_errors(data) -> None:
    try:
        arrays = decode_metadata(data)
    except ProtocolError:
        return
    assert isinstance(arrays, list)
    for array in arrays:
        assert isinstance(array, np.ndarray)
        assert array.dtype.kind in "biufc"


@FUZZ
@given(data=st.binary(max_size=1024))
def test_decode_metadata_arbitrary_bytes(data):
    metadata_only_protocol_errors(data)
    metadata_only_protocol_errors(b"\x80" + data)
    metadata_only_protocol_errors(b"\x80\x04" + data)


@FUZZ
@given(data=st.data())
def test_decode_metadata_mutated_real_pickles(real_parts, data):
    original = data.draw(st.sampled_from(real_parts["meta"]))
    mutated = garble(original, data.draw)
    if data.draw(st.booleans()):
        mutated = garble(mutated, data.draw)
    metadata_only_protocol_errors(mutated)


@FUZZ
@given(
    data=st.data(),
    opcodes=st.lists(
        st.sampled_from(
            [b"b", b"R", b"\x81", b"\x92", b"0", b"2", b"t", b")", b"e", b"s", b"."]
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_decode_metadata_with_opcodes_spliced_in(real_parts, data, opcodes):
    """BUILD / REDUCE / NEWOBJ / POP / DUP ... inserted at random places."""
    original = bytearray(data.draw(st.sampled_from(real_parts["meta"])))
    for opcode in opcodes:
        at = data.draw(st.integers(2, len(original) - 1))
        original[at:at] = opcode
    metadata_only_protocol_errors(bytes(original))
