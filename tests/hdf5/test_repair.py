"""After the writing process is killed, the file opens with plain
``h5py.File(path)`` once repaired (at the next stage in that directory, when
the catalog starts, or with ``ophyd-xspress repair``), and every row whose
``frame_number`` is >= 0 is whole. A file whose writer lives is never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - the compressed case's filter, as readers import it
import numpy as np
import pytest
from tests.hdf5.conftest import sim_frames

from ophyd_xspress._schema import GROUP
from ophyd_xspress.hdf5 import Hdf5FrameWriter, repair, repair_leftovers
from ophyd_xspress.hdf5._repair import clear_status_flags, status_flags

CH, BINS = 4, 4096
WINDOWS = np.array([[[100, 199], [500, 1500]]] * CH)
ROOT = Path(__file__).resolve().parents[2]

#: A process writing 4000 frames (150 distinct ones, as the tests make them) at
#: about 2 kHz, printing how many rows are durable, until it is killed.
WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from ophyd_xspress.hdf5 import Hdf5FrameWriter
    from tests.hdf5.conftest import sim_frames

    frames = sim_frames(150)
    compression = sys.argv[2] if sys.argv[2] != "none" else None
    windows = np.array([[[100, 199], [500, 1500]]] * 4)
    writer = Hdf5FrameWriter(
        sys.argv[1], 4, 4096, windows, expected=4000, compression=compression
    )
    writer.open()
    for i in range(4000):
        writer.put(i, frames[i % 150])
        if i % 20 == 19:
            writer.flush()
            print(writer.durable.prefix(), flush=True)
            time.sleep(0.01)
    """
)


def kill_mid_run(path: Path, compression: str) -> int:
    """Run the writer in a process, kill it (SIGKILL) once 300 rows are
    durable; returns the rows it had reported durable."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), compression],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    durable = 0
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            durable = int(line)
            if durable >= 300 or time.monotonic() > deadline:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return durable


@pytest.mark.parametrize("compression", ["none", "bslz4"])
def test_a_killed_writers_file_opens_plainly_once_repaired(
    tmp_path: Path, compression: str
) -> None:
    path = tmp_path / "killed.h5"
    durable = kill_mid_run(path, compression)
    assert durable >= 300
    marker = path.with_name("killed.h5.writing")
    assert marker.exists()
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path)
    assert status_flags(path)
    (result,) = repair_leftovers(tmp_path)  # what the next stage does
    assert result.repaired
    assert result.path == path
    assert not marker.exists()
    assert status_flags(path) == 0
    frames = sim_frames(150)
    with h5py.File(path) as f:  # plain h5py
        g = f[GROUP]
        numbers = g["frame_number"][:]
        marked = np.flatnonzero(numbers >= 0)
        # every row reported durable is marked; marked rows form a prefix
        assert len(marked) >= durable
        np.testing.assert_array_equal(marked, np.arange(len(marked)))
        assert len(marked) < 4000
        data = g["data"][: len(marked)]
        all_good = g["all_good"][: len(marked)]
        for r in marked:
            frame = frames[r % 150]
            assert numbers[r] == frame.frame
            np.testing.assert_array_equal(data[r], frame.spectra, err_msg=str(r))
            np.testing.assert_array_equal(all_good[r], frame["all_good"])
        # PyMca's per-channel views read too
        assert f["/entry/instrument/xspress3_ch2/data"].shape[0] == 4000
    assert repair(path).repaired is False  # nothing left to do


def test_a_living_writers_file_is_left_alone(tmp_path: Path, frames) -> None:
    path = tmp_path / "alive.h5"
    writer = Hdf5FrameWriter(path, CH, BINS, WINDOWS, expected=20)
    writer.open()
    try:
        writer.put(0, frames[0])
        result = repair(path)
        assert not result.repaired
        assert result.reason.startswith(f"being written by pid {os.getpid()} on ")
        assert repair_leftovers(tmp_path)[0].repaired is False
        with pytest.raises(FileExistsError, match="being written by another writer"):
            Hdf5FrameWriter(path, CH, BINS, WINDOWS).open()
    finally:
        writer.close()
    assert not path.with_name("alive.h5.writing").exists()  # a clean close
    with h5py.File(path) as f:
        assert f[GROUP]["frame_number"][0] == 0
    assert repair_leftovers(tmp_path) == []


def test_only_a_sound_superblock_is_changed(tmp_path: Path) -> None:
    not_hdf5 = tmp_path / "a.h5"
    not_hdf5.write_bytes(b"hello" * 100)
    with pytest.raises(ValueError, match="not an HDF5 file"):
        clear_status_flags(not_hdf5)
    assert "not an HDF5 file" in repair(not_hdf5).reason
    path = tmp_path / "b.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["x"] = 1
    raw = bytearray(path.read_bytes())
    raw[11] = 0x05  # the write flags, without the checksum that goes with them
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum is wrong"):
        clear_status_flags(path)
    assert path.read_bytes() == bytes(raw)  # untouched


def test_the_repair_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ophyd_xspress.cli import main

    path = tmp_path / "killed.h5"
    kill_mid_run(path, "none")
    assert main(["repair", str(path)]) == 0
    assert capsys.readouterr().out == (
        f"{path}: repaired (rows with frame_number >= 0 are whole)\n"
    )
    with h5py.File(path) as f:
        assert (f[GROUP]["frame_number"][:300] >= 0).all()
    assert main(["repair", str(tmp_path)]) == 0  # a directory: nothing left
    assert capsys.readouterr().out == "no file left by a killed writer\n"
    assert main(["repair", str(tmp_path / "missing.h5")]) == 1
    assert "not repaired: no such file" in capsys.readouterr().out
