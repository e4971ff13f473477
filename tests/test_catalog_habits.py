"""databroker habits on the catalog: the local one, and a real tiled server.

What a beamline user types after a scan: ``catalog[-1]``, ``catalog[-3:]``,
a scan id, a partial uid, ``search(plan_name=...)``, ``run.documents()``, and
databroker's v1 ``db = catalog.v1``: ``db[-1].table()`` (a fly scan's lists
its rows), ``db(plan_name=...)``. Then the same fly scan through
``RemoteCatalog`` against ``tiled serve`` in its own process, with an API key,
on loopback: read back bit-exact.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bluesky.plans import count
from ophyd_async.core import init_devices

from ophyd_xspress import XspressDetector, XspressSimulator
from ophyd_xspress.catalog import LocalCatalog, RemoteCatalog
from ophyd_xspress.demo import fly_scan

FLY_FRAMES = 12
#: bluesky-tiled-plugins 2.0.12 reads a (C, R) array column of a step scan
#: with two dimensions of one name, which xarray warns about (an upstream
#: naming issue; the values are right).
DUPLICATE_DIMS = "ignore:Duplicate dimension names present:UserWarning"


def _uid(result: Any) -> str:
    return str(result.run_start_uids[0])


@pytest.fixture
def runs(RE: Any, tmp_path: Path) -> Iterator[tuple[LocalCatalog, Any, list[str]]]:  # noqa: N803
    """A local catalog holding count(3), count(2) and a fly scan (scans 1-3)."""
    catalog = LocalCatalog(tmp_path)
    RE.subscribe(catalog.writer)
    try:
        with XspressSimulator(channels=2, pace=False) as sim:
            sim.control.exposure_time = 0.01
            with init_devices():
                xspress = XspressDetector(
                    tango=sim.tango_trl,
                    stream=sim.stream_endpoint,
                    rois={"Fe": (6250, 6560)},
                    path=catalog.data_dir,
                    name="xspress",
                )
            uids = [
                _uid(RE(count([xspress], 3))),
                _uid(RE(count([xspress], 2))),
                _uid(RE(fly_scan(xspress, FLY_FRAMES, 0.001))),
            ]
            sent = [sim.control.expected_frame(5, i) for i in range(FLY_FRAMES)]
        yield catalog, sent, uids
    finally:
        catalog.close()


@pytest.mark.filterwarnings(DUPLICATE_DIMS)
def test_local_catalog_habits(runs: Any) -> None:
    catalog, sent, uids = runs
    # indexing: latest, negative slices in time order, scan id, partial uid
    assert catalog[-1].start["uid"] == uids[2]
    assert [r.start["uid"] for r in catalog[-3:]] == uids
    assert [r.start["uid"] for r in catalog[-3:-1]] == uids[:2]
    assert catalog[2].start["uid"] == uids[1]  # scan_id
    assert catalog[uids[0][:8]].start["uid"] == uids[0]
    assert catalog[uids[0]].start["scan_id"] == 1
    # search on the start document
    counts = catalog.search(plan_name="count")
    assert sorted(counts) == sorted(uids[:2])
    assert list(catalog.search(plan_name="count", scan_id=2)) == [uids[1]]
    assert list(catalog.search(plan_name="xspress_fly")) == [uids[2]]

    # the documents of a run, as the RunEngine emitted them
    names = [name for name, _ in catalog[-1].documents()]
    assert names[0] == "start"
    assert names[-1] == "stop"
    assert {"descriptor", "stream_resource", "stream_datum"} <= set(names)
    step_docs = list(catalog[uids[0]].documents())
    events = [doc for name, doc in step_docs if name in ("event", "event_page")]
    assert events

    # the fly scan's data, bit-exact
    spectra = np.asarray(catalog[-1]["primary"]["xspress"].read())
    assert spectra.shape == (FLY_FRAMES, 2, 4096)
    for i, frame in enumerate(sent):
        assert np.array_equal(spectra[i], frame.spectra), i

    # databroker's v1 view of the same runs
    pytest.importorskip("databroker")
    db = catalog.v1
    fly = db[-1]
    assert fly.start["uid"] == uids[2]
    table = fly.table()  # no fill: the rows, with the small fields
    assert len(table) == FLY_FRAMES
    assert list(table["xspress-frame_number"]) == list(range(FLY_FRAMES))
    assert "xspress" not in table  # the spectra need fill=True
    assert len(db[uids[0]].table()) == 3
    assert sorted(h.start["uid"] for h in db(plan_name="count")) == sorted(uids[:2])
    names = [name for name, _ in db[-2].documents()]
    assert names[0] == "start"
    assert names[-1] == "stop"
    # the v1 view leaves the catalog's own runs as they were (an upstream
    # .v2 changed every client's runs to v2 ones: KeyError below)
    numbers = catalog[-1]["primary"]["xspress-frame_number"].read()
    assert np.asarray(numbers).tolist() == list(range(FLY_FRAMES))


# -- a real tiled server, in its own process ---------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def tiled_server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """``tiled serve catalog`` on loopback with an API key; its readable
    storage is the detector's data directory."""
    tiled = shutil.which("tiled")
    if tiled is None:
        pytest.skip("the tiled command is not installed (ophyd-xspress[demo])")
    data = tmp_path / "data"
    data.mkdir()
    key = os.urandom(32).hex()  # tiled refuses keys it thinks weak
    port = _free_port()
    log = (tmp_path / "tiled.log").open("w")
    server = subprocess.Popen(
        [
            tiled,
            "serve",
            "catalog",
            "--temp",
            "--api-key",
            key,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-r",
            str(data),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = (tmp_path / "tiled.log").read_text()
                    pytest.fail(f"tiled serve did not start: {output}")
                time.sleep(0.2)
        yield uri, key, data
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()


def test_remote_catalog_against_tiled_serve(RE: Any, tiled_server: Any) -> None:  # noqa: N803
    uri, key, data = tiled_server
    import httpx

    # the server wants the key
    with httpx.Client(trust_env=False) as client:
        wrong = client.get(
            f"{uri}/api/v1/search/", headers={"Authorization": "Apikey x"}
        )
        right = client.get(
            f"{uri}/api/v1/search/", headers={"Authorization": f"Apikey {key}"}
        )
    assert wrong.status_code == 401
    assert right.status_code == 200
    catalog = RemoteCatalog(uri, api_key=key)
    try:
        RE.subscribe(catalog.writer)
        with XspressSimulator(channels=2, pace=False) as sim:
            with init_devices():
                xspress = XspressDetector(
                    tango=sim.tango_trl,
                    stream=sim.stream_endpoint,
                    path=data,
                    name="xspress",
                )
            uid = _uid(RE(fly_scan(xspress, FLY_FRAMES, 0.001)))
            sent = [sim.control.expected_frame(0, i) for i in range(FLY_FRAMES)]
        run = catalog[-1]
        assert run.start["uid"] == uid
        primary = run["primary"]
        spectra = np.asarray(primary["xspress"].read())
        assert spectra.dtype == np.uint32
        for i, frame in enumerate(sent):
            assert np.array_equal(spectra[i], frame.spectra), i
        all_good = np.asarray(primary["xspress-all_good"].read())
        assert np.array_equal(all_good, np.stack([f["all_good"] for f in sent]))
        dtc = np.asarray(primary["xspress-dead_time_correction"].read())
        assert np.array_equal(dtc, np.stack([f["dead_time_correction"] for f in sent]))
        assert list(catalog.search(plan_name="xspress_fly")) == [uid]
    finally:
        catalog.close()
    assert sys.executable  # (the server ran in its own process)
