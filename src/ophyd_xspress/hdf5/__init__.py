"""HDF5 writer for a run's frames, laid out as the MAX IV Xspress3 device writes.

Every dataset is under ``/entry/instrument/xspress3/`` (:data:`GROUP`), one
row per frame of the run; the datasets, their dtypes and units are the rows of
:data:`ophyd_xspress._schema.QUANTITIES` (``data``: the raw spectra; the raw
scalers and the stream's own ``dead_time_correction``, as sent; ``dtc``, the
rates, live time and ROI sums derived by :func:`ophyd_xspress.protocol.derive`;
``frame_number``). Row ``i`` holds frame ``i`` of the run whatever order frames
arrive in; rows of frames never received stay zero and ``frame_number`` -1.

How a frame reaches the disk, at the detector's full rate:

1. :class:`Hdf5FrameWriter` (``_writer``), the facade the receiver thread calls:
   ``put(row, frame)``, ``flush()``.
2. ``_blocks``: the frame is copied into a preallocated block of rows (spectra,
   and the raw metadata pickle when its layout is known); full blocks, or a
   partial block once ``flush_period`` old, go to the writer thread through a
   bounded pool (back-pressure, no unbounded memory).
3. ``_thread``: the writer thread writes each block with one call per dataset,
   the physics derived for the whole block at once, and flushes the file
   (SWMR) at most every ``flush_period``; only then are the rows durable
   (:attr:`Hdf5FrameWriter.durable`), so a reader (tiled) never sees a row
   promised but not on disk.
4. ``_chunk_io``: the spectra of the rows allocated when the file was opened
   (a fly scan's known length) go straight into their chunks with
   ``os.pwrite``, ``O_DIRECT`` where possible (no GIL held, no page-cache
   copy); rows beyond those go through HDF5 as whole chunks.

``_layout`` creates the file and its datasets from the schema.
"""

from .._schema import GROUP
from ._blocks import PREFAULT_BLOCKS, STUCK_TIMEOUT
from ._layout import SCALERS, DatasetSpec, dataset_specs
from ._stats import WriterStats
from ._writer import Hdf5FrameWriter, SpectraIO

__all__ = [
    "GROUP",
    "PREFAULT_BLOCKS",
    "SCALERS",
    "STUCK_TIMEOUT",
    "DatasetSpec",
    "Hdf5FrameWriter",
    "SpectraIO",
    "WriterStats",
    "dataset_specs",
]
