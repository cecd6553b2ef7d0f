"""Two SBC nodes and a call routed to the node that holds the phone (issue 13 items 3 and 4).

Node A listens on 127.0.0.1, node B on 127.0.0.2; both share one real
``redis-server`` started by the test (tests/interop/test_store.py's
:class:`RedisServer`) and are linked by a cluster adjacency
(``cluster-link``, docs/scaling.md). A phone registers on A; a SIPp caller
calls it through B's trunk; B hands the call to A over the cluster link and
A delivers it over the phone's own connection:

- baresip over TLS, the cluster link over mutual TLS (both nodes present the
  lab certificate, which names ``sbc.lab.test``, the link's identity);
- a SIPp phone over UDP, the cluster link a private trusted-unencrypted TCP
  link;
- a cluster link whose identity A's certificate does not carry: the TLS
  handshake fails and the caller gets 480, nothing reaches the phone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer

from tests.interop.calls_harness import SippProcess, start_sipp, wait_port
from tests.interop.harness import (
    HOST,
    AdjacencySpec,
    SbcProcess,
    get_reactor,
    launch_sbc,
    make_pki,
    pause,
    within,
)
from tests.interop.phones import Baresip, parse_registrations, phone_certificate
from tests.interop.test_cli import CliTestCase, cli_socket
from tests.interop.test_store import NODE_B_HOST, NodeTestCase, RedisServer
from tests.support.peers import free_port

#: The name on the lab certificate both nodes present (sip:sbc.lab.test).
NODES_IDENTITY = "sbc.lab.test"


def node_config(
    name: str,
    host: str,
    specs: Sequence[AdjacencySpec],
    redis_port: int | None,
    link: Sequence[str],
    sbe: Sequence[str] = (),
) -> str:
    """Node ``name`` on ``host``: phones (TLS), access (UDP), trunk (TCP), the cluster link.

    ``redis_port`` None: no ``store`` line (worker processes share the supervisor's).
    """
    by_name = {spec.name: spec for spec in specs}
    lines = [
        f"! node {name} of tests/interop/test_cluster.py",
        "sbc edge",
        " sbe",
        "  local-domain lab.test",
        "  adjacency sip phones",
        f"   signaling-address ipv4 {host}",
        f"   signaling-port {by_name['phones'].port}",
        "   remote-address ipv4 127.0.0.0/8",
        "   security trusted-encrypted",
        "   sip-over-tls",
        "   attach",
        "  adjacency sip access",
        f"   signaling-address ipv4 {host}",
        f"   signaling-port {by_name['access'].port}",
        "   transport udp",
        "   remote-address ipv4 127.0.0.0/8",
        "   security untrusted",
        "   attach",
        "  adjacency sip trunk",
        f"   signaling-address ipv4 {host}",
        f"   signaling-port {by_name['trunk'].port}",
        "   transport tcp",
        "   remote-address ipv4 127.0.0.0/8",
        "   security trusted-unencrypted",
        "   attach",
        "  adjacency sip cluster",
        f"   signaling-address ipv4 {host}",
        f"   signaling-port {by_name['cluster'].port}",
        "   remote-address ipv4 127.0.0.0/8",
        *(f"   {line}" for line in link),
        "   attach",
        *([f"  store redis://127.0.0.1:{redis_port}/0"] if redis_port is not None else []),
        f"  node {name}",
        *(f"  {line}" for line in sbe),
        "",
    ]
    return "\n".join(lines)


#: The cluster link over mutual TLS.
TLS_LINK = ("security trusted-encrypted", f"cluster-link identity {NODES_IDENTITY}")
#: A link whose identity the lab certificate does not carry.
WRONG_IDENTITY = ("security trusted-encrypted", "cluster-link identity other.lab.test")
#: The cluster link on a private network: plain TCP, trusted.
PRIVATE_LINK = ("transport tcp", "security trusted-unencrypted", "cluster-link")


class ClusterCallTests(NodeTestCase):
    """A phone registered on node A, called through node B."""

    @defer.inlineCallbacks
    def start_nodes(
        self,
        link: Sequence[str],
        b_link: Sequence[str] | None = None,
        b_sbe: Sequence[str] = (),
        a_workers: int = 1,
    ) -> Any:
        """Redis, then A and B with ``link`` (B with ``b_link`` when given); both see the other.

        ``b_sbe``: more lines under B's ``sbe`` (a ``limits`` block);
        ``a_workers``: A runs that many worker processes (each advertises
        its own cluster-link port, as holder ``A/W``).
        """
        self.redis = RedisServer(self, free_port())
        yield self.redis.start()
        self.pki = make_pki(self.mktemp())
        extra = ("--workers", str(a_workers)) if a_workers > 1 else ()
        self.a = yield self.start_node("A", HOST, link, extra=extra)
        self.b = yield self.start_node("B", NODE_B_HOST, b_link or link, b_sbe)
        # each node learns the other's cluster address from its heartbeat (every 2 s)
        if a_workers > 1:
            for index in range(1, a_workers + 1):
                yield within(
                    self.b.child.output_contains(f"node A/{index} takes calls".encode()),
                    15.0,
                    f"node B to learn where worker {index} of node A takes calls",
                )
            return
        address = f"{HOST}:{self.a.port('cluster')}"
        yield within(
            self.b.child.output_contains(
                f"node A takes calls for its phones at {address}".encode()
            ),
            15.0,
            "node B to learn where node A takes calls",
        )

    @defer.inlineCallbacks
    def start_node(
        self,
        name: str,
        host: str,
        link: Sequence[str],
        sbe: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> Any:
        specs = [
            AdjacencySpec("phones", "trusted-encrypted", port=free_port()),
            AdjacencySpec("access", "untrusted", "udp", port=free_port()),
            AdjacencySpec("trunk", "trusted-unencrypted", "tcp", port=free_port()),
            AdjacencySpec(
                "cluster",
                "trusted-encrypted"
                if "security trusted-encrypted" in link
                else "trusted-unencrypted",
                "tcp",
                port=free_port(),
            ),
        ]
        text = node_config(name, host, specs, self.redis.port, link, sbe)
        extra = list(extra)
        if link == WRONG_IDENTITY:
            # a node's own certificate must carry its link's identity (checked at
            # start): this one carries both names, the other node's only the usual one
            cert, key = self.pki.issue(
                f"other-{name}",
                NODES_IDENTITY,
                sip_uris=[f"sip:{NODES_IDENTITY}", "sip:other.lab.test"],
                dns_names=[NODES_IDENTITY, "other.lab.test"],
            )
            extra += ["--certificate", cert, "--private-key", key]
        sbc = yield launch_sbc(self, self.pki, specs, text, extra)
        yield within(sbc.child.output_contains(b"store connected"), 15.0, f"node {name}'s store")
        return sbc

    @defer.inlineCallbacks
    def wait_closed_link(self, sbc: SbcProcess) -> Any:
        """Poll ``show ... statistics`` until the cluster adjacency counts a closed connection."""
        deadline = get_reactor().seconds() + 10.0
        text = ""
        while get_reactor().seconds() < deadline:
            text = yield self.show(sbc, "statistics")
            _, _, cluster = text.partition("Adjacency: cluster")
            section = cluster.split("Adjacency:")[0]
            if re.search(r"^\s*connections-closed\s+[1-9]", section, re.MULTILINE):
                return text
            yield pause(0.3)
        self.fail(f"timed out waiting for the link connection to close:\n{text}")

    def caller(self, scenario: str, ruri: str) -> SippProcess:
        """A SIPp caller over TCP into node B's trunk."""
        return start_sipp(
            self,
            scenario,
            remote_port=self.b.port("trunk"),
            remote_host=NODE_B_HOST,
            transport="t1",
            keys={
                "ruri": ruri,
                "to_uri": ruri,
                "from_uri": "sip:dave@trunk.test",
                "contact_scheme": "sip",
            },
            seconds=20,
        )

    def context(self, *peers: Any) -> str:
        parts = [peer.describe() for peer in peers]
        parts += [
            f"--- node {n} log tail:\n{s.tail(40)}" for n, s in (("A", self.a), ("B", self.b))
        ]
        return "\n".join(parts)

    @defer.inlineCallbacks
    def test_baresip_on_a_called_through_b_over_a_tls_cluster_link(self) -> Any:
        """The call connects over baresip's own TLS connection to A; both nodes list alice."""
        yield self.start_nodes(TLS_LINK)
        phone = yield self.registered_baresip()
        _, listed = yield self.registrations(self.b)
        self.assertRegex(listed.splitlines()[0], r"Registrar\s+Node$")
        self.assertRegex(listed.splitlines()[2], r"phones\s+TLS 127\.0\.0\.1:\d+ .* A\s*$")
        caller = self.caller("phones_uac.xml", "sip:alice@lab.test")
        yield phone.wait_call_established()
        result = yield caller.wait(40, "the SIPp caller")
        self.assertEqual(result.exit_code, 0, caller.describe(result) + self.context(phone))
        yield phone.wait_call_closed()
        # the INVITE reached baresip over the connection its REGISTER used, from node A
        messages = phone.sip_messages()
        register = next(m for m in messages if m.sent and m.is_request("REGISTER"))
        invite = next(m for m in messages if not m.sent and m.is_request("INVITE"))
        self.assertEqual(invite.destination, register.source, phone.describe())
        self.assertEqual(invite.source, f"{HOST}:{self.a.port('phones')}", phone.describe())
        self.assertRegex(
            invite.first_line, r"^INVITE sip:alice-\w+@127\.0\.0\.1:\d+;transport=tls "
        )
        self.assertEqual(invite.header("Sbc-Cluster"), [], phone.describe())
        # B sent it out of its cluster link, A took it from there with B's caller class
        statistics_b = yield self.show(self.b, "statistics")
        cluster_b = statistics_b.split("Adjacency: cluster", 1)[1]
        self.assertRegex(cluster_b, r"attempts\s+1", statistics_b)
        yield within(
            self.a.child.output_contains(b"INVITE from cluster (trusted)"), 10.0, "A's call log"
        )
        # either node lists alice, held by A
        for sbc in (self.a, self.b):
            text = yield self.show(sbc, "registrations")
            [alice] = parse_registrations(text)
            self.assertEqual(alice.aor, "alice@lab.test")
            self.assertTrue(text.splitlines()[2].rstrip().endswith(" A"), text)
        # A stops cleanly: alice leaves B's view at once, and a call to her gets 480
        ended = self.a.child.output_contains(b"Server Shut Down.")
        self.a.child.process.signalProcess("TERM")
        yield within(ended, 15.0, "node A to stop")
        yield self.wait_registrations(self.b, lambda rows: rows == [], 10.0, "alice to go from B")
        refused = self.caller("phones_uac_480.xml", "sip:alice@lab.test")
        result = yield refused.wait(40, "the refused caller")
        self.assertEqual(result.exit_code, 0, refused.describe(result) + self.b.tail(40))

    @defer.inlineCallbacks
    def test_baresip_on_a_worker_of_a_called_through_b(self) -> Any:
        """Node A runs 2 worker processes: B's calls go to the worker holding baresip's
        TLS connection (its own cluster-link port), never to its sibling."""
        yield self.start_nodes(TLS_LINK, a_workers=2)
        phone = yield self.registered_baresip()
        [holder] = re.findall(
            r"\[worker (\d) sbc\.registrar#info\] registered sip:alice", self.a.output()
        )
        for _ in range(2):
            caller = self.caller("phones_uac.xml", "sip:alice@lab.test")
            yield phone.wait_call_established()
            result = yield caller.wait(40, "the SIPp caller")
            self.assertEqual(result.exit_code, 0, caller.describe(result) + self.context(phone))
            yield phone.wait_call_closed()
        statistics_b = yield self.show(self.b, "statistics")
        cluster_b = statistics_b.split("Adjacency: cluster", 1)[1]
        self.assertRegex(cluster_b, r"attempts\s+2", statistics_b)
        self.assertNotIn("not-reached", statistics_b)
        # both calls were taken from the link by the worker that holds the phone
        yield within(
            self.a.child.output_contains(b"call 2 INVITE from cluster (trusted)"),
            10.0,
            "A's call log",
        )
        takers = re.findall(
            r"\[worker (\d) sbc\.calls#info\] call \d+ INVITE from cluster \(", self.a.output()
        )
        self.assertEqual(takers, [holder, holder], self.a.tail(60))

    @defer.inlineCallbacks
    def registered_baresip(self) -> Any:
        """baresip (alice, with a certificate) registered over TLS on A; B lists it."""
        _, _, certificate = phone_certificate(self.pki, "alice")
        phone = Baresip(
            self,
            outbound_port=self.a.port("phones"),
            ca=self.pki.cert("ca"),
            certificate=certificate,
        )
        yield phone.start()
        yield phone.wait_registered()
        yield self.wait_registrations(
            self.b,
            lambda rows: [r.aor for r in rows] == ["alice@lab.test"],
            10.0,
            "alice on node B",
        )
        return phone

    @defer.inlineCallbacks
    def test_phone_hangs_up_after_the_connection_between_the_nodes_closed(self) -> Any:
        """B closes its idle connection to A (outbound-idle-timeout 1) during the call; the
        phone's BYE still reaches the caller: A opens a connection to B's cluster link."""
        yield self.start_nodes(TLS_LINK, b_sbe=("limits", " outbound-idle-timeout 1"))
        phone = yield self.registered_baresip()
        caller = self.caller("calls_uac_bye.xml", "sip:alice@lab.test")
        yield phone.wait_call_established()
        yield within(
            self.b.child.output_contains(b"connection closed (connections-closed:idle-timeout)"),
            10.0,
            "B to close its idle connection to A",
        )
        # and A to have seen it close: a BYE written by A while B's close is still
        # on its way is lost with the connection (docs/scaling.md says so)
        yield self.wait_closed_link(self.a)
        yield phone.hangup()
        result = yield caller.wait(40, "the SIPp caller")
        self.assertEqual(result.exit_code, 0, caller.describe(result) + self.context(phone))
        yield phone.wait_call_closed()

    @defer.inlineCallbacks
    def test_udp_phone_on_a_called_through_b_over_a_private_link(self) -> Any:
        """A SIPp phone registered over UDP on A answers a call that entered B (plain TCP link)."""
        yield self.start_nodes(PRIVATE_LINK)
        port = free_port()
        yield self.sipp_registers("bob", on=self.a, seen_by=self.b, port=port)
        # the phone now answers on the port it registered from
        callee = start_sipp(
            self, "calls_uas.xml", port=port, keys={"contact_scheme": "sip"}, seconds=20
        )
        yield wait_port(port, True, 10.0, "the SIPp phone")
        caller = self.caller("phones_uac.xml", "sip:bob@lab.test")
        results = []
        for peer in (caller, callee):
            results.append((yield peer.wait(40, "SIPp")))
        self.assertEqual(
            [r.exit_code for r in results],
            [0, 0],
            caller.describe(results[0]) + callee.describe(results[1]) + self.context(),
        )
        yield within(
            self.a.child.output_contains(b"INVITE from cluster (trusted)"), 10.0, "A's call log"
        )

    @defer.inlineCallbacks
    def register_bob_on_a(self) -> Any:
        """A SIPp phone registers bob over UDP on A; fires once B lists him."""
        yield self.sipp_registers("bob", on=self.a, seen_by=self.b)

    @defer.inlineCallbacks
    def test_b_refuses_a_node_certificate_without_the_identity(self) -> Any:
        """B expects another identity on the link: A's certificate is refused, 480 at once."""
        yield self.start_nodes(TLS_LINK, b_link=WRONG_IDENTITY)
        yield self.register_bob_on_a()
        caller = self.caller("phones_uac_480.xml", "sip:bob@lab.test")
        result = yield caller.wait(40, "the refused caller")
        self.assertEqual(result.exit_code, 0, caller.describe(result) + self.context())
        yield within(
            self.b.child.output_contains(b"does not match 'other.lab.test'"),
            10.0,
            "B to log the certificate it refused",
        )
        self.assertNotIn("INVITE from cluster", self.a.output())

    @defer.inlineCallbacks
    def test_a_refuses_a_node_certificate_without_the_identity(self) -> Any:
        """A expects another identity: B's client certificate is refused at the handshake.

        Nothing reaches A's SIP side. (Over TLS 1.3 B's side of the handshake
        is over before A refuses its certificate: B sees the connection close
        after its INVITE left, and the call ends at the INVITE's timeout,
        docs/scaling.md; the test does not wait for that.)
        """
        yield self.start_nodes(WRONG_IDENTITY, b_link=TLS_LINK)
        yield self.register_bob_on_a()
        self.caller("phones_uac_480.xml", "sip:bob@lab.test")
        yield within(
            self.a.child.output_contains(b"does not match 'other.lab.test'"),
            10.0,
            "A to log the certificate it refused at the handshake",
        )
        yield pause(0.5)
        self.assertNotIn("INVITE from cluster", self.a.output())


class SiblingWorkerTlsTests(CliTestCase):
    """One node, 2 worker processes, no Redis: baresip over TLS is called through either worker.

    The node's cluster link is a private TCP link on 127.0.0.1; the workers
    share registrations through the supervisor. SIPp callers (each a new TCP
    connection into the trunk, which the kernel gives to either worker) call
    alice until the link carried a call: every call connects over baresip's
    own TLS connection.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_baresip_called_through_the_worker_that_does_not_hold_it(self) -> Any:
        self.pki = make_pki(self.mktemp())
        specs = [
            AdjacencySpec("phones", "trusted-encrypted", port=free_port()),
            AdjacencySpec("access", "untrusted", "udp", port=free_port()),
            AdjacencySpec("trunk", "trusted-unencrypted", "tcp", port=free_port()),
            AdjacencySpec("cluster", "trusted-unencrypted", "tcp", port=free_port()),
        ]
        text = node_config("A", HOST, specs, None, PRIVATE_LINK)
        self.a = yield launch_sbc(self, self.pki, specs, text, ("--workers", "2"))
        for index in (1, 2):
            heard = self.a.child.output_contains(
                f"[worker {index} sbc.cluster#info] cluster: node A/".encode()
            )
            yield within(heard, 20.0, f"worker {index} to learn where its sibling takes calls")
        _, _, certificate = phone_certificate(self.pki, "alice")
        phone = Baresip(
            self,
            outbound_port=self.a.port("phones"),
            ca=self.pki.cert("ca"),
            certificate=certificate,
        )
        yield phone.start()
        yield phone.wait_registered()
        for attempt in range(8):
            caller = start_sipp(
                self,
                "phones_uac.xml",
                remote_port=self.a.port("trunk"),
                transport="t1",
                keys={
                    "ruri": "sip:alice@lab.test",
                    "to_uri": "sip:alice@lab.test",
                    "from_uri": f"sip:dave{attempt}@trunk.test",
                    "contact_scheme": "sip",
                },
                seconds=20,
            )
            yield phone.wait_call_established()
            result = yield caller.wait(40, "the SIPp caller")
            self.assertEqual(
                result.exit_code, 0, caller.describe(result) + phone.describe() + self.a.tail(40)
            )
            yield phone.wait_call_closed()
            shown = yield self.sbc_cli(
                cli_socket(self.a.child), "show services sbc edge sbe statistics"
            )
            statistics = shown.text()
            cluster = statistics.split("Adjacency: cluster", 1)[1]
            if re.search(r"attempts\s+[1-9]", cluster):
                break
        else:
            self.fail("8 calls all entered the worker holding baresip's connection")
        self.assertNotIn("held-elsewhere", statistics)
        # every INVITE reached baresip over the connection its REGISTER used
        messages = phone.sip_messages()
        register = next(m for m in messages if m.sent and m.is_request("REGISTER"))
        invites = [m for m in messages if not m.sent and m.is_request("INVITE")]
        self.assertEqual(len(invites), attempt + 1, phone.describe())
        for invite in invites:
            self.assertEqual(invite.destination, register.source, phone.describe())
            self.assertEqual(invite.header("Sbc-Cluster"), [], phone.describe())
