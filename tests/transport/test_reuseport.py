"""Two runtimes sharing listeners with SO_REUSEPORT, as worker processes do (docs/scaling.md).

Real sockets on 127.0.0.1 and the real reactor: the point is what the kernel
does with SO_REUSEPORT. Every wait is bounded.
"""

from __future__ import annotations

import socket
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from sbc.adjacencies import UDP, AdjacencyTable, ListenerKey
from sbc.transport.reuseport import shared_socket
from sbc.transport.runtime import SipRuntime
from sbc.worker import cannot_listen
from tests.support.peers import free_port
from tests.transport.fakes import OPTIONS, FakeStack, adjacency, echo

HOST = "127.0.0.1"


def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


class Collect(DatagramProtocol):
    """A UDP client keeping (data, source) of what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, (addr[0], addr[1])))


@defer.inlineCallbacks
def until(condition: Any, seconds: float = 5.0) -> Any:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return None
        yield task.deferLater(reactor(), 0.01, lambda: None)
    raise AssertionError("timed out")


class SharedSocketTests(TestCase):
    def test_two_sockets_bind_one_port_a_plain_one_cannot(self) -> None:
        port = free_port()
        key = ListenerKey(HOST, port, UDP)
        first = shared_socket(key, socket.SOCK_DGRAM)
        self.addCleanup(first.close)
        second = shared_socket(key, socket.SOCK_DGRAM)
        self.addCleanup(second.close)
        self.assertIsNone(cannot_listen(key, reuse_port=True))
        self.assertIn("in use", cannot_listen(key) or "")


class TwoRuntimesTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def start_two(self, transport: str = "udp") -> Any:
        self.port = free_port()
        self.adjacency = adjacency("access", HOST, self.port, transport=transport)
        runtimes = []
        for _ in range(2):
            runtime = SipRuntime(
                reactor(), FakeStack(echo), AdjacencyTable([self.adjacency]), reuse_port=True
            )
            yield runtime.start()
            self.addCleanup(runtime.stop)
            runtimes.append(runtime)
        return runtimes

    def client(self) -> Any:
        protocol = Collect()
        port = reactor().listenUDP(0, protocol, interface=HOST)
        self.addCleanup(port.stopListening)
        return protocol, port

    @defer.inlineCallbacks
    def test_both_listen_each_has_its_own_port(self) -> Any:
        a, b = yield self.start_two()
        shared = (HOST, self.port)
        own_a, own_b = a.own_ports[shared], b.own_ports[shared]
        self.assertNotEqual(own_a, own_b)
        self.assertNotIn(self.port, (own_a, own_b))
        # a new request out of the adjacency leaves from the own port (docs/scaling.md)
        self.assertEqual(a.table.local_address(self.adjacency, "UDP"), (HOST, own_a))
        self.assertEqual(b.table.local_address(self.adjacency, "TCP"), shared)

        # a datagram to A's own port reaches A, classified as on the shared listener,
        # and the answer leaves from that own port
        protocol, client = self.client()
        client.write(OPTIONS, (HOST, own_a))
        yield until(lambda: protocol.received)
        [received] = a.stack.received
        self.assertEqual(b.stack.received, [])
        self.assertEqual(received.flow.local, (HOST, own_a))
        self.assertIsNone(received.flow.advertised)
        self.assertEqual(received.context.adjacency, "access")
        self.assertEqual(received.context.listener, ListenerKey(HOST, self.port, UDP))
        self.assertEqual(protocol.received, [(b"echo:" + OPTIONS, (HOST, own_a))])

    @defer.inlineCallbacks
    def test_the_shared_port_spreads_sources_and_names_the_own_port(self) -> Any:
        a, b = yield self.start_two()
        clients = [self.client() for _ in range(16)]
        for _, client in clients:
            client.write(OPTIONS, (HOST, self.port))
        yield until(lambda: len(a.stack.received) + len(b.stack.received) == 16)
        # 16 sources: with two sockets in the group, both get some (a 2**-15 chance otherwise)
        self.assertTrue(a.stack.received and b.stack.received)
        for runtime in (a, b):
            own = (HOST, runtime.own_ports[(HOST, self.port)])
            for received in runtime.stack.received:
                self.assertEqual(received.flow.local, (HOST, self.port))
                self.assertEqual(received.flow.advertised, own)
        # every answer leaves from the shared port (the one the request was sent to)
        yield until(lambda: all(protocol.received for protocol, _ in clients))
        for protocol, _ in clients:
            self.assertEqual(protocol.received[0][1], (HOST, self.port))

    @defer.inlineCallbacks
    def test_tcp_listeners_are_shared_too_and_close_with_the_runtime(self) -> Any:
        a, b = yield self.start_two(transport="udp-tcp")
        key = ListenerKey(HOST, self.port, "TCP")
        self.assertIn(key, a.listening)
        self.assertIn(key, b.listening)
        yield a.stop()
        yield b.stop()
        self.assertIsNone(cannot_listen(key))
        self.assertIsNone(cannot_listen(ListenerKey(HOST, self.port, UDP)))


class OwnClusterLinkPortTests(TestCase):
    """Each runtime listens on a cluster-link port of its own beside the shared one."""

    timeout = 20

    @defer.inlineCallbacks
    def test_each_runtime_has_its_own_link_port_classified_as_the_link(self) -> Any:
        port, trunk_port = free_port(), free_port()
        link = attrs.evolve(
            adjacency("cluster", HOST, port, transport="tcp", security="trusted-unencrypted"),
            cluster_link=True,
        )
        trunk = adjacency("trunk", HOST, trunk_port, transport="tcp")
        runtimes = []
        for _ in range(2):
            runtime = SipRuntime(
                reactor(), FakeStack(echo), AdjacencyTable([link, trunk]), reuse_port=True
            )
            yield runtime.start()
            self.addCleanup(runtime.stop)
            runtimes.append(runtime)
        a, b = runtimes
        own_a, own_b = a.own_link_port((HOST, port)), b.own_link_port((HOST, port))
        assert own_a is not None and own_b is not None
        self.assertNotEqual(own_a, own_b)
        self.assertNotIn(port, (own_a, own_b))
        # only the cluster link has one
        self.assertIsNone(a.own_link_port((HOST, trunk_port)))
        # a connection to A's own port reaches A only, as a connection of the link
        peer = socket.create_connection((HOST, own_a), timeout=5)
        self.addCleanup(peer.close)
        peer.sendall(OPTIONS)
        yield until(lambda: a.stack.received)
        [received] = a.stack.received
        self.assertEqual(b.stack.received, [])
        self.assertEqual(received.context.adjacency, "cluster")
        self.assertEqual(received.context.listener, ListenerKey(HOST, port, "TCP"))
        self.assertEqual(received.flow.local, (HOST, own_a))
        # and it closes with the runtime
        yield a.stop()
        self.assertIsNone(a.own_link_port((HOST, port)))
        self.assertIsNone(cannot_listen(ListenerKey(HOST, own_a, "TCP")))

    @defer.inlineCallbacks
    def test_a_single_process_opens_none(self) -> Any:
        port = free_port()
        link = attrs.evolve(
            adjacency("cluster", HOST, port, transport="tcp", security="trusted-unencrypted"),
            cluster_link=True,
        )
        runtime = SipRuntime(reactor(), FakeStack(echo), AdjacencyTable([link]))
        yield runtime.start()
        self.addCleanup(runtime.stop)
        self.assertIsNone(runtime.own_link_port((HOST, port)))
        self.assertEqual(list(runtime.listening), [ListenerKey(HOST, port, "TCP")])
