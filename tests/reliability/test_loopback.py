"""A simulator started with its defaults must never listen beyond loopback.

This looks at the sockets themselves (``psutil``), not at the endpoint strings.
pytango allows one device server per process at a time, so this test makes its
own simulator and uses no ``sim`` fixture.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

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


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listening_of(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["sim", "--tango"], id="sim --tango"),
        pytest.param(["replay", "CAPTURE", "--wait-for-peer"], id="replay"),
    ],
)
def test_cli_defaults_listen_only_on_loopback(args: list[str], tmp_path: Path) -> None:
    """``ophyd-xspress sim --tango`` and ``ophyd-xspress replay`` with their
    default endpoints (ports 9999 / 9998): every socket the process listens on
    is on 127.0.0.1."""
    if not (_port_free(9999) and _port_free(9998)):
        pytest.skip("ports 9999/9998 are taken on this machine")
    if "CAPTURE" in args:
        from ophyd_xspress.protocol import SeriesEndMessage, StreamEncoder
        from ophyd_xspress.sim import SimulatedXspress3
        from ophyd_xspress.tools import write_capture

        encoder = StreamEncoder("multipart")
        sim = SimulatedXspress3(channels=1, pace=False)
        capture = tmp_path / "one.cbors"
        write_capture(
            capture,
            [
                *encoder.encode(sim.header()),
                *encoder.encode(sim.expected_frame(0, 0)),
                *encoder.encode(SeriesEndMessage()),
            ],
        )
        args = [str(capture) if a == "CAPTURE" else a for a in args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ophyd_xspress.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        expected = {9999} | ({9998} if args[0] == "sim" else set())
        deadline = time.monotonic() + 60
        opened: set[tuple[str, int]] = set()
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            opened = _listening_of(proc.pid)
            ports = {port for _, port in opened}
            # and the Tango device server's port, besides the two of the stream
            if expected <= ports and (args[0] != "sim" or len(ports) > 2):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"never listened on {expected}: {opened}")
        assert {ip for ip, _ in opened} == {"127.0.0.1"}, opened
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
