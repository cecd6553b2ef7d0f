"""The authentication step of SbcCore (docs/authentication.md, docs/security-model.md).

A real SipStack + SbcCore + DigestAuthenticator, fed bytes; the phones answer
challenges with :func:`tests.auth.support.answer`.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable, InboundContext, ListenerKey
from sbc.auth import DigestAuthenticator
from sbc.auth.digest import compute_ha1
from sbc.auth.userdb import parse_user_database
from sbc.config import parse_config
from sbc.core import SbcCore
from sbc.identity import PeerIdentities
from sbc.routing import Router
from sbc.routing.policies import DefaultPolicy
from sbc.sip import parse_message
from sbc.sip.message import Request, Response
from sbc.sip.stack import Flow, SipStack, Transmit
from tests.auth.support import SECRET, answer
from tests.b2bua.test_call import invite

CONFIG = """
sbc t
 sbe
  local-domain lab.test
  user-database users
  adjacency sip phones
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   security trusted-encrypted
   client-certificate optional
   {authentication}
   sip-over-tls
   attach
  adjacency sip trunk
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   signaling-peer 10.0.0.5
   security trusted-unencrypted
   attach
"""

PHONE = Flow("TLS", ("127.0.0.1", 5061), ("192.0.2.50", 40123), 11)
#: A phone without a client certificate.
ANONYMOUS = InboundContext("phones", ListenerKey("127.0.0.1", 5061, "TLS"))
#: A peer whose certificate vouches for lab.test.
CERTIFIED = InboundContext(
    "phones", ListenerKey("127.0.0.1", 5061, "TLS"), PeerIdentities(sip_domains=("lab.test",))
)
TRUNK = Flow("UDP", ("127.0.0.1", 5062), ("10.0.0.5", 5060))
TRUNK_CONTEXT = InboundContext("trunk", ListenerKey("127.0.0.1", 5062, "UDP"))


def user_line(user: str, realm: str, password: str) -> str:
    md5 = compute_ha1("MD5", user, realm, password)
    return f"{user}:{realm}:{md5}:{compute_ha1('SHA-256', user, realm, password)}"


def register(cseq: int = 1, authorization: str | None = None, aor: str = "alice") -> Request:
    data = (
        "REGISTER sip:lab.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 10.1.1.1:5061;branch=z9hG4bKreg{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{aor}@lab.test>;tag=r1\r\n"
        f"To: <sip:{aor}@lab.test>\r\n"
        "Call-ID: reg-alice\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        "Contact: <sip:alice@10.1.1.1:5061;transport=tls>\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + "Expires: 600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


class AuthNet:
    def __init__(self, authentication: str = "authentication digest") -> None:
        config = parse_config(CONFIG.format(authentication=authentication))
        self.config = config
        table = AdjacencyTable(config.adjacencies)
        users = parse_user_database(
            "users",
            "\n".join(
                [user_line("alice", "lab.test", "secret"), user_line("bob", "lab.test", "pw")]
            ).encode(),
        )
        self.authenticator = DigestAuthenticator(SECRET, lambda: users)
        self.core = SbcCore(
            lambda: table,
            Router(None, DefaultPolicy()).route,
            ("lab.test",),
            authenticator=self.authenticator,
        )
        self.stack = SipStack(self.core)
        self.core.stack = self.stack
        self.failed_sources: list[str] = []
        self.failed_adjacencies: list[str] = []
        self.core.on_auth_failure = self.auth_failed

    def auth_failed(self, source: str, adjacency: str, now: float) -> None:
        self.failed_sources.append(source)
        self.failed_adjacencies.append(adjacency)

    def feed(
        self, request: Request, flow: Flow = PHONE, context: InboundContext = ANONYMOUS
    ) -> list[tuple[Flow, Request | Response]]:
        outputs = self.stack.receive(request.serialize(), flow, 0.0, context)
        return [(o.flow, parse_message(o.data)) for o in outputs if isinstance(o, Transmit)]

    def final(self, sent: list[tuple[Flow, Request | Response]]) -> Response:
        finals = [m for _, m in sent if isinstance(m, Response) and m.status >= 200]
        assert len(finals) == 1, sent
        return finals[0]

    def counters(self, name: str = "phones") -> dict[str, int]:
        return dict(self.core.calls.counters.snapshot().get(name, {}))


class DigestStepTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_register_is_challenged_with_one_header_per_algorithm(self) -> None:
        net = AuthNet()
        challenge = net.final(net.feed(register()))
        self.assertEqual(challenge.status, 401)
        offers = challenge.headers.get_all("WWW-Authenticate")
        self.assertEqual(len(offers), 2)
        self.assertIn("algorithm=SHA-256", offers[0])
        self.assertIn("algorithm=MD5", offers[1])
        self.assertIn('realm="lab.test"', offers[0])
        self.assertEqual(net.counters().get("auth-challenges"), 1)
        self.assertIsNone(net.counters().get("auth-failures"))
        self.assertEqual(net.core.registrar.lookup("alice@lab.test", 0.0), [])

    def test_md5_only_adjacency(self) -> None:
        net = AuthNet("authentication digest\n   digest-algorithms md5")
        challenge = net.final(net.feed(register()))
        [offer] = challenge.headers.get_all("WWW-Authenticate")
        self.assertIn("algorithm=MD5", offer)

    def test_register_with_credentials_binds(self) -> None:
        net = AuthNet()
        challenge = net.final(net.feed(register()))
        offer = challenge.headers.get_all("WWW-Authenticate")[1]  # MD5, as baresip answers
        ok = net.final(net.feed(register(2, answer(offer))))
        self.assertEqual(ok.status, 200)
        [binding] = net.core.registrar.lookup("alice@lab.test", 0.0)
        self.assertEqual(binding.flow.connection_id, 11)

    def test_wrong_password_is_challenged_again_counted_and_logged_without_secrets(self) -> None:
        net = AuthNet()
        offer = net.final(net.feed(register())).headers.get_all("WWW-Authenticate")[0]
        again = net.final(net.feed(register(2, answer(offer, password="wrong"))))
        self.assertEqual(again.status, 401)
        self.assertEqual(net.counters().get("auth-failures"), 1)
        self.assertEqual(net.failed_sources, ["192.0.2.50"])
        self.assertEqual(net.failed_adjacencies, [ANONYMOUS.adjacency])
        self.assertEqual(net.core.registrar.lookup("alice@lab.test", 0.0), [])
        [failed] = [e for e in self.events if e.get("event") == "auth.failed"]
        self.assertEqual(failed["failure"], "wrong-response")
        self.assertEqual(failed["user"], "alice")
        self.assertEqual(failed["source"], "TLS 192.0.2.50:40123")
        text = repr(failed)
        self.assertNotIn("wrong", text.replace("wrong-response", ""))
        self.assertNotIn(compute_ha1("MD5", "alice", "lab.test", "secret"), text)

    def test_failures_are_all_counted_but_the_log_is_capped(self) -> None:
        net = AuthNet()
        offer = net.final(net.feed(register())).headers.get_all("WWW-Authenticate")[0]
        for cseq in range(2, 10):
            net.feed(register(cseq, answer(offer, password="wrong", nc=cseq)))
        self.assertEqual(net.counters().get("auth-failures"), 8)
        logged = [e for e in self.events if e.get("event") == "auth.failed"]
        self.assertEqual(len(logged), 5)

    def test_credentials_of_another_user_get_403(self) -> None:
        net = AuthNet()
        offer = net.final(net.feed(register())).headers.get_all("WWW-Authenticate")[0]
        refused = net.final(net.feed(register(2, answer(offer, user="bob", password="pw"))))
        self.assertEqual(refused.status, 403)

    def test_malformed_authorization_gets_400(self) -> None:
        net = AuthNet()
        refused = net.final(net.feed(register(1, 'Digest username="alice, realm=')))
        self.assertEqual(refused.status, 400)

    def test_invite_gets_407_and_relayed_without_our_credentials(self) -> None:
        net = AuthNet()
        call = invite("sip:bob@far.test", contact="sip:alice@10.1.1.1:5061;transport=tls")
        call.headers.set("From", "<sip:alice@lab.test>;tag=atag")
        challenge = net.final(net.feed(call))
        self.assertEqual(challenge.status, 407)
        offer = challenge.headers.get_all("Proxy-Authenticate")[0]
        retry = invite(
            "sip:bob@far.test",
            cseq=2,
            branch="z9hG4bKa2",
            contact="sip:alice@10.1.1.1:5061;transport=tls",
        )
        retry.headers.set("From", "<sip:alice@lab.test>;tag=atag")
        credentials = answer(offer, method="INVITE", uri="sip:bob@far.test")
        retry.headers.add("Proxy-Authorization", credentials)
        retry.headers.add("Proxy-Authorization", 'Digest username="x", realm="far.test"')
        sent = net.feed(retry)
        [(flow, relayed)] = [(f, m) for f, m in sent if isinstance(m, Request)]
        self.assertEqual(flow.remote, TRUNK.remote)
        # ours is gone, the far realm's stays for whoever asked for it
        self.assertEqual(
            relayed.headers.get_all("Proxy-Authorization"),
            ['Digest username="x", realm="far.test"'],
        )

    def test_matching_certificate_is_never_challenged(self) -> None:
        net = AuthNet()
        ok = net.final(net.feed(register(), context=CERTIFIED))
        self.assertEqual(ok.status, 200)
        self.assertIsNone(net.counters().get("auth-challenges"))

    def test_ack_cancel_and_in_dialog_requests_are_not_challenged(self) -> None:
        net = AuthNet()
        stray = invite("sip:bob@far.test", method="BYE", to_tag="t1", body=b"")
        self.assertEqual(net.final(net.feed(stray)).status, 481)  # not 407
        cancel = invite("sip:bob@far.test", method="CANCEL", body=b"")
        self.assertEqual(net.final(net.feed(cancel)).status, 481)
        self.assertIsNone(net.counters().get("auth-challenges"))


class NoAuthenticationTests(SynchronousTestCase):
    """client-certificate optional without authentication: 403, never trusted unauthenticated."""

    def test_register_and_invite_refused(self) -> None:
        net = AuthNet(authentication="")
        refused = net.final(net.feed(register()))
        self.assertEqual(refused.status, 403)
        self.assertEqual(refused.reason, "Forbidden - authentication required")
        refused = net.final(net.feed(invite("sip:bob@far.test")))
        self.assertEqual(refused.status, 403)
        self.assertEqual(net.counters().get("calls-refused:unauthenticated"), 2)

    def test_a_certificate_still_admits(self) -> None:
        net = AuthNet(authentication="")
        self.assertEqual(net.final(net.feed(register(), context=CERTIFIED)).status, 200)

    def test_delegated_passes_calls_but_not_local_registrations(self) -> None:
        net = AuthNet(authentication="authentication delegated")
        sent = net.feed(invite("sip:bob@far.test"))
        self.assertEqual([m.method for _, m in sent if isinstance(m, Request)], ["INVITE"])
        # the SBC is the registrar for lab.test: nobody behind it could authenticate this
        self.assertEqual(net.final(net.feed(register())).status, 403)


class TightenedAdjacencyTests(SynchronousTestCase):
    """A connection accepted without a certificate outlives a commit back to ``required``."""

    def test_anonymous_connection_refused_once_authentication_is_gone(self) -> None:
        config = parse_config(
            CONFIG.format(authentication="").replace("   client-certificate optional\n", "")
        )
        table = AdjacencyTable(config.adjacencies)
        core = SbcCore(lambda: table, Router(None, DefaultPolicy()).route, ("lab.test",))
        stack = SipStack(core)
        core.stack = stack
        outputs = stack.receive(invite("sip:bob@far.test").serialize(), PHONE, 0.0, ANONYMOUS)
        finals = [parse_message(o.data) for o in outputs if isinstance(o, Transmit)]
        statuses = [m.status for m in finals if isinstance(m, Response) and m.status >= 200]
        self.assertEqual(statuses, [403])
        # a peer with a certificate on the same adjacency is routed as before
        outputs = stack.receive(
            invite("sip:bob@far.test", call_id="c2", branch="z9hG4bKc2").serialize(),
            PHONE,
            0.0,
            CERTIFIED,
        )
        methods = [
            m.method
            for m in (parse_message(o.data) for o in outputs if isinstance(o, Transmit))
            if isinstance(m, Request)
        ]
        self.assertEqual(methods, ["INVITE"])
