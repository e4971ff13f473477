"""The parameters of the dranspose worker and reducer, and their parsing.

dranspose hands a worker and a reducer their parameters as
``{name: WorkParameter}`` (``.value`` parsed by the parameter's type). Here
each has a name, a default and a parser shared by both classes; the
descriptions for dranspose (:func:`describe`) are made only when dranspose
asks, so this module loads without it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["MapParameters", "describe", "parameter_list"]

#: name -> (dranspose type, default, description)
PARAMETERS: Final = {
    "xspress_stream": ("str", "xspress3", "the stream carrying the Xspress3 frames"),
    "rois": (
        "str",
        "{}",
        "JSON: ROI name -> [low, high] inclusive bins for every channel, or a "
        'list of one [low, high] per channel, e.g. {"Fe": [625, 655]}',
    ),
    "map_shape": ("str", "[1, 1]", "JSON [ny, nx]: rows and pixels a row"),
    "snake": ("bool", False, "every other row is recorded backwards"),
    "output": ("str", "", "HDF5 file the reducer writes the map to at the end"),
}


def describe() -> list[Any]:
    """The parameters as dranspose describes them (imports dranspose)."""
    from dranspose.parameters import BoolParameter, StrParameter

    kinds = {"str": StrParameter, "bool": BoolParameter}
    return [
        kinds[kind](name=name, default=default, description=text)
        for name, (kind, default, text) in PARAMETERS.items()
    ]


def parameter_list(**values: Any) -> list[dict[str, str]]:
    """``[{"name": ..., "data": ...}]`` as dranspose's replay reads a JSON
    parameter file (``rois`` and ``map_shape`` may be given as objects)."""
    out = []
    for name, value in values.items():
        if name not in PARAMETERS:
            raise KeyError(f"unknown parameter {name!r}; known: {sorted(PARAMETERS)}")
        text = value if isinstance(value, str) else json.dumps(value)
        if isinstance(value, bool):
            text = str(value)
        out.append({"name": name, "data": text})
    return out


def _value(parameters: Mapping[str, Any] | None, name: str) -> Any:
    """A parameter's parsed value, or its default."""
    entry = (parameters or {}).get(name)
    value = getattr(entry, "value", None) if entry is not None else None
    if value is None and entry is not None:
        data = getattr(entry, "data", None)
        value = data.decode() if isinstance(data, bytes) else data
    return PARAMETERS[name][1] if value is None else value


@dataclass(frozen=True)
class MapParameters:
    """The parameters, parsed and checked."""

    stream: str
    roi_names: tuple[str, ...]
    windows: npt.NDArray[np.int64]
    shape: tuple[int, int]
    snake: bool
    output: str

    @classmethod
    def parse(cls, parameters: Mapping[str, Any] | None) -> MapParameters:
        rois = _json(parameters, "rois")
        if not isinstance(rois, dict):
            raise ValueError(f"rois must be a JSON object, got {rois!r}")
        shape = _json(parameters, "map_shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(v, int) and v >= 1 for v in shape)
        ):
            raise ValueError(f"map_shape must be [ny, nx], both >= 1, got {shape!r}")
        snake = _value(parameters, "snake")
        return cls(
            stream=str(_value(parameters, "xspress_stream")),
            roi_names=tuple(rois),
            windows=_windows(list(rois.values())),
            shape=(shape[0], shape[1]),
            snake=snake if isinstance(snake, bool) else str(snake) == "True",
            output=str(_value(parameters, "output")),
        )


def _json(parameters: Mapping[str, Any] | None, name: str) -> Any:
    """A JSON parameter, parsed; a ValueError that names it when it is not JSON."""
    text = _value(parameters, name) or PARAMETERS[name][1]
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not JSON ({exc}): {str(text)[:80]!r}") from exc


def _windows(values: list[Any]) -> npt.NDArray[np.int64]:
    """``(R, 2)`` when every ROI has one window, ``(C, R, 2)`` per channel."""
    if not values:
        return np.zeros((0, 2), dtype=np.int64)
    arrays = [np.asarray(v, dtype=np.int64) for v in values]
    if all(a.shape == (2,) for a in arrays):
        return _checked(np.stack(arrays))
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 2:
        raise ValueError(
            "each ROI is [low, high], or the same number of per-channel "
            f"[low, high] pairs; got shapes {[a.shape for a in arrays]}"
        )
    windows = np.stack(arrays, axis=1)  # (C, R, 2)
    return _checked(windows)


def _checked(windows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Inclusive ``[low, high]`` bins, ``0 <= low <= high``: a reversed window
    would sum nothing and look like a map of zeros."""
    low, high = windows[..., 0], windows[..., 1]
    bad = (low < 0) | (low > high)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise ValueError(
            f"ROI window {windows[tuple(where)].tolist()} (index {where.tolist()}) "
            "must be [low, high] bins with 0 <= low <= high"
        )
    return windows
