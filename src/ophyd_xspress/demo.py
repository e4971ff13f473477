"""The first-hour demo: simulator -> RunEngine -> local catalog -> table and plots.

``ophyd-xspress demo`` (or :func:`run_demo`) starts the simulated Xspress3 with its
Tango device, a RunEngine writing to a local tiled catalog, runs a step scan
(``count``), a short fly scan with a progress bar and a small fly map of the
simulator's phantom sample, reads the runs back from the catalog, prints a
per-channel table and writes three PNG plots (spectra, dead time, the map:
drawn by a :class:`~ophyd_xspress.maps.LiveMap` from the map's documents, the
same images ``read_map`` gives from the catalog, without reading them back).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .sim import DEFAULT_SAMPLE, emission_line, energy_window

__all__ = ["DemoResult", "fly_scan", "run_demo"]

log = logging.getLogger("ophyd_xspress.demo")

#: Software ROIs of the demo (eV): the strongest lines of the default sample,
#: +/- 155 eV (a little more than the detector's FWHM) around Kα1.
DEMO_ROIS = {el: energy_window(el, "Ka1", 155.0) for el in ("Fe", "Cu", "Zn")}
#: Line labels on the spectrum plot (eV).
DEMO_LINES = {
    f"{element} {label}": emission_line(element, line).energy_ev
    for element, line, label in (
        ("Ca", "Ka1", "Kα"),
        ("Mn", "Ka1", "Kα"),
        ("Fe", "Ka1", "Kα"),
        ("Fe", "Kb1", "Kβ"),
        ("Cu", "Ka1", "Kα"),
        ("Zn", "Ka1", "Kα"),
        ("Au", "La1", "Lα"),
    )
} | {"elastic": DEFAULT_SAMPLE.incident_energy_ev}
#: The demo's fly map of the phantom: pixels along x and y, seconds a pixel.
#: The map's cost is mostly the catalog's (an HTTP request per data key and
#: round of writes, ~6 s of the demo whatever the rows); each row adds ~0.3 s.
MAP_PIXELS = (16, 8)
MAP_DWELL = 0.005
#: The fast motor's acceleration time and run-up (s): short, so that a row is
#: mostly flight; the run-up leaves the plan's kickoffs 0.3 s before the first
#: pixel (0.1 s was once too little in CI, with the test suite beside it).
MAP_ACCELERATION = 0.02
MAP_RUN_UP = 0.3


@dataclass
class DemoResult:
    count_uid: str
    fly_uid: str
    map_uid: str
    catalog_uri: str
    data_dir: Path
    plots: list[Path] = field(default_factory=list)
    table: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def fly_scan(
    detector: Any, frames: int, livetime: float, md: dict[str, Any] | None = None
) -> Generator[Any, Any, str]:
    """A minimal fly scan: prepare, kickoff, collect while completing."""
    import bluesky.plan_stubs as bps
    from ophyd_async.core import TriggerInfo

    yield from bps.stage(detector, wait=True)
    uid: str = yield from bps.open_run(md=md or {"plan_name": "xspress_fly"})
    yield from bps.prepare(
        detector, TriggerInfo(number_of_events=frames, livetime=livetime), wait=True
    )
    yield from bps.declare_stream(detector, name="primary", collect=True)
    yield from bps.kickoff(detector, wait=True)
    yield from bps.collect_while_completing([detector], [detector], flush_period=0.5)
    yield from bps.close_run()
    yield from bps.unstage(detector, wait=True)
    return uid


def run_demo(
    *,
    channels: int = 4,
    points: int = 5,
    frames: int = 500,
    exposure: float = 0.05,
    fly_exposure: float = 0.002,
    output: str | Path = "xspress-demo",
    data_dir: str | Path | None = None,
    progress: bool = True,
    out: TextIO = sys.stdout,
) -> DemoResult:
    from .catalog import LocalCatalog, default_directory
    from .maps import plot_map
    from .plots import plot_deadtime, plot_spectra

    t0 = time.monotonic()
    output = Path(output).expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    directory = Path(data_dir) if data_dir is not None else default_directory()
    print(f"catalog and data under {directory}", file=out)
    catalog = LocalCatalog(directory)
    try:
        count_uid, fly_uid, (map_uid, live), rois = _acquire(
            catalog, channels, points, frames, exposure, fly_exposure, progress, out
        )
        fly = catalog[fly_uid]["primary"]
        spectra = np.asarray(fly["xspress"].read())
        dead = np.asarray(fly["xspress-dead_time"].read())
        icr = np.asarray(fly["xspress-icr"].read())
        ocr = np.asarray(fly["xspress-ocr"].read())
        roi = np.asarray(fly["xspress-roi_corrected"].read())
        table = _channel_table(spectra, roi, dead, icr, ocr, list(rois))
        print("", file=out)
        print(_format_table(table, f"fly scan, {frames} frames, per channel"), file=out)
        plots = [
            plot_spectra(
                spectra,
                output / "spectra.png",
                rois=rois,
                lines=DEMO_LINES,
                title=f"Simulated Xspress3, {frames} frames summed",
            ),
            plot_deadtime(dead, icr, ocr, output / "deadtime.png"),
        ]
        title = f"Fly map of the phantom, {MAP_DWELL} s a pixel (dead-time corrected)"
        images = live.images.as_dict()
        plots.append(
            plot_map(live.grid, images, output / "map.png", title=title, dpi=120)
        )
        print("", file=out)
        for p in plots:
            print(f"wrote {p}", file=out)
        _print_read_back(directory, count_uid, fly_uid, map_uid, out)
        return DemoResult(
            count_uid=count_uid,
            fly_uid=fly_uid,
            map_uid=map_uid,
            catalog_uri=catalog.uri,
            data_dir=catalog.data_dir,
            plots=plots,
            table=table,
            seconds=time.monotonic() - t0,
        )
    finally:
        catalog.close()


def _acquire(
    catalog: Any,
    channels: int,
    points: int,
    frames: int,
    exposure: float,
    fly_exposure: float,
    progress: bool,
    out: TextIO,
) -> tuple[str, str, tuple[str, Any], dict[str, Any]]:
    """Simulator + detector: a count, a fly scan and a fly map into
    ``catalog``; returns their uids (the map's with its live map) and the
    detector's ROIs (bins)."""
    from bluesky import RunEngine
    from bluesky.plans import count
    from bluesky.utils import ProgressBarManager
    from ophyd_async.core import init_devices

    from .device import XspressDetector
    from .sim import XspressSimulator

    RE = RunEngine({}, call_returns_result=True)  # noqa: N806 - bluesky convention
    RE.subscribe(catalog.writer)
    # tqdm redraws in place on a terminal; into a pipe or a log file each
    # redraw would be a new line, hundreds of them
    if progress and sys.stderr.isatty():
        RE.waiting_hook = ProgressBarManager()  # pyright: ignore[reportAttributeAccessIssue]
    with XspressSimulator(channels=channels, count_rate=3e5) as sim:
        print(
            f"simulator: stream {sim.stream_endpoint}, Tango {sim.tango_trl}",
            file=out,
        )
        sim.control.exposure_time = exposure + 125e-9
        with init_devices():
            xspress = XspressDetector(
                tango=sim.tango_trl,
                stream=sim.stream_endpoint,
                rois=DEMO_ROIS,
                path=catalog.data_dir,
            )
        print(f"count: {points} points of {exposure} s", file=out)
        count_uid = _uid(RE(count([xspress], points)))
        print(f"fly scan: {frames} frames of {fly_exposure} s", file=out)
        fly_uid = _uid(RE(fly_scan(xspress, frames, fly_exposure)))
        nx, ny = MAP_PIXELS
        print(f"fly map: {nx} x {ny} pixels of {MAP_DWELL} s, the phantom", file=out)
        fly_map = _fly_map(RE, sim, xspress)
        return count_uid, fly_uid, fly_map, dict(xspress.rois)


def _fly_map(RE: Any, sim: Any, xspress: Any) -> tuple[str, Any]:  # noqa: N803
    """A fly map of the built-in phantom: the simulator's sample swapped for
    it, two ``SimMotor`` s moving it, the simulated timing box triggering;
    its uid and the :class:`~ophyd_xspress.maps.LiveMap` that drew it."""
    import bluesky.plan_stubs as bps
    from ophyd_async.core import init_devices
    from ophyd_async.sim import SimMotor

    from .maps import LiveMap, MotorBeam, SimPositionCompare, fly_map
    from .sim import phantom

    with init_devices():
        x = SimMotor(instant=False)
        y = SimMotor()
    RE(bps.mv(x.acceleration_time, MAP_ACCELERATION))
    sim.control.frames.sample = phantom()
    beam = MotorBeam(x, y)
    sim.control.beam = beam
    try:
        with init_devices():
            pcomp = SimPositionCompare(sim.control, beam)
        nx, ny = MAP_PIXELS
        plan = fly_map(
            xspress,
            x,
            (-0.9, 0.9, nx),
            y,
            (-0.9, 0.9, ny),
            dwell=MAP_DWELL,
            pulses=pcomp,
            run_up=MAP_RUN_UP,
        )
        live = LiveMap(show=False)
        return _uid(RE(plan, live)), live
    finally:
        beam.detach()


def _channel_table(
    spectra: Any, roi: Any, dead: Any, icr: Any, ocr: Any, names: list[str]
) -> list[dict[str, float]]:
    """Per channel: counts, corrected ROI sums, mean dead time and rates."""
    counts = np.asarray(spectra).sum(axis=(0, 2))
    table = []
    for c in range(len(counts)):
        table.append(
            {
                "channel": c,
                "counts": float(counts[c]),
                **{
                    f"{n} (corr)": float(roi[:, c, r].sum())
                    for r, n in enumerate(names)
                },
                "dead time %": float(dead[:, c].mean()),
                "ICR (cps)": float(icr[:, c].mean()),
                "OCR (cps)": float(ocr[:, c].mean()),
            }
        )
    return table


def _print_read_back(
    directory: Path, count_uid: str, fly_uid: str, map_uid: str, out: TextIO
) -> None:
    print("", file=out)
    print(f"count run uid: {count_uid}", file=out)
    print(f"fly run uid:   {fly_uid}", file=out)
    print(f"map run uid:   {map_uid}", file=out)
    print(
        "read them back (while this catalog's server runs, or from a new one):",
        file=out,
    )
    print("    from ophyd_xspress.catalog import LocalCatalog", file=out)
    print(f"    catalog = LocalCatalog({str(directory)!r})", file=out)
    print(f"    spectra = catalog[{fly_uid!r}]['primary']['xspress'].read()", file=out)
    print(
        f"    dtc = catalog[{count_uid!r}]['primary']['xspress-dtc'].read()", file=out
    )
    print("    from ophyd_xspress.maps import read_map", file=out)
    print(f"    fe = read_map(catalog[{map_uid!r}]).rois['Fe']  # (ny, nx)", file=out)


def _uid(result: object) -> str:
    """The run-start uid from ``RE(...)`` (a RunEngineResult or a tuple)."""
    uids = getattr(result, "run_start_uids", result)
    return str(uids[0])  # type: ignore[index]


def _format_table(rows: list[dict[str, float]], title: str) -> str:
    if not rows:
        return title
    keys = list(rows[0])
    width = {k: max(len(k), 10) for k in keys}
    lines = [title, "  ".join(k.rjust(width[k]) for k in keys)]
    for row in rows:
        cells = []
        for k in keys:
            v = row[k]
            text = f"{int(v)}" if k in ("channel", "counts") else f"{v:,.1f}"
            cells.append(text.rjust(width[k]))
        lines.append("  ".join(cells))
    return "\n".join(lines)
