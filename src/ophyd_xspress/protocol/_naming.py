"""Naming and checking the metadata arrays of each frame.

The metadata pickle is a bare list of arrays; the header's ``extra_tags`` (or
the device's default order) names them. :class:`MetadataReader` names every
frame's arrays, checks their shapes against the channel count (eight scalers
of ``(channels,)``, ``window_counts`` of ``(windows, channels)``), and hands
out a lazy :class:`FrameMetadata` when the pickle matched a template: the
naming and shape checks then run once per template, header and channel count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from ._errors import ProtocolError
from ._metadata import FrameMetadata, MetadataDecoder, MetadataLayout, MetadataTemplate
from ._models import DEFAULT_SCALER_NAMES, HeaderMessage, ImageMessage

__all__ = ["MetadataReader"]


class MetadataReader:
    """The metadata arrays of each frame, by name (not thread-safe)."""

    def __init__(self) -> None:
        #: Decodes the metadata pickles (fast once their layout repeats).
        self.decoder = MetadataDecoder()
        #: (metadata template, header, channels) whose naming checks passed,
        #: with the names and the layout (None: build plain dicts).
        self._naming: (
            tuple[
                MetadataTemplate,
                HeaderMessage | None,
                int,
                tuple[str, ...],
                MetadataLayout | None,
            ]
            | None
        ) = None

    def read(
        self,
        info: ImageMessage,
        meta: bytes | memoryview,
        channels: int,
        header: HeaderMessage | None,
    ) -> Mapping[str, npt.NDArray[Any]]:
        """The frame's metadata arrays by name, lazily when the template allows.

        The naming and shape checks depend only on the pickle's template, the
        header's names and the channel count: they run once per combination.
        """
        raw, template, arrays = self.decoder.decode_template(meta)
        if template is None:  # (no template: every array is there, named afresh)
            arrays = arrays or []
            names = self.names(info, arrays, channels, header)
            return dict(zip(names, arrays, strict=True))
        naming = self._naming
        if (
            naming is None
            or naming[0] is not template
            or naming[1] is not header
            or naming[2] != channels
        ):
            if arrays is None:
                arrays = template.arrays(raw)
            names = self.names(info, arrays, channels, header)
            layout = self.decoder.layout(template, names)
            naming = self._naming = (template, header, channels, names, layout)
        names, layout = naming[3], naming[4]
        if layout is not None:
            return FrameMetadata(raw, layout)
        if arrays is None:
            arrays = template.arrays(raw)
        # (a name given twice keeps its first place and its last array)
        return dict(zip(names, arrays, strict=True))

    @staticmethod
    def names(
        info: ImageMessage,
        arrays: list[npt.NDArray[Any]],
        channels: int,
        header: HeaderMessage | None,
    ) -> tuple[str, ...]:
        """One name per array (checked: scaler and window shapes, all eight
        scalers present); raises ProtocolError."""
        names = list(header.scaler_names if header else DEFAULT_SCALER_NAMES)
        if len(arrays) < len(DEFAULT_SCALER_NAMES):
            raise ProtocolError(
                f"frame {info.frame}: metadata has {len(arrays)} arrays, expected "
                f"at least {len(DEFAULT_SCALER_NAMES)} ({', '.join(names)})"
            )
        if len(names) < len(arrays):
            extra_start = len(names)
            for i in range(extra_start, len(arrays)):
                if (
                    "window_counts" not in names
                    and arrays[i].ndim == 2
                    and arrays[i].shape[1] == channels
                ):
                    names.append("window_counts")
                else:
                    names.append(f"extra_{i}")
        del names[len(arrays) :]
        for name, arr in zip(names, arrays, strict=True):
            if name in DEFAULT_SCALER_NAMES and arr.shape != (channels,):
                raise ProtocolError(
                    f"frame {info.frame}: scaler {name} has shape {arr.shape}, "
                    f"expected ({channels},)"
                )
            if name == "window_counts" and (arr.ndim != 2 or arr.shape[1] != channels):
                raise ProtocolError(
                    f"frame {info.frame}: window_counts has shape {arr.shape}, "
                    f"expected (windows, {channels})"
                )
        missing = [n for n in DEFAULT_SCALER_NAMES if n not in names]
        if missing:
            raise ProtocolError(
                f"frame {info.frame}: metadata lacks {', '.join(missing)}"
            )
        return tuple(names)
