"""What a run's failures say: the exceptions, and their texts with the facts.

Each text names the endpoint, the frames expected and received, what is
missing, and the likely cause (the hints the receiver noticed, such as another
consumer of a PUSH stream).
"""

from __future__ import annotations

from ..protocol import Incomplete, ProtocolError, format_intervals
from ._sink import FrameShapeError

__all__ = [
    "StreamIncompleteError",
    "StreamRestartedError",
    "StreamShapeError",
    "StreamStalledError",
    "incomplete_error",
    "shape_error",
    "stall_error",
]


class StreamStalledError(TimeoutError):
    """Frames stopped arriving before the run had all it expected."""


class StreamIncompleteError(RuntimeError):
    """The detector ended the series before sending every frame of the run."""


class StreamShapeError(ValueError):
    """The stream's frames have another channel or bin count than the run was
    set up for (every frame would be refused)."""


class StreamRestartedError(ProtocolError):
    """A new series began in the middle of an active run (the stream broke the
    run's one-series protocol: someone re-armed the detector)."""


def _hinted(text: str, hints: list[str]) -> str:
    return text + "".join(f"; {hint}" for hint in hints)


def incomplete_error(
    endpoint: str, fact: Incomplete, expected: str, hints: list[str]
) -> StreamIncompleteError:
    return StreamIncompleteError(
        _hinted(
            f"the series from {endpoint} ended after {fact.received} of "
            f"{expected} frames; missing {fact.missing_text} (frames after the "
            "first gap are in the file but no event refers to them)",
            hints,
        )
    )


def stall_error(
    endpoint: str,
    waited: float,
    received: int,
    expected: str,
    *,
    awaiting_header: bool,
    stale: int,
    missing: list[tuple[int, int]],
    hints: list[str],
) -> StreamStalledError:
    text = (
        f"no frame from {endpoint} for {waited:.1f} s: received {received} of "
        f"{expected} frames"
    )
    if awaiting_header and stale:
        text += (
            f" (the series header never arrived, but {stale} frame(s) outside "
            "this run's series did: frames are being taken by another consumer "
            "of this PUSH stream, or the header was missed because the "
            "subscriber connected after Arm)"
        )
    elif awaiting_header:
        text += " (the series header never arrived: was the detector armed, and "
        text += "the subscriber connected before Arm?)"
    elif missing:
        text += f"; missing {format_intervals(missing)}"
    return StreamStalledError(_hinted(text, hints))


def shape_error(endpoint: str, exc: FrameShapeError) -> StreamShapeError:
    """The true cause of a shape mismatch, with advice that fits it."""
    got, want = exc.shape, exc.expected
    channels, bins = (*got, 0, 0)[:2]
    if channels != want[0]:
        advice = (
            f"the detector is set up for {want[0]} channels: pass "
            f"channels={channels} (passive), or check the device's nChannels"
        )
    else:
        advice = f"the detector is set up for {want[1]} bins: pass bins={bins}"
    return StreamShapeError(
        f"the stream from {endpoint} sends {channels} channels x {bins} bins "
        f"(frame {exc.frame}), but {exc.where} was opened for {want[0]} x "
        f"{want[1]}: {advice}"
    )
