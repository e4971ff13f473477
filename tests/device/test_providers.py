"""The data providers on their own: data keys, readings and stream documents.

Inline readings come from a simulator frame held in :class:`LatestFrames`; the
HDF5 provider's counters are soft signals set by the test. No device, no
stream, no file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from event_model import DataKey
from ophyd_async.core import soft_signal_r_and_setter
from tests.helpers import RAW_SCALER_NAMES

from ophyd_xspress._schema import QUANTITIES, by_dataset
from ophyd_xspress.device._providers import (
    Hdf5DataProvider,
    InlineDataProvider,
    ProgressOnlyProvider,
    hinted_keys,
    summary_keys,
)
from ophyd_xspress.device._rois import make_rois
from ophyd_xspress.device._session import Diagnostics, LatestFrames
from ophyd_xspress.device._settings import DataConfig
from ophyd_xspress.hdf5 import dataset_specs
from ophyd_xspress.protocol import Calibration, Frame, derive
from ophyd_xspress.sim import SimulatedXspress3

STREAM = "tcp://127.0.0.1:9999"
URI = "file://localhost/data/scan.h5"
CHANNELS = 2
BINS = 4096
CLOCK_HZ = 80e6
#: Fe Kα in eV at 10 eV/bin, and Cu Kα in bins (inclusive)
FE_EV, FE_BINS = (6250, 6550), (625, 655)
CU_BINS = (790, 820)


def make_config(channels: int = CHANNELS) -> DataConfig:
    cal = Calibration(10.0, 0.0)
    sizes: dict[str, Any] = {"channels": channels, "bins": BINS, "calibration": cal}
    rois = make_rois({"Fe": FE_EV}, unit="eV", **sizes)
    rois += make_rois({"Cu": CU_BINS}, unit="bin", **sizes)
    return DataConfig(
        name="xspress",
        stream=STREAM,
        channels=channels,
        bins=BINS,
        calibration=cal,
        rois=rois,
    )


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    sim = SimulatedXspress3(channels=CHANNELS, pace=False)  # never started
    return [sim.expected_frame(0, n) for n in (3, 4)]


def inline(
    config: DataConfig, held: dict[int, Frame], diagnostics: Diagnostics | None = None
) -> InlineDataProvider:
    latest = LatestFrames()
    for row, frame in held.items():
        latest.put(row, frame)
    if diagnostics is None:
        diagnostics = Diagnostics()
    return InlineDataProvider("xspress", config, latest, diagnostics)


def plain(keys: Mapping[str, DataKey]) -> dict[str, dict[str, Any]]:
    """Data keys as plain dicts (their optional fields looked up freely)."""
    return {key: dict(dk) for key, dk in keys.items()}


# -- inline: data keys --------------------------------------------------------------
def test_hinted_keys_are_the_roi_sums_and_dead_times() -> None:
    # by default one panel per ROI (summed over channels) and one dead time
    assert hinted_keys("xspress", make_config()) == [
        "xspress-Fe",
        "xspress-Cu",
        "xspress-dead_time_max",
    ]
    config = make_config()
    config.per_channel_hints = True
    assert hinted_keys("xspress", config) == [
        "xspress-Fe",
        "xspress-Fe-ch0",
        "xspress-Fe-ch1",
        "xspress-Cu",
        "xspress-Cu-ch0",
        "xspress-Cu-ch1",
        "xspress-dead_time-ch0",
        "xspress-dead_time-ch1",
        "xspress-dead_time_max",
    ]


async def test_inline_datakeys_follow_the_schema() -> None:
    keys = plain(await inline(make_config(), {}).make_datakeys())
    sizes = {"C": CHANNELS, "B": BINS, "R": 2}
    schema_keys = set()
    for q in QUANTITIES:
        if q.dataset in ("window_counts", "summed_spectrum"):
            # no frame in hand that carries them; not configured
            assert q.key("xspress") not in keys
            continue
        key = q.key("xspress")
        schema_keys.add(key)
        dk = keys[key]
        assert dk["shape"] == [sizes[s] for s in q.shape], key
        assert dk["dtype_numpy"] == q.dtype, key
        assert dk.get("units", "") == q.units, key
        assert dk.get("precision") == q.precision, key
    summary = {key for key, _, _ in summary_keys("xspress", make_config())}
    assert set(keys) == schema_keys | summary | {"xspress-anomalies"}
    # anchors, written out
    assert keys["xspress"] == {
        "source": f"zmq:{STREAM}#spectra",
        "shape": [CHANNELS, BINS],
        "dtype": "array",
        "dtype_numpy": "<u4",
        "units": "counts",
    }
    assert keys["xspress-frame_number"] == {
        "source": f"zmq:{STREAM}#frame",
        "shape": [],
        "dtype": "integer",
        "dtype_numpy": "<i8",
    }
    assert keys["xspress-event_width"]["dtype_numpy"] == "<i4"
    assert keys["xspress-Fe-ch1"] == {
        "source": f"zmq:{STREAM}#roi:Fe:ch1",
        "shape": [],
        "dtype": "number",
        "dtype_numpy": "<f8",
        "units": "counts",
        "precision": 1,
    }
    assert keys["xspress-dead_time-ch0"]["units"] == "%"
    assert keys["xspress-dead_time-ch0"]["precision"] == 3


# -- inline: readings ---------------------------------------------------------------
async def test_inline_readings_of_one_frame(frames: list[Frame]) -> None:
    config = make_config()
    diagnostics = Diagnostics()
    diagnostics.anomalies.update(missing=2, repeated=1)
    # the step's frame is the lowest row held
    readings = await inline(
        config, {1: frames[1], 0: frames[0]}, diagnostics
    ).make_readings()
    frame = frames[0]
    values = {key: r["value"] for key, r in readings.items()}
    assert len({r["timestamp"] for r in readings.values()}) == 1
    described = await inline(config, {0: frame}).make_datakeys()
    assert set(values) == set(described)
    assert "xspress-window_counts" in values  # the frame carries them
    np.testing.assert_array_equal(values["xspress-window_counts"], frame.window_counts)

    spectra = values["xspress"]
    assert spectra.dtype == np.uint32
    np.testing.assert_array_equal(spectra, frame.spectra)  # bit-exact
    assert not np.shares_memory(spectra, frame.spectra)  # a copy: frames are reused
    assert values["xspress-frame_number"] == 3
    assert values["xspress-anomalies"] == 3
    for name in (*RAW_SCALER_NAMES, "dead_time_correction"):
        value = values[f"xspress-{name}"]
        assert value.dtype == np.dtype(by_dataset(name).dtype), name
        np.testing.assert_array_equal(value, frame[name], err_msg=name)

    derived = derive(frame.metadata, frame.spectra, config.windows(), warn=False)
    for dataset, column in derived.columns().items():
        key = by_dataset(dataset).key("xspress")
        np.testing.assert_array_equal(values[key], column, err_msg=key)

    # the same facts, computed here from the frame
    spectra64 = frame.spectra.astype(np.int64)
    roi = np.stack(
        [spectra64[:, lo : hi + 1].sum(axis=1) for lo, hi in (FE_BINS, CU_BINS)],
        axis=1,
    )
    np.testing.assert_array_equal(values["xspress-roi"], roi)
    clock = frame["clock_ticks"].astype(np.float64)
    dead = frame["all_events"] * (frame["event_width"] + 1.0) + frame["reset_ticks"]
    dtc = clock / (clock - dead)
    np.testing.assert_allclose(values["xspress-dtc"], dtc, rtol=1e-12)
    np.testing.assert_allclose(values["xspress-dead_time"], 100 * dead / clock)
    np.testing.assert_allclose(
        values["xspress-ocr"], frame["all_good"] / (clock / CLOCK_HZ), rtol=1e-12
    )
    corrected = roi * dtc[:, None]
    np.testing.assert_allclose(values["xspress-roi_corrected"], corrected, rtol=1e-12)
    for r, name in enumerate(("Fe", "Cu")):
        assert values[f"xspress-{name}"] == pytest.approx(corrected[:, r].sum())
        for c in range(CHANNELS):
            assert values[f"xspress-{name}-ch{c}"] == pytest.approx(corrected[c, r])
    for c in range(CHANNELS):
        assert values[f"xspress-dead_time-ch{c}"] == pytest.approx(
            100 * dead[c] / clock[c]
        )


async def test_inline_refuses_a_frame_of_another_shape(frames: list[Frame]) -> None:
    provider = inline(make_config(channels=4), {0: frames[0]})
    with pytest.raises(ValueError, match="channels") as info:
        await provider.make_readings()
    assert str(info.value) == (
        "xspress: the stream sends 2 channels x 4096 bins but the detector was "
        "configured for 4 x 4096: pass channels=2"
    )


async def test_inline_without_a_frame_says_so() -> None:
    with pytest.raises(RuntimeError) as info:
        await inline(make_config(), {}).make_readings()
    assert str(info.value) == (
        f"xspress: no frame from {STREAM} to read (trigger did not complete?)"
    )


# -- HDF5: data keys and stream documents -------------------------------------------
def hdf5_provider() -> tuple[Hdf5DataProvider, Any, Any]:
    done, set_done = soft_signal_r_and_setter(int, 0)
    stored, set_stored = soft_signal_r_and_setter(int, 0)
    specs = dataset_specs(CHANNELS, BINS, 2)  # window_counts: not known to come
    return Hdf5DataProvider("xspress", URI, specs, done, stored), set_done, set_stored


async def test_hdf5_datakeys_have_the_per_frame_shape() -> None:
    provider, _, _ = hdf5_provider()
    keys = plain(await provider.make_datakeys(collections_per_event=1))
    specs = dataset_specs(CHANNELS, BINS, 2)
    assert set(keys) == {by_dataset(s.name).key("xspress") for s in specs}
    assert "xspress-window_counts" not in keys
    for spec in specs:
        q = by_dataset(spec.name)
        dk = keys[q.key("xspress")]
        assert dk["shape"] == list(spec.shape), spec.name
        assert dk["dtype_numpy"] == spec.dtype
        assert dk["external"] == "STREAM:"
        assert dk["source"] == f"{URI}#/entry/instrument/xspress3/{spec.name}"
        assert dk.get("units", "") == q.units
        assert dk.get("precision") == q.precision
    assert keys["xspress"]["shape"] == [CHANNELS, BINS]
    assert keys["xspress"]["dtype"] == "array"
    assert keys["xspress-frame_number"]["shape"] == []
    assert keys["xspress-frame_number"]["dtype"] == "integer"


async def stream_docs(
    provider: Hdf5DataProvider, collections_written: int
) -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, dict(doc))
        async for name, doc in provider.make_stream_docs(collections_written, 1)
    ]


async def test_stream_datum_never_passes_the_stored_rows() -> None:
    """``collections_written`` is the counter ophyd-async watches (released to
    its target when a run fails); documents follow ``frames_stored``."""
    provider, set_done, set_stored = hdf5_provider()
    n_keys = len(provider.resources)
    set_done(5)
    set_stored(3)
    docs = await stream_docs(provider, 5)
    names = [name for name, _ in docs]
    assert names == ["stream_resource"] * n_keys + ["stream_datum"] * n_keys
    resources = {doc["uid"]: doc for name, doc in docs if name == "stream_resource"}
    for name, doc in docs:
        if name == "stream_datum":
            assert doc["indices"] == {"start": 0, "stop": 3}
            assert doc["stream_resource"] in resources
    data = {r["data_key"]: r for r in resources.values()}
    assert data["xspress"]["parameters"]["dataset"] == "/entry/instrument/xspress3/data"
    assert data["xspress"]["uri"] == URI

    assert await stream_docs(provider, 10) == []  # still 3 stored
    set_stored(5)
    docs = await stream_docs(provider, 5)
    assert [name for name, _ in docs] == ["stream_datum"] * n_keys
    assert {(d["indices"]["start"], d["indices"]["stop"]) for _, d in docs} == {(3, 5)}


async def test_stream_datum_follows_the_index_asked_for() -> None:
    provider, _, set_stored = hdf5_provider()
    set_stored(8)
    docs = await stream_docs(provider, 4)  # another detector is at 4
    stops = {d["indices"]["stop"] for name, d in docs if name == "stream_datum"}
    assert stops == {4}


async def test_progress_only_provider_has_no_data() -> None:
    done, set_done = soft_signal_r_and_setter(int, 0)
    provider = ProgressOnlyProvider(done)
    set_done(1)
    assert provider.collections_written_signal is done
    assert await provider.make_datakeys(1) == {}
    assert [d async for d in provider.make_stream_docs(1, 1)] == []
