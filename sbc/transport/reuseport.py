"""Listening sockets shared by several processes (``SO_REUSEPORT``): the worker processes.

``twistd sbc --workers N`` runs N processes that all listen on every port of
the attached adjacencies (docs/scaling.md). Twisted's ``listenUDP`` and
``listenTCP`` do not set ``SO_REUSEPORT``, so these functions create the
socket themselves (``SO_REUSEPORT``, non-blocking, close-on-exec, bound, and
``listen()`` for TCP) and hand it to the reactor with ``adoptDatagramPort`` /
``adoptStreamPort``, which take a copy of the descriptor; the original is
closed here. The kernel then spreads new UDP flows (by a hash of the
source and destination addresses and ports) and new TCP connections over
the processes listening on the same address and port.

A worker process may instead be given the socket by its supervisor
(``inherited``), which keeps a copy: the socket, and its place among the
sockets sharing the port, then outlive the process, so the kernel keeps
sending each UDP flow to the same worker position when a worker is started
again (docs/scaling.md).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol

from sbc.adjacencies import ListenerKey

__all__ = ["STREAM_BACKLOG", "listen_stream_shared", "listen_udp_shared", "shared_socket"]

STREAM_BACKLOG = 50
"""The accept queue of a shared TCP/TLS listener (Twisted's own default)."""


def shared_socket(key: ListenerKey, kind: int) -> socket.socket:
    """A socket bound to ``key``'s address and port with ``SO_REUSEPORT`` (and
    ``SO_REUSEADDR`` for TCP, as Twisted sets); raises ``OSError`` when it cannot be bound."""
    family = socket.AF_INET6 if ":" in key.address else socket.AF_INET
    handle = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        handle.setblocking(False)
        handle.set_inheritable(False)
        handle.bind((key.address, key.port))
        if kind == socket.SOCK_STREAM:
            handle.listen(STREAM_BACKLOG)
    except BaseException:
        handle.close()
        raise
    return handle


def listen_udp_shared(
    reactor: Any,
    key: ListenerKey,
    protocol: DatagramProtocol,
    max_packet_size: int = 65535,
    inherited: int | None = None,
) -> IListeningPort:
    """Listen on UDP ``key`` with ``SO_REUSEPORT`` (``reactor.adoptDatagramPort``).

    ``inherited``: a descriptor of a socket already bound there, given by the
    supervisor (it keeps its own copy, so the socket outlives this process).
    """
    handle = _inherited(inherited) if inherited is not None else None
    if handle is None:
        handle = shared_socket(key, socket.SOCK_DGRAM)
    try:
        port: IListeningPort = reactor.adoptDatagramPort(
            handle.fileno(), handle.family, protocol, max_packet_size
        )
    finally:
        handle.close()
    return port


def listen_stream_shared(
    reactor: Any, key: ListenerKey, factory: IProtocolFactory, inherited: int | None = None
) -> IListeningPort:
    """Listen on TCP ``key`` (TLS: ``factory`` wraps it) with ``SO_REUSEPORT``
    (``reactor.adoptStreamPort``); ``inherited`` as for :func:`listen_udp_shared`."""
    handle = _inherited(inherited) if inherited is not None else None
    if handle is None:
        handle = shared_socket(key, socket.SOCK_STREAM)
    try:
        port: IListeningPort = reactor.adoptStreamPort(handle.fileno(), handle.family, factory)
    finally:
        handle.close()
    return port


def _inherited(descriptor: int) -> socket.socket | None:
    """The socket behind an inherited descriptor, non-blocking; None when it is not open."""
    try:
        handle = socket.socket(fileno=descriptor)
    except OSError:
        return None
    handle.setblocking(False)
    handle.set_inheritable(False)
    return handle
