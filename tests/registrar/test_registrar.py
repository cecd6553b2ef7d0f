"""The registrar, driven through SipStack + SbcCore with virtual time."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sbc.adjacencies import InboundContext
from sbc.interfaces import ILocationService
from sbc.registrar import Binding, LocationService, aor_key
from sbc.sip import parse_message
from sbc.sip.message import Request, Response
from sbc.sip.stack import Flow
from sbc.sip.uri import parse_uri
from tests.b2bua.test_call import A_FLOW, ACCESS, SDP, TRUSTED, Net, answer, invite

PHONE_FLOW = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.3", 5070))


def register(
    aor: str = "sip:bob@example.com",
    contact: str | None = "<sip:bob@127.0.0.3:5070>",
    expires: int | None = None,
    call_id: str = "reg-1",
    cseq: int = 1,
    branch: str = "z9hG4bKr1",
) -> Request:
    data = (
        "REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.3:5070;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{aor}>;tag=rf\r\n"
        f"To: <{aor}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        + (f"Contact: {contact}\r\n" if contact else "")
        + (f"Expires: {expires}\r\n" if expires is not None else "")
        + "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


class RegistrarTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()

    def send(self, request: Request, context: InboundContext = TRUSTED) -> Response:
        sent = self.net.feed(request, PHONE_FLOW, context)
        [(flow, response)] = self.net.responses(sent)
        self.assertEqual(flow, PHONE_FLOW)
        return response

    def bindings(self) -> list[Binding]:
        return self.net.core.registrar.lookup("bob@example.com", self.net.now)

    def test_register_refresh_and_expire(self) -> None:
        ok = self.send(register(expires=60))
        self.assertEqual(ok.status, 200)
        [contact] = ok.contacts
        self.assertEqual((contact.uri.serialize(), contact.expires), ("sip:bob@127.0.0.3:5070", 60))
        [binding] = self.bindings()
        self.assertEqual((binding.adjacency, binding.flow), ("trusted", PHONE_FLOW))
        self.net.tick(50.0)
        ok = self.send(register(expires=60, cseq=2, branch="z9hG4bKr2"))
        self.assertEqual(ok.contacts[0].expires, 60)
        self.net.tick(100.0)
        self.assertEqual(len(self.bindings()), 1)  # refreshed at 50: lives until 110
        self.net.tick(110.0)
        self.assertEqual(self.bindings(), [])
        self.assertEqual(len(self.net.core.registrar.location), 0)

    def test_expires_zero_and_star_remove(self) -> None:
        self.send(register(contact="<sip:bob@127.0.0.3:5070>, <sip:bob@127.0.0.3:5072>"))
        self.assertEqual(len(self.bindings()), 2)
        ok = self.send(
            register(contact="<sip:bob@127.0.0.3:5072>;expires=0", cseq=2, branch="z9hG4bKr2")
        )
        self.assertEqual([c.uri.port for c in ok.contacts], [5070])
        ok = self.send(register(contact="*", expires=0, cseq=3, branch="z9hG4bKr3"))
        self.assertEqual((ok.status, ok.contacts), (200, []))
        self.assertEqual(self.bindings(), [])

    def test_star_needs_expires_zero(self) -> None:
        response = self.send(register(contact="*", expires=60))
        self.assertEqual(response.status, 400)

    def test_query_without_contact_lists_bindings(self) -> None:
        self.send(register())
        ok = self.send(register(contact=None, cseq=2, branch="z9hG4bKq"))
        self.assertEqual([c.uri.serialize() for c in ok.contacts], ["sip:bob@127.0.0.3:5070"])

    def test_sips_aor_with_sip_contact_gets_400_and_changes_nothing(self) -> None:
        self.send(register("sips:bob@example.com", "<sips:bob@127.0.0.3:5071>"))
        response = self.send(
            register("sips:bob@example.com", "<sip:bob@127.0.0.3:5070>", cseq=2, branch="z9hG4bK2")
        )
        self.assertEqual(response.status, 400)
        self.assertEqual([b.contact.scheme for b in self.bindings()], ["sips"])

    def test_sips_aor_from_untrusted_gets_403_380(self) -> None:
        response = self.send(register("sips:bob@example.com", "<sips:bob@127.0.0.3:5071>"), ACCESS)
        self.assertEqual(response.status, 403)
        self.assertEqual([w.code for w in response.warnings], [380])
        self.assertEqual(self.bindings(), [])

    def test_untrusted_register_cannot_see_or_remove_trusted_bindings(self) -> None:
        """sip: and sips: forms share the bindings; trust decides who may touch which."""
        ok = self.send(register("sips:bob@example.com", "<sips:bob@127.0.0.9:5061>"))
        self.assertEqual([c.uri.serialize() for c in ok.contacts], ["sips:bob@127.0.0.9:5061"])
        # from an untrusted adjacency: a query lists nothing, an add lists only its own
        query = self.send(register(contact=None, call_id="evil", branch="z9hG4bKe1"), ACCESS)
        self.assertEqual((query.status, query.contacts), (200, []))
        added = self.send(register(call_id="evil", cseq=2, branch="z9hG4bKe2"), ACCESS)
        self.assertEqual([c.uri.serialize() for c in added.contacts], ["sip:bob@127.0.0.3:5070"])
        # a wildcard removal from it removes only what untrusted adjacencies registered
        wiped = self.send(
            register(contact="*", expires=0, call_id="evil", cseq=3, branch="z9hG4bKe3"), ACCESS
        )
        self.assertEqual((wiped.status, wiped.contacts), (200, []))
        [left] = self.bindings()
        self.assertEqual(
            (left.contact.serialize(), left.trusted), ("sips:bob@127.0.0.9:5061", True)
        )
        # a trusted REGISTER sees and manages everything
        self.send(register(call_id="evil", cseq=4, branch="z9hG4bKe4"), ACCESS)
        both = self.send(register(contact=None, call_id="t2", branch="z9hG4bKt2"))
        self.assertEqual(len(both.contacts), 2)
        self.send(register(contact="*", expires=0, call_id="t2", cseq=2, branch="z9hG4bKt3"))
        self.assertEqual(self.bindings(), [])

    def test_out_of_order_refresh_gets_500(self) -> None:
        self.send(register(cseq=5))
        response = self.send(register(cseq=4, branch="z9hG4bKold"))
        self.assertEqual(response.status, 500)

    def test_call_to_registered_aor_uses_its_flow(self) -> None:
        self.send(register(expires=3600))
        sent = self.net.feed(invite("sip:bob@example.com"), A_FLOW, ACCESS)
        [(flow, b_invite)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, PHONE_FLOW)
        self.assertEqual(b_invite.uri_text, "sip:bob@127.0.0.3:5070")
        self.assertEqual(b_invite.top_via.port, 5060)
        self.assertNotIn(b"127.0.0.2", b_invite.serialize())
        sent = self.net.feed(
            answer(b_invite, 200, contact="sip:bob@127.0.0.3:5070", body=SDP), PHONE_FLOW, TRUSTED
        )
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual((flow, ok.status), (A_FLOW, 200))

    def test_call_to_unregistered_aor_gets_480(self) -> None:
        sent = self.net.feed(invite("sip:nobody@example.com"), A_FLOW, ACCESS)
        self.assertEqual([m.status for _, m in self.net.responses(sent) if m.status >= 200], [480])
        self.assertEqual(self.net.core.calls.calls, {})


class LocationServiceTests(SynchronousTestCase):
    def binding(self, uri: str, expires_at: float, q: float | None = None) -> Binding:
        return Binding("bob@example.com", parse_uri(uri), expires_at, "a", PHONE_FLOW, "c", 1, q)

    def test_lookup_orders_by_q_and_drops_expired(self) -> None:
        store = LocationService()
        store.update(
            "bob@example.com",
            [self.binding("sip:a@h", 10.0, 0.1), self.binding("sip:b@h", 20.0, 0.9)],
            0.0,
        )
        self.assertEqual([b.contact.user for b in store.lookup("bob@example.com", 0.0)], ["b", "a"])
        self.assertEqual(store.next_expiry(), 10.0)
        self.assertEqual([b.contact.user for b in store.lookup("bob@example.com", 10.0)], ["b"])
        # a lookup only hides expired bindings; expire()/purge() removes and reports them
        self.assertEqual(store.purge(20.0), 2)
        self.assertEqual(len(store), 0)

    def test_expire_reports_each_binding_once_and_skips_refreshed_ones(self) -> None:
        store = LocationService()
        a, b = self.binding("sip:a@h", 10.0), self.binding("sip:b@h", 20.0)
        store.update("bob@example.com", [a, b], 0.0)
        refreshed = self.binding("sip:a@h", 30.0)
        store.update("bob@example.com", [refreshed, b], 5.0)
        # a's old expiry (10) is stale: next_expiry skips it
        self.assertEqual(store.next_expiry(), 20.0)
        self.assertEqual(store.expire(15.0), [])
        self.assertEqual(store.expire(20.0), [b])
        self.assertEqual(store.next_expiry(), 30.0)
        self.assertEqual(store.expire(40.0), [refreshed])
        self.assertEqual(store.expire(50.0), [])
        self.assertIsNone(store.next_expiry())
        self.assertEqual(len(store), 0)

    def test_remove_connection(self) -> None:
        tls = Flow("TLS", ("127.0.0.1", 5061), ("127.0.0.3", 40000), 7, pinned=True)
        other = Flow("TLS", ("127.0.0.1", 5061), ("127.0.0.3", 40001), 8, pinned=True)
        store = LocationService()
        on_7 = Binding(
            "bob@example.com", parse_uri("sip:bob@p;transport=tls"), 99.0, "a", tls, "c", 1
        )
        on_8 = Binding(
            "bob@example.com", parse_uri("sip:bob@q;transport=tls"), 99.0, "a", other, "d", 1
        )
        alice = Binding(
            "alice@example.com", parse_uri("sip:al@p;transport=tls"), 99.0, "a", tls, "e", 1
        )
        store.update("bob@example.com", [on_7, on_8], 0.0)
        store.update("alice@example.com", [alice], 0.0)
        self.assertEqual(
            sorted(b.aor for b in store.remove_connection(7, 1.0)),
            ["alice@example.com", "bob@example.com"],
        )
        self.assertEqual(store.lookup("bob@example.com", 1.0), [on_8])
        self.assertEqual(store.lookup("alice@example.com", 1.0), [])
        self.assertEqual(store.remove_connection(7, 2.0), [])
        self.assertEqual(store.remove_connection(8, 2.0), [on_8])
        self.assertEqual(len(store), 0)

    def test_aor_key_ignores_scheme_and_host_case(self) -> None:
        self.assertEqual(aor_key(parse_uri("sips:bob@EXAMPLE.com")), "bob@example.com")
        self.assertEqual(aor_key(parse_uri("sip:bob@example.com;transport=tcp")), "bob@example.com")

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ILocationService, LocationService()))

    def test_remaining(self) -> None:
        self.assertEqual(self.binding("sip:a@h", 60.0).remaining(30.2), 30)
        self.assertEqual(self.binding("sip:a@h", 60.0).remaining(90.0), 0)
