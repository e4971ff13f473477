"""Tango errors translated (:mod:`ophyd_xspress.device._tango_errors`).

The ``DevFailed`` stacks are the ones pytango 10 raised against the
simulator's device server (reasons and descriptions copied from real runs):
a server killed (``TRANSIENT``), killed mid-call (``COMM_FAILURE``), retried
within a second (``API_CantConnectToDevice``, "the connection request was
delayed"), stopped in-process (``BAD_INV_ORDER``), a wrong device name
(``OBJECT_NOT_EXIST`` + ``API_DeviceNotDefined``), a refused command.
"""

from __future__ import annotations

import re

import pytest
import tango
from ophyd_async.core import NotConnectedError

from ophyd_xspress.device import DetectorFaultError
from ophyd_xspress.device._control import XspressControl
from ophyd_xspress.device._tango_errors import (
    DeviceCommandError,
    DeviceNotFoundError,
    DeviceUnreachableError,
    device_errors,
    is_unreachable,
    translate,
)
from ophyd_xspress.device._tango_signals import is_stale

TRL = "tango://127.0.0.1:40741/sim/xspress3/1#dbase=no"


FRAMES = "543 of 3000 frames received"


def dev_failed(
    *errors: tuple[str, str], kind: type[tango.DevFailed] = tango.DevFailed
) -> tango.DevFailed:
    stack = []
    for reason, desc in errors:
        error = tango.DevError()
        error.reason, error.desc, error.origin = reason, desc, "test"
        error.severity = tango.ErrSeverity.ERR
        stack.append(error)
    return kind(*stack)


SERVER_DOWN = dev_failed(
    ("API_CorbaException", "TRANSIENT CORBA system exception: TRANSIENT_ConnectFailed"),
    ("API_ServerNotRunning", "Failed to connect to device sim/xspress3/1"),
    kind=tango.ConnectionFailed,
)
KILLED_MID_CALL = dev_failed(
    (
        "API_CorbaException",
        "COMM_FAILURE CORBA system exception: COMM_FAILURE_WaitingForReply",
    ),
    ("API_CommunicationFailed", "Failed to read_attribute on device sim/xspress3/1"),
    kind=tango.CommunicationFailed,
)
DELAYED = dev_failed(
    (
        "API_CantConnectToDevice",
        "Failed to connect to device sim/xspress3/1\nThe connection request was "
        "delayed.\nThe last connection request was done less than 1000 ms ago",
    )
)
ORB_SHUT_DOWN = dev_failed(
    (
        "API_CorbaException",
        "BAD_INV_ORDER CORBA system exception: BAD_INV_ORDER_ORBHasShutdown",
    ),
    kind=tango.CommunicationFailed,
)
TIMED_OUT = dev_failed(("API_DeviceTimedOut", "Timeout (3000 mS) exceeded on sim/x/1"))
NO_SUCH_DEVICE = dev_failed(
    (
        "API_CorbaException",
        "OBJECT_NOT_EXIST CORBA system exception: OBJECT_NOT_EXIST_NoMatch",
    ),
    ("API_DeviceNotDefined", "Failed to connect to device sim/xspress3/2"),
    kind=tango.ConnectionFailed,
)
REFUSED = dev_failed(
    ("PyDs_PythonError", "RuntimeError: cannot Arm in FAULT: card 0 overheated\n"),
    ("API_CommandFailed", "Failed to execute command_inout on device sim/xspress3/1"),
)


@pytest.mark.parametrize(
    ("failure", "why"),
    [
        (SERVER_DOWN, "TRANSIENT_ConnectFailed"),
        (KILLED_MID_CALL, "COMM_FAILURE_WaitingForReply"),
        (
            DELAYED,
            "API_CantConnectToDevice: Failed to connect to device sim/xspress3/1 "
            "The connection request was delayed. The last connection request was "
            "done less than 1000 ms ago",
        ),
        (ORB_SHUT_DOWN, "BAD_INV_ORDER_ORBHasShutdown"),
        (TIMED_OUT, "API_DeviceTimedOut: Timeout (3000 mS) exceeded on sim/x/1"),
    ],
    ids=["server-down", "killed-mid-call", "delayed", "orb-shut-down", "timed-out"],
)
def test_a_device_that_does_not_answer(failure: tango.DevFailed, why: str) -> None:
    assert is_unreachable(failure)
    at_stage = translate(failure, detector="xspress", trl=TRL)
    assert isinstance(at_stage, DeviceUnreachableError)
    assert str(at_stage) == (
        f"xspress: the Tango device at {TRL} restarted or is unreachable; retry ({why})"
    )
    mid_scan = translate(failure, detector="xspress", trl=TRL, frames=FRAMES)
    assert str(mid_scan) == (
        f"xspress: the Tango device at {TRL} restarted or is unreachable, {FRAMES}; "
        f"check its device server, then retry ({why})"
    )


@pytest.mark.parametrize(
    ("trl", "where"),
    [
        (
            "tango://127.0.0.1:40741/sim/xspress3/2#dbase=no",
            "the Tango server at 127.0.0.1:40741 has no device sim/xspress3/2",
        ),
        (
            "tango://tango-db:10000/b/xspress3/2",
            "the Tango server at tango-db:10000 has no device b/xspress3/2",
        ),
        ("b/xspress3/2", "the Tango database has no device b/xspress3/2"),
    ],
)
def test_a_wrong_device_name(trl: str, where: str) -> None:
    assert not is_unreachable(NO_SUCH_DEVICE)
    error = translate(NO_SUCH_DEVICE, detector="xspress", trl=trl)
    assert isinstance(error, DeviceNotFoundError)
    assert str(error) == (
        f"xspress: {where} (OBJECT_NOT_EXIST_NoMatch); check the device name in "
        f"tango={trl!r}"
    )


def test_a_refused_command_names_the_command_and_the_devices_reason() -> None:
    error = translate(
        REFUSED, detector="xspress", trl=TRL, command="Arm", frames=FRAMES
    )
    assert isinstance(error, DeviceCommandError)
    assert str(error) == (
        f"xspress: the Tango device at {TRL} refused Arm ({FRAMES}): "
        "PyDs_PythonError: RuntimeError: cannot Arm in FAULT: card 0 overheated; "
        "check the device's state and settings, then retry"
    )
    # an attribute error outside a command is left as it is
    assert translate(REFUSED, detector="xspress", trl=TRL) is None


def test_found_behind_ophyd_async_wrappers() -> None:
    # what ophyd-async's CommandProxy.put raises
    wrapped = RuntimeError("Arm device failure: ...")
    wrapped.__cause__ = KILLED_MID_CALL
    assert isinstance(translate(wrapped, detector="x", trl=TRL), DeviceUnreachableError)
    # what Device.connect raises: the DevFailed is a sub-error
    nested = NotConnectedError({"control": NotConnectedError({"state": SERVER_DOWN})})
    assert is_unreachable(nested)
    assert isinstance(translate(nested, detector="x", trl=TRL), DeviceUnreachableError)
    # a signal whose proxy was dropped and not yet made again
    lost = NotConnectedError(f"Not connected to {TRL}")
    assert is_unreachable(lost)
    assert str(translate(lost, detector="x", trl=TRL)) == (
        f"x: the Tango device at {TRL} restarted or is unreachable; retry "
        f"(Not connected to {TRL})"
    )


def test_other_errors_are_left_alone() -> None:
    fault = DetectorFaultError(f"Xspress3 {TRL} is in FAULT: card 0")
    assert translate(fault, detector="x", trl=TRL) is None
    assert not is_unreachable(fault)
    control = XspressControl(TRL)  # never connected
    with pytest.raises(DetectorFaultError) as info, device_errors("x", control):
        raise fault
    assert info.value is fault
    assert not is_stale(control)


def test_device_errors_chains_the_original_and_marks_the_device_stale() -> None:
    control = XspressControl(TRL)  # never connected
    with (
        pytest.raises(DeviceUnreachableError, match=re.escape(TRL)) as info,
        device_errors("xspress", control, command="Stop"),
    ):
        raise KILLED_MID_CALL
    assert info.value.__cause__ is KILLED_MID_CALL
    # the next stage reconnects it with fresh proxies
    assert is_stale(control)
