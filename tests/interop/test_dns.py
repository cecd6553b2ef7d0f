"""Next hops found by DNS (RFC 3263) against a real DNS server, a real SBC and SIPp.

Each test starts a Twisted Names authoritative server for the zone ``test.``
on 127.0.0.1 (in this process, on the trial reactor: UDP and TCP on one free
port), a ``twistd -n sbc`` whose config says ``dns-server 127.0.0.1 PORT``,
and its peers, all bounded in calls and seconds. The zone holds NAPTR, SRV
and A records; the server counts the queries it answers, so a test can tell
whether the SBC asked again or used its cache.

Topology::

    SIPp UAC -UDP-> access (untrusted) ---\\
                                           +-> trunk (untrusted, TCP, signaling-peer
                                           |   trunk.test) --> SIPp UAS / dead port / recorder
    raw UDP -----> core (trusted-unenc.) --+-> secure (trusted-encrypted, signaling-peer
                                           |   secure.test) --> TLS peer (this process)
                                           \\-> open (untrusted, TCP, no peer: the
                                               Request-URI's domain) --> SIPp UAS
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, protocol, ssl
from twisted.names import dns, server
from twisted.names.authority import FileAuthority
from twisted.trial.unittest import TestCase

from tests.interop.calls_harness import (
    CallAdjacency,
    SippProcess,
    start_routed_sbc,
    start_sipp,
    start_sipp_uas,
)
from tests.interop.harness import (
    HOST,
    SbcProcess,
    get_reactor,
    make_pki,
    new_call_id,
    open_udp,
    pause,
    sip_request,
)
from tests.interop.test_calls import Recorder, ack_for
from tests.support.peers import free_port

ADJACENCIES = (
    CallAdjacency("access", "untrusted", "udp"),
    CallAdjacency("core", "trusted-unencrypted", "udp"),
    CallAdjacency("trunk", "untrusted", "tcp", signaling_peer="trunk.test"),
    CallAdjacency("secure", "trusted-encrypted", signaling_peer="secure.test"),
    CallAdjacency("open", "untrusted", "tcp"),
)


def routing(dns_port: int) -> tuple[str, ...]:
    """Calls go by Request-URI domain; the SBC asks our DNS server."""
    lines = [
        f"dns-server 127.0.0.1 {dns_port}",
        "call-policy-set 1",
        " first-call-routing-table by-domain",
        " rtg-dst-domain-table by-domain",
    ]
    for number, (domain, adjacency) in enumerate(
        (
            ("trunk.test", "trunk"),
            ("secure.test", "secure"),
            ("unknown.test", "open"),
            ("short.test", "open"),
        ),
        start=1,
    ):
        lines += [
            f"  entry {number}",
            f"   match-domain {domain}",
            f"   dst-adjacency {adjacency}",
            "   action complete",
        ]
    return (*lines, "active-call-policy-set 1")


class ZoneAuthority(FileAuthority):
    """An authority for ``test.`` held in memory; it records every question it answers."""

    def __init__(self, records: dict[str, list[Any]]) -> None:
        self._zone = {name.encode(): list(values) for name, values in records.items()}
        self.questions: list[tuple[str, str]] = []
        super().__init__("test")

    def loadFile(self, filename: str) -> None:
        soa = dns.Record_SOA(
            mname=b"ns.test", rname=b"root.test", serial=1, refresh=60, retry=60,
            expire=60, minimum=60, ttl=60,
        )  # fmt: skip
        self.soa = (b"test", soa)
        self.records = self._zone

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        kind = dns.QUERY_TYPES.get(type, str(type))
        self.questions.append((name.decode().lower(), kind))
        return super()._lookup(name, cls, type, timeout)

    def asked(self, name: str) -> list[str]:
        """The record types asked for ``name``, in order."""
        return [kind for asked, kind in self.questions if asked == name]


def start_dns(case: TestCase, records: dict[str, list[Any]]) -> tuple[int, ZoneAuthority]:
    """The authoritative server on 127.0.0.1 (UDP and TCP); (port, its authority)."""
    authority = ZoneAuthority(records)
    factory = server.DNSServerFactory(authorities=[authority])
    reactor = get_reactor()
    port = free_port()
    udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(controller=factory), interface=HOST)
    tcp = reactor.listenTCP(port, factory, interface=HOST)
    case.addCleanup(udp.stopListening)
    case.addCleanup(tcp.stopListening)
    return port, authority


def naptr(order: int, service: bytes, replacement: bytes, ttl: int = 300) -> Any:
    return dns.Record_NAPTR(order, 10, b"s", service, b"", replacement, ttl=ttl)


def srv(priority: int, weight: int, port: int, target: bytes, ttl: int = 300) -> Any:
    return dns.Record_SRV(priority, weight, port, target, ttl=ttl)


def a(ttl: int = 300) -> Any:
    return dns.Record_A(HOST, ttl=ttl)


def recorder(case: TestCase) -> tuple[int, list[bytes]]:
    """A TCP listener that accepts and records, never answers: a target that must stay silent."""
    received: list[bytes] = []
    listener = get_reactor().listenTCP(
        0, protocol.Factory.forProtocol(lambda: Recorder(received)), interface=HOST
    )
    case.addCleanup(listener.stopListening)
    return listener.getHost().port, received


def dead_port(case: TestCase) -> int:
    """A port on 127.0.0.1 that refuses connections at once, held for the test.

    The socket is bound but never listens: a SYN gets a reset, and no other
    socket (the SBC's listeners, SIPp) can take the port meanwhile.
    """
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    case.addCleanup(holder.close)
    holder.bind((HOST, 0))
    return int(holder.getsockname()[1])


class _DnsTestCase(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def start(self, records: dict[str, list[Any]]) -> Any:
        """The DNS server with ``records``, then the SBC asking it."""
        self.pki = make_pki(self.mktemp())
        dns_port, self.authority = start_dns(self, records)
        self.sbc: SbcProcess = yield start_routed_sbc(
            self, self.pki, ADJACENCIES, routing(dns_port), local_domains=["lab.test"]
        )

    def call(self, ruri: str, *, calls: int = 1) -> SippProcess:
        """A SIPp caller (UDP, untrusted access) to ``ruri``."""
        return start_sipp(
            self,
            "calls_uac.xml",
            remote_port=self.sbc.port("access"),
            transport="u1",
            keys={"ruri": ruri, "from_uri": "sip:alice@lab.test", "contact_scheme": "sip"},
            calls=calls,
        )

    @defer.inlineCallbacks
    def both_succeed(self, *peers: SippProcess) -> Any:
        results = []
        for peer in peers:
            results.append((yield peer.wait(60, "SIPp")))
        context = "\n".join(p.describe(r) for p, r in zip(peers, results))
        context += "\n--- sbc log tail:\n" + self.sbc.tail(60)
        self.assertEqual([r.exit_code for r in results], [0] * len(results), context)

    @defer.inlineCallbacks
    def invite(self, adjacency: str, ruri: str, from_uri: str = "sip:alice@lab.test") -> Any:
        """A raw INVITE over UDP to ``adjacency``; its final response (ACKed)."""
        client = open_udp(self, self.sbc.port(adjacency))
        call_id = new_call_id()
        request = sip_request(
            method="INVITE", uri=ruri, via_transport="UDP", local_port=client.local_port,
            call_id=call_id, from_uri=from_uri,
            extra=[f"Contact: <sip:alice@{HOST}:{client.local_port}>"],
        )  # fmt: skip
        response = yield client.transact(request, call_id, seconds=40.0)
        if response.status >= 300:
            client.send(ack_for(request, response))
        return response


class SrvOrderTests(_DnsTestCase):
    """RFC 3263 with the trunk's signaling-peer trunk.test: NAPTR -> SRV -> A."""

    @defer.inlineCallbacks
    def test_priority_then_weight_decide_who_gets_the_call(self) -> Any:
        """The priority 10 target of weight 65535 gets the call.

        Its rival at priority 10 has weight 0 and a priority 20 target
        exists: both only record, and hear nothing. (RFC 2782 still lets a
        weight 0 target come first once in 65536 lookups.) The UDP service
        of the NAPTR records, preferred by order, is not for a TCP adjacency.
        """
        callee = yield start_sipp_uas(self, "calls_uas.xml", keys={"contact_scheme": "sip"})
        light_port, light = recorder(self)
        backup_port, backup = recorder(self)
        yield self.start(
            {
                "trunk.test": [
                    naptr(10, b"SIP+D2U", b"_sip._udp.trunk.test"),
                    naptr(20, b"SIP+D2T", b"_sip._tcp.trunk.test"),
                ],
                "_sip._udp.trunk.test": [srv(10, 0, backup_port, b"udp.trunk.test")],
                "_sip._tcp.trunk.test": [
                    srv(20, 100, backup_port, b"backup.trunk.test"),
                    srv(10, 0, light_port, b"light.trunk.test"),
                    srv(10, 65535, callee.port, b"heavy.trunk.test"),
                ],
                "heavy.trunk.test": [a()],
                "light.trunk.test": [a()],
                "backup.trunk.test": [a()],
                "udp.trunk.test": [a()],
            }
        )
        caller = self.call("sip:bob@trunk.test")
        yield self.both_succeed(caller, callee)
        self.assertEqual((light, backup), ([], []), self.sbc.tail())
        self.assertEqual(self.authority.asked("trunk.test"), ["NAPTR"])
        self.assertEqual(self.authority.asked("_sip._tcp.trunk.test"), ["SRV"])
        self.assertEqual(self.authority.asked("_sip._udp.trunk.test"), [])

    @defer.inlineCallbacks
    def test_failover_to_the_second_target_when_the_first_refuses(self) -> Any:
        callee = yield start_sipp_uas(self, "calls_uas.xml", keys={"contact_scheme": "sip"})
        dead = dead_port(self)
        yield self.start(
            {
                "trunk.test": [naptr(10, b"SIP+D2T", b"_sip._tcp.trunk.test")],
                "_sip._tcp.trunk.test": [
                    srv(10, 0, dead, b"down.trunk.test"),
                    srv(20, 0, callee.port, b"up.trunk.test"),
                ],
                "down.trunk.test": [a()],
                "up.trunk.test": [a()],
            }
        )
        caller = self.call("sip:bob@trunk.test")
        yield self.both_succeed(caller, callee)
        log = self.sbc.output()
        self.assertIn(f"TCP connection to {HOST}:{dead} failed", log)
        self.assertRegex(log, r"call \d+: trunk failed \(transport\); trying trunk")

    @defer.inlineCallbacks
    def test_answers_are_cached_for_their_ttl(self) -> Any:
        """A second call within the TTL sends no query; one after a 1 s TTL asks again."""
        callee = yield start_sipp_uas(
            self, "calls_uas.xml", keys={"contact_scheme": "sip"}, calls=4, seconds=60
        )
        yield self.start(
            {
                "trunk.test": [naptr(10, b"SIP+D2T", b"_sip._tcp.trunk.test")],
                "_sip._tcp.trunk.test": [srv(10, 0, callee.port, b"pbx.trunk.test")],
                "pbx.trunk.test": [a()],
                # short.test: no NAPTR nor SRV, an A record that lives 1 second
                "short.test": [dns.Record_A(HOST, ttl=1)],
            }
        )
        yield self.both_succeed(self.call("sip:bob@trunk.test"))
        first = list(self.authority.questions)
        self.assertEqual(
            sorted(first),
            [
                ("_sip._tcp.trunk.test", "SRV"),
                ("pbx.trunk.test", "A"),
                ("trunk.test", "NAPTR"),
            ],
        )
        yield self.both_succeed(self.call("sip:bob@trunk.test"))
        self.assertEqual(self.authority.questions, first, "the second call asked DNS again")
        # short.test on the callee's port: the Request-URI names it, 'open' has no peer
        uri = f"sip:bob@short.test:{callee.port}"
        yield self.both_succeed(self.call(uri))
        self.assertEqual(self.authority.asked("short.test"), ["A"])  # explicit port: A only
        yield pause(1.5)
        yield self.both_succeed(self.call(uri), callee)
        self.assertEqual(self.authority.asked("short.test"), ["A", "A"])


class FailureTests(_DnsTestCase):
    @defer.inlineCallbacks
    def test_unknown_domain_gets_503(self) -> Any:
        yield self.start({"trunk.test": [a()]})
        response = yield self.invite("access", "sip:bob@unknown.test")
        self.assertEqual(response.status, 503, response.raw)
        # NAPTR, then SRV (the open adjacency is TCP only), then A: all "no such domain"
        self.assertEqual(self.authority.asked("unknown.test"), ["NAPTR", "A"])
        self.assertEqual(self.authority.asked("_sip._tcp.unknown.test"), ["SRV"])
        again = yield self.invite("access", "sip:carol@unknown.test")
        self.assertEqual(again.status, 503)
        self.assertEqual(len(self.authority.asked("unknown.test")), 2, "negative answer not kept")
        log = self.sbc.output()
        line = "cannot resolve unknown.test (adjacency open): unknown.test A: no such domain"
        self.assertEqual(log.count(line), 1, self.sbc.tail())  # once per domain per interval


class TlsPeer(protocol.Protocol):
    """The TLS server side of one connection from the SBC: records, answers INVITE with 486."""

    def __init__(self, owner: TlsServer) -> None:
        self.owner = owner
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.owner.received.append(data)
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer or not self.buffer.startswith(b"INVITE "):
            return
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        keep = [
            line
            for line in lines[1:]
            if line.split(":", 1)[0].strip().lower() in ("via", "from", "call-id", "cseq")
        ]
        to = next(line for line in lines if line.lower().startswith("to:"))
        answer = ["SIP/2.0 486 Busy Here", *keep, f"{to};tag=tlspeer", "Content-Length: 0", "", ""]
        assert self.transport is not None
        self.transport.write("\r\n".join(answer).encode())


class TlsServer:
    """A TLS listener on 127.0.0.1 with one certificate; records the SNI and what arrives."""

    def __init__(self, case: TestCase, cert: str, key: str) -> None:
        with open(cert, "rb") as f, open(key, "rb") as g:
            options = ssl.PrivateCertificate.loadPEM(f.read() + g.read()).options()
        self.server_names: list[bytes | None] = []
        self.received: list[bytes] = []
        options.getContext().set_tlsext_servername_callback(
            lambda connection: self.server_names.append(connection.get_servername())
        )
        factory = protocol.Factory.forProtocol(lambda: TlsPeer(self))
        self.listener = get_reactor().listenSSL(0, factory, options, interface=HOST)
        case.addCleanup(self.listener.stopListening)

    @property
    def port(self) -> int:
        return int(self.listener.getHost().port)


class TlsIdentityTests(_DnsTestCase):
    """RFC 5922 §7.3: the peer proves the domain the SBC looked up, not the SRV target's name.

    secure.test's SRV record points to node1.secure.test. A SIPS call from
    the trusted core adjacency leaves through ``secure`` (trusted-encrypted,
    signaling-peer secure.test).
    """

    @defer.inlineCallbacks
    def secure_call(self, common_name: str, **names: Any) -> Any:
        """Start DNS, SBC, and a TLS peer whose certificate names only ``names``."""
        self.pki = make_pki(self.mktemp())
        cert, key = self.pki.issue("peer-" + common_name, common_name, **names)
        peer = TlsServer(self, cert, key)
        dns_port, self.authority = start_dns(
            self,
            {
                "secure.test": [naptr(10, b"SIPS+D2T", b"_sips._tcp.secure.test")],
                "_sips._tcp.secure.test": [srv(10, 0, peer.port, b"node1.secure.test")],
                "node1.secure.test": [a()],
            },
        )
        self.sbc = yield start_routed_sbc(
            self, self.pki, ADJACENCIES, routing(dns_port), local_domains=["lab.test"]
        )
        response = yield self.invite("core", "sips:bob@secure.test", "sips:alice@lab.test")
        return peer, response

    @defer.inlineCallbacks
    def test_certificate_for_the_srv_target_only_is_refused(self) -> Any:
        peer, response = yield self.secure_call(
            "node1.secure.test", sip_uris=["sip:node1.secure.test"], dns_names=["node1.secure.test"]
        )
        self.assertEqual(response.status, 503, response.raw)
        self.assertEqual(peer.received, [], "SIP was sent to a peer that did not prove secure.test")
        self.assertEqual(peer.server_names, [b"secure.test"])
        self.assertRegex(self.sbc.output(), r"does not match 'secure\.test'")

    @defer.inlineCallbacks
    def test_certificate_for_the_original_domain_is_accepted(self) -> Any:
        peer, response = yield self.secure_call("secure.test", sip_uris=["sip:secure.test"])
        self.assertEqual(response.status, 486, response.raw)  # the peer's answer, relayed
        self.assertEqual(peer.server_names, [b"secure.test"])
        invite = b"".join(peer.received)
        self.assertTrue(invite.startswith(b"INVITE sips:bob@secure.test SIP/2.0\r\n"), invite)
        self.assertIn(b"Via: SIP/2.0/TLS ", invite)
