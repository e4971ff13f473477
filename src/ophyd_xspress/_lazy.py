"""Names a package exports, imported when first used (PEP 562).

``import ophyd_xspress`` must not load ZeroMQ, Tango or ophyd-async, nor
``import ophyd_xspress.sim`` the Tango server, so the packages that gather
names from heavier modules map each name to its module and import it at the
first look-up::

    _LAZY = {"XspressSimulator": "._simulator"}
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)

(with the same imports under ``TYPE_CHECKING`` for type checkers).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``, which
    exports each name of ``exports`` from the (relative) module it maps to."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's name
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # the next look-up skips this function
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
