"""Test doubles shared by the transport tests: reactor with UDP, transports, stack, host, PKI.

No sockets: ``MemoryReactorClock`` records listeners and connection attempts;
TCP connections are ``StringTransport``s driven by hand; TLS runs real
OpenSSL handshakes in memory through ``twisted.test.iosim``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, DNSLookupError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.testing import (
    FakeDatagramTransport,
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from sbc.adjacencies import ListenerKey
from sbc.config import AdjacencyConfig, Limits
from sbc.counters import Counters
from sbc.identity import PeerIdentities
from sbc.labpki import Identity
from sbc.sip.stack import Dropped, Flow, Transmit
from sbc.transport.stream import StreamConnection
from sbc.transport.tls import TlsIdentity, load_tls_identity, peer_identities

OPTIONS = (
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:127.0.0.1>\r\n"
    b"From: <sip:alice@lab.test>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
"""A complete, answerable OPTIONS request."""


def request_with_body(size: int) -> bytes:
    """OPTIONS with a ``size``-byte body (Content-Length set accordingly)."""
    head = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: %d" % size)
    return head + b"x" * size


def adjacency(
    name: str,
    address: str = "127.0.0.1",
    port: int | None = None,
    *,
    remote: tuple[str, ...] = (),
    security: str = "untrusted",
    transport: str = "udp-tcp",
    attached: bool = True,
    peer: str | None = None,
) -> AdjacencyConfig:
    return AdjacencyConfig(
        name,
        ipaddress.ip_address(address),
        signaling_port=port,
        transport=transport,
        remote_addresses=remote,
        signaling_peer=peer,
        security_inbound=security,
        security_outbound=security,
        attached=attached,
    )


# --- reactor ---------------------------------------------------------------------


@attrs.define
class FakeUdpPort:
    port: int
    protocol: DatagramProtocol
    interface: str
    stopped: bool = False

    def stopListening(self) -> None:
        self.stopped = True
        self.protocol.doStop()

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface, self.port)


@attrs.define
class FakeTcpPort:
    port: int
    factory: Any
    interface: str
    stopped: bool = False

    def stopListening(self) -> None:
        self.stopped = True

    def getHost(self) -> IPv4Address | IPv6Address:
        return address(self.interface, self.port)


class Reactor(MemoryReactorClock):
    """MemoryReactorClock plus the UDP and name resolution it lacks; ports record stops."""

    def __init__(self) -> None:
        super().__init__()
        self.udpServers: list[FakeUdpPort] = []
        self.tcpPorts: list[FakeTcpPort] = []
        self.names: dict[str, str] = {}
        self.refuse_udp: set[int] = set()

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> FakeTcpPort:
        super().listenTCP(port, factory, backlog, interface)
        fake = FakeTcpPort(port, factory, interface)
        self.tcpPorts.append(fake)
        return fake

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUdpPort:
        if port in self.refuse_udp:
            from twisted.internet.error import CannotListenError

            raise CannotListenError(interface, port, OSError("address in use"))
        fake = FakeUdpPort(port, protocol, interface)
        protocol.makeConnection(FakeDatagramTransport())  # type: ignore[arg-type]
        self.udpServers.append(fake)
        return fake

    def resolve(self, name: str, timeout: Any = None) -> Deferred[str]:
        if name in self.names:
            return succeed(self.names[name])
        return fail(DNSLookupError(name))

    def tcp_factory(self, port: int, interface: str) -> Any:
        """The factory listening on TCP ``interface:port`` (the last one opened)."""
        for entry in reversed(self.tcpServers):
            if entry[0] == port and entry[3] == interface:
                return entry[1]
        raise KeyError((port, interface))

    def udp_protocol(self, port: int, interface: str) -> Any:
        for fake in reversed(self.udpServers):
            if fake.port == port and fake.interface == interface and not fake.stopped:
                return fake.protocol
        raise KeyError((port, interface))


def address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class Wire(StringTransportWithDisconnection):
    """A StringTransport whose close calls connectionLost at once; records aborts."""

    def __init__(self, local: tuple[str, int], remote: tuple[str, int]) -> None:
        super().__init__(hostAddress=address(*local), peerAddress=address(*remote))
        self.aborted = False

    def abortConnection(self) -> None:
        if self.connected:
            self.aborted = True
            self.connected = False
            self.protocol.connectionLost(Failure(ConnectionAborted()))

    def loseConnection(self) -> None:
        if self.connected:
            self.connected = False
            self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def open(self) -> bool:
        return bool(self.connected)


def connect_wire(factory: Any, local: tuple[str, int], remote: tuple[str, int]) -> tuple[Any, Wire]:
    """Build a protocol from ``factory`` and connect it to a fresh :class:`Wire`."""
    protocol = factory.buildProtocol(address(*remote))
    wire = Wire(local, remote)
    wire.protocol = protocol
    protocol.makeConnection(wire)
    return protocol, wire


# --- the stack and a host ----------------------------------------------------------


@attrs.define
class Received:
    data: bytes
    flow: Flow
    now: float
    context: Any


class FakeStack:
    """Records what the runtime feeds it; answers with ``reply(received)`` outputs."""

    def __init__(self, reply: Callable[[Received], list[Any]] | None = None) -> None:
        self.received: list[Received] = []
        self.reply = reply or (lambda r: [])
        self.deadline: float | None = None
        self.advanced: list[float] = []
        self.advance_outputs: list[Any] = []
        self.transport_errors: list[tuple[Any, float]] = []
        self.closed: list[tuple[int, float]] = []

    def receive(self, data: bytes, flow: Flow, now: float, context: object = None) -> list[Any]:
        item = Received(data, flow, now, context)
        self.received.append(item)
        return self.reply(item)

    def advance(self, now: float) -> list[Any]:
        self.advanced.append(now)
        if self.deadline is not None and self.deadline <= now:
            self.deadline = None  # the due timers fired
        outputs, self.advance_outputs = self.advance_outputs, []
        return outputs

    def next_deadline(self) -> float | None:
        return self.deadline

    def transport_error(self, key: Any, now: float) -> list[Any]:
        self.transport_errors.append((key, now))
        return []

    def connection_closed(self, connection_id: int, now: float) -> list[Any]:
        self.closed.append((connection_id, now))
        return []


def echo(received: Received) -> list[Any]:
    """A stack reply: send ``b"echo:" + data`` back on the flow it came from."""
    return [Transmit(received.flow, b"echo:" + received.data)]


def drop(reason: str) -> Callable[[Received], list[Any]]:
    return lambda r: [Dropped(r.flow, reason, r.context)]


class FakeHost:
    """A StreamHost / DatagramHost that records everything (for protocol-level tests)."""

    def __init__(self, clock: Any, limits: Limits | None = None) -> None:
        self.clock = clock
        self.limits = limits or Limits()
        self.counters = Counters()
        self.events: list[tuple[str | None, str, str, dict[str, Any]]] = []
        self.accept: bool | Callable[[StreamConnection], bool] = True
        self.adjacency: str | None = "access"
        self.opened: list[StreamConnection] = []
        self.ready: list[StreamConnection] = []
        self.messages: list[tuple[Any, bytes]] = []
        self.closed: list[tuple[StreamConnection, Failure]] = []
        self.datagrams: list[tuple[str, bytes, tuple[str, int]]] = []
        #: What the flood defence was asked about, and its answer.
        self.admitted: list[tuple[str, str, bytes]] = []
        self.admit_all = True
        self._ids = 0
        self.on_message: Callable[[Any, bytes], None] | None = None

    def next_connection_id(self) -> int:
        self._ids += 1
        return self._ids

    def classify(self, listener: ListenerKey, source_ip: str) -> str | None:
        return self.adjacency

    def count(self, adjacency: str | None, counter: str, by: int = 1) -> None:
        self.counters.increment(adjacency, counter, by)

    def event(self, adjacency: str | None, counter: str, message: str, **fields: Any) -> None:
        self.counters.increment(adjacency, counter)
        self.events.append((adjacency, counter, message.format(**fields), fields))

    def admit(self, adjacency: str, source_ip: str, data: bytes) -> bool:
        self.admitted.append((adjacency, source_ip, data))
        return self.admit_all

    def stream_opened(self, connection: StreamConnection) -> bool:
        accept = self.accept(connection) if callable(self.accept) else self.accept
        if accept:
            if connection.adjacency is None:
                connection.adjacency = self.adjacency
            self.opened.append(connection)
        return accept

    def stream_ready(self, connection: StreamConnection) -> None:
        self.ready.append(connection)

    def stream_message(self, connection: StreamConnection, data: bytes) -> None:
        self.messages.append((connection, data))
        if self.on_message is not None:
            self.on_message(connection, data)

    def stream_closed(self, connection: StreamConnection, reason: Failure) -> None:
        self.closed.append((connection, reason))

    def datagram_message(
        self, listener: Any, adjacency: str, data: bytes, source: tuple[str, int]
    ) -> None:
        self.datagrams.append((adjacency, data, source))

    def count_of(self, counter: str, adjacency: str | None = "access") -> int:
        return self.counters.get(adjacency, counter)


# --- PKI and TLS peers ------------------------------------------------------------


@attrs.frozen
class Files:
    certificate: str
    private_key: str
    ca_certificates: str | None


def tls_identity(case: SynchronousTestCase, leaf: Identity, *anchors: Identity) -> TlsIdentity:
    """Write ``leaf`` and the trust anchors into a temporary directory and load them."""
    directory = case.mktemp()
    os.makedirs(directory)
    cert_path, key_path = leaf.write(directory, "leaf")
    ca_path = os.path.join(directory, "ca.pem")
    with open(ca_path, "wb") as f:
        f.write(b"".join(anchor.certificate_pem for anchor in anchors))
    return load_tls_identity(Files(cert_path, key_path, ca_path))


@implementer(IHandshakeListener)
class Peer(Protocol):
    """The far end of a TLS (or plain) connection in tests: records what it sees."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.data = b""
        self.handshake_done = False
        self.identities: PeerIdentities | None = None
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        if self.greeting:
            assert self.transport is not None
            self.transport.write(self.greeting)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.identities = peer_identities(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason


class OneProtocolFactory(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self.the_protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.the_protocol
