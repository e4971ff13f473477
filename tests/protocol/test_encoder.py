"""StreamEncoder: decode(encode(x)) == x, and re-encoding the real captures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ophyd_xspress.protocol import (
    Frame,
    HeaderMessage,
    ImageMessage,
    SeriesEndMessage,
    StreamDecoder,
    StreamEncoder,
    decode_metadata,
    make_frame,
)

FRAMINGS = ["legacy", "multipart"]


def header_with_everything() -> HeaderMessage:
    return HeaderMessage.model_validate(
        {
            "htype": "header",
            "filename": "/data/scan_000001_xspress3.hdf5",
            "overwritable": False,
            "limits": [[[10, 20], [11, 21]], [[100, 200], [101, 201]]],
            "extra_tags": [
                "output_count_rate",
                "all_events",
                "all_good",
                "clock_ticks",
                "total_ticks",
                "reset_ticks",
                "event_width",
                "dead_time_correction",
                "window_counts",
            ],
            "vendor_field": {"x": [1, 2]},
        }
    )


def round_trip(encoder: StreamEncoder, packets) -> tuple[list, list, StreamDecoder]:
    messages = [m for p in packets for m in encoder.encode(p)]
    decoder = StreamDecoder()
    out = [q for m in messages for q in decoder.feed(m)]
    return messages, out, decoder


# -- make_frame ----------------------------------------------------------------
def test_make_frame_builds_the_image_packet():
    spectra = np.asfortranarray(np.arange(8, dtype=np.uint16).reshape(2, 4))
    frame = make_frame(7, spectra, {"a": np.zeros(2)}, exptime=0.5, trigger="soft")
    assert frame.info == ImageMessage(
        frame=7, shape=(2, 4), exptime=0.5, type="uint16", trigger="soft"
    )
    assert frame.info.model_extra == {"trigger": "soft"}
    assert frame.spectra.flags.c_contiguous
    assert frame.spectra.tolist() == spectra.tolist()
    assert (frame.frame, frame.channels, frame.bins, frame.exptime) == (7, 2, 4, 0.5)
    assert frame.framing == "multipart"


def test_synthetic_frames_are_consistent(make_synthetic_frames):
    (frame,) = make_synthetic_frames(1, channels=3, window_counts=True)
    np.testing.assert_array_equal(frame.spectra.sum(axis=1), frame["all_good"])
    assert (frame["all_events"] >= frame["all_good"]).all()
    assert frame.window_counts.shape == (2, 3)
    assert frame.spectra.dtype == np.uint32


# -- round trips ---------------------------------------------------------------
@pytest.mark.parametrize("framing", FRAMINGS)
def test_round_trip_header_frames_series_end(framing, make_synthetic_frames):
    header = header_with_everything()
    frames = make_synthetic_frames(4, channels=2, window_counts=True)
    end = SeriesEndMessage.model_validate({"htype": "series_end", "n": 4})
    encoder = StreamEncoder(framing)

    messages, out, decoder = round_trip(encoder, [header, *frames, end])

    per_frame = 3 if framing == "legacy" else 1
    assert len(messages) == 1 + per_frame * 4 + 1
    assert out[0] == header
    assert out[0].model_extra == {"vendor_field": {"x": [1, 2]}}
    assert out[-1] == end
    decoded = out[1:-1]
    assert decoded == frames  # Frame.__eq__: info, spectra and metadata, by value
    assert [f.framing for f in decoded] == [framing] * 4
    assert not decoder.tracker.counts


@pytest.mark.parametrize("framing", FRAMINGS)
def test_spectra_bytes_are_identical_on_the_wire(framing, make_synthetic_frames):
    (frame,) = make_synthetic_frames(1)
    messages = StreamEncoder(framing).encode(frame)
    if framing == "multipart":
        ((head, data, meta),) = messages
    else:
        (head,), (data,), (meta,) = messages
    assert bytes(data) == frame.spectra.tobytes()
    assert json.loads(head) == frame.info.to_wire()
    assert [a.tolist() for a in decode_metadata(meta)] == [
        a.tolist() for a in frame.metadata.values()
    ]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize(
    "dtype", ["uint8", "uint16", "uint32", "uint64", "int32", "float32", "float64"]
)
def test_round_trip_of_every_spectra_type(framing, dtype, make_synthetic_frames):
    (base,) = make_synthetic_frames(1, channels=3, bins=64)
    frame = make_frame(5, base.spectra.astype(dtype), base.metadata, exptime=0.1)
    _, out, _ = round_trip(StreamEncoder(framing), [HeaderMessage(), frame])
    assert out[1] == frame
    assert out[1].spectra.dtype == np.dtype(dtype)


def test_non_contiguous_and_big_endian_spectra_are_sent_as_little_endian(
    make_synthetic_frames,
):
    (base,) = make_synthetic_frames(1, channels=2, bins=64)
    strided = base.spectra[:, ::2]
    assert not strided.flags.c_contiguous
    sliced = Frame(
        info=ImageMessage(frame=0, shape=(2, 32)),
        spectra=strided,
        metadata=base.metadata,
    )
    big = Frame(
        info=ImageMessage(frame=1, shape=(2, 64)),
        spectra=base.spectra.astype(">u4"),
        metadata=base.metadata,
    )
    encoder = StreamEncoder("multipart")
    ((_, data, _),) = encoder.encode(big)
    assert bytes(data) == base.spectra.astype("<u4").tobytes()

    _, out, _ = round_trip(encoder, [HeaderMessage(), sliced, big])
    assert out[1].spectra.tolist() == strided.tolist()
    assert out[2].spectra.dtype == np.dtype("<u4")
    assert out[2].spectra.tolist() == base.spectra.tolist()


def test_json_separators_follow_the_framing(make_synthetic_frames):
    (frame,) = make_synthetic_frames(1)
    ((legacy_head,), _, _) = StreamEncoder("legacy").encode(frame)
    ((multi_head, _, _),) = StreamEncoder("multipart").encode(frame)
    assert b", " not in legacy_head
    assert b'":' in legacy_head
    assert b'"htype": "image", ' in multi_head
    ((loose,), _, _) = StreamEncoder("legacy", compact_json=False).encode(frame)
    assert loose == multi_head
    ((tight, _, _),) = StreamEncoder("multipart", compact_json=True).encode(frame)
    assert tight == legacy_head


@pytest.mark.parametrize("protocol", [3, 4])
def test_pickle_protocol_is_honoured(protocol, make_synthetic_frames):
    (frame,) = make_synthetic_frames(1)
    ((_, _, meta),) = StreamEncoder("multipart", pickle_protocol=protocol).encode(frame)
    assert meta[:2] == bytes([0x80, protocol])


def test_bad_encoder_settings():
    with pytest.raises(ValueError, match="framing must be 'legacy' or 'multipart'"):
        StreamEncoder("bundled")  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", [0, 2, 5, -1])
def test_pickle_protocol_is_checked_at_construction(protocol):
    with pytest.raises(ValueError, match="pickle_protocol must be 3 or 4") as info:
        StreamEncoder("multipart", pickle_protocol=protocol)
    assert str(info.value) == (
        f"pickle_protocol must be 3 or 4 (what the detector sends), not {protocol}"
    )
    encoder = StreamEncoder("multipart")
    with pytest.raises(ValueError, match="pickle_protocol must be 3 or 4"):
        encoder.pickle_protocol = protocol
    assert encoder.pickle_protocol == 4
    encoder.pickle_protocol = 3
    assert encoder.pickle_protocol == 3


# -- the real captures ---------------------------------------------------------
@pytest.mark.parametrize(
    ("capture", "framing", "protocol"),
    [("dump_capture", "legacy", 3), ("multipart_capture", "multipart", 4)],
)
def test_re_encoding_a_real_capture(
    request, decode_messages, capture, framing, protocol
):
    original = request.getfixturevalue(capture)
    _, packets = decode_messages(original)
    encoder = StreamEncoder(framing)
    assert encoder.pickle_protocol == protocol  # the framing's, by default
    re_encoded = [m for p in packets for m in encoder.encode(p)]

    # Same message structure.
    assert [len(m) for m in re_encoded] == [len(m) for m in original]

    # Every part is byte-identical: the JSON (compact separators for the legacy
    # firmware, spaces for the newer one, same key order), the spectra, and
    # the metadata pickle (protocol 3 / 4 naming numpy.core.multiarray, as the
    # device's numpy wrote it, whatever numpy is installed here).
    for new, old in zip(re_encoded, original, strict=True):
        assert [bytes(part) for part in new] == old

    # Decoding the re-encoded stream reproduces the decoded packets.
    _, again = decode_messages(re_encoded)
    assert again == packets


def test_legacy_header_bytes_are_identical(dump_capture):
    header = StreamDecoder().feed(dump_capture[0])[0]
    ((wire,),) = StreamEncoder("legacy").encode(header)
    assert wire == dump_capture[0][0]
    assert wire.startswith(b'{"htype":"header","filename":"/data/staff/nanomax/')


def test_multipart_header_bytes_are_identical(multipart_capture):
    header = StreamDecoder().feed(multipart_capture[0])[0]
    ((wire,),) = StreamEncoder("multipart").encode(header)
    assert wire == multipart_capture[0][0]
