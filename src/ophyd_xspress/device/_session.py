"""The stream side of one detector: its receiver, the current run, progress.

:class:`StreamSession` is the one collaborator the acquire and data logics
share for the data stream (the Tango device is the other): it starts and stops
the :class:`~ophyd_xspress.transport.StreamReceiver`, begins a
:class:`~ophyd_xspress.transport.Run` for each acquisition into the sink the
data logic chose, and publishes progress in ``frames_done``, the
collections-written counter ophyd-async watches. :class:`Diagnostics` keeps
what happened (run summaries, anomaly counts since stage, the last header).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ophyd_async.core import SignalR, soft_signal_r_and_setter

from ..protocol import Frame
from ..transport import DurableRows, FrameSink, Run, StreamReceiver

__all__ = ["Diagnostics", "LatestFrames", "StreamSession"]

#: Run summaries kept per detector (the oldest are forgotten).
MAX_SUMMARIES: Final = 1000


class LatestFrames:
    """A sink keeping the frames of the current step (inline readings)."""

    def __init__(self) -> None:
        self.frames: dict[int, Frame] = {}

    def put(self, row: int, frame: Frame) -> None:
        self.frames[row] = frame

    def flush(self) -> None:
        return None

    def clear(self) -> None:
        self.frames.clear()


@dataclass
class Diagnostics:
    """Per-detector record of what the stream delivered."""

    #: Frames missing / repeated / out of order / stale, counted since stage.
    anomalies: Counter[str] = field(default_factory=Counter)
    run_summaries: list[dict[str, object]] = field(default_factory=list)
    #: The last series header, as sent (JSON object).
    last_header: dict[str, Any] = field(default_factory=dict)

    def record(self, run: Run) -> None:
        summary = run.summary()
        self.run_summaries.append(summary)
        del self.run_summaries[:-MAX_SUMMARIES]
        for key in ("missing", "repeated", "out_of_order"):
            count = run.counts[key] if key != "missing" else summary["missing_count"]
            if isinstance(count, int) and count:
                self.anomalies[key] += count
        stale = run.counts["stale"]
        if stale:
            self.anomalies["stale"] += stale
        if run.header is not None:
            self.last_header = run.header.to_wire()


class StreamSession:
    """Receiver, current run and progress counter of one detector."""

    def __init__(
        self,
        stream: str,
        socket: Literal["sub", "pull"],
        *,
        active: bool,
        connect_timeout: float,
        frame_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.stream = stream
        #: The size of one frame's spectra (bounds the socket's queue), asked
        #: at each start: the channel count is known only once connected.
        self._frame_bytes = frame_bytes
        self.active = active
        self.connect_timeout = connect_timeout
        self.receiver = StreamReceiver(stream, socket)
        self.latest = LatestFrames()
        self.diagnostics = Diagnostics()
        self.run: Run | None = None
        #: Frames stored since stage by finished runs: the next run's row 0.
        self.base = 0
        self._sink: FrameSink | None = None
        self._durable: DurableRows | None = None
        self.frames_done: SignalR[int]
        self.frames_done, self._set_frames_done = soft_signal_r_and_setter(int, 0)
        self._done_value = 0
        self._released = False
        #: ``base`` when the current (or last) run began: its row 0.
        self._run_base = 0
        self.frames_stored: SignalR[int]
        self.frames_stored, self._set_frames_stored = soft_signal_r_and_setter(int, 0)
        self.header_filename, self._set_header_filename = soft_signal_r_and_setter(
            str, ""
        )

    # -- receiver ----------------------------------------------------------------
    async def start(self) -> None:
        """Start the receiver: connect (and subscribe) now."""
        if self._frame_bytes is not None:
            self.receiver.frame_bytes = self._frame_bytes()
        if not self.receiver.running:
            timeout = self.connect_timeout if self.active else None
            await asyncio.to_thread(self.receiver.start, timeout)

    async def stop(self) -> None:
        self.end_run()
        if self.receiver.running:
            await asyncio.to_thread(self.receiver.stop)

    def reset(self) -> None:
        """At stage: a new scan counts its frames from 0."""
        self.base = self._run_base = 0
        self._publish(0)
        self.diagnostics.anomalies.clear()

    # -- the sink of the next runs --------------------------------------------------
    def use_sink(self, sink: FrameSink | None, durable: DurableRows | None) -> None:
        """Frames of the next runs go to ``sink`` (None: the inline sink)."""
        if self.run is not None and self.run.sink is not sink:
            self.end_run()
        self._sink, self._durable = sink, durable

    @property
    def sink(self) -> FrameSink | None:
        return self._sink

    # -- runs --------------------------------------------------------------------
    def begin_run(self, expected: int) -> Run:
        """Announce the frames of the next acquisition to the receiver."""
        self.end_run()
        loop = asyncio.get_running_loop()
        sink = self._sink if self._sink is not None else self.latest
        if sink is self.latest:
            self.latest.clear()
        base = self.base
        self._run_base = base

        def progress(stored: int) -> None:
            loop.call_soon_threadsafe(self._progress, base + stored)

        self._released = False
        self.run = self.receiver.begin(
            expected,
            sink,
            active=self.active,
            row_offset=base if sink is not self.latest else 0,
            durable=self._durable,
            on_progress=progress,
        )
        return self.run

    def end_run(self) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        self.receiver.end(run)
        self.diagnostics.record(run)
        if run.header is not None and run.header.filename:
            self._set_header_filename(run.header.filename)
        # the next run starts after every row this one received; the stream
        # documents only ever cover what is durably stored
        stored = self._run_base + run.stored
        self.base = self._run_base + run.contiguous
        self._released = False
        self._set_frames_stored(stored)
        self._set_done(self.base)

    # -- progress ----------------------------------------------------------------
    def _publish(self, stored: int) -> None:
        self._set_frames_stored(stored)
        self._set_done(stored)

    def _progress(self, stored: int) -> None:
        if self._released:  # ophyd-async was let go: keep only the true count
            self._set_frames_stored(stored)
        else:
            self._publish(stored)

    def _set_done(self, value: int) -> None:
        self._done_value = value
        self._set_frames_done(value)

    def heartbeat(self) -> None:
        """Tell ophyd-async's watch of ``frames_done`` that the acquisition is
        alive (see :mod:`ophyd_xspress.device._acquire_logic`)."""
        self._set_done(self._done_value)

    def release(self, run: Run) -> None:
        """End ophyd-async's wait for ``run``'s frames now, so that it calls
        ``wait_for_idle``, which reports why the run ended. ``frames_stored``
        keeps the true count (the stream documents use it)."""
        expected = run.expected if run.expected is not None else 0
        self._released = True
        self._set_done(self._run_base + max(expected, run.stored))
