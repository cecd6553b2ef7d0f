"""The supervisor of worker processes (sbc.workers), in memory: no process, no socket.

Each "worker" is a :class:`FakeWorker` handler behind a real
:class:`~sbc.workers.control.ControlProtocol`, connected to the
supervisor's end with ``twisted.test.iosim``; time is a memory reactor's
clock. The real processes run in tests/interop/test_workers.py.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, eventAsJSON, eventFromJSON, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from sbc.cli.commands import CallInfo, RegistrationInfo
from sbc.config import parse_config
from sbc.controller import Committed, Refused
from sbc.workers.control import (
    ControlProtocol,
    RemoteError,
    WorkerSnapshot,
    WorkerStarted,
    WorkerStatus,
    from_wire,
    to_wire,
)
from sbc.workers.supervisor import (
    POLL_INTERVAL,
    RESTART_DELAY,
    Supervisor,
    worker_count,
    worker_log_system,
)

CONFIG = """\
sbc edge
 sbe
  local-domain lab.test
  adjacency sip access
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   transport udp
   remote-address ipv4 127.0.0.0/8
   security untrusted
   attach
"""


def call(index: int, inbound: str = "access") -> CallInfo:
    return CallInfo(index, "INVITE", "confirmed", inbound, "trunk", False, 1.0)


class FakeWorker:
    """What a worker process answers (``remote_*``), with knobs for the tests."""

    def __init__(self, index: int, pid: int) -> None:
        self.index = index
        self.pid = pid
        self.started: dict[str, Any] | None = None
        self.refuse: str | None = None
        self.calls: list[CallInfo] = []
        self.counters: dict[str, dict[str, int]] = {}
        self.registrations: list[RegistrationInfo] = []
        self.log: list[str] = []
        self.messages: list[str] = []
        self.config: str | None = None

    def remote_start(self, **args: Any) -> WorkerStarted:
        self.started = args
        return WorkerStarted(self.pid, [])

    def remote_status(self) -> WorkerStatus:
        active: dict[str, int] = {}
        for c in self.calls:
            active[c.inbound] = active.get(c.inbound, 0) + 1
        return WorkerStatus(active, self.counters)

    def remote_snapshot(self) -> WorkerSnapshot:
        return WorkerSnapshot(self.counters, self.calls, self.registrations, [], [], {})

    def remote_prepare(self, config: str) -> str | None:
        self.log.append("prepare")
        self.config = config
        return self.refuse

    def remote_commit(self) -> None:
        self.log.append("commit")

    def remote_abort(self) -> None:
        self.log.append("abort")

    def remote_store_message(self, data: str) -> None:
        self.messages.append(data)


class FakeProcess:
    def __init__(self, launcher: FakeLauncher, worker: FakeWorker) -> None:
        self.launcher = launcher
        self.worker = worker
        self.pid: int | None = worker.pid
        self.signals: list[str | int] = []

    def signalProcess(self, signal: str | int) -> None:
        self.signals.append(signal)
        if signal in ("KILL", "TERM"):
            self.launcher.end(self.worker.index, None, 9 if signal == "KILL" else 15)


class FakeLauncher:
    """Starts FakeWorkers; ``workers[index]`` is the one in that position now."""

    def __init__(self) -> None:
        self.next_pid = 100
        self.workers: dict[int, FakeWorker] = {}
        self.pumps: dict[int, iosim.IOPump] = {}
        self.ended: dict[int, Any] = {}
        self.worker_ends: dict[int, ControlProtocol] = {}
        self.launches = 0

    def launch(
        self, index: int, control: ControlProtocol, ended: Any, descriptors: Any
    ) -> FakeProcess:
        self.next_pid += 1
        self.launches += 1
        worker = FakeWorker(index, self.next_pid)
        self.workers[index] = worker
        theirs = ControlProtocol(worker)
        self.worker_ends[index] = theirs
        self.pumps[index] = iosim.connect(
            theirs, iosim.FakeTransport(theirs, True), control, iosim.FakeTransport(control, False)
        )
        self.ended[index] = ended
        return FakeProcess(self, worker)

    def flush(self) -> None:
        for _ in range(3):
            for pump in list(self.pumps.values()):
                pump.flush()

    def end(self, index: int, code: int | None, sig: int | None) -> None:
        """The worker process in ``index`` ends: its channel closes, then it is reaped."""
        self.pumps.pop(index)
        self.worker_ends[index].connectionLost(Failure(ConnectionError("gone")))
        ended = self.ended.pop(index)
        ended(code, sig)


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.launcher = FakeLauncher()
        self.config = parse_config(CONFIG, path="edge.conf")
        self.supervisor = Supervisor(
            self.config, self.reactor, 2, launcher=self.launcher, hold_sockets=False
        )
        self.supervisor.startService()
        self.launcher.flush()
        self.assertEqual(self.results(self.supervisor.started), [None])

    def results(self, d: Deferred[Any]) -> list[Any]:
        out: list[Any] = []
        d.addBoth(out.append)
        return out

    def commit(self, text: str) -> Any:
        committing = self.supervisor.controller.commit(parse_config(text, path="candidate"))
        self.launcher.flush()
        [result] = self.results(committing)
        return result

    def test_worker_count(self) -> None:
        self.assertEqual(worker_count("3"), 3)
        self.assertGreaterEqual(worker_count("auto"), 1)
        self.assertRaises(ValueError, worker_count, "0")
        self.assertRaises(ValueError, worker_count, "many")

    def test_every_worker_is_started_on_the_running_configuration(self) -> None:
        for index in (1, 2):
            started = self.launcher.workers[index].started
            assert started is not None
            self.assertEqual(started["index"], index)
            self.assertTrue(started["share"])  # no store line: through the supervisor
            self.assertEqual(parse_config(started["config"], path="x"), self.config)
        states = [(w.index, w.state, w.pid) for w in self.supervisor.backend.workers()]
        self.assertEqual(states, [(1, "ready", 101), (2, "ready", 102)])

    def test_a_commit_applies_to_every_worker(self) -> None:
        result = self.commit(CONFIG.replace("local-domain lab.test", "local-domain other.test"))
        self.assertIsInstance(result, Committed)
        for index in (1, 2):
            self.assertEqual(self.launcher.workers[index].log, ["prepare", "commit"])
        self.assertEqual(self.supervisor.config.local_domains, ("other.test",))

    def test_a_commit_one_worker_refuses_applies_to_none(self) -> None:
        self.launcher.workers[2].refuse = "cannot listen on UDP 127.0.0.1:5070: in use"
        result = self.commit(CONFIG.replace("5060", "5070"))
        self.assertEqual(result, Refused("cannot listen on UDP 127.0.0.1:5070: in use"))
        for index in (1, 2):
            self.assertEqual(self.launcher.workers[index].log, ["prepare", "abort"])
        self.assertEqual(self.supervisor.config, self.config)
        self.assertEqual(len(self.supervisor.controller.commits.records), 0)

    def test_a_commit_while_a_worker_restarts_is_refused(self) -> None:
        self.launcher.workers[1].calls = []
        FakeProcess(self.launcher, self.launcher.workers[1]).signalProcess("KILL")
        result = self.commit(CONFIG.replace("lab.test", "other.test"))
        assert isinstance(result, Refused)
        self.assertIn("worker 1 is restarting", result.reason)
        self.assertEqual(self.launcher.workers[2].log, [])

    def test_a_dead_worker_is_restarted_its_calls_counted_lost_the_others_untouched(self) -> None:
        one, two = self.launcher.workers[1], self.launcher.workers[2]
        one.calls = [call(1), call(2), call(3, "core")]
        one.counters = {"access": {"calls-started": 2}, "core": {"calls-started": 1}}
        two.calls = [call(1)]
        two.counters = {"access": {"calls-started": 1}}
        self.reactor.advance(POLL_INTERVAL)
        self.launcher.flush()
        FakeProcess(self.launcher, one).signalProcess("KILL")
        counters = self.supervisor.backend.counters()
        self.assertEqual(counters["access"]["calls-lost:worker-exit"], 2)
        self.assertEqual(counters["core"]["calls-lost:worker-exit"], 1)
        # the dead worker's counters stay in the machine's totals
        self.assertEqual(counters["access"]["calls-started"], 3)
        self.assertEqual([w.state for w in self.supervisor.backend.workers()], ["exited", "ready"])
        self.reactor.advance(RESTART_DELAY)
        self.launcher.flush()
        self.assertIsNot(self.launcher.workers[1], one)
        self.assertIs(self.launcher.workers[2], two)
        self.assertEqual(self.launcher.launches, 3)
        workers = self.supervisor.backend.workers()
        self.assertEqual([(w.state, w.exits) for w in workers], [("ready", 1), ("ready", 0)])
        self.assertEqual(workers[0].pid, 103)

    def test_show_adds_up_the_workers(self) -> None:
        one, two = self.launcher.workers[1], self.launcher.workers[2]
        one.calls, two.calls = [call(1)], [call(1), call(2)]
        one.counters = {"access": {"calls-started": 4}}
        two.counters = {"access": {"calls-started": 5, "calls-ended": 1}}
        held = RegistrationInfo("bob@lab.test", "sip:bob@10.0.0.9", "access", 60, "UDP x")
        # worker 1 holds bob; worker 2 sees it through the shared store
        one.registrations = [held]
        two.registrations = [
            RegistrationInfo(
                "bob@lab.test", "sip:bob@10.0.0.9", "access", 59, "UDP x",
                held_here=False, worker="1",
            )
        ]  # fmt: skip
        refreshed = self.supervisor.backend.refresh()
        self.launcher.flush()
        self.assertEqual(self.results(refreshed), [None])
        backend = self.supervisor.backend
        self.assertEqual(backend.counters(), {"access": {"calls-ended": 1, "calls-started": 9}})
        self.assertEqual(sorted((c.worker, c.id) for c in backend.calls()), [
            ("1", 1), ("2", 1), ("2", 2),
        ])  # fmt: skip
        [binding] = backend.registrations()
        self.assertEqual((binding.worker, binding.held_here, binding.expires_in), ("1", True, 60))

    def test_the_shared_store_reaches_every_worker_and_forgets_a_dead_one(self) -> None:
        from sbc.cluster.store import Put

        record = json.dumps({"node": self.supervisor.pool.node, "worker": 1})
        writer = self.launcher.worker_ends[1]
        done = self.results(
            writer.call("store_apply", ops=[Put("sbc:b:reg:k", record, 60_000)], origin="n", seq=1)
        )
        self.launcher.flush()
        self.assertEqual(done, [None])
        for index in (1, 2):
            [message] = self.launcher.workers[index].messages
            self.assertEqual(json.loads(message)["ops"][0][:2], ["put", "sbc:b:reg:k"])
        loaded = self.results(self.launcher.worker_ends[2].call("store_load"))
        self.launcher.flush()
        self.assertEqual([row[0] for row in loaded[0]], ["sbc:b:reg:k"])
        FakeProcess(self.launcher, self.launcher.workers[1]).signalProcess("KILL")
        self.launcher.flush()
        gone = json.loads(self.launcher.workers[2].messages[-1])
        self.assertEqual(gone["ops"], [["del", "sbc:b:reg:k"]])

    def test_stop_terminates_every_worker(self) -> None:
        processes = [self.supervisor.pool.slots[i].process for i in (0, 1)]
        stopping = self.supervisor.stopService()
        self.assertEqual(self.results(stopping), [None])
        self.assertEqual([p.signals for p in processes], [["TERM"], ["TERM"]])  # type: ignore[union-attr]
        self.assertEqual(self.launcher.launches, 2)


class ControlChannelTests(SynchronousTestCase):
    def test_typed_values_cross_the_channel(self) -> None:
        snapshot = WorkerSnapshot(
            {"access": {"calls-started": 1}},
            [call(4)],
            [RegistrationInfo("a@b", "sip:a@c", "access", 5, "UDP c", node="n", worker="2")],
            [],
            [],
            {"INVITE-server proceeding": 1},
            0.01,
            0.5,
        )
        self.assertEqual(from_wire(json.loads(json.dumps(to_wire(snapshot)))), snapshot)
        self.assertRaises(TypeError, to_wire, object())
        self.assertRaises(ValueError, from_wire, {"$": "Nothing"})

    def test_errors_and_a_closed_channel(self) -> None:
        class Handler:
            def remote_boom(self) -> None:
                raise RuntimeError("boom")

            def remote_later(self) -> Deferred[int]:
                return Deferred()

        ours, theirs = ControlProtocol(), ControlProtocol(Handler())
        pump = iosim.connect(
            theirs, iosim.FakeTransport(theirs, True), ours, iosim.FakeTransport(ours, False)
        )
        failed: list[Failure] = []
        ours.call("boom").addErrback(failed.append)
        ours.call("missing").addErrback(failed.append)
        pump.flush()
        self.assertEqual([f.check(RemoteError) for f in failed], [RemoteError, RemoteError])
        self.assertEqual(failed[0].getErrorMessage(), "boom")
        self.assertIn("unknown operation", failed[1].getErrorMessage())
        waiting: list[Failure] = []
        ours.call("later").addErrback(waiting.append)
        pump.flush()
        ours.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(len(waiting), 1)
        closed: list[Failure] = []
        ours.call("later").addErrback(closed.append)
        self.assertEqual(len(closed), 1)
        self.flushLoggedErrors(RuntimeError)


class WorkerLogSystemTests(SynchronousTestCase):
    """A worker's log line keeps its namespace and level in the text log's [system]."""

    def test_namespace_and_level_kept(self) -> None:
        event = {"log_namespace": "sbc.cluster", "log_level": LogLevel.warn}
        self.assertEqual(worker_log_system(event, 2), "worker 2 sbc.cluster#warn")

    def test_a_system_of_its_own_kept(self) -> None:
        self.assertEqual(worker_log_system({"log_system": "-"}, 1), "worker 1 -")

    def test_nothing_known(self) -> None:
        self.assertEqual(worker_log_system({}, 3), "worker 3")

    def test_line_through_the_text_log(self) -> None:
        event = eventFromJSON(
            eventAsJSON(
                {
                    "log_namespace": "sbc.cluster",
                    "log_level": LogLevel.warn,
                    "log_format": "store lost: {why}",
                    "why": "gone",
                    "log_time": 0.0,
                }
            )
        )
        event["log_system"] = worker_log_system(event, 2)
        line = formatEventAsClassicLogText(event, formatTime=lambda t: "T")
        self.assertEqual(line, "T [worker 2 sbc.cluster#warn] store lost: gone\n")
