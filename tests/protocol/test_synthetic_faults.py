"""Rows 2, 3 and 13 of docs/reliability.md without the real captures.

The decoder tests of bad buffers, dtypes, compressions and shapes in
``test_decoder.py`` and the fuzz tests in ``test_fuzz.py`` need the captures in
``../shared/data/xspress3/`` and are skipped without them (Gaps, item 2). These
tests build the same streams from the simulator instead: a
``SimulatedXspress3`` that is never started (no socket, no thread) makes the
frames, ``StreamEncoder`` puts them on the wire in both framings, and the
tests damage one frame of the series the way the capture tests do.

They check what the capture tests check (exception class and the message, word
for word as docs/reliability.md gives it, the decoder's counts), and more: the
rest of the series decodes bit for bit and the dropped frame is reported
missing when the series ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ophyd_xspress.protocol import (
    DEFAULT_SCALER_NAMES,
    MAX_FRAME_BYTES,
    BufferLengthError,
    Frame,
    HeaderMessage,
    ProtocolError,
    SeriesEndMessage,
    ShapeTooLargeError,
    StreamDecoder,
    StreamEncoder,
    UnsupportedEncodingError,
)
from ophyd_xspress.sim import SimulatedXspress3

LOGGER = "ophyd_xspress.protocol"
FRAMINGS = ("multipart", "legacy")
CHANNELS = 4
BINS = 4096
N_FRAMES = 6
#: What ``validate_image`` lists as supported, in its order.
SUPPORTED = "float32, float64, int16, int32, int64, int8, uint16, uint32, uint64, uint8"


# -- the synthetic series --------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """One simulated series on the wire: header, frames, series_end."""

    framing: str
    channels: int
    header: tuple[bytes, ...]
    #: What the simulator made (what a decoder must give back, bit for bit).
    frames: tuple[Frame, ...]
    #: Per frame, its messages: one 3-part message (multipart) or three
    #: single-part messages (legacy).
    messages: tuple[tuple[tuple[bytes, ...], ...], ...]
    end: tuple[bytes, ...]

    @property
    def nbytes(self) -> int:
        return self.channels * BINS * 4

    def parts(self, index: int) -> tuple[bytes, bytes, bytes]:
        """JSON, spectra and metadata parts of frame ``index``."""
        head, data, meta = (p for m in self.messages[index] for p in m)
        return head, data, meta


@functools.cache
def synthetic_series(framing: str, channels: int = CHANNELS) -> Series:
    sim = SimulatedXspress3(channels=channels, pace=False, framing=framing)  # type: ignore[arg-type]
    encoder = StreamEncoder(framing)  # type: ignore[arg-type]
    frames = tuple(sim.expected_frame(0, i) for i in range(N_FRAMES))
    for frame in frames:
        frame.spectra.flags.writeable = False  # shared by every test
    (header,) = encoder.encode(sim.header())
    (end,) = encoder.encode(SeriesEndMessage())
    return Series(
        framing=framing,
        channels=channels,
        header=tuple(bytes(p) for p in header),
        frames=frames,
        messages=tuple(
            tuple(tuple(bytes(p) for p in m) for m in encoder.encode(f)) for f in frames
        ),
        end=tuple(bytes(p) for p in end),
    )


def edit_json(raw: bytes, **changes: object) -> bytes:
    """The JSON part with fields replaced, in the same layout (compact or not)."""
    obj = json.loads(raw)
    obj.update(changes)
    separators = (", ", ": ") if b": " in raw else (",", ":")
    return json.dumps(obj, separators=separators).encode()


def started(series: Series) -> StreamDecoder:
    decoder = StreamDecoder()
    (header,) = decoder.feed(list(series.header))
    assert isinstance(header, HeaderMessage)
    return decoder


def feed_frames(decoder: StreamDecoder, series: Series, indices) -> list[object]:
    packets: list[object] = []
    for i in indices:
        for message in series.messages[i]:
            packets += decoder.feed(list(message))
    return packets


def assert_frame_exact(actual: object, expected: Frame) -> None:
    """Same frame number, image packet, spectra and metadata, bit for bit."""
    assert isinstance(actual, Frame)
    assert actual.frame == expected.frame
    assert actual.info == expected.info
    np.testing.assert_array_equal(actual.spectra, expected.spectra, strict=True)
    assert list(actual.metadata) == list(expected.metadata)
    for name, array in expected.metadata.items():
        np.testing.assert_array_equal(actual.metadata[name], array, strict=True)


def finish_series(
    decoder: StreamDecoder, series: Series, dropped: int, decoded: list[object]
) -> None:
    """Feed the frames after ``dropped`` and the series_end; every frame but
    ``dropped`` came out bit for bit and ``dropped`` is reported missing."""
    decoded = decoded + feed_frames(decoder, series, range(dropped + 1, N_FRAMES))
    (end,) = decoder.feed(list(series.end))
    assert isinstance(end, SeriesEndMessage)
    decoder.finish()
    expected = [f for f in series.frames if f.frame != dropped]
    assert len(decoded) == len(expected)
    for actual, frame in zip(decoded, expected, strict=True):
        assert_frame_exact(actual, frame)
    assert decoder.frames_decoded == N_FRAMES - 1
    (state,) = decoder.tracker.series
    assert state.ended
    assert state.missing_frames == [dropped]
    assert decoder.tracker.counts["missing"] == 1
    assert decoder.tracker.anomalies[-1].kind == "missing"
    assert decoder.tracker.anomalies[-1].frames == (dropped,)


def assert_wire_format_assumptions(series: Series, data: bytes) -> None:
    """The simulator's spectra part starts with bin 0 of channel 0, an empty
    bin (as in the real captures). Buffers starting like a pickle or JSON are
    tested on their own (test_legacy_short_buffer_starting_like_a_pickle_or_json)."""
    assert data[:1] == b"\x00"
    assert len(data) == series.nbytes


@pytest.mark.parametrize("framing", FRAMINGS)
def test_the_synthetic_series_decodes_bit_exact(framing, caplog):
    """The baseline the damaged series are compared with: nothing to report."""
    series = synthetic_series(framing)
    decoder = started(series)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        packets = feed_frames(decoder, series, range(N_FRAMES))
        packets += decoder.feed(list(series.end))
        decoder.finish()
    assert isinstance(packets.pop(), SeriesEndMessage)
    for actual, expected in zip(packets, series.frames, strict=True):
        assert_frame_exact(actual, expected)
        assert actual.framing == framing
    # distinct frames: a mix-up would not pass for bit-exact by chance
    assert len({f.spectra.tobytes() for f in series.frames}) == N_FRAMES
    assert decoder.frames_decoded == N_FRAMES
    assert decoder.json_fast_hits == N_FRAMES - 1  # frames 1.. by the template
    assert sum(decoder.tracker.counts.values()) == 0
    assert decoder.tracker.drain() == []  # nothing to report
    if framing == "multipart":
        assert list(packets[0].metadata) == [*DEFAULT_SCALER_NAMES, "window_counts"]
    else:
        assert list(packets[0].metadata) == list(DEFAULT_SCALER_NAMES)


# -- row 2: spectra buffer of the wrong length -------------------------------------
@pytest.mark.parametrize("channels", [CHANNELS, 1])
@pytest.mark.parametrize("at", [0, 3], ids=["frame0", "after-fast-path"])
@pytest.mark.parametrize("delta", [-4, -1, 1, 4, "empty"])
@pytest.mark.parametrize("framing", FRAMINGS)
def test_buffer_length(framing, delta, at, channels, caplog):
    """test_buffer_length_multipart / _legacy: BufferLengthError naming both
    lengths, shape and dtype; counted as bad_frame; the rest decodes."""
    series = synthetic_series(framing, channels)
    decoder = started(series)
    decoded = feed_frames(decoder, series, range(at))
    assert decoder.json_fast_hits == max(at - 1, 0)
    head, data, meta = series.parts(at)
    assert_wire_format_assumptions(series, data)
    if delta == "empty":
        bad = b""
    elif delta < 0:
        bad = data[:delta]
    else:
        bad = data + b"\0" * delta
    expected = (
        f"frame {at}: spectra buffer is {len(bad)} bytes, expected {series.nbytes} "
        f"(shape [{channels}, {BINS}] x uint32)"
    )
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        if framing == "multipart":
            with pytest.raises(BufferLengthError) as info:
                decoder.feed([head, bad, meta])
        else:
            assert decoder.feed([head]) == []
            with pytest.raises(BufferLengthError) as info:
                decoder.feed([bad])
            assert decoder.feed([meta]) == []  # the orphan pickle is swallowed
    assert type(info.value) is BufferLengthError
    assert str(info.value) == expected
    # one fact handed to the caller to report, once
    assert [(a.severity, a.message) for a in decoder.tracker.drain()] == [
        ("warning", f"frame {at} dropped: {expected}")
    ]
    assert dict(decoder.tracker.counts) == {"bad_frame": 1}  # no resync
    (anomaly,) = decoder.tracker.anomalies
    assert (anomaly.kind, anomaly.frames, anomaly.series) == ("bad_frame", (at,), 0)
    assert anomaly.message == f"frame {at} dropped: {expected}"
    finish_series(decoder, series, at, decoded)


@pytest.mark.parametrize(
    ("dtype", "expected"), [("uint16", 32768), ("uint64", 131072), ("float32", 65536)]
)
@pytest.mark.parametrize("framing", FRAMINGS)
def test_other_supported_types_check_their_own_length(framing, dtype, expected):
    series = synthetic_series(framing)
    decoder = started(series)
    head, data, meta = series.parts(0)
    bad_head, bad_data = edit_json(head, type=dtype), data + b"\0"
    if framing == "multipart":
        message = [bad_head, bad_data, meta]
    else:
        assert decoder.feed([bad_head]) == []
        message = [bad_data]
    with pytest.raises(BufferLengthError) as info:
        decoder.feed(message)
    assert str(info.value) == (
        f"frame 0: spectra buffer is 65537 bytes, expected {expected} "
        f"(shape [4, 4096] x {dtype})"
    )
    if framing == "legacy":
        assert decoder.feed([meta]) == []
    finish_series(decoder, series, 0, [])


# -- row 2: what validate_image refuses in the image JSON ------------------------
def refused_image(
    framing: str, changes: dict, error: type[ProtocolError], expected: str, caplog
) -> int:
    """Frame 0's image JSON with ``changes`` is refused with exactly ``error``
    and ``expected``, before its data part is looked at; the rest of the series
    decodes. Returns the tracemalloc peak of refusing it."""
    series = synthetic_series(framing)
    decoder = started(series)
    head, data, meta = series.parts(0)
    assert_wire_format_assumptions(series, data)
    bad = edit_json(head, **changes)
    message = [bad, data, meta] if framing == "multipart" else [bad]
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError) as info:
                decoder.feed(message)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # No bad_frame, no "dropped" line: nothing of its own to report.
        assert decoder.tracker.drain() == []
        assert sum(decoder.tracker.counts.values()) == 0
        if framing == "legacy":
            # Its spectra and pickle still arrive: strays, counted, not raised.
            assert decoder.feed([data]) == []
            assert decoder.feed([meta]) == []
            stray = (
                "legacy framing resynchronised: stray {}-byte binary part "
                "outside any frame (lost JSON part?)"
            )
            assert [a.message for a in decoder.tracker.drain()] == [
                stray.format(len(data)),
                stray.format(len(meta)),
            ]
            assert dict(decoder.tracker.counts) == {"resync": 2}
    assert type(info.value) is error
    assert str(info.value) == expected
    finish_series(decoder, series, 0, [])
    return peak


@pytest.mark.parametrize("delta", [-4, 4])
@pytest.mark.parametrize("bin0", [0x80, 0x7B], ids=["0x80", "brace"])
def test_legacy_short_buffer_starting_like_a_pickle_or_json(bin0, delta, caplog):
    """Legacy framing: a spectra buffer of the wrong length whose bin 0 holds 128
    (first byte 0x80, a pickle's) or 123 (``{``, JSON's) is still a damaged
    buffer: BufferLengthError, not a "lost spectra part" resync or an
    InvalidJSONError (it was, until 2026-12-03). A real pickle or JSON part
    ends with ``.`` or ``}``; a spectra buffer would need a last bin of
    >= 0x2E000000 counts to do that."""
    series = synthetic_series("legacy")
    decoder = started(series)
    head, data, meta = series.parts(0)
    data = bytes([bin0]) + data[1:]
    bad = data[:delta] if delta < 0 else data + b"\0" * delta
    assert decoder.feed([head]) == []
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        with pytest.raises(
            BufferLengthError, match=f"spectra buffer is {len(bad)} bytes"
        ):
            decoder.feed([bad])
        assert decoder.feed([meta]) == []  # the orphan pickle is swallowed
    assert dict(decoder.tracker.counts) == {"bad_frame": 1}  # no resync
    # a real lost spectra part (the whole pickle where the spectra should be)
    # is still a resync, and the next frame decodes
    head1, _, meta1 = series.parts(1)
    assert decoder.feed([head1]) == []
    assert decoder.feed([meta1]) == []
    assert decoder.tracker.counts["resync"] == 1


@pytest.mark.parametrize(
    "dtype", ["float16", "complex64", "complex128", "object", ">u4", "U4", "bool"]
)
@pytest.mark.parametrize("framing", FRAMINGS)
def test_unsupported_type(framing, dtype, caplog):
    expected = (
        f"frame 0: spectra type {dtype!r} is not supported (expected one of "
        f"{SUPPORTED})"
    )
    refused_image(framing, {"type": dtype}, UnsupportedEncodingError, expected, caplog)


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "zlib", "", "None"])
@pytest.mark.parametrize("framing", FRAMINGS)
def test_unsupported_compression(framing, compression, caplog):
    expected = (
        f"frame 0: compression {compression!r} is not supported (expected 'none')"
    )
    refused_image(
        framing,
        {"compression": compression},
        UnsupportedEncodingError,
        expected,
        caplog,
    )


@pytest.mark.parametrize("framing", FRAMINGS)
def test_compression_is_checked_before_the_type(framing, caplog):
    expected = "frame 0: compression 'bslz4' is not supported (expected 'none')"
    changes = {"compression": "bslz4", "type": "float16"}
    refused_image(framing, changes, UnsupportedEncodingError, expected, caplog)


# -- row 3: a shape claiming 10^9 channels -------------------------------------------
@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [
        (
            [10**9, 4096],
            "uint32",
            "frame 0: shape [1000000000, 4096] outside 1..256 channels x "
            "1..65536 bins; refusing it",
        ),
        (
            [10**9, 10**9],
            "uint64",
            "frame 0: shape [1000000000, 1000000000] outside 1..256 channels x "
            "1..65536 bins; refusing it",
        ),
        (
            [256, 65536],
            "uint64",
            f"frame 0: shape [256, 65536] of uint64 is 134217728 bytes, over the "
            f"{MAX_FRAME_BYTES} limit",
        ),
    ],
    ids=["1e9-channels", "1e9-both", "over-64MiB"],
)
@pytest.mark.parametrize("framing", FRAMINGS)
def test_absurd_shape_is_refused_without_allocating(
    framing, shape, dtype, expected, caplog
):
    changes = {"shape": shape, "type": dtype}
    peak = refused_image(framing, changes, ShapeTooLargeError, expected, caplog)
    assert peak < 10 * 1024 * 1024


def test_tracemalloc_would_see_a_frame_sized_allocation():
    """The peak measured above would show an array of the refused size (numpy
    reports its buffers to tracemalloc), so a small peak means none was made."""
    tracemalloc.start()
    try:
        array = np.empty((256, 65536), dtype=np.uint64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= array.nbytes == 2 * MAX_FRAME_BYTES


# -- row 13: one part of a synthetic series garbled -------------------------------
def garble(part: bytes, draw) -> bytes:
    """``part`` truncated, bit-flipped, extended, with bytes inserted, or
    replaced by random bytes."""
    how = draw(st.sampled_from(["truncate", "flip", "extend", "insert", "replace"]))
    if how == "truncate":
        return part[: draw(st.integers(0, len(part) - 1))]
    if how == "flip":
        buf = bytearray(part)
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, len(buf) - 1))] ^= 1 << draw(st.integers(0, 7))
        if bytes(buf) == part:  # two flips undid each other
            buf[0] ^= 1
        return bytes(buf)
    if how == "extend":
        return part + draw(st.binary(min_size=1, max_size=16))
    if how == "insert":
        at = draw(st.integers(0, len(part)))
        return part[:at] + draw(st.binary(min_size=1, max_size=32)) + part[at:]
    return draw(st.binary(max_size=64).filter(lambda b: b != part))


@pytest.mark.parametrize("framing", FRAMINGS)
@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data())
def test_synthetic_stream_with_one_part_garbled(framing, data):
    """Only ProtocolError escapes; every other frame decodes bit for bit, from
    its own messages; the damaged one, if it comes out at all, is well formed."""
    series = synthetic_series(framing)
    damaged_frame = data.draw(st.integers(0, N_FRAMES - 1), label="frame")
    part_index = data.draw(st.integers(0, 2), label="part")  # JSON, spectra, pickle
    original = series.parts(damaged_frame)[part_index]
    damaged = garble(original, data.draw)
    assert damaged != original

    decoder = started(series)
    out: dict[int, list[object]] = {i: [] for i in range(N_FRAMES)}
    for i in range(N_FRAMES):
        k = 0  # part number within the frame
        for message in series.messages[i]:
            parts = list(message)
            for j in range(len(parts)):
                if (i, k) == (damaged_frame, part_index):
                    parts[j] = damaged
                k += 1
            with contextlib.suppress(ProtocolError):
                out[i] += decoder.feed(parts)
    (end,) = decoder.feed(list(series.end))
    assert isinstance(end, SeriesEndMessage)
    decoder.finish()

    for i, expected in enumerate(series.frames):
        if i != damaged_frame:
            (actual,) = out[i]
            assert_frame_exact(actual, expected)
            continue
        assert len(out[i]) <= 1
        for frame in out[i]:
            assert isinstance(frame, Frame)
            assert frame.spectra.shape == tuple(frame.info.shape)
            assert set(DEFAULT_SCALER_NAMES) <= set(frame.metadata)
    assert decoder.frames_decoded == N_FRAMES - 1 + len(out[damaged_frame])
