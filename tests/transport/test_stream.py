"""sbc.transport.stream: the per-connection guards, framing, keep-alives and TLS hooks.

The connection talks to a recording FakeHost; TCP runs on a StringTransport,
TLS is a real in-memory handshake through twisted.test.iosim.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import ListenerKey
from sbc.config import Limits
from sbc.labpki import issue, make_ca
from sbc.sip.stack import error_answer
from sbc.transport.stream import (
    KEEPALIVE_PONG,
    StreamConnection,
    StreamFactory,
    no_delay,
    starts_like_tls,
)
from sbc.transport.tls import (
    PeerVerificationError,
    client_connection_creator,
    server_context_factory,
)
from tests.transport.fakes import (
    OPTIONS,
    FakeHost,
    OneProtocolFactory,
    Peer,
    Reactor,
    Wire,
    address,
    connect_wire,
    request_with_body,
    tls_identity,
)

TCP_LISTENER = ListenerKey("127.0.0.1", 5060, "TCP")
TLS_LISTENER = ListenerKey("127.0.0.1", 5061, "TLS")
LOCAL = ("127.0.0.1", 5060)
REMOTE = ("10.0.0.5", 40000)
TLS_CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


class HelperTests(SynchronousTestCase):
    def test_starts_like_tls(self) -> None:
        self.assertTrue(starts_like_tls(b"\x16\x03\x01"))
        self.assertTrue(starts_like_tls(b"\x16\x03"))
        self.assertFalse(starts_like_tls(b"\x16"))
        self.assertFalse(starts_like_tls(b"\x16\xfe\xfd"))  # DTLS is not TLS over TCP
        self.assertFalse(starts_like_tls(b"OPTIONS"))

    def test_no_delay_reaches_the_tcp_socket_under_tls(self) -> None:
        """TCP_NODELAY on the TCP transport itself, or under a TLS wrapper; else nothing."""

        class Tcp:
            calls: list[bool] = []

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.calls.append(enabled)

        class Wrapper:
            def __init__(self, inner: object) -> None:
                self.transport = inner

        tcp = Tcp()
        self.assertTrue(no_delay(tcp))
        self.assertTrue(no_delay(Wrapper(tcp)))
        self.assertEqual(tcp.calls, [True, True])
        self.assertFalse(no_delay(Wrapper(object())))
        self.assertFalse(no_delay(None))

    def test_error_answer_needs_a_request(self) -> None:
        from sbc.errors import ParseError

        self.assertIsNone(error_answer(ParseError("Message Too Large", 513)))


class TcpMixin(SynchronousTestCase):
    limits = Limits()

    def setUp(self) -> None:
        self.reactor = Reactor()
        self.host = FakeHost(self.reactor, self.limits)

    def connect(self, outbound: bool = False) -> tuple[StreamConnection, Wire]:
        if outbound:
            from sbc.transport.pool import PoolKey
            from sbc.transport.stream import OutboundFactory

            key = PoolKey("TCP", LOCAL, REMOTE)
            factory: Any = OutboundFactory(self.host, key, TCP_LISTENER, "core")
        else:
            factory = StreamFactory(self.host, TCP_LISTENER)
        protocol, wire = connect_wire(factory, LOCAL, REMOTE)
        return protocol, wire

    def messages(self) -> list[bytes]:
        return [data for _, data in self.host.messages]


class TcpFramingTests(TcpMixin):
    def test_connection_addresses_and_ready(self) -> None:
        conn, _wire = self.connect()
        self.assertEqual((conn.local, conn.remote), (LOCAL, REMOTE))
        self.assertEqual(conn.adjacency, "access")
        self.assertEqual(self.host.ready, [conn])
        self.assertTrue(conn.open)
        self.assertEqual(conn.transport_name, "TCP")

    def test_message_delivered(self) -> None:
        conn, _wire = self.connect()
        conn.dataReceived(OPTIONS)
        self.assertEqual(self.messages(), [OPTIONS])

    def test_message_split_across_reads(self) -> None:
        conn, _wire = self.connect()
        for i in range(0, len(OPTIONS), 7):
            conn.dataReceived(OPTIONS[i : i + 7])
        conn.dataReceived(OPTIONS + OPTIONS[:10])
        self.assertEqual(self.messages(), [OPTIONS, OPTIONS])

    def test_keepalive_ping_answered_with_crlf(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(b"\r\n\r\n")
        self.assertEqual(wire.value(), KEEPALIVE_PONG)
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.host.count_of("keepalives"), 1)
        self.assertTrue(wire.open)

    def test_keepalive_between_messages(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(OPTIONS + b"\r\n\r\n" + OPTIONS)
        self.assertEqual(self.messages(), [OPTIONS, OPTIONS])
        self.assertEqual(wire.value(), b"\r\n")

    def test_send(self) -> None:
        conn, wire = self.connect()
        self.assertTrue(conn.send(b"SIP/2.0 200 OK\r\n\r\n"))
        self.assertEqual(wire.value(), b"SIP/2.0 200 OK\r\n\r\n")
        wire.loseConnection()
        self.assertFalse(conn.send(b"more"))

    def test_lost_connection_reported_once(self) -> None:
        conn, wire = self.connect()
        wire.loseConnection()
        conn.connectionLost()
        self.assertEqual([c for c, _ in self.host.closed], [conn])
        self.assertFalse(conn.open)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_host_closing_mid_batch_stops_delivery(self) -> None:
        conn, wire = self.connect()
        self.host.on_message = lambda c, data: c.close("test")
        conn.dataReceived(OPTIONS + OPTIONS)
        self.assertEqual(self.messages(), [OPTIONS])
        self.assertFalse(wire.open)

    def test_refused_by_host_is_aborted_silently(self) -> None:
        self.host.accept = False
        conn, wire = self.connect()
        self.assertTrue(wire.aborted)
        self.assertEqual(self.host.closed, [])
        self.assertEqual(self.host.ready, [])
        conn.dataReceived(OPTIONS)
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class TlsOnPlainTests(TcpMixin):
    def assertAbortedForTls(self, conn: StreamConnection, wire: Wire) -> None:
        self.assertTrue(wire.aborted)
        self.assertEqual(wire.value(), b"")
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.host.count_of("connections-closed:tls-on-plain"), 1)

    def test_client_hello_on_plain_tcp_aborted(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(TLS_CLIENT_HELLO_START)
        self.assertAbortedForTls(conn, wire)

    def test_record_header_split_over_two_reads(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(b"\x16")
        self.assertTrue(wire.open)
        conn.dataReceived(b"\x03\x01\x02")
        self.assertAbortedForTls(conn, wire)

    def test_outbound_connection_aborted_too(self) -> None:
        conn, wire = self.connect(outbound=True)
        conn.dataReceived(TLS_CLIENT_HELLO_START)
        self.assertTrue(wire.aborted)
        self.assertEqual(self.host.count_of("connections-closed:tls-on-plain", "core"), 1)

    def test_only_the_first_bytes_are_checked(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(OPTIONS)
        conn.dataReceived(b"\r\n\r\n")
        self.assertEqual(self.messages(), [OPTIONS])
        self.assertTrue(wire.open)

    def test_0x16_followed_by_other_byte_is_not_tls(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(b"\x16A")
        self.assertTrue(wire.open)
        self.assertEqual(self.host.count_of("connections-closed:tls-on-plain"), 0)


class TimeoutTests(TcpMixin):
    limits = Limits(tcp_idle_timeout=60, partial_message_timeout=5, outbound_idle_timeout=20)

    def test_idle_timeout_closes(self) -> None:
        _conn, wire = self.connect()
        self.reactor.advance(59.9)
        self.assertTrue(wire.open)
        self.reactor.advance(0.1)
        self.assertFalse(wire.open)
        self.assertFalse(wire.aborted)
        self.assertEqual(self.host.count_of("connections-closed:idle-timeout"), 1)

    def test_messages_and_keepalives_reset_idle(self) -> None:
        conn, wire = self.connect()
        self.reactor.advance(50)
        conn.dataReceived(OPTIONS)
        self.reactor.advance(50)
        conn.dataReceived(b"\r\n\r\n")
        self.reactor.advance(50)
        conn.send(b"x")
        self.reactor.advance(59)
        self.assertTrue(wire.open)
        self.reactor.advance(1)
        self.assertFalse(wire.open)

    def test_outbound_idle_timeout(self) -> None:
        conn, wire = self.connect(outbound=True)
        self.assertEqual(conn.idle_timeout, 20)
        self.reactor.advance(20)
        self.assertFalse(wire.open)
        self.assertEqual(self.host.count_of("connections-closed:idle-timeout", "core"), 1)

    def test_partial_message_timeout_aborts(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(OPTIONS[:20])
        self.reactor.advance(3)
        conn.dataReceived(OPTIONS[20:40])  # trickling does not buy time
        self.reactor.advance(1.9)
        self.assertTrue(wire.open)
        self.reactor.advance(0.1)
        self.assertTrue(wire.aborted)
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.host.count_of("connections-closed:partial-message-timeout"), 1)

    def test_completed_message_disarms_partial_timer(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(OPTIONS[:20])
        self.reactor.advance(4)
        conn.dataReceived(OPTIONS[20:])
        self.reactor.advance(10)
        self.assertTrue(wire.open)
        self.assertEqual(self.messages(), [OPTIONS])

    def test_lone_0x16_counts_as_partial(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(b"\x16")
        self.reactor.advance(5)
        self.assertTrue(wire.aborted)

    def test_graceful_close_aborts_after_grace(self) -> None:
        from sbc.transport.stream import CLOSE_GRACE

        conn, wire = self.connect()
        wire.loseConnection = lambda: None  # type: ignore[method-assign]  # a peer not reading
        conn.close("test")
        self.assertTrue(wire.open)
        self.reactor.advance(CLOSE_GRACE)
        self.assertTrue(wire.aborted)


class SizeLimitTests(TcpMixin):
    limits = Limits(max_message_size=1024)

    def test_oversize_request_answered_513_then_closed(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(request_with_body(2000))
        self.assertTrue(wire.value().startswith(b"SIP/2.0 513 Message Too Large\r\n"))
        self.assertIn(b"Call-ID: a84b4c76e66710\r\n", wire.value())
        self.assertFalse(wire.open)
        self.assertFalse(wire.aborted)
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.host.count_of("connections-closed:message-too-large"), 1)

    def test_limit_is_inclusive(self) -> None:
        conn, _wire = self.connect()
        message = request_with_body(1024 - len(request_with_body(100)) + 100)
        self.assertEqual(len(message), 1024)
        conn.dataReceived(message)
        self.assertEqual(self.messages(), [message])

    def test_one_byte_over_the_limit_refused(self) -> None:
        conn, wire = self.connect()
        message = request_with_body(1025 - len(request_with_body(100)) + 100)
        self.assertEqual(len(message), 1025)
        conn.dataReceived(message)
        self.assertEqual(self.messages(), [])
        self.assertTrue(wire.value().startswith(b"SIP/2.0 513 "))

    def test_endless_header_section_closed_unanswered(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(b"OPTIONS sip:x SIP/2.0\r\nX: " + b"a" * 1100)
        self.assertTrue(wire.aborted)
        self.assertEqual(wire.value(), b"")
        self.assertEqual(self.host.count_of("connections-closed:message-too-large"), 1)

    def test_missing_content_length_answered_400_then_closed(self) -> None:
        conn, wire = self.connect()
        conn.dataReceived(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
        self.assertTrue(wire.value().startswith(b"SIP/2.0 400 "))
        self.assertFalse(wire.open)
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.host.count_of("connections-closed:bad-framing"), 1)


class TlsMixin(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()
        self.host = FakeHost(self.reactor, Limits(tls_handshake_timeout=10))
        self.ca = make_ca()
        self.sbc = tls_identity(
            self, issue(self.ca, "sbc.lab.test", ip_addresses=["127.0.0.1"]), self.ca
        )
        self.client_leaf = issue(self.ca, "lab.test", sip_uris=["sip:lab.test"])

    def tls_connect(self, client: Protocol) -> tuple[StreamConnection, FakeTransport, IOPump]:
        """An inbound TLS connection on the SBC's side, ``client`` on the other side."""
        factory = TLSMemoryBIOFactory(
            server_context_factory(self.sbc),
            False,
            StreamFactory(self.host, TLS_LISTENER),
            clock=self.reactor,
        )
        server = factory.buildProtocol(address(*REMOTE))
        server_wire = FakeTransport(
            server, True, hostAddress=address("127.0.0.1", 5061), peerAddress=address(*REMOTE)
        )
        client_wire = FakeTransport(
            client, False, hostAddress=address(*REMOTE), peerAddress=address("127.0.0.1", 5061)
        )
        conn = server.wrappedProtocol  # connectionLost unhooks it
        assert isinstance(conn, StreamConnection)
        pump = connect(server, server_wire, client, client_wire, greet=False, clock=self.reactor)
        pump.flush()
        return conn, server_wire, pump

    def tls_client(self, peer: Peer, leaf: Any = None, anchors: Any = None) -> Protocol:
        identity = tls_identity(self, leaf or self.client_leaf, *(anchors or [self.ca]))
        creator = client_connection_creator(identity, "127.0.0.1")
        return TLSMemoryBIOFactory(
            creator, True, OneProtocolFactory(peer), clock=self.reactor
        ).buildProtocol(None)


class TlsTests(TlsMixin):
    def test_handshake_identities_and_message(self) -> None:
        peer = Peer()
        conn, _wire, pump = self.tls_connect(self.tls_client(peer))
        self.assertTrue(peer.handshake_done)
        self.assertEqual(self.host.ready, [conn])
        assert conn.peer_identities is not None
        self.assertEqual(conn.peer_identities.sip_domains, ("lab.test",))
        self.assertEqual(self.host.count_of("handshakes"), 1)
        assert peer.transport is not None
        peer.transport.write(OPTIONS + b"\r\n\r\n")
        pump.flush()
        self.assertEqual([d for _, d in self.host.messages], [OPTIONS])
        self.assertEqual(peer.data, b"\r\n")
        conn.send(b"SIP/2.0 200 OK\r\n\r\n")
        pump.flush()
        self.assertEqual(peer.data, b"\r\nSIP/2.0 200 OK\r\n\r\n")
        self.assertEqual(self.reactor.getDelayedCalls()[0].getTime(), 300)  # idle timer only

    def assertRefusedBeforeHandshake(self, conn: StreamConnection) -> StreamConnection:
        self.assertEqual(self.host.messages, [])
        self.assertEqual(self.host.ready, [])
        self.assertIsNone(conn.peer_identities)
        self.assertIsNotNone(conn.lost)
        self.assertEqual([c for c, _ in self.host.closed], [conn])
        self.assertEqual(self.host.count_of("handshakes"), 0)
        self.assertEqual(self.host.count_of("handshake-failures"), 1)
        return conn

    def test_plain_sip_on_tls_closed_nothing_processed(self) -> None:
        conn, wire, _pump = self.tls_connect(Peer(greeting=OPTIONS))
        self.assertTrue(wire.disconnecting)
        self.assertRefusedBeforeHandshake(conn)
        self.assertEqual(self.host.count_of("verification-failures"), 0)

    def test_garbage_on_tls_closed(self) -> None:
        conn, wire, _pump = self.tls_connect(Peer(greeting=b"\x00\xff" * 300))
        self.assertTrue(wire.disconnecting)
        self.assertRefusedBeforeHandshake(conn)

    def test_handshake_timeout(self) -> None:
        conn, wire, pump = self.tls_connect(Peer())  # says nothing
        self.reactor.advance(9.9)
        self.assertFalse(wire.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(wire.disconnecting)
        pump.flush()
        self.assertRefusedBeforeHandshake(conn)
        self.assertEqual(self.host.count_of("connections-closed:handshake-timeout"), 1)

    def test_handshake_timer_stops_at_handshake(self) -> None:
        _conn, wire, _pump = self.tls_connect(self.tls_client(Peer()))
        self.reactor.advance(10)
        self.assertFalse(wire.disconnecting)
        self.assertEqual(self.host.count_of("connections-closed:handshake-timeout"), 0)

    def test_client_without_certificate(self) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_verify(SSL.VERIFY_NONE)

        from tests.transport.test_tls import RawClient

        client = TLSMemoryBIOFactory(
            RawClient(context), True, OneProtocolFactory(Peer()), clock=self.reactor
        ).buildProtocol(None)
        conn, _wire, _pump = self.tls_connect(client)
        self.assertRefusedBeforeHandshake(conn)

    def test_client_from_untrusted_ca_is_a_verification_failure(self) -> None:
        other_ca = make_ca("other CA")
        rogue = issue(other_ca, "lab.test", sip_uris=["sip:lab.test"])
        conn, _wire, _pump = self.tls_connect(
            self.tls_client(Peer(), leaf=rogue, anchors=[self.ca, other_ca])
        )
        conn = self.assertRefusedBeforeHandshake(conn)
        self.assertEqual(self.host.count_of("verification-failures"), 1)
        assert conn.lost is not None
        self.assertIsInstance(conn.lost.value, PeerVerificationError)

    def test_no_plaintext_accepted_before_the_handshake(self) -> None:
        conn, wire, _pump = self.tls_connect(Peer())
        conn.dataReceived(OPTIONS)  # cannot come from TLSMemoryBIOProtocol; refused anyway
        self.assertEqual(self.host.messages, [])
        self.assertTrue(wire.disconnecting)
        self.assertEqual(self.host.count_of("connections-closed:data-before-handshake"), 1)

    def test_when_ready_fails_with_the_reason(self) -> None:
        conn, _wire, pump = self.tls_connect(Peer())
        waiter = conn.when_ready()
        self.reactor.advance(10)
        pump.flush()
        self.failureResultOf(waiter)
        self.failureResultOf(conn.when_ready())

    def test_when_ready_after_handshake(self) -> None:
        conn, _wire, _pump = self.tls_connect(self.tls_client(Peer()))
        self.assertIs(self.successResultOf(conn.when_ready()), conn)
