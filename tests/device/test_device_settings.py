"""The detector against the device's own rules, on the simulator.

* every signal the detector can write is an attribute the real device lets a
  client write (``tests/sim/test_device_interface.py`` holds the table from
  the device's source), so ophyd-async's ``get_current_settings`` /
  ``apply_settings`` (and ``store_settings`` / ``retrieve_settings`` through a
  YAML file) work on the real device as on the simulator;
* ``WriteHdf5`` is set at every prepare: off, unless the detector is told to
  let the device write its own file too;
* the hardware windows are set from eV or bins through the ROIs' calibration
  and read back into the configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bluesky.plans import count
from ophyd_async.core import SignalRW, YamlSettingsProvider, walk_rw_signals
from ophyd_async.plan_stubs import (
    apply_settings,
    get_current_settings,
    retrieve_settings,
    store_settings,
)
from tests.sim.device_table import ATTRIBUTES, CHANNEL_ATTRIBUTES

from ophyd_xspress.protocol import Calibration

CHANNELS = 4


def _writable_device_attributes() -> set[str]:
    """Attribute names the device's source makes writable (the table)."""
    writable = {name for name, row in ATTRIBUTES.items() if row[2].name == "READ_WRITE"}
    for pattern, row in CHANNEL_ATTRIBUTES.items():
        if row[2].name == "READ_WRITE":
            writable |= {pattern.format(n=n) for n in range(CHANNELS)}
    return writable


def test_only_attributes_the_device_lets_us_write_are_read_write(xspress: Any) -> None:
    names: set[str] = set()
    for path, signal in walk_rw_signals(xspress).items():
        source = signal.source
        if not source.startswith("tango://"):
            continue  # the detector's own soft signals
        names.add(source.split("#")[0].rsplit("/", 1)[-1])
        assert isinstance(signal, SignalRW), path
    assert names
    assert names <= _writable_device_attributes(), names - _writable_device_attributes()
    assert not any(n.startswith("EventWidth") for n in names)


def test_saved_settings_apply_cleanly(
    RE: Any,  # noqa: N803
    sim: Any,
    xspress: Any,
    tmp_path: Path,
) -> None:
    saved = RE(get_current_settings(xspress)).plan_result
    sim.control.exposure_time = 0.5
    sim.control.n_triggers = 3
    sim.control.windows[0, 1] = (7, 9)
    RE(apply_settings(saved))  # the real device refused EventWidth here
    assert sim.control.exposure_time == pytest.approx(0.1)
    assert sim.control.n_triggers == 1
    assert sim.control.windows[0, 1].tolist() == list(
        saved[xspress.control.channels[1].window1]
    )

    # and through a YAML file, as a beamline keeps them
    provider = YamlSettingsProvider(tmp_path)
    RE(store_settings(provider, "xspress", xspress))
    sim.control.latency_time = 3e-6
    settings = RE(retrieve_settings(provider, "xspress", xspress)).plan_result
    RE(apply_settings(settings))
    assert sim.control.latency_time == 0.0
    RE(count([xspress], 1))  # still usable


def test_prepare_switches_the_devices_own_file_off(
    RE: Any,  # noqa: N803
    sim: Any,
    xspress: Any,
    tmp_path: Path,
) -> None:
    device_file = tmp_path / "device" / "scan.h5"
    device_file.parent.mkdir()
    sim.control.destination_file_name = str(device_file)
    assert sim.control.write_hdf5 is True  # the device's default
    RE(count([xspress], 3))
    assert sim.control.write_hdf5 is False
    assert list(device_file.parent.iterdir()) == []


def test_the_device_may_write_its_own_file_as_well(
    RE: Any,  # noqa: N803
    sim: Any,
    make_xspress: Any,
    tmp_path: Path,
) -> None:
    device_file = tmp_path / "device" / "scan.h5"
    device_file.parent.mkdir()
    sim.control.destination_file_name = str(device_file)
    xspress = make_xspress(device_writes_hdf5=True)
    RE(count([xspress], 2))
    assert sim.control.write_hdf5 is True
    sim.control.close()  # waits for the device's file writer
    # one file per Arm, the second with the device's underscore
    assert sorted(p.name for p in device_file.parent.iterdir()) == [
        "scan.h5",
        "scan_.h5",
    ]


def test_hardware_windows_from_energies_and_bins(
    RE: Any,  # noqa: N803
    sim: Any,
    make_xspress: Any,
    docs: Any,
) -> None:
    cal = Calibration(10.0, 0.0)
    xspress = make_xspress(hardware_windows={"Fe": (6250, 6550), "Cu": (7900, 8200)})
    RE(count([xspress], 1))
    fe = [cal.bin_of(6250), cal.bin_of(6550)]
    cu = [cal.bin_of(7900), cal.bin_of(8200)]
    assert sim.control.windows.tolist() == [[fe] * CHANNELS, [cu] * CHANNELS]
    conf = docs["descriptor"][0]["configuration"]["xspress"]["data"]
    for n in range(CHANNELS):
        assert list(conf[f"xspress-control-channels-{n}-window1"]) == fe
        assert list(conf[f"xspress-control-channels-{n}-window2"]) == cu
    assert conf["xspress-hardware_window_definitions"].startswith(
        f"Window1 Fe: bins {fe[0]}-{fe[1]}"
    )
    event = docs["event"][0]["data"]
    spectra = np.asarray(event["xspress"])
    # the hardware counted what the spectra hold in those windows
    counts = np.asarray(
        sim.control.expected_frame(sim.control.series_index, 0)["window_counts"]
    )
    for n in range(CHANNELS):
        assert counts[0, n] == spectra[n, fe[0] : fe[1] + 1].sum()

    # per channel, in bins, replacing them (at the next prepare)
    per_channel = [(100 + n, 200 + n) for n in range(CHANNELS)]
    xspress.set_hardware_windows(bin_windows={"low": per_channel})
    RE(count([xspress], 1))
    assert sim.control.windows[0].tolist() == [list(w) for w in per_channel]
    assert sim.control.windows[1].tolist() == [cu] * CHANNELS  # left alone


def test_too_many_hardware_windows_are_refused(make_xspress: Any) -> None:
    with pytest.raises(ValueError, match="2 hardware windows per channel") as info:
        make_xspress(hardware_bin_windows={"a": (1, 2), "b": (3, 4), "c": (5, 6)})
    assert str(info.value) == (
        "the Xspress3 has 2 hardware windows per channel (Window1, Window2), "
        "not 3: ['a', 'b', 'c']"
    )
