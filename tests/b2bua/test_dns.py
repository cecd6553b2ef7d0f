"""Hunting over next hops found by DNS (RFC 3263): the Resolve seam between the B2BUA and the edge.

The stand-in edge is :class:`tests.b2bua.test_call.Net`: it answers each
:class:`~sbc.sip.stack.Resolve` from its ``dns`` table, or holds it
(``hold_dns``) so that a test can answer later, or answer a failure.
"""

from __future__ import annotations

import ipaddress

import attrs

from sbc.adjacencies import AdjacencyTable, InboundContext, ListenerKey
from sbc.b2bua.nexthop import destination_flow, next_hop
from sbc.config import parse_config
from sbc.sip.locate import Destination, NextHop, Resolution
from sbc.sip.stack import Flow
from sbc.sip.uri import parse_uri
from tests.b2bua.test_call import (
    A_FLOW,
    ACCESS,
    B2_FLOW,
    CONFIG,
    CORE2,
    T_FLOW,
    TRUSTED,
    CallTestCase,
    Net,
    answer,
    invite,
)

TCP_OUT = InboundContext("tcp-out", ListenerKey("127.0.0.1", 5066, "TCP"))
TLS_OUT = InboundContext("tls", ListenerKey("127.0.0.1", 5061, "TLS"))


def tcp_flow(address: str, port: int = 5060) -> Flow:
    return Flow("TCP", ("127.0.0.1", 5066), (address, port))


class DnsHuntTests(CallTestCase):
    """A candidate whose next hop is a domain is resolved; each destination is a hunt entry."""

    def setUp(self) -> None:
        self.net = Net({"remote.test": ["tcp-out", "core2"]})
        self.net.dns["remote.test"] = ["192.0.2.21", "192.0.2.22"]

    def counter(self, adjacency: str, name: str) -> int:
        return self.net.core.calls.counters.get(adjacency, name)

    def test_the_hop_asked_for(self) -> None:
        """tcp-out has no signaling-peer: the Request-URI's domain, no port, TCP, IPv4."""
        self.net.feed(invite("sip:bob@remote.test"), A_FLOW, ACCESS)
        self.assertEqual(self.net.looked_up, [NextHop("remote.test", None, ("TCP",), 4)])

    def test_each_address_is_a_candidate_in_order(self) -> None:
        """The first destination gets the INVITE; refused, the second; then the next candidate."""
        sent = self.net.feed(invite("sip:bob@remote.test"), A_FLOW, ACCESS)
        [(flow, first)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, tcp_flow("192.0.2.21"))
        self.assertEqual(flow.adjacency, "tcp-out")
        self.assertEqual(first.uri_text, "sip:bob@remote.test")  # the Request-URI is kept
        sent = self.net.fail_transport(tcp_flow("192.0.2.21"))
        [(flow, second)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, tcp_flow("192.0.2.22"))
        self.assertNotEqual(second.top_via.branch, first.top_via.branch)
        sent = self.net.fail_transport(tcp_flow("192.0.2.22"))
        [(flow, third)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)  # core2: an IP signaling-peer, no DNS
        self.assertEqual(len(self.net.looked_up), 1)
        self.assertEqual(self.counter("tcp-out", "hunt-skip:transport"), 2)
        sent = self.net.feed(answer(third, 486, contact=None), B2_FLOW, CORE2)
        [(_, busy)] = self.net.responses(sent)
        self.assertEqual(busy.status, 486)
        self.net.feed(invite(method="ACK", to_tag=busy.to.tag, body=b""), A_FLOW, ACCESS)
        self.assertIdle()

    def test_a_destination_that_answers_gets_the_call(self) -> None:
        sent = self.net.feed(invite("sip:bob@remote.test"), A_FLOW, ACCESS)
        [(_, b_invite)] = self.net.requests(sent, "INVITE")
        self.net.feed(answer(b_invite, 180), tcp_flow("192.0.2.21"), TCP_OUT)
        sent = self.net.feed(answer(b_invite, 200), tcp_flow("192.0.2.21"), TCP_OUT)
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual((flow, ok.status), (A_FLOW, 200))
        self.assertEqual(self.counter("tcp-out", "calls-answered"), 1)

    def test_dns_failure_fails_over_to_the_next_candidate(self) -> None:
        del self.net.dns["remote.test"]
        sent = self.net.feed(invite("sip:bob@remote.test"), A_FLOW, ACCESS)
        [(flow, _)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        self.assertEqual(self.counter("tcp-out", "hunt-skip:dns"), 1)

    def test_dns_failure_on_the_only_candidate_is_503(self) -> None:
        self.net = Net({"remote.test": ["tcp-out"]})
        self.net.dns.clear()
        sent = self.net.feed(invite("sip:bob@remote.test"), A_FLOW, ACCESS)
        self.assertEqual(self.net.requests(sent, "INVITE"), [])
        [(flow, final)] = [(f, r) for f, r in self.net.responses(sent) if r.status >= 200]
        self.assertEqual((flow, final.status), (A_FLOW, 503))
        self.assertEqual(self.counter("access", "calls-failed"), 1)
        self.net.feed(invite(method="ACK", to_tag=final.to.tag, body=b""), A_FLOW, ACCESS)
        self.assertIdle()

    def test_a_better_failure_from_another_candidate_wins(self) -> None:
        """§16.7: a 404 from a candidate tried after the DNS failure reaches the caller."""
        del self.net.dns["remote.test"]
        sent = self.net.feed(invite("sip:bob@remote.test"), A_FLOW, ACCESS)
        [(_, second)] = self.net.requests(sent, "INVITE")
        sent = self.net.feed(answer(second, 503, contact=None), B2_FLOW, CORE2)
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 503)

    def test_caller_cancels_while_the_lookup_runs(self) -> None:
        """487 at once; the late answer sends nothing and leaves no call behind."""
        self.net.hold_dns = True
        request = invite("sip:bob@remote.test")
        self.net.feed(request, A_FLOW, ACCESS)
        cancel = invite("sip:bob@remote.test", method="CANCEL", body=b"")
        sent = self.net.feed(cancel, A_FLOW, ACCESS)
        self.assertEqual(sorted(r.status for _, r in self.net.responses(sent)), [200, 487])
        self.assertEqual(self.net.release_dns(), [])
        [(_, terminated)] = [(f, r) for f, r in self.net.responses(sent) if r.status == 487]
        self.net.feed(invite(method="ACK", to_tag=terminated.to.tag, body=b""), A_FLOW, ACCESS)
        self.assertIdle()

    def test_detach_while_the_lookup_runs(self) -> None:
        """The adjacency is released during the lookup: 503 to the caller, the answer ignored."""
        self.net.hold_dns = True
        self.net.feed(invite("sip:bob@remote.test"), A_FLOW, ACCESS)
        self.assertEqual(self.net.core.calls.active_calls("tcp-out"), 1)
        sent = self.net._collect(self.net.core.calls.release_adjacency("tcp-out", self.net.now))
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 503)
        self.assertEqual(self.net.release_dns(), [])

    def test_late_answer_after_a_commit_detached_the_adjacency(self) -> None:
        """The adjacency is gone when DNS answers: that candidate fails, hunting goes on."""
        self.net.hold_dns = True
        self.net.feed(invite("sip:bob@remote.test"), A_FLOW, ACCESS)
        config = parse_config(CONFIG.replace("  adjacency sip tcp-out\n", "  adjacency sip gone\n"))
        table = AdjacencyTable(config.adjacencies)
        self.net.core.calls.table = lambda: table
        sent = self.net.release_dns()
        [(flow, _)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)

    def test_redirect_to_a_domain_is_resolved_too(self) -> None:
        self.net = Net({"remote.test": ["tcp-out"], "other.test": ["tcp-out"]})
        self.net.dns["other.test"] = ["192.0.2.40"]
        sent = self.net.feed(invite("sip:bob@remote.test"), A_FLOW, ACCESS)
        [(flow, b_invite)] = self.net.requests(sent, "INVITE")
        redirect = answer(b_invite, 302, contact="sip:carol@other.test")
        sent = self.net.feed(redirect, flow, TCP_OUT)
        [(flow, second)] = self.net.requests(sent, "INVITE")
        self.assertEqual((flow, second.uri_text), (tcp_flow("192.0.2.40"), "sip:carol@other.test"))
        self.assertEqual([h.host for h in self.net.looked_up], ["remote.test", "other.test"])

    def test_ip_address_needs_no_lookup(self) -> None:
        self.net = Net({"192.0.2.77": ["tcp-out"]})
        sent = self.net.feed(invite("sip:bob@192.0.2.77:5070"), A_FLOW, ACCESS)
        [(flow, _)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, tcp_flow("192.0.2.77", 5070))
        self.assertEqual(self.net.looked_up, [])


class DnsTlsTests(CallTestCase):
    """RFC 5922 §7.3: the certificate is checked against the domain that was looked up."""

    def test_signaling_peer_domain_is_the_server_name_of_every_destination(self) -> None:
        self.net = Net({"remote.test": ["tls"]})
        self.net.hold_dns = True
        self.net.feed(invite("sips:bob@remote.test", via_host="127.0.0.3"), T_FLOW, TRUSTED)
        [hop] = self.net.looked_up
        self.assertEqual(hop, NextHop("peer.lab.test", None, ("TLS",), 4))
        found = Resolution(
            hop,
            (
                Destination("TLS", "192.0.2.51", 5071, "sbc1.carrier.test"),
                Destination("TLS", "192.0.2.52", 5072, "sbc2.carrier.test"),
            ),
        )
        sent = self.net.release_dns(found)
        [(flow, b_invite)] = self.net.requests(sent, "INVITE")
        self.assertEqual(
            (flow.transport, flow.remote, flow.server_name),
            ("TLS", ("192.0.2.51", 5071), "peer.lab.test"),
        )
        self.assertEqual(b_invite.top_via.transport, "TLS")
        sent = self.net.fail_transport(flow)  # e.g. the certificate was refused
        [(flow, _)] = self.net.requests(sent, "INVITE")
        self.assertEqual((flow.remote, flow.server_name), (("192.0.2.52", 5072), "peer.lab.test"))

    def test_without_signaling_peer_the_request_uri_domain_is_the_server_name(self) -> None:
        config = parse_config(CONFIG)
        adjacency = config.adjacency("tls")
        no_peer = attrs.evolve(adjacency, signaling_peer=None)
        uri = parse_uri("sips:bob@Remote.test")
        self.assertEqual(next_hop(no_peer, uri), NextHop("Remote.test", None, ("TLS",), 4))
        flow = destination_flow(no_peer, uri, Destination("TLS", "192.0.2.9", 5061, "x.test"))
        self.assertEqual(flow.server_name, "Remote.test")


class NextHopTests(CallTestCase):
    """What :func:`next_hop` asks DNS for, by adjacency and Request-URI."""

    def hop(self, adjacency: str, uri: str, **changes: object) -> NextHop:
        config = parse_config(CONFIG)
        chosen = attrs.evolve(config.adjacency(adjacency), **changes)
        return next_hop(chosen, parse_uri(uri))

    def test_signaling_peer_without_port_is_looked_up_with_srv(self) -> None:
        self.assertEqual(
            self.hop("tls", "sips:b@x.test"), NextHop("peer.lab.test", None, ("TLS",), 4)
        )

    def test_signaling_peer_port_means_addresses_only(self) -> None:
        hop = self.hop("tls", "sips:b@x.test", signaling_peer_port=5071)
        self.assertEqual((hop.host, hop.port), ("peer.lab.test", 5071))

    def test_udp_tcp_prefers_udp_and_the_uri_transport_chooses(self) -> None:
        self.assertEqual(self.hop("access", "sip:b@x.test").transports, ("UDP", "TCP"))
        hop = self.hop("access", "sip:b@x.test;transport=tcp")
        self.assertEqual((hop.transports, hop.transport_given), (("TCP",), True))

    def test_uri_transport_the_adjacency_cannot_use_is_ignored(self) -> None:
        hop = self.hop("tcp-out", "sip:b@x.test;transport=udp")
        self.assertEqual((hop.transports, hop.transport_given), (("TCP",), False))

    def test_uri_port_is_kept(self) -> None:
        self.assertEqual(self.hop("tcp-out", "sip:b@x.test:5080").port, 5080)

    def test_ipv6_adjacency_asks_for_aaaa(self) -> None:
        hop = self.hop("tcp-out", "sip:b@x.test", signaling_address=ipaddress.ip_address("::1"))
        self.assertEqual((hop.family, hop.address_type), (6, "AAAA"))

    def test_ipv6_literal_in_the_uri(self) -> None:
        hop = self.hop("tcp-out", "sip:b@[2001:db8::7]")
        self.assertTrue(hop.numeric)
        self.assertEqual(hop.default_destination.address, "2001:db8::7")
