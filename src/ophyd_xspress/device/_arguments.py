"""Checks of :class:`~ophyd_xspress.device.XspressDetector`'s arguments.

A bad argument fails at construction, and its error names the argument: a
NaN ``stall_timeout`` would otherwise switch stall detection off, and
``channels=0`` would silently mean 4. ROI names become data keys
(``<detector>-<roi>``, ``<detector>-<roi>-ch<c>``), so a name that gives one of
the detector's own keys is refused; the reserved names are derived from the
data schema (:mod:`ophyd_xspress._schema`), never typed here.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

from .._schema import QUANTITIES, SUMMARY_KEYS
from ..protocol import MAX_BINS, MAX_CHANNELS, Calibration

__all__ = [
    "RESERVED_ROI_NAMES",
    "check_bins",
    "check_calibration",
    "check_channels",
    "check_count",
    "check_data_mode",
    "check_roi_names",
    "check_seconds",
    "naming",
]

#: The placeholder for an ROI's name in :data:`SUMMARY_KEYS` patterns.
_ROI: Final = "<roi>"


def _own_keys() -> set[str]:
    """The detector's own data-key suffixes (patterns included)."""
    own = {q.suffix for q in QUANTITIES if q.suffix}
    own.update(pattern for pattern, *_ in SUMMARY_KEYS if _ROI not in pattern)
    return own


def _names_giving(key: str) -> Iterator[str]:
    """ROI names whose summary keys would include ``key``."""
    for pattern, *_ in SUMMARY_KEYS:
        if _ROI not in pattern:
            continue
        before, after = pattern.split(_ROI)
        if (
            key.startswith(before)
            and key.endswith(after)
            and len(key) > len(before) + len(after)
        ):
            yield key[len(before) : len(key) - len(after)]


#: ROI names that would give a data key the detector already has
#: (``dtc``, ``roi``, ``frame_number``, ``anomalies``, ...).
RESERVED_ROI_NAMES: Final = tuple(
    sorted(
        {
            name
            for key in _own_keys()
            for name in _names_giving(key)
            if re.fullmatch(r"\w+", name)  # the others are no valid ROI name anyway
        }
    )
)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_seconds(argument: str, value: object) -> float:
    """``value`` as a finite number of seconds > 0 (numpy numbers accepted)."""
    if not _is_real(value):
        raise TypeError(f"{argument} must be a number of seconds, got {value!r}")
    seconds = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(
            f"{argument} must be a finite number of seconds > 0, got {value!r}"
        )
    return seconds


def check_count(argument: str, value: object, high: int) -> int:
    """``value`` as an integer in ``1..high`` (numpy integers accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument} must be an integer, got {value!r}")
    count = int(value)
    if not 1 <= count <= high:
        raise ValueError(f"{argument} must be in 1..{high}, got {count}")
    return count


def check_channels(value: object) -> int:
    return check_count("channels", value, MAX_CHANNELS)


def check_bins(value: object) -> int:
    return check_count("bins", value, MAX_BINS)


def check_calibration(value: object) -> Calibration | tuple[Calibration, ...]:
    """``calibration=(eV per bin, offset eV)`` as a :class:`Calibration`, or
    one such pair per channel as a tuple of them."""
    if isinstance(value, Calibration):
        return value
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(
            isinstance(v, Calibration | Sequence) and not isinstance(v, str)
            for v in value
        )
    ):
        return tuple(
            _one_calibration(v, f"calibration[{c}]") for c, v in enumerate(value)
        )
    return _one_calibration(value, "calibration")


def _one_calibration(value: object, argument: str) -> Calibration:
    if isinstance(value, Calibration):
        return value
    try:
        gain, offset = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise TypeError(
            f"{argument} must be (eV per bin, offset eV), got {value!r}"
        ) from None
    if not (_is_real(gain) and _is_real(offset)):
        raise TypeError(
            f"{argument} must be (eV per bin, offset eV) numbers, got {value!r}"
        )
    try:
        return Calibration(float(gain), float(offset))
    except ValueError as exc:
        raise ValueError(f"{argument}={value!r}: {exc}") from exc


def check_roi_names(rois: object, bin_rois: object) -> None:
    """ROI names are strings, none is reserved, none is in both arguments."""
    seen: dict[str, str] = {}
    for argument, spec in (("rois", rois), ("bin_rois", bin_rois)):
        if spec is None:
            continue
        if not isinstance(spec, Mapping):
            raise TypeError(
                f"{argument} must map ROI names to windows, got {type(spec).__name__}"
            )
        for name in spec:
            if not isinstance(name, str):
                raise TypeError(
                    f"{argument}: ROI names must be strings, got {name!r} "
                    f"({type(name).__name__})"
                )
            if name in RESERVED_ROI_NAMES:
                raise ValueError(
                    f"{argument}: ROI name {name!r} would overwrite one of the "
                    "detector's own data keys; reserved names: "
                    + ", ".join(RESERVED_ROI_NAMES)
                )
            if name in seen:
                raise ValueError(
                    f"ROI name {name!r} is in both {seen[name]}= and {argument}=: "
                    "ROI names must be unique (each becomes a data key)"
                )
            seen[name] = argument


@contextlib.contextmanager
def naming(argument: str) -> Iterator[None]:
    """Prefix a ``ValueError`` / ``TypeError`` raised inside with ``argument``
    (for checks made by code that does not know the argument's name)."""
    try:
        yield
    except TypeError as exc:
        raise TypeError(f"{argument}: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{argument}: {exc}") from exc


def check_data_mode(data: object) -> None:
    """``data`` is one of the three modes."""
    if data not in ("auto", "inline", "hdf5"):
        raise ValueError(f"data must be 'auto', 'inline' or 'hdf5', not {data!r}")
