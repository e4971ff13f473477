"""A file left open by a writer that died, made readable with plain h5py again.

While a file is open for writing, HDF5 keeps flags in its superblock ("open for
write", "SWMR writer") so that no other program writes it, or reads it without
SWMR. A writer that ends normally clears them; a killed one cannot, and
``h5py.File(path)`` then refuses the file ("file is already open for write").
What the writer flushed is consistent (SWMR keeps the file readable at every
flush), and a row whose ``frame_number`` is >= 0 is whole (the writer marks a
row only once its spectra and scalers are on disk): clearing the flags, as
HDF5's ``h5clear -s`` does, is all such a file needs.

Only a file whose writer is gone may be repaired. Each writer announces itself
in a sidecar, ``<file>.writing``, locked (``flock``) for as long as it lives:
a lock that can be taken means the writer is gone. :func:`repair` clears the
flags of one file, :func:`repair_leftovers` of every file a dead writer left
in a directory: the HDF5 data logic calls it before it opens a new file there
(the next stage), :class:`~ophyd_xspress.catalog.LocalCatalog` when it starts,
and ``ophyd-xspress repair FILE`` on request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "MARKER_SUFFIX",
    "RepairResult",
    "WriterMarker",
    "clear_status_flags",
    "repair",
    "repair_leftovers",
    "status_flags",
]

log = logging.getLogger("ophyd_xspress.hdf5")

#: The sidecar of a file being written.
MARKER_SUFFIX: Final = ".writing"

_SIGNATURE: Final = b"\x89HDF\r\n\x1a\n"
#: Superblock status flags: open for write, open by a SWMR writer.
_WRITE_FLAGS: Final = 0x01 | 0x04

try:
    import fcntl
except ImportError:  # not on Windows: no markers, repair only on request
    fcntl = None  # type: ignore[assignment]


def marker_path(path: Path) -> Path:
    return path.with_name(path.name + MARKER_SUFFIX)


class WriterMarker:
    """``<file>.writing``, locked while this process writes ``path``.

    >>> marker = WriterMarker.acquire(path)
    >>> ...                        # write the file
    >>> marker.release()           # once the file is closed
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path) -> WriterMarker:
        """Create and lock the sidecar of ``path`` (a no-op without ``fcntl``)."""
        if fcntl is None:
            return cls(path, None)
        marker = marker_path(path)
        fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FileExistsError(
                f"{path} is being written by another writer ({describe_writer(marker)})"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        return cls(path, fd)

    def release(self) -> None:
        """The file is closed: remove the sidecar (then unlock it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            marker_path(self.path).unlink()
        os.close(fd)


def describe_writer(marker: Path) -> str:
    """Who wrote ``marker`` ("pid 123 on host since 2026-...")."""
    try:
        info = json.loads(marker.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a writer that left no details"


def _writer_alive(marker: Path) -> bool:
    """Whether the sidecar is locked by a living writer."""
    if fcntl is None or not marker.exists():
        return False
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # removed meanwhile: the writer ended
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (also drops the lock just taken)
    return False


def _superblock(f: os.PathLike[str] | str) -> tuple[int, bytearray]:
    """The file offset and bytes (checksum included) of a version 2 or 3
    superblock; raises ValueError for anything else."""
    with open(f, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        # the superblock is at 0 or, after a user block, at 512, 1024, 2048...
        base = 0
        while base + 48 <= size:
            fh.seek(base)
            head = fh.read(12)
            if head[:8] == _SIGNATURE:
                version, offsets = head[8], head[9]
                if version not in (2, 3):
                    raise ValueError(
                        f"{f}: superblock version {version} has no status flags "
                        "to clear (only versions 2 and 3 do)"
                    )
                fh.seek(base)
                return base, bytearray(fh.read(12 + 4 * offsets + 4))
            base = 512 if base == 0 else base * 2
    raise ValueError(f"{f}: not an HDF5 file (no superblock signature)")


def _checksum(data: bytes) -> bytes:
    """HDF5's metadata checksum (Jenkins lookup3, little-endian)."""
    from numcodecs.checksum32 import JenkinsLookup3

    return bytes(JenkinsLookup3().encode(data))[-4:]


def status_flags(path: os.PathLike[str] | str) -> int:
    """The superblock's status flags (0 for a file closed normally)."""
    _, block = _superblock(path)
    return block[11]


def clear_status_flags(path: os.PathLike[str] | str) -> bool:
    """Clear the write flags a dead writer left; False if none were set.

    Raises ValueError when the superblock's checksum is wrong (the file is
    damaged otherwise: it is not touched)."""
    base, block = _superblock(path)
    body, stored = bytes(block[:-4]), bytes(block[-4:])
    if _checksum(body) != stored:
        raise ValueError(f"{path}: the superblock's checksum is wrong; not changed")
    if not block[11] & _WRITE_FLAGS:
        return False
    block[11] = 0
    fixed = bytes(block[:-4])
    with open(path, "r+b") as fh:
        fh.seek(base + 11)
        fh.write(b"\x00")
        fh.seek(base + len(fixed))
        fh.write(_checksum(fixed))
        fh.flush()
        os.fsync(fh.fileno())
    return True


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair` did to one file."""

    path: Path
    #: The write flags were set and are now cleared.
    repaired: bool
    #: Why nothing was done, or "" when the file is fine now.
    reason: str = ""


def repair(path: os.PathLike[str] | str) -> RepairResult:
    """Make ``path`` readable with plain ``h5py.File(path)`` if its writer is
    gone: clear the superblock's write flags, remove the writer's sidecar."""
    path = Path(path)
    marker = marker_path(path)
    if _writer_alive(marker):
        return RepairResult(path, False, f"being written by {describe_writer(marker)}")
    if not path.exists():
        marker.unlink(missing_ok=True)
        return RepairResult(path, False, "no such file")
    try:
        repaired = clear_status_flags(path)
    except (OSError, ValueError) as exc:
        return RepairResult(path, False, str(exc))
    marker.unlink(missing_ok=True)
    if repaired:
        log.warning(
            "%s: left open by a writer that ended without closing it; its write "
            "flags are cleared (rows with frame_number >= 0 are whole)",
            path,
        )
    return RepairResult(path, repaired)


def repair_leftovers(directory: os.PathLike[str] | str) -> list[RepairResult]:
    """:func:`repair` every file of ``directory`` whose sidecar a dead writer
    left (files being written are left alone)."""
    try:
        entries = [e.name for e in os.scandir(directory)]
    except FileNotFoundError:
        return []
    results: list[RepairResult] = []
    for name in entries:
        if name.endswith(MARKER_SUFFIX):
            target = Path(directory) / name[: -len(MARKER_SUFFIX)]
            result = repair(target)
            if result.reason and "being written" not in result.reason:
                log.warning("%s: not repaired: %s", target, result.reason)
            results.append(result)
    return results
