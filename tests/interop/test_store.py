"""Two SBC nodes sharing one real redis-server (issue 13 item 2, docs/scaling.md).

Node A listens on 127.0.0.1, node B on 127.0.0.2, both with
``store redis://127.0.0.1:PORT/0``; the test starts its own
``redis-server --save ''`` on a free port and stops it by PID (SIGTERM, like
an operator's restart: Redis drops every connection).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import FailTest

from tests.interop.calls_harness import start_sipp, start_sipp_uas, wait_port
from tests.interop.harness import (
    HOST,
    AdjacencySpec,
    SbcProcess,
    get_reactor,
    launch_sbc,
    make_pki,
    new_call_id,
    open_udp,
    pause,
    sip_request,
    within,
)
from tests.interop.phones import parse_registrations
from tests.interop.test_calls import ack_for
from tests.interop.test_cli import CliTestCase, cli_socket
from tests.support.peers import ProcessResult, RunningProcess, free_port, require_tool, run

NODE_B_HOST = "127.0.0.2"


class RedisServer:
    """A ``redis-server`` on 127.0.0.1:port without persistence, stopped by PID."""

    def __init__(self, case: Any, port: int) -> None:
        self.case = case
        self.port = port
        self.child: RunningProcess | None = None

    @defer.inlineCallbacks
    def start(self) -> Any:
        server = require_tool("redis-server")
        args = [
            server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip
        self.child = RunningProcess(get_reactor(), args, cwd=self.case.mktemp_dir())
        self.case.addCleanup(self.child.stop_within, 10.0)
        yield wait_port(self.port, False, 10.0, "redis-server")

    @defer.inlineCallbacks
    def stop(self) -> Any:
        assert self.child is not None
        yield within(self.child.stop_within(10.0), 15.0, "redis-server to stop")

    @defer.inlineCallbacks
    def cli(self, *args: str) -> Any:
        """``redis-cli -p PORT ARGS``: its output lines."""
        tool = require_tool("redis-cli")
        result: ProcessResult = yield run(get_reactor(), [tool, "-p", str(self.port), *args], 20.0)
        if result.exit_code != 0:
            raise FailTest(f"redis-cli {' '.join(args)} failed: {result.text()}")
        return [line for line in result.stdout.decode().splitlines() if line]

    @defer.inlineCallbacks
    def bindings(self) -> Any:
        """The binding keys held in Redis."""
        keys = yield self.cli("--scan", "--pattern", "sbc:b:*")
        return sorted(keys)


def node_config(name: str, host: str, access: int, trunk: int, redis_port: int) -> str:
    """Node ``name``: an untrusted access and a trusted trunk on ``host``, the shared store."""
    return "\n".join(
        [
            f"! node {name} of tests/interop/test_store.py",
            "sbc edge",
            " sbe",
            "  local-domain lab.test",
            "  adjacency sip access",
            f"   signaling-address ipv4 {host}",
            f"   signaling-port {access}",
            "   remote-address ipv4 127.0.0.0/8",
            "   security untrusted",
            "   attach",
            "  !",
            "  adjacency sip trunk",
            f"   signaling-address ipv4 {host}",
            f"   signaling-port {trunk}",
            "   transport tcp",
            "   remote-address ipv4 127.0.0.0/8",
            "   security trusted-unencrypted",
            "   attach",
            "  !",
            f"  store redis://127.0.0.1:{redis_port}/0",
            f"  node {name}",
            " !",
            "!",
            "",
        ]
    )


class NodeTestCase(CliTestCase):
    """Helpers for tests that drive SBC nodes named ``edge`` through ``sbc-cli``."""

    timeout = 120

    def mktemp_dir(self) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return directory

    @defer.inlineCallbacks
    def show(self, sbc: SbcProcess, what: str) -> Any:
        result = yield self.sbc_cli(cli_socket(sbc.child), f"show services sbc edge sbe {what}")
        return result.text()

    @defer.inlineCallbacks
    def registrations(self, sbc: SbcProcess) -> Any:
        text = yield self.show(sbc, "registrations")
        return parse_registrations(text), text

    @defer.inlineCallbacks
    def wait_registrations(
        self, sbc: SbcProcess, condition: Any, seconds: float, describe: str
    ) -> Any:
        """Poll ``show ... registrations`` (every 0.3 s, at most ``seconds``)."""
        deadline = get_reactor().seconds() + seconds
        text = ""
        while get_reactor().seconds() < deadline:
            rows, text = yield self.registrations(sbc)
            if condition(rows):
                return rows
            yield pause(0.3)
        self.fail(f"timed out after {seconds:g} s waiting for {describe}:\n{text}")

    @defer.inlineCallbacks
    def sipp_registers(
        self, user: str, on: SbcProcess, seen_by: SbcProcess, port: int | None = None
    ) -> Any:
        """SIPp registers ``user`` over UDP on ``on`` (from ``port``); fires with ``seen_by``'s
        registrations once it lists that user alone."""
        register = start_sipp(
            self,
            "store_register.xml",
            remote_port=on.port("access"),
            port=port,
            keys={"user": user, "expires": "300"},
        )
        result = yield register.wait(30, "SIPp REGISTER")
        self.assertEqual(result.exit_code, 0, register.describe(result) + on.tail())
        rows = yield self.wait_registrations(
            seen_by,
            lambda rows: [r.aor for r in rows] == [f"{user}@lab.test"],
            10.0,
            f"{user} listed",
        )
        return rows


class SharedStoreTests(NodeTestCase):
    """Registrations shared through Redis; Redis going away and coming back."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.redis = RedisServer(self, free_port())
        yield self.redis.start()
        self.pki = make_pki(self.mktemp())
        self.a = yield self.start_node("A", HOST)
        self.b = yield self.start_node("B", NODE_B_HOST)

    @defer.inlineCallbacks
    def start_node(self, name: str, host: str) -> Any:
        specs = [
            AdjacencySpec("access", "untrusted", "udp-tcp", port=free_port()),
            AdjacencySpec("trunk", "trusted-unencrypted", "tcp", port=free_port()),
        ]
        text = node_config(name, host, specs[0].port, specs[1].port, self.redis.port)
        sbc = yield launch_sbc(self, self.pki, specs, text)
        yield within(sbc.child.output_contains(b"store connected"), 15.0, f"node {name}'s store")
        return sbc

    @defer.inlineCallbacks
    def wait_redis(self, condition: Any, seconds: float, describe: str) -> Any:
        deadline = get_reactor().seconds() + seconds
        keys: list[str] = []
        while get_reactor().seconds() < deadline:
            keys = yield self.redis.bindings()
            if condition(keys):
                return keys
            yield pause(0.3)
        self.fail(f"timed out after {seconds:g} s waiting for {describe}: {keys}")

    @defer.inlineCallbacks
    def register_udp(self, sbc: SbcProcess, user: str, expires: int) -> Any:
        """A REGISTER over UDP to node A's access adjacency; fires with the response."""
        client = open_udp(self, sbc.port("access"))
        call_id = new_call_id()
        request = sip_request(
            method="REGISTER",
            uri="sip:lab.test",
            via_transport="UDP",
            local_port=client.local_port,
            call_id=call_id,
            from_uri=f"sip:{user}@lab.test",
            to_uri=f"sip:{user}@lab.test",
            cseq="1 REGISTER",
            extra=[f"Contact: <sip:{user}@{HOST}:{client.local_port}>", f"Expires: {expires}"],
        )
        response = yield client.transact(request, call_id)
        return response

    @defer.inlineCallbacks
    def test_registration_on_a_is_listed_on_b_and_goes_with_a(self) -> Any:
        """SIPp registers alice on A: B lists it, held by A; expiry; A's clean stop."""
        rows = yield self.sipp_registers("alice", on=self.a, seen_by=self.b)
        [alice] = rows
        self.assertEqual(
            (alice.aor, alice.adjacency, alice.registrar), ("alice@lab.test", "access", "local")
        )
        self.assertTrue(alice.flow.startswith(f"UDP {HOST}:"), alice)
        node_column = yield self.show(self.b, "registrations")
        self.assertRegex(node_column.splitlines()[0], r"Registrar\s+Node$")
        self.assertTrue(node_column.splitlines()[2].rstrip().endswith(" A"), node_column)
        own, _ = yield self.registrations(self.a)
        self.assertEqual([(r.aor, r.flow) for r in own], [(alice.aor, alice.flow)])
        # the key carries the binding's expiry as its TTL
        [key] = yield self.redis.bindings()
        [ttl] = yield self.redis.cli("PTTL", key)
        self.assertTrue(290_000 < int(ttl) <= 300_000, ttl)
        # a short registration expires in Redis and from B's view with its expiry
        response = yield self.register_udp(self.a, "bob", 2)
        self.assertEqual(response.status, 200, response.raw)
        yield self.wait_registrations(
            self.b,
            lambda rows: {r.aor for r in rows} == {"alice@lab.test", "bob@lab.test"},
            10.0,
            "bob on B",
        )
        yield self.wait_redis(lambda keys: len(keys) == 1, 15.0, "bob's key to expire")
        yield self.wait_registrations(
            self.b,
            lambda rows: [r.aor for r in rows] == ["alice@lab.test"],
            10.0,
            "bob to expire on B",
        )
        # a call through B to alice: the flow is A's, so B skips it (480) and counts it
        client = open_udp(self, self.b.port("access"))
        client.target = (NODE_B_HOST, self.b.port("access"))
        call_id = new_call_id()
        invite = sip_request(
            method="INVITE",
            uri="sip:alice@lab.test",
            via_transport="UDP",
            local_port=client.local_port,
            call_id=call_id,
            from_uri="sip:carol@lab.test",
            extra=[f"Contact: <sip:carol@{HOST}:{client.local_port}>"],
        )
        response = yield client.transact(invite, call_id)
        client.send(ack_for(invite, response))
        self.assertEqual(response.status, 480, response.raw)
        statistics = yield self.show(self.b, "statistics")
        self.assertRegex(statistics, r"held-elsewhere\s+1", statistics)
        # call lines reach the text log in batches (sbc.logs): wait for it
        yield within(
            self.b.child.output_contains(b"is held by node A"), 10.0, "call.held-elsewhere"
        )
        # node A stops cleanly: its bindings leave Redis and B's view at once
        ended = self.a.child.output_contains(b"Server Shut Down.")
        self.a.child.process.signalProcess("TERM")
        yield within(ended, 15.0, "node A to stop")
        self.assertIn("binding(s) of this node removed", self.a.output())
        keys = yield self.redis.bindings()
        self.assertEqual(keys, [])
        # alice had 300 s left: gone within a few seconds means removed, not expired
        rows = yield self.wait_registrations(
            self.b, lambda rows: rows == [], 5.0, "A's bindings to go from B"
        )
        self.assertEqual(rows, [])

    @defer.inlineCallbacks
    def test_redis_stopped_and_restarted(self) -> Any:
        """503 while Redis is away; a call through A goes on; A's bindings are written again."""
        response = yield self.register_udp(self.a, "alice", 300)
        self.assertEqual(response.status, 200, response.raw)
        yield self.wait_redis(lambda keys: len(keys) == 1, 10.0, "alice's key")
        callee = yield start_sipp_uas(
            self, "calls_uas.xml", transport="t1", keys={"contact_scheme": "sip"}
        )
        caller = start_sipp(
            self,
            "faults_uac_hold_bye.xml",
            remote_port=self.a.port("access"),
            transport="u1",
            keys={"ruri": f"sip:bob@{HOST}:{callee.port}", "from_uri": "sip:carol@lab.test"},
            seconds=40,
        )
        yield self.wait_show(self.a, "calls", lambda t: " confirmed " in t, 15.0, "the call")
        lost = self.a.child.output_contains(b"store lost")
        yield self.redis.stop()
        yield within(lost, 10.0, "node A to see the store go")
        refused = yield self.register_udp(self.a, "dave", 300)
        self.assertEqual(refused.status, 503, refused.raw)
        self.assertEqual(refused.header("Retry-After"), ["30"], refused.raw)
        statistics = yield self.show(self.a, "statistics")
        self.assertRegex(statistics, r"store-unavailable\s+1")
        # the call established before goes on and ends normally (BYE, 200)
        result = yield caller.wait(40, "the caller")
        self.assertEqual(result.exit_code, 0, caller.describe(result) + self.a.tail(40))
        # the lookups still answer from the last view
        rows, text = yield self.registrations(self.a)
        self.assertEqual([r.aor for r in rows], ["alice@lab.test"], text)
        # Redis back (empty: no persistence): A writes its bindings again
        back = self.a.child.output_contains(b"of this node written again")
        self.redis = RedisServer(self, self.redis.port)
        yield self.redis.start()
        yield within(back, 20.0, "node A to reconnect")
        yield self.wait_redis(
            lambda keys: len(keys) == 1 and "alice@lab.test" in keys[0], 10.0, "alice again"
        )
        yield self.wait_registrations(
            self.b,
            lambda rows: [r.aor for r in rows] == ["alice@lab.test"],
            15.0,
            "alice on B again",
        )
        accepted = yield self.register_udp(self.a, "dave", 300)
        self.assertEqual(accepted.status, 200, accepted.raw)

    @defer.inlineCallbacks
    def wait_show(
        self, sbc: SbcProcess, what: str, condition: Any, seconds: float, describe: str
    ) -> Any:
        deadline = get_reactor().seconds() + seconds
        text = ""
        while get_reactor().seconds() < deadline:
            text = yield self.show(sbc, what)
            if condition(text):
                return text
            yield pause(0.3)
        self.fail(f"timed out after {seconds:g} s waiting for {describe}:\n{text}")


class RedisClientTests(NodeTestCase):
    """sbc.transport.redis in this process against a real redis-server: the scripts themselves."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.redis = RedisServer(self, free_port())
        yield self.redis.start()

    @defer.inlineCallbacks
    def node(self, name: str, worker: int = 0) -> Any:
        from sbc.cluster import SharedStore, StoreState
        from sbc.config import StoreUrl
        from sbc.transport.redis import RedisStoreService

        reactor = get_reactor()
        store = SharedStore(name, reactor.seconds, worker=worker)
        service = RedisStoreService(reactor, StoreUrl("127.0.0.1", self.redis.port, 0), store)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        yield self.until(lambda: store.state == StoreState.UP, "node " + name)
        return store, service

    @defer.inlineCallbacks
    def until(self, condition: Any, what: str, seconds: float = 10.0) -> Any:
        deadline = get_reactor().seconds() + seconds
        while not condition():
            if get_reactor().seconds() > deadline:
                self.fail(f"timed out after {seconds:g} s waiting for {what}")
            yield pause(0.02)

    @defer.inlineCallbacks
    def test_scripts_apply_announce_load_and_heartbeat(self) -> Any:
        from sbc.cluster.codec import encode_relayed, relay_key
        from sbc.cluster.store import Delete, Drop, Put
        from sbc.sip.stack import Flow
        from sbc.sip.uri import parse_uri

        a, service_a = yield self.node("A")
        b, service_b = yield self.node("B")
        flow = Flow("TLS", ("127.0.0.1", 5061), ("192.0.2.7", 40000), 3, pinned=True)
        contact = parse_uri("sip:alice@192.0.2.7:40000;transport=tls")

        def record(token: str, node: str) -> str:
            return encode_relayed(token, "alice@lab.test", contact, flow, "phones", "pbx", node)

        # two batches in one reactor turn: one script call, both announced, in order
        a.write([Put(relay_key("sbcr-1"), record("sbcr-1", "A"), 60_000)])
        a.write([Put(relay_key("sbcr-2"), record("sbcr-2", "A"), 60_000)])
        yield self.until(lambda: len(b.remote_relayed) == 2, "B to hear A's writes")
        ttl = yield self.redis.cli("PTTL", relay_key("sbcr-1"))
        self.assertTrue(55_000 < int(ttl[0]) <= 60_000, ttl)
        self.assertEqual(b.remote_relayed["sbcr-1"].flow, flow)
        # Drop removes only a record that still names the node; B's record stays
        b.write([Put(relay_key("sbcr-3"), record("sbcr-3", "B"), 60_000)])
        yield self.until(lambda: "sbcr-3" in a.remote_relayed, "A to hear B")
        a.write([Drop(relay_key("sbcr-1")), Drop(relay_key("sbcr-3"))])
        yield self.until(lambda: "sbcr-1" not in b.remote_relayed, "B to hear the drop")
        keys = yield self.redis.bindings()
        self.assertEqual(keys, [relay_key("sbcr-2"), relay_key("sbcr-3")])
        self.assertIn("sbcr-3", a.remote_relayed)  # A's Drop announced B's record, unchanged
        a.write([Delete(relay_key("sbcr-2"))])
        yield self.until(lambda: "sbcr-2" not in b.remote_relayed, "B to hear the delete")
        # load: what a (re)connecting node reads
        rows = yield service_a.load()
        self.assertEqual([(k, int(t) > 0) for k, _, t in rows], [(relay_key("sbcr-3"), True)])
        # heartbeat: each node's counts, and the live nodes
        a.call_counts = lambda: {"trunk": 2}
        b.call_counts = lambda: {"trunk": 5}
        yield b.tick()
        yield a.tick()
        self.assertEqual((a.remote_calls, a.nodes), ({"trunk": 5}, ("A", "B")))
        # the script also gives the name's heartbeat from before: another process start
        # writing under A's name sees A's instance there (a duplicate node name)
        found = yield service_a.heartbeat("A", '{"calls":{},"instance":"other"}', 6000)
        self.assertIn(f'"instance":"{a.instance}"', found[""])
        yield a.tick()
        self.assertEqual(a.state, "up")  # A keeps serving, and says so in its log
        # a clean stop removes what the node holds and its heartbeat
        b.relayed = lambda: [SimpleNamespace(token="sbcr-3")]
        yield service_b.stopService()
        keys = yield self.redis.cli("--scan", "--pattern", "sbc:*")
        self.assertEqual(sorted(keys), ["sbc:node:A", "sbc:nodes"])

    @defer.inlineCallbacks
    def test_drop_compares_the_holder_node_and_worker(self) -> Any:
        """Two worker processes of one node: the script's Drop keeps the sibling's record."""
        from sbc.cluster.codec import encode_relayed, relay_key
        from sbc.cluster.store import Drop, Put
        from sbc.sip.stack import Flow
        from sbc.sip.uri import parse_uri

        one, _ = yield self.node("edge", 1)
        two, _ = yield self.node("edge", 2)
        flow = Flow("UDP", ("127.0.0.1", 5060), ("192.0.2.7", 5060))
        contact = parse_uri("sip:alice@192.0.2.7")

        def record(token: str, worker: int) -> str:
            return encode_relayed(
                token, "alice@lab.test", contact, flow, "phones", "pbx", "edge", worker
            )

        two.write([Put(relay_key("w2"), record("w2", 2), 60_000)])
        one.write([Put(relay_key("w1"), record("w1", 1), 60_000)])
        yield self.until(lambda: "w2" in one.remote_relayed, "worker 1 to hear worker 2")
        self.assertEqual(one.remote_relayed["w2"].worker, 2)
        one.write([Drop(relay_key("w1")), Drop(relay_key("w2"))])
        yield self.until(lambda: "w1" not in two.remote_relayed, "worker 2 to hear the drop")
        keys = yield self.redis.bindings()
        self.assertEqual(keys, [relay_key("w2")])

    @defer.inlineCallbacks
    def test_lost_and_connected_again(self) -> Any:
        from sbc.cluster import StoreState

        a, _ = yield self.node("A")
        yield self.redis.stop()
        yield self.until(lambda: a.state == StoreState.DOWN, "A to see Redis go")
        self.assertFalse(a.available)
        self.redis = RedisServer(self, self.redis.port)
        yield self.redis.start()
        yield self.until(lambda: a.state == StoreState.UP, "A to reconnect", 15.0)
