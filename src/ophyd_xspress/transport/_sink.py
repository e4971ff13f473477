"""The sink contract: where a run's frames go, and how a sink reports rows stored.

The receiver thread hands each frame of a run to a :class:`FrameSink` with the
row it belongs in. A sink that stores synchronously (the inline step-scan sink,
a test's recording sink) has stored a frame when ``put`` returns. A sink that
stores on a thread of its own (the HDF5 writer) also owns a
:class:`DurableRows`, passed explicitly with the sink when a run begins
(``StreamReceiver.begin(..., durable=writer.durable)``): the run then counts
only rows the sink reports durable, and fails with the sink's error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from ..protocol import Frame, FrameSet

__all__ = ["DurableRows", "FrameRefusedError", "FrameShapeError", "FrameSink"]


class FrameRefusedError(ValueError):
    """The sink cannot store this one frame (for example, a frame of a shape
    the file was not opened for). Its row stays empty; the sink itself is fine."""


class FrameShapeError(FrameRefusedError):
    """The frame has another shape than the sink was made for: a setting, not a
    glitch (every frame of the stream will be refused), so the run fails."""

    def __init__(
        self, frame: int, shape: tuple[int, ...], expected: tuple[int, int], where: str
    ) -> None:
        self.frame = frame
        self.shape = shape
        self.expected = expected
        self.where = where
        super().__init__(
            f"frame {frame} has shape {shape}, {where} was opened for {expected}"
        )


class FrameSink(Protocol):
    """Where a run's frames go (called on the receiver thread only)."""

    def put(self, row: int, frame: Frame) -> None:
        """Store ``frame`` in ``row``.

        Raises :class:`FrameRefusedError` when this one frame cannot be stored;
        any other exception means the sink failed, and the run fails with it.
        """
        ...

    def flush(self) -> None:
        """Called after each batch of messages and when the stream is quiet:
        a buffering sink hands over what it holds."""
        ...


class DurableRows:
    """Rows a sink has durably stored, and the error that stopped it.

    Written by the sink (any thread), read by the run: :meth:`add` and
    :meth:`fail` call every subscriber after the change, outside the lock.
    """

    def __init__(self) -> None:
        self._rows = FrameSet()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[], None]] = []

    # -- the sink's side ---------------------------------------------------------
    def add(self, start: int, count: int = 1) -> None:
        """Rows ``start .. start + count - 1`` are on disk."""
        with self._lock:
            self._rows.add_range(start, start + count)
        self._notify()

    def fail(self, exc: BaseException) -> None:
        """The sink failed: no more rows will become durable."""
        with self._lock:
            if self._error is None:
                self._error = exc
        self._notify()

    # -- the run's side ----------------------------------------------------------
    @property
    def error(self) -> BaseException | None:
        return self._error

    def prefix(self) -> int:
        """``n`` such that rows ``0 .. n-1`` are all durable."""
        with self._lock:
            return self._rows.prefix()

    def __contains__(self, row: int) -> bool:
        with self._lock:
            return row in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change; returns the unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback()
