"""What a Tango error means for the user: ``tango.DevFailed`` translated.

pytango raises ``DevFailed`` (or its ``ConnectionFailed`` /
``CommunicationFailed`` subclasses) carrying a stack of ``DevError``
(``reason``, ``desc``, ``origin``); ophyd-async adds ``NotConnectedError``
when a signal lost its proxy or could not connect. Raw, they say neither
which device, nor how far the acquisition got, nor what to do
(``COMM_FAILURE CORBA system exception: COMM_FAILURE_WaitingForReply``).
:func:`translate` turns them into one sentence each:

* :class:`DeviceNotFoundError`: the Tango server answered but has no such
  device (``OBJECT_NOT_EXIST``, ``API_DeviceNotDefined``): a wrong name;
* :class:`DeviceUnreachableError`: no answer: the device server stopped or
  restarted, the host is unreachable, a call timed out (``TRANSIENT``,
  ``COMM_FAILURE``, ``API_ServerNotRunning``, ``API_DeviceTimedOut``, and
  ``API_CantConnectToDevice``: cppTango refuses to reconnect a proxy within a
  second of its last failed try, "the connection request was delayed");
* :class:`DeviceCommandError`: the device refused a command (its reason).

:class:`DeviceBusyError` is raised by the acquire logic itself (a device
RUNNING an acquisition someone else started). The caller chains the original
error (``raise translated from exc``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from ophyd_async.core import NotConnectedError
from tango import CommunicationFailed, ConnectionFailed, DevFailed

from ..transport import Run
from ._tango_signals import mark_stale

if TYPE_CHECKING:
    from ._control import XspressControl

__all__ = [
    "DeviceBusyError",
    "DeviceCommandError",
    "DeviceNotFoundError",
    "DeviceUnreachableError",
    "TangoDeviceError",
    "device_errors",
    "is_unreachable",
    "progress",
    "summary",
    "translate",
]


class TangoDeviceError(RuntimeError):
    """The Tango device failed; the message names the device, what happened,
    the frames received so far and what to do."""


class DeviceUnreachableError(TangoDeviceError, ConnectionError):
    """The device server does not answer (stopped, restarted, unreachable)."""


class DeviceNotFoundError(TangoDeviceError, LookupError):
    """The Tango server has no device of that name."""


class DeviceBusyError(TangoDeviceError):
    """The device is RUNNING an acquisition this detector did not start."""


class DeviceCommandError(TangoDeviceError):
    """The device refused a command."""


#: ``DevError.reason`` values that mean "no device of that name".
NOT_FOUND_REASONS: Final = frozenset({"API_DeviceNotDefined", "DB_DeviceNotDefined"})
#: ``DevError.reason`` values that mean "the device server does not answer".
UNREACHABLE_REASONS: Final = frozenset(
    {
        "API_CantConnectToDevice",
        "API_CommunicationFailed",
        "API_ConnectionFailed",
        "API_DeviceNotExported",
        "API_DeviceTimedOut",
        "API_ServerNotRunning",
    }
)
_CORBA: Final = "CORBA system exception: "
#: ``tango://host:port/domain/family/member#dbase=no``
_TRL: Final = re.compile(
    r"^(?:tango://)?(?:(?P<server>[^/]+:\d+)/)?(?P<device>[^/#]+/[^/#]+/[^/#]+)"
)


def _dev_failed(exc: BaseException) -> Iterator[DevFailed]:
    """Every ``DevFailed`` in ``exc``, its causes and ophyd-async sub-errors."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DevFailed):
            yield e
        if isinstance(e, NotConnectedError):
            todo.extend(e.sub_errors.values())
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def _errors(exc: DevFailed) -> list[tuple[str, str]]:
    """``(reason, desc)`` of each ``DevError`` of ``exc``."""
    return [(str(e.reason), " ".join(str(e.desc).split())) for e in exc.args]


def _is_not_found(exc: DevFailed) -> bool:
    return any(
        reason in NOT_FOUND_REASONS or desc.startswith("OBJECT_NOT_EXIST")
        for reason, desc in _errors(exc)
    )


def _is_unreachable(exc: DevFailed) -> bool:
    if _is_not_found(exc):
        return False
    if isinstance(exc, ConnectionFailed | CommunicationFailed):
        return True
    return any(
        reason in UNREACHABLE_REASONS or _CORBA in desc for reason, desc in _errors(exc)
    )


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the device server does not answer."""
    failures = list(_dev_failed(exc))
    if not failures:
        # ophyd-async's own "Not connected to <trl>": a proxy lost at reconnect
        return isinstance(exc, NotConnectedError)
    return _is_unreachable(failures[0])


def cause(exc: DevFailed) -> str:
    """The first error of ``exc`` in a few words (the rest is chained)."""
    errors = _errors(exc)
    if not errors:
        return type(exc).__name__
    reason, desc = errors[0]
    if _CORBA in desc:
        return desc.split(_CORBA, 1)[1]  # e.g. COMM_FAILURE_WaitingForReply
    return f"{reason}: {desc}"


def summary(exc: BaseException) -> str:
    """The Tango error in ``exc`` in a few words (for a log line)."""
    failures = list(_dev_failed(exc))
    return cause(failures[0]) if failures else str(exc).strip()


def _where(trl: str) -> tuple[str, str]:
    """``(device name, server)`` of a TRL (the server "" with a database)."""
    match = _TRL.match(trl)
    if match is None:
        return trl, ""
    return match["device"], match["server"] or ""


def translate(
    exc: BaseException,
    *,
    detector: str,
    trl: str,
    command: str | None = None,
    frames: str | None = None,
) -> TangoDeviceError | None:
    """The specific error for ``exc``, or None if it is no Tango error.

    ``command``: the command the device refused, if one was sent; ``frames``:
    how far the acquisition got (``"543 of 3000 frames received"``).
    """
    failures = list(_dev_failed(exc))
    if not failures:
        if isinstance(exc, NotConnectedError) and not exc.sub_errors:
            return _unreachable(detector, trl, frames, str(exc).strip())
        return None
    failure = failures[0]
    if _is_not_found(failure):
        device, server = _where(trl)
        at = f"the Tango server at {server}" if server else "the Tango database"
        return DeviceNotFoundError(
            f"{detector}: {at} has no device {device} ({cause(failure)}); check "
            f"the device name in tango={trl!r}"
        )
    if _is_unreachable(failure):
        return _unreachable(detector, trl, frames, cause(failure))
    progress = f" ({frames})" if frames else ""
    if command is not None:
        return DeviceCommandError(
            f"{detector}: the Tango device at {trl} refused {command}{progress}: "
            f"{cause(failure)}; check the device's state and settings, then retry"
        )
    return None


def _unreachable(
    detector: str, trl: str, frames: str | None, why: str
) -> DeviceUnreachableError:
    if frames is None:
        return DeviceUnreachableError(
            f"{detector}: the Tango device at {trl} restarted or is unreachable; "
            f"retry ({why})"
        )
    return DeviceUnreachableError(
        f"{detector}: the Tango device at {trl} restarted or is unreachable, "
        f"{frames}; check its device server, then retry ({why})"
    )


def progress(run: Run) -> str:
    """``"543 of 3000 frames received"``."""
    expected = run.expected if run.expected is not None else "?"
    return f"{run.received} of {expected} frames received"


@contextlib.contextmanager
def device_errors(
    name: str,
    control: XspressControl | None,
    run: Run | None = None,
    command: str | None = None,
) -> Iterator[None]:
    """Raise a Tango error from inside as its specific exception (see
    :func:`translate`), naming the detector ``name``, the ``control``'s
    device, the ``command`` sent and the frames of ``run`` received so far;
    the original error is chained. An unreachable device is also marked stale
    (:func:`~ophyd_xspress.device._tango_signals.mark_stale`): the next stage
    reconnects it with fresh proxies. Without ``control`` (a passive or mock
    detector) errors pass unchanged."""
    try:
        yield
    except Exception as exc:
        if control is None:
            raise
        translated = translate(
            exc,
            detector=name,
            trl=control.trl,
            command=command,
            frames=None if run is None else progress(run),
        )
        if translated is None:
            raise
        if isinstance(translated, DeviceUnreachableError):
            mark_stale(control)
        raise translated from exc
