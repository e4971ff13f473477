"""The typed JSON packets: header (with ROI limits), image and series_end."""

from __future__ import annotations

import json

import pydantic
import pytest

from ophyd_xspress.protocol import (
    DEFAULT_SCALER_NAMES,
    HeaderMessage,
    ImageMessage,
    JsonMessage,
    RoiWindow,
    RoiWindows,
    SeriesEndMessage,
)

# Four channels, two windows, all different so that indexing mistakes show.
LIMITS = [
    [[10, 20], [11, 21], [12, 22], [13, 23]],
    [[100, 200], [101, 201], [102, 202], [103, 203]],
]
TAGS = [*DEFAULT_SCALER_NAMES, "window_counts"]

JSON_ADAPTER: pydantic.TypeAdapter[HeaderMessage | ImageMessage | SeriesEndMessage]
JSON_ADAPTER = pydantic.TypeAdapter(JsonMessage)


def test_real_header_parses_limits_and_extra_tags(multipart_capture):
    wire = json.loads(multipart_capture[0][0])
    header = HeaderMessage.model_validate(wire)

    assert header.filename is not None
    assert header.filename.endswith("/scan_000004_xspress3.hdf5")
    assert header.overwritable is False
    assert header.limits is not None
    assert len(header.limits.windows) == 2
    assert all(len(window) == 4 for window in header.limits.windows)
    assert header.limits.windows[1][3] == RoiWindow(low=0, high=0)
    assert header.extra_tags == tuple(TAGS)
    assert header.scaler_names == tuple(TAGS)
    assert header.model_extra == {}
    # Same keys, same order, same values as the detector sent.
    assert list(header.to_wire().items()) == list(wire.items())


def test_real_legacy_header_has_no_limits(dump_capture):
    wire = json.loads(dump_capture[0][0])
    header = HeaderMessage.model_validate(wire)
    assert header.limits is None
    assert header.extra_tags is None
    assert header.scaler_names == DEFAULT_SCALER_NAMES
    assert header.to_wire() == wire
    assert list(header.to_wire()) == ["htype", "filename", "overwritable"]


def test_limits_index_as_window_then_channel():
    header = HeaderMessage.model_validate(
        {"htype": "header", "limits": LIMITS, "extra_tags": TAGS}
    )
    assert header.limits is not None
    windows = header.limits.windows
    for w in range(2):
        for c in range(4):
            assert windows[w][c].low == LIMITS[w][c][0]
            assert windows[w][c].high == LIMITS[w][c][1]
    assert windows[0][2] == RoiWindow(low=12, high=22)
    assert windows[1][0] == RoiWindow(low=100, high=200)
    assert header.limits.to_wire() == LIMITS
    assert header.to_wire()["limits"] == LIMITS


def test_roi_windows_from_wire_round_trip_and_instance_passthrough():
    windows = RoiWindows.from_wire(LIMITS)
    assert windows.to_wire() == LIMITS
    assert RoiWindows.from_wire(tuple(tuple(tuple(p) for p in w) for w in LIMITS)) == (
        windows
    )
    header = HeaderMessage(limits=windows)
    assert header.limits is windows


def test_unknown_header_fields_are_kept_and_re_emitted():
    wire = {
        "htype": "header",
        "filename": "/data/x.hdf5",
        "overwritable": True,
        "limits": LIMITS,
        "extra_tags": TAGS,
        "firmware": "3.1.2",
        "settings": {"gain": [1, 2, 3], "mode": None},
    }
    header = HeaderMessage.model_validate(wire)
    assert header.model_extra == {
        "firmware": "3.1.2",
        "settings": {"gain": [1, 2, 3], "mode": None},
    }
    out = header.to_wire()
    assert out == wire
    assert json.loads(json.dumps(out)) == wire


def test_header_minimal_and_explicit_nulls():
    assert HeaderMessage().to_wire() == {"htype": "header"}
    assert HeaderMessage.model_validate({"htype": "header"}).to_wire() == {
        "htype": "header"
    }
    # A null the detector sent explicitly is re-emitted.
    wire = {"htype": "header", "filename": None, "overwritable": None}
    assert HeaderMessage.model_validate(wire).to_wire() == wire


def test_empty_extra_tags_fall_back_to_default_names():
    header = HeaderMessage.model_validate({"htype": "header", "extra_tags": []})
    assert header.scaler_names == DEFAULT_SCALER_NAMES


def test_real_image_packet_parses(multipart_capture, dump_capture):
    wire = json.loads(multipart_capture[1][0])
    image = ImageMessage.model_validate(wire)
    assert image.frame == 0
    assert image.shape == (4, 4096)
    assert image.exptime == 0.049999875
    assert image.type == "uint32"
    assert image.compression == "none"
    assert list(image.to_wire().items()) == list(wire.items())

    legacy = json.loads(dump_capture[1 + 3 * 7][0])
    image = ImageMessage.model_validate(legacy)
    assert image.frame == 7
    assert image.exptime == 0.099999875
    assert list(image.to_wire().items()) == list(legacy.items())


def test_image_extras_are_kept_and_defaults_apply():
    image = ImageMessage.model_validate(
        {"htype": "image", "frame": 3, "shape": [2, 16], "roi": {"a": 1}}
    )
    assert image.exptime is None
    assert image.type == "uint32"
    assert image.compression == "none"
    assert image.model_extra == {"roi": {"a": 1}}
    assert image.to_wire() == {
        "htype": "image",
        "frame": 3,
        "shape": [2, 16],
        "type": "uint32",
        "compression": "none",
        "roi": {"a": 1},
    }


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ({"htype": "image", "shape": [4, 4096]}, "frame"),
        ({"htype": "image", "frame": 0}, "shape"),
        ({"htype": "image", "frame": -1, "shape": [4, 4096]}, "frame"),
        ({"htype": "image", "frame": "zero", "shape": [4, 4096]}, "frame"),
        ({"htype": "image", "frame": 1.5, "shape": [4, 4096]}, "frame"),
        ({"htype": "image", "frame": 0, "shape": "4x4096"}, "shape"),
        ({"htype": "image", "frame": 0, "shape": [4, 4096], "type": 5}, "type"),
    ],
)
def test_bad_image_packets_are_rejected(wire, field):
    with pytest.raises(pydantic.ValidationError) as info:
        ImageMessage.model_validate(wire)
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_series_end_parses_and_keeps_extras():
    end = SeriesEndMessage.model_validate({"htype": "series_end"})
    assert end.to_wire() == {"htype": "series_end"}
    end = SeriesEndMessage.model_validate({"htype": "series_end", "frames": 20})
    assert end.model_extra == {"frames": 20}
    assert end.to_wire() == {"htype": "series_end", "frames": 20}


@pytest.mark.parametrize(
    ("wire", "cls"),
    [
        ({"htype": "header", "filename": "f"}, HeaderMessage),
        ({"htype": "image", "frame": 1, "shape": [1, 2]}, ImageMessage),
        ({"htype": "series_end"}, SeriesEndMessage),
    ],
)
def test_discriminated_union_picks_the_model(wire, cls):
    assert type(JSON_ADAPTER.validate_python(wire)) is cls


def test_wrong_htype_literal_is_rejected():
    with pytest.raises(pydantic.ValidationError):
        HeaderMessage.model_validate({"htype": "image"})
    with pytest.raises(pydantic.ValidationError):
        JSON_ADAPTER.validate_python({"htype": "footer"})


def test_packets_are_frozen():
    header = HeaderMessage(filename="a")
    with pytest.raises(pydantic.ValidationError):
        header.filename = "b"  # type: ignore[misc]
    image = ImageMessage(frame=1, shape=(4, 8))
    with pytest.raises(pydantic.ValidationError):
        image.frame = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("limits", "fragment"),
    [
        ("0-10", "limits must be a list of windows"),
        (5, "limits must be a list of windows"),
        ({"0": [[0, 1]]}, "limits must be a list of windows"),
        ([5], "limits[0] must be a list of channels"),
        ([[[0, 1]], "x"], "limits[1] must be a list of channels"),
        ([[[0, 1, 2]]], "limits[0][0] must be [low, high] integers"),
        ([[[0]]], "limits[0][0] must be [low, high] integers"),
        ([[[0, 1], ["a", 2]]], "limits[0][1] must be [low, high] integers"),
        ([[[0, 1]], [[1.5, 2]]], "limits[1][0] must be [low, high] integers"),
        ([[[True, 3]]], "limits[0][0] must be [low, high] integers"),
        ([[[0, None]]], "limits[0][0] must be [low, high] integers"),
        ([[7]], "limits[0][0] must be [low, high] integers"),
    ],
)
def test_bad_limits_are_rejected(limits, fragment):
    with pytest.raises(ValueError, match="limits") as direct:
        RoiWindows.from_wire(limits)
    assert fragment in str(direct.value)
    with pytest.raises(pydantic.ValidationError) as info:
        HeaderMessage.model_validate({"htype": "header", "limits": limits})
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("limits", "fragment"),
    [
        (
            [[[0, 1], [0, 1]], [[0, 1]]],
            "limits[1] has 1 channels, limits[0] has 2: every window must list "
            "every channel",
        ),
        ([[[0, 1]], [[0, 1], [2, 3]]], "limits[1] has 2 channels, limits[0] has 1"),
        ([[[-1, 5]]], "limits[0][0] must have 0 <= low <= high, got [-1, 5]"),
        ([[[0, 1], [9, 3]]], "limits[0][1] must have 0 <= low <= high, got [9, 3]"),
        ([[[0, -2]]], "limits[0][0] must have 0 <= low <= high, got [0, -2]"),
    ],
)
def test_inconsistent_limits_are_rejected(limits, fragment):
    with pytest.raises(ValueError, match="limits") as direct:
        RoiWindows.from_wire(limits)
    assert fragment in str(direct.value)
    with pytest.raises(pydantic.ValidationError) as info:
        HeaderMessage.model_validate({"htype": "header", "limits": limits})
    assert fragment in str(info.value)


def test_inconsistent_limits_in_a_header_part_are_invalid_json():
    from ophyd_xspress.protocol import InvalidJSONError, StreamDecoder

    decoder = StreamDecoder()
    part = json.dumps({"htype": "header", "limits": [[[5, 2]]]}).encode()
    with pytest.raises(InvalidJSONError) as info:
        decoder.feed([part])
    assert str(info.value).startswith("bad header packet: limits: Value error, ")
    assert "limits[0][0] must have 0 <= low <= high, got [5, 2]" in str(info.value)
    assert decoder.header is None


def test_roi_windows_validate_when_built_directly():
    assert RoiWindow(low=0, high=0) == RoiWindow(low=0, high=0)
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 0"):
        RoiWindow(low=-1, high=3)
    with pytest.raises(pydantic.ValidationError, match="window low 4 > high 3"):
        RoiWindow(low=4, high=3)
    one, two = RoiWindow(low=0, high=1), RoiWindow(low=2, high=3)
    assert RoiWindows(windows=((one, two), (two, one))).to_wire() == [
        [[0, 1], [2, 3]],
        [[2, 3], [0, 1]],
    ]
    with pytest.raises(pydantic.ValidationError, match="different numbers of channels"):
        RoiWindows(windows=((one, two), (one,)))


def test_limits_messages_never_show_the_value():
    with pytest.raises(ValueError, match="limits must be a list") as info:
        RoiWindows.from_wire("SECRET" * 50)
    assert "SECRET" not in str(info.value)
    assert "got str" in str(info.value)
    with pytest.raises(ValueError, match="must be") as info:
        RoiWindows.from_wire([[["SECRET", 1]]])
    assert "SECRET" not in str(info.value)
    assert "got list of 2 items" in str(info.value)


@pytest.mark.parametrize("frame", [2**63, 2**64, 10**30])
def test_frame_numbers_are_bounded(frame):
    with pytest.raises(pydantic.ValidationError) as info:
        ImageMessage.model_validate({"htype": "image", "frame": frame, "shape": [1, 2]})
    (error,) = info.value.errors()
    assert error["loc"] == ("frame",)
    assert error["msg"] == "Input should be less than 9223372036854775808"
    assert ImageMessage(frame=2**63 - 1, shape=(1, 2)).frame == 2**63 - 1


def test_bad_extra_tags_are_rejected():
    with pytest.raises(pydantic.ValidationError):
        HeaderMessage.model_validate({"htype": "header", "extra_tags": [1, 2]})
    with pytest.raises(pydantic.ValidationError):
        HeaderMessage.model_validate({"htype": "header", "extra_tags": "all_good"})
