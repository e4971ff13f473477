"""The writer thread: the derived datasets are :func:`derive` on what was
written, rows become durable only once flushed, a failed flush fails the
writer, a listener's bug does not."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from ophyd_xspress._schema import GROUP, QUANTITIES
from ophyd_xspress.hdf5 import Hdf5FrameWriter
from ophyd_xspress.hdf5._thread import coalesce, present_runs
from ophyd_xspress.protocol import derive

CH, BINS = 4, 4096
WINDOWS = np.array([[[100, 199], [500, 1500], [0, 4095]]] * CH)
DERIVED = [q.dataset for q in QUANTITIES if q.source == "derived"]


def test_derived_datasets_are_derive_on_the_written_scalers(
    tmp_path: Path, frames
) -> None:
    # dtc beside the stream's own dead_time_correction; rows never received
    # (40-47) hold zeros, not NaN; the summed spectrum too
    path = tmp_path / "a.h5"
    writer = Hdf5FrameWriter(path, CH, BINS, WINDOWS, expected=64, summed_spectrum=True)
    writer.open()
    for row in [*range(40), *range(48, 64)]:
        writer.put(row, frames[row])
    writer.close()
    with h5py.File(path, "r") as f:
        g = f[GROUP]
        assert set(DERIVED) <= set(g)
        scalers = {q.dataset: g[q.dataset][:] for q in QUANTITIES if q.shape == ("C",)}
        spectra = g["data"][:]
        stored = {name: g[name][:] for name in DERIVED}
        np.testing.assert_array_equal(
            g["dead_time_correction"][:40],
            [frames[r]["dead_time_correction"] for r in range(40)],
        )
    got = np.concatenate([np.arange(40), np.arange(48, 64)])
    expected = derive(scalers, spectra, WINDOWS, warn=False, summed=True).columns()
    assert set(expected) == set(DERIVED)
    for name in DERIVED:
        np.testing.assert_array_equal(stored[name][got], expected[name][got], name)
        assert not stored[name][40:48].any(), name
    assert np.isfinite(stored["dtc"][got]).all()
    assert (stored["dtc"][got] > 1).all()


def test_a_failed_flush_fails_the_writer_and_nothing_counts(
    tmp_path: Path, frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_flush(self: h5py.File) -> None:
        raise OSError(5, "Input/output error")

    writer = Hdf5FrameWriter(tmp_path / "b.h5", CH, BINS, WINDOWS, expected=16)
    writer.open()
    told: list[BaseException | None] = []
    writer.durable.subscribe(lambda: told.append(writer.durable.error))
    monkeypatch.setattr(h5py.File, "flush", broken_flush)
    for row in range(16):
        writer.put(row, frames[row])
    with pytest.raises(OSError, match="Input/output error"):
        writer.close()  # the error was never reported by put/flush
    assert isinstance(writer.durable.error, OSError)
    assert told == [writer.durable.error]
    assert writer.frames_written == 0


def test_a_listeners_bug_does_not_stop_the_writer(
    tmp_path: Path, frames, caplog: pytest.LogCaptureFixture
) -> None:
    def buggy() -> None:
        raise ZeroDivisionError("a listener's bug")

    writer = Hdf5FrameWriter(tmp_path / "c.h5", CH, BINS, WINDOWS, expected=32)
    writer.open()
    writer.durable.subscribe(buggy)
    with caplog.at_level(logging.ERROR, logger="ophyd_xspress.hdf5"):
        for row in range(32):
            writer.put(row, frames[row])
        writer.close()
    assert writer.error is None
    assert writer.durable.prefix() == 32
    assert "a durable-rows listener failed" in caplog.text


def test_present_runs_are_the_rows_to_report() -> None:
    present = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1], bool)
    assert present_runs(100, present) == [(100, 2), (103, 1), (106, 3)]
    assert present_runs(5, np.ones(4, bool)) == [(5, 4)]
    assert present_runs(5, np.zeros(4, bool)) == []
    assert present_runs(5, np.zeros(0, bool)) == []


def test_coalesce_merges_touching_ranges() -> None:
    assert coalesce([(10, 5), (0, 10), (20, 1), (21, 2), (15, 2)]) == [
        (0, 17),
        (20, 3),
    ]
    assert coalesce([(0, 10), (2, 3)]) == [(0, 10)]  # overlapping: a straggler
    assert coalesce([]) == []
