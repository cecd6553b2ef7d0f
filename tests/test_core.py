"""SbcCore, the transaction user: local answers, TLS From check, admission, filter."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from sbc import security
from sbc.adjacencies import AdjacencyTable, InboundContext, ListenerKey
from sbc.config import parse_config
from sbc.core import SbcCore
from sbc.identity import PeerIdentities
from sbc.routing import Destination, RouteKey, RoutingDecision
from sbc.sip import parse_message
from sbc.sip.locate import Destination as Place
from sbc.sip.locate import NextHop, Resolution
from sbc.sip.message import Request, Response
from sbc.sip.stack import Dropped, Flow, Resolve, SipStack, Transmit

CONFIG = """
sbc t
 sbe
  adjacency sip access
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   security untrusted
   attach
  adjacency sip tls
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   security trusted-encrypted
   attach
  adjacency sip plain-out
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   transport tcp
   security untrusted
   attach
"""

FLOW = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.2", 5070))
ACCESS = InboundContext("access", ListenerKey("127.0.0.1", 5060, "UDP"))
TLS_PEER = PeerIdentities(sip_domains=("lab.test",))
TLS = InboundContext("tls", ListenerKey("127.0.0.1", 5061, "TLS"), TLS_PEER)


def request(
    method: str = "OPTIONS",
    uri: str = "sip:127.0.0.1",
    from_host: str = "lab.test",
    max_forwards: int = 70,
) -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-core\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"From: <sip:alice@{from_host}>;tag=1\r\n"
        f"To: <{uri}>\r\n"
        "Call-ID: core-1\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class CoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        table = AdjacencyTable(parse_config(CONFIG).adjacencies)
        self.core = SbcCore(lambda: table)
        self.stack = SipStack(self.core)
        self.core.stack = self.stack

    def answer(self, data: bytes, context: InboundContext = ACCESS) -> Response | None:
        outputs = self.stack.receive(data, FLOW, 0.0, context)
        responses = [parse_message(o.data) for o in outputs if isinstance(o, Transmit)]
        finals = [r for r in responses if isinstance(r, Response) and r.status >= 200]
        return finals[-1] if finals else None

    def test_options_to_sbc_answered_200(self) -> None:
        response = self.answer(request())
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertIn("INVITE", response.headers.get("Allow") or "")
        self.assertIsNotNone(response.headers.get("Supported"))
        self.assertEqual(response.headers.get("Accept"), "application/sdp")

    def test_other_method_to_sbc_gets_405_with_allow(self) -> None:
        response = self.answer(request("INFO"))
        assert response is not None
        self.assertEqual(response.status, 405)
        self.assertIn("OPTIONS", response.headers.get("Allow") or "")

    def test_tls_peer_must_match_from_domain(self) -> None:
        outputs = self.stack.receive(request(from_host="evil.test"), FLOW, 0.0, TLS)
        self.assertEqual(outputs, [Dropped(FLOW, "tls-identity-mismatch", TLS)])
        response = self.answer(request(from_host="lab.test"), TLS)
        assert response is not None
        self.assertEqual(response.status, 200)

    def test_in_dialog_requests_are_not_held_to_the_from_domain(self) -> None:
        """A callee's BYE carries the callee's From, not its TLS peer's domain: 481, not dropped."""
        bye = request("BYE", from_host="remote.test").replace(
            b"To: <sip:127.0.0.1>", b"To: <sip:127.0.0.1>;tag=dialog"
        )
        response = self.answer(bye, TLS)
        assert response is not None
        self.assertEqual(response.status, 481)  # no such dialog here; over TLS, still answered

    def test_sips_from_untrusted_gets_403_380(self) -> None:
        response = self.answer(request("INVITE", "sips:bob@lab.test"))
        assert response is not None
        self.assertEqual(response.status, 403)
        [warning] = response.warnings
        self.assertEqual((warning.code, warning.text), (380, "SIPS Not Allowed"))

    def test_secure_call_without_secure_route_gets_480_380(self) -> None:
        """From the TLS adjacency, the only other candidates are untrusted: 480 + 380."""
        response = self.answer(request("INVITE", "sips:bob@lab.test"), TLS)
        assert response is not None
        self.assertEqual(response.status, 480)
        self.assertEqual([w.code for w in response.warnings], [380])

    def test_request_on_a_draining_connection_gets_503(self) -> None:
        """A connection of a just-detached adjacency still delivers; new requests get 503."""
        gone = InboundContext("detached-one", ListenerKey("127.0.0.1", 5060, "TCP"))
        response = self.answer(request("INVITE", "sip:bob@lab.test"), gone)
        assert response is not None
        self.assertEqual(response.status, 503)
        self.assertEqual(response.reason, "Service Unavailable - adjacency detached-one detached")

    def test_max_forwards_zero_gets_483(self) -> None:
        response = self.answer(request("INVITE", "sip:bob@lab.test", max_forwards=0))
        assert response is not None
        self.assertEqual(response.status, 483)

    def test_routable_call_is_relayed(self) -> None:
        """A call that passes every check leaves on a new leg (default routing).

        Its next hop is a domain: the core asks the edge to resolve it (a
        Resolve output) and sends once the answer comes back.
        """
        outputs = self.stack.receive(request("INVITE", "sip:bob@lab.test"), FLOW, 0.0, ACCESS)
        sent = [(o.flow, parse_message(o.data)) for o in outputs if isinstance(o, Transmit)]
        responses = [m.status for _, m in sent if isinstance(m, Response)]
        self.assertEqual(responses, [100])
        [resolve] = [o for o in outputs if isinstance(o, Resolve)]
        self.assertEqual(resolve.hop, NextHop("lab.test", None, ("TCP",), 4))
        self.assertEqual(resolve.adjacency, "plain-out")
        found = Resolution(resolve.hop, (Place("TCP", "192.0.2.8", 5060, "lab.test"),))
        outputs = resolve.reply(found, 0.1)
        [(flow, relayed)] = [
            (o.flow, parse_message(o.data)) for o in outputs if isinstance(o, Transmit)
        ]
        self.assertEqual(flow, Flow("TCP", ("127.0.0.1", 5062), ("192.0.2.8", 5060)))
        self.assertEqual(flow.adjacency, "plain-out")
        assert isinstance(relayed, Request)
        self.assertEqual(relayed.method, "INVITE")
        self.assertNotEqual(relayed.call_id, "core-1")
        self.assertEqual(self.core.calls.active_calls("plain-out"), 1)

    def test_ack_and_in_dialog_without_dialog(self) -> None:
        """A stray ACK is absorbed; an in-dialog request for no dialog gets 481."""
        ack = request("ACK", "sip:bob@lab.test").replace(
            b"To: <sip:bob@lab.test>", b"To: <sip:bob@lab.test>;tag=x"
        )
        self.assertEqual(self.stack.receive(ack, FLOW, 0.0, ACCESS), [])
        bye = request("BYE", "sip:bob@lab.test").replace(
            b"To: <sip:bob@lab.test>", b"To: <sip:bob@lab.test>;tag=x"
        )
        response = self.answer(bye)
        assert response is not None
        self.assertEqual(response.status, 481)

    def test_router_is_called_with_the_route_key(self) -> None:
        keys: list[RouteKey] = []

        def router(key: RouteKey, table: AdjacencyTable, active: object) -> RoutingDecision:
            keys.append(key)
            return RoutingDecision((Destination("plain-out"),), ("test",))

        table = AdjacencyTable(parse_config(CONFIG).adjacencies)
        core = SbcCore(lambda: table, router)
        stack = SipStack(core)
        core.stack = stack
        stack.receive(request("INVITE", "sip:bob@lab.test"), FLOW, 0.0, ACCESS)
        self.assertEqual(keys, [RouteKey("access", "lab.test", "bob", False, trusted_caller=False)])


class RefusalCounterTests(SynchronousTestCase):
    """Requests refused before any attempt are counted as calls-refused:RULE (inbound)."""

    def setUp(self) -> None:
        table = AdjacencyTable(parse_config(CONFIG).adjacencies)
        self.core = SbcCore(lambda: table)
        self.stack = SipStack(self.core)
        self.core.stack = self.stack

    def refused(self, data: bytes, context: InboundContext = ACCESS) -> int:
        outputs = self.stack.receive(data, FLOW, 0.0, context)
        [status] = [
            m.status
            for m in (parse_message(o.data) for o in outputs if isinstance(o, Transmit))
            if isinstance(m, Response) and m.status >= 200
        ]
        return status

    def counted(self, adjacency: str) -> dict[str, int]:
        counters = self.core.calls.counters
        return {
            name: counters.get(adjacency, name)
            for name in (
                "calls-refused:sips-from-untrusted",
                "calls-refused:no-secure-route",
                "calls-refused:no-route",
                "calls-refused:max-forwards",
            )
            if counters.get(adjacency, name)
        }

    def test_403_sips_from_untrusted(self) -> None:
        self.assertEqual(self.refused(request("INVITE", "sips:bob@lab.test")), 403)
        self.assertEqual(self.counted("access"), {"calls-refused:sips-from-untrusted": 1})
        self.assertEqual(self.core.calls.counters.get("access", "calls-started"), 0)

    def test_480_no_secure_route(self) -> None:
        self.assertEqual(self.refused(request("INVITE", "sips:bob@lab.test"), TLS), 480)
        self.assertEqual(self.counted("tls"), {"calls-refused:no-secure-route": 1})
        self.assertEqual(self.counted("access"), {})

    def test_480_no_route(self) -> None:
        def nowhere(key: RouteKey, table: AdjacencyTable, active: object) -> RoutingDecision:
            raise security.no_route(key.secure)

        table = AdjacencyTable(parse_config(CONFIG).adjacencies)
        self.core = SbcCore(lambda: table, nowhere)
        self.stack = SipStack(self.core)
        self.core.stack = self.stack
        self.assertEqual(self.refused(request("MESSAGE", "sip:bob@lab.test")), 480)
        self.assertEqual(self.counted("access"), {"calls-refused:no-route": 1})

    def test_483_too_many_hops(self) -> None:
        self.assertEqual(self.refused(request("INVITE", "sip:bob@lab.test", max_forwards=0)), 483)
        self.assertEqual(self.counted("access"), {"calls-refused:max-forwards": 1})

    def test_each_refusal_counts_once_and_relayed_calls_not_at_all(self) -> None:
        self.refused(request("INVITE", "sips:bob@lab.test"))
        self.refused(request("OPTIONS", "sips:bob@lab.test").replace(b"core-1", b"core-2"))
        relayed = request("INVITE", "sip:bob@lab.test").replace(b"core-1", b"core-3")
        self.stack.receive(relayed.replace(b"-core\r", b"-relayed\r"), FLOW, 0.0, ACCESS)
        self.assertEqual(self.counted("access"), {"calls-refused:sips-from-untrusted": 2})
        self.assertEqual(self.core.calls.counters.get("access", "calls-started"), 1)

    def test_draining_adjacency_is_not_counted(self) -> None:
        """A 503 on a detached adjacency's connection is no admission refusal."""
        gone = InboundContext("detached-one", ListenerKey("127.0.0.1", 5060, "TCP"))
        self.assertEqual(self.refused(request("INVITE", "sip:bob@lab.test"), gone), 503)
        self.assertEqual(self.counted("detached-one"), {})


def with_headers(data: bytes, *lines: str) -> bytes:
    """``data`` with header ``lines`` added before Content-Length."""
    extra = "".join(f"{line}\r\n" for line in lines).encode()
    return data.replace(b"Content-Length:", extra + b"Content-Length:", 1)


class ExtensionTests(SynchronousTestCase):
    """RFC 3261 §8.2.2.3 and §16.3 step 5: 420 Bad Extension with Unsupported."""

    def setUp(self) -> None:
        table = AdjacencyTable(parse_config(CONFIG).adjacencies)
        self.core = SbcCore(lambda: table, router=self.route)
        self.stack = SipStack(self.core)
        self.core.stack = self.stack
        self.routed: list[RouteKey] = []

    def route(self, key: RouteKey, table: AdjacencyTable, active: object) -> RoutingDecision:
        self.routed.append(key)
        return RoutingDecision((Destination("plain-out"),), ("test",))

    def outputs(self, data: bytes) -> list[Request | Response]:
        sent = self.stack.receive(data, FLOW, 0.0, ACCESS)
        found = []
        for output in sent:
            if isinstance(output, Transmit):
                message = parse_message(output.data)
                assert isinstance(message, (Request, Response))
                found.append(message)
        return found

    def final(self, data: bytes) -> Response:
        [response] = [m for m in self.outputs(data) if isinstance(m, Response) and m.status >= 200]
        return response

    def test_bext01_gets_420_listing_every_unknown_tag(self) -> None:
        """RFC 4475 §3.3.5, as written in tests/sip/torture/bext01.sip."""
        torture = os.path.join(os.path.dirname(__file__), "sip", "torture", "bext01.sip")
        with open(torture, "rb") as handle:
            response = self.final(handle.read())
        self.assertEqual((response.status, response.reason), (420, "Bad Extension"))
        self.assertEqual(
            response.headers.values("Unsupported"),
            [
                "nothingSupportsThis",
                "nothingSupportsThisEither",
                "noProxiesSupportThis",
                "norDoAnyProxiesSupportThis",
            ],
        )
        self.assertEqual(self.routed, [])  # refused before routing

    def test_supported_tags_pass_and_go_on(self) -> None:
        invite = with_headers(
            request("INVITE", "sip:bob@192.0.2.9"), "Require: 100rel, TIMER", "Supported: foo"
        )
        sent = self.outputs(invite)
        [relayed] = [m for m in sent if isinstance(m, Request) and m.method == "INVITE"]
        self.assertEqual(relayed.headers.values("Require"), ["100rel", "TIMER"])
        self.assertEqual([m.status for m in sent if isinstance(m, Response)], [100])

    def test_only_the_unknown_tags_are_listed_once(self) -> None:
        invite = with_headers(
            request("INVITE", "sip:bob@192.0.2.9"),
            "Require: replaces, join",
            "Proxy-Require: join, sec-agree",
        )
        response = self.final(invite)
        self.assertEqual(response.status, 420)
        self.assertEqual(response.headers.values("Unsupported"), ["join", "sec-agree"])

    def test_options_to_the_sbc_is_checked_too(self) -> None:
        response = self.final(with_headers(request(), "Require: gruu"))
        self.assertEqual((response.status, response.headers.get("Unsupported")), (420, "gruu"))

    def test_options_lists_what_is_supported(self) -> None:
        response = self.final(request())
        self.assertEqual(
            response.headers.values("Supported"),
            ["100rel", "outbound", "precondition", "replaces", "timer"],
        )

    def test_cancel_ignores_require(self) -> None:
        """§20.32: Require and Proxy-Require in a CANCEL are ignored (here: no INVITE, 481)."""
        cancel = with_headers(request("CANCEL", "sip:bob@192.0.2.9"), "Require: nothing")
        self.assertEqual(self.final(cancel).status, 481)


class LocalDomainTests(SynchronousTestCase):
    """``local_domains`` follows the configuration in force (a commit replaces it)."""

    def test_a_changed_domain_list_is_seen_at_once(self) -> None:
        table = AdjacencyTable(parse_config(CONFIG).adjacencies)
        in_force: list[tuple[str, ...]] = [("Example.COM",)]
        core = SbcCore(lambda: table, local_domains=lambda: in_force[0])
        self.assertEqual(core.local_domains, frozenset({"example.com"}))
        self.assertIs(core.local_domains, core.local_domains)  # the same value: not made again
        in_force[0] = ("other.test", "example.com")
        self.assertEqual(core.local_domains, frozenset({"other.test", "example.com"}))

    def test_a_list_in_place_is_read_every_time(self) -> None:
        table = AdjacencyTable(parse_config(CONFIG).adjacencies)
        domains = ["a.test"]
        core = SbcCore(lambda: table, local_domains=domains)
        self.assertEqual(core.local_domains, frozenset({"a.test"}))
        domains.append("B.test")
        self.assertEqual(core.local_domains, frozenset({"a.test", "b.test"}))
