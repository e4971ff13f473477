"""Dead-time physics (event-width method) against hand-computed values."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from ophyd_xspress.protocol import (
    CLOCK_HZ,
    DeadTimeWarning,
    Frame,
    correct,
    dead_time,
    dead_time_from_scalers,
    roi_sums,
    stream_ocr_as_rate,
)

# Channel 3 of frame 0 of the real multipart capture.
EVENTS, GOOD, TICKS, RESET, WIDTH = 12303, 12303, 3_999_990, 1_713_480, 6
STREAM_DTC = 1.817855842762348


def test_dead_time_by_hand():
    dt = dead_time(EVENTS, GOOD, TICKS, RESET, WIDTH)

    dead_ticks = 12303 * 7 + 1713480
    assert dead_ticks == 1_799_601
    dtc = 3999990 / (3999990 - 1713480 - 12303 * 7)
    real_time = 3999990 / 80e6
    assert real_time == pytest.approx(0.049999875, rel=1e-15)

    assert dt.dead_ticks == dead_ticks
    assert dt.dtc == pytest.approx(dtc, rel=1e-15)
    assert dt.dtc == pytest.approx(STREAM_DTC, rel=1e-12)
    assert dt.dead_percent == pytest.approx(100 * 1_799_601 / 3_999_990, rel=1e-15)
    assert dt.real_time == pytest.approx(real_time, rel=1e-15)
    assert dt.live_time == pytest.approx(real_time / dtc, rel=1e-15)
    assert dt.live_time == pytest.approx((3_999_990 - 1_799_601) / 80e6, rel=1e-12)
    assert dt.ocr == pytest.approx(12303 / 0.049999875, rel=1e-15)
    assert dt.ocr == pytest.approx(246_060.615, rel=1e-9)
    assert dt.icr == pytest.approx(12303 / 0.049999875 * dtc, rel=1e-15)
    assert dt.trigger_rate == pytest.approx(12303 / 0.049999875, rel=1e-15)
    assert not dt.invalid
    for value in (dt.dtc, dt.ocr, dt.live_time, dt.dead_ticks):
        assert value.dtype == np.float64
        assert value.shape == ()


def test_no_dead_time_gives_dtc_one():
    dt = dead_time(0, 0, 7_999_990, 0, 6)
    assert dt.dtc == 1.0
    assert dt.dead_percent == 0.0
    assert dt.ocr == 0.0
    assert dt.live_time == dt.real_time == 7_999_990 / 80e6


def _formula(events, good, ticks, reset, width, clock_hz=80e6):
    dead = events * (width + 1) + reset
    dtc = ticks / (ticks - dead)
    real = ticks / clock_hz
    return {
        "dead_ticks": dead,
        "dead_percent": 100 * dead / ticks,
        "dtc": dtc,
        "real_time": real,
        "live_time": real / dtc,
        "ocr": good / real,
        "icr": good / real * dtc,
        "trigger_rate": events / real,
    }


def test_vectorised_over_frames_and_channels():
    rng = np.random.default_rng(7)
    shape = (6, 4)
    events = rng.integers(0, 200_000, shape).astype(np.uint32)
    good = (events * 0.9).astype(np.uint32)
    ticks = np.full(shape, 7_999_990, dtype=np.uint32)
    reset = rng.integers(0, 2_000_000, shape).astype(np.uint32)
    width = np.full(shape, 6, dtype=np.int32)

    dt = dead_time(events, good, ticks, reset, width)

    for name in ("dead_ticks", "dtc", "live_time", "ocr", "icr", "trigger_rate"):
        assert getattr(dt, name).shape == shape
    for f in range(shape[0]):
        for c in range(shape[1]):
            expected = _formula(
                int(events[f, c]),
                int(good[f, c]),
                int(ticks[f, c]),
                int(reset[f, c]),
                int(width[f, c]),
            )
            for name, value in expected.items():
                assert getattr(dt, name)[f, c] == pytest.approx(value, rel=1e-12), name
    assert not dt.invalid.any()


def test_broadcasting_scalars_against_arrays():
    events = np.array([[0, 10], [20, 30]], dtype=np.uint32)
    dt = dead_time(events, events, 1_000_000, 0, 6)
    np.testing.assert_allclose(
        dt.dtc, 1_000_000 / (1_000_000 - events * 7.0), rtol=1e-15
    )


def test_no_integer_overflow_with_uint32_inputs():
    events = np.array([2**31], dtype=np.uint32)
    width = np.array([6], dtype=np.int32)
    ticks = np.array([2**32 - 1], np.uint32)
    dt = dead_time(events, events, ticks, 0, width, warn=False)
    assert dt.dead_ticks[0] == 2**31 * 7  # would wrap in uint32
    assert dt.dtc[0] == np.inf
    assert dt.invalid[0]


def test_clock_hz_is_configurable():
    dt = dead_time(10, 10, 100_000_000, 0, 6, clock_hz=100e6)
    assert dt.real_time == 1.0
    assert dt.ocr == 10.0


def test_zero_clock_ticks_give_nan_and_a_warning():
    ticks = np.array([7_999_990, 0, 7_999_990, 0], dtype=np.uint32)
    events = np.array([5, 5, 0, 0], dtype=np.uint32)
    with pytest.warns(DeadTimeWarning) as record:
        dt = dead_time(events, events, ticks, 0, 6)
    assert len(record) == 1
    message = str(record[0].message)
    assert "undefined for 2 of 4 values" in message
    assert "2 with clock_ticks == 0 (NaN)" in message
    assert "0 saturated" in message
    assert dt.invalid.tolist() == [False, True, False, True]
    assert np.isnan(dt.dtc[[1, 3]]).all()
    assert np.isnan(dt.live_time[[1, 3]]).all()
    assert np.isnan(dt.ocr[[1, 3]]).all()
    assert np.isnan(dt.dead_percent[[1, 3]]).all()
    assert np.isnan(dt.trigger_rate[[1, 3]]).all()
    assert dt.dtc[0] == pytest.approx(7_999_990 / (7_999_990 - 35), rel=1e-15)
    assert dt.dtc[2] == 1.0


def test_zero_clock_ticks_with_python_ints_never_divide_by_zero():
    with pytest.warns(DeadTimeWarning, match="1 with clock_ticks == 0"):
        dt = dead_time(0, 0, 0, 0, 0)
    assert np.isnan(dt.dtc)
    assert dt.invalid


def test_saturated_gives_inf_and_a_warning():
    ticks = 1_000_000
    with pytest.warns(DeadTimeWarning) as record:
        dt = dead_time([1, 100_000, 200_000], [1, 1, 0], ticks, [0, 300_000, 0], 6)
    message = str(record[0].message)
    assert "undefined for 2 of 3 values" in message
    assert "0 with clock_ticks == 0 (NaN), 2 saturated" in message
    # dead_ticks == clock_ticks exactly and dead_ticks > clock_ticks
    assert dt.dead_ticks.tolist() == [7.0, 1_000_000.0, 1_400_000.0]
    assert dt.dtc[0] == pytest.approx(ticks / (ticks - 7), rel=1e-15)
    assert np.isposinf(dt.dtc[1:]).all()
    assert dt.invalid.tolist() == [False, True, True]
    assert dt.dead_percent[1:].tolist() == [100.0, 140.0]
    assert dt.live_time[1:].tolist() == [0.0, 0.0]
    assert np.isposinf(dt.icr[1])
    assert np.isnan(dt.icr[2])  # 0 counts x inf


def test_both_edges_in_one_call():
    with pytest.warns(DeadTimeWarning, match="1 with clock_ticks == 0.*1 saturated"):
        dt = dead_time([0, 10], [0, 0], [0, 10], [0, 0], 6)
    assert np.isnan(dt.dtc[0])
    assert np.isposinf(dt.dtc[1])


def test_warn_false_suppresses_the_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dt = dead_time([0, 10], [0, 0], [0, 10], [0, 0], 6, warn=False)
        dt2 = dead_time_from_scalers(
            {
                "all_events": 1,
                "all_good": 1,
                "clock_ticks": 0,
                "reset_ticks": 0,
                "event_width": 6,
            },
            warn=False,
        )
    assert dt.invalid.all()
    assert dt2.invalid


def test_dead_time_from_real_scalers(multipart_capture, decode_messages):
    _, packets = decode_messages(multipart_capture)
    frames = [p for p in packets if isinstance(p, Frame)]
    scalers = {
        name: np.stack([f[name] for f in frames])
        for name in (
            "all_events",
            "all_good",
            "clock_ticks",
            "reset_ticks",
            "event_width",
        )
    }
    dt = dead_time_from_scalers(scalers)
    stream_dtc = np.stack([f["dead_time_correction"] for f in frames])
    assert dt.dtc.shape == (5, 4)
    np.testing.assert_allclose(dt.dtc, stream_dtc, rtol=1e-12, atol=0)
    assert dt.dtc[0, 3] == pytest.approx(STREAM_DTC, rel=1e-12)
    assert (dt.dtc[:, :3] == 1.0).all()
    np.testing.assert_allclose(dt.real_time, 3_999_990 / 80e6, rtol=1e-15)


# -- the stream's own output_count_rate ----------------------------------------
def test_stream_ocr_as_rate_matches_the_scalers(multipart_capture, decode_messages):
    _, packets = decode_messages(multipart_capture)
    frames = [p for p in packets if isinstance(p, Frame)]
    assert len(frames) == 5
    for frame in frames:
        ocr = frame["output_count_rate"][3]
        good = float(frame["all_good"][3])
        ticks = float(frame["clock_ticks"][3])
        assert ocr == pytest.approx(good / (ticks * 80e6), rel=1e-12)  # the units bug
        rate = stream_ocr_as_rate(frame["output_count_rate"])[3]
        assert rate == pytest.approx(good / (ticks / 80e6), rel=1e-9)
        assert rate == pytest.approx(
            dead_time_from_scalers(frame.scalers).ocr[3], rel=1e-9
        )
        assert rate > 1e5  # ~2.5e5 counts/s, against ~4e-11 in the stream
    assert stream_ocr_as_rate(0.0) == 0.0
    assert stream_ocr_as_rate(1.0) == CLOCK_HZ**2


# -- correct -------------------------------------------------------------------
def test_correct_spectra_with_per_channel_dtc():
    rng = np.random.default_rng(3)
    spectra = rng.integers(0, 100, size=(3, 4, 16), dtype=np.uint32)
    dtc = rng.uniform(1.0, 2.0, size=(3, 4))
    out = correct(spectra, dtc)
    assert out.dtype == np.float64
    assert out.shape == spectra.shape
    for f in range(3):
        for c in range(4):
            for b in range(16):
                assert out[f, c, b] == spectra[f, c, b] * dtc[f, c]


def test_correct_single_frame_and_scalars():
    spectra = np.arange(8, dtype=np.uint32).reshape(2, 4)
    out = correct(spectra, np.array([1.0, 2.0]))
    assert out.tolist() == [[0, 1, 2, 3], [8, 10, 12, 14]]
    # Scalars (e.g. all_good or ROI sums per channel): same shape as dtc.
    assert correct(np.array([10, 20]), np.array([1.5, 2.0])).tolist() == [15.0, 40.0]
    assert correct(5, 2.0) == 10.0
    counts = np.array([[1, 2], [3, 4]])
    assert correct(counts, np.array([[2.0, 3.0], [4.0, 5.0]])).tolist() == [
        [2.0, 6.0],
        [12.0, 20.0],
    ]


def test_correct_propagates_nan_dtc():
    out = correct(np.array([[1, 0], [3, 4]]), np.array([np.nan, 2.0]))
    assert np.isnan(out[0]).all()
    assert out[1].tolist() == [6.0, 8.0]


def test_correct_with_a_saturated_channel_emits_no_numpy_warning():
    spectra = np.array([[0, 5, 0], [1, 2, 3]], dtype=np.uint32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = correct(spectra, np.array([np.inf, 1.0]))
    assert np.isnan(out[0, 0])
    assert np.isposinf(out[0, 1])
    assert out[1].tolist() == [1.0, 2.0, 3.0]


def test_correct_with_huge_values_emits_no_numpy_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = correct(np.array([1e308, 0.0]), np.array([10.0, np.nan]))
    assert np.isposinf(out[0])
    assert np.isnan(out[1])


def test_dead_time_with_non_finite_inputs_warns_only_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dt = dead_time([np.inf, 1.0], [0, 0], [10, np.inf], [0, np.inf], [np.inf, 0])
    assert [type(w.message) for w in caught] == [DeadTimeWarning]
    assert dt.invalid.tolist() == [True, True]


# -- roi_sums ------------------------------------------------------------------
def _roi_loop(spectra, windows):
    """Reference: python loops over (frames, channels, rois)."""
    frames, channels, _ = spectra.shape
    per_channel = windows if windows.ndim == 3 else [windows] * channels
    out = np.zeros((frames, channels, len(per_channel[0])), dtype=np.int64)
    for f in range(frames):
        for c in range(channels):
            for r, (lo, hi) in enumerate(per_channel[c]):
                out[f, c, r] = sum(int(x) for x in spectra[f, c, lo : hi + 1])
    return out


@pytest.fixture
def spectra():
    rng = np.random.default_rng(11)
    return rng.integers(0, 1000, size=(5, 3, 64), dtype=np.uint32)


def test_roi_sums_same_windows_for_every_channel(spectra):
    windows = np.array([[0, 0], [0, 63], [10, 20], [63, 63], [5, 5]])
    out = roi_sums(spectra, windows)
    assert out.shape == (5, 3, 5)
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(out, _roi_loop(spectra, windows))
    np.testing.assert_array_equal(out[..., 1], spectra.sum(axis=-1))
    np.testing.assert_array_equal(out[..., 0], spectra[..., 0])


def test_roi_sums_per_channel_windows(spectra):
    windows = np.array(
        [
            [[0, 9], [30, 40]],
            [[1, 1], [0, 63]],
            [[50, 60], [2, 3]],
        ]
    )
    out = roi_sums(spectra, windows)
    assert out.shape == (5, 3, 2)
    np.testing.assert_array_equal(out, _roi_loop(spectra, windows))


def test_roi_sums_single_frame_and_float_spectra(spectra):
    windows = np.array([[3, 7]])
    single = roi_sums(spectra[0], windows)
    assert single.shape == (3, 1)
    np.testing.assert_array_equal(single, spectra[0, :, 3:8].sum(axis=-1)[:, None])
    as_float = roi_sums(spectra[0].astype(np.float32) * 0.5, windows)
    assert as_float.dtype == np.float64
    np.testing.assert_allclose(as_float[:, 0], spectra[0, :, 3:8].sum(axis=-1) * 0.5)


def test_roi_sums_no_overflow_beyond_uint32():
    spectra = np.full((1, 4096), 2**32 - 1, dtype=np.uint32)
    assert roi_sums(spectra, [[0, 4095]])[0, 0] == 4096 * (2**32 - 1)


@pytest.mark.parametrize("value", [2**20 - 1, 2**20, 2**21 + 3])
def test_roi_sums_exact_on_both_sides_of_the_32_bit_shortcut(value: int) -> None:
    """uint32 spectra are summed in 32 bits only when no window sum can reach
    2**32 (largest bin x widest window); 4096 x 2**20 is exactly 2**32."""
    spectra = np.full((3, 2, 4096), value, dtype=np.uint32)
    spectra[1, 1, 7] = 0
    got = roi_sums(spectra, [[0, 4095], [7, 7]])
    assert got.dtype == np.uint64
    want = np.full((3, 2, 2), 4096 * value, dtype=np.uint64)
    want[..., 1] = value
    want[1, 1] = (4095 * value, 0)
    np.testing.assert_array_equal(got, want)


def test_roi_sums_of_non_finite_float_spectra_are_exact_and_quiet():
    spectra = np.array([[1.0, np.inf, 3.0, -np.inf], [np.nan, 1.0, 2.0, 3.0]])
    windows = np.array([[0, 1], [2, 3], [3, 3], [2, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = roi_sums(spectra, windows)
    assert out.dtype == np.float64
    assert out[0].tolist() == [np.inf, -np.inf, -np.inf, 3.0]
    assert np.isnan(out[1, 0])
    assert out[1, 1:].tolist() == [5.0, 3.0, 2.0]


def test_roi_sums_of_signed_and_complex_spectra():
    signed = np.array([[1, -2, 3, 4]], dtype=np.int32)
    out = roi_sums(signed, np.array([[0, 1], [0, 3]]))
    assert out.dtype == np.int64
    assert out.tolist() == [[-1, 6]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        complex_out = roi_sums(np.array([[1 + 1j, 2, 3j]]), np.array([[0, 2]]))
    assert complex_out.dtype == np.complex128
    assert complex_out.tolist() == [[3 + 4j]]


def test_roi_sums_with_no_windows(spectra):
    assert roi_sums(spectra, np.zeros((0, 2), dtype=int)).shape == (5, 3, 0)


def test_roi_sums_reproduce_the_hardware_window_counts(
    multipart_capture, decode_messages
):
    """The real header's limits applied to the real spectra give window_counts."""
    _, packets = decode_messages(multipart_capture)
    header, frames = packets[0], [p for p in packets if isinstance(p, Frame)]
    limits = np.array(header.limits.to_wire())  # (windows, channels, 2)
    per_channel = limits.transpose(1, 0, 2)  # (channels, windows, 2)
    spectra = np.stack([f.spectra for f in frames])
    sums = roi_sums(spectra, per_channel)  # (frames, channels, windows)
    expected = np.stack([f.window_counts for f in frames]).transpose(0, 2, 1)
    np.testing.assert_array_equal(sums, expected)
    assert sums.sum() > 0


@pytest.mark.parametrize(
    "windows",
    [
        [[5, 4]],
        [[-1, 4]],
        [[0, 64]],
        [[0.0, 4.0]],
        [[True, True]],
        [[0, 1, 2]],
        [0, 4],
        np.zeros((2, 1, 2), dtype=int),  # 2 channels of windows for 3 channels
    ],
)
def test_roi_sums_refuses_bad_windows(spectra, windows):
    with pytest.raises(ValueError, match="windows must be"):
        roi_sums(spectra, np.asarray(windows))


def test_roi_sums_refuses_1d_spectra():
    with pytest.raises(ValueError, match=r"spectra must be \(\.\.\., channels, bins\)"):
        roi_sums(np.arange(10), [[0, 1]])


@pytest.mark.parametrize("n_rois", [1, 5, 80])  # 80 x 4 channels: the running-sum path
@pytest.mark.parametrize("dtype", [np.uint32, np.int32, np.uint16])
def test_roi_sums_both_paths_match_brute_force(n_rois: int, dtype: Any) -> None:
    rng = np.random.default_rng(n_rois)
    spectra = rng.integers(0, 1000, (7, 4, 512)).astype(dtype)
    lo = rng.integers(0, 512, (4, n_rois))
    hi = np.minimum(511, lo + rng.integers(0, 200, (4, n_rois)))
    windows = np.stack([lo, hi], axis=-1)
    got = roi_sums(spectra, windows)
    want = np.array(
        [
            [
                [
                    int(spectra[f, c, lo[c, r] : hi[c, r] + 1].astype(np.int64).sum())
                    for r in range(n_rois)
                ]
                for c in range(4)
            ]
            for f in range(7)
        ]
    )
    assert got.dtype == (np.int64 if np.dtype(dtype).kind == "i" else np.uint64)
    np.testing.assert_array_equal(got, want)
