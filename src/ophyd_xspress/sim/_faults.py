"""Fault injection: what a :class:`FaultPlan` makes of the packets of one series.

Sans-IO, like the encoder it wraps: :class:`FaultInjector` takes the packets
the simulated device would send (a header, frames, the end of the series) and
returns what actually goes on the wire, as :class:`Transmission` s of encoded
messages, with :data:`STALL` marking where sending stops until the plan is
released. Frames are dropped, repeated, held back and sent after the next one
(swapped), or lose ZeroMQ parts; the plan's other faults (restart the
publisher, go to FAULT) come back as flags of the :class:`Injection` for the
engine to act on. No threads, no sockets, no clocks: the engine
(:mod:`._engine`) owns those.

>>> injector = FaultInjector(StreamEncoder("multipart"))
>>> plan = FaultPlan(drop_frames={1})
>>> outgoing = [*injector.header(header)]
>>> for frame in frames:
...     outgoing += injector.frame(frame, plan).outgoing
>>> outgoing += injector.end()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from ..protocol import (
    Frame,
    HeaderMessage,
    Message,
    SeriesEndMessage,
    StreamEncoder,
)

__all__ = [
    "STALL",
    "FaultInjector",
    "FaultPlan",
    "Injection",
    "Outgoing",
    "Stall",
    "Transmission",
]


@dataclass
class FaultPlan:
    """Faults to inject into the next series; frame numbers are per series.

    * ``drop_frames``: frames generated but never sent;
    * ``drop_parts``: ``(frame, part)`` pairs, part 0 JSON, 1 spectra, 2 pickle;
    * ``repeat_frames``: frame -> extra copies sent right after it;
    * ``swap_frames``: frame n is held back and sent after frame n + 1;
    * ``stall_after``: stop sending after this frame (-1: right after the
      header) until :meth:`release` (acquisition goes on; frames queue up and
      are sent on release);
    * ``restart_publisher_after``: close and re-bind the socket after this frame;
    * ``fault_after``: go to FAULT after this frame with ``fault_status``;
    * ``stay_running``: the device does not leave RUNNING after its last frame
      (its frame counter never reaches the count it waits for): only Stop
      ends it.
    """

    drop_frames: set[int] = field(default_factory=set)
    drop_parts: set[tuple[int, int]] = field(default_factory=set)
    repeat_frames: dict[int, int] = field(default_factory=dict)
    swap_frames: set[int] = field(default_factory=set)
    stall_after: int | None = None
    restart_publisher_after: int | None = None
    fault_after: int | None = None
    stay_running: bool = False
    #: The device's status when its streaming thread dies of a circular
    #: buffer overrun (DeviceServer.py 364-368, Streamer.py 138-140).
    fault_status: str = (
        "My Streamer thread is dead with this error: Circular buffer overrun detected!"
    )
    # Set from any thread, read by the engine's worker: a plain attribute
    # write is atomic, and the worker looks again at every packet it sends.
    _released: bool = field(default=False, init=False, repr=False, compare=False)

    def release(self) -> None:
        """End a stall: the held frames are sent."""
        self._released = True

    @property
    def released(self) -> bool:
        """True once :meth:`release` was called for the current series."""
        return self._released

    def begin_series(self) -> None:
        """At Arm: a stall planned for this series waits for a new release."""
        if self.stall_after is not None:
            self._released = False

    def clear(self) -> None:
        """Forget every fault (the plan applies to one series, fired or not)."""
        self.drop_frames.clear()
        self.drop_parts.clear()
        self.repeat_frames.clear()
        self.swap_frames.clear()
        self.stall_after = None
        self.restart_publisher_after = None
        self.fault_after = None
        self.stay_running = False
        self._released = True


@dataclass(frozen=True, slots=True)
class Transmission:
    """The messages of one packet as they go on the wire (after part drops).

    ``frame`` is the frame number when the packet is a frame (its messages may
    be empty when every part was dropped), None for a header or series end.
    """

    messages: tuple[Message, ...]
    frame: int | None = None


class Stall:
    """Where sending stops until :meth:`FaultPlan.release` (see :data:`STALL`)."""

    def __repr__(self) -> str:
        return "STALL"


#: The one stall marker.
STALL: Final = Stall()

#: What the engine sends, in order: transmissions, and stall points.
Outgoing = Transmission | Stall


@dataclass(frozen=True, slots=True)
class Injection:
    """What the plan makes of one frame.

    ``outgoing`` to send in order; then, if ``restart_publisher``, close and
    re-bind the socket; then, if ``fault``, go to FAULT (both one-shot: the
    engine clears them from the plan when it acts).
    """

    outgoing: tuple[Outgoing, ...] = ()
    restart_publisher: bool = False
    fault: bool = False


class FaultInjector:
    """Applies a :class:`FaultPlan` to the packets of one series.

    One injector per series: it holds back a swapped frame until the next one.
    The plan is read at every call, so a fault set while the series runs
    applies from the next frame on.
    """

    def __init__(self, encoder: StreamEncoder) -> None:
        self._encoder = encoder
        self._held: Frame | None = None
        self._stalled = False  # one stall point per series is enough

    def header(self, header: HeaderMessage) -> tuple[Outgoing, ...]:
        """The header's messages: never faulted, never stalled."""
        return (Transmission(tuple(self._encoder.encode(header))),)

    def frame(self, frame: Frame, plan: FaultPlan) -> Injection:
        """What goes out for ``frame`` (the frames of a series come in order)."""
        number = frame.frame
        fault = plan.fault_after is not None and number >= plan.fault_after
        if number in plan.drop_frames:
            return Injection(fault=fault)
        if number in plan.swap_frames:
            # A second swapped frame in a row replaces the first, which is lost.
            self._held = frame
            return Injection(fault=fault)
        packets = [frame] * (1 + plan.repeat_frames.get(number, 0))
        if self._held is not None and self._held.frame == number - 1:
            packets.append(self._held)
            self._held = None
        outgoing: list[Outgoing] = [self._frame(p, plan) for p in packets]
        if plan.stall_after is not None and not self._stalled:
            # After frame stall_after, or before the first frame past it (that
            # frame itself was dropped or swapped; stall_after -1: frame 0).
            if number == plan.stall_after:
                outgoing.append(STALL)
                self._stalled = True
            elif number > plan.stall_after:
                outgoing.insert(0, STALL)
                self._stalled = True
        return Injection(
            tuple(outgoing),
            restart_publisher=plan.restart_publisher_after == number,
            fault=fault,
        )

    def end(self, plan: FaultPlan) -> tuple[Outgoing, ...]:
        """The end of the series: a frame still held back, then ``series_end``."""
        outgoing: list[Outgoing] = []
        if self._held is not None:
            outgoing.append(self._frame(self._held, plan))
            self._held = None
        outgoing.append(Transmission(tuple(self._encoder.encode(SeriesEndMessage()))))
        return tuple(outgoing)

    def _frame(self, frame: Frame, plan: FaultPlan) -> Transmission:
        messages = self._encoder.encode(frame)
        number = frame.frame
        if any(dropped_frame == number for dropped_frame, _ in plan.drop_parts):
            parts = [part for message in messages for part in message]
            kept = [
                p for i, p in enumerate(parts) if (number, i) not in plan.drop_parts
            ]
            if self._encoder.framing == "multipart":
                messages = [kept] if kept else []
            else:  # legacy: one part per message
                messages = [[p] for p in kept]
        return Transmission(tuple(messages), frame=number)
