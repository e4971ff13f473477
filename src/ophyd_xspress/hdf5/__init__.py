"""HDF5 writer for a run's frames, laid out as the MAX IV Xspress3 device writes.

Every dataset is under ``/entry/instrument/xspress3/`` (:data:`GROUP`), one
row per frame of the run; the datasets, their dtypes and units are the rows of
:data:`ophyd_xspress._schema.QUANTITIES` (``data``: the raw spectra; the raw
scalers, the stream's own ``dead_time_correction`` and ``output_count_rate``,
as sent; ``dtc``, the rates, times and ROI sums derived by
:func:`ophyd_xspress.protocol.derive`; ``frame_number``). Beside them, the
bin index, the per-channel calibration and one NXdetector group per channel
for PyMca. Row ``i`` holds frame ``i`` of the run whatever order frames
arrive in; rows of frames never received stay zero and ``frame_number`` -1.

How a frame reaches the disk, at the detector's full rate:

1. :class:`Hdf5FrameWriter` (``_writer``), the facade the receiver thread calls:
   ``put(row, frame)`` (a frame whose values the file's dtypes would change
   is refused, ``_lossless``), ``flush()``.
2. ``_blocks``: the frame is copied into a preallocated block of rows (spectra,
   and the raw metadata pickle when its layout is known); full blocks, or a
   partial block once ``flush_period`` old, go to the writer thread through a
   bounded pool (back-pressure, no unbounded memory).
3. ``_thread``: the writer thread writes each block with one call per dataset,
   the physics derived for the whole block at once; at most every
   ``flush_period`` it flushes the file, then marks the rows with their frame
   numbers and flushes again: only then are the rows durable
   (:attr:`Hdf5FrameWriter.durable`), so a row with ``frame_number >= 0`` is
   whole, and a reader (tiled) never sees a row promised but not on disk.
4. ``_chunk_io``: the spectra of the rows allocated when the file was opened
   (a fly scan's known length, uncompressed) go straight into their chunks
   with ``os.pwrite``, ``O_DIRECT`` where possible (no GIL held, no
   page-cache copy); ``_codec``: other rows go through HDF5 as whole chunks,
   compressed by a small pool when the file is (``bslz4``, ``blosc``, ``gzip``).

``_layout`` creates the file and its datasets from the schema; ``_repair``
makes a file a killed writer left readable with plain ``h5py.File`` again.
"""

from .._schema import GROUP
from ._blocks import PREFAULT_BLOCKS, STUCK_TIMEOUT
from ._codec import COMPRESSIONS, DEFAULT_COMPRESSION, Compression
from ._layout import SCALERS, DatasetSpec, check_storage, dataset_specs
from ._repair import RepairResult, repair, repair_leftovers
from ._stats import WriterStats
from ._writer import Hdf5FrameWriter, SpectraIO

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "GROUP",
    "PREFAULT_BLOCKS",
    "SCALERS",
    "STUCK_TIMEOUT",
    "Compression",
    "DatasetSpec",
    "Hdf5FrameWriter",
    "RepairResult",
    "SpectraIO",
    "WriterStats",
    "check_storage",
    "dataset_specs",
    "repair",
    "repair_leftovers",
]
