"""sbc.transport.udp: the UDP listener protocol, driven with datagramReceived directly."""

from __future__ import annotations

from twisted.internet.testing import FakeDatagramTransport
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import ListenerKey
from sbc.config import Limits
from sbc.transport.udp import UdpListener
from tests.transport.fakes import OPTIONS, FakeHost, Reactor, request_with_body

LISTENER = ListenerKey("127.0.0.1", 5060, "UDP")
SOURCE = ("10.0.0.5", 5062)


class UdpListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.host = FakeHost(Reactor(), Limits(max_message_size=1024))
        self.protocol = UdpListener(self.host, LISTENER)
        self.wire = FakeDatagramTransport()
        self.protocol.makeConnection(self.wire)  # type: ignore[arg-type]

    def test_message_goes_to_host_with_its_adjacency(self) -> None:
        self.protocol.datagramReceived(OPTIONS, SOURCE)
        self.assertEqual(self.host.datagrams, [("access", OPTIONS, SOURCE)])
        self.assertEqual(self.wire.written, [])

    def test_ipv6_source_address_tuple(self) -> None:
        self.protocol.datagramReceived(OPTIONS, ("2001:db8::5", 5062, 0, 0))
        self.assertEqual(self.host.datagrams, [("access", OPTIONS, ("2001:db8::5", 5062))])

    def test_unclassified_source_dropped_and_counted(self) -> None:
        self.host.adjacency = None
        self.protocol.datagramReceived(OPTIONS, SOURCE)
        self.assertEqual(self.host.datagrams, [])
        self.assertEqual(self.wire.written, [])
        self.assertEqual(self.host.count_of("drops:no-adjacency", None), 1)
        (_, _, line, _) = self.host.events[0]
        self.assertIn("10.0.0.5:5062", line)
        self.assertIn("UDP 127.0.0.1:5060", line)

    def test_tls_record_dropped(self) -> None:
        self.protocol.datagramReceived(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", SOURCE)
        self.assertEqual(self.host.datagrams, [])
        self.assertEqual(self.wire.written, [])
        self.assertEqual(self.host.count_of("drops:tls-on-plain"), 1)

    def test_crlf_keepalive_ignored(self) -> None:
        self.protocol.datagramReceived(b"\r\n\r\n", SOURCE)
        self.protocol.datagramReceived(b"\r\n", SOURCE)
        self.assertEqual(self.host.datagrams, [])
        self.assertEqual(self.wire.written, [])
        self.assertEqual(self.host.count_of("keepalives"), 2)

    def test_oversize_request_answered_513(self) -> None:
        self.protocol.datagramReceived(request_with_body(2000), SOURCE)
        self.assertEqual(self.host.datagrams, [])
        [(data, to)] = self.wire.written
        self.assertEqual(to, SOURCE)
        self.assertTrue(data.startswith(b"SIP/2.0 513 Message Too Large\r\n"))
        self.assertEqual(self.host.count_of("drops:too-large"), 1)

    def test_oversize_broken_request_still_answered_when_possible(self) -> None:
        broken = request_with_body(2000).replace(b"Max-Forwards: 70", b"Max-Forwards: x")
        self.protocol.datagramReceived(broken, SOURCE)
        [(data, _)] = self.wire.written
        self.assertTrue(data.startswith(b"SIP/2.0 513 "))

    def test_oversize_garbage_dropped(self) -> None:
        self.protocol.datagramReceived(b"x" * 2000, SOURCE)
        self.assertEqual(self.wire.written, [])
        self.assertEqual(self.host.count_of("drops:too-large"), 1)

    def test_oversize_response_dropped(self) -> None:
        response = b"SIP/2.0 200 OK\r\n" + OPTIONS.split(b"\r\n", 1)[1] + b"y" * 2000
        self.protocol.datagramReceived(response, SOURCE)
        self.assertEqual(self.wire.written, [])
        self.assertEqual(self.host.count_of("drops:too-large"), 1)

    def test_exact_limit_accepted(self) -> None:
        message = OPTIONS + b"z" * (1024 - len(OPTIONS))
        self.protocol.datagramReceived(message, SOURCE)
        self.assertEqual(len(self.host.datagrams), 1)

    def test_send(self) -> None:
        self.assertTrue(self.protocol.send(b"hello", SOURCE))
        self.assertEqual(self.wire.written, [(b"hello", SOURCE)])

    def test_send_without_socket(self) -> None:
        listener = UdpListener(self.host, LISTENER)
        self.assertFalse(listener.send(b"hello", SOURCE))

    def test_send_refused_by_socket(self) -> None:
        def refuse(data: bytes, addr: object) -> None:
            raise OSError("message too long")

        self.wire.write = refuse  # type: ignore[method-assign]
        self.assertFalse(self.protocol.send(b"hello", SOURCE))
