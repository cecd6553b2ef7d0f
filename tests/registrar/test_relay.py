"""Registration relay through SbcCore + SipStack (docs/phones.md, access SBC).

A phone on a TLS adjacency with ``authentication delegated`` registers
``sip:alice@core.test``; the registrar behind the ``core`` adjacency
(10.0.0.5) challenges and answers. Bytes in, Transmit out, virtual time.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable, InboundContext, ListenerKey
from sbc.config import parse_config
from sbc.core import SbcCore
from sbc.registrar.relay import TOKEN_PREFIX
from sbc.routing import Router
from sbc.sip import parse_message
from sbc.sip.locate import Destination, Resolution
from sbc.sip.message import Request, Response, response_to
from sbc.sip.stack import Flow, Resolve, SipStack, StackOutput, Transmit
from tests.b2bua.test_call import invite

CONFIG = """
sbc t
 sbe
  adjacency sip phones
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   security trusted-encrypted
   client-certificate optional
   authentication delegated
   sip-over-tls
   attach
  adjacency sip core
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   signaling-peer 10.0.0.5
   security trusted-unencrypted
   attach
  call-policy-set 1
   first-call-routing-table by-source
   rtg-src-adjacency-table by-source
    entry 1
     match-adjacency phones
     dst-adjacency core
     action complete
  active-call-policy-set 1
"""

PHONE = Flow("TLS", ("127.0.0.1", 5061), ("192.0.2.50", 40123), 11)
PHONES = InboundContext("phones", ListenerKey("127.0.0.1", 5061, "TLS"))
CORE_FLOW = Flow("UDP", ("127.0.0.1", 5062), ("10.0.0.5", 5060))
CORE = InboundContext("core", ListenerKey("127.0.0.1", 5062, "UDP"))
PHONE_CONTACT = '<sip:alice@10.1.1.1:5061;transport=tls>;+sip.instance="<urn:uuid:0001>";reg-id=1'
CHALLENGE = 'Digest realm="core.test", nonce="abc", algorithm=MD5, qop="auth"'


def register(
    cseq: int = 1,
    expires: int = 600,
    authorization: str | None = None,
    contact: str = PHONE_CONTACT,
    call_id: str = "phone-reg-1",
) -> Request:
    data = (
        "REGISTER sip:core.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 10.1.1.1:5061;branch=z9hG4bKp{cseq}{call_id};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@core.test>;tag=ph1\r\n"
        "To: <sip:alice@core.test>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: {contact}\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + f"Expires: {expires}\r\n"
        "User-Agent: baresip\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


class RelayNet:
    def __init__(self, refresh_min: float = 0.0) -> None:
        config = parse_config(CONFIG)
        table = AdjacencyTable(config.adjacencies)
        self.core = SbcCore(
            lambda: table,
            Router.from_config(config).route,
            register_refresh_min=lambda: refresh_min,
        )
        self.stack = SipStack(self.core)
        self.core.stack = self.stack
        self.now = 0.0

    def feed(
        self, message: Request | Response, flow: Flow, context: InboundContext | None = None
    ) -> list[tuple[Flow, Request | Response]]:
        outputs = self.stack.receive(message.serialize(), flow, self.now, context)
        return self.collect(outputs)

    @staticmethod
    def collect(outputs: list[StackOutput]) -> list[tuple[Flow, Request | Response]]:
        return [(o.flow, parse_message(o.data)) for o in outputs if isinstance(o, Transmit)]

    def tick(self, until: float) -> list[tuple[Flow, Request | Response]]:
        out: list[StackOutput] = []
        while True:
            due = [d for d in (self.stack.next_deadline(), self.core.next_deadline()) if d]
            if not due or min(due) > until:
                break
            self.now = max(self.now, min(due))
            out += self.stack.advance(self.now) + self.core.advance(self.now)
        self.now = until
        return self.collect(out)

    @staticmethod
    def one(sent: list[tuple[Flow, Any]], kind: str) -> tuple[Flow, Any]:
        found = [
            (f, m)
            for f, m in sent
            if (isinstance(m, Request) and m.method == kind)
            or (isinstance(m, Response) and str(m.status) == kind)
        ]
        assert len(found) == 1, f"expected one {kind} in {sent}"
        return found[0]

    def counter(self, adjacency: str, name: str) -> int:
        return self.core.calls.counters.snapshot().get(adjacency, {}).get(name, 0)

    def retry_near_the_grace_end(self) -> tuple[Request, Request]:
        """A REGISTER challenged at 0 s, its retry at 299 s (the session's grace ends at 300 s).

        Returns the two REGISTERs relayed; the retry waits for the registrar.
        """
        _, first = self.one(self.feed(register(), PHONE, PHONES), "REGISTER")
        challenge = response_to(first, 401)
        challenge.headers.add("WWW-Authenticate", CHALLENGE)
        self.feed(challenge, CORE_FLOW, CORE)
        self.tick(299.0)
        retry = register(2, authorization='Digest username="alice", realm="core.test"')
        _, second = self.one(self.feed(retry, PHONE, PHONES), "REGISTER")
        return first, second

    def registered(self, expires: int = 300, refresh_min: bool = False) -> tuple[Request, str]:
        """Register alice: 401 from the registrar, retry, 200. Returns (relayed, token)."""
        _, first = self.one(self.feed(register(), PHONE, PHONES), "REGISTER")
        challenge = response_to(first, 401)
        challenge.headers.add("WWW-Authenticate", CHALLENGE)
        self.feed(challenge, CORE_FLOW, CORE)
        retry = register(2, authorization='Digest username="alice", realm="core.test"')
        _, relayed = self.one(self.feed(retry, PHONE, PHONES), "REGISTER")
        [contact] = relayed.contacts
        token = contact.uri.user
        ok = response_to(relayed, 200)
        ok.headers.add("Contact", f"<{contact.uri.serialize()}>;expires={expires}")
        self.one(self.feed(ok, CORE_FLOW, CORE), "200")
        return relayed, token


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = RelayNet()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_contact_replaced_by_a_token_on_the_outbound_address(self) -> None:
        flow, relayed = self.net.one(self.net.feed(register(), PHONE, PHONES), "REGISTER")
        self.assertEqual(flow.remote, ("10.0.0.5", 5060))
        self.assertEqual(str(relayed.uri), "sip:core.test")
        self.assertEqual(str(relayed.to.uri), "sip:alice@core.test")
        self.assertNotEqual(relayed.call_id, "phone-reg-1")
        [contact] = relayed.contacts
        self.assertTrue(contact.uri.user.startswith(TOKEN_PREFIX))
        self.assertEqual((contact.uri.host, contact.uri.port), ("127.0.0.1", 5062))
        params = dict(contact.params)
        self.assertEqual(params.get("+sip.instance"), '"<urn:uuid:0001>"')
        self.assertEqual(params.get("reg-id"), "1")
        self.assertEqual(contact.expires, 600)
        self.assertEqual(relayed.headers.get("User-Agent"), "baresip")
        self.assertNotIn("10.1.1.1", relayed.serialize().decode())

    def test_challenge_relayed_unchanged_and_retry_on_the_same_outbound_call_id(self) -> None:
        _, first = self.net.one(self.net.feed(register(), PHONE, PHONES), "REGISTER")
        challenge = response_to(first, 401)
        challenge.headers.add("WWW-Authenticate", CHALLENGE)
        flow, relayed_challenge = self.net.one(self.net.feed(challenge, CORE_FLOW, CORE), "401")
        self.assertEqual(flow.connection_id, 11)
        self.assertEqual(relayed_challenge.headers.get("WWW-Authenticate"), CHALLENGE)
        self.assertEqual(relayed_challenge.call_id, "phone-reg-1")
        self.assertEqual(self.net.core.relay.bindings(), [])
        credentials = 'Digest username="alice", realm="core.test", nonce="abc", response="x"'
        _, retry = self.net.one(
            self.net.feed(register(2, authorization=credentials), PHONE, PHONES), "REGISTER"
        )
        self.assertEqual(retry.call_id, first.call_id)
        self.assertEqual(retry.from_.tag, first.from_.tag)
        self.assertEqual(retry.cseq.seq, first.cseq.seq + 1)
        self.assertEqual(retry.headers.get("Authorization"), credentials)
        self.assertEqual(retry.contacts[0].uri.user, first.contacts[0].uri.user)

    def test_phone_answered_with_its_own_contact_and_the_granted_expiry(self) -> None:
        _, first = self.net.one(self.net.feed(register(), PHONE, PHONES), "REGISTER")
        token_uri = first.contacts[0].uri.serialize()
        ok = response_to(first, 200)
        ok.headers.add("Contact", f"<{token_uri}>;expires=300")
        ok.headers.add("Contact", "<sip:alice@198.51.100.9:5060>;expires=100")  # another device
        flow, answer = self.net.one(self.net.feed(ok, CORE_FLOW, CORE), "200")
        self.assertEqual(flow.connection_id, 11)
        [contact] = answer.contacts
        self.assertEqual(contact.uri.serialize(), "sip:alice@10.1.1.1:5061;transport=tls")
        self.assertEqual(contact.expires, 300)
        [binding] = self.net.core.relay.bindings()
        self.assertEqual(binding.outbound, "core")
        self.assertIn("registration.added", [e.get("event") for e in self.events])

    def test_call_for_the_token_reaches_the_phone_over_its_connection(self) -> None:
        _, token = self.net.registered()
        call = invite(f"sip:{token}@127.0.0.1:5062", via_host="10.0.0.5")
        flow, delivered = self.net.one(self.net.feed(call, CORE_FLOW, CORE), "INVITE")
        self.assertEqual(flow.connection_id, 11)
        self.assertTrue(flow.pinned)
        self.assertEqual(str(delivered.uri), "sip:alice@10.1.1.1:5061;transport=tls")

    def test_unknown_token_or_wrong_adjacency_gets_404(self) -> None:
        _, token = self.net.registered()
        call = invite(f"sip:{TOKEN_PREFIX}nope@127.0.0.1:5062")
        _, refusal = self.net.one(self.net.feed(call, CORE_FLOW, CORE), "404")
        self.assertEqual(refusal.status, 404)
        call = invite(f"sip:{token}@127.0.0.1:5062", call_id="x2", contact="sip:a@10.1.1.1")
        _, refusal = self.net.one(self.net.feed(call, PHONE, PHONES), "404")
        self.assertEqual(refusal.status, 404)

    def test_unregister_ends_the_token(self) -> None:
        _, token = self.net.registered()
        _, relayed = self.net.one(self.net.feed(register(3, expires=0), PHONE, PHONES), "REGISTER")
        self.assertEqual(relayed.contacts[0].expires, 0)
        self.net.one(self.net.feed(response_to(relayed, 200), CORE_FLOW, CORE), "200")
        self.assertEqual(self.net.core.relay.bindings(), [])
        call = invite(f"sip:{token}@127.0.0.1:5062", call_id="after")
        self.net.one(self.net.feed(call, CORE_FLOW, CORE), "404")
        removed = [e for e in self.events if e.get("event") == "registration.removed"]
        self.assertEqual(removed[-1]["reason"], "unregistered (expires 0)")

    def test_refused_register_leaves_nothing(self) -> None:
        _, first = self.net.one(self.net.feed(register(), PHONE, PHONES), "REGISTER")
        _, answer = self.net.one(
            self.net.feed(response_to(first, 403, "Forbidden"), CORE_FLOW, CORE), "403"
        )
        self.assertEqual(answer.status, 403)
        self.assertEqual(self.net.core.relay.bindings(), [])
        self.assertEqual(self.net.core.relay.sessions, {})
        self.assertEqual(self.net.core.relay.pending, {})

    def test_interval_too_brief_keeps_the_outbound_call_id(self) -> None:
        """423: the phone's retry with a longer expiry leaves on the same outbound dialog.

        Seen with Kamailio (``min_expires_mode 1``, nonces tied to the
        Call-ID and From tag): a retry on a new Call-ID had its credentials
        refused with a fresh 401, one more round trip for every phone.
        """
        _, first = self.net.one(self.net.feed(register(expires=60), PHONE, PHONES), "REGISTER")
        too_brief = response_to(first, 423, "Interval Too Brief")
        too_brief.headers.add("Min-Expires", "120")
        _, answer = self.net.one(self.net.feed(too_brief, CORE_FLOW, CORE), "423")
        self.assertEqual(answer.headers.get("Min-Expires"), "120")
        self.assertEqual(self.net.core.relay.bindings(), [])
        _, retry = self.net.one(self.net.feed(register(2, expires=120), PHONE, PHONES), "REGISTER")
        self.assertEqual(retry.call_id, first.call_id)
        self.assertEqual(retry.from_.tag, first.from_.tag)
        self.assertEqual(retry.cseq.seq, first.cseq.seq + 1)
        self.assertEqual(retry.contacts[0].uri.user, first.contacts[0].uri.user)
        self.assertEqual(retry.contacts[0].expires, 120)

    def test_a_session_left_by_423_is_forgotten_later(self) -> None:
        """A phone that gives up after a 423 leaves no session behind for long."""
        _, first = self.net.one(self.net.feed(register(expires=60), PHONE, PHONES), "REGISTER")
        self.net.feed(response_to(first, 423, "Interval Too Brief"), CORE_FLOW, CORE)
        self.assertEqual(len(self.net.core.relay.sessions), 1)
        self.net.tick(301.0)
        self.assertEqual(self.net.core.relay.sessions, {})

    def test_connection_close_and_expiry_end_the_binding(self) -> None:
        self.net.registered()
        self.net.core.connection_closed(11, 1.0)
        self.assertEqual(self.net.core.relay.bindings(), [])
        other = RelayNet()
        other.registered(expires=300)
        self.assertEqual(other.core.next_deadline(), 300.0)
        other.tick(301.0)
        self.assertEqual(other.core.relay.bindings(), [])

    def test_a_refresh_moves_the_deadline(self) -> None:
        net = RelayNet()
        net.registered(expires=300)
        self.assertEqual(net.core.next_deadline(), 300.0)
        net.now = 100.0
        _, relayed = net.one(net.feed(register(3), PHONE, PHONES), "REGISTER")
        ok = response_to(relayed, 200)
        ok.headers.add("Contact", f"<{relayed.contacts[0].uri.serialize()}>;expires=300")
        net.one(net.feed(ok, CORE_FLOW, CORE), "200")
        self.assertEqual(net.core.next_deadline(), 400.0)
        net.tick(399.0)
        self.assertEqual(len(net.core.relay.bindings()), 1)
        net.tick(401.0)
        self.assertEqual(net.core.relay.bindings(), [])
        self.assertIsNone(net.core.next_deadline())

    def test_a_refresh_over_a_new_connection_moves_the_binding_to_it(self) -> None:
        """Closing the connection the phone left ends nothing; closing its new one does."""
        net = RelayNet()
        _, token = net.registered(expires=300)
        moved = Flow("TLS", PHONE.local, ("192.0.2.50", 40999), 12)
        _, relayed = net.one(net.feed(register(3), moved, PHONES), "REGISTER")
        ok = response_to(relayed, 200)
        ok.headers.add("Contact", f"<{relayed.contacts[0].uri.serialize()}>;expires=300")
        net.one(net.feed(ok, CORE_FLOW, CORE), "200")
        net.core.connection_closed(11, 2.0)
        [binding] = net.core.relay.bindings()
        self.assertEqual((binding.token, binding.flow.connection_id), (token, 12))
        net.core.connection_closed(12, 3.0)
        self.assertEqual(net.core.relay.bindings(), [])
        self.assertEqual(net.core.relay._by_connection, {})  # nothing left behind

    def test_a_session_is_forgotten_only_after_its_last_register_ended(self) -> None:
        """Its forget time comes while a REGISTER of it waits for the registrar."""
        net = RelayNet()
        net.retry_near_the_grace_end()  # the registrar never answers the retry
        net.tick(330.0)
        self.assertEqual(len(net.core.relay.sessions), 1)
        sent = net.tick(340.0)
        self.assertEqual(net.one(sent, "408")[1].status, 408)
        self.assertEqual(net.core.relay.sessions, {})
        self.assertIsNone(net.core.next_deadline())

    def test_a_session_emptied_while_its_refresh_is_away_goes_when_the_refresh_fails(self) -> None:
        """The phone's connection closes while its refresh waits for the registrar."""
        net = RelayNet()
        net.registered(expires=300)
        net.now = 10.0
        net.one(net.feed(register(3), PHONE, PHONES), "REGISTER")
        net.core.connection_closed(11, 11.0)
        self.assertEqual(net.core.relay.bindings(), [])
        self.assertEqual(len(net.core.relay.sessions), 1)  # its refresh is still away
        net.tick(100.0)  # the refresh times out
        self.assertEqual(net.core.relay.sessions, {})
        self.assertIsNone(net.core.next_deadline())

    def test_a_challenge_after_the_grace_keeps_the_session_for_the_next_retry(self) -> None:
        """The retry of a challenged REGISTER is challenged again just after the grace ran out."""
        net = RelayNet()
        first, second = net.retry_near_the_grace_end()
        net.tick(302.0)
        again = response_to(second, 401)
        again.headers.add("WWW-Authenticate", CHALLENGE)
        net.one(net.feed(again, CORE_FLOW, CORE), "401")
        net.tick(400.0)
        retry = register(3, authorization='Digest username="alice", realm="core.test"')
        _, third = net.one(net.feed(retry, PHONE, PHONES), "REGISTER")
        self.assertEqual((third.call_id, third.from_.tag), (first.call_id, first.from_.tag))
        net.tick(700.0)  # the registrar never answers the third: 408, then the session goes
        self.assertEqual(net.core.relay.sessions, {})

    def test_registrar_timeout_gives_the_phone_408(self) -> None:
        self.net.one(self.net.feed(register(), PHONE, PHONES), "REGISTER")
        sent = self.net.tick(40.0)
        _, answer = self.net.one(sent, "408")
        self.assertEqual(answer.status, 408)
        self.assertEqual(self.net.core.relay.pending, {})

    def test_star_unregisters(self) -> None:
        self.net.registered()
        _, relayed = self.net.one(
            self.net.feed(register(3, expires=0, contact="*"), PHONE, PHONES), "REGISTER"
        )
        self.assertEqual([c.is_star for c in relayed.contacts], [True])
        self.net.one(self.net.feed(response_to(relayed, 200), CORE_FLOW, CORE), "200")
        self.assertEqual(self.net.core.relay.bindings(), [])


class ThrottleTests(SynchronousTestCase):
    def test_refreshes_within_the_window_are_answered_locally(self) -> None:
        net = RelayNet(refresh_min=300.0)
        _, first = net.one(net.feed(register(expires=60), PHONE, PHONES), "REGISTER")
        self.assertEqual(first.contacts[0].expires, 600)  # at least twice the window
        ok = response_to(first, 200)
        ok.headers.add("Contact", f"<{first.contacts[0].uri.serialize()}>;expires=600")
        _, answer = net.one(net.feed(ok, CORE_FLOW, CORE), "200")
        self.assertEqual(answer.contacts[0].expires, 60)  # what the phone asked for
        forwarded = 0
        for n in range(2, 12):  # ten refreshes, 30 s apart
            net.tick(net.now + 30.0)
            sent = net.feed(register(n, expires=60), PHONE, PHONES)
            if [m for _, m in sent if isinstance(m, Request)]:
                forwarded += 1
                [(_, relayed)] = [(f, m) for f, m in sent if isinstance(m, Request)]
                ok = response_to(relayed, 200)
                ok.headers.add("Contact", f"<{relayed.contacts[0].uri.serialize()}>;expires=600")
                net.feed(ok, CORE_FLOW, CORE)
            else:
                _, local = net.one(sent, "200")
                self.assertEqual(local.contacts[0].expires, 60)
        self.assertLessEqual(forwarded, 1)
        self.assertEqual(net.counter("phones", "register-answered-locally"), 10 - forwarded)

    def test_off_by_default(self) -> None:
        net = RelayNet()
        net.registered()
        sent = net.feed(register(3), PHONE, PHONES)
        net.one(sent, "REGISTER")


class DelegatedInviteTests(SynchronousTestCase):
    """A PBX's 407 reaches the phone; the retry leaves on the same outbound dialog."""

    def test_retry_reuses_the_outbound_call_id_and_from_tag(self) -> None:
        net = RelayNet()
        call = invite("sip:bob@core.test", contact="sip:alice@10.1.1.1:5061;transport=tls")
        _, first = net.one(net.feed(call, PHONE, PHONES), "INVITE")
        challenge = response_to(first, 407, to_tag="pbx1")
        challenge.headers.add("Proxy-Authenticate", CHALLENGE)
        flow, relayed = net.one(net.feed(challenge, CORE_FLOW, CORE), "407")
        self.assertEqual(flow.connection_id, 11)
        self.assertEqual(relayed.headers.get("Proxy-Authenticate"), CHALLENGE)
        credentials = 'Digest username="alice", realm="core.test", nonce="abc", response="r"'
        retry = invite(
            "sip:bob@core.test",
            cseq=2,
            branch="z9hG4bKa2",
            contact="sip:alice@10.1.1.1:5061;transport=tls",
        )
        retry.headers.add("Proxy-Authorization", credentials)
        _, second = net.one(net.feed(retry, PHONE, PHONES), "INVITE")
        self.assertEqual(second.call_id, first.call_id)
        self.assertEqual(second.from_.tag, first.from_.tag)
        self.assertEqual(second.cseq.seq, first.cseq.seq + 1)
        self.assertEqual(second.headers.get("Proxy-Authorization"), credentials)
        self.assertEqual(str(second.uri), "sip:bob@core.test")

    def test_an_unrelated_call_gets_a_new_dialog(self) -> None:
        net = RelayNet()
        _, first = net.one(net.feed(invite("sip:bob@core.test"), PHONE, PHONES), "INVITE")
        challenge = response_to(first, 407, to_tag="pbx1")
        net.feed(challenge, CORE_FLOW, CORE)
        other = invite("sip:bob@core.test", call_id="another", branch="z9hG4bKo")
        _, second = net.one(net.feed(other, PHONE, PHONES), "INVITE")
        self.assertNotEqual(second.call_id, first.call_id)


class RegistrarByDnsTests(SynchronousTestCase):
    """A registrar named by domain is found with RFC 3263 like any next hop."""

    def net(self) -> RelayNet:
        net = RelayNet()
        config = parse_config(
            CONFIG.replace("signaling-peer 10.0.0.5", "signaling-peer pbx.core.test")
        )
        table = AdjacencyTable(config.adjacencies)
        net.core = SbcCore(lambda: table, Router.from_config(config).route)
        net.stack = SipStack(net.core)
        net.core.stack = net.stack
        return net

    def test_register_waits_for_dns_then_goes_to_the_first_destination(self) -> None:
        net = self.net()
        outputs = net.stack.receive(register().serialize(), PHONE, 0.0, PHONES)
        [resolve] = [o for o in outputs if isinstance(o, Resolve)]
        self.assertEqual(resolve.hop.host, "pbx.core.test")
        self.assertEqual(resolve.adjacency, "core")
        found = Resolution(
            resolve.hop,
            (
                Destination("UDP", "10.0.0.7", 5070, "sip1.core.test"),
                Destination("UDP", "10.0.0.8", 5070, "sip2.core.test"),
            ),
        )
        sent = net.collect(resolve.reply(found, 0.1))
        flow, relayed = net.one(sent, "REGISTER")
        self.assertEqual(flow.remote, ("10.0.0.7", 5070))
        self.assertEqual(str(relayed.uri), "sip:core.test")

    def test_unknown_domain_gets_503(self) -> None:
        net = self.net()
        outputs = net.stack.receive(register().serialize(), PHONE, 0.0, PHONES)
        [resolve] = [o for o in outputs if isinstance(o, Resolve)]
        sent = net.collect(resolve.reply(Resolution(resolve.hop, error="NXDOMAIN"), 0.1))
        _, answer = net.one(sent, "503")
        self.assertEqual(answer.status, 503)
        self.assertEqual(net.core.relay.sessions, {})


class SessionCapTests(SynchronousTestCase):
    def test_new_sessions_over_the_cap_get_503(self) -> None:
        from sbc.registrar import relay

        self.patch(relay, "MAX_SESSIONS", 2)
        net = RelayNet()
        for n in range(2):
            net.one(net.feed(register(call_id=f"cap-{n}"), PHONE, PHONES), "REGISTER")
        _, refusal = net.one(net.feed(register(call_id="cap-2"), PHONE, PHONES), "503")
        self.assertEqual(refusal.headers.get("Retry-After"), "60")
        self.assertEqual(len(net.core.relay.sessions), 2)
