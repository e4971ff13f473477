"""The dranspose worker and reducer, replayed by dranspose's own ``replay``.

Recorded streams (the shared captures of a real Xspress3, and a map of the
phantom recorded from the simulator's PUB socket) go through
``dranspose.replay.replay`` with two workers (events spread at random, as on
a cluster) and the reducer writing its map to HDF5 at the end. That map must
equal, to the last bit, the map made from the same frames with this
package's decoder and :func:`~ophyd_xspress.protocol.derive` (what the
detector's own files hold), placed by :class:`~ophyd_xspress.maps.MapGrid`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("dranspose")

from ophyd_xspress.dranspose import REPLAY_ENV, parameter_list
from ophyd_xspress.maps import MapGrid, MapImages
from ophyd_xspress.protocol import Frame, StreamDecoder, derive
from ophyd_xspress.tools import read_capture, write_capture

ROIS = {"A": [100, 400], "B": [600, 700]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replay(
    capture: Path, tmp_path: Path, shape: tuple[int, int], rois: dict, snake: bool
) -> h5py.File:
    """Replay ``capture`` through the worker and reducer; the reducer's file."""
    from dranspose.replay import replay

    output = tmp_path / "map.h5"
    parameters = tmp_path / "parameters.json"
    parameters.write_text(
        json.dumps(
            parameter_list(
                rois=rois, map_shape=list(shape), snake=snake, output=str(output)
            )
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(REPLAY_ENV, str(capture))
        replay(
            "ophyd_xspress.dranspose:XrfMapWorker",
            "ophyd_xspress.dranspose:XrfMapReducer",
            source="ophyd_xspress.dranspose:ReplaySource",
            parameter_file=parameters,
            port=_free_port(),
            nworkers=2,
        )
    return h5py.File(output, "r")


def _frames(messages: Iterable[Sequence[bytes]]) -> list[Frame]:
    decoder = StreamDecoder()
    out = [p for m in messages for p in decoder.feed(list(m)) if isinstance(p, Frame)]
    decoder.finish()
    return out


def _expected(
    frames: list[Frame], shape: tuple[int, int], rois: dict, snake: bool
) -> dict[str, np.ndarray]:
    """The map of ``frames`` as the detector's files give it."""
    ny, nx = shape
    grid = MapGrid(nx, ny, (0, nx - 1), (0, ny - 1), snake=snake)
    names = list(rois)
    images = MapImages(grid, [*names, "dead_time"])
    windows = np.array(list(rois.values()), dtype=np.int64)
    for frame in frames:
        derived = derive(frame.metadata, frame.spectra, windows, warn=False)
        assert derived.roi_corrected is not None
        values = [*derived.roi_corrected.sum(axis=0), derived.dead_time.dead_percent]
        images.fill([frame.frame], [[*values[:-1], float(np.max(values[-1]))]])
    return images.as_dict()


def _assert_same(got: h5py.File, want: dict[str, np.ndarray], frames: int) -> None:
    assert int(got["frames"][()]) == frames
    assert int(got["errors"][()]) == 0
    for name, image in want.items():
        dataset = got["dead_time"] if name == "dead_time" else got["map"][name]
        np.testing.assert_array_equal(np.asarray(dataset), image, err_msg=name)


@pytest.mark.parametrize("name", ["xspress3-multipart", "xspress3-dump"])
def test_replayed_captures_give_the_detector_s_map(
    shared_data: Path, tmp_path: Path, name: str
) -> None:
    capture = shared_data / f"{name}.cbors"
    frames = _frames(read_capture(capture))
    assert frames
    shape = (1, max(f.frame for f in frames) + 1)
    want = _expected(frames, shape, ROIS, snake=False)
    with _replay(capture, tmp_path, shape, ROIS, snake=False) as got:
        _assert_same(got, want, len({f.frame for f in frames}))


def test_a_recorded_simulator_map_gives_the_detector_s_map(tmp_path: Path) -> None:
    """A 6 x 4 snake map of the phantom: the beam set on each pixel's centre
    before its software trigger; the stream recorded from the PUB socket."""
    import zmq

    from ophyd_xspress.sim import (
        PHANTOM_REGIONS,
        FixedBeam,
        SimulatedXspress3,
        energy_window,
        phantom,
    )

    nx, ny = 6, 4
    grid = MapGrid(nx, ny, (-0.8, 0.8), (-0.75, 0.75), snake=True)
    calibration = phantom().calibration
    rois = {
        el: [calibration.bin_of(e) for e in energy_window(el, "Ka1", 155.0)]
        for el in PHANTOM_REGIONS
    }
    with SimulatedXspress3(
        channels=2, sample=phantom(), endpoint="tcp://127.0.0.1:0", write_hdf5=False
    ) as sim:
        sim.start()
        context = zmq.Context.instance()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(sim.stream_endpoint)
        time.sleep(0.3)  # the subscription reaches the publisher
        sim.exposure_time = 0.005
        sim.n_triggers = grid.frames
        sim.arm()
        x, y = grid.centres()
        iy, ix = grid.pixel_of(np.arange(grid.frames))
        for k in range(grid.frames):
            sim.beam = FixedBeam(float(x[ix[k]]), float(y[iy[k]]))
            sent = sim.frames_sent
            sim.software_trigger()
            deadline = time.monotonic() + 5
            while sim.frames_sent == sent and time.monotonic() < deadline:
                time.sleep(0.001)
        sim.wait_idle(5)
        messages = []
        while sub.poll(500):
            messages.append(sub.recv_multipart())
        sub.close(linger=0)
        expected = [sim.expected_frame(sim.series_index, k) for k in range(grid.frames)]
    capture = tmp_path / "map.cbors"
    write_capture(capture, messages)
    frames = _frames(messages)
    assert [f.frame for f in frames] == list(range(grid.frames))
    for got, want in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(got.spectra, want.spectra)
    want_map = _expected(frames, grid.shape, rois, snake=True)
    # the map is the phantom's: Fe where its disc is
    fe = want_map["Fe"]
    assert fe.max() > 5 * np.median(fe)
    with _replay(capture, tmp_path, grid.shape, rois, snake=True) as got:
        _assert_same(got, want_map, grid.frames)
