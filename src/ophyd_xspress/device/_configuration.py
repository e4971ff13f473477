"""The detector's own configuration: ROIs, calibration, hardware windows, and
the signals ``read_configuration()`` reports them in.

:class:`DetectorConfiguration` owns the ROI and hardware-window definitions the
user gave, turns them into bins through the calibration (one per channel), and
keeps the configuration signals current when the channel count becomes known
(at connect) or the definitions change (:meth:`set_rois`,
:meth:`set_hardware_windows`). The detector makes its signals its children.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
from ophyd_async.core import Array1D, SignalR, soft_signal_r_and_setter

from ._arguments import check_roi_names, naming
from ._rois import Roi, RoiSpec, make_rois
from ._session import StreamSession
from ._settings import DataConfig
from ._windows import HardwareWindows

__all__ = ["DetectorConfiguration"]


class DetectorConfiguration:
    """ROIs, calibration and hardware windows of one detector, as signals."""

    def __init__(
        self,
        config: DataConfig,
        rois: RoiSpec | None,
        bin_rois: RoiSpec | None,
        hardware: HardwareWindows,
        session: StreamSession,
    ) -> None:
        self.config = config
        self.hardware = hardware
        self._session = session
        self._roi_spec = (rois, bin_rois)
        config.rois = self._make_rois()
        self.stream_endpoint, _ = soft_signal_r_and_setter(str, config.stream)
        self.n_channels_config, self._set_channels = soft_signal_r_and_setter(
            int, config.channels
        )
        # one value per channel (each channel's own calibration)
        gains, offsets = self._calibration_arrays()
        self.calibration_ev_per_bin, self._set_gains = soft_signal_r_and_setter(
            Array1D[np.float64], gains, units="eV"
        )
        self.calibration_offset_ev, self._set_offsets = soft_signal_r_and_setter(
            Array1D[np.float64], offsets, units="eV"
        )
        self.roi_definitions, self._set_roi_text = soft_signal_r_and_setter(
            str, self._roi_text()
        )
        self.hardware_windows, self._set_hw_windows = soft_signal_r_and_setter(str, "")
        self.hardware_window_definitions, self._set_hw_text = soft_signal_r_and_setter(
            str, hardware.text()
        )

    def signals(self) -> dict[str, SignalR[Any]]:
        """The configuration signals by the attribute name they get on the
        detector (their data keys follow from it)."""
        return {
            "stream_endpoint": self.stream_endpoint,
            "n_channels_config": self.n_channels_config,
            "calibration_ev_per_bin": self.calibration_ev_per_bin,
            "calibration_offset_ev": self.calibration_offset_ev,
            "roi_definitions": self.roi_definitions,
            "hardware_windows": self.hardware_windows,
            "hardware_window_definitions": self.hardware_window_definitions,
            "header_filename": self._session.header_filename,
        }

    # -- ROIs ------------------------------------------------------------------------
    def _make_rois(self) -> list[Roi]:
        cfg = self.config
        rois, bin_rois = self._roi_spec
        check_roi_names(rois, bin_rois)
        sizes = {"channels": cfg.channels, "bins": cfg.bins}
        with naming("rois"):
            out = make_rois(rois, unit="eV", calibration=cfg.calibration, **sizes)
        with naming("bin_rois"):
            out += make_rois(bin_rois, unit="bin", calibration=cfg.calibration, **sizes)
        if not out:
            total = {"total": (0, cfg.bins - 1)}
            out = make_rois(total, unit="bin", calibration=cfg.calibration, **sizes)
        return out

    def _roi_text(self) -> str:
        cal = self.config.calibration
        return "; ".join(r.describe(cal) for r in self.config.rois)

    def _calibration_arrays(
        self,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        cals = self.config.calibrations()
        return (
            np.array([c.ev_per_bin for c in cals], np.float64),
            np.array([c.offset_ev for c in cals], np.float64),
        )

    def set_rois(self, rois: RoiSpec | None, bin_rois: RoiSpec | None) -> None:
        """Replace the software ROIs; refused ones leave the current ROIs."""
        previous, self._roi_spec = self._roi_spec, (rois, bin_rois)
        try:
            self.config.rois = self._make_rois()
        except Exception:
            self._roi_spec = previous
            raise
        self._set_roi_text(self._roi_text())

    def set_hardware_windows(
        self, windows: RoiSpec | None, bin_windows: RoiSpec | None
    ) -> None:
        self.hardware.update(windows, bin_windows)
        self._set_hw_text(self.hardware.text())

    # -- events ------------------------------------------------------------------------
    def channels_changed(self, channels: int) -> None:
        """The device has another channel count than assumed: redo everything
        that has one value per channel."""
        self.config.channels = channels
        self.config.rois = self._make_rois()
        self.hardware.refresh()
        gains, offsets = self._calibration_arrays()
        self._set_channels(channels)
        self._set_gains(gains)
        self._set_offsets(offsets)
        self._set_roi_text(self._roi_text())
        self._set_hw_text(self.hardware.text())

    def note_header(self, header: dict[str, Any]) -> None:
        """The hardware windows the last series header announced."""
        if header.get("limits") is not None:
            self._set_hw_windows(json.dumps(header["limits"]))
