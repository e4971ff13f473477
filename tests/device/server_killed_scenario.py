"""A Tango device server killed mid fly scan, then started again: the scenario
``tests/device/test_tango_faults.py`` runs in a child process.

Why a child process: in pytango 10.3 a process that was an asyncio client of
an out-of-process device server and later runs an in-process one (as the
``sim`` fixture does) aborts at exit (omniORB: "terminate called after
throwing an instance of 'CORBA::INV_OBJREF'"), with or without this
package's changes. So the scenario has a process to itself.

``python server_killed_scenario.py DIRECTORY`` starts ``ophyd-xspress sim
--tango`` on fixed ports, runs a 3000-frame fly scan on an
:class:`XspressDetector`, kills the server with SIGKILL 0.5 s in, waits for
``complete()`` to fail, unstages, starts the server again on the same ports
and runs a 20-frame fly scan with the same detector object. It prints one JSON
object of facts (the error, its cause, the times) as its last line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tango
from ophyd_async.core import TriggerInfo

from ophyd_xspress.device import XspressDetector


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``ophyd-xspress sim --tango`` on fixed ports, killed and started again."""

    def __init__(self) -> None:
        self.tango_port, stream_port = free_port(), free_port()
        self.stream = f"tcp://127.0.0.1:{stream_port}"
        self.trl = f"tango://127.0.0.1:{self.tango_port}/sim/xspress3/1#dbase=no"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "ophyd_xspress", "sim", "--tango"),
                *("--tango-port", str(self.tango_port), "--endpoint", self.stream),
                *("--live-view", "none"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                tango.DeviceProxy(self.trl).state()
                return
            except tango.DevFailed:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None


async def fly(det: XspressDetector, frames: int) -> Any:
    """stage, prepare, kickoff; the complete() status."""
    await det.stage()
    await det.prepare(TriggerInfo(number_of_events=frames, livetime=0.001))
    await det.kickoff()
    return det.complete()


async def scenario(server: ServerProcess, directory: Path) -> dict[str, Any]:
    det = XspressDetector(
        server.stream, server.trl, name="xspress", path=directory, stall_timeout=5.0
    )
    await det.connect()
    status = await fly(det, 3000)
    await asyncio.sleep(0.5)
    server.kill()
    killed = time.monotonic()
    facts: dict[str, Any] = {"trl": server.trl, "error": None}
    try:
        await status
    except Exception as exc:
        facts["error_type"] = type(exc).__name__
        facts["error"] = str(exc)
        facts["cause_type"] = type(exc.__cause__).__name__
    facts["noticed_s"] = time.monotonic() - killed
    try:
        await det.unstage()
        facts["unstage_error"] = None
    except Exception as exc:
        facts["unstage_error"] = f"{type(exc).__name__}: {exc}"
    server.start()
    back = time.monotonic()
    status = await fly(det, 20)
    await status
    await det.unstage()
    facts["recovered_s"] = time.monotonic() - back
    facts["frames_after"] = det.run_summaries[-1]["frames_received"]
    return facts


def main() -> None:
    server = ServerProcess()
    server.start()
    try:
        facts = asyncio.run(scenario(server, Path(sys.argv[1])))
    finally:
        server.kill()
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
