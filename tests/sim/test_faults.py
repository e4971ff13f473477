"""FaultInjector: the exact messages each fault of a FaultPlan makes of a series.

Sans-IO, like tests/protocol/test_encoder.py: packets in, encoded messages and
stall points out, compared with what :class:`StreamEncoder` makes of the
packets that should go out. No threads, no sockets.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from ophyd_xspress.protocol import (
    Frame,
    Framing,
    HeaderMessage,
    SeriesEndMessage,
    StreamEncoder,
    make_frame,
)
from ophyd_xspress.sim import FaultPlan
from ophyd_xspress.sim._faults import (
    STALL,
    FaultInjector,
    Injection,
    Stall,
    Transmission,
)

HEADER = HeaderMessage(filename="/tmp/x.hdf5")


def frame(number: int) -> Frame:
    """A small frame whose bytes differ from every other frame's."""
    spectra = np.arange(8, dtype=np.uint32).reshape(2, 4) + 100 * number
    return make_frame(number, spectra, {"all_events": np.array([number, 1])})


def as_bytes(item: Transmission | Stall) -> Any:
    """A transmission as ``(frame, [[part bytes]])``; a stall as ``STALL``."""
    if isinstance(item, Stall):
        return STALL
    return item.frame, [[bytes(part) for part in m] for m in item.messages]


def run_series(
    plan: FaultPlan, frames: int = 4, framing: Framing = "multipart"
) -> tuple[list[Any], list[Injection]]:
    """A header, ``frames`` frames and the end through one injector."""
    injector = FaultInjector(StreamEncoder(framing))
    outgoing = [*injector.header(HEADER)]
    injections = []
    for number in range(frames):
        injection = injector.frame(frame(number), plan)
        injections.append(injection)
        outgoing += injection.outgoing
    outgoing += injector.end(plan)
    return [as_bytes(item) for item in outgoing], injections


def expected(*items: str | int | Stall, framing: Framing = "multipart") -> list[Any]:
    """What the plain encoder makes of ``"header"``, frame numbers, ``"end"``."""
    encoder = StreamEncoder(framing)
    out: list[Any] = []
    for item in items:
        if isinstance(item, Stall):
            out.append(STALL)
        elif item == "header":
            out.append(as_bytes(Transmission(tuple(encoder.encode(HEADER)))))
        elif item == "end":
            end = encoder.encode(SeriesEndMessage())
            out.append(as_bytes(Transmission(tuple(end))))
        else:
            assert isinstance(item, int)
            messages = tuple(encoder.encode(frame(item)))
            out.append(as_bytes(Transmission(messages, frame=item)))
    return out


@pytest.mark.parametrize("framing", ["legacy", "multipart"])
def test_no_fault_is_the_plain_encoder(framing: Framing) -> None:
    sent, injections = run_series(FaultPlan(), framing=framing)
    assert sent == expected("header", 0, 1, 2, 3, "end", framing=framing)
    assert all(i == Injection(i.outgoing) for i in injections)  # no flags


def test_drop_frames() -> None:
    sent, _ = run_series(FaultPlan(drop_frames={1, 3}))
    assert sent == expected("header", 0, 2, "end")


def test_drop_parts_multipart_sends_what_is_left_as_one_message() -> None:
    # frame 1 loses its spectra, frame 2 every part, frame 3 its JSON
    plan = FaultPlan(drop_parts={(1, 1), (2, 0), (2, 1), (2, 2), (3, 0)})
    sent, _ = run_series(plan)
    whole = expected("header", 0, 1, 2, 3, "end")
    json1, _, pickle1 = whole[2][1][0]
    _, spectra3, pickle3 = whole[4][1][0]
    assert sent == [
        *whole[:2],
        (1, [[json1, pickle1]]),
        (2, []),  # a frame with nothing left: no message, still a frame
        (3, [[spectra3, pickle3]]),
        whole[5],
    ]


def test_drop_parts_legacy_keeps_one_part_per_message() -> None:
    plan = FaultPlan(drop_parts={(1, 1), (3, 2)})
    sent, _ = run_series(plan, framing="legacy")
    whole = expected("header", 0, 1, 2, 3, "end", framing="legacy")
    (json1,), _, (pickle1,) = whole[2][1]
    (json3,), (spectra3,), _ = whole[4][1]
    assert sent == [
        *whole[:2],
        (1, [[json1], [pickle1]]),
        whole[3],
        (3, [[json3], [spectra3]]),
        whole[5],
    ]


def test_repeat_frames() -> None:
    sent, _ = run_series(FaultPlan(repeat_frames={2: 2, 0: 1}))
    assert sent == expected("header", 0, 0, 1, 2, 2, 2, 3, "end")


def test_swap_frames_sends_a_frame_after_the_next_one() -> None:
    # 3 is the last frame: it comes out with the end of the series
    sent, _ = run_series(FaultPlan(swap_frames={1, 3}))
    assert sent == expected("header", 0, 2, 1, 3, "end")


def test_swap_of_two_frames_in_a_row_loses_the_first() -> None:
    sent, _ = run_series(FaultPlan(swap_frames={1, 2}))
    assert sent == expected("header", 0, 3, 2, "end")


def test_swapped_frame_waits_for_the_end_when_the_next_is_dropped() -> None:
    sent, _ = run_series(FaultPlan(swap_frames={1}, drop_frames={2}))
    assert sent == expected("header", 0, 3, 1, "end")


def test_swap_repeat_and_part_drops_combine() -> None:
    plan = FaultPlan(swap_frames={1}, repeat_frames={2: 1}, drop_parts={(1, 2)})
    sent, _ = run_series(plan)
    whole = expected("header", 0, 2, 2, 1, 3, "end")
    json1, spectra1, _ = whole[4][1][0]
    assert sent == [*whole[:4], (1, [[json1, spectra1]]), *whole[5:]]


def test_stall_after_a_frame() -> None:
    sent, _ = run_series(FaultPlan(stall_after=1))
    assert sent == expected("header", 0, 1, STALL, 2, 3, "end")


def test_stall_after_the_header() -> None:
    sent, _ = run_series(FaultPlan(stall_after=-1))
    assert sent == expected("header", STALL, 0, 1, 2, 3, "end")


def test_stall_at_a_dropped_frame_comes_before_the_next_one() -> None:
    sent, _ = run_series(FaultPlan(stall_after=1, drop_frames={1}))
    assert sent == expected("header", 0, STALL, 2, 3, "end")
    sent, _ = run_series(FaultPlan(stall_after=1, swap_frames={1}))
    assert sent == expected("header", 0, STALL, 2, 1, 3, "end")


def test_restart_publisher_and_fault_are_flags_of_their_frame() -> None:
    plan = FaultPlan(restart_publisher_after=2, fault_after=2)
    sent, injections = run_series(plan)
    assert sent == expected("header", 0, 1, 2, 3, "end")
    assert [i.restart_publisher for i in injections] == [False, False, True, False]
    # FAULT fires at the first frame from fault_after on (the engine stops there)
    assert [i.fault for i in injections] == [False, False, True, True]


def test_a_dropped_frame_restarts_nothing_but_still_faults() -> None:
    plan = FaultPlan(restart_publisher_after=2, fault_after=2, drop_frames={2})
    _, injections = run_series(plan)
    assert injections[2] == Injection((), restart_publisher=False, fault=True)


def test_the_injector_reads_the_plan_and_never_changes_it() -> None:
    plan = FaultPlan(
        drop_frames={0},
        repeat_frames={1: 1},
        stall_after=2,
        restart_publisher_after=3,
        fault_after=3,
    )
    before = dataclasses.asdict(plan)
    run_series(plan)
    assert dataclasses.asdict(plan) == before
    # a fault set while the series runs applies from the next frame on
    injector = FaultInjector(StreamEncoder("multipart"))
    live = FaultPlan()
    first = injector.frame(frame(0), live)
    live.drop_frames.add(1)
    assert as_bytes(first.outgoing[0]) == expected(0)[0]
    assert injector.frame(frame(1), live).outgoing == ()


def test_fault_plan_release_is_per_series() -> None:
    plan = FaultPlan(stall_after=0)
    assert not plan.released
    plan.release()
    assert plan.released
    plan.begin_series()  # a new series with a stall waits for a new release
    assert not plan.released
    plan.clear()
    assert plan.released
    assert plan == FaultPlan()
    assert "released" not in repr(plan)
