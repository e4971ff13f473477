"""``ophyd-xspress repair FILE_OR_DIRECTORY ...``: make files a killed writer
left readable with plain ``h5py.File`` again.

A file still being written (its writer's ``.writing`` sidecar is locked) is
left alone. For a directory, every file a dead writer left there is repaired
(what the next stage in that directory does anyway).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..hdf5 import RepairResult, repair, repair_leftovers

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="FILE_OR_DIRECTORY",
        help="HDF5 files, or directories whose leftovers to repair",
    )


def run(args: argparse.Namespace) -> int:
    results: list[RepairResult] = []
    for name in args.paths:
        path = Path(name)
        results += repair_leftovers(path) if path.is_dir() else [repair(path)]
    failed = 0
    for r in results:
        if r.repaired:
            print(f"{r.path}: repaired (rows with frame_number >= 0 are whole)")
        elif r.reason:
            failed += 1
            print(f"{r.path}: not repaired: {r.reason}")
        else:
            print(f"{r.path}: nothing to repair")
    if not results:
        print("no file left by a killed writer")
    return 1 if failed else 0
