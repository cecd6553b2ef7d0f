"""The shared store's logic (sbc.cluster) with an in-memory Redis on a memory clock.

:class:`FakeRedis` does what the Lua scripts of sbc.transport.redis do (keys
with a TTL, a batch applied then announced on the channel) and holds the
channel's messages until :meth:`FakeRedis.deliver`, so tests choose the order
in which nodes hear each other. The real scripts run against a real
redis-server in tests/interop/test_store.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sbc.adjacencies import AdjacencyTable
from sbc.cluster import SharedStore, StoreState, StoreUnavailableError
from sbc.cluster.codec import binding_key, decode_record, record_holder, relay_key
from sbc.cluster.store import HEARTBEAT_INTERVAL, Delete, Drop, Op, Put
from sbc.core import SbcCore
from sbc.counters import Counters
from sbc.interfaces import ILocationService
from sbc.registrar import Binding, Registrar
from sbc.sip.stack import Flow
from sbc.sip.uri import parse_uri
from tests.registrar.test_registrar import register

A_PHONE = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.3", 5070))
B_PHONE = Flow("UDP", ("127.0.0.2", 5060), ("127.0.0.3", 5070))
TLS_PHONE = Flow("TLS", ("127.0.0.1", 5061), ("127.0.0.3", 40000), 7, pinned=True)
AOR = "bob@example.com"


class FakeRedis:
    """Keys with expiry, atomic batches announced on a channel held until :meth:`deliver`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data: dict[str, tuple[str, float]] = {}
        self.up = True
        self.channel: list[str] = []
        self.subscribers: list[SharedStore] = []
        self.writes = 0
        #: node -> (heartbeat value, expiry), kept apart from the binding keys
        self.heartbeats: dict[str, tuple[str, float]] = {}

    def live(self) -> dict[str, str]:
        now = self.clock.seconds()
        self.data = {k: (v, at) for k, (v, at) in self.data.items() if at > now}
        return {k: v for k, (v, _) in self.data.items()}

    def record(self, key: str) -> dict[str, Any]:
        return dict(json.loads(self.live()[key]))

    def apply(self, ops: Sequence[Op], origin: str, seq: int) -> Deferred[object]:
        if not self.up:
            return fail(ConnectionError("down"))
        self.writes += 1
        live = self.live()
        now = self.clock.seconds()
        out: list[list[Any]] = []
        for op in ops:
            if isinstance(op, Put):
                self.data[op.key] = (op.value, now + op.ttl_ms / 1000)
                out.append(["put", op.key, op.value, op.ttl_ms])
            elif isinstance(op, Delete):
                self.data.pop(op.key, None)
                out.append(["del", op.key])
            elif isinstance(op, Drop):
                value = live.get(op.key)
                if value is not None and record_holder(value) != origin:
                    ttl = int((self.data[op.key][1] - now) * 1000)
                    out.append(["put", op.key, value, ttl])
                else:
                    self.data.pop(op.key, None)
                    out.append(["del", op.key])
        self.channel.append(json.dumps({"by": origin, "seq": seq, "ops": out}))
        return succeed(len(out))

    def deliver(self) -> None:
        """Every message published so far, to every subscribed node, in order."""
        messages, self.channel = self.channel, []
        for message in messages:
            for store in self.subscribers:
                store.message(message)

    def rows(self) -> list[tuple[str, str, int]]:
        now = self.clock.seconds()
        self.live()
        return [
            (k, v, int((at - now) * 1000))
            for k, (v, at) in self.data.items()
            if k.startswith("sbc:b:")
        ]


class FakeClient:
    """A :class:`~sbc.cluster.StoreClient` on a :class:`FakeRedis`."""

    def __init__(self, redis: FakeRedis, store: SharedStore) -> None:
        self.redis = redis
        self.store = store
        store.client = self

    def apply(self, ops: Sequence[Op], origin: str, seq: int) -> Deferred[object]:
        return self.redis.apply(ops, origin, seq)

    def load(self) -> Deferred[list[tuple[str, str, int]]]:
        if not self.redis.up:
            return fail(ConnectionError("down"))
        return succeed(self.redis.rows())

    def heartbeat(self, node: str, counts: str, ttl_ms: int) -> Deferred[dict[str, str]]:
        if not self.redis.up:
            return fail(ConnectionError("down"))
        now = self.redis.clock.seconds()
        beats = self.redis.heartbeats
        live = {name: text for name, (text, at) in beats.items() if at > now}
        before = live.get(node, "")
        beats[node] = (counts, now + ttl_ms / 1000)
        live[node] = counts
        return succeed({**live, "": before})

    def connect(self) -> None:
        """Subscribe, then tell the store (what the real client does)."""
        if self.store not in self.redis.subscribers:
            self.redis.subscribers.append(self.store)
        self.store.connected()

    def drop(self) -> None:
        if self.store in self.redis.subscribers:
            self.redis.subscribers.remove(self.store)
        self.store.lost("connection lost")


class Node:
    """One SBC node's registrar on a shared store."""

    def __init__(self, name: str, redis: FakeRedis, clock: Clock) -> None:
        self.counters = Counters()
        self.store = SharedStore(name, clock.seconds, count=self.counters.increment)
        self.client = FakeClient(redis, self.store)
        self.registrar = Registrar(self.store.location)
        self.clock = clock
        self.client.connect()

    def register(self, flow: Flow = A_PHONE, **kwargs: Any) -> int:
        response = self.registrar.register(register(**kwargs), flow, "access", self.clock.seconds())
        return response.status

    def lookup(self, aor: str = AOR) -> list[Binding]:
        return self.registrar.lookup(aor, self.clock.seconds())


class SharedRegistrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.redis = FakeRedis(self.clock)
        self.a = Node("A", self.redis, self.clock)
        self.b = Node("B", self.redis, self.clock)

    def test_location_service_interface(self) -> None:
        self.assertTrue(verifyObject(ILocationService, self.a.store.location))

    def test_registration_on_a_is_seen_by_b_with_its_holder(self) -> None:
        self.assertEqual(self.a.register(expires=60), 200)
        [key] = self.redis.live()
        record = self.redis.record(key)
        self.assertEqual((record["node"], record["worker"], record["aor"]), ("A", 0, AOR))
        self.assertEqual(record["flow"]["remote"], ["127.0.0.3", 5070])
        self.assertEqual(self.b.lookup(), [])  # not delivered yet: B answers from its view
        self.redis.deliver()
        [seen] = self.b.lookup()
        self.assertEqual((seen.node, seen.flow, seen.adjacency), ("A", A_PHONE, "access"))
        self.assertEqual(seen.remaining(self.clock.seconds()), 60)
        [own] = self.a.lookup()
        self.assertIsNone(own.node)
        # the key expires with the binding, in Redis and in B's view
        self.clock.advance(60)
        self.assertEqual(self.redis.live(), {})
        self.assertEqual(self.b.lookup(), [])
        self.assertEqual(self.a.registrar.expire(self.clock.seconds()), [own])
        self.b.store.tick()
        self.assertEqual(len(self.b.store.location), 0)

    def test_unregister_and_closed_connection_remove_the_keys(self) -> None:
        self.a.register(expires=60)
        self.a.register(flow=TLS_PHONE, contact="<sip:bob@127.0.0.3:40000;transport=tls>")
        self.redis.deliver()
        self.assertEqual(len(self.b.lookup()), 2)
        self.a.register(contact="<sip:bob@127.0.0.3:5070>", expires=0, cseq=2)
        self.redis.deliver()
        self.assertEqual(len(self.redis.live()), 1)
        [tls] = self.b.lookup()
        self.assertEqual(tls.flow.transport, "TLS")
        self.a.registrar.connection_closed(7, self.clock.seconds())
        self.redis.deliver()
        self.assertEqual((self.redis.live(), self.b.lookup()), ({}, []))

    def test_a_binding_removed_through_another_node(self) -> None:
        """Contact * through B ends A's binding at A too (logged there)."""
        self.a.register(expires=60)
        self.redis.deliver()
        self.assertEqual(self.b.register(flow=B_PHONE, contact="*", expires=0, cseq=2), 200)
        self.redis.deliver()
        self.assertEqual((self.a.lookup(), self.redis.live()), ([], {}))

    def test_registered_again_through_another_node(self) -> None:
        """The same contact through B: B holds it now, A's own binding goes."""
        self.a.register(expires=60)
        self.redis.deliver()
        self.b.register(flow=B_PHONE, expires=120, cseq=2)
        self.redis.deliver()
        [at_a] = self.a.lookup()
        [at_b] = self.b.lookup()
        self.assertEqual((at_a.node, at_a.flow), ("B", B_PHONE))
        self.assertEqual((at_b.node, at_b.flow), (None, B_PHONE))
        self.assertEqual(self.redis.record(binding_key(at_b))["node"], "B")
        self.assertEqual(len(self.a.store.location.own_keys), 0)

    def test_concurrent_writes_end_in_redis_order(self) -> None:
        """A's write comes after B's in Redis: A ignores B's message, both end with A's."""
        self.b.register(flow=B_PHONE, expires=60)  # B's message not delivered yet
        self.a.register(flow=A_PHONE, expires=90, call_id="other")
        self.redis.deliver()
        key = next(iter(self.redis.live()))
        self.assertEqual(self.redis.record(key)["node"], "A")
        [at_a] = self.a.lookup()
        [at_b] = self.b.lookup()
        self.assertEqual((at_a.node, at_b.node), (None, "A"))

    def test_store_down_refuses_new_bindings_keeps_refreshes(self) -> None:
        self.a.register(expires=60)
        self.redis.deliver()
        self.redis.up = False
        self.a.client.drop()
        self.assertEqual(self.a.store.state, StoreState.DOWN)
        with self.assertRaises(StoreUnavailableError) as raised:
            self.a.register(contact="<sip:bob@127.0.0.3:5099>", cseq=2)
        error = raised.exception
        self.assertEqual(error.status, 503)
        self.assertIn(("Retry-After", "30"), error.headers)
        self.assertEqual(self.a.counters.get("access", "store-unavailable"), 1)
        # nothing changed
        self.assertEqual(len(self.a.lookup()), 1)
        # a refresh over the same flow is applied here; lookups answer from the view
        self.clock.advance(10)
        self.assertEqual(self.a.register(expires=300, cseq=3), 200)
        self.assertEqual(self.a.lookup()[0].remaining(self.clock.seconds()), 300)
        # back: this node's binding is written again, with its new expiry
        self.redis.up = True
        self.redis.data.clear()  # a restarted Redis without persistence
        self.a.client.connect()
        self.assertEqual(self.a.store.state, StoreState.UP)
        [(key, value)] = self.redis.live().items()
        self.assertEqual(self.redis.data[key][1], self.clock.seconds() + 300)
        self.assertEqual(json.loads(value)["node"], "A")

    def test_removal_while_down_reaches_the_store_when_back(self) -> None:
        self.a.register(expires=60)
        self.redis.deliver()
        self.redis.up = False
        self.a.client.drop()
        self.assertEqual(self.a.register(expires=0, cseq=2), 200)
        self.redis.up = True
        self.a.client.connect()  # the record still names A but A holds nothing: dropped
        self.redis.deliver()
        self.assertEqual((self.redis.live(), self.b.lookup()), ({}, []))

    def test_rebuild_replaces_the_view_and_applies_waiting_messages(self) -> None:
        self.a.register(expires=60)
        self.redis.deliver()
        # B loses the store, then reconnects; a message published while it reads waits
        self.b.client.drop()
        self.a.register(contact="<sip:bob@127.0.0.3:5071>", cseq=2)  # B will not hear it
        self.redis.subscribers.append(self.b.store)
        self.b.store.state = StoreState.SYNCING  # what connected() sets before loading
        self.b.store._waiting = []
        self.a.register(contact="<sip:bob@127.0.0.3:5070>", expires=0, cseq=3)
        self.redis.deliver()  # B is reading: the message waits
        # a REGISTER on B while it reads is accepted, and written once the read is done
        rows = self.redis.rows()
        self.assertEqual(
            self.b.register(flow=B_PHONE, aor="sip:carol@example.com", call_id="c"), 200
        )
        self.assertNotIn("carol", "".join(self.redis.live()))
        self.b.store._loaded(rows)
        [left] = self.b.lookup()
        self.assertEqual(left.contact.port, 5071)
        self.assertIn("carol", "".join(self.redis.live()))

    def test_clean_stop_removes_this_nodes_bindings_at_once(self) -> None:
        self.a.register(expires=60)
        self.b.register(flow=B_PHONE, aor="sip:carol@example.com", call_id="c")
        self.redis.deliver()
        self.a.store.stop()
        self.redis.deliver()
        self.assertEqual(self.b.lookup(), [])
        self.assertEqual([b.node for b in self.a.lookup("carol@example.com")], ["B"])
        self.assertEqual(len(self.redis.live()), 1)
        self.assertEqual(self.a.store.state, StoreState.DOWN)

    def test_restart_drops_stale_records_of_this_node(self) -> None:
        """A node that died keeps records until their TTL; started again it removes them."""
        self.a.register(expires=600)
        self.redis.deliver()
        again = Node("A", self.redis, self.clock)
        # A's heartbeat from before the restart is still live: wait one heartbeat
        self.assertEqual(again.store.state, StoreState.CONFLICT)
        self.clock.advance(HEARTBEAT_INTERVAL)
        again.store.tick()
        self.redis.deliver()
        self.assertEqual(self.redis.live(), {})
        self.assertEqual((again.lookup(), self.b.lookup()), ([], []))

    def test_a_second_node_with_the_same_name_removes_nothing(self) -> None:
        """Two live processes with one node name (a copied config): the one that came
        second never reads, removes or writes the store, its REGISTERs get 503, and
        both say why; when the first stops, the second takes the name."""
        self.a.register(expires=600)
        self.redis.deliver()
        before = self.redis.live()
        self.a.store.tick()
        with capturedLogs() as events:
            twin = Node("A", self.redis, self.clock)
        self.assertEqual(twin.store.state, StoreState.CONFLICT)
        self.assertFalse(twin.store.available)
        with self.assertRaises(StoreUnavailableError):
            twin.register(call_id="twin", contact="<sip:bob@127.0.0.9>")
        for _ in range(3):  # both keep beating: the twin stays out, A keeps serving
            self.clock.advance(HEARTBEAT_INTERVAL)
            with capturedLogs() as more:
                self.a.store.tick()
            events += more
            twin.store.tick()
            self.redis.deliver()
        self.assertEqual(twin.store.state, StoreState.CONFLICT)
        self.assertEqual(self.a.store.state, StoreState.UP)
        self.assertEqual(self.redis.live(), before)
        self.assertEqual(len(self.b.lookup()), 1)
        duplicate = [e for e in events if e.get("event") == "store.duplicate-node"]
        self.assertEqual(len(duplicate), 2)  # the twin's first, then A's first (capped after)
        self.assertIn("same node name", formatEvent(duplicate[0]))
        # A stops cleanly: the name is free at the twin's next heartbeat
        self.a.store.stop()
        self.redis.deliver()
        self.clock.advance(HEARTBEAT_INTERVAL)
        twin.store.tick()
        self.assertEqual(twin.store.state, StoreState.UP)

    def test_heartbeat_sums_other_nodes_calls(self) -> None:
        self.a.store.call_counts = lambda: {"trunk": 3}
        self.b.store.call_counts = lambda: {"trunk": 2, "access": 1}
        self.a.store.tick()
        self.b.store.tick()
        self.a.store.tick()
        active = self.a.store.active_calls(lambda adjacency: 10)
        self.assertEqual((active("trunk"), active("access"), active("other")), (12, 11, 10))
        self.assertEqual(self.a.store.nodes, ("A", "B"))
        # B stops sending heartbeats: its counts count until its heartbeat expires (6 s)
        self.clock.advance(5)
        self.a.store.tick()
        self.assertEqual(active("trunk"), 12)
        self.clock.advance(2)
        self.a.store.tick()
        self.assertEqual(active("trunk"), 10)
        self.assertEqual(self.a.store.nodes, ("A",))
        # without the store, only this node's calls count
        self.b.store.tick()
        self.redis.up = False
        self.a.store.tick()
        self.assertEqual(active("access"), 10)

    def test_relayed_bindings_are_shared(self) -> None:
        record = RelayedStub("sbcr-abc", AOR, parse_uri("sip:bob@127.0.0.3:5070"), A_PHONE)
        record.phone_expires_at = self.clock.seconds() + 30
        self.a.store.relayed = lambda: [record]
        self.a.store.relayed_bound(record, self.clock.seconds())
        self.redis.deliver()
        seen = self.b.store.relayed_held_elsewhere("sbcr-abc", self.clock.seconds())
        assert seen is not None
        self.assertEqual((seen.node, seen.outbound, seen.flow), ("A", "pbx", A_PHONE))
        decoded = decode_record(self.redis.live()[relay_key("sbcr-abc")], 0.0)
        self.assertEqual(decoded.node, "A")
        self.a.store.relayed_ended("sbcr-abc")
        self.redis.deliver()
        self.assertIsNone(self.b.store.relayed_held_elsewhere("sbcr-abc", self.clock.seconds()))

    def test_unreadable_messages_and_records_are_ignored(self) -> None:
        self.b.store.message(b"not json")
        self.b.store.message(json.dumps({"by": "X", "ops": [["put", "sbc:b:reg:x:1", "{", 5]]}))
        self.redis.data["sbc:b:reg:y:1"] = ("{}", self.clock.seconds() + 10)
        self.b.client.connect()
        self.assertEqual(len(self.b.store.location), 0)
        self.assertEqual(self.b.store.state, StoreState.UP)

    def test_writes_wait_while_syncing_and_a_failed_write_reloads(self) -> None:
        writes = self.redis.writes
        self.redis.up = False
        self.a.client.drop()
        self.a.register(expires=0)  # nothing to write, nothing written
        self.assertEqual(self.redis.writes, writes)
        self.redis.up = True
        self.a.client.connect()
        self.a.register(expires=60)
        self.redis.up = False
        self.a.register(expires=90, cseq=2)  # the write fails: the store reads again and fails
        self.assertEqual(self.a.store.state, StoreState.DOWN)


class RelayedStub:
    """A relayed binding as the store reads it."""

    def __init__(self, token: str, aor: str, contact: Any, flow: Flow) -> None:
        self.token = token
        self.aor = aor
        self.phone_contact = contact
        self.flow = flow
        self.inbound = "access"
        self.outbound = "pbx"
        self.phone_expires_at = 0.0


class HeldElsewhereTests(SynchronousTestCase):
    def test_a_contact_held_by_another_node_is_skipped_and_counted(self) -> None:
        clock = Clock()
        redis = FakeRedis(clock)
        a = Node("A", redis, clock)
        b = Node("B", redis, clock)
        a.register(expires=60)
        redis.deliver()
        core = SbcCore(
            lambda: AdjacencyTable(()), registrar=b.registrar, local_domains=["example.com"]
        )
        uri = parse_uri("sip:bob@example.com")
        self.assertEqual(core._locate(uri, "trunk", clock.seconds()), [])
        self.assertEqual(core.calls.counters.get("access", "held-elsewhere"), 1)
        # A itself calls it
        core_a = SbcCore(
            lambda: AdjacencyTable(()), registrar=a.registrar, local_domains=["example.com"]
        )
        [target] = core_a._locate(uri, "trunk", clock.seconds()) or []
        self.assertEqual(target.flow, A_PHONE)


class RelayedThroughTheStoreTests(SynchronousTestCase):
    """The registration relay (access SBC) on two nodes sharing a store."""

    def setUp(self) -> None:
        from tests.registrar.test_relay import RelayNet

        self.clock = Clock()
        self.redis = FakeRedis(self.clock)
        self.nets = {}
        for name in ("A", "B"):
            net = RelayNet()
            store = SharedStore(name, self.clock.seconds, count=net.core.calls.count)
            store.relayed = net.core.relay.bindings
            net.core.relay.store = store
            FakeClient(self.redis, store).connect()
            self.nets[name] = net
        self.a, self.b = self.nets["A"], self.nets["B"]

    def test_a_relayed_binding_is_shared_and_a_call_for_it_on_b_gets_480(self) -> None:
        from tests.b2bua.test_call import invite
        from tests.registrar.test_relay import CORE, CORE_FLOW

        _, token = self.a.registered(expires=300)
        [key] = self.redis.live()
        self.assertEqual(key, relay_key(token))
        record = self.redis.record(key)
        self.assertEqual(
            (record["node"], record["inbound"], record["outbound"]), ("A", "phones", "core")
        )
        self.redis.deliver()
        seen = self.b.core.relay.store.relayed_held_elsewhere(token, 0.0)  # type: ignore[union-attr]
        assert seen is not None
        self.assertEqual(
            (seen.node, seen.aor, seen.flow.connection_id), ("A", "alice@core.test", 11)
        )
        call = invite(f"sip:{token}@127.0.0.1:5062", via_host="10.0.0.5")
        _, refusal = self.b.one(self.b.feed(call, CORE_FLOW, CORE), "480")
        self.assertEqual(refusal.status, 480)
        self.assertEqual(self.b.counter("phones", "held-elsewhere"), 1)
        # the phone's connection closes on A: the record goes, and from B's view
        self.a.core.connection_closed(11, 1.0)
        self.redis.deliver()
        self.assertEqual(self.redis.live(), {})
        self.assertIsNone(self.b.core.relay.store.relayed_held_elsewhere(token, 1.0))  # type: ignore[union-attr]

    def test_a_new_relayed_registration_is_refused_while_the_store_is_away(self) -> None:
        from tests.registrar.test_relay import PHONE, PHONES, register

        store = self.a.core.relay.store
        assert isinstance(store, SharedStore)
        self.redis.up = False
        store.lost("connection lost")
        sent = self.a.feed(register(), PHONE, PHONES)
        [(flow, refusal)] = sent
        self.assertEqual((flow.connection_id, refusal.status), (11, 503))
        self.assertEqual(refusal.headers.get("Retry-After"), "30")
        self.assertEqual(self.a.counter("phones", "store-unavailable"), 1)
        self.assertEqual(self.a.core.relay.sessions, {})
