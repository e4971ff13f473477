"""``ophyd-xspress demo``: the simulator, a count, a fly scan, a table and plots."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from .._constants import SIM_MAX_CHANNELS

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--channels",
        type=int,
        default=4,
        help=f"1..{SIM_MAX_CHANNELS} (default 4)",
    )
    parser.add_argument("--points", type=int, default=5, help="count points")
    parser.add_argument("--frames", type=int, default=500, help="fly-scan frames")
    parser.add_argument(
        "--exposure", type=float, default=0.05, help="count exposure (s)"
    )
    parser.add_argument(
        "--fly-exposure", type=float, default=0.002, help="fly-scan frame time (s)"
    )
    parser.add_argument(
        "--output", default="xspress-demo", help="folder for the PNG plots"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="catalog + HDF5 folder (default: the user data dir)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


#: The demo's catalog, plots and tables come with an extra.
MISSING_EXTRA = (
    "ophyd-xspress demo: error: the demo needs the 'demo' extra ({missing} is not "
    "installed): pip install 'ophyd-xspress[demo]'"
)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    for module in ("tiled", "bluesky_tiled_plugins", "matplotlib"):
        if importlib.util.find_spec(module) is None:
            print(MISSING_EXTRA.format(missing=module), file=sys.stderr)
            return 2
    if not 1 <= args.channels <= SIM_MAX_CHANNELS:
        print(
            f"ophyd-xspress demo: error: --channels must be 1..{SIM_MAX_CHANNELS}",
            file=sys.stderr,
        )
        return 2
    result = run_demo(
        channels=args.channels,
        points=args.points,
        frames=args.frames,
        exposure=args.exposure,
        fly_exposure=args.fly_exposure,
        output=args.output,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    print(f"done in {result.seconds:.1f} s")
    return 0
