"""The I/O edge around one sans-I/O SIP stack: listeners, connections, the timer.

:class:`SipRuntime` owns everything that touches the reactor for an SBC:

- one listener per :class:`~sbc.adjacencies.ListenerKey` of the attached
  adjacencies (adjacencies sharing address, port and transport share it):
  UDP with ``reactor.listenUDP`` (:mod:`sbc.transport.udp`), TCP and TLS as
  strports endpoint descriptions (``tcp:PORT:interface=ADDR``) listening with
  a :class:`~sbc.transport.stream.StreamFactory`, wrapped for TLS in
  ``TLSMemoryBIOFactory(server creator, False, factory)``;
- the inbound connections, the outbound :class:`~sbc.transport.pool.ConnectionPool`
  and the connection limits;
- classification of every inbound message (:meth:`AdjacencyTable.classify`
  on listener and source; stream connections are classified once, when they
  are accepted), with an :class:`~sbc.adjacencies.InboundContext` handed to
  the stack with each message;
- the stack's outputs: :class:`~sbc.sip.stack.Transmit` is written on its
  flow (UDP listener socket; the connection it names; else a pooled or new
  outbound connection, RFC 3261 §18.2.2 / RFC 5923), :class:`~sbc.sip.stack.Dropped`
  is counted and logged;
- exactly one armed ``callLater`` per stack, at ``stack.next_deadline()``,
  re-armed after every batch of outputs; it calls ``stack.advance`` with
  ``reactor.seconds()``;
- per-adjacency :class:`~sbc.counters.Counters` and rate-limited log lines
  (at most one per counter name per ``log_interval`` seconds of reactor time).

Log events (docs/logging.md): every counted event is logged with an
``event`` name (:data:`EVENT_NAMES`: ``connection.refused``,
``connection.closed``, ``tls.handshake-failed``, ``message.dropped``...),
the ``counter``, the ``adjacency`` (None when unclassified), a ``reason``
(the counter's suffix, e.g. ``max-per-source``) and the peer address
(``remote`` or ``source``). The text of a line is rate-limited per counter;
for the connection events of :data:`EVERY_EVENT` (refused connections,
guard closures, TLS failures, TLS identity mismatches) a line held back is
still emitted as an event without text (``log_format`` None, so the text log
skips it; the JSON log has it, with ``suppressed: true``), up to
:data:`MAX_HELD_EVENTS` per counter and interval: beyond that a flood is only
counted, and the next line (or the ``log.suppressed`` summary) says how many
events were dropped.

Listeners and the attached set are logged too, at info: ``listener.opened``,
``listener.closed`` (field ``listener``, and ``adjacencies`` sharing it),
``adjacency.attached`` and ``adjacency.detached`` (field ``adjacency``) when
:meth:`SipRuntime.apply` switches the attached set.
"""

from __future__ import annotations

import itertools
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sbc.adjacencies import (
    TCP,
    TLS,
    UDP,
    AdjacencyTable,
    InboundContext,
    ListenerKey,
    replies_only,
)
from sbc.config import ClientCertificate, Limits
from sbc.counters import Counters
from sbc.errors import ParseError
from sbc.flood import Ban, SourceGuard, Verdict
from sbc.identity import ip_literal
from sbc.sip.locate import Resolution
from sbc.sip.message import Request, parse_message
from sbc.sip.stack import Dropped, Flow, Resolve, StackOutput, Transmit
from sbc.sip.transaction import TransactionKey
from sbc.transport.pool import ConnectionPool, NoTlsIdentityError, PoolKey, client_endpoint
from sbc.transport.resolver import (
    DnsCache,
    NextHopResolver,
    OncePerInterval,
    names_query,
    names_resolver,
)
from sbc.transport.reuseport import listen_stream_shared, listen_udp_shared
from sbc.transport.stream import OutboundFactory, StreamConnection, StreamFactory
from sbc.transport.tls import TlsIdentity, server_context_factory
from sbc.transport.udp import UdpListener

__all__ = [
    "EVENT_NAMES",
    "EVERY_EVENT",
    "MAX_HELD_EVENTS",
    "EndpointFactory",
    "RateLimitedLog",
    "SipRuntime",
    "SipStackLike",
    "event_name",
]

EVENT_NAMES: dict[str, str] = {
    "connections-refused": "connection.refused",
    "connections-closed": "connection.closed",
    "handshake-failures": "tls.handshake-failed",
    "verification-failures": "tls.verification-failed",
    "connect-failures": "connection.connect-failed",
    "drops": "message.dropped",
    "transmit-failures": "message.send-failed",
    "listen-failures": "listener.failed",
    "dns-failures": "dns.failed",
}
"""The log event name of each counter (the part before ``:``); others: ``transport.COUNTER``."""

DETACHED = "connections-closed:detached"
"""Counter (and close reason) of a connection whose adjacency was detached."""

EVERY_EVENT: tuple[str, ...] = (
    "connections-refused:",
    "connections-closed:",
    "handshake-failures",
    "verification-failures",
    "drops:tls-identity-mismatch",
)
"""Counters (prefixes) whose every occurrence is a log event, even when its text line is held
(up to :data:`MAX_HELD_EVENTS` per interval)."""

MAX_HELD_EVENTS = 100
"""How many held lines of one key :class:`RateLimitedLog` still emits as events (``always``)
between two of its text lines, i.e. per rate-limit interval; more are only counted
(``dropped``), so that a connection flood cannot fill the disk with one event each."""


def event_name(counter: str) -> str:
    """The log event name of ``counter`` (``connections-refused:max-per-source`` ->
    ``connection.refused``)."""
    name = counter.partition(":")[0]
    return EVENT_NAMES.get(name) or f"transport.{name}"


class SipStackLike(Protocol):
    """The part of :class:`sbc.sip.stack.SipStack` the runtime drives."""

    def receive(
        self, data: bytes, flow: Flow, now: float, context: object = None
    ) -> list[StackOutput]: ...

    def advance(self, now: float) -> list[StackOutput]: ...

    def next_deadline(self) -> float | None: ...

    def transport_error(self, key: TransactionKey, now: float) -> list[StackOutput]: ...

    def connection_closed(self, connection_id: int, now: float) -> list[StackOutput]: ...


EndpointFactory = Callable[[Any, PoolKey, "TlsIdentity | None", float], IStreamClientEndpoint]
"""``(reactor, key, tls, connect timeout) -> endpoint`` (default :func:`client_endpoint`)."""


class RateLimitedLog:
    """At most one log line per key every ``interval`` seconds of ``clock`` time.

    Lines held back are counted and the next line for the key says how many
    (field ``held``); :meth:`flush` reports the counts still pending. With
    ``always=True`` a line held back is still emitted, as an event without
    text (``log_format`` None: text observers skip it) that carries its
    format in ``held_format`` and ``suppressed=True``, but only the first
    ``max_held_events`` of them between two text lines of the key: the
    others are dropped, and the next line (field ``dropped``) or
    :meth:`flush` says how many.
    """

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime,
        interval: float,
        max_held_events: int = MAX_HELD_EVENTS,
    ) -> None:
        self.log = log
        self.clock = clock
        self.interval = interval
        self.max_held_events = max_held_events
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()

    def emit(self, key: str, format: str, *, always: bool = False, **fields: Any) -> bool:
        """Log ``format`` with ``fields`` unless ``key`` was logged too recently.

        Returns True when the line was logged with its text.
        """
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] += 1
            if always:
                if self._held[key] - self._dropped[key] <= self.max_held_events:
                    self.log.warn(None, held_format=format, suppressed=True, **fields)
                else:
                    self._dropped[key] += 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        dropped = self._dropped.pop(key, 0)
        if dropped:
            format += " ({held} similar lines suppressed, {dropped} of them not logged at all)"
        elif held:
            format += " ({held} similar lines suppressed)"
        self.log.warn(format, rate_key=key, held=held, dropped=dropped, **fields)
        return True

    def flush(self) -> None:
        """Log how many lines each key held back since its last line, and forget them."""
        held, self._held = self._held, Counter()
        dropped, self._dropped = self._dropped, Counter()
        for key, count in sorted(held.items()):
            lost = dropped[key]
            self.log.warn(
                "{rate_key}: {held} similar lines suppressed, {dropped} of them not logged at all"
                if lost
                else "{rate_key}: {held} similar lines suppressed",
                event="log.suppressed",
                rate_key=key,
                held=count,
                dropped=lost,
            )


@implementer(IOpenSSLServerConnectionCreator)
class _CurrentIdentityCreator:
    """Server connections made with the runtime's identity at handshake time (crypto reload)."""

    def __init__(self, runtime: SipRuntime) -> None:
        self._runtime = runtime

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> Any:
        identity = self._runtime.tls
        if identity is None:
            raise NoTlsIdentityError("no certificate is configured")
        protocol = tlsProtocol.wrappedProtocol
        mode = self._runtime.client_certificate_for(protocol)
        expected = self._runtime.client_identity_for(protocol)
        creator = server_context_factory(identity, mode, expected)
        return creator.serverConnectionForTLS(tlsProtocol)


def _address_text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SipRuntime:
    """Listeners, connections and the stack timer of one SBC (see the module docstring).

    ``reactor`` provides IReactorTime, IReactorTCP and IReactorUDP (a
    ``MemoryReactorClock`` with a ``listenUDP`` in tests); ``stack`` is the
    :class:`~sbc.sip.stack.SipStack`; ``table`` the attached adjacencies.
    ``tls`` is the SBC's identity (needed by TLS listeners and outbound TLS).
    ``endpoint_factory`` builds outbound endpoints (tests replace it).
    ``resolver`` finds next hops in DNS (:class:`~sbc.sip.stack.Resolve`
    outputs); by default one is built on first use, asking ``dns_servers``
    (``(address, port)`` pairs; none: the system's) through Twisted Names.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        stack: SipStackLike,
        table: AdjacencyTable,
        *,
        limits: Limits | None = None,
        tls: TlsIdentity | None = None,
        counters: Counters | None = None,
        endpoint_factory: EndpointFactory = client_endpoint,
        log_interval: float = 10.0,
        log: Logger | None = None,
        resolver: NextHopResolver | None = None,
        dns_servers: Iterable[tuple[str, int]] = (),
        guard: SourceGuard | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.reactor = reactor
        #: Open listeners with SO_REUSEPORT, with a UDP socket of this process's own
        #: beside each UDP listener (a worker process, docs/scaling.md).
        self.reuse_port = reuse_port
        #: reuse_port: listening sockets given by the supervisor (descriptor by listener),
        #: used instead of new ones when those listeners open
        self.inherited: dict[ListenerKey, int] = {}
        self.stack = stack
        self.table = table
        self._limits = limits if limits is not None else Limits()
        self.tls = tls
        self.counters = counters if counters is not None else Counters()
        self.endpoint_factory = endpoint_factory
        if log is not None:
            self.log = log
        self.ratelog = RateLimitedLog(self.log, reactor, log_interval)
        self._resolver = resolver
        self._own_resolver = resolver is None
        self._dns_servers = tuple(dns_servers)
        #: DNS failures are logged once per domain per interval.
        self.dns_log = OncePerInterval(reactor, log_interval)
        self.pool = ConnectionPool(self._connect)
        self.running = False
        self._ids = itertools.count(1)
        self._ports: dict[ListenerKey, IListeningPort] = {}
        self._opening: dict[ListenerKey, list[Deferred[None]]] = {}
        self._udp: dict[ListenerKey, UdpListener] = {}
        #: reuse_port: this process's own UDP socket beside each shared UDP listener
        self._own: dict[ListenerKey, tuple[ListenerKey, IListeningPort]] = {}
        #: reuse_port: (address, own port) -> (address, shared port), and the reverse
        self._shared_of: dict[tuple[str, int], tuple[str, int]] = {}
        self._own_ports: dict[tuple[str, int], int] = {}
        #: reuse_port: this process's own port beside each shared cluster-link listener
        self._own_link_ports: dict[tuple[str, int], int] = {}
        table.own_ports = self._own_ports
        self._connections: dict[int, StreamConnection] = {}
        #: Connections of detached adjacencies waiting for their drain time: id -> close timer.
        self._draining: dict[int, IDelayedCall] = {}
        self._per_adjacency: Counter[str] = Counter()
        self._per_source: Counter[str] = Counter()
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        #: Flood and scanner defence of the untrusted adjacencies (sbc.flood).
        self.guard = (
            guard
            if guard is not None
            else SourceGuard(self._limits, counters=self.counters, log=log)
        )
        self.guard.trusted = _trusted_names(table)
        self.guard.on_ban = self._source_banned
        self.guard.on_change = self._arm_guard_timer
        self._guard_timer: IDelayedCall | None = None
        self._guard_timer_at: float | None = None

    # -- public API -----------------------------------------------------------

    @property
    def clock(self) -> IReactorTime:
        """The reactor, as the time source."""
        return self.reactor

    @property
    def limits(self) -> Limits:
        """The limits in force; new connections and messages use the current value."""
        return self._limits

    @property
    def listening(self) -> dict[ListenerKey, IListeningPort]:
        """The open listeners."""
        return dict(self._ports)

    @property
    def connections(self) -> dict[int, StreamConnection]:
        """Every open stream connection (inbound and outbound) by connection id."""
        return dict(self._connections)

    def start(self) -> Deferred[None]:
        """Open the listeners of the attached adjacencies and arm the stack timer.

        Fires when every listener is open; fails with the first error (e.g.
        ``CannotListenError``); listeners that did open stay open until
        :meth:`stop`.
        """
        self.running = True
        result = self._sync_listeners()
        self._rearm()
        self._arm_guard_timer()
        return result

    def stop(self) -> Deferred[None]:
        """Close listeners and connections, disarm the timer; fires when the ports are closed."""
        self.running = False
        self._cancel_timer()
        if self._guard_timer is not None and self._guard_timer.active():
            self._guard_timer.cancel()
        self._guard_timer = None
        for call in self._draining.values():
            if call.active():
                call.cancel()
        self._draining.clear()
        closing = [self._stop_listening(key) for key in list(self._ports)]
        for connection in list(self._connections.values()):
            connection.close(abort=True)
        self.pool.close_all()
        self.ratelog.flush()
        return _gather(closing)

    def apply(self, table: AdjacencyTable, limits: Limits | None = None) -> Deferred[None]:
        """Switch to a new attached set (attach / no attach, a commit).

        Listeners no longer needed are closed and new ones opened; inbound
        connections whose adjacency was detached (or whose source now
        belongs to another adjacency) and outbound connections of detached
        adjacencies are closed. ``limits``, when given, apply to new
        connections and messages.
        """
        before = self.table
        self.table = table
        table.own_ports = self._own_ports
        self.guard.trusted = _trusted_names(table)
        if limits is not None:
            self._limits = limits
            self.guard.configure(limits, self.guard.user_agents)
        drain = self._limits.detach_drain_time
        self._log_attached_set(before, table, drain)
        for connection in list(self._connections.values()):
            reason = self._stale(connection)
            if reason is None:
                continue
            if reason == DETACHED and drain > 0:
                self._drain(connection, drain)
            else:
                connection.close(reason)
        if not self.running:
            return succeed(None)
        return self._sync_listeners()

    def _log_attached_set(
        self, before: AdjacencyTable, after: AdjacencyTable, drain: float
    ) -> None:
        """``adjacency.attached`` / ``adjacency.detached`` for each change of the attached set."""
        old = {a.name for a in before.attached}
        new = {a.name for a in after.attached}
        for name in sorted(new - old):
            self.log.info(
                "adjacency {adjacency} attached", event="adjacency.attached", adjacency=name
            )
        for name in sorted(old - new):
            self.log.info(
                "adjacency {adjacency} detached (its connections close after {drain_time} s)",
                event="adjacency.detached",
                adjacency=name,
                drain_time=drain,
            )

    def _drain(self, connection: StreamConnection, seconds: float) -> None:
        """Close a detached adjacency's connection after ``seconds`` (the detach-drain-time).

        The BYEs that release the adjacency's calls have just been written to
        it; the answers come back on it. New requests arriving meanwhile find
        no attached adjacency and are refused by the core.
        """
        if connection.connection_id in self._draining:
            return

        def drained() -> None:
            self._draining.pop(connection.connection_id, None)
            if self._connections.get(connection.connection_id) is connection:
                connection.close(DETACHED)

        self._draining[connection.connection_id] = self.reactor.callLater(seconds, drained)

    def _size_receive_buffer(self, key: ListenerKey, port: Any) -> None:
        """Ask the kernel for the ``udp-receive-buffer`` limit; log when it grants less.

        Linux doubles the value asked and caps it at ``net.core.rmem_max``.
        """
        handle = getattr(port, "socket", None)
        if handle is None:  # a test double without a socket
            return
        wanted = self._limits.udp_receive_buffer
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
            granted = handle.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError as error:
            self.log.warn(
                "{listener}: cannot size the UDP receive buffer: {error}",
                listener=str(key),
                error=error,
            )
            return
        if granted < wanted:
            self.log.warn(
                "{listener}: UDP receive buffer is {granted} bytes, not the {wanted} of "
                "udp-receive-buffer: raise net.core.rmem_max (sysctl) to allow it",
                event="listener.small-buffer",
                listener=str(key),
                granted=granted,
                wanted=wanted,
            )

    @property
    def resolver(self) -> NextHopResolver:
        """What finds next hops in DNS (built on first use, see the class docstring)."""
        if self._resolver is None:
            names = names_resolver(self.reactor, self._dns_servers)
            cache = DnsCache(
                self.reactor,
                names_query(names, lambda: self._limits.dns_timeout),
                negative_ttl=lambda: self._limits.dns_negative_cache_time,
                max_entries=lambda: self._limits.dns_cache_entries,
            )
            self._resolver = NextHopResolver(cache)
        return self._resolver

    @property
    def dns_servers(self) -> tuple[tuple[str, int], ...]:
        """The configured DNS servers, (address, port) pairs; empty: the system's."""
        return self._dns_servers

    def set_dns_servers(self, servers: Iterable[tuple[str, int]]) -> None:
        """Ask ``servers`` from now on (none: the system's); the cache starts empty.

        Also re-reads ``/etc/resolv.conf`` when no server is configured.
        Lookups on their way finish with the servers they started with. A
        resolver given to the constructor is kept as it is.
        """
        self._dns_servers = tuple(servers)
        if self._own_resolver:
            self._resolver = None

    def set_tls_identity(self, identity: TlsIdentity) -> None:
        """Use ``identity`` for every new handshake (``crypto reload``)."""
        self.tls = identity

    def process(self, outputs: Iterable[object]) -> None:
        """Carry out stack outputs (also for outputs the TU produced on its own), then re-arm."""
        for output in outputs:
            if isinstance(output, Transmit):
                self._transmit(output)
            elif isinstance(output, Dropped):
                self._dropped(output)
            elif isinstance(output, Resolve):
                self._resolve(output)
            else:
                self.log.error("unknown stack output {output!r} ignored", output=output)
        self._rearm()

    # -- hosts of the protocols (stream.StreamHost, udp.DatagramHost) ---------

    def next_connection_id(self) -> int:
        return next(self._ids)

    def client_certificate_for(self, protocol: object) -> ClientCertificate:
        """The client-certificate setting for a new inbound TLS connection.

        The adjacency is the one the source address classifies into on the
        connection's listener; an unclassified source gets ``required`` (its
        connection is refused anyway).
        """
        if isinstance(protocol, StreamConnection):
            adjacency = self.table.classify(protocol.listener, protocol.remote[0])
            if adjacency is not None:
                return adjacency.client_certificate
        return ClientCertificate.REQUIRED

    def client_identity_for(self, protocol: object) -> str | None:
        """The name a new inbound TLS connection's certificate must carry, if any.

        Only on a cluster link: the identity every node's certificate carries
        (docs/scaling.md); elsewhere the From domain is checked per request.
        """
        if isinstance(protocol, StreamConnection):
            adjacency = self.table.classify(protocol.listener, protocol.remote[0])
            if adjacency is not None and adjacency.cluster_link:
                return adjacency.cluster_identity
        return None

    def classify(self, listener: ListenerKey, source_ip: str) -> str | None:
        adjacency = self.table.classify(listener, source_ip)
        return None if adjacency is None else adjacency.name

    def count(self, adjacency: str | None, counter: str, by: int = 1) -> None:
        self.counters.increment(adjacency, counter, by)

    def event(self, adjacency: str | None, counter: str, message: str, **fields: Any) -> None:
        self.counters.increment(adjacency, counter)
        detail = counter.partition(":")[2]
        if detail:
            fields.setdefault("reason", detail)
        self.ratelog.emit(
            counter,
            message,
            always=counter.startswith(EVERY_EVENT),
            event=event_name(counter),
            counter=counter,
            adjacency=adjacency,
            **fields,
        )

    def admit(self, adjacency: str, source_ip: str, data: bytes) -> bool:
        """Screen one message from ``source_ip`` before it is parsed (sbc.flood).

        Always True on a trusted adjacency. Otherwise the message counts
        against the source's rate window and its User-Agent is checked; a
        refused message (banned source, or the one that bans it) is
        counted as ``drops:banned`` / ``drops:rate-limit`` /
        ``drops:user-agent`` and must be dropped without an answer.
        """
        guard = self.guard
        if adjacency in guard.trusted:
            return True
        verdict = guard.screen(source_ip, adjacency, data, self.reactor.seconds())
        if verdict is Verdict.PASS:
            return True
        self.counters.increment(adjacency, _DROP_COUNTERS[verdict])
        return False

    def datagram_message(
        self, listener: UdpListener, adjacency: str, data: bytes, source: tuple[str, int]
    ) -> None:
        key = listener.listener
        flow = Flow(UDP, listener.local, source, advertised=listener.advertised)
        self._deliver(data, flow, InboundContext(adjacency, key, None))

    def stream_opened(self, connection: StreamConnection) -> bool:
        if connection.outbound:
            self._register(connection)
            self.count(connection.adjacency, "connections-opened")
            return True
        source = connection.remote[0]
        listener = connection.listener
        adjacency = self.classify(listener, source)
        where = {"listener": str(listener), "remote": _address_text(connection.remote)}
        if adjacency is None:
            self.event(
                None,
                "connections-refused:no-adjacency",
                "{listener}: connection from {remote} matches no attached adjacency, refused",
                **where,
            )
            return False
        now = self.reactor.seconds()
        if adjacency not in self.guard.trusted:
            verdict = self.guard.screen(source, adjacency, None, now)
            if verdict is not Verdict.PASS:
                # The ban itself is logged once (source.banned); its connections are only counted.
                self.count(adjacency, f"connections-refused:{verdict.value}")
                return False
        limits = self._limits
        refusal = self.guard.allow_connection(connection.tls, now)
        if refusal is not None:
            self.event(
                adjacency,
                f"connections-refused:{refusal}",
                "{listener}: connection from {remote} refused: more than {limit} new "
                "{what} per second ({setting})",
                **where,
                **_CAP_FIELDS[refusal](limits),
            )
            return False
        if self._per_adjacency[adjacency] >= limits.max_connections_per_adjacency:
            self.event(
                adjacency,
                "connections-refused:max-per-adjacency",
                "{listener}: connection from {remote} refused: adjacency {adjacency} has "
                "{limit} connections (max-connections-per-adjacency)",
                limit=limits.max_connections_per_adjacency,
                **where,
            )
            return False
        if self._per_source[source] >= limits.max_connections_per_source:
            self.event(
                adjacency,
                "connections-refused:max-per-source",
                "{listener}: connection from {remote} refused: the source has {limit} "
                "connections (max-connections-per-source)",
                limit=limits.max_connections_per_source,
                **where,
            )
            return False
        connection.adjacency = adjacency
        self._register(connection)
        self.count(adjacency, "connections-accepted")
        return True

    def stream_ready(self, connection: StreamConnection) -> None:
        pass  # outbound waiters are told by the connection itself

    def stream_message(self, connection: StreamConnection, data: bytes) -> None:
        flow = Flow(
            connection.transport_name,
            connection.local,
            connection.remote,
            connection.connection_id,
        )
        if connection.adjacency is None:
            self.event(
                None,
                "drops:no-adjacency",
                "{transport} {remote}: message on a connection of no attached adjacency, dropped",
                transport=connection.transport_name,
                remote=_address_text(connection.remote),
            )
            return
        if not connection.outbound and not self.admit(
            connection.adjacency, connection.remote[0], data
        ):
            return
        context = InboundContext(
            connection.adjacency, connection.listener, connection.peer_identities
        )
        self._deliver(data, flow, context)

    def stream_closed(self, connection: StreamConnection, reason: Failure) -> None:
        if self._connections.pop(connection.connection_id, None) is None:
            return
        draining = self._draining.pop(connection.connection_id, None)
        if draining is not None and draining.active():
            draining.cancel()
        if not connection.outbound and connection.adjacency is not None:
            self._decrement(self._per_adjacency, connection.adjacency)
            self._decrement(self._per_source, connection.remote[0])
        self.pool.remove(connection)
        self.count(connection.adjacency, "connections-closed")
        self.process(self.stack.connection_closed(connection.connection_id, self.reactor.seconds()))

    # -- internals: listeners -------------------------------------------------

    def _sync_listeners(self) -> Deferred[None]:
        wanted = set(self.table.listeners)
        results: list[Deferred[None]] = []
        for key in list(self._ports):
            if key not in wanted:
                results.append(self._stop_listening(key))
        for key in sorted(wanted):
            if key in self._ports:
                continue
            results.append(self._listen(key))
        return _gather(results)

    def _listen(self, key: ListenerKey) -> Deferred[None]:
        """Open listener ``key`` (or join the attempt in progress); fires when it is open."""
        waiter: Deferred[None] = Deferred()
        waiters = self._opening.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._opening[key] = [waiter]
        try:
            if key.transport == UDP:
                protocol = UdpListener(self, key)
                if self.reuse_port:
                    port = listen_udp_shared(
                        self.reactor, key, protocol, inherited=self.inherited.pop(key, None)
                    )
                else:
                    port = self.reactor.listenUDP(
                        key.port, protocol, interface=key.address, maxPacketSize=65535
                    )
                self._udp[key] = protocol
                self._size_receive_buffer(key, port)
                started: Deferred[IListeningPort] = succeed(port)
            else:
                factory = self._stream_factory(key)
                if self.reuse_port:
                    inherited = self.inherited.pop(key, None)
                    started = succeed(
                        listen_stream_shared(self.reactor, key, factory, inherited=inherited)
                    )
                else:
                    description = f"tcp:{key.port}:interface={quoteStringArgument(key.address)}"
                    started = serverFromString(self.reactor, description).listen(factory)
        except Exception:
            started = fail()

        def opened(port: IListeningPort) -> None:
            waiters = self._opening.pop(key, [])
            if not self.running or key not in set(self.table.listeners):
                self._udp.pop(key, None)
                _stopped(port)
            else:
                self._ports[key] = port
                self.log.info(
                    "listening on {listener}",
                    event="listener.opened",
                    listener=str(key),
                    adjacencies=[a.name for a in self.table.adjacencies_on(key)],
                )
                if self.reuse_port and key.transport == UDP:
                    self._open_own(key)
                elif self.reuse_port and any(
                    a.cluster_link for a in self.table.adjacencies_on(key)
                ):
                    self._open_own_link(key)
            for waiter in waiters:
                waiter.callback(None)

        def failed(failure: Failure) -> None:
            waiters = self._opening.pop(key, [])
            self._udp.pop(key, None)
            self.event(
                None,
                "listen-failures",
                "cannot listen on {listener}: {why}",
                listener=str(key),
                why=failure.getErrorMessage(),
            )
            for waiter in waiters:
                waiter.errback(failure)

        started.addCallbacks(opened, failed)
        return waiter

    def _stop_listening(self, key: ListenerKey) -> Deferred[None]:
        port = self._ports.pop(key)
        self._udp.pop(key, None)
        self.log.info("stopped listening on {listener}", event="listener.closed", listener=str(key))
        own = self._own.pop(key, None)
        if own is None:
            return _stopped(port)
        own_key, own_port = own
        self._udp.pop(own_key, None)
        if key.transport == UDP:
            self._own_ports.pop((key.address, key.port), None)
        else:
            self._own_link_ports.pop((key.address, key.port), None)
        self._shared_of.pop((own_key.address, own_key.port), None)
        return _gather([_stopped(port), _stopped(own_port)])

    def _open_own(self, key: ListenerKey) -> None:
        """Open this process's own UDP socket beside the shared UDP listener ``key``.

        It is bound to the same address on a port the kernel picks. Requests
        this process starts out of the listener's adjacencies leave from it,
        and every flow that comes in on the shared listener names it in our
        Via and Contact (:attr:`UdpListener.advertised`): answers and
        in-dialog requests come back to this process (docs/scaling.md).
        Datagrams arriving on it are classified as on the shared listener.
        """
        shared = self._udp.get(key)
        protocol = UdpListener(self, key)
        try:
            port = self.reactor.listenUDP(0, protocol, interface=key.address, maxPacketSize=65535)
        except Exception as error:
            self.event(
                None,
                "listen-failures",
                "cannot open this process's own UDP socket beside {listener}: {why}",
                listener=str(key),
                why=str(error),
            )
            return
        own = int(port.getHost().port)
        own_key = ListenerKey(key.address, own, UDP)
        protocol.local = (key.address, own)
        self._udp[own_key] = protocol
        self._own[key] = (own_key, port)
        self._own_ports[(key.address, key.port)] = own
        self._shared_of[(key.address, own)] = (key.address, key.port)
        if shared is not None:
            shared.advertised = (key.address, own)
        self._size_receive_buffer(own_key, port)
        self.log.info(
            "listening on {listener}, this process's own port beside {shared}",
            event="listener.opened",
            listener=str(own_key),
            shared=str(key),
            port=own,
        )

    def _stream_factory(self, key: ListenerKey) -> Any:
        """The protocol factory of TCP/TLS listener ``key`` (TLS wraps the stream factory)."""
        factory: Any = StreamFactory(self, key)
        if key.transport == TLS:
            if self.tls is None:
                raise NoTlsIdentityError(f"{key}: TLS listener without a certificate")
            factory = TLSMemoryBIOFactory(
                _CurrentIdentityCreator(self), False, factory, clock=self.reactor
            )
        return factory

    def _open_own_link(self, key: ListenerKey) -> None:
        """Open this process's own listener beside the shared cluster-link listener ``key``.

        Same address and transport, a port the kernel picks, not shared: a
        worker process advertises it as its cluster link (docs/scaling.md),
        so that a call for one of its phones, from a sibling worker or from
        another node, reaches this very process. Connections on it are
        classified as on the shared listener (same adjacency, same
        ``remote-address`` and TLS identity checks).
        """
        try:
            factory = self._stream_factory(key)
            port = self.reactor.listenTCP(0, factory, interface=key.address)
        except Exception as error:
            self.event(
                None,
                "listen-failures",
                "cannot open this process's own cluster-link port beside {listener}: {why}",
                listener=str(key),
                why=str(error),
            )
            return
        own = int(port.getHost().port)
        own_key = ListenerKey(key.address, own, key.transport)
        self._own[key] = (own_key, port)
        self._own_link_ports[(key.address, key.port)] = own
        self._shared_of[(key.address, own)] = (key.address, key.port)
        self.log.info(
            "listening on {listener}, this process's own cluster-link port beside {shared}",
            event="listener.opened",
            listener=str(own_key),
            shared=str(key),
            port=own,
        )

    def own_link_port(self, shared: tuple[str, int]) -> int | None:
        """This process's own port beside the shared cluster-link listener ``shared``, or None."""
        return self._own_link_ports.get(shared)

    @property
    def own_ports(self) -> dict[tuple[str, int], int]:
        """This process's own UDP ports by shared (address, port): :meth:`_open_own`."""
        return dict(self._own_ports)

    def own_port(self, shared: tuple[str, int]) -> int | None:
        """This process's own UDP port beside the shared listener ``shared``, or None."""
        return self._own_ports.get(shared)

    # -- internals: connections ---------------------------------------------

    def _register(self, connection: StreamConnection) -> None:
        self._connections[connection.connection_id] = connection
        if not connection.outbound and connection.adjacency is not None:
            self._per_adjacency[connection.adjacency] += 1
            self._per_source[connection.remote[0]] += 1

    @staticmethod
    def _decrement(counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]

    def _stale(self, connection: StreamConnection) -> str | None:
        """Why ``connection`` must close under the current table, or None."""
        adjacency = connection.adjacency
        if adjacency is not None and self.table.get(adjacency) is None:
            return DETACHED
        if connection.outbound:
            return None
        if self.classify(connection.listener, connection.remote[0]) != adjacency:
            return "connections-closed:reconfigured"
        return None

    def _adjacency_for(self, transport: str, local: tuple[str, int], remote_ip: str) -> str | None:
        """The adjacency a flow belongs to: classification as if a message came in on it."""
        local = self._shared_of.get(local, local)
        for candidate in dict.fromkeys((transport, TCP, TLS, UDP)):
            found = self.classify(ListenerKey(local[0], local[1], candidate), remote_ip)
            if found is not None:
                return found
        for adjacency in self.table.attached:
            if (
                str(adjacency.address) == local[0]
                and adjacency.port == local[1]
                and adjacency.sends_tls == (transport == TLS)
            ):
                return adjacency.name
        return None

    def _flow_adjacency(self, flow: Flow) -> str | None:
        """The adjacency of ``flow``: the one it names, else worked out from its addresses."""
        if flow.adjacency is not None:
            return flow.adjacency
        return self._adjacency_for(flow.transport, flow.local, flow.remote[0])

    def _connect(self, key: PoolKey) -> Deferred[StreamConnection]:
        adjacency = key.adjacency or self._adjacency_for(key.transport, key.local, key.remote[0])
        listener = ListenerKey(key.local[0], key.local[1], key.transport)
        factory = OutboundFactory(self, key, listener, adjacency)
        endpoint = self.endpoint_factory(
            self.reactor, key, self.tls, self._limits.outbound_connect_timeout
        )
        attempt: Deferred[Any] = endpoint.connect(factory)

        def connected(connection: StreamConnection) -> Deferred[StreamConnection]:
            return connection.when_ready()

        def failed(failure: Failure) -> Failure:
            self.event(
                adjacency,
                "connect-failures",
                "{transport} connection to {remote} failed: {why}",
                transport=key.transport,
                remote=_address_text(key.remote),
                why=failure.getErrorMessage(),
            )
            return failure

        attempt.addCallback(connected)
        attempt.addErrback(failed)
        return attempt

    # -- internals: the stack -------------------------------------------------

    def _deliver(self, data: bytes, flow: Flow, context: InboundContext) -> None:
        self.count(context.adjacency, "messages-received")
        adjacency = self.table.get(context.adjacency)
        if (
            adjacency is not None
            and replies_only(adjacency, flow.transport)
            and _starts_something(data)
        ):
            self.event(
                context.adjacency,
                "drops:plain-request",
                "{transport} {remote}: a request that starts something came over the plain "
                "side of adjacency {adjacency}, whose inbound side is TLS only; dropped",
                transport=flow.transport,
                remote=_address_text(flow.remote),
            )
            return
        try:
            outputs = self.stack.receive(data, flow, self.reactor.seconds(), context)
        except Exception:
            self.count(context.adjacency, "stack-errors")
            self.log.failure("the SIP stack failed on a message from {remote}", remote=flow.remote)
            self._rearm()
            return
        self.process(outputs)

    def _transmit(self, output: Transmit) -> None:
        flow = output.flow
        if flow.transport == UDP:
            self._transmit_udp(output)
            return
        if flow.transport not in (TCP, TLS):
            self._transmit_failed(output, f"unknown transport {flow.transport!r}")
            return
        if flow.connection_id is not None:
            connection = self._connections.get(flow.connection_id)
            if connection is not None and connection.send(output.data):
                self.count(connection.adjacency, "messages-sent")
                return
            if flow.pinned:
                # a registered contact's flow: never a new connection (RFC 5626 §5.3)
                self._transmit_failed(
                    output, "the connection the contact registered over is closed"
                )
                return
        expected: str | None = None
        if flow.transport == TLS:
            expected = flow.server_name or flow.remote[0]
        key = PoolKey(flow.transport, flow.local, flow.remote, expected, flow.adjacency)
        if self.pool.find(key) is not None:
            self.count(self._flow_adjacency(flow), "connections-reused")
        waiter = self.pool.get(key)

        def write(connection: StreamConnection) -> None:
            if connection.send(output.data):
                self.count(connection.adjacency, "messages-sent")
            else:
                self._transmit_failed(output, "connection closed")

        def failed(failure: Failure) -> None:
            self._transmit_failed(output, failure.getErrorMessage())

        waiter.addCallbacks(write, failed)

    def _transmit_udp(self, output: Transmit) -> None:
        flow = output.flow
        listener = self._udp.get(ListenerKey(flow.local[0], flow.local[1], UDP))
        if listener is None:
            self._transmit_failed(output, f"no UDP listener on {_address_text(flow.local)}")
            return
        host, port = flow.remote
        adjacency = self._flow_adjacency(flow)
        if ip_literal(host) is not None:
            if listener.send(output.data, (host.strip("[]"), port)):
                self.count(adjacency, "messages-sent")
            else:
                self._transmit_failed(output, "the UDP socket refused the datagram")
            return
        resolving: Deferred[str] = self.reactor.resolve(host)

        def resolved(address: str) -> None:
            if listener.send(output.data, (address, port)):
                self.count(adjacency, "messages-sent")
            else:
                self._transmit_failed(output, "the UDP socket refused the datagram")

        def failed(failure: Failure) -> None:
            self._transmit_failed(output, f"cannot resolve {host}: {failure.getErrorMessage()}")

        resolving.addCallbacks(resolved, failed)

    def _resolve(self, output: Resolve) -> None:
        """Look ``output.hop`` up in DNS; hand the result to ``output.reply`` (then carry out
        what it returns). A lookup that found nothing is counted (``dns-failures``) and
        logged once per domain per interval."""
        resolving = self.resolver.resolve(output.hop)

        def resolved(resolution: Resolution) -> None:
            if resolution.failed:
                self._dns_failed(output, resolution)
            else:
                destinations = [
                    f"{d.transport} {_address_text((d.address, d.port))} ({d.name})"
                    for d in resolution.destinations
                ]
                self.log.debug(
                    "{domain} (adjacency {adjacency}): {found}; {queries} DNS queries",
                    event="dns.resolved",
                    domain=resolution.hop.host,
                    adjacency=output.adjacency,
                    destinations=destinations,
                    found=", ".join(destinations),
                    queries=resolution.queries,
                )
            if not self.running:
                return
            try:
                outputs = output.reply(resolution, self.reactor.seconds())
            except Exception:
                self.count(output.adjacency, "stack-errors")
                self.log.failure(
                    "the SIP stack failed on a DNS answer for {domain}", domain=output.hop.host
                )
                self._rearm()
                return
            self.process(outputs)

        resolving.addCallback(resolved)
        resolving.addErrback(
            lambda failure: self.log.failure(
                "DNS lookup of {domain}", failure, domain=output.hop.host
            )
        )

    def _dns_failed(self, output: Resolve, resolution: Resolution) -> None:
        domain = resolution.hop.host
        self.count(output.adjacency, "dns-failures")
        allowed, held = self.dns_log.allow(domain)
        if not allowed:
            return
        text = "cannot resolve {domain} (adjacency {adjacency}): {why}"
        if held:
            text += " ({held} similar lines suppressed)"
        self.log.warn(
            text,
            event="dns.failed",
            counter="dns-failures",
            adjacency=output.adjacency,
            domain=domain,
            why=resolution.error,
            held=held,
        )

    def _transmit_failed(self, output: Transmit, why: str) -> None:
        flow = output.flow
        self.event(
            self._flow_adjacency(flow),
            "transmit-failures",
            "cannot send to {transport} {remote}: {why}",
            transport=flow.transport,
            remote=_address_text(flow.remote),
            why=why,
        )
        key = output.transaction_key
        if key is not None:
            self.process(self.stack.transport_error(key, self.reactor.seconds()))

    def _dropped(self, output: Dropped) -> None:
        flow = output.flow
        context = output.context
        if isinstance(context, InboundContext):
            adjacency: str | None = context.adjacency
        else:
            adjacency = self._flow_adjacency(flow)
        self.event(
            adjacency,
            f"drops:{output.reason}",
            "{transport} {remote}: message dropped ({reason})",
            transport=flow.transport,
            remote=_address_text(flow.remote),
            reason=output.reason,
        )

    # -- internals: bans (sbc.flood) -------------------------------------------

    def _source_banned(self, ban: Ban) -> None:
        """Abort the banned source's inbound connections on untrusted adjacencies."""
        for connection in list(self._connections.values()):
            if (
                not connection.outbound
                and connection.remote[0] == ban.address
                and connection.adjacency not in self.guard.trusted
            ):
                connection.close("connections-closed:banned", abort=True)

    def _arm_guard_timer(self) -> None:
        """Keep one timer armed at the earliest ban end (``source.released`` on time)."""
        if not self.running:
            return
        at = self.guard.next_expiry()
        timer = self._guard_timer
        if timer is not None and timer.active():
            if at == self._guard_timer_at:
                return
            timer.cancel()
        self._guard_timer = None
        self._guard_timer_at = at
        if at is not None:
            delay = max(0.0, at - self.reactor.seconds())
            self._guard_timer = self.reactor.callLater(delay, self._expire_bans)

    def _expire_bans(self) -> None:
        self._guard_timer = None
        self._guard_timer_at = None
        self.guard.expire(self.reactor.seconds())
        self._arm_guard_timer()

    def _rearm(self) -> None:
        """Keep exactly one timer armed at the stack's next deadline."""
        if not self.running:
            return
        deadline = self.stack.next_deadline()
        timer = self._timer
        if timer is not None and timer.active():
            if deadline == self._timer_at:
                return
            timer.cancel()
        self._timer = None
        self._timer_at = None
        if deadline is None:
            return
        delay = max(0.0, deadline - self.reactor.seconds())
        self._timer = self.reactor.callLater(delay, self._fire)
        self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self.process(self.stack.advance(self.reactor.seconds()))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None


def _trusted_names(table: AdjacencyTable) -> frozenset[str]:
    """The attached adjacencies never rate limited nor banned: trusted inbound sides.

    An adjacency that lets TLS clients in without a certificate
    (``client-certificate optional``/``none``: phones facing the internet) is
    guarded like an untrusted one: its sources prove nothing before they send.
    """
    return frozenset(
        a.name for a in table.attached if a.security_inbound.trusted and not a.certificate_optional
    )


_DROP_COUNTERS = {verdict: f"drops:{verdict.value}" for verdict in Verdict}

_CAP_FIELDS: dict[str, Callable[[Limits], dict[str, Any]]] = {
    "connection-rate": lambda limits: {
        "limit": limits.max_new_connections_per_second,
        "what": "connections",
        "setting": "max-new-connections-per-second",
    },
    "handshake-rate": lambda limits: {
        "limit": limits.max_tls_handshakes_per_second,
        "what": "TLS handshakes",
        "setting": "max-tls-handshakes-per-second",
    },
}


def _starts_something(data: bytes) -> bool:
    """True for a request outside a dialog (no To tag); answers and in-dialog requests are not."""
    if data[:4] == b"SIP/":
        return False
    try:
        message = parse_message(data)
        return isinstance(message, Request) and message.to.tag is None
    except ParseError:
        return True


def _stopped(port: IListeningPort) -> Deferred[None]:
    result = port.stopListening()
    if isinstance(result, Deferred):
        return result.addCallback(lambda _: None)
    return succeed(None)


def _gather(ds: list[Deferred[None]]) -> Deferred[None]:
    """Fires with None when all of ``ds`` have; fails with the first failure itself."""
    if not ds:
        return succeed(None)

    def unwrap(failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, FirstError):
            sub: Failure = error.subFailure
            return sub
        return failure

    gathered = gatherResults(ds, consumeErrors=True)
    return gathered.addCallbacks(lambda _: None, unwrap)
