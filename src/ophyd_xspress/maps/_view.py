"""The figure of a map: one panel per image, drawn where the user looks.

Jupyter's inline backend: a ``Figure`` shown once with a display id and
updated in place. A GUI backend (Qt, Tk, macOS): a pyplot window, redrawn
(its callback runs in the GUI's main thread: :class:`~._live.LiveMap` is a
``QtAwareCallback``). Anything else (Agg): drawn only when saved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._grid import MapGrid

__all__ = ["MapView", "plot_map"]

#: Backends that draw nowhere but in files.
_FILE_BACKENDS: Final = {"agg", "pdf", "ps", "svg", "cairo", "template", "pgf"}
#: Panels in a row, at most.
_COLUMNS: Final = 4


def _backend() -> str:
    import matplotlib

    return str(matplotlib.get_backend()).lower()


class MapView:
    """Panels for ``names`` over ``grid``'s extent; :meth:`update` redraws."""

    def __init__(
        self,
        grid: MapGrid,
        names: Sequence[str],
        *,
        cmap: str = "viridis",
        title: str = "",
        label: str = "counts (dead-time corrected)",
        files_only: bool = False,
    ) -> None:
        backend = "agg" if files_only else _backend()
        self.inline = "inline" in backend
        self.gui = not self.inline and backend not in _FILE_BACKENDS
        self.grid = grid
        self.names = tuple(names)
        self.title = title
        columns = max(1, min(len(self.names), _COLUMNS))
        rows = math.ceil(len(self.names) / columns)
        size = (3.4 * columns, 3.0 * rows + 0.4)
        if self.gui:
            import matplotlib.pyplot as plt

            self.figure = plt.figure(figsize=size, layout="constrained")
        else:
            from matplotlib.figure import Figure

            self.figure = Figure(figsize=size, layout="constrained")
        axes = self.figure.subplots(rows, columns, squeeze=False).ravel()
        for ax in axes[len(self.names) :]:
            ax.set_visible(False)
        self._images: dict[str, Any] = {}
        empty = np.full(grid.shape, np.nan)
        units = f" ({grid.units})" if grid.units else ""
        for ax, name in zip(axes, self.names, strict=False):
            image = ax.imshow(
                empty,
                origin="lower",
                extent=grid.image_extent(),
                cmap=cmap,
                interpolation="nearest",
                aspect="equal",
            )
            self.figure.colorbar(image, ax=ax, label=label, shrink=0.85)
            ax.set_title(name)
            ax.set_xlabel(f"{grid.fast}{units}")
            ax.set_ylabel(f"{grid.slow}{units}")
            self._images[name] = image
        self._handle: Any = None
        if self.gui:
            self.figure.show()

    def update(self, images: Any, *, interactive: bool = True) -> None:
        """Show ``images`` (a :class:`~._grid.MapImages` or name -> array)."""
        filled = 0
        for name, artist in self._images.items():
            data = np.asarray(images[name], dtype=np.float64)
            artist.set_data(data)
            finite = data[np.isfinite(data)]
            filled = max(filled, finite.size)
            if finite.size:
                low, high = float(finite.min()), float(finite.max())
                artist.set_clim(low, high if high > low else low + 1.0)
        self.figure.suptitle(
            f"{self.title}  {filled} of {self.grid.frames} pixels".strip()
        )
        if interactive:
            self._show()

    def _show(self) -> None:
        if self.inline:
            from IPython.display import display

            if self._handle is None:
                self._handle = display(self.figure, display_id=True)
            else:
                self._handle.update(self.figure)
        elif self.gui:
            self.figure.canvas.draw_idle()
            self.figure.canvas.flush_events()

    def save(self, path: str | Path, dpi: int = 100) -> Path:
        """Write the figure as it is now."""
        target = Path(path)
        self.figure.savefig(target, dpi=dpi)
        return target


def plot_map(
    grid: MapGrid,
    images: Mapping[str, npt.NDArray[np.float64]],
    path: str | Path,
    *,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """A PNG of ``images`` (name -> ``(ny, nx)``), one panel each."""
    view = MapView(grid, list(images), title=title, files_only=True)
    view.update(images, interactive=False)
    return view.save(path, dpi=dpi)
