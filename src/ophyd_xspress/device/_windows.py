"""The device's hardware windows, as the detector sets them.

Two per channel (``Window1_Ch{n}``, ``Window2_Ch{n}``: inclusive bins, counted
by the hardware into the stream's ``window_counts``). They are given like the
software ROIs (:mod:`._rois`): a name and an energy window in eV or a bin
window, one for all channels or one per channel, through the same
calibration (per channel when the detector has one per channel); the first
name is Window1, the second Window2.
"""

from __future__ import annotations

from .._constants import HARDWARE_WINDOWS
from ._rois import Roi, RoiSpec, make_rois
from ._settings import DataConfig

__all__ = ["HardwareWindows"]


class HardwareWindows:
    """The windows the trigger logic writes at prepare (``rois``; None: leave
    the device's alone), from the detector's eV and bin specifications."""

    def __init__(
        self, windows: RoiSpec | None, bin_windows: RoiSpec | None, config: DataConfig
    ) -> None:
        self.config = config
        self.rois: list[Roi] | None = None
        self.update(windows, bin_windows)

    def update(self, windows: RoiSpec | None, bin_windows: RoiSpec | None) -> None:
        """New specifications (validated now: a ValueError changes nothing)."""
        self.rois = self._make(windows, bin_windows)
        self._spec = (windows, bin_windows)

    def refresh(self) -> None:
        """Convert again (the channel count or calibration changed)."""
        self.update(*self._spec)

    def _make(
        self, windows: RoiSpec | None, bin_windows: RoiSpec | None
    ) -> list[Roi] | None:
        if windows is None and bin_windows is None:
            return None
        cfg = self.config
        sizes = {"channels": cfg.channels, "bins": cfg.bins}
        out = make_rois(windows, unit="eV", calibration=cfg.calibration, **sizes)
        out += make_rois(bin_windows, unit="bin", calibration=cfg.calibration, **sizes)
        if len(out) > HARDWARE_WINDOWS:
            raise ValueError(
                f"the Xspress3 has {HARDWARE_WINDOWS} hardware windows per channel "
                f"(Window1, Window2), not {len(out)}: {[w.name for w in out]}"
            )
        return out

    def text(self) -> str:
        """``"Window1 Fe: bins 625-655 (6250-6560 eV); ..."`` for the
        configuration (what the device has is read back beside it)."""
        if self.rois is None:
            return "the device's own"
        cal = self.config.calibration
        return "; ".join(
            f"Window{w + 1} {roi.describe(cal)}" for w, roi in enumerate(self.rois)
        )
