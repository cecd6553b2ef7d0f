"""SIP over TCP and TLS: one protocol per connection, with the connection guards.

:class:`StreamConnection` is the protocol of every stream connection, inbound
(built by a :class:`StreamFactory`, one per TCP or TLS listener) or outbound
(built by an :class:`OutboundFactory` for the connection pool). TLS is
``twisted.protocols.tls.TLSMemoryBIOProtocol`` wrapped around it, so the same
protocol sees plaintext in both cases. It guards the connection
(docs/security-model.md) and hands each complete message to its
:class:`StreamHost` (the runtime), which owns classification, limits on the
number of connections, counters and the SIP stack:

- **TLS on a plain connection**: when the first two bytes of a TCP
  connection are a TLS record header (0x16 0x03) the connection is aborted at
  once; nothing is answered or processed.
- **No TLS on a TLS connection**: OpenSSL refuses anything but a handshake;
  plaintext is only ever delivered after ``handshakeCompleted`` (and
  :meth:`StreamConnection.dataReceived` aborts should it come earlier). A peer
  that stays silent is aborted after ``tls-handshake-timeout``.
- **Idle**: no complete message or keep-alive, sent or received, for
  ``tcp-idle-timeout`` (inbound) or ``outbound-idle-timeout`` (outbound): the
  connection is closed.
- **Slow sender**: a message started but not finished within
  ``partial-message-timeout``: aborted.
- **Size and framing**: :class:`~sbc.sip.framing.StreamFramer` with every
  limit at ``max-message-size``; on its ParseError the request is answered
  (513 Message Too Large, or 400) when its head was readable, then the
  connection is closed.
- **Keep-alive**: an RFC 5626 §4.4.1 ``CRLFCRLF`` ping is answered ``CRLF``.

Every event is counted per adjacency through :meth:`StreamHost.event`.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sbc.adjacencies import TCP, TLS, ListenerKey
from sbc.config import Limits
from sbc.errors import ParseError
from sbc.identity import PeerIdentities
from sbc.sip.framing import KEEPALIVE_PING, StreamFramer
from sbc.sip.stack import error_answer
from sbc.transport.tls import PeerVerificationError, anonymous_peer, peer_identities

__all__ = [
    "CLOSE_GRACE",
    "KEEPALIVE_PONG",
    "TLS_RECORD_PREFIX",
    "OutboundFactory",
    "PoolKey",
    "StreamConnection",
    "StreamFactory",
    "StreamHost",
    "address_of",
    "no_delay",
    "starts_like_tls",
]


@attrs.frozen
class PoolKey:
    """One outbound destination.

    ``local`` is the address and port of the flow (the adjacency's
    signaling address; the socket binds that address with an ephemeral
    port). ``expected_name`` is required for TLS and None for TCP.
    ``adjacency`` names the adjacency the connection is opened for, when the
    sender knows it (a label: no part of equality).
    """

    transport: str
    local: tuple[str, int]
    remote: tuple[str, int]
    expected_name: str | None = None
    adjacency: str | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.transport not in (TCP, TLS):
            raise ValueError(f"not a stream transport: {self.transport!r}")
        if (self.transport == TLS) != (self.expected_name is not None):
            raise ValueError("expected_name is set exactly for TLS destinations")

    @property
    def destination(self) -> tuple[str, str, tuple[str, int]]:
        """What a reusable connection must share: transport, local address, remote."""
        return (self.transport, self.local[0], self.remote)


TLS_RECORD_PREFIX = b"\x16\x03"
"""A TLS handshake record header: content type 22, protocol version major 3."""

KEEPALIVE_PONG = b"\r\n"
"""The answer to a ``CRLFCRLF`` ping (RFC 5626 §4.4.1)."""

CLOSE_GRACE = 5.0
"""Seconds a gracefully closed connection gets to flush before it is aborted."""


def starts_like_tls(data: bytes) -> bool:
    """True when ``data`` begins with a TLS record header (0x16 0x03)."""
    return data[:2] == TLS_RECORD_PREFIX


def address_of(address: IAddress) -> tuple[str, int]:
    """``(host, port)`` of an IPv4/IPv6 address object (anything else: ``("", 0)``)."""
    host = getattr(address, "host", "")
    port = getattr(address, "port", 0)
    return (str(host), int(port)) if isinstance(port, int) else (str(host), 0)


class StreamHost(Protocol):
    """What a :class:`StreamConnection` needs from the runtime."""

    @property
    def clock(self) -> IReactorTime:
        """Time source and scheduler for the connection's timers."""

    @property
    def limits(self) -> Limits:
        """The limits in force (read when a connection is made)."""

    def next_connection_id(self) -> int:
        """A connection id never used before."""

    def stream_opened(self, connection: StreamConnection) -> bool:
        """Accept (True) or refuse a new connection; sets ``connection.adjacency``.

        Called from ``connectionMade`` with the addresses known; the host
        counts a refusal, the connection then aborts itself.
        """

    def stream_ready(self, connection: StreamConnection) -> None:
        """The connection can carry SIP (TCP: at once; TLS: handshake verified)."""

    def stream_message(self, connection: StreamConnection, data: bytes) -> None:
        """One complete framed SIP message arrived."""

    def stream_closed(self, connection: StreamConnection, reason: Failure) -> None:
        """The connection is gone (after it was accepted by :meth:`stream_opened`)."""

    def event(self, adjacency: str | None, counter: str, message: str, **fields: Any) -> None:
        """Count ``counter`` for ``adjacency`` and log ``message`` (rate-limited)."""

    def count(self, adjacency: str | None, counter: str, by: int = 1) -> None:
        """Count without logging."""


def no_delay(transport: object) -> bool:
    """Turn Nagle's algorithm off on the TCP socket under ``transport`` (TLS or not).

    SIP sends small messages that each wait for an answer (a 100 Trying, then
    a 180, a 200): with Nagle the second one waits for the peer's delayed
    ACK of the first, up to tens of milliseconds per exchange; SIP stacks set
    ``TCP_NODELAY`` for this reason. Returns False when there is no TCP
    socket to tune (a test transport).
    """
    for _ in range(3):  # the TCP transport, or the TLS wrapper around it
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if callable(set_no_delay):
            set_no_delay(True)
            return True
        transport = getattr(transport, "transport", None)
    return False


@implementer(IHandshakeListener)
class StreamConnection(TwistedProtocol):
    """One TCP or TLS connection carrying SIP (see the module docstring).

    ``transport_name`` is ``"TCP"`` or ``"TLS"``; ``listener`` is the
    listener an inbound connection arrived on (for an outbound one, the
    local address and port of the flow that opened it); ``outbound`` tells
    which idle timeout applies. ``local`` and ``remote`` are set once
    connected; ``peer_identities`` once a TLS handshake is verified.
    """

    def __init__(
        self,
        host: StreamHost,
        transport_name: str,
        listener: ListenerKey,
        connection_id: int,
        *,
        outbound: bool = False,
        adjacency: str | None = None,
        pool_key: PoolKey | None = None,
    ) -> None:
        if transport_name not in (TCP, TLS):
            raise ValueError(f"not a stream transport: {transport_name!r}")
        self.host = host
        self.transport_name = transport_name
        self.listener = listener
        self.connection_id = connection_id
        self.outbound = outbound
        self.adjacency = adjacency
        self.pool_key = pool_key
        self.local: tuple[str, int] = ("", 0)
        self.remote: tuple[str, int] = ("", 0)
        self.peer_identities: PeerIdentities | None = None
        limits = host.limits
        self._limits = limits
        self._framer = StreamFramer(
            max_header_bytes=limits.max_message_size,
            max_body_bytes=limits.max_message_size,
            max_message_bytes=limits.max_message_size,
        )
        self._head = b""  # first bytes of a plain connection, until the TLS sniff is done
        self._sniffing = transport_name == TCP
        self.accepted = False
        self.ready = False
        self.closing = False
        self.lost: Failure | None = None
        self._handshake_timed_out = False
        self._handshake_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._partial_timer: IDelayedCall | None = None
        self._grace_timer: IDelayedCall | None = None
        self._waiters: list[Deferred[StreamConnection]] = []

    def __repr__(self) -> str:
        direction = "to" if self.outbound else "from"
        return (
            f"<StreamConnection #{self.connection_id} {self.transport_name} "
            f"{direction} {self.remote[0]}:{self.remote[1]} adjacency={self.adjacency}>"
        )

    @property
    def tls(self) -> bool:
        """True for a TLS connection."""
        return self.transport_name == TLS

    @property
    def open(self) -> bool:
        """True while the connection can still be written to."""
        return self.accepted and not self.closing and self.lost is None

    @property
    def idle_timeout(self) -> int:
        """Seconds without traffic before the connection is closed."""
        if self.outbound:
            return self._limits.outbound_idle_timeout
        return self._limits.tcp_idle_timeout

    # -- Twisted hooks --------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.local = address_of(self.transport.getHost())
        self.remote = address_of(self.transport.getPeer())
        if not self.host.stream_opened(self):
            self.closing = True
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.accepted = True
        no_delay(self.transport)
        if self.tls:
            self._handshake_timer = self.host.clock.callLater(
                self._limits.tls_handshake_timeout, self._handshake_timeout
            )
        else:
            self._become_ready()

    def handshakeCompleted(self) -> None:
        if not self.accepted or self.closing:
            return
        self._cancel("_handshake_timer")
        identities = peer_identities(self.transport)
        if identities is None and anonymous_peer(self.transport):
            # client-certificate optional/none: a phone without a certificate;
            # its requests are authenticated by other means (docs/phones.md)
            self.host.count(self.adjacency, "handshakes")
            self.host.count(self.adjacency, "handshakes-without-certificate")
            self._become_ready()
            return
        if identities is None:  # cannot happen with sbc's creators; fail closed
            self.host.event(
                self.adjacency,
                "verification-failures",
                "TLS {remote}: handshake finished without a verified certificate",
                remote=self._remote_text,
            )
            self._close(None, abort=True)
            return
        self.peer_identities = identities
        self.host.count(self.adjacency, "handshakes")
        self._become_ready()

    def dataReceived(self, data: bytes) -> None:
        if self.closing or not self.accepted:
            return
        if self.tls and not self.ready:
            # TLSMemoryBIOProtocol delivers nothing before the handshake; be sure.
            self._close("connections-closed:data-before-handshake", abort=True)
            return
        if self._sniffing:
            self._head += data
            if len(self._head) < len(TLS_RECORD_PREFIX) and TLS_RECORD_PREFIX.startswith(
                self._head
            ):
                self._track_partial()
                return
            data, self._head, self._sniffing = self._head, b"", False
            if starts_like_tls(data):
                self._close(
                    "connections-closed:tls-on-plain",
                    abort=True,
                    message="{transport} {remote}: TLS record on a plain connection, aborted",
                )
                return
        try:
            items = self._framer.feed(data)
        except ParseError as error:
            self._framing_error(error)
            return
        for item in items:
            if self.closing:
                return
            self._touch()
            if item is KEEPALIVE_PING:
                self.host.count(self.adjacency, "keepalives")
                self.transport.write(KEEPALIVE_PONG)  # type: ignore[union-attr]
            else:
                assert isinstance(item, bytes)
                self.host.stream_message(self, item)
        if not self.closing:
            self._track_partial()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self.lost is not None:
            return
        self.lost = reason
        for name in ("_handshake_timer", "_idle_timer", "_partial_timer", "_grace_timer"):
            self._cancel(name)
        if not self.accepted:
            return
        if self.tls and not self.ready:
            self._handshake_failed(reason)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(reason)
        self.host.stream_closed(self, reason)

    # -- for the runtime ------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write one message; False when the connection can no longer be written to."""
        if not self.open or self.transport is None:
            return False
        self.transport.write(data)
        self._touch()
        return True

    def when_ready(self) -> Deferred[StreamConnection]:
        """Fires with this connection once it can carry SIP, or fails with why it was lost."""
        if self.ready and self.open:
            return succeed(self)
        if self.lost is not None:
            return fail(self.lost)
        if self.closing:
            return fail(Failure(ConnectionError("connection is closing")))
        waiter: Deferred[StreamConnection] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def close(self, counter: str | None = None, *, abort: bool = False) -> None:
        """Close the connection (gracefully unless ``abort``), counting ``counter`` if given."""
        self._close(counter, abort=abort)

    # -- internals ------------------------------------------------------------

    @property
    def _remote_text(self) -> str:
        host, port = self.remote
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _become_ready(self) -> None:
        self.ready = True
        self._idle_timer = self.host.clock.callLater(self.idle_timeout, self._idle)
        self.host.stream_ready(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if self.open:
                waiter.callback(self)
            else:
                waiter.errback(Failure(ConnectionError("connection closed while opening")))

    def _touch(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.idle_timeout)

    def _track_partial(self) -> None:
        pending = self._framer.buffered + len(self._head)
        timer = self._partial_timer
        if pending and (timer is None or not timer.active()):
            self._partial_timer = self.host.clock.callLater(
                self._limits.partial_message_timeout, self._partial_timeout
            )
        elif not pending:
            self._cancel("_partial_timer")

    def _cancel(self, name: str) -> None:
        timer: IDelayedCall | None = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def _close(self, counter: str | None, *, abort: bool, message: str | None = None) -> None:
        if self.closing or self.lost is not None:
            return
        self.closing = True
        for name in ("_handshake_timer", "_idle_timer", "_partial_timer"):
            self._cancel(name)
        if counter is not None:
            self.host.event(
                self.adjacency,
                counter,
                message or "{transport} {remote}: connection closed ({why})",
                transport=self.transport_name,
                remote=self._remote_text,
                why=counter,
            )
        transport = self.transport
        if transport is None:
            return
        if abort:
            transport.abortConnection()  # type: ignore[attr-defined]
        else:
            transport.loseConnection()
            if self.lost is None:
                self._grace_timer = self.host.clock.callLater(CLOSE_GRACE, self._abort_now)

    def _abort_now(self) -> None:
        self._grace_timer = None
        if self.lost is None and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _framing_error(self, error: ParseError) -> None:
        answer = error_answer(error)
        if answer is not None and self.transport is not None:
            self.transport.write(answer)
        if error.status == 513:
            counter = "connections-closed:message-too-large"
        else:
            counter = "connections-closed:bad-framing"
        self.host.event(
            self.adjacency,
            counter,
            "{transport} {remote}: {problem} ({status}); {outcome}",
            transport=self.transport_name,
            remote=self._remote_text,
            problem=error.reason,
            status=error.status,
            outcome="answered, then closed" if answer is not None else "closed",
        )
        self._close(None, abort=answer is None)

    def _handshake_timeout(self) -> None:
        self._handshake_timer = None
        self._handshake_timed_out = True
        self._close(
            "connections-closed:handshake-timeout",
            abort=True,
            message="TLS {remote}: no handshake within the timeout, aborted",
        )

    def _idle(self) -> None:
        self._idle_timer = None
        self._close("connections-closed:idle-timeout", abort=False)

    def _partial_timeout(self) -> None:
        self._partial_timer = None
        self._close(
            "connections-closed:partial-message-timeout",
            abort=True,
            message="{transport} {remote}: message not completed within the timeout, aborted",
        )

    def _handshake_failed(self, reason: Failure) -> None:
        why = reason.getErrorMessage()
        self.host.event(
            self.adjacency,
            "handshake-failures",
            "TLS {remote}: handshake failed: {why}",
            remote=self._remote_text,
            why=why,
        )
        if reason.check(PeerVerificationError):
            self.host.event(
                self.adjacency,
                "verification-failures",
                "TLS {remote}: peer certificate refused: {why}",
                remote=self._remote_text,
                why=why,
            )


class StreamFactory(Factory):
    """The protocol factory of one TCP or TLS listener (TLS: wrap it in TLSMemoryBIOFactory)."""

    noisy = False  # the runtime logs listeners itself

    def __init__(self, host: StreamHost, listener: ListenerKey) -> None:
        self.host = host
        self.listener = listener

    def buildProtocol(self, addr: IAddress | None) -> StreamConnection:
        connection = StreamConnection(
            self.host,
            self.listener.transport,
            self.listener,
            self.host.next_connection_id(),
        )
        if addr is not None:
            # known before connectionMade, so the TLS layer can pick the
            # client-certificate setting of the source's adjacency
            connection.remote = address_of(addr)
        connection.factory = self
        return connection


class OutboundFactory(Factory):
    """Builds the protocol of one outbound connection (used once per connect)."""

    def __init__(
        self,
        host: StreamHost,
        pool_key: PoolKey,
        listener: ListenerKey,
        adjacency: str | None,
    ) -> None:
        self.host = host
        self.pool_key = pool_key
        self.listener = listener
        self.adjacency = adjacency

    def buildProtocol(self, addr: IAddress | None) -> StreamConnection:
        connection = StreamConnection(
            self.host,
            self.pool_key.transport,
            self.listener,
            self.host.next_connection_id(),
            outbound=True,
            adjacency=self.adjacency,
            pool_key=self.pool_key,
        )
        connection.factory = self
        return connection
