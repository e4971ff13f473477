"""Helpers shared by test modules (fixtures live in ``conftest.py`` files).

Import them as ``from tests.helpers import find_in_chain``. That works under
``--import-mode=importlib`` without any ``sys.path`` change: pytest imports
every test module and conftest by its rootdir-relative name
(``tests.device.test_errors``, ``tests.conftest``) and registers the
namespace package ``tests`` (there is no ``tests/__init__.py``) with this
folder as its path, so ``tests.helpers`` resolves here however pytest is
started (``pytest``, ``python -m pytest``, from another directory).
"""

from __future__ import annotations

from typing import Final

from ophyd_xspress._schema import RAW_SCALERS

__all__ = ["RAW_SCALER_NAMES", "find_in_chain"]

#: The raw per-channel scalers of the stream, in the device's order; their home
#: is :data:`ophyd_xspress._schema.RAW_SCALERS`. A test that pins the wire
#: format itself keeps its own transcription instead.
RAW_SCALER_NAMES: Final = tuple(q.dataset for q in RAW_SCALERS)


def find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException:
    """The first ``kind`` among ``exc``, its causes and contexts and, for an
    exception group, its members, nearest first (breadth-first)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    raise AssertionError(f"no {kind.__name__} in the chain of {exc!r}")
