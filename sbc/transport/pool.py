"""Outbound TCP/TLS connections, reused by verified identity (RFC 5923, docs/security-model.md).

A :class:`PoolKey` names a destination: transport, the local address the
flow is sent from, the remote address and port, and for TLS the name the
peer's certificate must match (RFC 5922 §7.3). It is defined next to the
connection (:mod:`sbc.transport.stream`), which keeps the key it was opened
for, and re-exported here. :meth:`ConnectionPool.get`
returns an open connection for the key or opens one:

- a connection is reused for a key only when it goes to the same remote
  address and port from the same local address over the same transport, and,
  for TLS, when the identities its handshake *verified* match the key's
  expected name (so a connection verified for ``a.example`` also serves
  ``b.example`` only when its certificate names ``b.example`` too);
- callers asking for a key while its connection is being opened wait for
  that one attempt;
- a failed attempt (refused, timed out, certificate refused) fails every
  waiter with its reason and leaves nothing in the pool.

Idle connections are closed by the connection itself
(``outbound-idle-timeout``, see :mod:`sbc.transport.stream`) and leave the
pool through :meth:`ConnectionPool.remove`.

:func:`client_endpoint` builds the endpoint used to connect: TCP4/TCP6 for
an IP literal, ``HostnameEndpoint`` (A/AAAA lookups without blocking the
reactor) for a name, wrapped in TLS with
:func:`sbc.transport.tls.client_connection_creator` (always verified). The
B2BUA's requests reach the pool with addresses already found by RFC 3263
(:mod:`sbc.transport.resolver`); a host name still arrives here only for a
response whose connection is gone (its Via's sent-by).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from sbc.adjacencies import TLS
from sbc.errors import SbcError
from sbc.identity import identity_matches, ip_literal
from sbc.transport.stream import PoolKey, StreamConnection
from sbc.transport.tls import TlsIdentity, client_connection_creator


@implementer(IStreamClientEndpoint)
class TlsClientEndpoint:
    """TLS over another client endpoint, small writes batched on the given reactor.

    What Twisted 26's ``wrapClientTLS(..., clock=reactor)`` builds; Twisted 25
    (the newest on PyPy 3.9) has no ``clock`` there and would batch on the
    global reactor, where tests on an in-memory one never see the bytes.
    """

    def __init__(
        self,
        creator: IOpenSSLClientConnectionCreator,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
    ) -> None:
        self._creator = creator
        self._endpoint = endpoint
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        tls = TLSMemoryBIOFactory(self._creator, True, protocolFactory, clock=self._clock)
        connecting: Deferred[Any] = self._endpoint.connect(tls)
        return connecting.addCallback(lambda protocol: protocol.wrappedProtocol)


__all__ = [
    "ConnectionPool",
    "NoTlsIdentityError",
    "PoolKey",
    "client_endpoint",
]


class NoTlsIdentityError(SbcError):
    """An outbound TLS connection was needed but the SBC has no certificate."""


def identity_ok(connection: StreamConnection, key: PoolKey) -> bool:
    """True when ``connection`` may carry traffic for ``key`` (RFC 5923 for TLS)."""
    if key.transport != TLS:
        return True
    identities = connection.peer_identities
    assert key.expected_name is not None
    return identities is not None and identity_matches(identities, key.expected_name)


class ConnectionPool:
    """Open outbound connections and attempts in progress, by destination.

    ``connect(key)`` opens a connection and returns a Deferred that fires
    with it once it can carry SIP (for TLS: handshake verified against
    ``key.expected_name``), or fails with why not.
    """

    def __init__(self, connect: Callable[[PoolKey], Deferred[StreamConnection]]) -> None:
        self._connect = connect
        self._open: dict[tuple[str, str, tuple[str, int]], list[StreamConnection]] = {}
        self._pending: dict[PoolKey, list[Deferred[StreamConnection]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._open.values())

    def __iter__(self) -> Iterator[StreamConnection]:
        return iter([c for conns in self._open.values() for c in conns])

    def find(self, key: PoolKey) -> StreamConnection | None:
        """An open connection that may be reused for ``key``, or None."""
        for connection in self._open.get(key.destination, ()):
            if connection.open and identity_ok(connection, key):
                return connection
        return None

    def pending(self, key: PoolKey) -> bool:
        """True while a connection for ``key`` is being opened."""
        return key in self._pending

    def get(self, key: PoolKey) -> Deferred[StreamConnection]:
        """A connection for ``key``: reused, being opened, or opened now."""
        existing = self.find(key)
        if existing is not None:
            return succeed(existing)
        waiter: Deferred[StreamConnection] = Deferred()
        waiters = self._pending.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._pending[key] = [waiter]
        try:
            attempt = self._connect(key)
        except Exception:
            attempt = Deferred()
            attempt.errback(Failure())
        attempt.addCallbacks(self._opened, self._failed, callbackArgs=(key,), errbackArgs=(key,))
        return waiter

    def _opened(self, connection: StreamConnection, key: PoolKey) -> None:
        waiters = self._pending.pop(key, [])
        if connection.open:
            self.add(connection)
        for waiter in waiters:
            if connection.open:
                waiter.callback(connection)
            else:
                waiter.errback(Failure(ConnectionError("connection closed while opening")))

    def _failed(self, failure: Failure, key: PoolKey) -> None:
        for waiter in self._pending.pop(key, []):
            waiter.errback(failure)

    def add(self, connection: StreamConnection) -> None:
        """Put an open outbound connection into the pool (under its ``pool_key``)."""
        key = connection.pool_key
        if key is None:
            raise ValueError(f"{connection!r} has no pool key")
        conns = self._open.setdefault(key.destination, [])
        if connection not in conns:
            conns.append(connection)

    def remove(self, connection: StreamConnection) -> None:
        """Forget a connection (it closed); unknown connections are ignored."""
        key = connection.pool_key
        if key is None:
            return
        conns = self._open.get(key.destination)
        if conns is None or connection not in conns:
            return
        conns.remove(connection)
        if not conns:
            del self._open[key.destination]

    def close_all(self) -> None:
        """Abort every pooled connection (shutdown)."""
        for connection in list(self):
            connection.close(abort=True)


def client_endpoint(
    reactor: Any,
    key: PoolKey,
    tls: TlsIdentity | None,
    timeout: float,
) -> IStreamClientEndpoint:
    """The endpoint that connects to ``key`` (see the module docstring).

    The socket binds the key's local address (port 0) unless it is a
    wildcard. Raises :class:`NoTlsIdentityError` for TLS without a certificate.
    """
    host, port = key.remote
    local = key.local[0]
    bind = None if local in ("", "0.0.0.0", "::") else (local, 0)
    address = ip_literal(host)
    endpoint: IStreamClientEndpoint
    if address is None:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    elif address.version == 4:
        endpoint = TCP4ClientEndpoint(reactor, str(address), port, timeout, bind)
    else:
        endpoint = TCP6ClientEndpoint(reactor, str(address), port, timeout, bind)
    if key.transport == TLS:
        if tls is None:
            raise NoTlsIdentityError(
                f"cannot open TLS to {host}:{port}: no certificate is configured"
            )
        assert key.expected_name is not None
        creator = client_connection_creator(tls, key.expected_name)
        endpoint = TlsClientEndpoint(creator, endpoint, reactor)
    return endpoint
