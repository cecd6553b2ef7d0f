"""sbc.transport.udp: the UDP listener protocol, driven with datagramReceived directly."""

from __future__ import annotations

import errno

from twisted.internet.error import InvalidAddressError
from twisted.internet.testing import FakeDatagramTransport
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import ListenerKey
from sbc.config import Limits
from sbc.transport.udp import MAX_CHECKED_DESTINATIONS, UdpListener
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


class _Socket:
    """The socket of a :class:`_Port`: records ``sendto``, or raises ``error``."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.error: OSError | None = None

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if self.error is not None:
            raise self.error
        self.sent.append((data, address))
        return len(data)


class _Port(FakeDatagramTransport):
    """A datagram transport with a socket, whose ``write`` refuses host names as Port's does."""

    def __init__(self) -> None:
        super().__init__()
        self.socket = _Socket()

    def write(self, packet: bytes, addr: object = None) -> None:
        assert isinstance(addr, tuple)
        if not addr[0][:1].isdigit():
            raise InvalidAddressError(addr[0], "write() only accepts IP addresses")
        super().write(packet, addr)


class UdpSendTests(SynchronousTestCase):
    """Sending: Port.write for a new destination host, the socket's sendto once it was accepted."""

    def setUp(self) -> None:
        self.host = FakeHost(Reactor(), Limits())
        self.protocol = UdpListener(self.host, LISTENER)
        self.port = _Port()
        self.protocol.makeConnection(self.port)  # type: ignore[arg-type]

    def test_first_datagram_through_write_then_sendto(self) -> None:
        self.assertTrue(self.protocol.send(b"one", SOURCE))
        self.assertTrue(self.protocol.send(b"two", SOURCE))
        self.assertTrue(self.protocol.send(b"three", ("10.0.0.5", 5070)))
        self.assertEqual(self.port.written, [(b"one", SOURCE)])
        self.assertEqual(self.port.socket.sent, [(b"two", SOURCE), (b"three", ("10.0.0.5", 5070))])

    def test_refused_host_is_never_sent_directly(self) -> None:
        self.assertFalse(self.protocol.send(b"one", ("sbc.test", 5060)))
        self.assertFalse(self.protocol.send(b"two", ("sbc.test", 5060)))
        self.assertEqual(self.port.written, [])
        self.assertEqual(self.port.socket.sent, [])

    def test_socket_errors_as_port_write(self) -> None:
        self.protocol.send(b"one", SOURCE)
        self.port.socket.error = OSError(errno.ECONNREFUSED, "refused")
        self.assertTrue(self.protocol.send(b"two", SOURCE))  # Port.write ignores it too
        self.port.socket.error = OSError(errno.EMSGSIZE, "too long")
        self.assertFalse(self.protocol.send(b"three", SOURCE))
        self.port.socket.error = OSError(errno.EAGAIN, "full")
        self.assertFalse(self.protocol.send(b"four", SOURCE))

    def test_remembered_hosts_are_bounded(self) -> None:
        for n in range(MAX_CHECKED_DESTINATIONS + 1):
            self.protocol.send(b"x", (f"10.1.{n // 256}.{n % 256}", 5060))
        self.assertEqual(len(self.port.written), MAX_CHECKED_DESTINATIONS + 1)
        # the table was emptied when full: the first host goes through write again
        self.protocol.send(b"again", ("10.1.0.0", 5060))
        self.assertEqual(self.port.written[-1], (b"again", ("10.1.0.0", 5060)))
        self.protocol.send(b"last", (f"10.1.{MAX_CHECKED_DESTINATIONS // 256}.0", 5060))
        self.assertEqual(self.port.socket.sent[-1][0], b"last")
