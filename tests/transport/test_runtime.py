"""sbc.transport.runtime: listeners, classification, limits, outputs, pool, the stack timer.

Everything runs on a MemoryReactorClock (with a recording listenUDP): TCP
connections are StringTransports, TLS is a real in-memory handshake, and the
SIP stack is a FakeStack that records what it is fed.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.logger import Logger, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable, InboundContext, ListenerKey
from sbc.config import AdjacencyConfig, Limits
from sbc.counters import UNCLASSIFIED
from sbc.identity import PeerIdentities
from sbc.labpki import Identity, issue, make_ca
from sbc.sip.stack import Dropped, Flow, Transmit
from sbc.transport.pool import NoTlsIdentityError, PoolKey
from sbc.transport.runtime import RateLimitedLog, SipRuntime
from sbc.transport.stream import StreamConnection
from sbc.transport.tls import TlsIdentity, client_connection_creator, server_context_factory
from tests.transport.fakes import (
    OPTIONS,
    FakeStack,
    OneProtocolFactory,
    Peer,
    Reactor,
    Received,
    Wire,
    address,
    adjacency,
    connect_wire,
    drop,
    echo,
    tls_identity,
)

HOST = "127.0.0.1"
UDP_KEY = ListenerKey(HOST, 5060, "UDP")
TCP_KEY = ListenerKey(HOST, 5060, "TCP")
TLS_KEY = ListenerKey(HOST, 5061, "TLS")
PHONE = ("10.0.0.5", 5062)
TRUNK = ("192.0.2.9", 5060)


def standard_adjacencies() -> list[AdjacencyConfig]:
    """access and trunk share 127.0.0.1:5060 (UDP+TCP); core is TLS on 5061."""
    return [
        adjacency("access", remote=("10.0.0.0/8",)),
        adjacency("trunk", remote=("192.0.2.0/24",), security="trusted-unencrypted"),
        adjacency("core", security="trusted-encrypted"),
        adjacency("spare", port=5070, attached=False),
    ]


class RuntimeMixin(SynchronousTestCase):
    limits = Limits()
    with_tls = True

    def setUp(self) -> None:
        self.reactor = Reactor()
        self.stack = FakeStack()
        self.log_events: list[dict[str, Any]] = []
        self.configs = standard_adjacencies()
        self.ca = make_ca()
        self.sbc_leaf = issue(
            self.ca, "sbc.lab.test", sip_uris=["sip:sbc.lab.test"], ip_addresses=["127.0.0.1"]
        )
        self.identity: TlsIdentity | None = (
            tls_identity(self, self.sbc_leaf, self.ca) if self.with_tls else None
        )
        self.runtime = SipRuntime(
            self.reactor,
            self.stack,
            AdjacencyTable(self.configs),
            limits=self.limits,
            tls=self.identity,
            log=Logger(observer=self.log_events.append),
            log_interval=10,
        )

    def start(self) -> None:
        self.successResultOf(self.runtime.start())

    def counter(self, adjacency: str | None, name: str) -> int:
        return self.runtime.counters.get(adjacency, name)

    def udp(self, data: bytes, source: tuple[str, int]) -> Any:
        protocol = self.reactor.udp_protocol(5060, HOST)
        protocol.datagramReceived(data, source)
        return protocol

    def tcp(self, source: tuple[str, int], port: int = 5060) -> tuple[StreamConnection, Wire]:
        factory = self.reactor.tcp_factory(port, HOST)
        protocol, wire = connect_wire(factory, (HOST, port), source)
        return protocol, wire

    def log_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.log_events if "rate_key" in e]


class ListenerTests(RuntimeMixin):
    def test_one_listener_per_key_shared_by_adjacencies(self) -> None:
        self.start()
        self.assertEqual(sorted(self.runtime.listening), [TCP_KEY, UDP_KEY, TLS_KEY])
        self.assertEqual([(p.port, p.interface) for p in self.reactor.udpServers], [(5060, HOST)])
        self.assertEqual(
            sorted((p.port, p.interface) for p in self.reactor.tcpPorts),
            [(5060, HOST), (5061, HOST)],
        )
        self.assertIsInstance(self.reactor.tcp_factory(5061, HOST), TLSMemoryBIOFactory)

    def test_tls_listener_needs_an_identity(self) -> None:
        self.runtime.tls = None
        failure = self.failureResultOf(self.runtime.start(), NoTlsIdentityError)
        self.assertIn("TLS 127.0.0.1:5061", failure.getErrorMessage())
        self.assertNotIn(TLS_KEY, self.runtime.listening)
        self.assertEqual(self.counter(None, "listen-failures"), 1)

    def test_listen_failure_is_reported(self) -> None:
        self.reactor.refuse_udp.add(5060)
        self.failureResultOf(self.runtime.start(), CannotListenError)
        self.assertEqual(sorted(self.runtime.listening), [TCP_KEY, TLS_KEY])
        self.assertEqual(self.counter(None, "listen-failures"), 1)

    def test_ipv6_interface_in_the_endpoint_description(self) -> None:
        self.runtime.apply(AdjacencyTable([adjacency("v6", "::1", transport="tcp")]))
        self.start()
        self.assertEqual([(p.port, p.interface) for p in self.reactor.tcpPorts], [(5060, "::1")])

    def test_stop_closes_everything(self) -> None:
        self.start()
        self.stack.deadline = 50
        self.runtime.process([])
        _conn, wire = self.tcp(PHONE)
        self.successResultOf(self.runtime.stop())
        self.assertEqual(self.runtime.listening, {})
        self.assertTrue(all(p.stopped for p in self.reactor.tcpPorts + self.reactor.udpServers))
        self.assertTrue(wire.aborted)
        self.assertEqual(self.runtime.connections, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_apply_before_start_only_switches_the_table(self) -> None:
        self.successResultOf(self.runtime.apply(AdjacencyTable([])))
        self.assertEqual(self.reactor.tcpPorts, [])
        self.start()
        self.assertEqual(self.runtime.listening, {})

    def test_attach_opens_and_detach_closes(self) -> None:
        self.start()
        spare = adjacency("spare", port=5070)
        attached = [*self.configs[:3], spare]
        self.successResultOf(self.runtime.apply(AdjacencyTable(attached)))
        self.assertIn(ListenerKey(HOST, 5070, "UDP"), self.runtime.listening)
        self.assertIn(ListenerKey(HOST, 5070, "TCP"), self.runtime.listening)
        self.successResultOf(self.runtime.apply(AdjacencyTable(self.configs[:3])))
        self.assertNotIn(ListenerKey(HOST, 5070, "TCP"), self.runtime.listening)
        stopped = [p.port for p in self.reactor.tcpPorts if p.stopped]
        self.assertEqual(stopped, [5070])

    def test_detach_closes_connections_but_keeps_a_shared_listener(self) -> None:
        self.start()
        access_conn, access_wire = self.tcp(PHONE)
        trunk_conn, trunk_wire = self.tcp(TRUNK)
        without_access = [c for c in self.configs if c.name != "access"]
        self.successResultOf(self.runtime.apply(AdjacencyTable(without_access)))
        # Drained first: the answers to the BYEs that released its calls come back on it.
        self.assertTrue(access_wire.open)
        self.runtime.stream_message(access_conn, OPTIONS)
        self.assertEqual(self.stack.received[-1].context.adjacency, "access")
        self.reactor.advance(Limits().detach_drain_time - 0.1)
        self.assertTrue(access_wire.open)
        self.reactor.advance(0.1)
        self.assertFalse(access_wire.open)
        self.assertTrue(trunk_wire.open)
        self.assertIn(TCP_KEY, self.runtime.listening)
        self.assertEqual(self.counter("access", "connections-closed:detached"), 1)
        self.assertEqual(list(self.runtime.connections), [trunk_conn.connection_id])
        # a new message from the detached adjacency's sources is unclassified now
        self.udp(OPTIONS, PHONE)
        self.assertEqual(self.counter(None, "drops:no-adjacency"), 1)

    def test_detach_without_drain_closes_at_once(self) -> None:
        self.runtime.apply(AdjacencyTable(self.configs), Limits(detach_drain_time=0))
        self.start()
        _conn, wire = self.tcp(PHONE)
        self.runtime.apply(AdjacencyTable([c for c in self.configs if c.name != "access"]))
        self.assertFalse(wire.open)
        self.assertEqual(self.counter("access", "connections-closed:detached"), 1)

    def test_connection_closed_while_draining_and_stop_cancel_the_timer(self) -> None:
        self.start()
        conn, wire = self.tcp(PHONE)
        _other, _ = self.tcp(("10.0.0.6", 5062))
        self.runtime.apply(AdjacencyTable([c for c in self.configs if c.name != "access"]))
        conn.close(abort=True)
        self.assertFalse(wire.open)
        drains = [c for c in self.reactor.getDelayedCalls() if "drained" in repr(c.func)]
        self.assertEqual(len(drains), 1)
        self.runtime.stop()
        self.assertEqual(
            [c for c in self.reactor.getDelayedCalls() if "drained" in repr(c.func)], []
        )

    def test_reclassified_connection_is_closed(self) -> None:
        self.start()
        _conn, wire = self.tcp(("10.1.2.3", 4000))
        narrower = adjacency("lab", remote=("10.1.0.0/16",))
        self.runtime.apply(AdjacencyTable([*self.configs, narrower]))
        self.assertFalse(wire.open)
        self.assertEqual(self.counter("access", "connections-closed:reconfigured"), 1)


class ClassificationTests(RuntimeMixin):
    def test_udp_messages_classified_by_source_on_a_shared_listener(self) -> None:
        self.start()
        self.reactor.advance(3)
        self.udp(OPTIONS, PHONE)
        self.udp(OPTIONS, TRUNK)
        first, second = self.stack.received
        self.assertEqual(first.flow, Flow("UDP", (HOST, 5060), PHONE))
        self.assertEqual(first.context, InboundContext("access", UDP_KEY, None))
        self.assertEqual(second.context, InboundContext("trunk", UDP_KEY, None))
        self.assertEqual(first.now, 3)
        self.assertEqual(self.counter("access", "messages-received"), 1)

    def test_unknown_source_dropped_counted_and_logged_with_a_rate_limit(self) -> None:
        self.start()
        for _ in range(5):
            self.udp(OPTIONS, ("172.16.0.1", 5060))
        self.assertEqual(self.stack.received, [])
        self.assertEqual(self.counter(UNCLASSIFIED, "drops:no-adjacency"), 5)
        self.assertEqual(len(self.log_lines()), 1)
        self.assertIn("172.16.0.1:5060", self.log_lines()[0])
        self.reactor.advance(9.9)
        self.udp(OPTIONS, ("172.16.0.1", 5060))
        self.assertEqual(len(self.log_lines()), 1)
        self.reactor.advance(0.1)
        self.udp(OPTIONS, ("172.16.0.1", 5060))
        self.assertEqual(len(self.log_lines()), 2)
        self.assertIn("(5 similar lines suppressed)", self.log_lines()[1])

    def test_tls_bytes_in_udp_dropped(self) -> None:
        self.start()
        self.udp(b"\x16\x03\x01\x00\x10" + b"\x00" * 16, PHONE)
        self.assertEqual(self.stack.received, [])
        self.assertEqual(self.counter("access", "drops:tls-on-plain"), 1)

    def test_tcp_connection_classified_once_and_messages_carry_it(self) -> None:
        self.start()
        conn, _wire = self.tcp(PHONE)
        conn.dataReceived(OPTIONS)
        [received] = self.stack.received
        self.assertEqual(received.flow, Flow("TCP", (HOST, 5060), PHONE, conn.connection_id))
        self.assertEqual(received.context, InboundContext("access", TCP_KEY, None))
        self.assertEqual(self.counter("access", "connections-accepted"), 1)

    def test_tcp_connection_from_unknown_source_refused(self) -> None:
        self.start()
        _conn, wire = self.tcp(("172.16.0.1", 4000))
        self.assertTrue(wire.aborted)
        self.assertEqual(self.counter(None, "connections-refused:no-adjacency"), 1)
        self.assertEqual(self.runtime.connections, {})

    def test_tls_on_plain_tcp_listener(self) -> None:
        self.start()
        conn, wire = self.tcp(PHONE)
        conn.dataReceived(b"\x16\x03\x01\x02\x00\x01")
        self.assertTrue(wire.aborted)
        self.assertEqual(wire.value(), b"")
        self.assertEqual(self.stack.received, [])
        self.assertEqual(self.counter("access", "connections-closed:tls-on-plain"), 1)


class OutputTests(RuntimeMixin):
    def test_udp_reply_from_the_listener_socket(self) -> None:
        self.stack.reply = echo
        self.start()
        protocol = self.udp(OPTIONS, PHONE)
        self.assertEqual(protocol.transport.written, [(b"echo:" + OPTIONS, PHONE)])
        self.assertEqual(self.counter("access", "messages-sent"), 1)

    def test_udp_to_a_name_is_resolved(self) -> None:
        self.start()
        self.reactor.names["phone.lab.test"] = "10.0.0.9"
        flow = Flow("UDP", (HOST, 5060), ("phone.lab.test", 5060))
        self.runtime.process([Transmit(flow, b"hello")])
        protocol = self.reactor.udp_protocol(5060, HOST)
        self.assertEqual(protocol.transport.written, [(b"hello", ("10.0.0.9", 5060))])

    def test_udp_failures_reach_the_stack(self) -> None:
        self.start()
        key: Any = object()
        no_listener = Flow("UDP", (HOST, 5999), PHONE)
        unresolvable = Flow("UDP", (HOST, 5060), ("nowhere.test", 5060))
        self.runtime.process([Transmit(no_listener, b"x", key), Transmit(unresolvable, b"y", key)])
        self.assertEqual([k for k, _ in self.stack.transport_errors], [key, key])
        self.assertEqual(self.counter("access", "transmit-failures"), 1)
        self.assertEqual(self.counter(None, "transmit-failures"), 1)

    def test_response_goes_back_on_the_same_connection(self) -> None:
        self.stack.reply = echo
        self.start()
        _other, other_wire = self.tcp(("10.0.0.6", 4001))
        conn, wire = self.tcp(PHONE)
        conn.dataReceived(OPTIONS)
        self.assertEqual(wire.value(), b"echo:" + OPTIONS)
        self.assertEqual(other_wire.value(), b"")
        self.assertEqual(self.reactor.tcpClients, [])

    def test_connection_gone_opens_a_new_one_to_the_remote(self) -> None:
        self.start()
        conn, wire = self.tcp(PHONE)
        conn.dataReceived(OPTIONS)
        flow = self.stack.received[0].flow
        wire.loseConnection()
        self.assertEqual(self.stack.closed, [(conn.connection_id, 0)])
        self.runtime.process([Transmit(flow, b"SIP/2.0 200 OK\r\n\r\n")])
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        self.assertEqual((host, port, timeout, bind), (*PHONE, 10, (HOST, 0)))
        _out, out_wire = connect_wire(factory, (HOST, 41000), PHONE)
        self.assertEqual(out_wire.value(), b"SIP/2.0 200 OK\r\n\r\n")
        self.assertEqual(self.counter("access", "connections-opened"), 1)
        # the peer's next request on that connection is classified like inbound traffic
        outbound = self.runtime.connections[max(self.runtime.connections)]
        outbound.dataReceived(OPTIONS)
        self.assertEqual(self.stack.received[-1].context.adjacency, "access")
        self.assertEqual(self.stack.received[-1].flow.connection_id, outbound.connection_id)

    def test_dropped_outputs_counted_per_adjacency(self) -> None:
        self.stack.reply = drop("tls-identity-mismatch")
        self.start()
        self.udp(OPTIONS, TRUNK)
        self.assertEqual(self.counter("trunk", "drops:tls-identity-mismatch"), 1)
        self.runtime.process([Dropped(Flow("UDP", (HOST, 5060), PHONE), "unparseable")])
        self.assertEqual(self.counter("access", "drops:unparseable"), 1)

    def test_unknown_output_logged(self) -> None:
        self.start()
        self.runtime.process(["what is this"])
        self.assertTrue(any("unknown stack output" in formatEvent(e) for e in self.log_events))

    def test_stack_exception_is_contained(self) -> None:
        def broken(received: Received) -> list[Any]:
            raise RuntimeError("bug")

        self.stack.reply = broken
        self.start()
        conn, wire = self.tcp(PHONE)
        conn.dataReceived(OPTIONS + OPTIONS)
        self.assertEqual(len(self.stack.received), 2)
        self.assertTrue(wire.open)
        self.assertEqual(self.counter("access", "stack-errors"), 2)
        self.flushLoggedErrors(RuntimeError)

    def test_connect_failure(self) -> None:
        self.start()
        key: Any = object()
        flow = Flow("TCP", (HOST, 5060), TRUNK)
        self.runtime.process([Transmit(flow, b"INVITE", key)])
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(self.stack.transport_errors, [(key, 0)])
        self.assertEqual(self.counter("trunk", "connect-failures"), 1)
        self.assertEqual(self.counter("trunk", "transmit-failures"), 1)


class LimitTests(RuntimeMixin):
    limits = Limits(max_connections_per_adjacency=2, max_connections_per_source=2)

    def test_max_connections_per_adjacency(self) -> None:
        self.start()
        _first, first_wire = self.tcp(("10.0.0.1", 1))
        self.tcp(("10.0.0.2", 1))
        _third, third_wire = self.tcp(("10.0.0.3", 1))
        self.assertTrue(third_wire.aborted)
        self.assertEqual(self.counter("access", "connections-refused:max-per-adjacency"), 1)
        _trunk, trunk_wire = self.tcp(TRUNK)  # another adjacency is not affected
        self.assertTrue(trunk_wire.open)
        first_wire.loseConnection()
        _fourth, fourth_wire = self.tcp(("10.0.0.4", 1))
        self.assertTrue(fourth_wire.open)

    def test_max_connections_per_source(self) -> None:
        self.runtime.apply(AdjacencyTable(self.configs), Limits(max_connections_per_source=1))
        self.start()
        self.tcp(("10.0.0.1", 1))
        _second, second_wire = self.tcp(("10.0.0.1", 2))
        self.assertTrue(second_wire.aborted)
        self.assertEqual(self.counter("access", "connections-refused:max-per-source"), 1)
        _other, other_wire = self.tcp(("10.0.0.2", 1))
        self.assertTrue(other_wire.open)


class TimerTests(RuntimeMixin):
    def runtime_calls(self) -> list[Any]:
        return [c for c in self.reactor.getDelayedCalls() if c.func == self.runtime._fire]

    def test_armed_at_the_stack_deadline_on_start(self) -> None:
        self.stack.deadline = 5.0
        self.start()
        [call] = self.runtime_calls()
        self.assertEqual(call.getTime(), 5.0)
        self.reactor.advance(5)
        self.assertEqual(self.stack.advanced, [5.0])

    def test_rearmed_after_every_batch(self) -> None:
        def later(received: Received) -> list[Any]:
            self.stack.deadline = received.now + 0.5
            return []

        self.stack.reply = later
        self.start()
        self.assertEqual(self.runtime_calls(), [])
        self.reactor.advance(2)
        self.udp(OPTIONS, PHONE)
        [call] = self.runtime_calls()
        self.assertEqual(call.getTime(), 2.5)
        self.stack.deadline = 4.0
        self.stack.advance_outputs = [Transmit(Flow("UDP", (HOST, 5060), PHONE), b"retransmit")]
        self.reactor.advance(0.5)
        self.assertEqual(self.stack.advanced, [2.5])
        [call] = self.runtime_calls()
        self.assertEqual(call.getTime(), 4.0)
        written = self.reactor.udp_protocol(5060, HOST).transport.written
        self.assertEqual(written, [(b"retransmit", PHONE)])

    def test_same_deadline_keeps_the_same_call(self) -> None:
        self.stack.deadline = 7.0
        self.start()
        [call] = self.runtime_calls()
        self.runtime.process([])
        self.assertEqual(self.runtime_calls(), [call])

    def test_earlier_deadline_replaces_the_call(self) -> None:
        self.stack.deadline = 7.0
        self.start()
        self.stack.deadline = 3.0
        self.runtime.process([])
        [call] = self.runtime_calls()
        self.assertEqual(call.getTime(), 3.0)

    def test_past_deadline_fires_at_once_and_none_disarms(self) -> None:
        self.start()
        self.reactor.advance(10)
        self.stack.deadline = 4.0
        self.runtime.process([])
        [call] = self.runtime_calls()
        self.assertEqual(call.getTime(), 10.0)
        self.stack.deadline = None
        self.runtime.process([])
        self.assertEqual(self.runtime_calls(), [])

    def test_not_armed_before_start_nor_after_stop(self) -> None:
        self.stack.deadline = 1.0
        self.runtime.process([])
        self.assertEqual(self.runtime_calls(), [])
        self.start()
        self.successResultOf(self.runtime.stop())
        self.assertEqual(self.runtime_calls(), [])


class RateLimitedLogTests(SynchronousTestCase):
    def test_one_line_per_key_per_interval(self) -> None:
        reactor = Reactor()
        events: list[dict[str, Any]] = []
        log = RateLimitedLog(Logger(observer=events.append), reactor, 5)
        self.assertTrue(log.emit("a", "line {n}", n=1))
        self.assertFalse(log.emit("a", "line {n}", n=2))
        self.assertTrue(log.emit("b", "other"))
        reactor.advance(5)
        self.assertTrue(log.emit("a", "line {n}", n=3))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["line 1", "other", "line 3 (1 similar lines suppressed)"],
        )


class TlsRuntimeMixin(RuntimeMixin):
    def setUp(self) -> None:
        super().setUp()
        self.client_leaf = issue(self.ca, "lab.test", sip_uris=["sip:lab.test"])

    def client_creator(self, expected: str = "127.0.0.1") -> Any:
        return client_connection_creator(tls_identity(self, self.client_leaf, self.ca), expected)

    def inbound_tls(
        self, client: Any, source: tuple[str, int] = ("10.9.9.9", 40000)
    ) -> tuple[StreamConnection, FakeTransport, IOPump]:
        """Connect ``client`` (a protocol) to the runtime's TLS listener."""
        factory = self.reactor.tcp_factory(5061, HOST)
        server = factory.buildProtocol(address(*source))
        conn = server.wrappedProtocol
        server_wire = FakeTransport(
            server, True, hostAddress=address(HOST, 5061), peerAddress=address(*source)
        )
        client_wire = FakeTransport(
            client, False, hostAddress=address(*source), peerAddress=address(HOST, 5061)
        )
        pump = connect(server, server_wire, client, client_wire, greet=False, clock=self.reactor)
        pump.flush()
        return conn, server_wire, pump

    def tls_client(self, peer: Peer, expected: str = "127.0.0.1") -> Any:
        return TLSMemoryBIOFactory(
            self.client_creator(expected), True, OneProtocolFactory(peer), clock=self.reactor
        ).buildProtocol(None)

    def outbound_tls_peer(
        self, leaf: Identity, remote: tuple[str, int]
    ) -> tuple[StreamConnection, Peer, IOPump]:
        """Complete the runtime's last outbound connection attempt against a TLS server ``leaf``."""
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), remote)
        client = factory.buildProtocol(address(*remote))
        peer = Peer()
        server = TLSMemoryBIOFactory(
            server_context_factory(tls_identity(self, leaf, self.ca)),
            False,
            OneProtocolFactory(peer),
            clock=self.reactor,
        ).buildProtocol(None)
        server_wire = FakeTransport(
            server, True, hostAddress=address(*remote), peerAddress=address(HOST, 41000)
        )
        client_wire = FakeTransport(
            client, False, hostAddress=address(HOST, 41000), peerAddress=address(*remote)
        )
        pump = connect(server, server_wire, client, client_wire, greet=False, clock=self.reactor)
        pump.flush()
        conn = client._wrappedProtocol.wrappedProtocol
        return conn, peer, pump


class InboundTlsTests(TlsRuntimeMixin):
    def test_peer_identities_in_every_message_context(self) -> None:
        self.start()
        peer = Peer()
        _conn, _wire, pump = self.inbound_tls(self.tls_client(peer))
        assert peer.transport is not None
        peer.transport.write(OPTIONS + OPTIONS)
        pump.flush()
        self.assertEqual(len(self.stack.received), 2)
        for received in self.stack.received:
            self.assertEqual(received.flow.transport, "TLS")
            self.assertEqual(received.flow.local, (HOST, 5061))
            self.assertEqual(
                received.context,
                InboundContext("core", TLS_KEY, PeerIdentities(sip_domains=["lab.test"])),
            )
        self.assertEqual(self.counter("core", "handshakes"), 1)
        self.assertEqual(
            peer.identities,
            PeerIdentities(sip_domains=["sbc.lab.test"], ip_addresses=["127.0.0.1"]),
        )

    def test_tls_response_on_the_same_connection(self) -> None:
        self.stack.reply = echo
        self.start()
        peer = Peer()
        _conn, _wire, pump = self.inbound_tls(self.tls_client(peer))
        assert peer.transport is not None
        peer.transport.write(OPTIONS)
        pump.flush()
        self.assertEqual(peer.data, b"echo:" + OPTIONS)

    def test_plain_sip_on_the_tls_listener(self) -> None:
        self.start()
        _conn, wire, _pump = self.inbound_tls(Peer(greeting=OPTIONS))
        self.assertTrue(wire.disconnecting)
        self.assertEqual(self.stack.received, [])
        self.assertEqual(self.counter("core", "handshake-failures"), 1)
        self.assertEqual(self.counter("core", "handshakes"), 0)
        self.assertEqual(self.runtime.connections, {})

    def test_handshake_timeout(self) -> None:
        self.start()
        _conn, _wire, pump = self.inbound_tls(Peer())
        self.reactor.advance(self.limits.tls_handshake_timeout)
        pump.flush()
        self.assertEqual(self.counter("core", "connections-closed:handshake-timeout"), 1)
        self.assertEqual(self.runtime.connections, {})

    def test_reloaded_identity_used_for_new_handshakes(self) -> None:
        self.start()
        new_leaf = issue(
            self.ca, "sbc2.lab.test", sip_uris=["sip:sbc2.lab.test"], ip_addresses=["127.0.0.1"]
        )
        self.runtime.set_tls_identity(tls_identity(self, new_leaf, self.ca))
        peer = Peer()
        self.inbound_tls(self.tls_client(peer))
        assert peer.identities is not None
        self.assertEqual(peer.identities.sip_domains, ("sbc2.lab.test",))


class OutboundTlsTests(TlsRuntimeMixin):
    PEER = ("192.0.2.7", 5061)

    def setUp(self) -> None:
        super().setUp()
        self.peer_leaf = issue(self.ca, "peer.lab.test", ip_addresses=["192.0.2.7"])
        self.flow = Flow("TLS", (HOST, 5061), self.PEER)

    def test_connects_verifies_and_reuses(self) -> None:
        self.start()
        self.runtime.process([Transmit(self.flow, b"INVITE 1")])
        self.runtime.process([Transmit(self.flow, b"INVITE 2")])  # waits for the same attempt
        self.assertEqual(len(self.reactor.tcpClients), 1)
        conn, peer, pump = self.outbound_tls_peer(self.peer_leaf, self.PEER)
        pump.flush()
        self.assertEqual(peer.data, b"INVITE 1INVITE 2")
        assert peer.identities is not None
        self.assertEqual(peer.identities.sip_domains, ("sbc.lab.test",))
        self.assertEqual(conn.peer_identities, PeerIdentities(ip_addresses=["192.0.2.7"]))
        self.runtime.process([Transmit(self.flow, b"INVITE 3")])
        pump.flush()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(peer.data, b"INVITE 1INVITE 2INVITE 3")
        self.assertEqual(self.counter("core", "connections-opened"), 1)
        self.assertEqual(self.counter("core", "connections-reused"), 1)
        self.assertEqual(self.counter("core", "handshakes"), 1)
        key = PoolKey("TLS", (HOST, 5061), self.PEER, "192.0.2.7")
        self.assertIs(self.runtime.pool.find(key), conn)

    def test_wrong_identity_is_a_verification_failure(self) -> None:
        self.start()
        key: Any = object()
        self.runtime.process([Transmit(self.flow, b"INVITE", key)])
        impostor = issue(self.ca, "impostor", ip_addresses=["192.0.2.99"])
        _conn, peer, pump = self.outbound_tls_peer(impostor, self.PEER)
        pump.flush()
        self.assertEqual(peer.data, b"")
        self.assertFalse(peer.handshake_done)
        self.assertEqual(self.counter("core", "verification-failures"), 1)
        self.assertEqual(self.counter("core", "transmit-failures"), 1)
        self.assertEqual(self.stack.transport_errors, [(key, 0)])
        self.assertEqual(len(self.runtime.pool), 0)

    def test_idle_outbound_connection_closed_and_replaced(self) -> None:
        self.start()
        self.runtime.process([Transmit(self.flow, b"OPTIONS")])
        conn, peer, pump = self.outbound_tls_peer(self.peer_leaf, self.PEER)
        pump.flush()
        self.reactor.advance(self.limits.outbound_idle_timeout - 1)
        pump.flush()
        self.assertTrue(conn.open)
        self.reactor.advance(1)
        pump.flush()
        self.assertFalse(conn.open)
        self.assertIsNotNone(peer.lost)
        self.assertEqual(len(self.runtime.pool), 0)
        self.assertEqual(self.counter("core", "connections-closed:idle-timeout"), 1)
        self.runtime.process([Transmit(self.flow, b"OPTIONS again")])
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_without_identity_fails_cleanly(self) -> None:
        self.start()
        self.runtime.tls = None
        key: Any = object()
        self.runtime.process([Transmit(self.flow, b"INVITE", key)])
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.stack.transport_errors, [(key, 0)])


class HeldEventCapTests(RuntimeMixin):
    """The events of held lines (EVERY_EVENT counters) are capped per counter and interval."""

    def test_identity_mismatch_flood_capped_but_counted(self) -> None:
        self.runtime.ratelog.max_held_events = 3
        self.stack.reply = drop("tls-identity-mismatch")
        self.start()
        for _ in range(10):
            self.udp(OPTIONS, TRUNK)
        events = [e for e in self.log_events if e.get("counter") == "drops:tls-identity-mismatch"]
        self.assertEqual(len(events), 1 + 3)
        self.assertEqual(self.counter("trunk", "drops:tls-identity-mismatch"), 10)
        self.reactor.advance(10)
        self.udp(OPTIONS, TRUNK)
        self.assertIn(
            "(9 similar lines suppressed, 6 of them not logged at all)", self.log_lines()[-1]
        )

    def test_plain_rate_limited_drops_drop_nothing_extra(self) -> None:
        """Per-datagram drops make no held events, so none is counted as dropped either."""
        self.runtime.ratelog.max_held_events = 1
        self.start()
        for _ in range(5):
            self.udp(OPTIONS, ("172.16.0.1", 5060))
        self.reactor.advance(10)
        self.udp(OPTIONS, ("172.16.0.1", 5060))
        last = self.log_events[-1]
        self.assertEqual((last["held"], last["dropped"]), (4, 0))
        self.assertTrue(formatEvent(last).endswith("(4 similar lines suppressed)"))


class _StubSocket:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.asked: list[int] = []

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.asked.append(value)

    def getsockopt(self, level: int, name: int) -> int:
        return min(2 * self.asked[-1], self.cap)


class _StubPort:
    def __init__(self, cap: int) -> None:
        self.socket = _StubSocket(cap)


class UdpReceiveBufferTests(RuntimeMixin):
    """udp-receive-buffer: asked of the kernel for every UDP listener, a warning if capped."""

    def test_granted(self) -> None:
        port = _StubPort(cap=1 << 30)
        self.runtime._size_receive_buffer(UDP_KEY, port)
        self.assertEqual(port.socket.asked, [Limits().udp_receive_buffer])
        self.assertEqual([e for e in self.log_events if e.get("event")], [])

    def test_capped_by_the_kernel_is_logged(self) -> None:
        port = _StubPort(cap=425984)
        self.runtime._size_receive_buffer(UDP_KEY, port)
        [event] = [e for e in self.log_events if e.get("event") == "listener.small-buffer"]
        self.assertEqual((event["granted"], event["wanted"]), (425984, 4194304))
        self.assertIn("raise net.core.rmem_max", formatEvent(event))

    def test_setting_applies_to_new_listeners(self) -> None:
        self.runtime.apply(AdjacencyTable(self.configs), Limits(udp_receive_buffer=65536))
        port = _StubPort(cap=1 << 30)
        self.runtime._size_receive_buffer(UDP_KEY, port)
        self.assertEqual(port.socket.asked, [65536])


class TlsInPlainOutTests(RuntimeMixin):
    """behaviour.md §2: inbound trusted-encrypted, outbound untrusted: TLS in, UDP out."""

    def setUp(self) -> None:
        super().setUp()
        edge = AdjacencyConfig(
            "edge",
            ipaddress.ip_address(HOST),
            signaling_port=5081,
            remote_addresses=("192.0.2.0/24",),
            security_inbound="trusted-encrypted",
            security_outbound="untrusted",
            attached=True,
        )
        self.runtime.table = AdjacencyTable([*self.configs, edge])

    def test_listens_on_tls_and_has_a_udp_socket_on_the_same_port(self) -> None:
        self.start()
        self.assertIn(ListenerKey(HOST, 5081, "TLS"), self.runtime.listening)
        self.assertIn(ListenerKey(HOST, 5081, "UDP"), self.runtime.listening)
        self.assertNotIn(ListenerKey(HOST, 5081, "TCP"), self.runtime.listening)

    def test_requests_leave_from_the_udp_socket(self) -> None:
        self.start()
        self.runtime.process([Transmit(Flow("UDP", (HOST, 5081), TRUNK), OPTIONS)])
        [sent] = self.reactor.udp_protocol(5081, HOST).transport.written  # type: ignore[attr-defined]
        self.assertEqual(sent, (OPTIONS, TRUNK))
        self.assertEqual(self.counter("edge", "messages-sent"), 1)

    def test_answers_and_in_dialog_requests_come_back_new_requests_do_not(self) -> None:
        """Nothing plain may start something on an adjacency that trusts what comes in."""
        self.start()
        protocol = self.reactor.udp_protocol(5081, HOST)
        answer = b"SIP/2.0 200 OK\r\n" + OPTIONS.partition(b"\r\n")[2]
        in_dialog = OPTIONS.replace(b"\r\nTo: <sip:127.0.0.1>", b"\r\nTo: <sip:127.0.0.1>;tag=x")
        self.assertNotEqual(in_dialog, OPTIONS)
        for data in (answer, in_dialog, OPTIONS):
            protocol.datagramReceived(data, TRUNK)
        self.assertEqual([r.data for r in self.stack.received], [answer, in_dialog])
        self.assertEqual(self.counter("edge", "drops:plain-request"), 1)
