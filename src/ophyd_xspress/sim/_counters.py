"""The hardware window counters the device keeps for Tango clients.

With its ``ReturnCounters`` property set, the MAX IV device keeps, for every
frame of the current Arm, the two hardware windows' counts per channel, raw
and multiplied by the frame's dead-time correction (``xspress3/Streamer.py``
96-100, reset at every Arm by ``Instrument.py`` 206-210), and serves them
through the commands ``ReadRawCounts_Window1/2`` and ``ReadDtcCounts_Window1/2``
(``xspress3/DeviceServer.py`` 174-279). :meth:`WindowCounters.read` answers as
those commands do: frames are numbered from 1, a first frame below 1 counts
as 1, the answer has ``last - first + 1`` values with ``-1`` for each frame
not acquired yet (only the frames acquired so far are looked up), and a
correction that is not finite becomes a finite number
(``numpy.nan_to_num``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from ..protocol import Frame
from ._processor import window_counts

__all__ = ["WindowCounters"]


class WindowCounters:
    """Per-frame window counts of the current series (when ``enabled``)."""

    def __init__(self) -> None:
        self.enabled = False
        self._lock = threading.Lock()
        self._raw: list[npt.NDArray[np.int64]] = []  # (2, channels) per frame
        self._dtc: list[npt.NDArray[np.float64]] = []

    def reset(self) -> None:
        """At Arm."""
        with self._lock:
            self._raw.clear()
            self._dtc.clear()

    def add(self, frame: Frame, windows: npt.NDArray[np.int64]) -> None:
        """The counts of ``frame`` for ``windows`` ``(2, channels, 2)``."""
        if not self.enabled:
            return
        counts = frame.window_counts
        if counts is None:  # the legacy stream does not carry them
            counts = _window_counts(frame, windows)
        raw = np.asarray(counts, dtype=np.int64)
        dtc = np.asarray(frame["dead_time_correction"], dtype=np.float64)
        with self._lock:
            self._raw.append(raw)
            self._dtc.append(raw * dtc)

    def read(
        self, window: int, args: npt.ArrayLike, acquired: int, corrected: bool
    ) -> npt.NDArray[Any]:
        """``[channel, first frame, last frame]`` -> one value per frame."""
        channel, first, last = (int(a) for a in np.asarray(args)[:3])
        first = max(first, 1)
        answer: list[Any] = [-1.0 if corrected else -1] * (last - first + 1)
        if acquired == 0 or first > acquired:
            return np.asarray(answer)
        last = min(last, acquired)
        with self._lock:
            rows = (self._dtc if corrected else self._raw)[first - 1 : last]
            for i, row in enumerate(rows):
                answer[i] = row[window - 1][channel]
        return np.nan_to_num(np.asarray(answer))


def _window_counts(
    frame: Frame, windows: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint32]:
    """What the hardware counted in ``windows`` (from the spectra)."""
    return window_counts(np.asarray(frame.spectra, dtype=np.uint32), windows)
