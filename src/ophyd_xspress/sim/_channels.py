"""Per-channel settings of the simulated device: hardware windows, event widths.

As the MAX IV device has them (``xspress3/DeviceServer.py`` and
``Instrument.py`` in maxiv-science/xspress3-streamer): two hardware windows per
channel, ``[low, high]`` inclusive bins, written through ``Window1_Ch{n}`` /
``Window2_Ch{n}`` and clamped into the spectrum (DeviceServer.py 198-212); the
event widths come from the calibration, unless the ``EventWidths`` device
property names one per channel (Instrument.py 107-118), and cannot be
written at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .._constants import DEFAULT_BINS, HARDWARE_WINDOWS
from ._state import SimulatorError

__all__ = ["ChannelSettings"]


class ChannelSettings:
    """Hardware windows and event widths of ``channels`` channels."""

    def __init__(
        self,
        channels: int,
        event_widths: npt.NDArray[np.int32],
        windows: Sequence[tuple[int, int]],
    ) -> None:
        self.channels = channels
        #: The event widths the calibration gives (read from the hardware).
        self.calibrated_event_widths = event_widths
        self._override: npt.NDArray[np.int64] | None = None
        #: ``windows[w][c] = [lo, hi]``, inclusive bins (the default here; on
        #: the device, whatever its settings files say).
        self.windows = np.zeros((HARDWARE_WINDOWS, channels, 2), dtype=np.int64)
        for w, window in enumerate(windows):
            self.windows[w, :] = window

    @property
    def event_widths(self) -> npt.NDArray[np.int32] | npt.NDArray[np.int64]:
        """The ``EventWidths`` property's when it names one per channel, else
        the calibration's."""
        if self._override is not None:
            return self._override
        return self.calibrated_event_widths

    def override_event_widths(self, values: Sequence[int]) -> None:
        """The ``EventWidths`` property at Init: used only with one value per
        channel (then streamed as int64: a list of Python ints)."""
        if len(values) == self.channels:
            self._override = np.asarray(list(values), dtype=np.int64)
        else:
            self._override = None

    def set_window(self, window: int, channel: int, low: int, high: int) -> None:
        """Write hardware window ``window`` (0 or 1) of ``channel`` as the device
        does: ``high`` past the last bin becomes the last bin, ``low`` below 0
        becomes 0. A window still reversed after that is refused (the device
        leaves it to the SDK, whose answer is not in its source)."""
        high = min(int(high), DEFAULT_BINS - 1)
        low = max(int(low), 0)
        if not low <= high:
            raise SimulatorError(
                f"Window{window + 1}_Ch{channel}: [{low}, {high}] (after clamping "
                f"into 0..{DEFAULT_BINS - 1}) is reversed"
            )
        self.windows[window, channel] = (low, high)
