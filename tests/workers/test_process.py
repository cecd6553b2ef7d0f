"""A worker process's side (sbc.workers.process) on a memory reactor.

:class:`~sbc.workers.process.WorkerControl` is driven over a real control
channel (``twisted.test.iosim``) by a stand-in supervisor that keeps the
shared store in a :class:`~sbc.cluster.memory.MemoryStore`.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from sbc.cluster.memory import MemoryStore
from sbc.cluster.store import Op
from sbc.workers.control import ControlProtocol, WorkerSnapshot, WorkerStarted
from sbc.workers.process import LogForwarder, SupervisorStoreClient, WorkerControl
from tests.transport.fakes import Reactor
from tests.workers.test_supervisor import CONFIG


class StandIn:
    """The supervisor's end: the shared store's requests."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.memory = MemoryStore(reactor.seconds)
        self.control: ControlProtocol | None = None
        self.logs: list[str] = []

    def remote_store_apply(self, ops: list[Op], origin: str, seq: int) -> None:
        message = self.memory.apply(ops, origin, seq)
        assert self.control is not None
        self.control.call("store_message", data=message)

    def remote_store_load(self) -> list[list[Any]]:
        return [list(row) for row in self.memory.load()]

    def remote_store_heartbeat(self, holder: str, counts: str, ttl_ms: int) -> dict[str, str]:
        return self.memory.heartbeat(holder, counts, ttl_ms)


class WorkerControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()
        self.handler = WorkerControl(self.reactor, overload_control=False, reuse_port=False)
        self.stand_in = StandIn(self.reactor)
        theirs = ControlProtocol(self.handler)
        self.handler.control = theirs
        ours = ControlProtocol(self.stand_in, on_log=self.stand_in.logs.append)
        self.stand_in.control = ours
        self.ours = ours
        self.pump = iosim.connect(
            theirs, iosim.FakeTransport(theirs, True), ours, iosim.FakeTransport(ours, False)
        )

    def ask(self, op: str, **args: Any) -> Any:
        out: list[Any] = []
        self.ours.call(op, **args).addBoth(out.append)
        for _ in range(4):
            self.pump.flush()
        [result] = out
        return result

    def test_start_share_commit_snapshot_and_stop(self) -> None:
        started = self.ask("start", config=CONFIG, index=2, share=True)
        self.assertIsInstance(started, WorkerStarted)
        worker = self.handler.worker
        assert worker is not None and worker.store is not None
        self.assertEqual(worker.store.holder, f"{worker.store.node}/2")
        self.assertIsInstance(self.handler.store_service, SupervisorStoreClient)
        self.assertTrue(worker.store.available)
        # a commit in two phases
        self.assertIsNone(self.ask("prepare", config=CONFIG.replace("lab.test", "b.test")))
        self.assertIsNone(self.ask("commit"))
        self.assertEqual(worker.config.local_domains, ("b.test",))
        self.assertIsInstance(self.ask("commit").value, Exception)  # nothing prepared
        self.flushLoggedErrors(RuntimeError)
        snapshot = self.ask("snapshot")
        self.assertIsInstance(snapshot, WorkerSnapshot)
        self.assertEqual(snapshot.calls, [])
        # the heartbeat goes to the supervisor's store
        self.reactor.advance(2.0)
        self.pump.flush()
        self.assertIn(worker.store.holder, self.stand_in.memory.heartbeats)
        stopping = self.handler.stop()
        assert isinstance(stopping, Deferred)
        for _ in range(4):
            self.pump.flush()
        self.assertNotIn(worker.store.holder, self.stand_in.memory.heartbeats)

    def test_log_events_are_forwarded_as_json(self) -> None:
        LogForwarder(self.handler.control)(  # type: ignore[arg-type]
            {"log_format": "hello {who}", "who": "there", "log_namespace": "x"}
        )
        self.pump.flush()
        [text] = self.stand_in.logs
        self.assertEqual(json.loads(text)["who"], "there")
