"""Tango attribute signals that can reconnect with fresh proxies.

After the Tango device server restarts, the proxies the signals made at their
first connect can keep failing: cppTango refuses to reconnect a proxy within
a second of its last failed try ("the connection request was delayed"), an
in-process server's restart leaves every old proxy failing once, and each
signal has its own proxy, so a plan fails on a different signal at every try.
ophyd-async 0.21's ``TangoSignalBackend.connect`` reuses the proxy it made
first even with ``connect(force_reconnect=True)``, so reconnecting does not
help, while a new ``DeviceProxy`` answers at once.

:func:`tango_signal_r` and :func:`tango_signal_rw` are ophyd-async's factories
(same arguments) that also remember each signal's backend, so that
:func:`forget_proxies` can drop the proxies through the backend's public
``set_trl`` and the next connect makes fresh ones; :func:`reconnect` does
both, and :func:`answers` tells first whether there is anything to
reconnect to. Commands need nothing: ``TangoCommandBackend`` makes a new proxy at
every connect. (Upstream: a ``TangoSignalBackend.connect`` that made fresh
proxies when ``force_reconnect`` is set would make this module unnecessary.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

from ophyd_async.core import (
    DEFAULT_TIMEOUT,
    Device,
    Signal,
    SignalDatatypeT,
    SignalR,
    SignalRW,
)
from ophyd_async.tango.core import TangoSignalBackend, make_backend
from tango.asyncio import DeviceProxy as AsyncDeviceProxy

__all__ = [
    "answers",
    "forget_proxies",
    "is_stale",
    "mark_stale",
    "reconnect",
    "tango_signal_r",
    "tango_signal_rw",
]

_BACKENDS: WeakKeyDictionary[Signal[Any], TangoSignalBackend] = WeakKeyDictionary()
#: Devices that found their server unreachable since they last connected.
_STALE: WeakSet[Device] = WeakSet()


def tango_signal_r(
    datatype: type[SignalDatatypeT],
    read_trl: str,
    timeout: float = DEFAULT_TIMEOUT,
    name: str = "",
) -> SignalR[SignalDatatypeT]:
    """``ophyd_async.tango.core.tango_signal_r``, its backend remembered."""
    backend = make_backend(datatype, read_trl, read_trl)
    signal = SignalR(backend, timeout=timeout, name=name)
    _BACKENDS[signal] = backend
    return signal


def tango_signal_rw(
    datatype: type[SignalDatatypeT],
    read_trl: str,
    write_trl: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    name: str = "",
) -> SignalRW[SignalDatatypeT]:
    """``ophyd_async.tango.core.tango_signal_rw``, its backend remembered."""
    backend = make_backend(datatype, read_trl, write_trl or read_trl)
    signal = SignalRW(backend, timeout=timeout, name=name)
    _BACKENDS[signal] = backend
    return signal


def _signals(device: Device) -> Iterator[Signal[Any]]:
    if isinstance(device, Signal):
        yield device
    for _, child in device.children():
        yield from _signals(child)


def forget_proxies(device: Device) -> int:
    """Drop the Tango proxies of ``device``'s signals made here; the next
    connect makes fresh ones (so they are no longer stale). Returns how many
    signals it reset."""
    _STALE.discard(device)
    reset = 0
    for signal in _signals(device):
        backend = _BACKENDS.get(signal)
        if backend is not None:
            backend.set_trl(backend.read_trl, backend.write_trl)
            reset += 1
    return reset


def mark_stale(device: Device) -> None:
    """``device`` found its server unreachable: its proxies may be stale (the
    next :func:`reconnect` replaces them)."""
    _STALE.add(device)


def is_stale(device: Device) -> bool:
    """Whether ``device`` found its server unreachable since it last connected
    (a proxy that answers again says nothing of the others)."""
    return device in _STALE


async def reconnect(device: Device, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Connect ``device`` again with fresh Tango proxies."""
    forget_proxies(device)
    await device.connect(timeout=timeout, force_reconnect=True)


async def answers(trl: str) -> None:
    """Read the device's State through a new proxy; raises ``DevFailed`` when
    it does not answer (one error, where a reconnect of every signal would
    log one per signal)."""
    # green-mode asyncio: the constructor returns an awaitable (untyped so)
    proxy = await AsyncDeviceProxy(trl)  # pyright: ignore[reportGeneralTypeIssues]
    await proxy.state()
