"""A simulator started with its defaults must never listen beyond loopback.

This looks at the sockets themselves (``psutil``), not at the endpoint strings.
pytango allows one device server per process at a time, so this test makes its
own simulator and uses no ``sim`` fixture.
"""

from __future__ import annotations

import re
import time

import psutil

from ophyd_xspress.sim import XspressSimulator


def _listening() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_default_simulator_listens_only_on_loopback() -> None:
    before = _listening()
    sim = XspressSimulator()  # defaults: stream, and the Tango device server
    sim.start()
    try:
        opened = _listening() - before
        stream_port = int(sim.stream_endpoint.rsplit(":", 1)[1])
        match = re.match(r"tango://([^:/]+):(\d+)/", sim.tango_trl)
        assert match is not None, sim.tango_trl
        tango_port = int(match.group(2))
    finally:
        sim.faults.release()
        sim.close()
    ports = {port for _, port in opened}
    assert stream_port in ports, (sim.stream_endpoint, opened)
    assert tango_port in ports, (sim.tango_trl, opened)
    assert {ip for ip, _ in opened} == {"127.0.0.1"}, opened
    # and they are gone once it is closed (the ORB and libzmq close their
    # listening sockets on their own threads, shortly after close() returns)
    deadline = time.monotonic() + 5
    while opened & _listening() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not (opened & _listening())
