"""The store of one machine's worker processes (sbc.cluster.memory), and holders.

Worker processes of one node share their registrations like nodes do, each
under its own holder name (``NODE/W``): a worker started again in place of
one that died removes the records that name it, never its siblings'. The
stores here run on a :class:`~sbc.cluster.memory.MemoryStore` (what the
supervisor keeps) and hear each other at once, as over the control channels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sbc.cluster import SharedStore, StoreState
from sbc.cluster.codec import holder_name, record_holder
from sbc.cluster.memory import MemoryStore
from sbc.cluster.store import HEARTBEAT_INTERVAL, Delete, Drop, Op, Put
from sbc.registrar import Binding, Registrar
from sbc.sip.stack import Flow
from tests.registrar.test_registrar import register

PHONE = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.3", 5070))
TLS_PHONE = Flow("TLS", ("127.0.0.1", 5061), ("127.0.0.3", 40000), 7, pinned=True)
AOR = "bob@example.com"


class Hub:
    """The supervisor's side: a MemoryStore whose messages reach every worker's store."""

    def __init__(self, clock: Clock) -> None:
        self.memory = MemoryStore(clock.seconds)
        self.stores: list[SharedStore] = []

    def publish(self, message: str | None) -> None:
        if message is not None:
            for store in list(self.stores):
                store.message(message)


class HubClient:
    """A worker's StoreClient on the :class:`Hub`."""

    def __init__(self, hub: Hub, store: SharedStore) -> None:
        self.hub = hub
        store.client = self

    def apply(self, ops: Sequence[Op], origin: str, seq: int) -> Deferred[object]:
        self.hub.publish(self.hub.memory.apply(ops, origin, seq))
        return succeed(None)

    def load(self) -> Deferred[list[tuple[str, str, int]]]:
        return succeed(self.hub.memory.load())

    def heartbeat(self, node: str, counts: str, ttl_ms: int) -> Deferred[dict[str, str]]:
        return succeed(self.hub.memory.heartbeat(node, counts, ttl_ms))


class Worker:
    """One worker process's registrar on the hub."""

    def __init__(self, index: int, hub: Hub, clock: Clock, node: str = "edge") -> None:
        self.store = SharedStore(node, clock.seconds, worker=index)
        HubClient(hub, self.store)
        hub.stores.append(self.store)
        self.registrar = Registrar(self.store.location)
        self.clock = clock
        self.store.connected()

    def register(self, flow: Flow = PHONE, **kwargs: object) -> int:
        request = register(**kwargs)  # type: ignore[arg-type]
        return self.registrar.register(request, flow, "access", self.clock.seconds()).status

    def lookup(self) -> list[Binding]:
        return self.registrar.lookup(AOR, self.clock.seconds())


class HolderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.hub = Hub(self.clock)
        self.one = Worker(1, self.hub, self.clock)
        self.two = Worker(2, self.hub, self.clock)

    def test_holder_names(self) -> None:
        self.assertEqual(holder_name("edge"), "edge")
        self.assertEqual(holder_name("edge", 0), "edge")
        self.assertEqual(holder_name("edge", 2), "edge/2")
        self.assertEqual(record_holder('{"node":"edge","worker":3}'), "edge/3")
        self.assertEqual(record_holder('{"node":"edge"}'), "edge")
        self.assertIsNone(record_holder("not json"))

    def test_a_binding_of_worker_1_is_seen_by_worker_2_with_its_worker(self) -> None:
        self.assertEqual(self.one.register(expires=60), 200)
        [seen] = self.two.lookup()
        self.assertEqual((seen.node, seen.worker, seen.flow), ("edge", 1, PHONE))
        [own] = self.one.lookup()
        self.assertIsNone(own.node)
        [(_key, value, ttl)] = self.hub.memory.load()
        self.assertEqual(json.loads(value)["worker"], 1)
        self.assertEqual(ttl, 60_000)

    def test_a_worker_started_again_removes_its_own_records_only(self) -> None:
        self.one.register(expires=60)
        self.two.register(
            flow=TLS_PHONE, contact="<sip:bob@127.0.0.3:40000;transport=tls>", expires=60
        )
        self.assertEqual(len(self.hub.memory.load()), 2)
        # worker 1 dies (no clean stop); a new process takes its place and connects
        self.hub.stores.remove(self.one.store)
        again = Worker(1, self.hub, self.clock)
        # the dead one's heartbeat is still live: the new process waits one heartbeat
        # before it reads or removes anything (it might be another live process)
        self.assertEqual(again.store.state, StoreState.CONFLICT)
        self.assertEqual(len(self.hub.memory.load()), 2)
        self.clock.advance(HEARTBEAT_INTERVAL)
        again.store.tick()
        self.assertEqual(again.store.state, StoreState.UP)
        [left] = self.hub.memory.load()
        self.assertEqual(record_holder(left[1]), "edge/2")
        [seen] = again.lookup()
        self.assertEqual((seen.node, seen.worker), ("edge", 2))
        [kept] = self.two.lookup()
        self.assertIsNone(kept.node)

    def test_counts_of_the_other_workers_are_added(self) -> None:
        self.one.store.call_counts = lambda: {"access": 3}
        self.two.store.call_counts = lambda: {"access": 1}
        self.one.store.tick()
        self.two.store.tick()
        self.one.store.tick()
        self.assertEqual(self.one.store.remote_calls, {"access": 1})
        self.assertEqual(self.two.store.remote_calls, {"access": 3})
        self.assertEqual(self.one.store.nodes, ("edge/1", "edge/2"))


class MemoryStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.memory = MemoryStore(self.clock.seconds)

    def test_put_delete_and_expiry(self) -> None:
        message = json.loads(self.memory.apply([Put("sbc:b:reg:x", "{}", 1500)], "n/1", 4))
        self.assertEqual(
            message, {"by": "n/1", "seq": 4, "ops": [["put", "sbc:b:reg:x", "{}", 1500]]}
        )
        self.assertEqual(self.memory.load(), [("sbc:b:reg:x", "{}", 1500)])
        self.clock.advance(1.5)
        self.assertEqual(self.memory.load(), [])
        self.memory.apply([Put("sbc:b:reg:y", "{}", 1000)], "n/1", 5)
        message = json.loads(self.memory.apply([Delete("sbc:b:reg:y")], "n/2", 1))
        self.assertEqual(message["ops"], [["del", "sbc:b:reg:y"]])
        self.assertEqual(self.memory.load(), [])

    def test_drop_keeps_another_holders_record_and_says_what_it_holds(self) -> None:
        theirs = '{"node":"n","worker":2}'
        self.memory.apply([Put("sbc:b:reg:k", theirs, 10_000)], "n/2", 1)
        self.clock.advance(1)
        message = json.loads(self.memory.apply([Drop("sbc:b:reg:k")], "n/1", 1))
        self.assertEqual(message["ops"], [["put", "sbc:b:reg:k", theirs, 9000]])
        message = json.loads(self.memory.apply([Drop("sbc:b:reg:k")], "n/2", 2))
        self.assertEqual(message["ops"], [["del", "sbc:b:reg:k"]])
        self.assertEqual(self.memory.load(), [])

    def test_heartbeats_expire(self) -> None:
        """Every live holder's heartbeat, and under "" the caller's own before this one."""
        self.assertEqual(self.memory.heartbeat("n/1", "{}", 6000), {"n/1": "{}", "": ""})
        self.clock.advance(5)
        self.assertEqual(
            self.memory.heartbeat("n/2", '{"a":1}', 6000),
            {"n/1": "{}", "n/2": '{"a":1}', "": ""},
        )
        self.clock.advance(2)
        self.assertEqual(self.memory.heartbeat("n/2", "{}", 6000), {"n/2": "{}", "": '{"a":1}'})

    def test_forget_removes_everything_a_dead_worker_held(self) -> None:
        self.memory.apply(
            [
                Put("sbc:b:reg:a", '{"node":"n","worker":1}', 5000),
                Put("sbc:b:relay:t", '{"node":"n","worker":1}', 5000),
                Put("sbc:b:reg:b", '{"node":"n","worker":2}', 5000),
            ],
            "x",
            1,
        )
        self.memory.heartbeat("n/1", "{}", 6000)
        message = self.memory.forget("n/1")
        assert message is not None
        self.assertEqual(
            json.loads(message)["ops"], [["del", "sbc:b:reg:a"], ["del", "sbc:b:relay:t"]]
        )
        self.assertEqual([key for key, _, _ in self.memory.load()], ["sbc:b:reg:b"])
        self.assertNotIn("n/1", self.memory.heartbeat("n/2", "{}", 6000))
        self.assertIsNone(self.memory.forget("n/1"))
