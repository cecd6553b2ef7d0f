"""``twistd sbc --workers N``: a supervisor and N worker processes on one machine.

The twistd process becomes the :class:`Supervisor`. It carries no SIP: it
owns the management CLI socket (and ``--ssh``), the metrics endpoint and the
:class:`~sbc.controller.ConfigController` (commits, history, the file), and
runs N worker processes (:mod:`sbc.workers.process`) through a
:class:`WorkerPool`:

- each worker is a fresh interpreter started with ``spawnProcess`` (not
  ``fork``: the supervisor's reactor, its listening sockets and its log
  files are never shared by accident; a restarted worker starts the same
  way as the first ones). Its only link to the supervisor is its control
  channel (:mod:`sbc.workers.control`), over which it is sent the running
  configuration at start and sends its log events;
- every worker listens on every port with ``SO_REUSEPORT``
  (:mod:`sbc.transport.reuseport`): the kernel spreads UDP flows and TCP/TLS
  connections over them, and each worker has its own UDP port for what it
  starts (docs/scaling.md says how affinity is kept);
- a worker that ends is restarted (after :data:`RESTART_DELAY`, growing to
  :data:`MAX_RESTART_DELAY` while it keeps ending within
  :data:`STABLE_SECONDS`); its calls are lost: counted as
  ``calls-lost:worker-exit`` on their inbound adjacency, from the
  supervisor's last poll (every :data:`POLL_INTERVAL`); its counters stay in
  the machine's totals. A worker that does not answer for
  :data:`HANG_SECONDS` is killed and restarted;
- SIGTERM stops every worker (SIGTERM, then SIGKILL after
  :data:`STOP_SECONDS`) before the supervisor exits.

A commit applies to every worker or to none (two phases, see
:mod:`sbc.controller`): the pool asks every worker to prepare the new
configuration (check the user database, the listeners to open); if one
refuses, every worker forgets it and the commit is refused with that
worker's reason; otherwise the controller saves the file once and every
worker applies it. While a worker is starting, commits are refused ("not
now"; an expiring ``commit confirmed`` waits for it). ``show`` and the
metrics add up what every worker reports (:class:`SupervisorBackend`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.error import ProcessExitedAlready, ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import ILogObserver, Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from sbc.adjacencies import UDP, AdjacencyTable, ListenerKey
from sbc.cli import replies
from sbc.cli.commands import (
    BlockedSourceInfo,
    CallInfo,
    OpenConnection,
    RegistrationInfo,
    WorkerInfo,
)
from sbc.cluster.codec import holder_name
from sbc.cluster.memory import MemoryStore
from sbc.cluster.store import Op
from sbc.commits import CommitRecord
from sbc.config import SbcConfig, render_config
from sbc.controller import RETRY_LATER, CommitPlan, ConfigController, Refused
from sbc.counters import Counters
from sbc.metrics import SbcCollector
from sbc.service import (
    SshSettings,
    TlsFiles,
    install_sighup,
    load_checked,
    log_adjacencies,
    preflight_problems,
    restore_sighup,
    use_log_observer,
)
from sbc.transport.reuseport import shared_socket
from sbc.transport.tls import TlsConfigError, load_tls_identity
from sbc.worker import (
    Released,
    TlsReloaded,
    UsersReloaded,
    bans_released,
    describe_tls_identity,
    merge_counters,
    node_name,
)
from sbc.workers.control import ControlProtocol, WorkerSnapshot, WorkerStarted, WorkerStatus

__all__ = [
    "HANG_SECONDS",
    "MAX_RESTART_DELAY",
    "POLL_INTERVAL",
    "RESTART_DELAY",
    "STABLE_SECONDS",
    "STOP_SECONDS",
    "SpawnLauncher",
    "Supervisor",
    "SupervisorBackend",
    "WorkerLauncher",
    "WorkerPool",
    "WorkerSlot",
    "worker_count",
]

POLL_INTERVAL = 1.0
"""Seconds between two status polls of each worker (live calls, counters)."""
REQUEST_SECONDS = 10.0
"""How long a worker has to answer a request (prepare, commit, snapshot...)."""
START_SECONDS = 30.0
"""How long a new worker has to open its listeners."""
HANG_SECONDS = 30.0
"""A running worker that answers no status poll for this long is killed and restarted."""
RESTART_DELAY = 1.0
"""Seconds before a worker that ended is started again..."""
MAX_RESTART_DELAY = 30.0
"""... doubling up to this while it keeps ending within ``STABLE_SECONDS`` of its start."""
STABLE_SECONDS = 10.0
STOP_SECONDS = 10.0
"""At stop: seconds between SIGTERM and SIGKILL for a worker that has not ended."""

STARTING, READY, EXITED = "starting", "ready", "exited"

FIRST_SOCKET_FD = 4
"""A worker's first inherited listening socket (3 is its control channel)."""


#: The most ``--workers`` takes: each worker is a whole Python process with its
#: own copy of the registrations' view, so more than a few per core only costs.
MAX_WORKERS = 64


def worker_count(text: str) -> int:
    """``--workers``: a positive number, or ``auto`` (one per CPU this process may use)."""
    if text.strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    value = int(text)
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"from 1 to {MAX_WORKERS}")
    return value


# -- processes ------------------------------------------------------------------------


class ProcessHandle(Protocol):
    """A started worker process: its id, and how to signal it."""

    pid: int | None

    def signalProcess(self, signal: str | int) -> None: ...


class WorkerLauncher(Protocol):
    """Starts worker processes (:class:`SpawnLauncher`; tests launch in memory)."""

    def launch(
        self,
        index: int,
        control: ControlProtocol,
        ended: Callable[[int | None, int | None], object],
        descriptors: Mapping[int, int],
    ) -> ProcessHandle:
        """Start worker ``index`` with ``control`` as the supervisor's end of its channel;
        ``ended(exit code, signal)`` is called once when it ends. ``descriptors``:
        the child's descriptor number -> this process's (its listening sockets)."""


class _WorkerProcess(ProcessProtocol):
    def __init__(self, ended: Callable[[int | None, int | None], object]) -> None:
        self.ended = ended

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        self.ended(getattr(value, "exitCode", None), getattr(value, "signal", None))


class _OneProtocol(Factory):
    def __init__(self, control: ControlProtocol) -> None:
        self.control = control

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return self.control


class SpawnLauncher:
    """Starts ``python -m sbc.workers.process`` with ``spawnProcess`` (see the module docstring).

    The control channel is a ``socketpair``: the child's end becomes its
    descriptor 3, the supervisor adopts the other. The child runs this
    Python with this process's module path (``PYTHONPATH``), so it runs the
    same sbc.
    """

    def __init__(self, reactor: Any, python: str = sys.executable) -> None:
        self.reactor = reactor
        self.python = python

    def launch(
        self,
        index: int,
        control: ControlProtocol,
        ended: Callable[[int | None, int | None], object],
        descriptors: Mapping[int, int],
    ) -> ProcessHandle:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            process = self.reactor.spawnProcess(
                _WorkerProcess(ended),
                self.python,
                [self.python, "-m", "sbc.workers.process", "--index", str(index)],
                env=env,
                childFDs={0: "w", 1: 1, 2: 2, 3: theirs.fileno(), **descriptors},
            )
            ours.setblocking(False)
            self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _OneProtocol(control))
        finally:
            ours.close()
            theirs.close()
        handle: ProcessHandle = process
        return handle


# -- the pool -------------------------------------------------------------------------


@attrs.define(eq=False)
class WorkerSlot:
    """One worker position (1..N): the process in it now and what it last reported."""

    index: int
    state: str = EXITED
    process: ProcessHandle | None = None
    control: ControlProtocol | None = None
    started_at: float = 0.0
    last_answer: float = 0.0
    status: WorkerStatus | None = None
    snapshot: WorkerSnapshot | None = None
    counters: dict[str, dict[str, int]] = attrs.field(factory=dict)
    restart_delay: float = RESTART_DELAY
    restart: IDelayedCall | None = None
    exits: int = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class WorkerPool:
    """N worker processes: start, poll, restart, stop; a :class:`ConfigTarget` for commits.

    ``start_args(index)`` returns the ``start`` request's arguments
    (configuration text, file paths) for a worker being started.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        count: int,
        launcher: WorkerLauncher,
        start_args: Callable[[int], dict[str, Any]],
        hub: MemoryStore | None = None,
        node: str = "",
        listeners: Callable[[], Sequence[ListenerKey]] | None = None,
    ) -> None:
        self.reactor = reactor
        #: The listeners of the configuration in force, whose sockets this process holds
        #: for each worker position (None: the workers open their own; tests).
        self.listeners = listeners
        #: worker position -> listener -> the socket it is given (and this process keeps)
        self.sockets: dict[int, dict[ListenerKey, socket.socket]] = {}
        #: The workers' shared store (no ``store`` line), or None (Redis, or no sharing).
        self.hub = hub
        #: This machine's node name (what the workers' bindings record).
        self.node = node
        self.launcher = launcher
        self.start_args = start_args
        self.slots = [WorkerSlot(index) for index in range(1, count + 1)]
        self.stopping = False
        #: Counters of the processes that ended (the machine's totals never go back).
        self.retired: dict[str, dict[str, int]] = {}
        #: The supervisor's own counters (calls-lost:worker-exit).
        self.counters = Counters()
        self._poll: IDelayedCall | None = None
        self._prepared: list[WorkerSlot] = []
        self._ready_waiters: dict[int, Deferred[None]] = {}
        self._stopped: dict[int, Deferred[None]] = {}
        self._refreshing: Deferred[None] | None = None
        self._refresh_waiters: list[Deferred[None]] = []

    # -- start and stop ---------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start every worker; fires when all listen, fails with the first that cannot."""
        waits = [self._launch(slot) for slot in self.slots]
        self._poll = self.reactor.callLater(POLL_INTERVAL, self._poll_all)
        gathered = DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)

        def unwrap(failure: Failure) -> Failure:
            sub = getattr(failure.value, "subFailure", None)
            return sub if isinstance(sub, Failure) else failure

        return gathered.addCallbacks(lambda _: None, unwrap)

    def _launch(self, slot: WorkerSlot) -> Deferred[None]:
        slot.restart = None
        slot.state = STARTING
        slot.status = slot.snapshot = None
        slot.counters = {}
        slot.started_at = slot.last_answer = self.reactor.seconds()
        control = ControlProtocol(
            _StoreHandler(self) if self.hub is not None else None,
            on_log=lambda text: self._worker_log(slot, text),
        )
        slot.control = control
        ready: Deferred[None] = Deferred()
        self._ready_waiters[slot.index] = ready
        try:
            held = self._hold_sockets(slot.index)
        except OSError as error:
            ready.errback(RuntimeError(f"worker {slot.index}: cannot listen: {error}"))
            self._ready_waiters.pop(slot.index, None)
            slot.state = EXITED
            slot.control = None
            return ready
        descriptors = {FIRST_SOCKET_FD + n: sock.fileno() for n, (_, sock) in enumerate(held)}
        slot.process = self.launcher.launch(
            slot.index,
            control,
            lambda code, sig: self._ended(slot, control, code, sig),
            descriptors,
        )
        args = self.start_args(slot.index)
        args["sockets"] = [
            [key.address, key.port, key.transport, FIRST_SOCKET_FD + n]
            for n, (key, _) in enumerate(held)
        ]
        starting = control.call("start", **args)
        starting.addTimeout(START_SECONDS, self.reactor)
        starting.addCallbacks(
            lambda started: self._started(slot, control, started),
            lambda failure: self._start_failed(slot, control, failure),
        )
        return ready

    def _hold_sockets(self, index: int) -> list[tuple[ListenerKey, socket.socket]]:
        """The listening sockets of worker position ``index``, made once and kept here.

        Each worker position has its own socket for every listener, bound with
        ``SO_REUSEPORT``; this process keeps it while the worker comes and
        goes, so the kernel's choice of a socket for each UDP flow does not
        change when a worker is started again (docs/scaling.md).
        """
        if self.listeners is None:
            return []
        held = self.sockets.setdefault(index, {})
        for key in self.listeners():
            if key not in held:
                kind = socket.SOCK_DGRAM if key.transport == UDP else socket.SOCK_STREAM
                held[key] = shared_socket(key, kind)
        return sorted(held.items())

    def release_sockets(self, keep: set[ListenerKey] | None = None) -> None:
        """Close the sockets held for listeners not in ``keep`` (None: every one)."""
        for held in self.sockets.values():
            for key in [k for k in held if keep is None or k not in keep]:
                held.pop(key).close()

    def _started(self, slot: WorkerSlot, control: ControlProtocol, started: WorkerStarted) -> None:
        if slot.control is not control:
            return
        slot.state = READY
        slot.last_answer = self.reactor.seconds()
        self.log.info(
            "worker {index} ready (pid {pid})",
            event="worker.ready",
            index=slot.index,
            pid=started.pid,
        )
        waiter = self._ready_waiters.pop(slot.index, None)
        if waiter is not None:
            waiter.callback(None)

    def _start_failed(self, slot: WorkerSlot, control: ControlProtocol, failure: Failure) -> None:
        if slot.control is not control:
            return
        why = failure.getErrorMessage()
        self.log.error(
            "worker {index} could not start: {why}",
            event="worker.start-failed",
            index=slot.index,
            why=why,
        )
        waiter = self._ready_waiters.pop(slot.index, None)
        if waiter is not None:
            waiter.errback(RuntimeError(f"worker {slot.index}: {why}"))
        self._kill(slot)

    def _ended(
        self, slot: WorkerSlot, control: ControlProtocol, code: int | None, sig: int | None
    ) -> None:
        """A worker process ended: count what it held, restart it (unless stopping)."""
        was = slot.state
        status, counters = slot.status, slot.counters
        slot.state = EXITED
        slot.process = None
        slot.control = None
        slot.snapshot = None
        slot.exits += 1
        self.retired = merge_counters([self.retired, counters])
        slot.counters = {}
        stopped = self._stopped.pop(slot.index, None)
        if stopped is not None:
            stopped.callback(None)
        waiter = self._ready_waiters.pop(slot.index, None)
        if waiter is not None:
            waiter.errback(RuntimeError(f"worker {slot.index} ended while starting"))
        if self.hub is not None:
            # its connections died with it: its bindings go at once, for every worker
            self.publish(self.hub.forget(holder_name(self.node, slot.index)))
        if self.stopping:
            return
        lost = dict(status.active_calls) if status is not None else {}
        for adjacency, calls in lost.items():
            self.counters.increment(adjacency, "calls-lost:worker-exit", calls)
        ran = self.reactor.seconds() - slot.started_at
        if ran < STABLE_SECONDS and was != READY:
            slot.restart_delay = min(MAX_RESTART_DELAY, slot.restart_delay * 2)
        elif ran >= STABLE_SECONDS:
            slot.restart_delay = RESTART_DELAY
        self.log.warn(
            "worker {index} ended ({how}); {lost} live call(s) lost; restarting in {delay:g} s",
            event="worker.exited",
            index=slot.index,
            how=f"signal {sig}" if sig is not None else f"exit status {code}",
            exit_status=code,
            signal=sig,
            lost=sum(lost.values()),
            lost_calls=lost,
            delay=slot.restart_delay,
        )
        slot.restart = self.reactor.callLater(slot.restart_delay, self._restart, slot)

    def _restart(self, slot: WorkerSlot) -> None:
        if self.stopping or slot.state != EXITED:
            return
        self._launch(slot).addErrback(lambda failure: None)  # logged by _start_failed

    def _kill(self, slot: WorkerSlot) -> None:
        if slot.process is None:
            return
        with contextlib.suppress(ProcessExitedAlready, OSError):
            slot.process.signalProcess("KILL")

    def stop(self) -> Deferred[None]:
        """SIGTERM every worker, SIGKILL those still there after :data:`STOP_SECONDS`."""
        self.stopping = True
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        waits = []
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            if slot.process is None:
                continue
            waiter: Deferred[None] = Deferred()
            self._stopped[slot.index] = waiter
            waits.append(waiter)
            with contextlib.suppress(ProcessExitedAlready, OSError):
                slot.process.signalProcess("TERM")
        if not waits:
            self.release_sockets()
            return succeed(None)
        killer = self.reactor.callLater(STOP_SECONDS, self._kill_all)
        done = DeferredList(waits)

        def stopped(_: object) -> None:
            self.release_sockets()
            if killer.active():
                killer.cancel()

        return done.addCallback(stopped)

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                self.log.warn(
                    "worker {index} did not stop within {seconds:g} s: killed",
                    index=slot.index,
                    seconds=STOP_SECONDS,
                )
                self._kill(slot)

    # -- polling ----------------------------------------------------------------------

    def _poll_all(self) -> None:
        self._poll = self.reactor.callLater(POLL_INTERVAL, self._poll_all)
        now = self.reactor.seconds()
        for slot in self.ready:
            if now - slot.last_answer > HANG_SECONDS:
                self.log.error(
                    "worker {index} has not answered for {seconds:g} s: killed",
                    event="worker.hung",
                    index=slot.index,
                    seconds=HANG_SECONDS,
                )
                self._kill(slot)
                continue
            self._ask(slot, "status").addCallbacks(
                lambda status, slot=slot: self._got_status(slot, status), lambda failure: None
            )

    def _got_status(self, slot: WorkerSlot, status: WorkerStatus) -> None:
        slot.status = status
        slot.counters = status.counters

    def _ask(self, slot: WorkerSlot, op: str, **args: Any) -> Deferred[Any]:
        control = slot.control
        if control is None:
            return fail(RuntimeError(f"worker {slot.index} is gone"))
        asking = control.call(op, **args)
        asking.addTimeout(REQUEST_SECONDS, self.reactor)

        def answered(result: Any) -> Any:
            if slot.control is control:
                slot.last_answer = self.reactor.seconds()
            return result

        return asking.addCallback(answered)

    @property
    def ready(self) -> list[WorkerSlot]:
        """The workers running now."""
        return [slot for slot in self.slots if slot.state == READY]

    def refresh(self) -> Deferred[None]:
        """Fetch every running worker's snapshot; requests meanwhile share the fetch."""
        waiter: Deferred[None] = Deferred()
        self._refresh_waiters.append(waiter)
        if self._refreshing is None:
            asks = []
            for slot in self.ready:
                asks.append(
                    self._ask(slot, "snapshot").addCallbacks(
                        lambda snapshot, slot=slot: self._got_snapshot(slot, snapshot),
                        lambda failure, slot=slot: self._no_snapshot(slot, failure),
                    )
                )
            self._refreshing = DeferredList(asks).addCallback(self._refreshed)
        return waiter

    def _got_snapshot(self, slot: WorkerSlot, snapshot: WorkerSnapshot) -> None:
        slot.snapshot = snapshot
        slot.counters = snapshot.counters
        active: dict[str, int] = {}
        for call in snapshot.calls:
            active[call.inbound] = active.get(call.inbound, 0) + 1
        # what a worker that ends now loses is what was last seen of it
        slot.status = WorkerStatus(active, snapshot.counters)

    def _no_snapshot(self, slot: WorkerSlot, failure: Failure) -> None:
        slot.snapshot = None
        self.log.warn(
            "worker {index} gave no snapshot: {why}",
            index=slot.index,
            why=failure.getErrorMessage(),
        )

    def _refreshed(self, _: object) -> None:
        self._refreshing = None
        waiters, self._refresh_waiters = self._refresh_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def ask_all(self, op: str, **args: Any) -> Deferred[list[tuple[WorkerSlot, bool, Any]]]:
        """Ask every running worker ``op``; fires with (slot, success, result or failure)."""
        slots = self.ready
        asks = [self._ask(slot, op, **args) for slot in slots]

        def pair(results: list[tuple[bool, Any]]) -> list[tuple[WorkerSlot, bool, Any]]:
            return [(slot, ok, value) for slot, (ok, value) in zip(slots, results)]

        return DeferredList(asks, consumeErrors=True).addCallback(pair)

    def publish(self, message: str | None) -> None:
        """Hand a message of the shared store to every worker that has a channel, in order."""
        if message is None:
            return
        for slot in self.slots:
            if slot.control is not None and slot.control.connected_now:
                slot.control.call("store_message", data=message).addErrback(lambda _: None)

    # -- logs -------------------------------------------------------------------------

    def _worker_log(self, slot: WorkerSlot, text: str) -> None:
        """Publish a worker's log event here, marked with the worker's number."""
        try:
            event = eventFromJSON(text)
        except ValueError:
            return
        event["worker"] = slot.index
        if "log_text" not in event or "log_system" in event:
            event["log_system"] = worker_log_system(event, slot.index)
        globalLogPublisher(event)

    # -- configuration (a ConfigTarget) ----------------------------------------------

    def prepare(self, plan: CommitPlan) -> Deferred[str | None]:
        """Every worker prepares ``plan``; the first refusal (or None)."""
        for slot in self.slots:
            if slot.state != READY:
                return succeed(
                    f"{RETRY_LATER} worker {slot.index} is "
                    f"{'starting' if slot.state == STARTING else 'restarting'}; "
                    "commit again in a moment"
                )
        self._prepared = list(self.slots)
        asking = self.ask_all("prepare", config=plan.text)

        def decided(results: list[tuple[WorkerSlot, bool, Any]]) -> str | None:
            for slot, ok, value in results:
                if not ok:
                    return (
                        f"{RETRY_LATER} worker {slot.index} did not answer "
                        f"({value.getErrorMessage()}); commit again"
                    )
            for _, _, reason in results:
                if reason is not None:
                    return str(reason)
            return None

        return asking.addCallback(decided)

    def abort(self, plan: CommitPlan) -> None:
        prepared, self._prepared = self._prepared, []
        for slot in prepared:
            if slot.state == READY:
                self._ask(slot, "abort").addErrback(lambda failure: None)

    def commit(self, plan: CommitPlan) -> Deferred[None]:
        """Every prepared worker applies ``plan``; one that fails is restarted on it.

        The sockets held for listeners the candidate no longer has are closed
        (the workers close theirs). A listener it adds is opened by each
        worker itself, until that worker is started again.
        """
        self.release_sockets(set(AdjacencyTable(plan.candidate.adjacencies).listeners))
        prepared, self._prepared = self._prepared, []
        asks = [self._ask(slot, "commit") for slot in prepared]

        def applied(results: list[tuple[bool, Any]]) -> None:
            for slot, (ok, value) in zip(prepared, results):
                if not ok:
                    self.log.error(
                        "worker {index} failed to apply the commit ({why}): restarted on it",
                        event="worker.apply-failed",
                        index=slot.index,
                        why=value.getErrorMessage(),
                    )
                    self._kill(slot)

        return DeferredList(asks, consumeErrors=True).addCallback(applied)

    # -- what show and the metrics read ------------------------------------------------

    def machine_counters(self) -> dict[str, dict[str, int]]:
        """Every counter of the machine: ended workers, running ones, the supervisor's."""
        live = [slot.counters for slot in self.slots if slot.state != EXITED]
        return merge_counters([self.retired, *live, self.counters.snapshot()])

    def snapshots(self) -> Iterator[tuple[WorkerSlot, WorkerSnapshot]]:
        for slot in self.ready:
            if slot.snapshot is not None:
                yield slot, slot.snapshot


class _StoreHandler:
    """What a worker asks of the supervisor's shared store (:mod:`sbc.cluster.memory`)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def _hub(self) -> MemoryStore:
        hub = self.pool.hub
        if hub is None:
            raise RuntimeError("no shared store here")
        return hub

    def remote_store_apply(self, ops: list[Op], origin: str, seq: int) -> None:
        self.pool.publish(self._hub().apply(ops, origin, seq))

    def remote_store_load(self) -> list[list[Any]]:
        return [[key, value, ttl] for key, value, ttl in self._hub().load()]

    def remote_store_heartbeat(self, holder: str, counts: str, ttl_ms: int) -> dict[str, str]:
        return self._hub().heartbeat(holder, counts, ttl_ms)


# -- the CLI and the metrics --------------------------------------------------------


class SupervisorBackend:
    """The CLI backend of the machine (:class:`~sbc.cli.commands.SbcBackend`, refreshing).

    Commits go through the controller (to every worker); ``show services``
    reads the snapshots :meth:`refresh` fetched from every worker.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.pool = supervisor.pool
        self.controller = supervisor.controller

    def refresh(self) -> Deferred[None]:
        return self.pool.refresh()

    def running_config(self) -> SbcConfig:
        return self.controller.running

    def commit(
        self,
        candidate: SbcConfig,
        *,
        user: str = "",
        client: str = "",
        comment: str = "",
        confirm_within: int | None = None,
    ) -> Deferred[list[str]]:
        committing = self.controller.commit(
            candidate, user=user, client=client, comment=comment, confirm_within=confirm_within
        )
        return committing.addCallback(replies.commit_lines)

    def pending_confirmation(self) -> tuple[int, int] | None:
        return self.controller.pending_confirmation()

    def confirm_commit(self, *, user: str = "", client: str = "") -> list[str]:
        return replies.confirm_lines(self.controller.confirm(user=user, client=client))

    def commit_history(self) -> Sequence[CommitRecord]:
        return self.controller.commits.records

    def rollback(
        self, *, last: int | None = None, to: int | None = None, user: str = "", client: str = ""
    ) -> Deferred[list[str]]:
        rolling = self.controller.rollback(last=last, to=to, user=user, client=client)
        return rolling.addCallback(replies.rollback_lines)

    def reload_tls(self) -> Deferred[list[str]]:
        return self.supervisor.reload_tls().addCallback(replies.reload_tls_lines)

    def reload_users(self) -> Deferred[list[str]]:
        return self.supervisor.reload_users().addCallback(replies.reload_users_lines)

    def release_source(self, address: str | None) -> Deferred[list[str]]:
        releasing = self.pool.ask_all("release", address=address)

        def released(results: list[tuple[WorkerSlot, bool, Any]]) -> list[str]:
            answers = [value for _, ok, value in results if ok and isinstance(value, Released)]
            return replies.release_lines(bans_released(answers or [Released(address)]))

        return releasing.addCallback(released)

    def counters(self) -> Mapping[str, Mapping[str, int]]:
        return self.pool.machine_counters()

    def calls(self) -> Sequence[CallInfo]:
        return [
            attrs.evolve(call, worker=str(slot.index))
            for slot, snapshot in self.pool.snapshots()
            for call in snapshot.calls
        ]

    def registrations(self) -> Sequence[RegistrationInfo]:
        """Every binding once: each worker's view holds the others' too (a shared store).

        A binding is listed as its holder reports it (``held_here``) when the
        holder answered, else as another worker sees it.
        """
        found: dict[tuple[str, str, str, str, str], RegistrationInfo] = {}
        for slot, snapshot in self.pool.snapshots():
            for binding in snapshot.registrations:
                if not binding.worker and binding.held_here:
                    binding = attrs.evolve(binding, worker=str(slot.index))
                b = binding
                key = (b.aor, b.contact, b.relayed_to, b.node, b.worker)
                seen = found.get(key)
                if seen is None or (binding.held_here and not seen.held_here):
                    found[key] = binding
        return list(found.values())

    def workers(self) -> Sequence[WorkerInfo]:
        """Every worker position: its process, state, exits and live calls."""
        now = self.supervisor.reactor.seconds()
        out = []
        for slot in self.pool.slots:
            snapshot = slot.snapshot if slot.state == READY else None
            out.append(
                WorkerInfo(
                    slot.index,
                    slot.pid,
                    slot.state,
                    max(0, int(now - slot.started_at)),
                    slot.exits,
                    len(snapshot.calls) if snapshot is not None else 0,
                )
            )
        return out

    def blocked_sources(self) -> Sequence[BlockedSourceInfo]:
        """The bans of every worker; a source banned by several is one row (drops added)."""
        merged: dict[str, BlockedSourceInfo] = {}
        for _, snapshot in self.pool.snapshots():
            for ban in snapshot.blocked:
                seen = merged.get(ban.address)
                if seen is None:
                    merged[ban.address] = ban
                else:
                    merged[ban.address] = attrs.evolve(
                        seen,
                        since=min(seen.since, ban.since),
                        remaining=max(seen.remaining, ban.remaining),
                        dropped=seen.dropped + ban.dropped,
                    )
        return list(merged.values())

    def connections(self) -> list[OpenConnection]:
        return [c for _, snapshot in self.pool.snapshots() for c in snapshot.connections]

    def transactions(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for _, snapshot in self.pool.snapshots():
            for name, count in snapshot.transactions.items():
                totals[name] = totals.get(name, 0) + count
        return totals

    def overload(self) -> tuple[float, float]:
        """The most loaded worker's (lag, share shed)."""
        states = [(s.lag, s.share) for _, s in self.pool.snapshots()]
        if not states:
            return 0.0, 0.0
        return max(lag for lag, _ in states), max(share for _, share in states)


class WorkerCollector:
    """Metrics of the worker processes themselves (a prometheus_client collector)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "sbc_workers",
            "Worker processes by state (starting, ready, exited: waiting for its restart).",
            labels=["state"],
        )
        for state in (STARTING, READY, EXITED):
            states.add_metric([state], sum(1 for s in self.pool.slots if s.state == state))
        yield states
        exits = CounterMetricFamily(
            "sbc_worker_exits",
            "Worker processes that ended (and were restarted).",
            labels=["worker"],
        )
        for slot in self.pool.slots:
            exits.add_metric([str(slot.index)], slot.exits)
        yield exits


# -- the service ---------------------------------------------------------------------


def worker_log_system(event: dict[str, Any], index: int) -> str:
    """The ``[system]`` of a worker's log line in the text log: ``worker N`` and what the
    worker's own line had (``sbc.cluster#warn``), so levels stay greppable."""
    system = event.get("log_system")
    if system is None and "log_namespace" in event:
        level = getattr(event.get("log_level"), "name", "-")
        system = f"{event['log_namespace']}#{level}"
    return f"worker {index}" + (f" {system}" if system else "")


class Supervisor(MultiService):
    """``twistd sbc --workers N``: see the module docstring.

    Built like :class:`~sbc.service.SbcService` (:meth:`from_config` checks
    the configuration, the TLS files and the user database first) and run
    by twistd the same way; ``launcher`` starts the workers (default:
    :class:`SpawnLauncher`).
    """

    log = Logger()

    def __init__(
        self,
        config: SbcConfig,
        reactor: Any,
        workers: int,
        *,
        tls: TlsFiles | None = None,
        config_path: str | None = None,
        cli_endpoint: str | None = None,
        ssh: SshSettings | None = None,
        metrics_endpoint: str | None = None,
        reload_on_sighup: bool = False,
        launcher: WorkerLauncher | None = None,
        hold_sockets: bool = True,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.tls_files = tls
        self.reload_on_sighup = reload_on_sighup
        self._previous_sighup: Any = None
        #: The log observer ``twistd sbc`` gives the application.
        self.log_observer: ILogObserver | None = None
        #: Why the supervisor gave up at start-up.
        self.fatal_error: str | None = None
        #: No ``store`` line: the workers share registrations through this process.
        self.hub = MemoryStore(reactor.seconds) if config.store is None else None
        self.pool = WorkerPool(
            reactor,
            workers,
            launcher or SpawnLauncher(reactor),
            self._start_args,
            self.hub,
            node_name(config),
            self._listeners if hold_sockets else None,
        )
        self.controller = ConfigController(
            config,
            reactor,
            config_path=config_path,
            certificate_configured=tls is not None,
            shared_store=True,
            target=self.pool,
        )
        self.backend = SupervisorBackend(self)
        self.setName(f"sbc {config.service_name}")
        if cli_endpoint is not None:
            from sbc.cli.server import CliService

            CliService(self, cli_endpoint).setServiceParent(self)
        if ssh is not None:
            from sbc.cli.ssh import SshCliService

            SshCliService(self, ssh).setServiceParent(self)
        if metrics_endpoint is not None:
            from sbc.metrics import MetricsService

            metrics = MetricsService(
                self, metrics_endpoint, self._collector(), refresh=self.pool.refresh
            )
            metrics.registry.register(WorkerCollector(self.pool))
            metrics.setServiceParent(self)

    @classmethod
    def from_config(
        cls,
        config: SbcConfig,
        reactor: Any,
        workers: int,
        *,
        tls: TlsFiles | None = None,
        config_path: str | None = None,
        **options: Any,
    ) -> Supervisor:
        """Check ``config`` as a single process would (``ConfigError``), then build."""
        load_checked(config, tls, config_path, shared_store=True)
        return cls(config, reactor, workers, tls=tls, config_path=config_path, **options)

    @property
    def config(self) -> SbcConfig:
        """The configuration in force."""
        return self.controller.running

    def cli_backend(self) -> SupervisorBackend:
        return self.backend

    def _collector(self) -> SbcCollector:
        backend = self.backend
        return SbcCollector(
            backend.counters,
            adjacencies=lambda: self.config.adjacencies,
            calls=backend.calls,
            registrations=backend.registrations,
            connections=backend.connections,
            transactions=backend.transactions,
            blocked=backend.blocked_sources,
            service_name=self.config.service_name,
            overload=backend.overload,
        )

    def _listeners(self) -> list[ListenerKey]:
        return AdjacencyTable(self.controller.running.adjacencies).listeners

    def _start_args(self, index: int) -> dict[str, Any]:
        tls = self.tls_files
        return {
            "config": render_config(self.controller.running),
            "index": index,
            "config_path": self.controller.config_path,
            "tls": [tls.certificate, tls.private_key, tls.ca_certificates] if tls else None,
            "share": self.hub is not None,
        }

    def setServiceParent(self, parent: Any) -> None:
        use_log_observer(self.log_observer, parent)
        super().setServiceParent(parent)

    # -- start and stop -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.reload_on_sighup:
            self._previous_sighup = install_sighup(self.reactor, self._reload_on_signal, self.log)
        log_adjacencies(self.log, self.config)
        self.started = self.pool.start()
        self.started.addCallbacks(self._listening, self._start_failed)

    def _listening(self, _: object) -> None:
        self.reactor.callWhenRunning(
            self.log.info,
            "sbc {name} started with {count} adjacencies ({workers} worker processes)",
            name=self.config.service_name,
            count=len(self.config.adjacencies),
            workers=len(self.pool.slots),
        )
        if not any(a.attached and a.cluster_link for a in self.config.adjacencies):
            # a TCP/TLS phone's connection lives in one worker; the others reach it
            # only through the cluster link (docs/scaling.md)
            self.reactor.callWhenRunning(
                self.log.warn,
                "no cluster-link adjacency is attached: a call that enters one worker for "
                "a TCP or TLS phone another worker holds is refused (480, held-elsewhere); "
                "attach one, a loopback link will do (docs/scaling.md)",
                event="worker.no-cluster-link",
            )

    def _start_failed(self, failure: Failure) -> None:
        self.fail(
            f"sbc {self.config.service_name} cannot start its workers: {failure.getErrorMessage()}"
        )

    def fail(self, why: str) -> None:
        """Give up at start-up: log ``why``, record it and stop the reactor (exit status 1)."""
        first = self.fatal_error is None
        if first:
            self.fatal_error = why
        self.log.critical("{why}", why=why)
        if first:
            self.reactor.callWhenRunning(self._stop_reactor)

    def _stop_reactor(self) -> None:
        if getattr(self.reactor, "running", True):
            with contextlib.suppress(ReactorNotRunning):
                self.reactor.stop()

    def preflight(self) -> list[str]:
        """What would stop the machine from starting (the checks of a single process)."""
        return preflight_problems(self.config, self)

    def stopService(self) -> Deferred[None]:
        self.log.info("sbc {name} stopping its workers", name=self.config.service_name)
        self.controller.stop()
        restore_sighup(self._previous_sighup)
        self._previous_sighup = None
        super().stopService()
        return self.pool.stop()

    # -- reloads ----------------------------------------------------------------------

    def reload_tls(self) -> Deferred[TlsReloaded | Refused]:
        """Check the TLS files here (all or nothing), then every worker reloads them."""
        if self.tls_files is None:
            return succeed(Refused("no TLS identity is configured"))
        try:
            identity = load_tls_identity(self.tls_files)
        except TlsConfigError as error:
            self.log.error(
                "TLS identity not reloaded: {error}", event="tls.reload-failed", error=str(error)
            )
            return succeed(Refused(f"TLS identity not reloaded: {error}"))
        described = describe_tls_identity(identity)
        return self.pool.ask_all("reload_tls").addCallback(
            self._reloaded, TlsReloaded(described), "reload_tls"
        )

    def reload_users(self) -> Deferred[UsersReloaded | Refused]:
        """Every worker reads the user database again; the first refusal, if any."""
        if self.config.user_database is None:
            return succeed(Refused("no user-database is configured"))
        asking = self.pool.ask_all("reload_users")

        def first(results: list[tuple[WorkerSlot, bool, Any]]) -> UsersReloaded | Refused:
            answers = [value for _, ok, value in results if ok]
            for answer in answers:
                if isinstance(answer, Refused):
                    return answer
            self._report_failures(results, "reload_users")
            for answer in answers:
                if isinstance(answer, UsersReloaded):
                    return answer
            return Refused("no worker is running")

        return asking.addCallback(first)

    def _reloaded(self, results: list[tuple[WorkerSlot, bool, Any]], success: Any, op: str) -> Any:
        self._report_failures(results, op)
        for _, ok, value in results:
            if ok and isinstance(value, Refused):
                return value
        return success

    def _report_failures(self, results: list[tuple[WorkerSlot, bool, Any]], op: str) -> None:
        for slot, ok, value in results:
            if not ok:
                self.log.error(
                    "worker {index}: {op} failed: {why}",
                    index=slot.index,
                    op=op,
                    why=value.getErrorMessage(),
                )

    def _reload_on_signal(self) -> None:
        self.log.info("SIGHUP: reloading the TLS identity and the user database")
        self.reload_tls()
        if self.config.user_database is not None:
            self.reload_users()

    # -- the embedding API of SbcService, for tests and scripts ----------------------

    def apply_config(self, candidate: SbcConfig, **options: Any) -> Deferred[list[str]]:
        """Commit ``candidate`` to every worker: the ``%`` lines (empty on success)."""
        return self.backend.commit(candidate, **options)
