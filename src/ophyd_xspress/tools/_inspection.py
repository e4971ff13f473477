"""Summaries of a recorded stream (``ophyd-xspress inspect``), as plain data.

:func:`inspect_messages` decodes a sequence of ZeroMQ messages the way the
receiver does (:func:`~ophyd_xspress.transport.decode_message`: a message that
cannot be decoded is listed with its error, never fatal) and returns, per
series: header fields, framing, shape, exposure, frames received, anomalies
(the series tracker's, as bounded lists of examples), per-channel totals and
the dead-time correction factor computed from the raw scalers compared with
the stream's own. Frames outside any series are summarised first, as a series
with no index.

Each frame counts once: a frame number seen again in its series (a repeat)
is listed (``frames``, ``anomalies.repeated``, ``repeats_excluded``) but adds
nothing to the totals, rates and dead-time statistics, which are over the
``unique_frames``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..protocol import (
    Anomaly,
    Frame,
    HeaderMessage,
    Packet,
    SeriesState,
    StrayFrame,
    StreamDecoder,
    dead_time_from_scalers,
    stream_ocr_as_rate,
)
from ..transport import decode_message

__all__ = ["inspect_messages"]


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _stats(values: npt.NDArray[np.float64]) -> dict[str, float | None]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"min": None, "median": None, "max": None}
    return {
        "min": float(finite.min()),
        "median": float(np.median(finite)),
        "max": float(finite.max()),
    }


@dataclass
class _SeriesAcc:
    index: int | None
    header: HeaderMessage | None = None
    framing: set[str] = field(default_factory=set)
    shapes: set[tuple[int, ...]] = field(default_factory=set)
    dtypes: set[str] = field(default_factory=set)
    exptimes: set[float] = field(default_factory=set)
    #: Frames whose ``exptime`` was NaN or infinite (reported, not averaged).
    exptime_not_finite: list[int] = field(default_factory=list)
    frame_numbers: list[int] = field(default_factory=list)
    channel_totals: npt.NDArray[np.int64] | None = None
    all_good_totals: npt.NDArray[np.int64] | None = None
    sums_match_all_good: bool = True
    frames_sum_mismatch: list[int] = field(default_factory=list)
    ticks_mismatch: list[int] = field(default_factory=list)
    dtc: list[npt.NDArray[np.float64]] = field(default_factory=list)
    dtc_stream: list[npt.NDArray[np.float64]] = field(default_factory=list)
    dead_percent: list[npt.NDArray[np.float64]] = field(default_factory=list)
    icr: list[npt.NDArray[np.float64]] = field(default_factory=list)
    ocr: list[npt.NDArray[np.float64]] = field(default_factory=list)
    ocr_field_ratio: list[npt.NDArray[np.float64]] = field(default_factory=list)
    window_counts: npt.NDArray[np.int64] | None = None
    extra_names: set[str] = field(default_factory=set)
    #: Frame numbers counted in the totals, and the repeats left out of them.
    unique: set[int] = field(default_factory=set)
    repeats_excluded: int = 0

    def add(self, frame: Frame) -> None:
        self.framing.add(frame.framing)
        self.shapes.add(tuple(frame.spectra.shape))
        self.dtypes.add(frame.info.type)
        if frame.exptime is not None and math.isfinite(frame.exptime):
            self.exptimes.add(frame.exptime)
        elif frame.exptime is not None:
            self.exptime_not_finite.append(frame.frame)
        self.frame_numbers.append(frame.frame)
        if frame.frame in self.unique:  # a repeat: listed, never counted twice
            self.repeats_excluded += 1
            return
        self.unique.add(frame.frame)
        sums = frame.spectra.sum(axis=1, dtype=np.int64)
        good = frame["all_good"].astype(np.int64)
        if self.channel_totals is None or self.channel_totals.shape != sums.shape:
            self.channel_totals = np.zeros_like(sums)
            self.all_good_totals = np.zeros_like(sums)
        self.channel_totals += sums
        if self.all_good_totals is not None:
            self.all_good_totals += good
        if not np.array_equal(sums, good):
            self.sums_match_all_good = False
            self.frames_sum_mismatch.append(frame.frame)
        if not np.array_equal(frame["clock_ticks"], frame["total_ticks"]):
            self.ticks_mismatch.append(frame.frame)
        dt = dead_time_from_scalers(frame.metadata, warn=False)
        self.dtc.append(dt.dtc)
        self.dtc_stream.append(frame["dead_time_correction"].astype(np.float64))
        self.dead_percent.append(dt.dead_percent)
        self.icr.append(dt.icr)
        self.ocr.append(dt.ocr)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.ocr_field_ratio.append(
                stream_ocr_as_rate(frame["output_count_rate"]) / dt.ocr
            )
        wc = frame.window_counts
        if wc is not None:
            wc64 = wc.astype(np.int64)
            if self.window_counts is None or self.window_counts.shape != wc64.shape:
                self.window_counts = np.zeros_like(wc64)
            self.window_counts += wc64
        self.extra_names.update(frame.extra)

    def summary(self, state: SeriesState | None) -> dict[str, Any]:
        out = self._description()
        out["anomalies"] = self._anomalies(state)
        out.update(self._totals())
        out.update(self._dead_time())
        return out

    def _description(self) -> dict[str, Any]:
        header = self.header
        shape = sorted(self.shapes)[-1] if self.shapes else None
        exptimes = sorted(self.exptimes)
        return {
            "index": self.index,
            "header": header.to_wire() if header else None,
            "filename": header.filename if header else None,
            "framing": "+".join(sorted(self.framing)) if self.framing else None,
            "channels": int(shape[0]) if shape else None,
            "bins": int(shape[1]) if shape else None,
            "dtype": "+".join(sorted(self.dtypes)) if self.dtypes else None,
            "exptime": exptimes[0] if len(exptimes) == 1 else (exptimes or None),
            "frames": len(self.frame_numbers),
            "unique_frames": len(self.unique),
            "repeats_excluded": self.repeats_excluded,
            "first_frame": min(self.frame_numbers) if self.frame_numbers else None,
            "last_frame": max(self.frame_numbers) if self.frame_numbers else None,
            "hardware_windows": (
                header.limits.to_wire() if header and header.limits else None
            ),
            "extra_arrays": sorted(self.extra_names),
        }

    def _anomalies(self, state: SeriesState | None) -> dict[str, Any]:
        """The series tracker's facts (lists are bounded examples), then the
        checks made here on each frame's data."""
        anomalies: dict[str, Any] = {
            "missing": state.missing_frames if state else [],
            "repeated": sorted(state.repeated_frames) if state else [],
            "out_of_order": sorted(state.out_of_order_frames) if state else [],
            "resync": int(state.counts["resync"]) if state else 0,
            "bad_frames": int(state.counts["bad_frame"]) if state else 0,
            "series_end_received": state.end_count if state else 0,
            "header_before_series_end": bool(
                state and state.counts["header_before_series_end"]
            ),
            "spectrum_sum_ne_all_good": self.frames_sum_mismatch,
            "clock_ticks_ne_total_ticks": self.ticks_mismatch,
            "exptime_not_finite": self.exptime_not_finite,
        }
        if self.index is None:
            anomalies["frames_outside_series"] = sorted(self.frame_numbers)
        return anomalies

    def _totals(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channel_totals": (
                [int(x) for x in self.channel_totals]
                if self.channel_totals is not None
                else []
            ),
            "all_good_totals": (
                [int(x) for x in self.all_good_totals]
                if self.all_good_totals is not None
                else []
            ),
            "spectrum_sums_equal_all_good": self.sums_match_all_good,
        }
        if self.window_counts is not None:
            out["window_counts_totals"] = self.window_counts.tolist()
        return out

    def _dead_time(self) -> dict[str, Any]:
        if not self.dtc:
            return {
                "dtc": {"min": None, "median": None, "max": None},
                "dtc_max_rel_diff_vs_stream": None,
            }
        dtc = np.stack(self.dtc)
        stream = np.stack(self.dtc_stream)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(dtc - stream) / np.abs(stream)
        finite = rel[np.isfinite(rel)]
        ratio = np.stack(self.ocr_field_ratio)
        finite_ratio = ratio[np.isfinite(ratio)]
        return {
            "dtc": _stats(dtc),
            "dtc_max_rel_diff_vs_stream": float(finite.max()) if finite.size else None,
            "dtc_per_channel": [_stats(dtc[:, c]) for c in range(dtc.shape[1])],
            "dead_time_percent": _stats(np.stack(self.dead_percent)),
            "icr_mean_cps": [_num(float(np.nanmean(c))) for c in np.stack(self.icr).T],
            "ocr_mean_cps": [_num(float(np.nanmean(c))) for c in np.stack(self.ocr).T],
            # True when the stream's output_count_rate carries the device's
            # units bug (all_good / (ticks * 80e6)) rather than counts/s.
            "stream_output_count_rate_units_bug": bool(
                finite_ratio.size and np.allclose(finite_ratio, 1.0, rtol=1e-6)
            ),
        }


def _collect(
    packet: Packet,
    current: SeriesState | None,
    accs: dict[int, _SeriesAcc],
    strays: _SeriesAcc,
) -> None:
    """Add ``packet`` to its series (``current``: the tracker's after its
    message), or to the frames outside any series."""
    match packet:
        case StrayFrame():
            strays.add(packet.frame)
        case HeaderMessage() if current is not None:
            accs[current.index] = _SeriesAcc(index=current.index, header=packet)
        case Frame() if current is not None:
            accs.setdefault(current.index, _SeriesAcc(index=current.index)).add(packet)


def inspect_messages(
    messages: Iterable[Sequence[bytes]],
    on_anomalies: Callable[[Sequence[Anomaly]], None] | None = None,
) -> dict[str, Any]:
    """Decode ``messages`` and summarise every series (see module docstring).

    ``on_anomalies`` gets the series tracker's anomalies as they are found
    (``inspect -v`` logs them); the summary has them either way."""
    decoder = StreamDecoder()
    accs: dict[int, _SeriesAcc] = {}
    strays = _SeriesAcc(index=None)
    errors: list[dict[str, Any]] = []
    n_messages = n_packets = 0
    for i, message in enumerate(messages):
        n_messages += 1
        decoded = decode_message(decoder, message)
        if decoded.anomalies and on_anomalies is not None:
            on_anomalies(decoded.anomalies)
        if decoded.error is not None:
            exc = decoded.error
            errors.append(
                {"message": i, "error": type(exc).__name__, "detail": str(exc)}
            )
        for packet in decoded.packets:
            n_packets += 1
            _collect(packet, decoder.tracker.current, accs, strays)
    decoder.finish()
    last = decoder.tracker.drain()
    if last and on_anomalies is not None:
        on_anomalies(last)
    tracker = decoder.tracker
    series = [accs[s.index].summary(s) for s in tracker.series if s.index in accs]
    if strays.frame_numbers:
        series.insert(0, strays.summary(None))
    return _finite(
        {
            "messages": n_messages,
            "packets": n_packets,
            "frames": sum(s["frames"] for s in series),
            "series": series,
            "anomaly_counts": dict(sorted(tracker.counts.items())),
            "errors": errors,
        }
    )


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: the report
    is valid JSON, and text and JSON say the same ("not a number" is null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
