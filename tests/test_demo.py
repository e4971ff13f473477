"""The README's main job: ``ophyd-xspress demo`` runs and writes real plots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.image import imread


def test_demo_command_writes_table_uids_and_plots(tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ophyd_xspress",
            "demo",
            "--frames",
            "200",
            "--points",
            "3",
            "--output",
            str(tmp_path / "plots"),
            "--data-dir",
            str(tmp_path / "data"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "fly scan, 200 frames, per channel" in out
    assert "count run uid:" in out
    assert "fly run uid:" in out
    assert "['primary']['xspress'].read()" in out
    # one table row per channel, with the dead time in a plausible range
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    table = [r for r in rows if len(r) == 8]
    assert [int(r[0]) for r in table] == [0, 1, 2, 3]
    assert all(0 < float(r[5]) < 60 for r in table), table
    assert "fly map: 16 x 8 pixels" in out
    # the lines the demo prints read the runs back, from a new server
    lines = out.split("read them back")[1].splitlines()[1:]
    code = "\n".join(line[4:] for line in lines if line.startswith("    "))
    code += "\nprint(spectra.shape, dtc.shape, fe.shape)\ncatalog.close()"
    again = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.split("\n")[-2] == "(200, 4, 4096) (3, 4) (8, 16)"
    for name in ("spectra.png", "deadtime.png", "map.png"):
        path = tmp_path / "plots" / name
        assert path.stat().st_size > 20_000, f"{name} is suspiciously small"
        image = imread(path)
        assert image.shape[0] > 400
        assert image.shape[1] > 800
        # a real plot: many distinct colours, not a blank canvas
        assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 50
