"""The device's own HDF5 file: what the MAX IV device writes when ``WriteHdf5``.

On the real device (``xspress3/DeviceServer.py`` 324-331 and
``xspress3/Receivers.py`` 64-130 in maxiv-science/xspress3-streamer) every
``Arm`` with ``WriteHdf5`` true and a ``DestinationFileName`` starts a
*disposable* receiver: a subscriber to the device's own stream that writes
one file per series and ends at ``series_end``. :class:`DeviceFileWriter` is
that receiver, fed in-process with the messages the simulator publishes
(after its fault injection, so it sees the same stream as any subscriber) on
its own thread, and, like a subscriber at its high-water mark, dropping what
it cannot keep up with rather than slowing the stream.

What it writes, as the device's writer does:

* the header's ``filename``; unless ``overwritable``, while that file exists
  an underscore goes before the first dot of the path (Receivers.py 83-85,
  :func:`device_file_name`);
* ``/entry/instrument/xspress3`` (``NX_class = NXdetector``), created with the
  series' frame 0; one dataset per metadata array, named as the stream names
  it, then ``data`` (the spectra); each ``(frames, *shape)``, chunks of one
  frame, unlimited along frames, grown for every frame received (repeats
  included: the device's writer appends whatever arrives);
* closed at ``series_end``.

Where the device's writer would crash or hang, this one logs, stops writing
the series and closes the file: a frame other than 0 first (its datasets do
not exist yet), an unwritable path, a series that faults (no ``series_end``).
With the multipart firmware the dataset names come from the header's
``extra_tags`` (``window_counts`` included); the source above, the legacy
firmware, knows only the eight scalers.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Final

import h5py
import numpy as np

from ..protocol import Frame, HeaderMessage, Message, SeriesEndMessage, StreamDecoder

__all__ = ["DEVICE_GROUP", "DeviceFileWriter", "device_file_name"]

log = logging.getLogger("ophyd_xspress.sim")

#: Where the device puts everything (Receivers.py 101).
DEVICE_GROUP: Final = "entry/instrument/xspress3"
#: Messages held for the writer thread: a SUB's default receive high-water mark.
QUEUE_MESSAGES: Final = 1000
#: Messages taken from the queue for one write.
_BATCH: Final = 64
_END: Final = object()


def device_file_name(filename: str, overwritable: bool) -> str:
    """The path the device's writer opens for ``filename`` (Receivers.py 79-86):
    ``'none'`` means no file (``''``); a file that exists and may not be
    overwritten gets ``_`` before the first dot of the path, as many times as
    needed (``/tmp/temp.h5`` -> ``/tmp/temp_.h5`` -> ``/tmp/temp__.h5``)."""
    name = "" if filename.lower() == "none" else filename
    if name and not overwritable:
        while os.path.exists(name):
            name = name.split(".")[0] + "_." + name.split(".", maxsplit=1)[-1]
    return name


class _SeriesFile:
    """One open device file: datasets created with frame 0, grown per frame."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = h5py.File(path, "w")
        self.group: h5py.Group | None = None
        self.frames = 0

    def add(self, frames: list[Frame]) -> None:
        if self.group is None:
            if frames[0].frame != 0:
                raise RuntimeError(
                    f"frame {frames[0].frame} arrived before frame 0: the device's "
                    "writer has no datasets to append it to"
                )
            self._create(frames[0])
        group = self.group
        assert group is not None  # created above
        start, self.frames = self.frames, self.frames + len(frames)
        for name, column in _columns(frames).items():
            dataset = group[name]
            assert isinstance(dataset, h5py.Dataset)
            dataset.resize(self.frames, axis=0)
            dataset[start : self.frames] = column

    def _create(self, frame: Frame) -> None:
        group = self.file.create_group(DEVICE_GROUP)
        group.attrs["NX_class"] = "NXdetector"
        for name, array in _arrays(frame).items():
            group.create_dataset(
                name,
                shape=(0, *array.shape),
                maxshape=(None, *array.shape),
                chunks=(1, *array.shape),
                dtype=array.dtype,
            )
        self.group = group

    def close(self) -> None:
        self.file.flush()
        self.file.close()


def _arrays(frame: Frame) -> dict[str, np.ndarray[Any, Any]]:
    """A frame's arrays in the device's order: the metadata, then ``data``."""
    out = {name: np.asarray(a) for name, a in frame.metadata.items()}
    out["data"] = np.asarray(frame.spectra)
    return out


def _columns(frames: list[Frame]) -> dict[str, np.ndarray[Any, Any]]:
    rows = [_arrays(f) for f in frames]
    return {name: np.stack([r[name] for r in rows]) for name in rows[0]}


class DeviceFileWriter:
    """The device's disposable receiver for one series, on its own thread.

    ``put(message)`` from the sending thread (never blocks: a full queue drops
    the message, as a subscriber at its high-water mark does); ``close()``
    waits for the messages already queued, then closes the file.
    ``on_closed(path, frames)`` is called on the writer thread when done.
    """

    def __init__(self, on_closed: Callable[[str, int], None] | None = None) -> None:
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_MESSAGES)
        self._decoder = StreamDecoder()
        self._file: _SeriesFile | None = None
        self._failed = False
        self._on_closed = on_closed
        #: Messages dropped because the writer fell behind.
        self.dropped = 0
        self._thread = threading.Thread(
            target=self._run, name="xspress-sim-device-file", daemon=True
        )
        self._thread.start()

    def put(self, message: Message) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            if not self.dropped:
                log.warning("simulated device file writer fell behind: dropping")
            self.dropped += 1

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(_END)
        self._thread.join(timeout)

    # -- the writer thread ------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                items = [self._queue.get()]
                while len(items) < _BATCH:  # what else is waiting: one write
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if not self._handle(items):
                    return
        finally:
            self._close()

    def _handle(self, items: list[object]) -> bool:
        """Decode and write ``items``; False at the end of the writer."""
        frames: list[Frame] = []
        for item in items:
            if item is _END:
                self._write(frames)
                return False
            for packet in self._decode(item):
                if isinstance(packet, Frame):
                    frames.append(packet)
                    continue
                self._write(frames)
                frames = []
                if isinstance(packet, HeaderMessage):
                    self._open(packet)
                elif isinstance(packet, SeriesEndMessage):
                    self._close()
        self._write(frames)
        return True

    def _decode(self, message: object) -> list[object]:
        try:
            return list(self._decoder.feed(message))  # type: ignore[arg-type]
        except Exception as exc:  # a damaged message: the decoder resynchronises
            log.debug("simulated device file writer: %s", exc)
            return []

    def _open(self, header: HeaderMessage) -> None:
        self._close()
        self._failed = False
        name = device_file_name(header.filename or "", bool(header.overwritable))
        if not name:
            return
        try:
            self._file = _SeriesFile(name)
        except OSError as exc:
            log.error("simulated device cannot write %s: %s", name, exc)
            self._failed = True

    def _write(self, frames: list[Frame]) -> None:
        if not frames or self._file is None or self._failed:
            return
        try:
            self._file.add(frames)
        except Exception as exc:
            log.error("simulated device file %s: %s", self._file.path, exc)
            self._failed = True

    def _close(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        file.close()
        if self._on_closed is not None:
            self._on_closed(file.path, file.frames)
