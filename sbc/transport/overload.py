"""The reactor side of overload control (:mod:`sbc.overload`): the heartbeat and the pause.

:class:`LoadMeter` arms a timer every :data:`~sbc.overload.SAMPLE_INTERVAL`
seconds and measures how late it fires, on the monotonic clock (the time
the reactor really spent elsewhere, not the reactor's clock, which tests
move at will and NTP may step), and how full the kernel receive buffers of
the UDP listeners are (:func:`receive_queue_fill`, Linux's ``SO_MEMINFO``).
Each measurement goes to :meth:`OverloadControl.sample`. While the control asks for it, the UDP
listeners that serve only untrusted adjacencies are taken out of the
reactor (``stopReading``) until the next heartbeat; the kernel keeps their
datagrams.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from sbc.adjacencies import AdjacencyTable, ListenerKey
from sbc.config import Security
from sbc.overload import SAMPLE_INTERVAL, OverloadControl

__all__ = ["SO_MEMINFO", "LoadMeter", "receive_queue_fill", "untrusted_udp_listeners"]

#: Linux's ``SO_MEMINFO`` socket option (not named by Python's ``socket``): the
#: socket's memory counters, first the bytes queued for reading, then the size
#: of the receive buffer, both as the kernel counts them.
SO_MEMINFO: Final = 55


def receive_queue_fill(handle: Any) -> float | None:
    """How full a socket's kernel receive buffer is, 0 to 1; None when it cannot be known.

    ``handle`` is the socket (a Twisted port's ``getHandle()``). None off
    Linux, or when the kernel refuses ``SO_MEMINFO``.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        raw = handle.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 8)
    except (AttributeError, OSError, TypeError):
        return None
    if len(raw) < 8:
        return None
    queued, size = struct.unpack("2I", raw[:8])
    return min(1.0, queued / size) if size else None


def untrusted_udp_listeners(table: AdjacencyTable) -> list[ListenerKey]:
    """The UDP listeners on which every attached adjacency is untrusted inbound."""
    keys = []
    for key in table.listeners:
        if key.transport != "UDP":
            continue
        adjacencies = table.adjacencies_on(key)
        if adjacencies and all(a.security_inbound is Security.UNTRUSTED for a in adjacencies):
            keys.append(key)
    return keys


class LoadMeter:
    """Samples the event-loop lag for an :class:`OverloadControl`; pauses untrusted listeners.

    ``reactor`` provides ``callLater``; ``table`` returns the adjacency table
    in force and ``ports`` the open listening ports (the runtime's); tests
    pass ``monotonic``.
    """

    def __init__(
        self,
        reactor: Any,
        control: OverloadControl,
        table: Callable[[], AdjacencyTable],
        ports: Callable[[], dict[ListenerKey, Any]],
        *,
        interval: float = SAMPLE_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reactor = reactor
        self.control = control
        self._table = table
        self._ports = ports
        self.interval = interval
        self._monotonic = monotonic
        self._armed_at = 0.0
        self._call: Any = None
        self._starting = False
        self._due = 0.0
        self._paused: list[Any] = []
        #: Times the untrusted listeners were paused.
        self.pauses = 0
        #: False once a receive buffer could not be measured (not Linux...): lag only.
        self.measures_queues = True

    @property
    def running(self) -> bool:
        return self._call is not None

    def start(self) -> None:
        """Arm the heartbeat once the reactor runs (start-up work is no load)."""
        if self._call is None and not self._starting:
            self._starting = True
            self.reactor.callWhenRunning(self._first)

    def _first(self) -> None:
        if self._starting:
            self._starting = False
            self._arm()

    def stop(self) -> None:
        """Disarm the heartbeat and read every paused listener again."""
        self._starting = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._resume()

    def _arm(self) -> None:
        self._armed_at = self._monotonic()
        self._due = self._armed_at + self.interval
        self._call = self.reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._monotonic()
        lag = max(0.0, now - self._due)
        elapsed = max(now - self._armed_at, 0.0)
        self.control.sample(self.reactor.seconds(), lag, elapsed, self._queue_fill())
        if self.control.pause_untrusted:
            self._pause()
        else:
            self._resume()
        self._arm()

    def _queue_fill(self) -> float:
        """How full the fullest receive buffer of a UDP listener being read is (0 to 1).

        Paused listeners are left out: their buffers fill by design.
        """
        if not self.measures_queues:
            return 0.0
        fullest = 0.0
        for key, port in self._ports().items():
            if key.transport != "UDP" or port in self._paused:
                continue
            get_handle = getattr(port, "getHandle", None)
            fill = receive_queue_fill(get_handle()) if get_handle is not None else None
            if fill is None:
                self.measures_queues = False
                return 0.0
            fullest = max(fullest, fill)
        return fullest

    def _pause(self) -> None:
        ports = self._ports()
        wanted = [ports[key] for key in untrusted_udp_listeners(self._table()) if key in ports]
        if not self._paused:
            self.pauses += 1
        for port in wanted:
            if port not in self._paused:
                port.stopReading()
                self._paused.append(port)

    def _resume(self) -> None:
        paused, self._paused = self._paused, []
        _start_reading(paused)


def _start_reading(ports: Iterable[Any]) -> None:
    for port in ports:
        if getattr(port, "connected", True):  # a port closed meanwhile stays closed
            port.startReading()
