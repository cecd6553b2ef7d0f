"""Listening sockets shared by several processes (``SO_REUSEPORT``): the worker processes.

``twistd sbc --workers N`` runs N processes that all listen on every port of
the attached adjacencies (docs/scaling.md). Twisted's ``listenUDP`` and
``listenTCP`` do not set ``SO_REUSEPORT``, so these functions create the
socket themselves (``SO_REUSEPORT``, non-blocking, close-on-exec, bound, and
``listen()`` for TCP) and hand it to the reactor with ``adoptDatagramPort`` /
``adoptStreamPort``, which take a copy of the descriptor; the original is
closed here. The kernel then spreads new UDP flows (by a hash of the source
and destination addresses and ports) and new TCP connections over the
processes listening on the same address and port.
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
    reactor: Any, key: ListenerKey, protocol: DatagramProtocol, max_packet_size: int = 65535
) -> IListeningPort:
    """Listen on UDP ``key`` with ``SO_REUSEPORT`` (``reactor.adoptDatagramPort``)."""
    handle = shared_socket(key, socket.SOCK_DGRAM)
    try:
        port: IListeningPort = reactor.adoptDatagramPort(
            handle.fileno(), handle.family, protocol, max_packet_size
        )
    finally:
        handle.close()
    return port


def listen_stream_shared(
    reactor: Any, key: ListenerKey, factory: IProtocolFactory
) -> IListeningPort:
    """Listen on TCP ``key`` (TLS: ``factory`` wraps it) with ``SO_REUSEPORT``
    (``reactor.adoptStreamPort``)."""
    handle = shared_socket(key, socket.SOCK_STREAM)
    try:
        port: IListeningPort = reactor.adoptStreamPort(handle.fileno(), handle.family, factory)
    finally:
        handle.close()
    return port
