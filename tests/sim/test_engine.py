"""The simulated Xspress3 engine, seen from the wire.

Every test drives :class:`SimulatedXspress3` through its Python control object
and reads its real ZeroMQ stream (a PULL on a PUSH publisher, or a SUB on the
PUB publisher the real device uses), decoding it with the protocol core.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
import zmq

from ophyd_xspress.protocol import (
    CLOCK_HZ,
    DEFAULT_SCALER_NAMES,
    Frame,
    HeaderMessage,
    MissingPartError,
    StrayFrame,
    dead_time_from_scalers,
)
from ophyd_xspress.sim import (
    DEFAULT_SAMPLE,
    ELEMENT_LINES,
    FRAMES_RULE,
    ArmLeftRunningError,
    DevState,
    SimulatedXspress3,
    SimulatorError,
    TriggerMode,
    XspressSimulator,
    line_window,
)

#: ExposureTime 0.1 s, LatencyTime 100 ns, readout 25 ns (the real captures:
#: MAX IV's scan program sets 100 ns; the device's own default is 0).
EXPTIME_100MS = 0.099999875
TICKS_100MS = 7_999_990
LATENCY_100NS = 100e-9
WINDOW_TAGS = (*DEFAULT_SCALER_NAMES, "window_counts")


# --- helpers --------------------------------------------------------------------------


def burst(det: SimulatedXspress3, frames: int) -> None:
    """SOFTWARE mode, one trigger, ``frames`` internally timed frames."""
    det.trigger_mode = TriggerMode.SOFTWARE
    det.n_triggers = 1
    det.n_frames_per_trigger = frames
    det.arm()
    det.software_trigger()


def assert_frame_physics(frame: Frame, header: HeaderMessage | None = None) -> None:
    """The facts a real frame obeys (see the shared facts note)."""
    s = frame.scalers
    nchan = frame.channels
    assert frame.spectra.dtype == np.uint32
    assert frame.spectra.shape == (nchan, 4096)
    assert list(frame.info.shape) == [nchan, 4096]
    # spectrum sum == all_good, exactly
    sums = frame.spectra.sum(axis=1, dtype=np.uint64)
    np.testing.assert_array_equal(sums, s["all_good"].astype(np.uint64))
    assert (s["all_events"] >= s["all_good"]).all()
    # no loss: total_ticks == clock_ticks
    np.testing.assert_array_equal(s["total_ticks"], s["clock_ticks"])
    # dead_time_correction follows the event-width formula with streamed values
    ticks = s["clock_ticks"].astype(np.float64)
    dead = (
        s["all_events"].astype(np.float64) * (s["event_width"].astype(np.float64) + 1)
        + s["reset_ticks"]
    )
    assert (dead < ticks).all()
    np.testing.assert_allclose(
        s["dead_time_correction"], ticks / (ticks - dead), rtol=1e-12, atol=0
    )
    np.testing.assert_allclose(
        dead_time_from_scalers(s).dtc, s["dead_time_correction"], rtol=1e-12, atol=0
    )
    # the stream's output_count_rate keeps the device's units bug
    np.testing.assert_allclose(
        s["output_count_rate"],
        s["all_good"] / (s["total_ticks"].astype(np.float64) * CLOCK_HZ),
        rtol=1e-12,
        atol=0,
    )
    # window counts: raw spectrum sums over the header's inclusive windows
    if header is not None and header.limits is not None:
        wc = frame.window_counts
        assert wc is not None
        assert wc.dtype == np.uint32
        assert wc.shape == (len(header.limits.windows), nchan)
        for w, window in enumerate(header.limits.windows):
            for c, roi in enumerate(window):
                expected = int(frame.spectra[c, roi.low : roi.high + 1].sum())
                assert int(wc[w, c]) == expected, (w, c)


# --- stream content and physics -------------------------------------------------------


def test_multipart_series_physics_per_frame(engine: Any) -> None:
    det, stream = engine(channels=4)
    det.latency_time = LATENCY_100NS
    burst(det, 5)
    assert det.wait_idle(10)
    stream.read_series_ends(1)
    assert stream.drain() == 0

    # header -> frames 0..N-1 -> series_end, one message each
    assert stream.sequence() == ["header", 0, 1, 2, 3, 4, "series_end"]
    assert [len(m.parts) for m in stream.messages] == [1, 3, 3, 3, 3, 3, 1]
    assert stream.errors == []
    header = stream.headers[0]
    assert header.extra_tags == WINDOW_TAGS
    assert header.limits is not None
    fe, cu = (
        line_window(DEFAULT_SAMPLE, "Fe", "Ka1"),
        line_window(DEFAULT_SAMPLE, "Cu", "Ka1"),
    )
    assert header.limits.to_wire() == [[list(fe)] * 4, [list(cu)] * 4]

    for n, frame in enumerate(stream.frames):
        assert frame.frame == n
        assert frame.framing == "multipart"
        assert tuple(frame.metadata) == WINDOW_TAGS
        assert_frame_physics(frame, header)
        # frame-time arithmetic: ExposureTime 0.1, LatencyTime 100 ns, 25 ns
        np.testing.assert_array_equal(frame["clock_ticks"], [TICKS_100MS] * 4)
        np.testing.assert_array_equal(frame["total_ticks"], [TICKS_100MS] * 4)
        assert frame.exptime == pytest.approx(EXPTIME_100MS, rel=1e-12)
        # the units bug: ~2e5 counts in 0.1 s gives ~2.8e-11, not ~2e5 /s
        assert (frame["output_count_rate"] < 1e-6).all()
        ocr = dead_time_from_scalers(frame.scalers).ocr
        assert ((ocr > 1e5) & (ocr < 3e5)).all()
        # window counts are not all empty: Fe Ka and Cu Ka are in the sample
        assert frame.window_counts is not None
        assert (frame.window_counts > 100).all()
    assert det.frame_timing()[1] == TICKS_100MS
    assert det.frame_timing()[0] == pytest.approx(EXPTIME_100MS, rel=1e-12)
    # the raw JSON carries exptime as a number (read it without the decoder)
    first_image = json.loads(stream.messages[1].parts[0])
    assert first_image["htype"] == "image"
    assert first_image["exptime"] == pytest.approx(EXPTIME_100MS, rel=1e-12)
    assert first_image["shape"] == [4, 4096]
    assert first_image["type"] == "uint32"
    assert first_image["compression"] == "none"


def test_legacy_framing_three_single_part_messages(engine: Any) -> None:
    det, stream = engine(channels=2, framing="legacy")
    burst(det, 3)
    stream.read_series_ends(1)
    assert stream.drain() == 0

    assert stream.sequence() == ["header", 0, 1, 2, "series_end"]
    assert len(stream.messages) == 1 + 3 * 3 + 1
    assert all(len(m.parts) == 1 for m in stream.messages)
    kinds = [m.htype for m in stream.messages]
    assert kinds == ["header", *["image", None, None] * 3, "series_end"]
    # spectra part is channels * 4096 uint32, the pickle part is small
    for i in range(3):
        data, pickle = stream.messages[2 + 3 * i], stream.messages[3 + 3 * i]
        assert len(data.parts[0]) == 2 * 4096 * 4
        assert pickle.parts[0][:1] == b"\x80"
        assert len(pickle.parts[0]) < 1024
    header = stream.headers[0]
    assert header.limits is None
    assert header.extra_tags is None
    assert stream.errors == []
    assert stream.decoder.framing == "legacy"
    for n, frame in enumerate(stream.frames):
        assert frame.framing == "legacy"
        assert tuple(frame.metadata) == DEFAULT_SCALER_NAMES
        assert frame.window_counts is None
        assert_frame_physics(frame, header)
        assert frame == det.expected_frame(0, n)


@pytest.mark.parametrize("framing", ["legacy", "multipart"])
@pytest.mark.parametrize("pickle_protocol", [3, 4])
def test_frames_equal_expected_frame_bit_for_bit(
    engine: Any, framing: str, pickle_protocol: int
) -> None:
    det, stream = engine(
        channels=3,
        framing=framing,
        pickle_protocol=pickle_protocol,
        seed=77,
        count_rate=[5e4, 2e5, 6e5],
        event_width=[4, 6, 9],
    )
    det.exposure_time = 0.02
    burst(det, 4)
    stream.read_series_ends(1)
    assert stream.frame_numbers == [0, 1, 2, 3]
    for n, frame in enumerate(stream.frames):
        expected = det.expected_frame(0, n)
        assert frame == expected
        assert frame.spectra.tobytes() == expected.spectra.tobytes()
        np.testing.assert_array_equal(frame["event_width"], [4, 6, 9])
        assert_frame_physics(frame, stream.headers[0])
    # consecutive frames are different draws
    assert not np.array_equal(stream.frames[0].spectra, stream.frames[1].spectra)


def test_series_repeat_frame_counter_restarts_per_arm(engine: Any) -> None:
    det, stream = engine(channels=1)
    det.exposure_time = 0.01
    for _ in range(2):
        burst(det, 3)
        assert det.wait_idle(10)
    stream.read_series_ends(2)
    assert stream.sequence() == ["header", 0, 1, 2, "series_end"] * 2
    assert det.series_index == 1
    first, second = stream.frames[:3], stream.frames[3:]
    for n in range(3):
        assert first[n] == det.expected_frame(0, n)
        assert second[n] == det.expected_frame(1, n)
        assert first[n] != second[n]
    assert [s.frames_received for s in stream.decoder.tracker.series] == [3, 3]
    assert sum(stream.decoder.tracker.counts.values()) == 0


def _ka_energy(element: str) -> float:
    """Intensity-weighted energy of the Ka1/Ka2 blend (eV)."""
    lines = [li for li in ELEMENT_LINES[element] if li.name.startswith("Ka")]
    weight = sum(li.relative_intensity for li in lines)
    return sum(li.energy_ev * li.relative_intensity for li in lines) / weight


def _centroid_ev(spectrum: np.ndarray, centre_bin: int, half: int = 10) -> float:
    """Count-weighted mean energy of bins centre +/- half (10 eV/bin, no offset)."""
    bins = np.arange(centre_bin - half, centre_bin + half + 1)
    counts = spectrum[bins].astype(np.float64)
    return float((counts * (bins + 0.5) * 10.0).sum() / counts.sum())


def test_line_peaks_at_calibrated_bins(engine: Any) -> None:
    det, stream = engine(channels=2, count_rate=1e6)
    burst(det, 3)
    stream.read_series_ends(1)
    total = sum(f.spectra.astype(np.int64) for f in stream.frames)
    assert isinstance(total, np.ndarray)
    # 10 eV a bin, no offset: Fe Ka (6404/6391 eV) -> bin 640, Cu Ka (8048 eV)
    # -> 804, Zn Ka (8639 eV) -> 863; peaks are ~14 bins wide (FWHM), so the
    # test uses the centroid, and the maximum within a few bins
    assert 6390.0 < _ka_energy("Fe") < 6404.0
    for spectrum in total:
        assert abs(int(spectrum.argmax()) - 640) <= 4  # Fe Ka is the top peak
        assert _centroid_ev(spectrum, 640) == pytest.approx(_ka_energy("Fe"), abs=8)
        assert _centroid_ev(spectrum, 804) == pytest.approx(_ka_energy("Cu"), abs=8)
        assert _centroid_ev(spectrum, 863) == pytest.approx(_ka_energy("Zn"), abs=8)
        assert abs(780 + int(spectrum[780:830].argmax()) - 804) <= 4
        assert abs(840 + int(spectrum[840:880].argmax()) - 863) <= 4
        # the peak stands well above the background between lines
        assert spectrum[640] > 20 * spectrum[740]


def test_dead_time_rises_with_count_rate(engine: Any) -> None:
    rates = [1e4, 1e5, 1e6, 3e6]
    det, stream = engine(channels=4, count_rate=rates)
    burst(det, 2)
    stream.read_series_ends(1)
    for frame in stream.frames:
        assert_frame_physics(frame, stream.headers[0])
        dt = dead_time_from_scalers(frame.scalers)
        assert (np.diff(dt.dead_percent) > 0).all(), dt.dead_percent
        assert (np.diff(dt.dtc) > 0).all(), dt.dtc
        assert dt.dead_percent[0] < 2.0
        assert 2.0 < dt.dead_percent[1] < 10.0
        assert 20.0 < dt.dead_percent[2] < 60.0  # tens of percent at 1e6 cps
        assert dt.dead_percent[3] > dt.dead_percent[2] + 10.0
        # the corrected rate (ICR estimate) grows with the true rate
        assert (np.diff(dt.icr) > 0).all()
        # measured OCR stays below the true input rate (5 sigma Poisson margin)
        true_counts = np.asarray(rates) * dt.real_time
        assert (dt.ocr * dt.real_time < true_counts + 5 * np.sqrt(true_counts)).all()
        assert (dt.ocr[2:] < 0.8 * np.asarray(rates[2:])).all()


# --- Stop -----------------------------------------------------------------------------


def test_stop_mid_burst_ends_series(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=1, pace=True)
    det.exposure_time = 0.01
    burst(det, 200)
    wait_for(lambda: det.n_frames_acquired >= 5, what="5 frames")
    det.stop()
    # Stop returns once the device has left RUNNING, like the real command
    assert det.state is DevState.STANDBY
    assert det.wait_idle(0)
    assert det.state is DevState.STANDBY
    stream.read_series_ends(1)
    assert stream.drain() == 0
    acquired = det.n_frames_acquired
    assert 5 <= acquired < 200
    seq = stream.sequence()
    assert seq == ["header", *range(acquired), "series_end"]


def test_stop_mid_unpaced_burst(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=1, pace=False)
    burst(det, 100_000)  # minutes of work if Stop were not served between frames
    wait_for(lambda: det.n_frames_acquired >= 10, what="10 frames")
    det.stop()
    assert det.state is DevState.STANDBY
    acquired = det.n_frames_acquired
    assert 10 <= acquired < 100_000
    stream.read_series_ends(1, timeout=30)
    assert stream.drain() == 0
    assert stream.sequence() == ["header", *range(acquired), "series_end"]


def test_stop_drops_frames_not_yet_sent(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=1)
    det.faults.stall_after = 2
    burst(det, 10)
    wait_for(lambda: det.n_frames_acquired == 10, what="all frames acquired")
    stream.read_frames(3)
    assert stream.drain() == 0  # frames 3..9 are held back
    det.stop()
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    assert stream.drain() == 0
    # held frames were dropped, never sent, not even after the Stop
    assert stream.sequence() == ["header", 0, 1, 2, "series_end"]
    assert det.state is DevState.STANDBY


def test_stop_after_completion_sends_second_series_end(engine: Any) -> None:
    det, stream = engine(channels=1)
    burst(det, 2)
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    det.stop()
    stream.read_series_ends(2)
    assert stream.drain() == 0
    assert stream.sequence() == ["header", 0, 1, "series_end", "series_end"]
    assert stream.decoder.tracker.counts["duplicate_series_end"] == 1
    assert det.state is DevState.STANDBY


def test_stop_while_waiting_for_trigger(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=1)
    det.n_triggers = 3
    det.arm()
    wait_for(lambda: det.ready_for_sw_trigger, what="ReadyForSwTrigger")
    det.stop()
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", "series_end"]
    assert det.state is DevState.STANDBY
    assert not det.ready_for_sw_trigger


# --- trigger modes --------------------------------------------------------------------


def test_software_burst_one_trigger(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=2, pace=True)
    det.exposure_time = 0.005
    det.n_triggers, det.n_frames_per_trigger = 1, 6
    assert det.state is DevState.STANDBY
    det.arm()
    assert det.state is DevState.RUNNING
    assert det.n_frames_acquired == 0
    wait_for(lambda: det.ready_for_sw_trigger, what="ReadyForSwTrigger")
    det.software_trigger()
    assert det.wait_idle(5)
    assert det.state is DevState.STANDBY
    assert det.status == ""  # the device's Status outside FAULT
    assert det.n_frames_acquired == 6
    assert not det.ready_for_sw_trigger
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", *range(6), "series_end"]
    for n, frame in enumerate(stream.frames):
        assert frame == det.expected_frame(0, n)


def test_software_one_frame_per_trigger(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=2)
    det.n_triggers, det.n_frames_per_trigger = 3, 1
    det.arm()
    stream.read_until(lambda r: len(r.headers) == 1)
    for n in range(3):
        wait_for(lambda: det.ready_for_sw_trigger, what=f"ready for trigger {n}")
        assert det.state is DevState.RUNNING
        assert det.n_frames_acquired == n
        det.software_trigger()
        stream.read_frames(n + 1)
        assert stream.frame_numbers == list(range(n + 1))
    assert det.wait_idle(5)
    assert det.state is DevState.STANDBY
    assert det.n_frames_acquired == 3
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, "series_end"]
    for n, frame in enumerate(stream.frames):
        assert frame == det.expected_frame(0, n)


def test_external_multi_one_frame_per_rising_edge(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=2)
    det.trigger_mode = TriggerMode.EXTERNAL_MULTI
    det.latency_time = LATENCY_100NS
    det.n_triggers, det.n_frames_per_trigger = 4, 1
    det.arm()
    stream.read_until(lambda r: len(r.headers) == 1)
    assert det.ready_for_sw_trigger is False  # not SOFTWARE mode
    with pytest.raises(SimulatorError, match="SoftwareTrigger refused"):
        det.software_trigger()
    for n in range(4):
        assert det.n_frames_acquired == n
        if n == 0:
            det.ttl_rise()  # a bare edge is a trigger too
            det.ttl_fall()
        else:
            det.ttl_pulse(1e-3)
        stream.read_frames(n + 1)
        wait_for(lambda n=n: det.n_frames_acquired == n + 1, what="frame counted")
    assert det.wait_idle(5)
    assert det.state is DevState.STANDBY
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, 3, "series_end"]
    for n, frame in enumerate(stream.frames):
        # internally timed frames: ticks from the frame-time arithmetic
        np.testing.assert_array_equal(frame["clock_ticks"], [TICKS_100MS] * 2)
        assert frame == det.expected_frame(0, n)


def test_external_multi_burst_on_one_edge(engine: Any) -> None:
    det, stream = engine(channels=1)
    det.trigger_mode = TriggerMode.EXTERNAL_MULTI
    det.n_triggers, det.n_frames_per_trigger = 1, 5
    det.arm()
    det.ttl_pulse(1e-3)
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, 3, 4, "series_end"]


def test_external_multi_gate_ticks_follow_gate_width(
    engine: Any, wait_for: Any
) -> None:
    det, stream = engine(channels=2, count_rate=[1e5, 5e5])
    det.trigger_mode = TriggerMode.EXTERNAL_MULTI_GATE
    det.n_triggers, det.n_frames_per_trigger = 3, 1
    widths = [0.005, 0.02, 0.04]
    det.arm()
    pulses = []  # outer bound of each real gate (the sleep can overshoot)
    for n, width in enumerate(widths):
        t0 = time.monotonic()
        det.ttl_pulse(width)
        pulses.append(time.monotonic() - t0)
        wait_for(lambda n=n: det.n_frames_acquired == n + 1, what=f"gate {n}")
    assert det.wait_idle(5)
    assert det.state is DevState.STANDBY
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, "series_end"]
    rates = []
    for n, frame in enumerate(stream.frames):
        ticks = frame["clock_ticks"]
        assert len(set(ticks.tolist())) == 1  # one gate for every channel
        seconds = float(ticks[0]) / CLOCK_HZ
        # the gate is timed from the TTL edges: at least the requested width,
        # at most the whole ttl_pulse() call (a busy machine oversleeps)
        assert widths[n] - 1e-6 <= seconds <= pulses[n] + 1e-6, (widths[n], seconds)
        if pulses[n] < widths[n] + 0.002:  # not oversleeping: the brief's bound
            assert abs(seconds - widths[n]) <= 0.3 * widths[n] + 0.002
        assert_frame_physics(frame, stream.headers[0])
        assert frame == det.expected_frame(0, n, clock_ticks=int(ticks[0]))
        rates.append(float(frame["all_good"].sum()) / seconds)
    # counts scale with the gate length: the same rate in every gate
    assert max(rates) < 1.2 * min(rates), rates


def test_external_multi_gate_one_frame_per_gate_even_with_frames_per_trigger(
    engine: Any, wait_for: Any
) -> None:
    det, stream = engine(channels=1)
    det.trigger_mode = TriggerMode.EXTERNAL_MULTI_GATE
    det.n_triggers, det.n_frames_per_trigger = 1, 3  # 3 frames: 3 gates
    det.arm()
    for n in range(3):
        assert det.state is DevState.RUNNING
        assert not det.ready_for_sw_trigger
        det.ttl_pulse(2e-3)
        wait_for(lambda n=n: det.n_frames_acquired == n + 1, what=f"gate {n}")
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, "series_end"]
    for frame in stream.frames:
        assert float(frame["clock_ticks"][0]) / CLOCK_HZ >= 2e-3 - 1e-6


# --- pacing ---------------------------------------------------------------------------


def test_frames_paced_in_real_time(engine: Any) -> None:
    det, stream = engine(channels=1, pace=True)
    n, exposure = 10, 0.02
    det.exposure_time = exposure
    det.n_frames_per_trigger = n
    det.arm()
    stream.read_until(lambda r: len(r.headers) == 1)
    t0 = time.monotonic()
    det.software_trigger()
    stream.read_series_ends(1, timeout=10)
    elapsed = time.monotonic() - t0
    assert n * exposure * 0.95 <= elapsed <= n * exposure + 1.0
    arrivals = [m.at for m in stream.messages if m.htype == "image"]
    assert len(arrivals) == n
    # frames are spread over the exposure, not sent in one go
    assert arrivals[-1] - arrivals[0] >= (n - 1) * exposure * 0.5
    assert arrivals[0] - t0 >= exposure * 0.8


def test_unpaced_burst_is_fast(engine: Any) -> None:
    det, stream = engine(channels=1, pace=False)
    det.exposure_time = 1.0  # would take 20 s if paced
    t0 = time.monotonic()
    burst(det, 20)
    stream.read_series_ends(1, timeout=10)
    assert time.monotonic() - t0 < 5.0
    assert stream.frame_numbers == list(range(20))


# --- configuration and state machine --------------------------------------------------


def test_invalid_configuration_refused(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=1)
    # refused outright, state unchanged (the simulator's; the SDK decides on
    # the device)
    det.n_triggers, det.n_frames_per_trigger = 0, 1
    with pytest.raises(SimulatorError, match=">= 1"):
        det.arm()
    assert det.state is DevState.STANDBY
    det.n_triggers = 1
    det.exposure_time = 20e-9  # less than the 25 ns readout: no frame left
    with pytest.raises(SimulatorError, match="leaves no time"):
        det.arm()
    assert det.state is DevState.STANDBY
    det.exposure_time = 0.01
    # SoftwareTrigger refused when not armed
    with pytest.raises(SimulatorError, match="refused in state"):
        det.software_trigger()
    # SoftwareTrigger refused in EXTERNAL mode (even while armed)
    det.n_triggers = 2
    det.trigger_mode = TriggerMode.EXTERNAL_MULTI
    det.arm()
    with pytest.raises(SimulatorError, match="EXTERNAL_MULTI"):
        det.software_trigger()
    det.stop()
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    # nothing was sent for the refused Arms: one header only
    assert stream.sequence() == ["header", "series_end"]


def test_both_counts_above_one_leave_the_device_running(engine: Any) -> None:
    """DeviceServer.py 326 sets RUNNING, then Instrument.py 222-223 refuses
    nFramesPerTrigger > 1 with nTriggers > 1: RUNNING, nothing sent, until
    Stop (which sends its series_end)."""
    det, stream = engine(channels=1)
    det.n_triggers, det.n_frames_per_trigger = 2, 3
    with pytest.raises(ArmLeftRunningError) as refused:
        det.arm()
    assert str(refused.value) == FRAMES_RULE
    assert FRAMES_RULE == "nFramesPerTrigger can only be > 1 if nTriggers = 1"
    assert det.state is DevState.RUNNING
    assert det.ready_for_sw_trigger is True  # 0 frames, 0 triggers
    assert not det.wait_idle(0.2)
    assert stream.drain(0.2) == 0  # no header
    det.stop()
    assert det.wait_idle(5)
    assert det.state is DevState.STANDBY
    stream.read_series_ends(1)
    assert stream.sequence() == ["series_end"]


def test_arm_while_running_starts_a_new_series(engine: Any) -> None:
    """As on the device: a new header, frame numbers from 0 again, and no
    series_end for the abandoned series."""
    det, stream = engine(channels=1)
    det.n_triggers = 3
    det.arm()
    det.software_trigger()
    stream.read_frames(1)
    det.arm()
    assert det.state is DevState.RUNNING
    assert det.n_frames_acquired == 0
    for n in range(3):
        det.software_trigger()
        stream.read_frames(2 + n)
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, "header", 0, 1, 2, "series_end"]
    assert stream.frames[-1] == det.expected_frame(1, 2)


def test_state_machine_standby_running_standby(engine: Any, wait_for: Any) -> None:
    """State, Status and ReadyForSwTrigger through a burst, as the device has
    them (DeviceServer.py 313-322, 355-363): Status empty; ReadyForSwTrigger
    True while frames acquired == triggers sent, no value (None) otherwise,
    False once STANDBY."""
    det, _ = engine(channels=1, pace=True)
    det.exposure_time = 0.05
    seen = [(det.state, det.status, det.ready_for_sw_trigger)]
    det.n_frames_per_trigger = 8
    det.arm()
    seen.append((det.state, det.status, det.ready_for_sw_trigger))
    det.software_trigger()
    wait_for(lambda: det.n_frames_acquired >= 2, what="2 frames")
    seen.append((det.state, det.status, det.ready_for_sw_trigger))
    assert det.wait_idle(5)
    seen.append((det.state, det.status, det.ready_for_sw_trigger))
    assert seen == [
        (DevState.STANDBY, "", False),
        (DevState.RUNNING, "", True),
        (DevState.RUNNING, "", None),
        (DevState.STANDBY, "", False),
    ]
    assert det.n_frames_acquired == 8
    # a new Arm resets the progress counter
    det.arm()
    assert det.n_frames_acquired == 0
    det.stop()
    assert det.wait_idle(5)


def test_triggers_while_idle_are_ignored(engine: Any) -> None:
    det, stream = engine(channels=1)
    det.trigger_mode = TriggerMode.EXTERNAL_MULTI
    det.ttl_pulse(1e-3)
    det.ttl_rise()
    time.sleep(0.05)
    assert det.state is DevState.STANDBY
    assert stream.drain(0.1) == 0
    det.arm()
    stream.read_until(lambda r: len(r.headers) == 1)
    assert stream.drain(0.1) == 0  # the stale edges did not trigger this series
    assert det.n_frames_acquired == 0
    det.ttl_pulse(1e-3)
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, "series_end"]


# --- PUB behaviour --------------------------------------------------------------------


def test_pub_subscriber_connected_before_arm_gets_everything(engine: Any) -> None:
    det, stream = engine(consumer="sub", channels=2)
    burst(det, 4)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, 3, "series_end"]
    for n, frame in enumerate(stream.frames):
        assert frame == det.expected_frame(0, n)


def test_pub_subscriber_late_misses_header(
    engine: Any, reader: Any, wait_for: Any
) -> None:
    det, early = engine(consumer="sub", channels=1)
    det.n_frames_per_trigger = 2
    det.arm()
    wait_for(lambda: det.ready_for_sw_trigger, what="header sent")
    early.read_until(lambda r: len(r.headers) == 1)
    late = reader(det.stream_endpoint, "sub")  # after Arm: the header is gone
    det.software_trigger()
    assert det.wait_idle(5)
    late.read_series_ends(1)
    early.read_series_ends(1)
    assert late.headers == []
    assert late.frames == []
    # frames outside any series come out as StrayFrame packets, not errors
    assert late.errors == []
    strays = [p for p in late.packets if isinstance(p, StrayFrame)]
    assert [(s.number, s.where) for s in strays] == [
        (0, "before any header"),
        (1, "before any header"),
    ]
    assert early.sequence() == ["header", 0, 1, "series_end"]


def test_default_bind_is_loopback() -> None:
    det = SimulatedXspress3(channels=1)  # not started: nothing bound
    assert det.stream_endpoint == "tcp://127.0.0.1:9999"
    with XspressSimulator(channels=1, tango=False, pace=False) as sim:
        host_port = sim.stream_endpoint.removeprefix("tcp://")
        host, port = host_port.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) > 0
        assert sim.live_view_endpoint is None
        with pytest.raises(RuntimeError, match="no Tango device"):
            _ = sim.tango_trl


# --- fault injection ------------------------------------------------------------------


def test_fault_drop_frames_reported_missing(engine: Any) -> None:
    det, stream = engine(channels=2)
    det.faults.drop_frames = {1, 3}
    burst(det, 6)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 2, 4, 5, "series_end"]
    series = stream.decoder.tracker.series[0]
    assert series.missing_frames == [1, 3]
    assert stream.decoder.tracker.counts["missing"] == 2
    for frame in stream.frames:
        assert frame == det.expected_frame(0, frame.frame)
    assert det.n_frames_acquired == 6  # acquired, just not sent


def test_fault_drop_parts_legacy_resynchronises(engine: Any) -> None:
    det, stream = engine(channels=2, framing="legacy")
    # spectra of frame 1, pickle of frame 3, JSON of frame 5
    det.faults.drop_parts = {(1, 1), (3, 2), (5, 0)}
    burst(det, 8)
    stream.read_series_ends(1)
    assert len(stream.messages) == 1 + 3 * 8 - 3 + 1
    assert stream.frame_numbers == [0, 2, 4, 6, 7]
    for frame in stream.frames:
        assert frame == det.expected_frame(0, frame.frame)
    tracker = stream.decoder.tracker
    assert tracker.series[0].missing_frames == [1, 3, 5]
    assert tracker.counts["resync"] >= 3  # at least one per damaged frame
    assert stream.sequence()[-1] == "series_end"


def test_fault_drop_parts_multipart_frame_rejected(engine: Any) -> None:
    det, stream = engine(channels=1)
    det.faults.drop_parts = {(2, 2)}  # frame 2 arrives without its pickle
    burst(det, 4)
    stream.read_series_ends(1)
    assert [len(m.parts) for m in stream.messages] == [1, 3, 3, 2, 3, 1]
    assert len(stream.errors) == 1
    assert isinstance(stream.errors[0], MissingPartError)
    assert stream.frame_numbers == [0, 1, 3]
    assert stream.decoder.tracker.series[0].missing_frames == [2]


def test_fault_repeat_frames(engine: Any) -> None:
    det, stream = engine(channels=1)
    det.faults.repeat_frames = {2: 2}
    burst(det, 4)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, 2, 2, 3, "series_end"]
    assert stream.decoder.tracker.counts["repeated"] == 2
    copies = [f for f in stream.frames if f.frame == 2]
    assert all(c == det.expected_frame(0, 2) for c in copies)


def test_fault_swap_frames_out_of_order(engine: Any) -> None:
    det, stream = engine(channels=1)
    det.faults.swap_frames = {1, 4}  # 4 is the last frame: flushed before the end
    burst(det, 5)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 2, 1, 3, 4, "series_end"]
    series = stream.decoder.tracker.series[0]
    assert series.out_of_order_frames == [1]
    assert series.missing_frames == []
    assert stream.decoder.tracker.counts["missing"] == 0
    for frame in stream.frames:
        assert frame == det.expected_frame(0, frame.frame)


def test_fault_stall_then_release(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=1)
    det.faults.stall_after = 1
    burst(det, 6)
    wait_for(lambda: det.n_frames_acquired == 6, what="all frames acquired")
    stream.read_frames(2)
    assert stream.drain(0.3) == 0  # frames 2..5 and series_end are held
    assert stream.sequence() == ["header", 0, 1]
    det.faults.release()
    stream.read_series_ends(1)
    assert det.wait_idle(5)
    assert stream.sequence() == ["header", *range(6), "series_end"]
    for frame in stream.frames:
        assert frame == det.expected_frame(0, frame.frame)
    assert det.state is DevState.STANDBY
    assert det.faults.stall_after is None  # one-shot


def test_fault_restart_publisher_subscriber_reconnects(engine: Any) -> None:
    # Regression: restart() used to re-bind at once, fail with EADDRINUSE while
    # a SUB was connected and kill the worker (FAULT "streaming thread died").
    det, stream = engine(consumer="sub", channels=1, pace=True)
    det.exposure_time = 0.01
    endpoint = det.stream_endpoint
    det.faults.restart_publisher_after = 4
    burst(det, 60)
    # Keep reading while the series runs: a ZeroMQ SUB attaches its new
    # connection (and re-sends its subscription) only when the socket is used.
    stream.read_series_ends(1, timeout=10)
    assert det.wait_idle(5)
    assert det.state is DevState.STANDBY, det.status
    assert det.stream_endpoint == endpoint  # same port after the restart
    numbers = stream.frame_numbers
    # Frames queued at the restart may be lost (linger 0), frames sent while
    # the SUB reconnects are lost; the rest arrive in order, correctly numbered.
    assert numbers == sorted(set(numbers))
    assert numbers[-1] == 59
    assert any(n > 4 for n in numbers[:-1]), "the SUB never reconnected"
    for frame in stream.frames:
        assert frame == det.expected_frame(0, frame.frame)
    assert stream.errors == []
    assert det.faults.restart_publisher_after is None  # one-shot
    # and the device keeps working after the restart
    burst(det, 2)
    stream.read_series_ends(2, timeout=5)
    assert stream.sequence()[-4:] == ["header", 0, 1, "series_end"]
    assert stream.frames[-1] == det.expected_frame(1, 1)


def test_fault_after_goes_to_fault_then_clear(engine: Any) -> None:
    det, stream = engine(channels=1)
    det.faults.fault_after = 2
    det.faults.fault_status = "FAULT: simulated overrun"
    burst(det, 6)
    assert det.wait_idle(5)
    assert det.state is DevState.FAULT
    assert det.status == "FAULT: simulated overrun"
    assert det.n_frames_acquired == 3
    stream.read_frames(3)
    stream.drain(0.2)
    assert stream.frame_numbers == [0, 1, 2]
    with pytest.raises(SimulatorError, match="cannot Arm in FAULT: FAULT: simulated"):
        det.arm()
    assert det.state is DevState.FAULT
    det.clear_fault()
    assert det.state is DevState.STANDBY
    assert det.status == ""
    assert det.faults.fault_after is None  # one-shot
    burst(det, 2)
    assert det.wait_idle(5)
    assert det.state is DevState.STANDBY
    stream.read_series_ends(1)
    assert stream.sequence()[-4:] == ["header", 0, 1, "series_end"]
    assert stream.frames[-1] == det.expected_frame(1, 1)


def test_fault_after_default_status_string(engine: Any) -> None:
    det, _ = engine(channels=1)
    det.faults.fault_after = 0
    burst(det, 3)
    assert det.wait_idle(5)
    assert det.state is DevState.FAULT
    # the device's status when its streaming thread dies of an overrun
    # (DeviceServer.py 368 with Streamer.py 139-140)
    assert det.status == (
        "My Streamer thread is dead with this error: Circular buffer overrun detected!"
    )
    det.clear_fault()
    assert det.state is DevState.STANDBY


def test_arm_right_after_a_fault_is_not_undone_by_the_old_series(
    engine: Any,
) -> None:
    """Regression: a client that sees FAULT and at once clears it and Arms
    again (Tango ``Init`` + ``Arm``) had its new RUNNING state and idle flag
    reset by the faulted series' clean-up, which the worker thread runs just
    after setting FAULT; the next SoftwareTrigger was refused in STANDBY. A
    log handler that lingers on the worker's FAULT line holds the worker in
    exactly that gap, so the interleaving happens every time."""
    det, _ = engine(channels=1)
    det.n_triggers, det.n_frames_per_trigger = 1, 1
    in_gap = threading.Event()

    class Linger(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("simulator FAULT"):
                in_gap.set()
                time.sleep(0.3)

    handler = Linger()
    sim_log = logging.getLogger("ophyd_xspress.sim")
    sim_log.addHandler(handler)
    try:
        det.faults.fault_after = 0
        det.faults.drop_frames = {5}  # a plan meant for the next series
        det.arm()
        det.software_trigger()
        assert in_gap.wait(5)
        assert det.state is DevState.FAULT
        det.clear_fault()
        det.faults.fault_after = None
        det.faults.drop_frames = {7}  # set for the new series, before its Arm
        det.arm()
        time.sleep(0.5)  # the old series' clean-up has run by now
        assert det.state is DevState.RUNNING, det.status
        assert not det.wait_idle(0), "idle flag set by the old series"
        assert det.faults.drop_frames == {7}, "the new series' plan was cleared"
        deadline = time.monotonic() + 5
        while not det.ready_for_sw_trigger:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.001)
        det.software_trigger()
        assert det.wait_idle(5)
        assert det.state is DevState.STANDBY, det.status
    finally:
        sim_log.removeHandler(handler)


def test_fault_plan_applies_to_next_series_only(engine: Any) -> None:
    # Regression: FaultPlan says "faults to inject into the next series", but
    # drop/repeat/swap/drop_parts used to stay armed for every later series.
    det, stream = engine(channels=1)
    det.faults.drop_frames = {1}
    for _ in range(2):
        burst(det, 3)
        assert det.wait_idle(5)
    stream.read_series_ends(2)
    assert stream.sequence() == [
        *["header", 0, 2, "series_end"],
        *["header", 0, 1, 2, "series_end"],
    ]


def test_stall_ended_by_stop_does_not_carry_over(engine: Any, wait_for: Any) -> None:
    det, stream = engine(channels=1)
    det.faults.stall_after = 0
    burst(det, 3)
    wait_for(lambda: det.n_frames_acquired == 3, what="all frames acquired")
    stream.read_frames(1)
    det.stop()  # ends the stalled series: frames 1, 2 are dropped
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, "series_end"]
    burst(det, 3)  # a new series, no fault asked for
    assert det.wait_idle(1)  # unpaced: done at once unless stalled again
    stream.read_series_ends(2, timeout=2)
    assert stream.sequence()[3:] == ["header", 0, 1, 2, "series_end"]


def test_unfired_fault_after_does_not_carry_over(engine: Any) -> None:
    det, stream = engine(channels=1)
    det.faults.fault_after = 3
    burst(det, 2)  # frames 0, 1: the fault cannot fire
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    burst(det, 5)
    assert det.wait_idle(5)
    assert det.state is DevState.STANDBY, det.status


# --- live view ------------------------------------------------------------------------


def _ask_live(endpoint: str, request: bytes = b"?") -> list[bytes]:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    try:
        sock.connect(endpoint)
        sock.send(request)
        return sock.recv_multipart()
    finally:
        sock.close(linger=0)


def test_live_view_answers_last_frame(engine: Any) -> None:
    det, stream = engine(channels=2, live_endpoint="tcp://127.0.0.1:0")
    live = det.live_endpoint
    assert live is not None
    assert live.startswith("tcp://127.0.0.1:")
    assert not live.endswith(":0")
    assert _ask_live(live) == [b"{}", b""]  # nothing acquired yet
    burst(det, 3)
    assert det.wait_idle(5)
    stream.read_series_ends(1)
    for request in (b"", b"give me the last frame", b"\x00\xff"):
        head, raw = _ask_live(live, request)
        info = json.loads(head)
        assert info["htype"] == "image"
        assert info["frame"] == 2
        assert info["shape"] == [2, 4096]
        assert raw == det.expected_frame(0, 2).spectra.tobytes()
        assert raw == stream.frames[-1].spectra.tobytes()


def test_live_view_through_xspress_simulator(reader: Any) -> None:
    with XspressSimulator(
        channels=1,
        tango=False,
        pace=False,
        write_hdf5=False,
        live_view="tcp://127.0.0.1:0",
        socket_type="push",
    ) as sim:
        stream = reader(sim.stream_endpoint, "pull")
        live = sim.live_view_endpoint
        assert live is not None
        assert live.startswith("tcp://127.0.0.1:")
        burst(sim.control, 2)
        stream.read_series_ends(1)
        head, raw = _ask_live(live)
        assert json.loads(head)["frame"] == 1
        assert raw == sim.control.expected_frame(0, 1).spectra.tobytes()


def test_stay_running_fault_keeps_running_until_stop(engine: Any) -> None:
    """FaultPlan.stay_running: every frame sent, series_end too, yet RUNNING
    (the frame counter never reaching its count); Stop ends it at once."""
    det, stream = engine(channels=1)
    det.faults.stay_running = True
    burst(det, 3)
    stream.read_series_ends(1)
    assert stream.sequence() == ["header", 0, 1, 2, "series_end"]
    assert det.state is DevState.RUNNING
    det.stop()
    assert det.state is DevState.STANDBY
    assert det.faults.stay_running is False  # one series only
