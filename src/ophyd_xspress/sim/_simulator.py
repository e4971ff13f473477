"""``XspressSimulator``: the embedded default detector, as a context manager.

>>> with XspressSimulator(channels=4) as sim:
...     xspress = XspressDetector(tango=sim.tango_trl, stream=sim.stream_endpoint,
...                               name="xspress")

It starts the simulated box (:class:`SimulatedXspress3`, also usable directly as
``sim.control``) and, unless ``tango=False``, the Tango device server with the
interface of the MAX IV ``Xspress3DS`` (no Tango database needed). Everything
binds to loopback unless told otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..protocol import Framing
from ._engine import SimulatedXspress3
from ._faults import FaultPlan
from ._sample_map import SampleMap
from ._spectrum import DEFAULT_SAMPLE, SampleModel
from ._tango import TangoServer

__all__ = ["XspressSimulator"]

log = logging.getLogger("ophyd_xspress.sim")


class XspressSimulator:
    """Simulated Xspress3: ZeroMQ stream plus (optionally) its Tango device.

    ``stream`` defaults to a free loopback port (``tcp://127.0.0.1:0``); pass
    ``"tcp://127.0.0.1:9999"`` to mimic the real device's port.
    ``device_properties`` are the Tango device's properties (``ReturnCounters``,
    ``EventWidths``, ...). As on the real device ``WriteHdf5`` starts true:
    every Arm writes the device's own HDF5 file at ``DestinationFileName``
    (``/tmp/temp.h5`` unless ``destination_file_name`` says otherwise); pass
    ``write_hdf5=False`` to start with it off.

    ``sample`` is a :class:`SampleModel` (the same spectrum everywhere) or a
    :class:`SampleMap` (elements spread over an area, e.g. :func:`phantom`):
    then each frame sees where the beam was during its exposure
    (``sim.control.beam``, e.g. following two motors:
    :class:`ophyd_xspress.maps.MotorBeam`).
    """

    def __init__(
        self,
        channels: int = 4,
        *,
        stream: str = "tcp://127.0.0.1:0",
        framing: Framing = "multipart",
        tango: bool = True,
        tango_host: str = "127.0.0.1",
        tango_port: int = 0,
        device_name: str = "sim/xspress3/1",
        live_view: str | None = None,
        sample: SampleModel | SampleMap = DEFAULT_SAMPLE,
        count_rate: float | Sequence[float] = 2.0e5,
        event_width: int | Sequence[int] = 6,
        seed: int = 0,
        pace: bool = True,
        device_properties: Mapping[str, Any] | None = None,
        **engine_options: Any,
    ) -> None:
        self.control = SimulatedXspress3(
            channels,
            endpoint=stream,
            framing=framing,
            live_endpoint=live_view,
            sample=sample,
            count_rate=count_rate,
            event_width=event_width,
            seed=seed,
            pace=pace,
            **engine_options,
        )
        self._tango = (
            TangoServer(
                self.control, device_name, tango_host, tango_port, device_properties
            )
            if tango
            else None
        )
        self._tango_trl: str | None = None

    def start(self) -> XspressSimulator:
        self.control.start()
        try:
            if self._tango is not None:
                self._tango_trl = self._tango.start()
        except BaseException:
            self.control.close()
            raise
        log.info(
            "Xspress3 simulator: stream %s, tango %s",
            self.stream_endpoint,
            self._tango_trl,
        )
        return self

    def close(self) -> None:
        try:
            if self._tango is not None:
                self._tango.stop()
        finally:
            self.control.close()
            self._tango_trl = None

    def __enter__(self) -> XspressSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stream_endpoint(self) -> str:
        """Where the PUB socket is bound (connect a SUB here)."""
        return self.control.stream_endpoint

    @property
    def tango_trl(self) -> str:
        """The Tango resource locator of the simulated device."""
        if self._tango_trl is None:
            raise RuntimeError(
                "no Tango device: start the simulator (with tango=True) first"
            )
        return self._tango_trl

    @property
    def live_view_endpoint(self) -> str | None:
        return self.control.live_endpoint

    @property
    def faults(self) -> FaultPlan:
        """Fault injection for the next series (see :class:`FaultPlan`)."""
        return self.control.faults
