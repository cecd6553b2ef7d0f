"""sbc.transport.pool: reuse keyed on destination and verified identity, endpoints."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sbc.identity import PeerIdentities
from sbc.labpki import issue, make_ca
from sbc.transport.pool import ConnectionPool, NoTlsIdentityError, PoolKey, client_endpoint
from sbc.transport.tls import PeerVerificationError
from tests.transport.fakes import Reactor, tls_identity

LOCAL = ("127.0.0.1", 5060)
PEER = ("192.0.2.7", 5061)


@attrs.define(eq=False)
class FakeConnection:
    """What the pool looks at on a StreamConnection."""

    pool_key: PoolKey
    peer_identities: PeerIdentities | None = None
    open: bool = True
    aborted: bool = False

    def close(self, counter: str | None = None, *, abort: bool = False) -> None:
        self.open = False
        self.aborted = abort


def tls_key(name: str, remote: tuple[str, int] = PEER, local: tuple[str, int] = LOCAL) -> PoolKey:
    return PoolKey("TLS", local, remote, name)


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.attempts: list[tuple[PoolKey, Deferred[Any]]] = []
        self.pool = ConnectionPool(self.connect)

    def connect(self, key: PoolKey) -> Deferred[Any]:
        attempt: Deferred[Any] = Deferred()
        self.attempts.append((key, attempt))
        return attempt

    def open_one(self, key: PoolKey, identities: PeerIdentities | None = None) -> FakeConnection:
        """Ask for ``key`` and complete the connection attempt it starts."""
        before = len(self.attempts)
        waiter = self.pool.get(key)
        self.assertEqual(len(self.attempts), before + 1, "no new connection was attempted")
        connection = FakeConnection(key, identities)
        self.attempts[-1][1].callback(connection)
        self.assertIs(self.successResultOf(waiter), connection)
        return connection

    def test_tcp_connection_reused(self) -> None:
        key = PoolKey("TCP", LOCAL, ("192.0.2.7", 5060))
        connection = self.open_one(key)
        self.assertIs(self.successResultOf(self.pool.get(key)), connection)
        self.assertIs(self.pool.find(key), connection)
        self.assertEqual(len(self.attempts), 1)
        self.assertEqual(len(self.pool), 1)

    def test_waiters_share_one_attempt(self) -> None:
        key = PoolKey("TCP", LOCAL, ("192.0.2.7", 5060))
        first, second = self.pool.get(key), self.pool.get(key)
        self.assertTrue(self.pool.pending(key))
        self.assertEqual(len(self.attempts), 1)
        connection = FakeConnection(key)
        self.attempts[0][1].callback(connection)
        self.assertIs(self.successResultOf(first), connection)
        self.assertIs(self.successResultOf(second), connection)
        self.assertFalse(self.pool.pending(key))

    def test_failure_fails_every_waiter_and_is_retried(self) -> None:
        key = tls_key("peer.test")
        first, second = self.pool.get(key), self.pool.get(key)
        self.attempts[0][1].errback(Failure(PeerVerificationError("mismatch", "peer.test")))
        self.failureResultOf(first, PeerVerificationError)
        self.failureResultOf(second, PeerVerificationError)
        self.assertEqual(len(self.pool), 0)
        self.pool.get(key)
        self.assertEqual(len(self.attempts), 2)

    def test_connect_raising_fails_the_waiter(self) -> None:
        def broken(key: PoolKey) -> Deferred[Any]:
            raise NoTlsIdentityError("no certificate")

        pool = ConnectionPool(broken)
        self.failureResultOf(pool.get(tls_key("x.test")), NoTlsIdentityError)
        self.assertFalse(pool.pending(tls_key("x.test")))

    def test_connection_closed_while_opening(self) -> None:
        key = PoolKey("TCP", LOCAL, ("192.0.2.7", 5060))
        waiter = self.pool.get(key)
        self.attempts[0][1].callback(FakeConnection(key, open=False))
        self.failureResultOf(waiter, ConnectionError)
        self.assertEqual(len(self.pool), 0)

    def test_tls_reused_only_for_a_verified_matching_identity(self) -> None:
        a = self.open_one(tls_key("a.test"), PeerIdentities(sip_domains=["a.test"]))
        self.assertIs(self.successResultOf(self.pool.get(tls_key("A.TEST"))), a)
        b = self.open_one(tls_key("b.test"), PeerIdentities(sip_domains=["b.test"]))
        self.assertIsNot(a, b)
        self.assertIs(self.pool.find(tls_key("a.test")), a)
        self.assertIs(self.pool.find(tls_key("b.test")), b)
        self.assertIsNone(self.pool.find(tls_key("c.test")))

    def test_tls_connection_naming_both_serves_both(self) -> None:
        both = self.open_one(tls_key("a.test"), PeerIdentities(sip_domains=["a.test", "b.test"]))
        self.assertIs(self.pool.find(tls_key("b.test")), both)

    def test_no_suffix_or_wildcard_reuse(self) -> None:
        self.open_one(tls_key("example.test"), PeerIdentities(dns_names=["*.example.test"]))
        self.assertIsNone(self.pool.find(tls_key("sip.example.test")))

    def test_unverified_tls_connection_never_reused(self) -> None:
        key = tls_key("a.test")
        self.pool.add(FakeConnection(key, None))  # type: ignore[arg-type]
        self.assertIsNone(self.pool.find(key))

    def test_ip_literal_identity(self) -> None:
        conn = self.open_one(tls_key("192.0.2.7"), PeerIdentities(ip_addresses=["192.0.2.7"]))
        self.assertIs(self.pool.find(tls_key("192.0.2.7")), conn)

    def test_destination_must_match(self) -> None:
        ids = PeerIdentities(sip_domains=["a.test"])
        self.open_one(tls_key("a.test"), ids)
        self.assertIsNone(self.pool.find(tls_key("a.test", remote=("192.0.2.7", 5062))))
        self.assertIsNone(self.pool.find(tls_key("a.test", local=("127.0.0.2", 5060))))
        self.assertIsNone(self.pool.find(PoolKey("TCP", LOCAL, PEER)))

    def test_closed_connection_not_reused_and_removed(self) -> None:
        key = PoolKey("TCP", LOCAL, PEER)
        connection = self.open_one(key)
        connection.open = False
        self.assertIsNone(self.pool.find(key))
        self.pool.remove(connection)  # type: ignore[arg-type]
        self.pool.remove(connection)  # type: ignore[arg-type]
        self.assertEqual(len(self.pool), 0)
        self.open_one(key)

    def test_close_all(self) -> None:
        one = self.open_one(PoolKey("TCP", LOCAL, PEER))
        two = self.open_one(tls_key("a.test"), PeerIdentities(sip_domains=["a.test"]))
        self.pool.close_all()
        self.assertTrue(one.aborted and two.aborted)


class PoolKeyTests(SynchronousTestCase):
    def test_tls_needs_expected_name(self) -> None:
        self.assertRaises(ValueError, PoolKey, "TLS", LOCAL, PEER)
        self.assertRaises(ValueError, PoolKey, "TCP", LOCAL, PEER, "a.test")
        self.assertRaises(ValueError, PoolKey, "UDP", LOCAL, PEER)


class Sink(Protocol):
    pass


class EndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()

    def connect(self, key: PoolKey, tls: Any = None) -> tuple[Any, ...]:
        endpoint = client_endpoint(self.reactor, key, tls, 7)
        endpoint.connect(Factory.forProtocol(Sink))
        return self.reactor.tcpClients[-1]

    def test_ipv4_literal(self) -> None:
        key = PoolKey("TCP", LOCAL, ("192.0.2.7", 5060))
        self.assertIsInstance(client_endpoint(self.reactor, key, None, 7), TCP4ClientEndpoint)
        host, port, _, timeout, bind = self.connect(key)
        self.assertEqual((host, port, timeout, bind), ("192.0.2.7", 5060, 7, ("127.0.0.1", 0)))

    def test_ipv6_literal(self) -> None:
        key = PoolKey("TCP", ("::", 5060), ("[2001:db8::7]", 5060))
        self.assertIsInstance(client_endpoint(self.reactor, key, None, 7), TCP6ClientEndpoint)
        host, port, _, _, bind = self.connect(key)
        self.assertEqual((host, port, bind), ("2001:db8::7", 5060, None))

    def test_name_resolved_by_the_reactor_resolver(self) -> None:
        key = PoolKey("TCP", LOCAL, ("peer.lab.test", 5060))
        self.assertIsInstance(client_endpoint(self.reactor, key, None, 7), HostnameEndpoint)
        host, port, _, _, _ = self.connect(key)
        # MemoryReactor's resolver answers 127.0.0.1 for every name, without blocking.
        self.assertEqual((host, port), ("127.0.0.1", 5060))

    def test_tls_is_wrapped(self) -> None:
        ca = make_ca()
        identity = tls_identity(self, issue(ca, "sbc.lab.test", dns_names=["sbc.lab.test"]), ca)
        _, _, factory, _, _ = self.connect(tls_key("peer.lab.test"), identity)
        protocol = factory.buildProtocol(None)
        # endpoint wrapper -> TLSMemoryBIOProtocol -> our protocol
        self.assertIsInstance(protocol._wrappedProtocol, TLSMemoryBIOProtocol)

    def test_tls_without_identity(self) -> None:
        self.assertRaises(
            NoTlsIdentityError, client_endpoint, self.reactor, tls_key("a.test"), None, 7
        )

    def test_refused_connection_fails(self) -> None:
        key = PoolKey("TCP", LOCAL, ("192.0.2.7", 5060))
        d = client_endpoint(self.reactor, key, None, 7).connect(Factory.forProtocol(Sink))
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)
