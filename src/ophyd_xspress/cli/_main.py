"""Entry point: ``ophyd-xspress SUBCOMMAND ...``.

Each subcommand lives in its own module and is imported only when used, so that
``inspect`` starts quickly and needs no control-system libraries.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: subcommand -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("._demo", "run the simulator demo: count, fly scan, catalog, plots"),
    "inspect": ("._inspect", "summarise a recorded stream capture (.cbors)"),
    "listen": ("._listen", "live statistics of a detector stream"),
    "repair": ("._repair", "make HDF5 files a killed writer left readable again"),
    "replay": ("._replay", "send a recorded capture on a ZeroMQ socket"),
    "sim": ("._sim", "run the simulated Xspress3 (stream, optional Tango device)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ophyd-xspress",
        description="Xspress3 / Xspress3-Mini detectors in Bluesky: tools.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module, __package__)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (
        logging.WARNING
        if args.verbose == 0
        else logging.INFO
        if args.verbose == 1
        else logging.DEBUG
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._module.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
