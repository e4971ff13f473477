"""``ophyd-xspress sim``: run the simulated Xspress3 until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .._constants import SIM_MAX_CHANNELS

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--channels",
        type=int,
        default=4,
        help=f"1..{SIM_MAX_CHANNELS} (default 4)",
    )
    parser.add_argument(
        "--endpoint",
        default="tcp://127.0.0.1:9999",
        help="stream PUB endpoint (default %(default)s; loopback unless you say so)",
    )
    parser.add_argument(
        "--live-view",
        default="tcp://127.0.0.1:9998",
        help="REP live-view endpoint (default %(default)s; 'none' to disable)",
    )
    parser.add_argument(
        "--tango",
        action="store_true",
        help="also serve the Xspress3DS Tango device (no Tango database needed)",
    )
    parser.add_argument("--tango-port", type=int, default=0, help="0 = any free port")
    parser.add_argument(
        "--framing", choices=("legacy", "multipart"), default="multipart"
    )
    parser.add_argument(
        "--count-rate",
        type=float,
        default=2e5,
        help="true input rate per channel (cps)",
    )
    parser.add_argument(
        "--free-run",
        type=float,
        metavar="EXPOSURE",
        default=None,
        help="without --tango: arm and stream frames of EXPOSURE s continuously",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--destination-file",
        default="/tmp/temp.h5",
        help="the device's DestinationFileName (default %(default)s, the device's)",
    )
    parser.add_argument(
        "--no-write-hdf5",
        action="store_true",
        help="start with WriteHdf5 off (on the device it starts on: every Arm "
        "writes the device's own file; --free-run never writes it)",
    )


def run(args: argparse.Namespace) -> int:
    from ..sim import SimulatorError, XspressSimulator

    live = None if args.live_view.lower() == "none" else args.live_view
    try:
        sim = XspressSimulator(
            args.channels,
            stream=args.endpoint,
            framing=args.framing,
            tango=args.tango,
            tango_port=args.tango_port,
            live_view=live,
            count_rate=args.count_rate,
            seed=args.seed,
            destination_file_name=args.destination_file,
            write_hdf5=not (args.no_write_hdf5 or args.free_run),
        ).start()
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"ophyd-xspress sim: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print(f"Xspress3 simulator, {args.channels} channels, {args.framing} framing")
        print(f"  stream (SUB connect here): {sim.stream_endpoint}")
        if live:
            print(f"  live view (REQ/REP):       {sim.live_view_endpoint}")
        if args.tango:
            print(f"  Tango device:              {sim.tango_trl}")
            print("  XspressDetector(tango=..., stream=...) with the two lines above")
        else:
            print("  passive use: XspressDetector(stream=...) with the line above")
        print("Ctrl-C to stop.", flush=True)
        det = sim.control
        while not stop.is_set():
            if args.free_run and not args.tango and det.wait_idle(0):
                det.exposure_time = args.free_run
                det.n_triggers, det.n_frames_per_trigger = 1, 1_000_000
                try:
                    det.arm()
                    det.software_trigger()
                except SimulatorError as exc:
                    print(f"simulator refused to arm: {exc}", file=sys.stderr)
                    return 1
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        sim.close()
        print("simulator stopped")
    return 0
