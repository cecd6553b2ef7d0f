"""Calls routed to the node that holds the phone's flow, over the cluster link (docs/scaling.md).

Two nodes, A (127.0.0.1) and B (127.0.0.2), each a real SbcCore + SipStack,
share an in-memory Redis (tests/cluster/test_store.py's FakeRedis) on one
memory clock. What B sends to A's cluster address is fed to A as if it came
over B's TLS connection to A's cluster link, and A's answers go back the same
way (:meth:`Pair.run`); everything else a node sends is what the phones and
peers outside receive. The same path over real sockets, with baresip and two
daemons, is tests/interop/test_cluster.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable, InboundContext, ListenerKey
from sbc.cluster import SharedStore
from sbc.cluster.codec import binding_key, relay_key
from sbc.cluster.hop import CLUSTER_HEADER, NOT_REACHED, ClusterAddress, binding_key_of
from sbc.cluster.routing import ClusterRouting
from sbc.config import parse_config, validate
from sbc.core import SbcCore
from sbc.identity import PeerIdentities
from sbc.registrar import Registrar
from sbc.registrar.relay import TOKEN_PREFIX
from sbc.routing import Router
from sbc.sip import parse_message
from sbc.sip.message import Request, Response, response_to
from sbc.sip.stack import Flow, Resolve, SipStack, StackOutput, Transmit
from tests.b2bua.test_call import SDP
from tests.cluster.test_store import FakeClient, FakeRedis

A_HOST, B_HOST = "127.0.0.1", "127.0.0.2"

NODE = """
sbc edge
 sbe
  local-domain lab.test
  adjacency sip phones
   signaling-address ipv4 {host}
   signaling-port 5061
   security trusted-encrypted
   sip-over-tls
   attach
  adjacency sip access
   signaling-address ipv4 {host}
   signaling-port 5060
   remote-address ipv4 10.1.0.0/16
   security untrusted
   attach
  adjacency sip trunk
   signaling-address ipv4 {host}
   signaling-port 5062
   remote-address ipv4 192.0.2.0/24
   transport tcp
   security trusted-unencrypted
   attach
  adjacency sip core
   signaling-address ipv4 {host}
   signaling-port 5064
   signaling-peer 10.0.0.5
   security trusted-unencrypted
   attach
{cluster}
  call-policy-set 1
   first-call-routing-table by-source
   rtg-src-adjacency-table by-source
    entry 1
     match-adjacency phones
     dst-adjacency core
     action complete
  active-call-policy-set 1
  store redis://127.0.0.1/0
  node {node}
"""

CLUSTER_LINK = """\
  adjacency sip cluster
   signaling-address ipv4 {host}
   signaling-port 5070
   remote-address ipv4 127.0.0.0/8
   security trusted-encrypted
   cluster-link identity nodes.lab.test
   attach"""

#: What each node's certificate names (the link's identity).
NODE_IDS = PeerIdentities(sip_domains=("nodes.lab.test",))
#: alice's phone on node A: a TLS connection with a certificate for lab.test and core.test.
PHONE = Flow("TLS", (A_HOST, 5061), ("192.0.2.50", 40123), 11)
PHONES = InboundContext(
    "phones",
    ListenerKey(A_HOST, 5061, "TLS"),
    PeerIdentities(sip_domains=("lab.test", "core.test")),
)
#: B's TLS connection to A's cluster link, seen from A and from B.
LINK_AT_A = Flow("TLS", (A_HOST, 5070), (B_HOST, 41000), 31)
LINK_AT_B = Flow("TLS", (B_HOST, 41000), (A_HOST, 5070), 41, "nodes.lab.test")


def context(node: str, adjacency: str, port: int, transport: str) -> InboundContext:
    host = A_HOST if node == "A" else B_HOST
    identities = NODE_IDS if adjacency == "cluster" else None
    return InboundContext(adjacency, ListenerKey(host, port, transport), identities)


def request(
    method: str,
    uri: str,
    *,
    via: str = "TCP 192.0.2.9:35000",
    from_uri: str = "sip:dave@trunk.test",
    to_uri: str | None = None,
    call_id: str = "call-1",
    cseq: int = 1,
    to_tag: str | None = None,
    contact: str | None = "<sip:dave@192.0.2.9:35000;transport=tcp>",
    extra: Sequence[str] = (),
    body: bytes = b"",
) -> Request:
    to_uri = to_uri or (from_uri if method == "REGISTER" else uri)
    to = f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else "")
    data = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{via};branch=z9hG4bK{method.lower()}{cseq}{abs(hash(call_id))};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{from_uri}>;tag=ftag\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        + (f"Contact: {contact}\r\n" if contact else "")
        + "".join(line + "\r\n" for line in extra)
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


class Node:
    """One SBC node: SbcCore + SipStack on the shared store, wired as sbc.service does."""

    def __init__(
        self,
        name: str,
        host: str,
        redis: FakeRedis,
        link: bool = True,
        worker: int = 0,
        own_link_port: int | None = None,
    ) -> None:
        self.name = name
        self.host = host
        text = NODE.format(
            host=host, node=name, cluster=CLUSTER_LINK.format(host=host) if link else ""
        )
        self.config = parse_config(text)
        validate(self.config, certificate_configured=True)
        self.table = AdjacencyTable(self.config.adjacencies)
        self.clock = redis.clock
        self.store = SharedStore(
            name,
            self.clock.seconds,
            worker=worker,
            count=lambda a, n: self.core.calls.count(a, n),
        )
        self.core = SbcCore(
            lambda: self.table,
            Router.from_config(self.config).route,
            local_domains=self.config.local_domains,
            registrar=Registrar(self.store.location),
        )
        self.stack = SipStack(self.core)
        self.core.stack = self.stack
        self.store.relayed = self.core.relay.bindings
        self.core.relay.store = self.store
        relay = self.core.relay
        # a worker process (own_link_port given) advertises its own cluster-link port
        own = None if own_link_port is None else (lambda shared: own_link_port)
        self.core.cluster = ClusterRouting(
            self.store, lambda: self.table, lambda: relay.tokens, own_link_port=own
        )
        self.core.calls.cluster_caller = self.core.cluster.caller
        FakeClient(redis, self.store).connect()

    def feed(self, message: Request | Response, flow: Flow, where: InboundContext) -> list[Any]:
        outputs = self.stack.receive(message.serialize(), flow, self.clock.seconds(), where)
        return self.collect(outputs)

    def collect(self, outputs: list[StackOutput]) -> list[tuple[Flow, Any]]:
        assert not [o for o in outputs if isinstance(o, Resolve)], "no next hop here needs DNS"
        return [(o.flow, parse_message(o.data)) for o in outputs if isinstance(o, Transmit)]

    def counter(self, adjacency: str, name: str) -> int:
        return self.core.calls.counters.snapshot().get(adjacency, {}).get(name, 0)


class Pair:
    """Nodes A and B on one FakeRedis; :meth:`run` carries the cluster link's messages."""

    def __init__(self, a_link: bool = True, b_link: bool = True) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.redis = FakeRedis(self.clock)
        self.a = Node("A", A_HOST, self.redis, a_link)
        self.b = Node("B", B_HOST, self.redis, b_link)
        #: every message that crossed the cluster link: (direction, flow sent on, message)
        self.hops: list[tuple[str, Flow, Any]] = []

    def hop_requests(self, method: str = "INVITE") -> list[tuple[str, Flow, Request]]:
        """The requests of ``method`` that crossed the cluster link."""
        return [(d, f, m) for d, f, m in self.hops if isinstance(m, Request) and m.method == method]

    def heartbeats(self) -> None:
        """Each node writes its heartbeat, then reads the others' (cluster addresses)."""
        for node in (self.a, self.b, self.a):
            node.store.tick()

    def run(
        self, node: Node, message: Request | Response, flow: Flow, where: InboundContext
    ) -> list[tuple[str, Flow, Any]]:
        """Feed ``message`` to ``node``; carry the cluster link; what left for the outside."""
        queue: list[tuple[Node, Request | Response, Flow, InboundContext]] = [
            (node, message, flow, where)
        ]
        outside: list[tuple[str, Flow, Any]] = []
        while queue:
            at, message, flow, where = queue.pop(0)
            for sent_on, sent in at.feed(message, flow, where):
                if at is self.b and sent_on.remote == (A_HOST, 5070):
                    self.hops.append(("B->A", sent_on, sent))
                    queue.append((self.a, sent, LINK_AT_A, context("A", "cluster", 5070, "TLS")))
                elif at is self.a and sent_on.connection_id == LINK_AT_A.connection_id:
                    self.hops.append(("A->B", sent_on, sent))
                    queue.append((self.b, sent, LINK_AT_B, context("B", "cluster", 5070, "TLS")))
                else:
                    outside.append((at.name, sent_on, sent))
        return outside

    def register_alice(self, q: str = "") -> Request:
        """alice's phone registers over TLS on A; B hears of it; heartbeats run."""
        register = request(
            "REGISTER",
            "sip:lab.test;transport=tls",
            via="TLS 192.0.2.50:5061",
            from_uri="sip:alice@lab.test",
            contact=f"<sip:alice-1@192.0.2.50:5061;transport=tls>{q};expires=600",
            call_id="reg-alice",
        )
        [(_, _, ok)] = self.run(self.a, register, PHONE, PHONES)
        assert isinstance(ok, Response) and ok.status == 200, ok
        self.redis.deliver()
        self.heartbeats()
        return register


def only(sent: list[tuple[str, Flow, Any]], kind: str) -> tuple[str, Flow, Any]:
    found = [
        (n, f, m)
        for n, f, m in sent
        if (isinstance(m, Request) and m.method == kind)
        or (isinstance(m, Response) and str(m.status) == kind)
    ]
    assert len(found) == 1, f"expected one {kind} in {sent}"
    return found[0]


TRUNK_AT_B = Flow("TCP", (B_HOST, 5062), ("192.0.2.9", 35000), 21)
ACCESS_AT_B = Flow("UDP", (B_HOST, 5060), ("10.1.1.1", 5070))


class CallThroughTheHolderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.register_alice()

    def call_alice(self, uri: str = "sip:alice@lab.test", **kwargs: Any) -> Any:
        invite = request("INVITE", uri, body=SDP, **kwargs)
        return invite, self.pair.run(
            self.pair.b, invite, TRUNK_AT_B, context("B", "trunk", 5062, "TCP")
        )

    def test_b_knows_where_a_takes_calls(self) -> None:
        self.assertEqual(self.pair.b.store.peers, {"A": ClusterAddress(A_HOST, 5070)})
        self.assertEqual(self.pair.a.store.peers, {"B": ClusterAddress(B_HOST, 5070)})

    def test_a_trunk_call_on_b_reaches_the_phone_over_its_own_connection(self) -> None:
        pair = self.pair
        invite, sent = self.call_alice()
        # B to A: the cluster link, over TLS to A's advertised address, naming the binding
        [(direction, hop_flow, hop)] = pair.hop_requests()
        self.assertEqual(direction, "B->A")
        self.assertEqual(
            (hop_flow.transport, hop_flow.local, hop_flow.remote, hop_flow.server_name),
            ("TLS", (B_HOST, 5070), (A_HOST, 5070), "nodes.lab.test"),
        )
        self.assertEqual(hop_flow.adjacency, "cluster")
        [binding] = pair.a.store.location.lookup("alice@lab.test", pair.clock.seconds())
        self.assertEqual(binding_key_of(hop.uri.user), binding_key(binding))
        self.assertEqual((hop.uri.scheme, hop.uri.host, hop.uri.port), ("sip", A_HOST, 5070))
        self.assertEqual(
            hop.headers.get_all(CLUSTER_HEADER),
            ["node=B;inbound=trunk;caller=trusted;link=127.0.0.2:5070"],
        )
        self.assertEqual(hop.body, SDP)
        # A to the phone: over the connection alice registered on, to her contact
        _, to_phone, phone_invite = only(sent, "INVITE")
        self.assertEqual(to_phone.connection_id, PHONE.connection_id)
        self.assertTrue(to_phone.pinned)
        self.assertEqual(str(phone_invite.uri), "sip:alice-1@192.0.2.50:5061;transport=tls")
        self.assertNotIn(CLUSTER_HEADER, phone_invite.headers)
        self.assertEqual(phone_invite.to.uri, invite.to.uri)
        self.assertEqual(phone_invite.from_.uri, invite.from_.uri)
        # the phone rings and answers: the caller hears it through B
        ringing = response_to(phone_invite, 180, to_tag="ph")
        sent = pair.run(pair.a, ringing, PHONE, PHONES)
        self.assertEqual([(n, m.status) for n, _, m in sent], [("B", 180)])
        ok = response_to(phone_invite, 200, to_tag="ph")
        ok.headers.add("Contact", "<sip:alice-1@192.0.2.50:5061;transport=tls>")
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = SDP
        [(node, to_caller, answered)] = pair.run(pair.a, ok, PHONE, PHONES)
        self.assertEqual((node, to_caller.connection_id, answered.status), ("B", 21, 200))
        self.assertEqual(answered.body, SDP)
        # the caller's ACK reaches the phone; the phone hangs up; the caller hears the BYE
        ack = request("ACK", str(invite.uri), to_tag=answered.to.tag, contact=None)
        sent = pair.run(pair.b, ack, TRUNK_AT_B, context("B", "trunk", 5062, "TCP"))
        [(node, ack_flow, phone_ack)] = sent
        self.assertEqual((node, ack_flow.connection_id, phone_ack.method), ("A", 11, "ACK"))
        bye = request(
            "BYE",
            "sip:127.0.0.1:5061;transport=tls",
            via="TLS 192.0.2.50:5061",
            from_uri="sip:alice@lab.test",
            to_uri="sip:dave@trunk.test",
            call_id=phone_invite.call_id,
            cseq=1,
            contact=None,
        )
        bye.headers.set("From", ok.to.serialize())  # the phone's side of its dialog
        bye.headers.set("To", phone_invite.from_.serialize())
        [(node, _, caller_bye)] = pair.run(pair.a, bye, PHONE, PHONES)
        self.assertEqual((node, caller_bye.method), ("B", "BYE"))
        # A sends it over B's connection while it is open, else to B's cluster link
        [(_, back, _)] = pair.hop_requests("BYE")
        self.assertEqual(
            (back.connection_id, back.remote, back.server_name, back.pinned),
            (LINK_AT_A.connection_id, (B_HOST, 5070), "nodes.lab.test", False),
        )
        done = response_to(caller_bye, 200)
        [(node, _, phone_ok)] = pair.run(
            pair.b, done, TRUNK_AT_B, context("B", "trunk", 5062, "TCP")
        )
        self.assertEqual((node, phone_ok.status), ("A", 200))
        self.assertEqual(pair.b.core.calls.calls, {})
        self.assertEqual(pair.a.core.calls.calls, {})
        self.assertEqual(pair.b.counter("cluster", "attempts"), 1)
        self.assertEqual(pair.a.counter("cluster", "calls-started"), 1)
        self.assertEqual(pair.b.counter("phones", "held-elsewhere"), 0)

    def test_the_callers_cancel_reaches_the_phone(self) -> None:
        pair = self.pair
        invite, sent = self.call_alice()
        _, _, phone_invite = only(sent, "INVITE")
        pair.run(pair.a, response_to(phone_invite, 180, to_tag="ph"), PHONE, PHONES)
        cancel = request("CANCEL", str(invite.uri), contact=None)
        cancel.headers.set("Via", invite.headers.get("Via") or "")
        sent = pair.run(pair.b, cancel, TRUNK_AT_B, context("B", "trunk", 5062, "TCP"))
        to_caller = [m.status for n, _, m in sent if n == "B"]
        self.assertEqual(to_caller, [200, 487])  # the CANCEL's 200, the INVITE's 487
        [(to_phone, phone_cancel)] = [(f, m) for n, f, m in sent if n == "A"]
        self.assertEqual((to_phone.connection_id, phone_cancel.method), (11, "CANCEL"))
        pair.run(pair.a, response_to(phone_cancel, 200), PHONE, PHONES)
        pair.run(pair.a, response_to(phone_invite, 487, to_tag="ph"), PHONE, PHONES)
        self.assertEqual((pair.a.core.calls.calls, pair.b.core.calls.calls), ({}, {}))

    def test_a_sips_call_keeps_its_scheme_across(self) -> None:
        """The cluster Request-URI is sips:; A reaches the sip: contact over sip-over-tls."""
        _, sent = self.call_alice("sips:alice@lab.test")
        [(_, _, hop)] = self.pair.hop_requests()
        self.assertEqual(hop.uri.scheme, "sips")
        _, to_phone, phone_invite = only(sent, "INVITE")
        self.assertEqual((to_phone.connection_id, phone_invite.uri.scheme), (11, "sip"))

    def test_an_untrusted_caller_stays_untrusted_on_a(self) -> None:
        """From the untrusted access adjacency: A refuses the TLS phone (480), B tells the caller.

        The caller's own Sbc-Cluster header claims a trusted caller: it is not
        copied, B writes what it knows.
        """
        pair = self.pair
        invite = request(
            "INVITE",
            "sip:alice@lab.test",
            via="UDP 10.1.1.1:5070",
            from_uri="sip:eve@lab.test",
            contact="<sip:eve@10.1.1.1:5070>",
            extra=[f"{CLUSTER_HEADER}: node=X;inbound=trunk;caller=trusted"],
            body=SDP,
        )
        sent = pair.run(pair.b, invite, ACCESS_AT_B, context("B", "access", 5060, "UDP"))
        [(_, _, hop)] = pair.hop_requests()
        self.assertEqual(
            hop.headers.get_all(CLUSTER_HEADER),
            ["node=B;inbound=access;caller=untrusted;link=127.0.0.2:5070"],
        )
        [(_, _, refused)] = [
            h for h in pair.hops if isinstance(h[2], Response) and h[2].status >= 300
        ]
        self.assertEqual((refused.status, refused.headers.get(CLUSTER_HEADER)), (480, NOT_REACHED))
        self.assertEqual(
            [(n, m.status) for n, _, m in sent if isinstance(m, Response)], [("B", 100), ("B", 480)]
        )
        self.assertFalse([m for n, _, m in sent if isinstance(m, Request)])
        self.assertNotIn(CLUSTER_HEADER, sent[-1][2].headers)
        self.assertEqual(pair.a.counter("cluster", "calls-refused:no-route"), 1)
        self.assertEqual(pair.b.counter("cluster", "hunt-skip:not-reached"), 1)
        self.assertEqual((pair.a.core.calls.calls, pair.b.core.calls.calls), ({}, {}))

    def test_an_untrusted_caller_reaches_a_plain_phone_across(self) -> None:
        """The same caller reaches bob, registered on A's untrusted access adjacency."""
        pair = self.pair
        register = request(
            "REGISTER",
            "sip:lab.test",
            via="UDP 10.1.2.3:5060",
            from_uri="sip:bob@lab.test",
            contact="<sip:bob@10.1.2.3:5060>",
            call_id="reg-bob",
        )
        bob = Flow("UDP", (A_HOST, 5060), ("10.1.2.3", 5060))
        [(_, _, ok)] = pair.run(pair.a, register, bob, context("A", "access", 5060, "UDP"))
        self.assertEqual(ok.status, 200)
        pair.redis.deliver()
        invite = request(
            "INVITE",
            "sip:bob@lab.test",
            via="UDP 10.1.1.1:5070",
            from_uri="sip:eve@lab.test",
            contact="<sip:eve@10.1.1.1:5070>",
            body=SDP,
        )
        sent = pair.run(pair.b, invite, ACCESS_AT_B, context("B", "access", 5060, "UDP"))
        _, to_bob, bob_invite = only(sent, "INVITE")
        self.assertEqual(
            (to_bob.remote, str(bob_invite.uri)), (("10.1.2.3", 5060), "sip:bob@10.1.2.3:5060")
        )

    def test_an_untrusted_sips_call_never_leaves_b(self) -> None:
        invite = request(
            "INVITE",
            "sips:alice@lab.test",
            via="UDP 10.1.1.1:5070",
            contact="<sip:eve@10.1.1.1:5070>",
        )
        sent = self.pair.run(self.pair.b, invite, ACCESS_AT_B, context("B", "access", 5060, "UDP"))
        self.assertEqual([m.status for _, _, m in sent], [100, 403])
        self.assertEqual(self.pair.hops, [])

    def test_a_contact_a_no_longer_holds_is_hunted_past(self) -> None:
        """A's binding went (connection closed) before B heard: not-reached, B hunts on."""
        pair = self.pair
        pair.redis.channel.clear()
        # alice also registered through B (UDP, lower q)
        register = request(
            "REGISTER",
            "sip:lab.test",
            via="UDP 10.1.2.4:5060",
            from_uri="sip:alice@lab.test",
            contact="<sip:alice-2@10.1.2.4:5060>;q=0.5",
            call_id="reg-alice-2",
        )
        second = Flow("UDP", (B_HOST, 5060), ("10.1.2.4", 5060))
        [(_, _, ok)] = pair.run(pair.b, register, second, context("B", "access", 5060, "UDP"))
        self.assertEqual(ok.status, 200)
        pair.a.core.connection_closed(PHONE.connection_id or 0, pair.clock.seconds())
        pair.a.stack.connection_closed(PHONE.connection_id or 0, pair.clock.seconds())
        self.assertEqual(len(pair.b.store.location.lookup("alice@lab.test", 0.0)), 2)
        _, sent = self.call_alice()
        [(_, _, refused)] = [
            h for h in pair.hops if isinstance(h[2], Response) and h[2].status >= 300
        ]
        self.assertEqual((refused.status, refused.headers.get(CLUSTER_HEADER)), (480, NOT_REACHED))
        _, to_second, second_invite = only(sent, "INVITE")
        self.assertEqual(to_second.remote, ("10.1.2.4", 5060))
        self.assertEqual(str(second_invite.uri), "sip:alice-2@10.1.2.4:5060")

    def test_the_holder_cannot_be_reached(self) -> None:
        """The connection to A fails: the contact is unavailable (480), like a closed flow."""
        pair = self.pair
        invite = request("INVITE", "sip:alice@lab.test", body=SDP)
        outputs = pair.b.stack.receive(
            invite.serialize(), TRUNK_AT_B, pair.clock.seconds(), context("B", "trunk", 5062, "TCP")
        )
        [hop] = [o for o in outputs if isinstance(o, Transmit) and o.flow.adjacency == "cluster"]
        assert hop.transaction_key is not None
        failed = pair.b.collect(
            pair.b.stack.transport_error(hop.transaction_key, pair.clock.seconds())
        )
        self.assertEqual([m.status for _, m in failed], [480])
        self.assertEqual(pair.b.counter("cluster", "hunt-skip:transport"), 1)


class WithoutAClusterLinkTests(SynchronousTestCase):
    def test_no_link_on_b_keeps_the_480(self) -> None:
        pair = Pair(b_link=False)
        pair.register_alice()
        invite = request("INVITE", "sip:alice@lab.test", body=SDP)
        sent = pair.run(pair.b, invite, TRUNK_AT_B, context("B", "trunk", 5062, "TCP"))
        self.assertEqual([m.status for _, _, m in sent], [100, 480])
        self.assertEqual(pair.hops, [])
        self.assertEqual(pair.b.counter("phones", "held-elsewhere"), 1)

    def test_a_without_a_link_advertises_none(self) -> None:
        pair = Pair(a_link=False)
        pair.register_alice()
        self.assertEqual(pair.b.store.peers, {})
        invite = request("INVITE", "sip:alice@lab.test", body=SDP)
        sent = pair.run(pair.b, invite, TRUNK_AT_B, context("B", "trunk", 5062, "TCP"))
        self.assertEqual([m.status for _, _, m in sent], [100, 480])
        self.assertEqual(pair.b.counter("phones", "held-elsewhere"), 1)

    def test_another_worker_without_a_cluster_link_is_skipped(self) -> None:
        """Worker processes of a node without a cluster link: a sibling's TCP/TLS phone
        cannot be reached (its connection lives in the other process): held-elsewhere."""
        clock = Clock()
        clock.advance(1000)
        redis = FakeRedis(clock)
        caller = Node("B", B_HOST, redis, link=False, worker=1)
        holder = Node("B", B_HOST, redis, link=False, worker=2)
        register_carol(holder)
        redis.deliver()
        invite = request("INVITE", "sip:carol@lab.test", body=SDP)
        sent = caller.collect(
            caller.stack.receive(
                invite.serialize(), TRUNK_AT_B, clock.seconds(), context("B", "trunk", 5062, "TCP")
            )
        )
        self.assertEqual([m.status for _, m in sent], [100, 480])
        self.assertEqual(caller.counter("phones", "held-elsewhere"), 1)


CAROL = Flow("TLS", (B_HOST, 5061), ("192.0.2.51", 40124), 12)


def register_carol(node: Node) -> None:
    """carol's phone registers over TLS on ``node``."""
    register = request(
        "REGISTER",
        "sip:lab.test;transport=tls",
        via="TLS 192.0.2.51:5061",
        from_uri="sip:carol@lab.test",
        contact="<sip:carol@192.0.2.51:5061;transport=tls>",
        call_id="reg-carol",
    )
    [(_, ok)] = node.feed(register, CAROL, PHONES)
    assert isinstance(ok, Response) and ok.status == 200, ok


class SiblingWorkerTests(SynchronousTestCase):
    """Worker processes 1 and 2 of node B, each advertising its own cluster-link port."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.redis = FakeRedis(self.clock)
        self.w1 = Node("B", B_HOST, self.redis, worker=1, own_link_port=45001)
        self.w2 = Node("B", B_HOST, self.redis, worker=2, own_link_port=45002)
        register_carol(self.w2)
        self.redis.deliver()
        for node in (self.w1, self.w2, self.w1):
            node.store.tick()

    def test_each_worker_advertises_its_own_port(self) -> None:
        self.assertEqual(self.w1.store.peers, {"B/2": ClusterAddress(B_HOST, 45002)})
        self.assertEqual(self.w2.store.peers, {"B/1": ClusterAddress(B_HOST, 45001)})

    def test_a_worker_whose_own_port_is_not_open_advertises_nothing(self) -> None:
        """Never the shared port: a call sent there would reach any worker."""
        node = Node("B", B_HOST, self.redis, worker=3)
        assert node.core.cluster is not None
        node.core.cluster.own_link_port = lambda shared: None
        self.assertIsNone(node.core.cluster.advertised())

    def test_a_call_for_a_siblings_phone_goes_to_that_worker_and_over_the_phones_connection(
        self,
    ) -> None:
        w1, w2 = self.w1, self.w2
        invite = request("INVITE", "sip:carol@lab.test", body=SDP)
        sent = w1.feed(invite, TRUNK_AT_B, context("B", "trunk", 5062, "TCP"))
        [hop_flow, hop] = next([f, m] for f, m in sent if isinstance(m, Request))
        # to worker 2's own port, out of the cluster link, checked against the link identity
        self.assertEqual(
            (hop_flow.transport, hop_flow.remote, hop_flow.server_name, hop_flow.adjacency),
            ("TLS", (B_HOST, 45002), "nodes.lab.test", "cluster"),
        )
        self.assertEqual((hop.uri.host, hop.uri.port), (B_HOST, 45002))
        [binding] = w2.store.location.lookup("carol@lab.test", self.clock.seconds())
        self.assertEqual(binding_key_of(hop.uri.user), binding_key(binding))
        self.assertEqual(
            hop.headers.get_all(CLUSTER_HEADER),
            ["node=B/1;inbound=trunk;caller=trusted;link=127.0.0.2:45001"],
        )
        self.assertEqual(w1.counter("phones", "held-elsewhere"), 0)
        # worker 2 takes it on its link (the own port is classified as the shared one)
        arrived = Flow("TLS", (B_HOST, 45002), (B_HOST, 41500), 77)
        out = w2.feed(hop, arrived, context("B", "cluster", 5070, "TLS"))
        [(to_phone, phone_invite)] = [(f, m) for f, m in out if isinstance(m, Request)]
        self.assertEqual(to_phone.connection_id, CAROL.connection_id)
        self.assertEqual(str(phone_invite.uri), "sip:carol@192.0.2.51:5061;transport=tls")
        self.assertNotIn(CLUSTER_HEADER, phone_invite.headers)
        self.assertEqual(w2.counter("cluster", "calls-started"), 1)

    def test_a_worker_never_hands_a_call_on_to_a_sibling(self) -> None:
        """A call from the link for a binding worker 2 holds, arriving at worker 1: not
        reached (worker 1 sends nothing on), so the caller's side hunts on."""
        [binding] = self.w1.store.location.lookup("carol@lab.test", self.clock.seconds())
        target = self.w1.core.cluster.remote_target("B", 2, binding_key(binding), "sip")  # type: ignore[union-attr]
        assert not isinstance(target, str)
        hop = request(
            "INVITE",
            str(target.uri),
            body=SDP,
            extra=[f"{CLUSTER_HEADER}: node=B/2;inbound=trunk;caller=trusted"],
        )
        arrived = Flow("TLS", (B_HOST, 45001), (B_HOST, 41501), 78)
        out = self.w1.feed(hop, arrived, context("B", "cluster", 5070, "TLS"))
        statuses = [m.status for _, m in out if isinstance(m, Response)]
        self.assertEqual(statuses, [100, 480])
        [final] = [m for _, m in out if isinstance(m, Response) and m.status == 480]
        self.assertEqual(final.headers.get(CLUSTER_HEADER), NOT_REACHED)
        self.assertEqual([m for _, m in out if isinstance(m, Request)], [])


class ClusterLinkGuardTests(SynchronousTestCase):
    """What node A accepts from its cluster link."""

    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.register_alice()
        [binding] = self.pair.a.store.location.lookup("alice@lab.test", self.pair.clock.seconds())
        from sbc.cluster.hop import cluster_user

        self.uri = f"sip:{cluster_user(binding_key(binding))}@{A_HOST}:5070"
        self.header = f"{CLUSTER_HEADER}: node=B;inbound=trunk;caller=trusted"

    def at_a(self, message: Request, where: InboundContext | None = None) -> list[Any]:
        where = where or context("A", "cluster", 5070, "TLS")
        return self.pair.a.feed(message, LINK_AT_A, where)

    def test_a_node_whose_certificate_does_not_name_the_cluster_is_dropped(self) -> None:
        invite = request("INVITE", self.uri, extra=[self.header], body=SDP)
        stranger = InboundContext(
            "cluster", ListenerKey(A_HOST, 5070, "TLS"), PeerIdentities(sip_domains=("trunk.test",))
        )
        self.assertEqual(self.at_a(invite, stranger), [])
        self.assertEqual(self.pair.a.core.calls.calls, {})

    def test_without_the_header_400(self) -> None:
        sent = self.at_a(request("INVITE", self.uri, body=SDP))
        self.assertEqual([m.status for _, m in sent], [100, 400])

    def test_no_register_over_the_link(self) -> None:
        register = request("REGISTER", "sip:lab.test", from_uri="sip:alice@lab.test")
        [(_, refused)] = self.at_a(register)
        self.assertEqual(refused.status, 403)

    def test_only_a_binding_a_holds(self) -> None:
        for uri, status in (
            ("sip:alice@lab.test", 404),
            (f"sip:sbcc-cmVnOm1hbGxvcnlAbGFiLnRlc3Q6MTIz@{A_HOST}:5070", 480),
        ):
            sent = self.at_a(request("INVITE", uri, extra=[self.header], body=SDP))
            [refused] = [m for _, m in sent if m.status >= 300]
            self.assertEqual(
                (refused.status, refused.headers.get(CLUSTER_HEADER)), (status, NOT_REACHED)
            )

    def test_a_cluster_uri_from_another_adjacency_reaches_no_phone(self) -> None:
        invite = request("INVITE", self.uri, extra=[self.header], body=SDP)
        trunk = Flow("TCP", (A_HOST, 5062), ("192.0.2.9", 35000), 22)
        sent = self.pair.a.feed(invite, trunk, context("A", "trunk", 5062, "TCP"))
        self.assertEqual([m.status for _, m in sent], [100, 480])


class RelayedTokenTests(SynchronousTestCase):
    """A relayed registration (access SBC) held by A; the registrar's call arrives at B."""

    def test_the_call_for_the_token_goes_through_a(self) -> None:
        pair = Pair()
        register = request(
            "REGISTER",
            "sip:core.test",
            via="TLS 192.0.2.50:5061",
            from_uri="sip:carol@core.test",
            contact="<sip:carol@192.0.2.50:5061;transport=tls>;expires=600",
            call_id="reg-carol",
        )
        [(node, to_registrar, relayed)] = pair.run(pair.a, register, PHONE, PHONES)
        self.assertEqual((node, to_registrar.remote), ("A", ("10.0.0.5", 5060)))
        ok = response_to(relayed, 200, to_tag="reg")
        ok.headers.add("Contact", relayed.headers.get("Contact") or "")
        core_at_a = Flow("UDP", (A_HOST, 5064), ("10.0.0.5", 5060))
        [(_, _, phone_ok)] = pair.run(pair.a, ok, core_at_a, context("A", "core", 5064, "UDP"))
        self.assertEqual(phone_ok.status, 200)
        [token] = pair.a.core.relay.tokens
        self.assertTrue(token.startswith(TOKEN_PREFIX))
        pair.redis.deliver()
        pair.heartbeats()
        invite = request(
            "INVITE",
            f"sip:{token}@{B_HOST}:5064",
            via="UDP 10.0.0.5:5060",
            from_uri="sip:dave@core.test",
            to_uri="sip:carol@core.test",
            contact="<sip:dave@10.0.0.5:5060>",
            body=SDP,
        )
        core_at_b = Flow("UDP", (B_HOST, 5064), ("10.0.0.5", 5060))
        sent = pair.run(pair.b, invite, core_at_b, context("B", "core", 5064, "UDP"))
        [(_, _, hop)] = pair.hop_requests()
        self.assertEqual(binding_key_of(hop.uri.user), relay_key(token))
        _, to_phone, phone_invite = only(sent, "INVITE")
        self.assertEqual(to_phone.connection_id, PHONE.connection_id)
        self.assertEqual(str(phone_invite.uri), "sip:carol@192.0.2.50:5061;transport=tls")
