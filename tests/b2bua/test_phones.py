"""Phones over TLS through SbcCore + SipStack: flows, sip-over-tls, the SBC's Contact scheme.

docs/phones.md and docs/security-model.md describe what is checked here: a
binding made over a TLS connection is reached over that connection only and
goes when it closes; a UDP binding is reached at the REGISTER's source; with
``sip-over-tls`` a ``sip:`` call reaches a phone over TLS and a phone's
``sip:...;transport=tls`` Contact is no scheme downgrade; the SBC's own Contact
follows the dialog's scheme.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable, InboundContext, ListenerKey
from sbc.config import parse_config
from sbc.core import SbcCore
from sbc.identity import PeerIdentities
from sbc.routing import Router
from sbc.routing.policies import DefaultPolicy
from sbc.sip import parse_message
from sbc.sip.message import Request, Response
from sbc.sip.stack import Flow, SipStack, StackOutput, Transmit
from tests.b2bua.test_call import SDP, answer, invite

CONFIG = """
sbc t
 sbe
  local-domain lab.test
  adjacency sip phones
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   security trusted-encrypted
   {sip_over_tls}
   attach
  adjacency sip trunk
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   signaling-peer 10.0.0.5
   security trusted-unencrypted
   attach
  adjacency sip udp-phones
   signaling-address ipv4 127.0.0.1
   signaling-port 5070
   security trusted-unencrypted
   attach
"""

#: A phone's TLS connection to the phones adjacency (connection 11).
PHONE_TLS = Flow("TLS", ("127.0.0.1", 5061), ("192.0.2.50", 40123), 11)
PHONES = InboundContext(
    "phones", ListenerKey("127.0.0.1", 5061, "TLS"), PeerIdentities(sip_domains=("lab.test",))
)
TRUNK_FLOW = Flow("UDP", ("127.0.0.1", 5062), ("10.0.0.5", 5060))
TRUNK = InboundContext("trunk", ListenerKey("127.0.0.1", 5062, "UDP"))
#: A phone behind NAT on UDP: its REGISTER comes from 198.51.100.7:61000.
NAT_FLOW = Flow("UDP", ("127.0.0.1", 5070), ("198.51.100.7", 61000))
UDP_PHONES = InboundContext("udp-phones", ListenerKey("127.0.0.1", 5070, "UDP"))


def register(contact: str, aor: str = "sip:alice@lab.test", cseq: int = 1) -> Request:
    data = (
        "REGISTER sip:lab.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 10.1.1.1:5061;branch=z9hG4bKreg{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{aor}>;tag=r1\r\n"
        f"To: <{aor}>\r\n"
        "Call-ID: reg-alice\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <{contact}>\r\n"
        "Expires: 600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


class PhoneNet:
    """The core with the default router, a clock and what was sent."""

    def __init__(self, sip_over_tls: bool = True) -> None:
        config = parse_config(CONFIG.format(sip_over_tls="sip-over-tls" if sip_over_tls else ""))
        table = AdjacencyTable(config.adjacencies)
        self.core = SbcCore(lambda: table, Router(None, DefaultPolicy()).route, ("lab.test",))
        self.stack = SipStack(self.core)
        self.core.stack = self.stack
        self.now = 0.0
        self.outputs: list[StackOutput] = []

    def feed(
        self, message: Request | Response, flow: Flow, context: InboundContext
    ) -> list[tuple[Flow, Request | Response]]:
        return self.collect(self.stack.receive(message.serialize(), flow, self.now, context))

    def collect(self, outputs: list[StackOutput]) -> list[tuple[Flow, Request | Response]]:
        self.outputs = outputs
        return [(o.flow, parse_message(o.data)) for o in outputs if isinstance(o, Transmit)]

    @staticmethod
    def only(sent: list[tuple[Flow, Request | Response]], kind: str) -> tuple[Flow, Any]:
        found = [
            (f, m)
            for f, m in sent
            if (isinstance(m, Request) and m.method == kind)
            or (isinstance(m, Response) and str(m.status) == kind)
        ]
        assert len(found) == 1, f"expected one {kind}, got {sent}"
        return found[0]


class FlowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = PhoneNet()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def register_alice(self) -> None:
        sent = self.net.feed(register("sip:alice@10.1.1.1:5061;transport=tls"), PHONE_TLS, PHONES)
        flow, _ = self.net.only(sent, "200")
        self.assertEqual(flow.connection_id, 11)

    def call_alice(self, uri: str = "sip:alice@lab.test") -> list[tuple[Flow, Any]]:
        return self.net.feed(invite(uri, contact="sip:carol@10.0.0.5:5060"), TRUNK_FLOW, TRUNK)

    def event_names(self) -> list[str]:
        return [
            e["event"] for e in self.events if str(e.get("event", "")).startswith("registration")
        ]

    def test_binding_is_reached_over_its_own_connection(self) -> None:
        self.register_alice()
        flow, request = self.net.only(self.call_alice(), "INVITE")
        self.assertEqual(flow.connection_id, 11)
        self.assertTrue(flow.pinned)
        self.assertEqual(flow.remote, ("192.0.2.50", 40123))
        self.assertEqual(str(request.uri), "sip:alice@10.1.1.1:5061;transport=tls")
        # a sip: dialog over TLS: the SBC's Contact is sip:...;transport=tls (not sips:)
        [contact] = request.contacts
        self.assertEqual(contact.uri.scheme, "sip")
        self.assertEqual(contact.uri.param("transport"), "tls")

    def test_closed_connection_removes_the_binding_and_calls_get_480(self) -> None:
        self.register_alice()
        self.net.core.connection_closed(11, 1.0)
        self.assertEqual(self.net.core.registrar.lookup("alice@lab.test", 1.0), [])
        self.assertIn("registration.removed", self.event_names())
        [removed] = [e for e in self.events if e.get("event") == "registration.removed"]
        self.assertEqual(removed["reason"], "connection closed")
        _, refusal = self.net.only(self.call_alice(), "480")
        self.assertEqual(refusal.status, 480)

    def test_a_connection_lost_after_lookup_fails_over_to_480_not_a_new_connection(self) -> None:
        self.register_alice()
        self.call_alice()
        [sent] = [o for o in self.net.outputs if isinstance(o, Transmit) and o.flow.pinned]
        assert sent.transaction_key is not None
        # what the runtime does for a pinned flow whose connection is gone
        sent_now = self.net.collect(self.net.stack.transport_error(sent.transaction_key, 0.5))
        _, final = self.net.only(sent_now, "480")
        self.assertEqual(final.status, 480)

    def test_udp_binding_is_reached_at_the_register_source(self) -> None:
        request = register("sip:alice@192.168.1.20:5060", cseq=1)
        sent = self.net.feed(request, NAT_FLOW, UDP_PHONES)
        self.net.only(sent, "200")
        flow, invite_out = self.net.only(self.call_alice(), "INVITE")
        self.assertEqual(flow.remote, ("198.51.100.7", 61000))
        self.assertFalse(flow.pinned)
        self.assertEqual(str(invite_out.uri), "sip:alice@192.168.1.20:5060")

    def test_events_for_added_refreshed_expired(self) -> None:
        self.register_alice()
        self.net.feed(register("sip:alice@10.1.1.1:5061;transport=tls", cseq=2), PHONE_TLS, PHONES)
        self.assertEqual(self.event_names(), ["registration.added", "registration.refreshed"])
        added = self.events[[e.get("event") for e in self.events].index("registration.added")]
        self.assertEqual(added["aor"], "alice@lab.test")
        self.assertEqual(added["adjacency"], "phones")
        self.assertEqual(added["source"], "TLS 192.0.2.50:40123")
        self.assertEqual(added["expires"], 600)
        deadline = self.net.core.next_deadline()
        self.assertEqual(deadline, 600.0)
        self.net.core.advance(600.0)
        self.assertEqual(self.event_names()[-1], "registration.expired")
        self.assertEqual(self.net.core.registrar.lookup("alice@lab.test", 600.0), [])
        self.assertIsNone(self.net.core.next_deadline())


class SipOverTlsTests(SynchronousTestCase):
    def register(self, net: PhoneNet, contact: str, aor: str = "sip:alice@lab.test") -> Response:
        _, response = net.only(net.feed(register(contact, aor), PHONE_TLS, PHONES), "200")
        assert isinstance(response, Response)
        return response

    def test_sip_call_to_a_tls_phone_needs_sip_over_tls(self) -> None:
        strict = PhoneNet(sip_over_tls=False)
        self.register(strict, "sip:alice@10.1.1.1:5061;transport=tls")
        sent = strict.feed(invite("sip:alice@lab.test"), TRUNK_FLOW, TRUNK)
        _, refusal = strict.only(sent, "480")
        self.assertEqual(refusal.status, 480)

    def test_sips_call_answered_with_a_sip_contact_over_tls(self) -> None:
        """Linphone's answer: a sips: call, 200 with Contact sip:...;transport=tls."""
        net = PhoneNet()
        self.register(net, "sips:alice@10.1.1.1:5061", aor="sips:alice@lab.test")
        flow, request = net.only(
            net.feed(invite("sips:alice@lab.test"), TRUNK_FLOW, TRUNK), "INVITE"
        )
        self.assertEqual(flow.connection_id, 11)
        [contact] = request.contacts
        self.assertEqual(contact.uri.scheme, "sips")
        ok = answer(request, 200, contact="sip:alice@10.1.1.1:5061;transport=tls", body=SDP)
        sent = net.feed(ok, PHONE_TLS, PHONES)
        flow, _ = net.only(sent, "200")
        self.assertEqual(flow.remote, TRUNK_FLOW.remote)
        self.assertEqual([m for _, m in sent if isinstance(m, Request)], [])  # no BYE

    def test_sips_call_torn_down_on_a_sip_contact_without_the_flag(self) -> None:
        net = PhoneNet(sip_over_tls=False)
        self.register(net, "sips:alice@10.1.1.1:5061", aor="sips:alice@lab.test")
        _, request = net.only(net.feed(invite("sips:alice@lab.test"), TRUNK_FLOW, TRUNK), "INVITE")
        ok = answer(request, 200, contact="sip:alice@10.1.1.1:5061;transport=tls", body=SDP)
        sent = net.feed(ok, PHONE_TLS, PHONES)
        _, refusal = net.only(sent, "480")
        self.assertEqual(refusal.headers.get("Warning"), '380 127.0.0.1 "SIPS Not Allowed"')
        net.only(sent, "BYE")

    def test_sips_aor_with_a_sip_contact_over_tls(self) -> None:
        net = PhoneNet()
        self.register(net, "sip:alice@10.1.1.1:5061;transport=tls", aor="sips:alice@lab.test")
        # and a sips: call reaches it over the phone's connection
        flow, request = net.only(
            net.feed(invite("sips:alice@lab.test"), TRUNK_FLOW, TRUNK), "INVITE"
        )
        self.assertEqual(flow.connection_id, 11)
        self.assertEqual(str(request.uri), "sip:alice@10.1.1.1:5061;transport=tls")

    def test_sips_aor_with_a_sip_contact_refused_without_the_flag(self) -> None:
        net = PhoneNet(sip_over_tls=False)
        request = register("sip:alice@10.1.1.1:5061;transport=tls", aor="sips:alice@lab.test")
        _, refusal = net.only(net.feed(request, PHONE_TLS, PHONES), "400")
        self.assertEqual(refusal.status, 400)

    def test_request_uri_is_kept_even_with_another_transport(self) -> None:
        """baresip dials sip:bob@far.test;transport=tls; the trunk is UDP. The Request-URI
        is passed unchanged: a phone's digest answer to the PBX covers it (RFC 2617
        §3.2.2.5), so changing it would break delegated authentication."""
        net = PhoneNet()
        call = invite(
            "sip:bob@far.test;transport=tls", contact="sip:alice@10.1.1.1:5061;transport=tls"
        )
        flow, out = net.only(net.feed(call, PHONE_TLS, PHONES), "INVITE")
        self.assertEqual(flow.transport, "UDP")
        self.assertEqual(str(out.uri), "sip:bob@far.test;transport=tls")

    def test_phone_calls_out_and_gets_a_sip_contact_back(self) -> None:
        """baresip's sip: call: the SBC's Contact in the 200 must be sip:...;transport=tls."""
        net = PhoneNet(sip_over_tls=False)  # the contact scheme rule holds with or without it
        call = invite("sip:bob@far.test", contact="sip:alice@10.1.1.1:5061;transport=tls")
        flow, out = net.only(net.feed(call, PHONE_TLS, PHONES), "INVITE")
        self.assertEqual(flow.remote, TRUNK_FLOW.remote)
        sent = net.feed(answer(out, 200, contact="sip:bob@10.0.0.5", body=SDP), TRUNK_FLOW, TRUNK)
        flow, ok = net.only(sent, "200")
        self.assertEqual(flow.connection_id, 11)
        [contact] = ok.contacts
        self.assertEqual(contact.uri.scheme, "sip")
        self.assertEqual(contact.uri.param("transport"), "tls")
