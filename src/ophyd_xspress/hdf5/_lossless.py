"""Whether values can be stored in a dataset's dtype without changing any.

The file is opened for the dtypes the device sends (the schema's). A frame
whose values would change on the way in (a uint64 count of 2**32 + 7 stored as
7, -5 as 4294967291, 2.7 as 2, NaN as 0) is refused with the reason, never
cast: :func:`lossless` says whether a cast keeps every value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["describe_values", "exact_cast", "lossless"]


def exact_cast(source: np.dtype[Any], target: np.dtype[Any]) -> bool:
    """True when every value of ``source`` is exactly representable in
    ``target``. Stricter than numpy's "safe" casting, which lets 64-bit
    integers become float64 (2**60 + 1 becomes 2**60)."""
    if source == target:
        return True
    if not np.can_cast(source, target, "safe"):
        return False
    if source.kind in "iu" and target.kind == "f":
        bits = source.itemsize * 8 - (source.kind == "i")
        return bits <= np.finfo(target).nmant + 1
    return True


def lossless(values: npt.NDArray[Any], dtype: np.dtype[Any]) -> bool:
    """True when every value of ``values`` is exactly representable in
    ``dtype`` (an exact cast, or a cast whose round trip gives the same values)."""
    if exact_cast(values.dtype, dtype):
        return True
    if values.dtype.kind not in "biuf" or dtype.kind not in "biuf":
        return False
    # a float NaN or inf cast to an integer is undefined: numpy warns, and the
    # round trip below then tells it apart
    with np.errstate(invalid="ignore", over="ignore"):
        stored = values.astype(dtype)
        back = stored.astype(values.dtype)
    return bool(np.array_equal(back, values, equal_nan=values.dtype.kind == "f"))


def describe_values(values: npt.NDArray[Any]) -> str:
    """``"of dtype int64 with values -5..9"`` (the facts a refusal names)."""
    if values.size == 0:
        return f"of dtype {values.dtype} (empty)"
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        bad = values.size - finite.size
        span = (
            f"{float(finite.min())!r}..{float(finite.max())!r}"
            if finite.size
            else "none finite"
        )
        extra = f", {bad} NaN or infinite" if bad else ""
        fraction = (
            ", some not whole numbers"
            if finite.size and not np.array_equal(finite, np.trunc(finite))
            else ""
        )
        return f"of dtype {values.dtype} with values {span}{extra}{fraction}"
    return f"of dtype {values.dtype} with values {values.min()}..{values.max()}"
