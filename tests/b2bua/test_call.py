"""The B2BUA driven through a real SipStack + SbcCore: bytes in, Transmit out, virtual time."""

from __future__ import annotations

import gc
import platform
import urllib.parse
import weakref
from collections.abc import Callable, Sequence

import attrs
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable, InboundContext, ListenerKey
from sbc.b2bua import HuntPolicy, outbound_flow
from sbc.b2bua.call import CallState
from sbc.b2bua.manager import DeadlineBuckets
from sbc.config import parse_config
from sbc.core import SbcCore
from sbc.errors import SipError
from sbc.routing import Destination, RouteKey, RoutingDecision
from sbc.sip import parse_message
from sbc.sip.locate import DEFAULT_PORTS, NextHop, Resolution
from sbc.sip.locate import Destination as Place
from sbc.sip.message import Request, Response, response_to
from sbc.sip.stack import Flow, Resolve, SipStack, StackOutput, Transmit
from sbc.sip.uri import parse_uri

#: CPython frees an object when its last reference goes; PyPy only when it collects.
REFERENCE_COUNTING = platform.python_implementation() == "CPython"

CONFIG = """
sbc t
 sbe
  local-domain example.com
  adjacency sip access
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   remote-address ipv4 127.0.0.2/32
   security untrusted
   attach
  adjacency sip trusted
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   remote-address ipv4 127.0.0.3/32
   security trusted-unencrypted
   attach
  adjacency sip core
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   signaling-peer 10.0.0.5
   security untrusted
   attach
  adjacency sip core2
   signaling-address ipv4 127.0.0.1
   signaling-port 5064
   signaling-peer 10.0.0.6
   security untrusted
   attach
  adjacency sip tls
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   signaling-peer peer.lab.test
   security trusted-encrypted
   attach
  adjacency sip tcp-out
   signaling-address ipv4 127.0.0.1
   signaling-port 5066
   transport tcp
   security untrusted
   attach
"""

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
A_FLOW = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.2", 5070))
T_FLOW = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.3", 5070))
B_FLOW = Flow("UDP", ("127.0.0.1", 5062), ("10.0.0.5", 5060))
B2_FLOW = Flow("UDP", ("127.0.0.1", 5064), ("10.0.0.6", 5060))
#: The names the stand-in DNS of :class:`Net` knows.
DNS = {"peer.lab.test": ["192.0.2.30"], "remote.test": ["192.0.2.20"]}
ACCESS = InboundContext("access", ListenerKey("127.0.0.1", 5060, "UDP"))
TRUSTED = InboundContext("trusted", ListenerKey("127.0.0.1", 5060, "UDP"))
CORE = InboundContext("core", ListenerKey("127.0.0.1", 5062, "UDP"))
CORE2 = InboundContext("core2", ListenerKey("127.0.0.1", 5064, "UDP"))


class StandInRouter:
    """The routing API's signature, returning fixed destinations per domain."""

    def __init__(self, routes: dict[str, Sequence[str]]) -> None:
        self.routes = routes
        self.keys: list[RouteKey] = []

    def __call__(
        self, key: RouteKey, adjacencies: AdjacencyTable, active_calls: object
    ) -> RoutingDecision:
        self.keys.append(key)
        names = self.routes.get(key.destination_domain, ())
        if not names:
            raise SipError(480, "Temporarily Unavailable")
        return RoutingDecision(tuple(Destination(n) for n in names), ("stand-in",))


def invite(
    uri: str = "sip:bob@remote.test",
    call_id: str = "a-call-1",
    branch: str = "z9hG4bKa1",
    method: str = "INVITE",
    cseq: int = 1,
    to_tag: str | None = None,
    contact: str = "sip:alice@127.0.0.2:5070",
    via_host: str = "127.0.0.2",
    body: bytes = SDP,
) -> Request:
    """A request from the caller (127.0.0.2)."""
    to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
    data = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host}:5070;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        '"Alice" <sip:alice@lab.test>;tag=atag\r\n'.replace('"Alice"', 'From: "Alice"')
        + f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <{contact}>\r\n"
        "User-Agent: caller-phone\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


def answer(
    request: Request,
    status: int,
    tag: str = "btag",
    contact: str | None = "sip:bob@10.0.0.5:5060",
    body: bytes = b"",
) -> Response:
    """A response from a callee to ``request``."""
    response = response_to(request, status, to_tag=tag)
    if contact is not None:
        response.headers.add("Contact", f"<{contact}>")
    if body:
        response.headers.add("Content-Type", "application/sdp")
        response.body = body
    return response


class Net:
    """SbcCore + SipStack with a clock and a log of what was sent where."""

    def __init__(
        self,
        routes: dict[str, Sequence[str]] | None = None,
        hunting: HuntPolicy | None = None,
        no_answer_timeout: Callable[[], float] | None = None,
    ) -> None:
        self.config = parse_config(CONFIG)
        table = AdjacencyTable(self.config.adjacencies)
        self.table = table
        self.router = StandInRouter(routes or {"remote.test": ["core", "core2"]})
        self.core = SbcCore(
            lambda: table,
            self.router,
            self.config.local_domains,
            hunting,
            no_answer_timeout=no_answer_timeout,
        )
        self.stack = SipStack(self.core)
        self.core.stack = self.stack
        self.now = 0.0
        self.log: list[tuple[Flow, Request | Response]] = []
        #: What DNS knows (host name -> addresses) and the next hops asked, in order.
        self.dns: dict[str, list[str]] = dict(DNS)
        self.looked_up: list[NextHop] = []
        #: With ``hold_dns``, lookups wait in ``held`` until :meth:`release_dns`.
        self.hold_dns = False
        self.held: list[Resolve] = []
        self.transmits: list[Transmit] = []

    def release_dns(
        self, resolution: Resolution | None = None
    ) -> list[tuple[Flow, Request | Response]]:
        """Answer the oldest held lookup (with ``resolution``, else from ``self.dns``)."""
        output = self.held.pop(0)
        answer = resolution if resolution is not None else self.locate(output.hop)
        return self._collect(output.reply(answer, self.now))

    def locate(self, hop: NextHop) -> Resolution:
        """A stand-in for the edge's resolver: every address of ``self.dns``, default port."""
        addresses = self.dns.get(hop.host)
        if not addresses:
            return Resolution(hop, (), f"{hop.host} A: no such domain")
        transport = hop.transports[0]
        port = hop.port or DEFAULT_PORTS[transport]
        return Resolution(hop, tuple(Place(transport, a, port, hop.host) for a in addresses))

    def _collect(self, outputs: list[StackOutput]) -> list[tuple[Flow, Request | Response]]:
        pending = list(outputs)
        done: list[StackOutput] = []
        while pending:
            output = pending.pop(0)
            if isinstance(output, Resolve):
                self.looked_up.append(output.hop)
                if self.hold_dns:
                    self.held.append(output)
                else:
                    pending[0:0] = output.reply(self.locate(output.hop), self.now)
            else:
                done.append(output)
        self.check_active_counts()
        transmits = [o for o in done if isinstance(o, Transmit)]
        self.transmits.extend(transmits)
        sent = [(o.flow, parse_message(o.data)) for o in transmits]
        self.log.extend(sent)
        return sent

    def check_active_counts(self) -> None:
        """After every step: ``active_calls`` (kept as counts) agrees with a scan of the calls."""
        manager = self.core.calls
        scanned: dict[str, int] = {}
        for call in manager.calls.values():
            if call.state is not CallState.ENDED:
                for name in call.adjacencies:
                    scanned[name] = scanned.get(name, 0) + 1
        names = set(scanned) | {a.name for a in self.config.adjacencies}
        counted = {name: manager.active_calls(name) for name in names}
        if counted != {name: scanned.get(name, 0) for name in names}:
            raise AssertionError(f"active calls counted {counted}, scanned {scanned}")

    def fail_transport(self, flow: Flow) -> list[tuple[Flow, Request | Response]]:
        """The edge could not send the latest request of a transaction to ``flow`` (refused)."""
        [key, *_] = [
            o.transaction_key
            for o in reversed(self.transmits)
            if o.flow == flow and o.transaction_key is not None
        ]
        return self._collect(self.stack.transport_error(key, self.now))

    def feed(
        self, message: Request | Response, flow: Flow, context: InboundContext
    ) -> list[tuple[Flow, Request | Response]]:
        return self._collect(self.stack.receive(message.serialize(), flow, self.now, context))

    def tick(self, until: float) -> list[tuple[Flow, Request | Response]]:
        """Advance virtual time to ``until``, firing stack and B2BUA timers on the way."""
        outputs: list[StackOutput] = []
        while True:
            deadlines = [
                d for d in (self.stack.next_deadline(), self.core.next_deadline()) if d is not None
            ]
            if not deadlines or min(deadlines) > until:
                break
            self.now = max(self.now, min(deadlines))
            outputs += self.stack.advance(self.now)
            outputs += self.core.advance(self.now)
        self.now = until
        return self._collect(outputs)

    def settle(self) -> None:
        """Let every timer run out (transactions linger for Timer D/J/K/L/M)."""
        self.tick(self.now + 300)

    @staticmethod
    def requests(
        sent: list[tuple[Flow, Request | Response]], method: str
    ) -> list[tuple[Flow, Request]]:
        return [(f, m) for f, m in sent if isinstance(m, Request) and m.method == method]

    @staticmethod
    def responses(sent: list[tuple[Flow, Request | Response]]) -> list[tuple[Flow, Response]]:
        return [(f, m) for f, m in sent if isinstance(m, Response)]


class CallTestCase(SynchronousTestCase):
    """Shared steps: set up a call, answer it, check the tables."""

    def setUp(self) -> None:
        self.net = Net()

    def assertIdle(self) -> None:
        self.net.settle()
        manager = self.net.core.calls
        self.assertEqual(
            (manager.calls, manager.dialogs, manager.clients, manager.servers), ({}, {}, {}, {})
        )
        self.assertIsNone(manager.next_deadline())
        self.assertEqual(len(self.net.stack.transactions), 0)

    def start(self, request: Request | None = None) -> tuple[Request, Request]:
        """The caller's INVITE in; returns (caller INVITE, the B-leg INVITE)."""
        request = request or invite()
        sent = self.net.feed(request, A_FLOW, ACCESS)
        [(flow, trying)] = self.net.responses(sent)
        self.assertEqual((flow, trying.status), (A_FLOW, 100))
        [(flow, outbound)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B_FLOW)
        return request, outbound

    def establish(self) -> tuple[Request, Request, Response]:
        """A full set-up up to the ACK; returns (A INVITE, B INVITE, the 200 A got)."""
        a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        [(_, ok)] = self.net.responses(sent)
        self.assertEqual(ok.status, 200)
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKack1", body=b"")
        sent = self.net.feed(ack, A_FLOW, ACCESS)
        [(flow, b_ack)] = self.net.requests(sent, "ACK")
        self.assertEqual(flow, B_FLOW)
        self.assertEqual(b_ack.cseq.seq, b_invite.cseq.seq)
        return a_invite, b_invite, ok


class BasicCallTests(CallTestCase):
    def test_basic_call_with_topology_hiding(self) -> None:
        a_invite, b_invite = self.start()
        wire = b_invite.serialize()
        # nothing of the caller's side crosses: Via, Contact, Call-ID, tags
        for secret in (b"127.0.0.2", b"a-call-1", b"atag", b"branch=z9hG4bKa1;"):
            self.assertNotIn(secret, wire)
        self.assertNotEqual(b_invite.call_id, a_invite.call_id)
        self.assertIsNone(b_invite.to.tag)
        self.assertIsNotNone(b_invite.from_.tag)
        self.assertEqual(len(b_invite.vias), 1)
        self.assertEqual(b_invite.top_via.host, "127.0.0.1")
        self.assertEqual(b_invite.top_via.port, 5062)
        self.assertTrue(b_invite.top_via.branch.startswith("z9hG4bK"))
        self.assertEqual(b_invite.contacts[0].uri.serialize(), "sip:127.0.0.1:5062")
        self.assertEqual(b_invite.uri_text, "sip:bob@remote.test")
        self.assertEqual(b_invite.max_forwards, 69)
        self.assertEqual(b_invite.body, SDP)
        self.assertEqual(b_invite.content_type, "application/sdp")
        self.assertEqual(b_invite.headers.get("User-Agent"), "caller-phone")
        self.assertEqual(b_invite.from_.uri, a_invite.from_.uri)

        sent = self.net.feed(answer(b_invite, 100, contact=None), B_FLOW, CORE)
        self.assertEqual(sent, [])  # the 100 is hop-by-hop
        sent = self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        [(flow, ringing)] = self.net.responses(sent)
        self.assertEqual((flow, ringing.status), (A_FLOW, 180))
        a_tag = ringing.to.tag
        self.assertIsNotNone(a_tag)
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual((flow, ok.status, ok.to.tag), (A_FLOW, 200, a_tag))
        self.assertEqual(ok.call_id, "a-call-1")
        self.assertEqual(ok.top_via.branch, "z9hG4bKa1")
        self.assertEqual(ok.contacts[0].uri.serialize(), "sip:127.0.0.1:5060")
        self.assertEqual(ok.body, SDP)
        for secret in (b"10.0.0.5", b"btag", b_invite.call_id.encode()):
            self.assertNotIn(secret, ok.serialize())
            self.assertNotIn(secret, ringing.serialize())
        self.assertEqual(self.net.core.calls.active_calls("core"), 1)

        ack = invite(method="ACK", to_tag=a_tag, branch="z9hG4bKack1", body=b"")
        sent = self.net.feed(ack, A_FLOW, ACCESS)
        [(flow, b_ack)] = self.net.requests(sent, "ACK")
        self.assertEqual(flow, B_FLOW)
        self.assertEqual(
            (b_ack.call_id, b_ack.from_.tag, b_ack.to.tag),
            (b_invite.call_id, b_invite.from_.tag, "btag"),
        )
        self.assertEqual(b_ack.uri_text, "sip:bob@10.0.0.5:5060")

        bye = invite(method="BYE", to_tag=a_tag, branch="z9hG4bKbye1", cseq=2, body=b"")
        sent = self.net.feed(bye, A_FLOW, ACCESS)
        [(flow, b_bye)] = self.net.requests(sent, "BYE")
        self.assertEqual(flow, B_FLOW)
        self.assertEqual((b_bye.call_id, b_bye.to.tag), (b_invite.call_id, "btag"))
        self.assertNotIn(b"127.0.0.2", b_bye.serialize())
        self.assertEqual(self.net.core.calls.active_calls("core"), 0)
        sent = self.net.feed(answer(b_bye, 200, contact=None), B_FLOW, CORE)
        [(flow, bye_ok)] = self.net.responses(sent)
        self.assertEqual((flow, bye_ok.status, bye_ok.cseq.method), (A_FLOW, 200, "BYE"))
        self.assertEqual(bye_ok.call_id, "a-call-1")
        self.assertEqual(self.net.core.calls.counters.get("core", "calls-answered"), 1)
        self.assertIdle()

    def test_tables_empty_after_many_calls(self) -> None:
        for n in range(5):
            _a_invite, b_invite = self.start(invite(call_id=f"many-{n}", branch=f"z9hG4bKm{n}"))
            sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
            [(_, ok)] = self.net.responses(sent)
            ack = invite(
                method="ACK",
                call_id=f"many-{n}",
                to_tag=ok.to.tag,
                branch=f"z9hG4bKmack{n}",
                body=b"",
            )
            self.net.feed(ack, A_FLOW, ACCESS)
            b_bye = Request(
                "BYE",
                "sip:127.0.0.1:5062",
                [
                    ("Via", f"SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKcb{n}"),
                    ("Max-Forwards", 70),
                    ("From", "<sip:bob@remote.test>;tag=btag"),
                    ("To", f"<sip:alice@lab.test>;tag={b_invite.from_.tag}"),
                    ("Call-ID", b_invite.call_id),
                    ("CSeq", "5 BYE"),
                ],
            )
            sent = self.net.feed(b_bye, B_FLOW, CORE)
            [(_, a_bye)] = self.net.requests(sent, "BYE")
            self.net.feed(answer(a_bye, 200, contact=None), A_FLOW, ACCESS)
        self.assertEqual(self.net.core.calls.counters.get("access", "calls-started"), 5)
        self.assertIdle()

    def test_callee_bye_ends_both_legs(self) -> None:
        _a_invite, b_invite, ok = self.establish()
        b_bye = Request(
            "BYE",
            "sip:127.0.0.1:5062",
            [
                ("Via", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKcalleebye"),
                ("Max-Forwards", 70),
                ("From", "<sip:bob@remote.test>;tag=btag"),
                ("To", f"<sip:alice@lab.test>;tag={b_invite.from_.tag}"),
                ("Call-ID", b_invite.call_id),
                ("CSeq", "7 BYE"),
            ],
        )
        sent = self.net.feed(b_bye, B_FLOW, CORE)
        [(flow, a_bye)] = self.net.requests(sent, "BYE")
        self.assertEqual(flow, A_FLOW)
        self.assertEqual(a_bye.uri_text, "sip:alice@127.0.0.2:5070")
        self.assertEqual(a_bye.call_id, "a-call-1")
        self.assertEqual((a_bye.from_.tag, a_bye.to.tag), (ok.to.tag, "atag"))
        self.assertGreater(a_bye.cseq.seq, 0)
        self.assertNotIn(b"10.0.0.5", a_bye.serialize())
        sent = self.net.feed(answer(a_bye, 200, contact=None), A_FLOW, ACCESS)
        [(flow, bye_ok)] = self.net.responses(sent)
        self.assertEqual((flow, bye_ok.status, bye_ok.call_id), (B_FLOW, 200, b_invite.call_id))
        self.assertIdle()

    def test_486_is_relayed_and_ends_hunting(self) -> None:
        _a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 486, contact=None), B_FLOW, CORE)
        self.assertEqual(self.net.requests(sent, "INVITE"), [])
        acks = self.net.requests(sent, "ACK")
        self.assertEqual([f for f, _ in acks], [B_FLOW])  # the transaction ACKs the 486
        [(flow, busy)] = self.net.responses(sent)
        self.assertEqual((flow, busy.status, busy.call_id), (A_FLOW, 486, "a-call-1"))
        self.assertIdle()

    def test_unknown_dialog_gets_481(self) -> None:
        bye = invite(method="BYE", to_tag="nobody", branch="z9hG4bKx", body=b"")
        [(_, response)] = self.net.responses(self.net.feed(bye, A_FLOW, ACCESS))
        self.assertEqual(response.status, 481)
        self.assertIdle()


class NoReferenceCycleTests(CallTestCase):
    """A finished call is freed by reference counting alone, without the garbage collector.

    The daemon tunes the collector to run rarely (sbc.service.tune_garbage_collector):
    a call kept alive by a reference cycle (a call and its INVITE machine, a relay...)
    would stay in memory until the next full collection. PyPy has no reference
    counting (it frees by collecting): there, after one collection, nothing may
    keep the call alive.
    """

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(gc.enable)
        gc.disable()

    def watch(self) -> list[weakref.ref[object]]:
        """Weak references to the live call, its B-leg INVITE machine and its relays."""
        [call] = self.net.core.calls.calls.values()
        found: list[object] = [call]
        if call.b_invite is not None:
            found.append(call.b_invite)
        for relay in call.relays:
            found.append(relay)
            if relay.invite is not None:
                found.append(relay.invite)
        return [weakref.ref(thing) for thing in found]

    def assertFreed(self, refs: list[weakref.ref[object]]) -> None:
        self.assertIdle()
        if not REFERENCE_COUNTING:
            gc.collect()
        self.assertEqual([r() for r in refs], [None] * len(refs))

    def bye_from_a(self, ok: Response, cseq: int = 2) -> None:
        bye = invite(method="BYE", to_tag=ok.to.tag, branch=f"z9hG4bKbye{cseq}", cseq=cseq)
        for flow, b_bye in self.net.requests(self.net.feed(bye, A_FLOW, ACCESS), "BYE"):
            self.net.feed(answer(b_bye, 200, contact=None), flow, CORE)

    def test_basic_call(self) -> None:
        _a_invite, b_invite = self.start()
        refs = self.watch()
        self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        [(_, ok)] = self.net.responses(self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE))
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKack1", body=b"")
        self.net.feed(ack, A_FLOW, ACCESS)
        self.bye_from_a(ok)
        self.assertFreed(refs)

    def test_cancelled_call(self) -> None:
        _a_invite, b_invite = self.start()
        refs = self.watch()
        self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        sent = self.net.feed(invite(method="CANCEL", body=b""), A_FLOW, ACCESS)
        [(_, b_cancel)] = self.net.requests(sent, "CANCEL")
        self.net.feed(answer(b_cancel, 200, contact=None), B_FLOW, CORE)
        self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        self.net.feed(invite(method="ACK", body=b""), A_FLOW, ACCESS)
        self.assertFreed(refs)

    def test_cancel_never_answered(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        refs = self.watch()
        self.net.tick(10.0)
        self.net.feed(invite(method="CANCEL", body=b""), A_FLOW, ACCESS)
        self.net.feed(invite(method="ACK", body=b""), A_FLOW, ACCESS)
        self.assertFreed(refs)  # given up 64*T1 after the CANCEL

    def test_relayed_reinvite(self) -> None:
        _a_invite, _b_invite, ok = self.establish()
        reinvite = invite(to_tag=ok.to.tag, branch="z9hG4bKre1", cseq=2)
        [(_, b_re)] = self.net.requests(self.net.feed(reinvite, A_FLOW, ACCESS), "INVITE")
        refs = self.watch()
        self.assertEqual(len(refs), 4)  # the call, its B-leg INVITE, the relay, its INVITE
        self.net.feed(answer(b_re, 200, body=SDP), B_FLOW, CORE)
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKreack", cseq=2, body=b"")
        self.net.feed(ack, A_FLOW, ACCESS)
        self.bye_from_a(ok, cseq=3)
        self.assertFreed(refs)


class AckTests(CallTestCase):
    def test_2xx_retransmitted_until_ack(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        again = self.net.tick(0.5)
        self.assertEqual([m.status for _, m in self.net.responses(again)], [200])
        again = self.net.tick(1.49)
        self.assertEqual(again, [])  # next one after 2*T1
        again = self.net.tick(1.5)
        [(flow, ok)] = self.net.responses(again)
        self.assertEqual((flow, ok.status), (A_FLOW, 200))
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKack1", body=b"")
        self.net.feed(ack, A_FLOW, ACCESS)
        later = self.net.tick(10.0)
        self.assertEqual(self.net.responses(later), [])
        # B retransmits its 2xx: it gets the same ACK again
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        [(flow, _b_ack)] = self.net.requests(sent, "ACK")
        self.assertEqual(flow, B_FLOW)

    def test_no_ack_brings_call_down(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        sent = self.net.tick(40.0)
        intervals = [m.status for _, m in self.net.responses(sent)]
        # sent at 0.5 1.5 3.5 7.5 11.5 ... 31.5: T1 doubling to T2, until 64*T1
        self.assertEqual(intervals.count(200), 10)
        byes = {bye.top_via.branch: (f, bye) for f, bye in self.net.requests(sent, "BYE")}
        byes_sent = sorted(f.remote for f, _ in byes.values())
        self.assertEqual(byes_sent, sorted([A_FLOW.remote, B_FLOW.remote]))
        # the callee's 2xx is ACKed before its BYE (RFC 3261 §13.2.2.4)
        order = [m.method for f, m in sent if f == B_FLOW and isinstance(m, Request)]
        self.assertEqual(order[:2], ["ACK", "BYE"])  # then BYE retransmissions (UDP)
        self.assertEqual(set(order[1:]), {"BYE"})
        self.assertEqual(self.net.core.calls.counters.get("access", "ack-timeouts"), 1)
        for flow, bye in byes.values():
            context = ACCESS if flow == A_FLOW else CORE
            self.net.feed(answer(bye, 200, contact=None), flow, context)
        self.assertIdle()

    def test_request_being_relayed_when_the_call_is_terminated_gets_its_answer(self) -> None:
        """Call.terminate answers every request still waiting (here: no ACK for the 2xx).

        The caller's INFO is relayed to a callee that never answers it; the
        call comes down first (64*T1 after the 2xx) and the INFO gets 480,
        so its server transaction ends instead of staying in the table.
        """
        _a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        [(_, ok)] = self.net.responses(sent)
        self.net.tick(5.0)
        info = invite(method="INFO", to_tag=ok.to.tag, branch="z9hG4bKinfo", cseq=2, body=b"")
        [(flow, _)] = self.net.requests(self.net.feed(info, A_FLOW, ACCESS), "INFO")
        self.assertEqual(flow, B_FLOW)
        sent = self.net.tick(32.0)  # the ACK wait ends before the INFO's Timer F (37)
        answered = [(m.status, m.cseq.method) for f, m in self.net.responses(sent) if f == A_FLOW]
        self.assertIn((480, "INFO"), answered)
        self.assertEqual(self.net.core.calls.counters.get("access", "calls-released"), 1)
        for flow, bye in self.net.requests(sent, "BYE"):
            context = ACCESS if flow == A_FLOW else CORE
            self.net.feed(answer(bye, 200, contact=None), flow, context)
        self.assertIdle()


class CancelTests(CallTestCase):
    def test_caller_cancel(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        cancel = invite(method="CANCEL", body=b"")
        sent = self.net.feed(cancel, A_FLOW, ACCESS)
        statuses = sorted((m.status, m.cseq.method) for _, m in self.net.responses(sent))
        self.assertEqual(statuses, [(200, "CANCEL"), (487, "INVITE")])
        [(flow, b_cancel)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(flow, B_FLOW)
        self.assertEqual(b_cancel.top_via.branch, b_invite.top_via.branch)
        self.assertEqual(b_cancel.call_id, b_invite.call_id)
        self.net.feed(answer(b_cancel, 200, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        self.assertEqual(self.net.responses(sent), [])  # nothing more to the caller
        self.net.feed(invite(method="ACK", to_tag=None, body=b""), A_FLOW, ACCESS)
        self.assertEqual(self.net.core.calls.counters.get("access", "calls-cancelled"), 1)
        self.assertIdle()

    def test_cancel_before_provisional_waits_for_it(self) -> None:
        _a_invite, b_invite = self.start()
        sent = self.net.feed(invite(method="CANCEL", body=b""), A_FLOW, ACCESS)
        self.assertEqual(self.net.requests(sent, "CANCEL"), [])
        sent = self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        [(flow, b_cancel)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(self.net.responses(sent), [])
        self.net.feed(answer(b_cancel, 200, contact=None), B_FLOW, CORE)
        # the callee answered anyway: ACK and BYE it
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        self.assertEqual(len(self.net.requests(sent, "ACK")), 1)
        [(flow, bye)] = self.net.requests(sent, "BYE")
        self.assertEqual(flow, B_FLOW)
        self.net.feed(answer(bye, 200, contact=None), B_FLOW, CORE)
        self.assertIdle()

    def test_cancel_for_unknown_invite_gets_481(self) -> None:
        cancel = invite(method="CANCEL", branch="z9hG4bKnothing", body=b"")
        [(_, response)] = self.net.responses(self.net.feed(cancel, A_FLOW, ACCESS))
        self.assertEqual(response.status, 481)


class HuntingTests(CallTestCase):
    def test_hunt_past_503(self) -> None:
        _a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 503, contact=None), B_FLOW, CORE)
        [(flow, second)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        self.assertNotEqual(second.call_id, b_invite.call_id)
        self.assertEqual(self.net.responses(sent), [])
        sent = self.net.feed(answer(second, 200, body=SDP), B2_FLOW, CORE2)
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual((flow, ok.status), (A_FLOW, 200))
        self.assertEqual(self.net.core.calls.counters.get("core", "hunt-skip:503"), 1)
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKack1", body=b"")
        [(flow, _)] = self.net.requests(self.net.feed(ack, A_FLOW, ACCESS), "ACK")
        self.assertEqual(flow, B2_FLOW)

    def test_hunt_past_timeout(self) -> None:
        _a_invite, _b_invite = self.start()
        sent = self.net.tick(31.9)
        self.assertEqual([f for f, _ in self.net.requests(sent, "INVITE")], [B_FLOW] * 6)
        sent = self.net.tick(32.0)
        [(flow, second)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        sent = self.net.feed(answer(second, 486, contact=None), B2_FLOW, CORE2)
        [(_, busy)] = self.net.responses(sent)
        self.assertEqual(busy.status, 486)
        self.assertIdle()

    def test_hunt_past_transport_error(self) -> None:
        sent = self.net.stack.receive(invite().serialize(), A_FLOW, 0.0, ACCESS)
        [first] = [o for o in sent if isinstance(o, Transmit) and o.flow == B_FLOW]
        assert first.transaction_key is not None
        outputs = self.net.stack.transport_error(first.transaction_key, 0.1)
        [second] = [o for o in outputs if isinstance(o, Transmit)]
        self.assertEqual(second.flow, B2_FLOW)

    def test_every_candidate_failed(self) -> None:
        _a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 503, contact=None), B_FLOW, CORE)
        [(_, second)] = self.net.requests(sent, "INVITE")
        sent = self.net.feed(answer(second, 408, contact=None), B2_FLOW, CORE2)
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 408)
        self.assertIdle()

    def test_best_failure_goes_to_the_caller(self) -> None:
        """§16.7 step 6: the lowest class wins, whatever the order (408, then 503 -> 408)."""
        _a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 408, contact=None), B_FLOW, CORE)
        [(_, second)] = self.net.requests(sent, "INVITE")
        sent = self.net.feed(answer(second, 503, contact=None), B2_FLOW, CORE2)
        [(_, final)] = self.net.responses(sent)
        self.assertEqual((final.status, final.reason), (408, "Request Timeout"))
        self.assertIdle()

    def test_custom_hunting_stops_on_503(self) -> None:
        self.net = Net(hunting=HuntPolicy(frozenset({408})))
        _a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 503, contact=None), B_FLOW, CORE)
        self.assertEqual(self.net.requests(sent, "INVITE"), [])
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 503)
        self.assertIdle()

    def test_no_route_gets_480(self) -> None:
        sent = self.net.feed(invite("sip:bob@nowhere.test"), A_FLOW, ACCESS)
        finals = [m.status for _, m in self.net.responses(sent) if m.status >= 200]
        self.assertEqual(finals, [480])
        self.assertIdle()


class NoAnswerTests(CallTestCase):
    """Timer C (RFC 3261 §16.6 step 11, §16.8) and the wait after a CANCEL (§9.1)."""

    def ring(self) -> tuple[Request, Request]:
        a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        [(flow, ringing)] = self.net.responses(sent)
        self.assertEqual((flow, ringing.status), (A_FLOW, 180))
        return a_invite, b_invite

    def counter(self, adjacency: str, name: str) -> int:
        return self.net.core.calls.counters.get(adjacency, name)

    def test_ringing_callee_cancelled_then_next_candidate(self) -> None:
        _a_invite, b_invite = self.ring()
        self.assertEqual(self.net.requests(self.net.tick(179.9), "CANCEL"), [])
        sent = self.net.tick(180.0)
        [(flow, cancel)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(flow, B_FLOW)
        self.assertEqual(cancel.top_via.branch, b_invite.top_via.branch)
        self.assertEqual(self.net.responses(sent), [])  # the caller keeps waiting
        self.assertEqual(self.counter("core", "no-answer-timeouts"), 1)
        self.net.feed(answer(cancel, 200, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        [(flow, _ack)] = self.net.requests(sent, "ACK")  # the transaction ACKs the 487
        self.assertEqual(flow, B_FLOW)
        [(flow, second)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        self.assertEqual(self.net.responses(sent), [])
        self.assertEqual(self.counter("core", "hunt-skip:no-answer"), 1)
        sent = self.net.feed(answer(second, 200, body=SDP), B2_FLOW, CORE2)
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual((flow, ok.status), (A_FLOW, 200))
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKack1", body=b"")
        [(flow, _)] = self.net.requests(self.net.feed(ack, A_FLOW, ACCESS), "ACK")
        self.assertEqual(flow, B2_FLOW)

    def test_provisional_restarts_timer_c(self) -> None:
        _a_invite, b_invite = self.ring()
        self.net.tick(100.0)
        self.net.feed(answer(b_invite, 183), B_FLOW, CORE)
        self.assertEqual(self.net.requests(self.net.tick(279.9), "CANCEL"), [])
        [(flow, _)] = self.net.requests(self.net.tick(280.0), "CANCEL")
        self.assertEqual(flow, B_FLOW)

    def test_100_trying_does_not_restart_timer_c(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.tick(10.0)  # a 100 (Proceeding): no Timer B any more, Timer C still runs
        self.net.feed(answer(b_invite, 100, contact=None), B_FLOW, CORE)
        [(flow, _)] = self.net.requests(self.net.tick(180.0), "CANCEL")
        self.assertEqual(flow, B_FLOW)

    def test_answer_racing_the_cancel_connects_the_call(self) -> None:
        _a_invite, b_invite = self.ring()
        [(_, cancel)] = self.net.requests(self.net.tick(180.0), "CANCEL")
        self.net.feed(answer(cancel, 481, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual((flow, ok.status), (A_FLOW, 200))
        self.assertEqual(self.counter("core", "calls-answered"), 1)

    def test_no_hunting_on_408_gives_the_caller_408(self) -> None:
        self.net = Net(hunting=HuntPolicy(frozenset({503})), no_answer_timeout=lambda: 30.0)
        _a_invite, b_invite = self.ring()
        [(_, cancel)] = self.net.requests(self.net.tick(30.0), "CANCEL")
        self.net.feed(answer(cancel, 200, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        self.assertEqual(self.net.requests(sent, "INVITE"), [])
        [(flow, final)] = self.net.responses(sent)
        self.assertEqual((flow, final.status, final.reason), (A_FLOW, 408, "Request Timeout"))
        self.assertEqual(self.counter("core", "calls-rejected:408"), 1)
        self.net.feed(invite(method="ACK", to_tag=final.to.tag, body=b""), A_FLOW, ACCESS)
        self.assertIdle()

    def test_every_candidate_silent_gives_the_caller_408(self) -> None:
        self.net = Net(no_answer_timeout=lambda: 60.0)
        _a_invite, b_invite = self.ring()
        [(_, cancel)] = self.net.requests(self.net.tick(60.0), "CANCEL")
        self.net.feed(answer(cancel, 200, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        [(_, second)] = self.net.requests(sent, "INVITE")
        self.net.feed(answer(second, 180), B2_FLOW, CORE2)
        sent = self.net.tick(120.0)
        [(flow, cancel2)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(flow, B2_FLOW)
        self.net.feed(answer(cancel2, 200, contact=None), B2_FLOW, CORE2)
        sent = self.net.feed(answer(second, 487, contact=None), B2_FLOW, CORE2)
        [(flow, final)] = self.net.responses(sent)
        self.assertEqual((flow, final.status), (A_FLOW, 408))
        self.assertEqual(self.counter("access", "calls-failed"), 1)
        self.assertIdle()

    def test_cancel_never_answered_is_given_up(self) -> None:
        """A callee that ignores the CANCEL: after 64*T1 the INVITE is dropped, hunting goes on."""
        _a_invite, b_invite = self.ring()
        self.net.tick(180.0)
        self.assertEqual(self.net.requests(self.net.tick(211.9), "INVITE"), [])
        sent = self.net.tick(212.0)
        [(flow, second)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        self.assertEqual(self.counter("core", "cancel-unanswered"), 1)
        # the first callee wakes up: its answer no longer reaches the call
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        self.assertEqual(self.net.responses(sent), [])
        sent = self.net.feed(answer(second, 486, contact=None), B2_FLOW, CORE2)
        [(_, busy)] = self.net.responses(sent)
        self.assertEqual(busy.status, 486)
        self.assertIdle()

    def test_caller_cancel_never_answered_leaves_no_call_behind(self) -> None:
        _a_invite, _b_invite = self.ring()
        self.net.tick(10.0)
        sent = self.net.feed(invite(method="CANCEL", body=b""), A_FLOW, ACCESS)
        [(flow, _)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(flow, B_FLOW)
        # the callee never answers the CANCEL nor the INVITE: gone 64*T1 later
        self.net.tick(41.9)
        self.assertEqual(len(self.net.core.calls.calls), 1)
        self.net.tick(42.0)
        self.assertEqual(self.net.core.calls.calls, {})
        self.assertEqual(self.counter("core", "cancel-unanswered"), 1)
        self.assertIdle()

    def test_timeout_is_read_when_armed(self) -> None:
        timeout = [30.0]
        self.net = Net(no_answer_timeout=lambda: timeout[0])
        _a_invite, b_invite = self.ring()
        timeout[0] = 5.0  # a commit: applies from the next INVITE or provisional
        self.assertEqual(self.net.requests(self.net.tick(29.0), "CANCEL"), [])
        self.net.feed(answer(b_invite, 183), B_FLOW, CORE)
        [(flow, _)] = self.net.requests(self.net.tick(34.0), "CANCEL")
        self.assertEqual(flow, B_FLOW)

    def test_answered_calls_leave_no_deadline(self) -> None:
        self.establish()
        self.assertEqual(len(self.net.core.calls.b_deadlines), 0)
        self.assertIsNone(self.net.core.calls.b_deadlines.next_deadline())


class RedirectTests(CallTestCase):
    def test_302_followed_through_routing(self) -> None:
        self.net = Net({"remote.test": ["core"], "other.test": ["core2"]})
        _a_invite, b_invite = self.start()
        redirect = answer(b_invite, 302, contact="sip:carol@other.test")
        sent = self.net.feed(redirect, B_FLOW, CORE)
        [(flow, second)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        self.assertEqual(second.uri_text, "sip:carol@other.test")
        self.assertEqual(self.net.responses(sent), [])
        self.assertEqual(self.net.router.keys[-1].destination_domain, "other.test")
        sent = self.net.feed(answer(second, 404, contact=None), B2_FLOW, CORE2)
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 404)
        self.assertIdle()

    def test_redirect_contacts_in_q_order(self) -> None:
        self.net = Net({"remote.test": ["core"], "low.test": ["core2"], "high.test": ["core2"]})
        _a_invite, b_invite = self.start()
        redirect = response_to(b_invite, 302, to_tag="r")
        redirect.headers.add("Contact", "<sip:x@low.test>;q=0.1, <sip:y@high.test>;q=0.9")
        sent = self.net.feed(redirect, B_FLOW, CORE)
        [(_, second)] = self.net.requests(sent, "INVITE")
        self.assertEqual(second.uri_text, "sip:y@high.test")
        sent = self.net.feed(answer(second, 503, contact=None), B2_FLOW, CORE2)
        [(_, third)] = self.net.requests(sent, "INVITE")
        self.assertEqual(third.uri_text, "sip:x@low.test")

    def test_sips_call_redirected_to_sip_gets_480_380(self) -> None:
        self.net = Net({"remote.test": ["tls"]})
        request = invite("sips:bob@remote.test", via_host="127.0.0.3")
        sent = self.net.feed(request, T_FLOW, TRUSTED)
        [(flow, b_invite)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow.transport, "TLS")
        tls_flow = flow
        redirect = answer(b_invite, 302, contact="sip:carol@remote.test")
        tls_context = InboundContext("tls", ListenerKey("127.0.0.1", 5061, "TLS"))
        sent = self.net.feed(redirect, tls_flow, tls_context)
        self.assertEqual(self.net.requests(sent, "INVITE"), [])
        [(flow, final)] = self.net.responses(sent)
        self.assertEqual((flow.remote, final.status), (T_FLOW.remote, 480))
        self.assertEqual([(w.code, w.text) for w in final.warnings], [(380, "SIPS Not Allowed")])
        self.assertIdle()

    def test_sip_call_redirected_to_sips_gets_480_381(self) -> None:
        _a_invite, b_invite = self.start()
        redirect = answer(b_invite, 302, contact="sips:carol@remote.test")
        sent = self.net.feed(redirect, B_FLOW, CORE)
        self.assertEqual(self.net.requests(sent, "INVITE"), [])
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 480)
        self.assertEqual([(w.code, w.text) for w in final.warnings], [(381, "SIPS Required")])
        self.assertEqual(self.net.core.calls.counters.get("core", "redirects-refused"), 1)
        self.assertIdle()


class InDialogTests(CallTestCase):
    def test_unanswered_in_dialog_request_ends_the_call(self) -> None:
        """RFC 3261 §12.2.1.2: no answer at all to an in-dialog request ends the dialog."""
        _a_invite, _b_invite, ok = self.establish()
        info = invite(method="INFO", to_tag=ok.to.tag, branch="z9hG4bKinfo", cseq=2, body=b"")
        self.net.requests(self.net.feed(info, A_FLOW, ACCESS), "INFO")
        sent = self.net.tick(self.net.now + 40.0)
        statuses = [m.status for f, m in self.net.responses(sent) if f == A_FLOW]
        self.assertIn(408, statuses)
        byes = [f for f, _ in self.net.requests(sent, "BYE")]
        self.assertIn(A_FLOW, byes)
        self.net.settle()
        self.assertIdle()

    def test_481_to_a_relayed_request_ends_the_call(self) -> None:
        _a_invite, _b_invite, ok = self.establish()
        info = invite(method="INFO", to_tag=ok.to.tag, branch="z9hG4bKinf2", cseq=2, body=b"")
        [(_, b_info)] = self.net.requests(self.net.feed(info, A_FLOW, ACCESS), "INFO")
        sent = self.net.feed(answer(b_info, 481, contact=None), B_FLOW, CORE)
        [(flow, relayed)] = self.net.responses(sent)
        self.assertEqual((flow, relayed.status), (A_FLOW, 481))
        self.assertEqual(
            sorted(f.remote for f, _ in self.net.requests(sent, "BYE")),
            sorted([A_FLOW.remote, B_FLOW.remote]),
        )

    def test_reinvite_is_relayed(self) -> None:
        _a_invite, b_invite, ok = self.establish()
        new_sdp = SDP.replace(b"192.0.2.10", b"192.0.2.11")
        reinvite = invite(to_tag=ok.to.tag, branch="z9hG4bKre1", cseq=2, body=new_sdp)
        sent = self.net.feed(reinvite, A_FLOW, ACCESS)
        [(flow, b_re)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B_FLOW)
        self.assertEqual(
            (b_re.call_id, b_re.from_.tag, b_re.to.tag),
            (b_invite.call_id, b_invite.from_.tag, "btag"),
        )
        self.assertEqual(b_re.cseq.seq, b_invite.cseq.seq + 1)
        self.assertEqual(b_re.uri_text, "sip:bob@10.0.0.5:5060")
        self.assertEqual(b_re.body, new_sdp)
        self.assertNotIn(b"127.0.0.2", b_re.serialize())
        sent = self.net.feed(answer(b_re, 200, body=SDP), B_FLOW, CORE)
        [(flow, re_ok)] = self.net.responses(sent)
        self.assertEqual((flow, re_ok.status, re_ok.cseq.seq), (A_FLOW, 200, 2))
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKreack", cseq=2, body=b"")
        [(flow, b_ack)] = self.net.requests(self.net.feed(ack, A_FLOW, ACCESS), "ACK")
        self.assertEqual((flow, b_ack.cseq.seq), (B_FLOW, b_re.cseq.seq))

    def test_info_and_update_follow_the_dialog(self) -> None:
        _a_invite, b_invite, ok = self.establish()
        for n, method in enumerate(("INFO", "UPDATE", "MESSAGE"), start=2):
            request = invite(method=method, to_tag=ok.to.tag, branch=f"z9hG4bKi{n}", cseq=n)
            [(flow, relayed)] = self.net.requests(self.net.feed(request, A_FLOW, ACCESS), method)
            self.assertEqual((flow, relayed.call_id), (B_FLOW, b_invite.call_id))
            sent = self.net.feed(answer(relayed, 200, contact=None), B_FLOW, CORE)
            [(_, response)] = self.net.responses(sent)
            self.assertEqual((response.status, response.cseq.method), (200, method))

    def test_in_dialog_request_requiring_an_unknown_extension_gets_420(self) -> None:
        _a_invite, _b_invite, ok = self.establish()
        info = invite(method="INFO", to_tag=ok.to.tag, branch="z9hG4bKext", cseq=2, body=b"")
        info.headers.add("Require", "nothingSupportsThis")
        sent = self.net.feed(info, A_FLOW, ACCESS)
        self.assertEqual(self.net.requests(sent, "INFO"), [])
        [(flow, response)] = self.net.responses(sent)
        self.assertEqual((flow, response.status), (A_FLOW, 420))
        self.assertEqual(response.headers.get("Unsupported"), "nothingSupportsThis")
        # the call is untouched: the next request is relayed
        info = invite(method="INFO", to_tag=ok.to.tag, branch="z9hG4bKext2", cseq=3, body=b"")
        info.headers.add("Require", "timer")
        [(flow, _)] = self.net.requests(self.net.feed(info, A_FLOW, ACCESS), "INFO")
        self.assertEqual(flow, B_FLOW)

    def test_in_dialog_request_with_max_forwards_0_gets_483(self) -> None:
        _a_invite, _b_invite, ok = self.establish()
        info = invite(method="INFO", to_tag=ok.to.tag, branch="z9hG4bKmf0", cseq=2, body=b"")
        info.headers.set("Max-Forwards", 0)
        sent = self.net.feed(info, A_FLOW, ACCESS)
        self.assertEqual(self.net.requests(sent, "INFO"), [])
        [(flow, response)] = self.net.responses(sent)
        self.assertEqual((flow, response.status, response.reason), (A_FLOW, 483, "Too Many Hops"))
        # the call itself is untouched: the next request with hops left is relayed
        info = invite(method="INFO", to_tag=ok.to.tag, branch="z9hG4bKmf1", cseq=3, body=b"")
        [(flow, _)] = self.net.requests(self.net.feed(info, A_FLOW, ACCESS), "INFO")
        self.assertEqual(flow, B_FLOW)

    def test_target_refresh_changing_scheme_gets_400_and_byes(self) -> None:
        _a_invite, _b_invite, ok = self.establish()
        reinvite = invite(
            to_tag=ok.to.tag, branch="z9hG4bKre2", cseq=2, contact="sips:alice@127.0.0.2:5071"
        )
        sent = self.net.feed(reinvite, A_FLOW, ACCESS)
        finals = [(f, m.status) for f, m in self.net.responses(sent) if m.status >= 200]
        self.assertEqual(finals, [(A_FLOW, 400)])
        byes = self.net.requests(sent, "BYE")
        self.assertEqual(sorted(f.remote for f, _ in byes), sorted([A_FLOW.remote, B_FLOW.remote]))
        self.assertEqual(self.net.requests(sent, "INVITE"), [])
        for flow, bye in byes:
            context = ACCESS if flow == A_FLOW else CORE
            self.net.feed(answer(bye, 200, contact=None), flow, context)
        self.assertIdle()

    def test_2xx_to_reinvite_changing_scheme_brings_call_down(self) -> None:
        _a_invite, _b_invite, ok = self.establish()
        reinvite = invite(to_tag=ok.to.tag, branch="z9hG4bKre3", cseq=2)
        [(_, b_re)] = self.net.requests(self.net.feed(reinvite, A_FLOW, ACCESS), "INVITE")
        sent = self.net.feed(answer(b_re, 200, contact="sips:bob@10.0.0.5"), B_FLOW, CORE)
        finals = [m.status for _, m in self.net.responses(sent)]
        self.assertEqual(finals, [400])
        self.assertEqual(len(self.net.requests(sent, "BYE")), 2)
        self.assertEqual(len(self.net.requests(sent, "ACK")), 1)

    def test_early_dialog_contact_changing_scheme_ends_the_set_up(self) -> None:
        """A reliable 183 whose Contact is sips: on a sip: call: 480 + 381, CANCEL, nothing kept."""
        _a_invite, b_invite = self.start()
        early = answer(b_invite, 183, contact="sips:bob@10.0.0.5:5061")
        early.headers.add("Require", "100rel")
        early.headers.add("RSeq", "1")
        sent = self.net.feed(early, B_FLOW, CORE)
        [(flow, final)] = self.net.responses(sent)
        self.assertEqual((flow, final.status), (A_FLOW, 480))
        self.assertIn("381", final.headers.get("Warning") or "")
        [(flow, cancel)] = self.net.requests(sent, "CANCEL")
        self.assertEqual((flow, cancel.top_via.branch), (B_FLOW, b_invite.top_via.branch))
        self.assertEqual(self.net.core.calls.counters.get("core", "target-refresh-refused"), 1)
        # the callee answers anyway: ACK and BYE, nothing relayed
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        self.assertEqual(self.net.responses(sent), [])
        [(flow, bye)] = self.net.requests(sent, "BYE")
        self.assertEqual(flow, B_FLOW)
        self.net.feed(answer(bye, 200, contact=None), B_FLOW, CORE)
        self.net.feed(invite(method="ACK", to_tag=final.to.tag, body=b""), A_FLOW, ACCESS)
        self.assertIdle()


class OutOfDialogTests(CallTestCase):
    def test_options_routed_like_invite(self) -> None:
        request = invite(method="OPTIONS", body=b"")
        sent = self.net.feed(request, A_FLOW, ACCESS)
        [(flow, options)] = self.net.requests(sent, "OPTIONS")
        self.assertEqual(flow, B_FLOW)
        self.assertNotIn(b"127.0.0.2", options.serialize())
        sent = self.net.feed(answer(options, 200), B_FLOW, CORE)
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual((flow, ok.status), (A_FLOW, 200))
        self.assertNotIn(b"10.0.0.5", ok.serialize())
        self.assertIdle()

    def test_message_hunts_past_timeout(self) -> None:
        request = invite(method="MESSAGE", body=b"hello")
        sent = self.net.feed(request, A_FLOW, ACCESS)
        [(flow, _)] = self.net.requests(sent, "MESSAGE")
        self.assertEqual(flow, B_FLOW)
        sent = self.net.tick(32.0)
        seconds = [f for f, _ in self.net.requests(sent, "MESSAGE") if f == B2_FLOW]
        self.assertEqual(len(seconds), 1)


class FlowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = parse_config(CONFIG)

    def test_tls_flow_uses_signaling_peer_as_server_name(self) -> None:
        flow = outbound_flow(self.config.adjacency("tls"), parse_uri("sips:bob@remote.test"))
        self.assertEqual(
            flow, Flow("TLS", ("127.0.0.1", 5061), ("peer.lab.test", 5061), None, "peer.lab.test")
        )

    def test_tls_flow_to_an_ip_signaling_peer_checks_the_uri_domain(self) -> None:
        """docs/security-model.md / RFC 5922 §7.3: an IP peer is no name; the URI's domain is."""
        adjacency = attrs.evolve(self.config.adjacency("tls"), signaling_peer="192.0.2.9")
        flow = outbound_flow(adjacency, parse_uri("sips:bob@Remote.test"))
        self.assertEqual((flow.remote, flow.server_name), (("192.0.2.9", 5061), "Remote.test"))
        flow = outbound_flow(adjacency, parse_uri("sips:bob@[2001:db8::7]"))
        self.assertEqual(flow.server_name, "2001:db8::7")  # the URI names an address
        no_peer = attrs.evolve(adjacency, signaling_peer=None)
        flow = outbound_flow(no_peer, parse_uri("sips:bob@remote.test:5071"))
        self.assertEqual((flow.remote, flow.server_name), (("remote.test", 5071), "remote.test"))

    def test_plain_flow_goes_to_the_uri_without_peer(self) -> None:
        flow = outbound_flow(self.config.adjacency("tcp-out"), parse_uri("sip:b@192.0.2.7:5080"))
        self.assertEqual(flow, Flow("TCP", ("127.0.0.1", 5066), ("192.0.2.7", 5080)))
        flow = outbound_flow(self.config.adjacency("core"), parse_uri("sip:b@192.0.2.7"))
        self.assertEqual(flow, Flow("UDP", ("127.0.0.1", 5062), ("10.0.0.5", 5060)))

    def test_secure_call_leaves_over_tls_with_sips_contact(self) -> None:
        net = Net({"remote.test": ["tls"]})
        request = invite("sips:bob@remote.test", via_host="127.0.0.3")
        sent = net.feed(request, T_FLOW, TRUSTED)
        [(flow, b_invite)] = net.requests(sent, "INVITE")
        self.assertEqual((flow.transport, flow.server_name), ("TLS", "peer.lab.test"))
        self.assertEqual(b_invite.uri_text, "sips:bob@remote.test")
        self.assertEqual(b_invite.top_via.transport, "TLS")
        self.assertEqual(b_invite.contacts[0].uri.serialize(), "sips:127.0.0.1:5061;transport=tls")


class DeadlineBucketsTests(SynchronousTestCase):
    """The per-second buckets behind the B-leg INVITE timer."""

    def test_arm_rounds_up_disarm_forgets_due_in_order(self) -> None:
        buckets = DeadlineBuckets()
        first, second, third = _Waiting(), _Waiting(), _Waiting()
        buckets.arm(first, 10.2)  # type: ignore[arg-type]
        buckets.arm(second, 11.0)  # type: ignore[arg-type]
        buckets.arm(third, 5.5)  # type: ignore[arg-type]
        self.assertEqual((first.deadline, second.deadline, third.deadline), (11, 11, 6))
        self.assertEqual((len(buckets), buckets.next_deadline()), (3, 6))
        buckets.disarm(third)  # type: ignore[arg-type]
        buckets.disarm(third)  # type: ignore[arg-type]  # twice: no harm
        self.assertIsNone(third.deadline)
        self.assertEqual((len(buckets), buckets.next_deadline()), (2, 11))
        self.assertEqual(buckets.due(10.9), [])
        self.assertEqual(buckets.due(11.0), [first, second])
        self.assertEqual((first.deadline, second.deadline), (None, None))
        self.assertEqual((len(buckets), buckets.next_deadline()), (0, None))

    def test_rearming_moves_the_deadline(self) -> None:
        buckets = DeadlineBuckets()
        waiting = _Waiting()
        buckets.arm(waiting, 3.0)  # type: ignore[arg-type]
        buckets.arm(waiting, 8.5)  # type: ignore[arg-type]  # a 180: Timer C starts again
        self.assertEqual((waiting.deadline, len(buckets), buckets.next_deadline()), (9, 1, 9))
        self.assertEqual(buckets.due(8.0), [])


class _Waiting:
    """Stands in for a call or relay: only the ``deadline`` the buckets keep."""

    deadline: int | None = None


class DialogReferenceTests(CallTestCase):
    """Replaces / Refer-To?Replaces name the other leg's dialog (topology hiding, RFC 3891)."""

    def second_call(self) -> tuple[Response, Request]:
        """Another answered call from the caller: (the 200 it got, the B-leg INVITE)."""
        request = invite(call_id="a-call-2", branch="z9hG4bKa2")
        sent = self.net.feed(request, A_FLOW, ACCESS)
        [(_, b_invite)] = self.net.requests(sent, "INVITE")
        sent = self.net.feed(answer(b_invite, 200, tag="b2tag", body=SDP), B_FLOW, CORE)
        [(_, ok)] = self.net.responses(sent)
        ack = invite(method="ACK", call_id="a-call-2", to_tag=ok.to.tag, branch="z9hG4bKk2")
        self.net.feed(ack, A_FLOW, ACCESS)
        return ok, b_invite

    def test_refer_with_replaces_is_mapped_to_the_other_legs_dialog(self) -> None:
        _a_invite, b_invite, ok = self.establish()
        ok2, b_invite2 = self.second_call()
        # attended transfer: the caller names call 2 as it sees it (to-tag = the SBC's tag)
        replaces = f"a-call-2;to-tag={ok2.to.tag};from-tag=atag"
        refer = invite(method="REFER", to_tag=ok.to.tag, branch="z9hG4bKref", cseq=2, body=b"")
        refer.headers.add(
            "Refer-To", f"<sip:carol@remote.test?Replaces={urllib.parse.quote(replaces, safe='')}>"
        )
        [(flow, relayed)] = self.net.requests(self.net.feed(refer, A_FLOW, ACCESS), "REFER")
        self.assertEqual((flow, relayed.call_id), (B_FLOW, b_invite.call_id))
        refer_to = relayed.headers.get("Refer-To") or ""
        embedded = urllib.parse.unquote(refer_to.split("Replaces=", 1)[1].rstrip(">"))
        # call 2's B-leg: Call-ID of the SBC, to-tag the callee's, from-tag the SBC's
        self.assertEqual(
            embedded, f"{b_invite2.call_id};to-tag=b2tag;from-tag={b_invite2.from_.tag}"
        )
        self.assertNotIn("a-call-2", refer_to)
        self.assertNotIn("atag", refer_to)

    def test_invite_with_replaces_is_mapped_and_unknown_dialogs_left_alone(self) -> None:
        _a_invite, b_invite, ok = self.establish()
        pickup = invite(call_id="a-call-3", branch="z9hG4bKa3")
        pickup.headers.add("Replaces", f"a-call-1;from-tag={ok.to.tag};to-tag=atag;early-only")
        sent = self.net.feed(pickup, A_FLOW, ACCESS)
        [(_, b_pickup)] = self.net.requests(sent, "INVITE")
        self.assertEqual(
            b_pickup.headers.get("Replaces"),
            f"{b_invite.call_id};from-tag=btag;to-tag={b_invite.from_.tag};early-only",
        )
        other = invite(call_id="a-call-4", branch="z9hG4bKa4")
        other.headers.add("Replaces", "elsewhere-1;to-tag=x;from-tag=y")
        [(_, b_other)] = self.net.requests(self.net.feed(other, A_FLOW, ACCESS), "INVITE")
        self.assertEqual(b_other.headers.get("Replaces"), "elsewhere-1;to-tag=x;from-tag=y")
