"""The MAX IV ``Xspress3DS`` device's interface, transcribed from its source.

By hand from ``xspress3/DeviceServer.py`` (and ``Instrument.py``) of
maxiv-science/xspress3-streamer, master at commit 3521032 (version 0.1.12);
each row cites the lines it comes from. Used by
``tests/sim/test_device_interface.py`` (the simulator has exactly this
interface) and ``tests/device/test_device_settings.py`` (the detector writes
only what the device lets a client write).
"""

from __future__ import annotations

from tango import AttrDataFormat as Fmt
from tango import AttrWriteType as Access
from tango import CmdArgType as T

#: Channels of the simulators these tables are checked on.
CHANNELS = 2

# fmt: off
#: name -> (type, format, access, display format or None, default, source)
#: ("display format" only where the source sets one; None: Tango's default.)
ATTRIBUTES: dict[str, tuple[T, Fmt, Access, str | None, object, str]] = {
    "ExposureTime": (
        T.DevDouble, Fmt.SCALAR, Access.READ_WRITE, "%e", 0.1,
        "DeviceServer.py:34-40 (float, format '%e'), default :25",
    ),
    "nTriggers": (
        T.DevLong64, Fmt.SCALAR, Access.READ_WRITE, None, 1,
        "DeviceServer.py:42-48 (int), default :26",
    ),
    "nFramesPerTrigger": (
        T.DevLong64, Fmt.SCALAR, Access.READ_WRITE, None, 1,
        "DeviceServer.py:50-56 (int), default :27",
    ),
    "LatencyTime": (
        T.DevDouble, Fmt.SCALAR, Access.READ_WRITE, "%.2e", 0.0,
        "DeviceServer.py:58-64 (float, format '%.2e'), default :28",
    ),
    "TriggerMode": (
        T.DevString, Fmt.SCALAR, Access.READ_WRITE, None, "SOFTWARE",
        "DeviceServer.py:66-74 (str), default :29",
    ),
    "DestinationFileName": (
        T.DevString, Fmt.SCALAR, Access.READ_WRITE, None, "/tmp/temp.h5",
        "DeviceServer.py:76-82 (str, hw_memorized), default :30",
    ),
    "DestinationFileOverwritable": (
        T.DevBoolean, Fmt.SCALAR, Access.READ_WRITE, None, False,
        "DeviceServer.py:84-90 (bool), default :31",
    ),
    "WriteHdf5": (
        T.DevBoolean, Fmt.SCALAR, Access.READ_WRITE, None, True,
        "DeviceServer.py:293-299 (bool), default :112",
    ),
    "ReadoutTime": (
        T.DevDouble, Fmt.SCALAR, Access.READ, "%.2e", 25e-9,
        "DeviceServer.py:301-303 (float, '%.2e', no setter); Instrument.py:73-78",
    ),
    "nFramesAcquired": (
        T.DevLong64, Fmt.SCALAR, Access.READ, None, 0,
        "DeviceServer.py:305-307 (int, no setter)",
    ),
    "nChannels": (
        T.DevLong64, Fmt.SCALAR, Access.READ, None, CHANNELS,
        "DeviceServer.py:309-311 (int, no setter)",
    ),
    "ReadyForSwTrigger": (
        T.DevBoolean, Fmt.SCALAR, Access.READ, None, False,
        "DeviceServer.py:313-322 (bool, no setter; False unless RUNNING)",
    ),
}
#: Per channel n (from 0): DeviceServer.py:160-172.
CHANNEL_ATTRIBUTES: dict[str, tuple[T, Fmt, Access, int, str]] = {
    "Window1_Ch{n}": (
        T.DevLong, Fmt.SPECTRUM, Access.READ_WRITE, 2,
        "DeviceServer.py:163-165 (SpectrumAttr DevLong READ_WRITE, 2)",
    ),
    "Window2_Ch{n}": (
        T.DevLong, Fmt.SPECTRUM, Access.READ_WRITE, 2,
        "DeviceServer.py:166-168 (SpectrumAttr DevLong READ_WRITE, 2)",
    ),
    "EventWidth_Ch{n}": (
        T.DevShort, Fmt.SCALAR, Access.READ, 1,
        "DeviceServer.py:170-172 (Attr DevShort READ)",
    ),
}
#: name -> (argument in, argument out, source); Init, State, Status: Tango's.
COMMANDS: dict[str, tuple[T, T, str]] = {
    "Arm": (T.DevVoid, T.DevVoid, "DeviceServer.py:324-341"),
    "SoftwareTrigger": (T.DevVoid, T.DevVoid, "DeviceServer.py:343-346"),
    "Stop": (T.DevVoid, T.DevVoid, "DeviceServer.py:348-353"),
    "Init": (T.DevVoid, T.DevVoid, "Tango"),
    "State": (T.DevVoid, T.DevState, "Tango"),
    "Status": (T.DevVoid, T.DevString, "Tango"),
}
#: Only with the ReturnCounters property: DeviceServer.py:174-183.
COUNTER_COMMANDS: dict[str, tuple[T, T, str]] = {
    "ReadRawCounts_Window1": (
        T.DevVarLong64Array, T.DevVarLong64Array, "DeviceServer.py:176-177"
    ),
    "ReadRawCounts_Window2": (
        T.DevVarLong64Array, T.DevVarLong64Array, "DeviceServer.py:178-179"
    ),
    "ReadDtcCounts_Window1": (
        T.DevVarLong64Array, T.DevVarDoubleArray, "DeviceServer.py:180-181"
    ),
    "ReadDtcCounts_Window2": (
        T.DevVarLong64Array, T.DevVarDoubleArray, "DeviceServer.py:182-183"
    ),
}
#: name -> (type, default, source): DeviceServer.py:97-106.
PROPERTIES: dict[str, tuple[T, object]] = {
    "HeaderPath": (T.DevString, "/opt/xspress3-sdk/include"),
    "Name": (T.DevString, ""),
    "ConfigPath": (T.DevString, "/home/xspress3/settings"),
    "StreamerPort": (T.DevLong64, 9999),
    "MonitorPort": (T.DevLong64, 9998),
    "BaseIP": (T.DevString, ""),
    "BasePort": (T.DevLong64, -1),
    "BaseMAC": (T.DevString, ""),
    "ReturnCounters": (T.DevBoolean, False),
    "EventWidths": (T.DevVarLong64Array, []),
}
# fmt: on
