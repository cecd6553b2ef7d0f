"""A worker process of ``twistd sbc --workers N``: ``python -m sbc.workers.process``.

The supervisor (:mod:`sbc.workers.supervisor`) starts it with
``spawnProcess``: a fresh interpreter, so it shares nothing with the
supervisor but what it is given. Its file descriptor 3 is its end of the
control channel (:mod:`sbc.workers.control`); 0 is a pipe the supervisor
closes, 1 and 2 are the supervisor's. Every other descriptor of the
supervisor (the CLI socket, the metrics port, log files) is closed in the
child by ``spawnProcess``.

The process installs its own reactor, sends every log event (info and
above) over the channel, and waits for ``start``: the configuration text
and the TLS files. It then runs one :class:`~sbc.worker.SipWorker` with
``reuse_port=True`` (every listener shared with the other workers, plus its
own UDP sockets), answers the supervisor's requests (:class:`WorkerControl`)
and stops on SIGTERM or when the channel closes (the supervisor is gone).
SIGINT, SIGHUP and SIGUSR1 are the supervisor's business and are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from sbc.adjacencies import ListenerKey
from sbc.cluster import HEARTBEAT_INTERVAL, SharedStore
from sbc.cluster.store import Op
from sbc.config import parse_config
from sbc.controller import CommitPlan, Refused
from sbc.errors import ConfigError
from sbc.service import TlsFiles, load_checked
from sbc.worker import (
    Released,
    SipWorker,
    TlsReloaded,
    UsersReloaded,
    tune_garbage_collector,
)
from sbc.workers.control import ControlProtocol, WorkerSnapshot, WorkerStarted, WorkerStatus

__all__ = ["CONTROL_FD", "LogForwarder", "SupervisorStoreClient", "WorkerControl", "main"]

CONTROL_FD = 3
"""The worker's end of the control channel."""


class WorkerControl:
    """What the supervisor may ask a worker process (``remote_*``, :mod:`sbc.workers.control`).

    ``reactor`` runs the worker; ``tune_gc`` tunes the garbage collector
    once listening (a real worker process) and ``overload_control`` runs the
    load heartbeat (:mod:`sbc.overload`). Tests build one on a memory reactor.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        tune_gc: bool = False,
        overload_control: bool = True,
        reuse_port: bool = True,
    ) -> None:
        self.reactor = reactor
        self.tune_gc = tune_gc
        self.overload_control = overload_control
        self.reuse_port = reuse_port
        self.index = 0
        self.worker: SipWorker | None = None
        #: This process's end of the control channel (the shared store's client uses it).
        self.control: ControlProtocol | None = None
        #: How the shared store is reached: Redis, or the supervisor (None: no store).
        self.store_service: Service | None = None
        self._plan: CommitPlan | None = None

    def _sip(self) -> SipWorker:
        if self.worker is None:
            raise RuntimeError("not started")
        return self.worker

    # -- life ---------------------------------------------------------------------------

    def remote_start(
        self,
        config: str,
        index: int,
        config_path: str | None = None,
        tls: list[str] | None = None,
        share: bool = False,
        sockets: list[list[Any]] | None = None,
    ) -> Deferred[WorkerStarted]:
        """Build the SIP side on ``config`` (text) and open its listeners.

        ``share``: share the registrations and call counts with the other
        workers through the supervisor (no ``store`` line); with a ``store``
        line each worker connects to Redis itself. ``sockets``: the listening
        sockets the supervisor gave this process (``[address, port,
        transport, descriptor]``), used instead of new ones.
        """
        if self.worker is not None:
            raise RuntimeError("already started")
        self.index = index
        parsed = parse_config(config, path=config_path or "<supervisor>")
        files = TlsFiles(*tls) if tls else None
        identity, users = load_checked(parsed, files, config_path, shared_store=True)
        self.worker = SipWorker(
            parsed,
            self.reactor,
            identity,
            users=users,
            config_path=config_path,
            overload_control=self.overload_control,
            reuse_port=self.reuse_port,
            worker_id=index,
            share_registrations=share,
        )
        self.worker.runtime.inherited = {
            ListenerKey(str(address), int(port), str(transport)): int(descriptor)
            for address, port, transport, descriptor in sockets or []
        }
        store = self.worker.store
        if self.worker.store_service is not None:
            self.store_service = self.worker.store_service
        elif store is not None and self.control is not None:
            self.store_service = SupervisorStoreClient(self.reactor, self.control, store)
        if self.store_service is not None:
            self.store_service.startService()
        started = self.worker.start()

        def listening(_: object) -> WorkerStarted:
            assert self.worker is not None
            for descriptor in self.worker.runtime.inherited.values():
                with contextlib.suppress(OSError):  # a listener this configuration lacks
                    os.close(descriptor)
            self.worker.runtime.inherited = {}
            if self.tune_gc:
                tune_garbage_collector()
            own = [[address, port, own] for (address, port), own in self._own_ports().items()]
            self.log.info(
                "worker {index} (pid {pid}) listening",
                event="worker.listening",
                index=index,
                pid=os.getpid(),
                own_ports=own,
            )
            return WorkerStarted(os.getpid(), own)

        return started.addCallback(listening)

    def _own_ports(self) -> dict[tuple[str, int], int]:
        return self._sip().runtime.own_ports

    def stop(self) -> Deferred[Any] | None:
        """Close the listeners and connections, remove this worker's bindings from the store."""
        if self.worker is None:
            return None
        stopping = [self.worker.stop()]
        if self.store_service is not None and self.store_service.running:
            stopping.append(maybeDeferred(self.store_service.stopService))
        return gatherResults(stopping, consumeErrors=True)

    # -- configuration (two-phase, see sbc.controller) ------------------------------------

    def remote_prepare(self, config: str) -> Deferred[str | None]:
        """Check ``config`` here; None when it can be applied, else why not."""
        worker = self._sip()
        try:
            candidate = parse_config(config, path="<commit>")
        except ConfigError as error:
            raise RuntimeError(
                f"the supervisor sent a configuration this worker cannot read: {error}"
            ) from None
        plan = CommitPlan(worker.config, candidate)
        self._plan = plan
        return worker.prepare(plan)

    def remote_commit(self) -> Deferred[None]:
        """Apply the prepared configuration."""
        plan, self._plan = self._plan, None
        if plan is None:
            raise RuntimeError("commit without prepare")
        return self._sip().commit(plan)

    def remote_abort(self) -> None:
        """Forget the prepared configuration."""
        plan, self._plan = self._plan, None
        if plan is not None and self.worker is not None:
            self.worker.abort(plan)

    def remote_store_message(self, data: str) -> None:
        """A message of the supervisor's shared store (what some keys hold now)."""
        store = self.worker.store if self.worker is not None else None
        if store is not None:
            store.message(data)

    # -- reloads and bans -------------------------------------------------------------

    def remote_reload_tls(self) -> TlsReloaded | Refused:
        return self._sip().reload_tls()

    def remote_reload_users(self) -> UsersReloaded | Refused:
        return self._sip().reload_users()

    def remote_release(self, address: str | None) -> Released:
        return self._sip().release_source(address)

    # -- what the supervisor reads ----------------------------------------------------

    def remote_status(self) -> WorkerStatus:
        worker = self._sip()
        return WorkerStatus(worker.active_calls(), worker.counters())

    def remote_snapshot(self) -> WorkerSnapshot:
        worker = self._sip()
        lag, share = worker.overload_state()
        return WorkerSnapshot(
            worker.counters(),
            worker.calls(),
            worker.registrations(),
            worker.blocked_sources(),
            worker.connections(),
            worker.transactions(),
            lag,
            share,
        )


class SupervisorStoreClient(Service):
    """The :class:`~sbc.cluster.StoreClient` of a worker whose store is the supervisor's.

    Writes, the read at start and the heartbeats go over the control channel
    to the supervisor's :class:`~sbc.cluster.memory.MemoryStore`; its
    messages come back as ``store_message`` requests
    (:meth:`WorkerControl.remote_store_message`). The channel is up for as
    long as the process lives, so the store is connected at start and never
    lost.
    """

    def __init__(self, reactor: Any, control: ControlProtocol, store: SharedStore) -> None:
        self.reactor = reactor
        self.control = control
        self.store = store
        self._heartbeat: LoopingCall | None = None
        store.client = self
        self.setName("store")

    def startService(self) -> None:
        super().startService()
        self.store.connected()
        self._heartbeat = LoopingCall(self.store.tick)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(HEARTBEAT_INTERVAL, now=False)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        return self.store.stop()

    def apply(self, ops: Sequence[Op], origin: str, seq: int) -> Deferred[object]:
        return self.control.call("store_apply", ops=list(ops), origin=origin, seq=seq)

    def load(self) -> Deferred[list[tuple[str, str, int]]]:
        loading = self.control.call("store_load")
        return loading.addCallback(lambda rows: [(str(k), str(v), int(t)) for k, v, t in rows])

    def heartbeat(self, node: str, counts: str, ttl_ms: int) -> Deferred[dict[str, str]]:
        return self.control.call("store_heartbeat", holder=node, counts=counts, ttl_ms=ttl_ms)


@implementer(ILogObserver)
class LogForwarder:
    """Sends every log event to the supervisor over the control channel (as JSON)."""

    def __init__(self, control: ControlProtocol) -> None:
        self.control = control

    def __call__(self, event: LogEvent) -> None:
        text_only = event.get("log_text")
        if text_only is not None and not isinstance(text_only, str):
            # sbc's call log renders its text lazily: send the text itself
            event = {**event, "log_text": str(text_only)}
        try:
            text = eventAsJSON(event)
        except Exception:  # an event JSON cannot hold: its text is enough
            text = eventAsJSON({"log_format": "{text}", "text": repr(event)})
        self.control.send_log(text)


class _ControlFactory(Factory):
    def __init__(self, control: ControlProtocol) -> None:
        self.control = control

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return self.control


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker process (see the module docstring)."""
    parser = argparse.ArgumentParser(description="sbc worker process (started by twistd sbc)")
    parser.add_argument("--index", type=int, default=0, help="this worker's number")
    parser.parse_args(argv)  # --index only names the process in ps
    for name in ("SIGINT", "SIGHUP", "SIGUSR1"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)

    from twisted.internet import reactor as default_reactor

    reactor: Any = default_reactor
    handler = WorkerControl(reactor, tune_gc=True)

    def lost(reason: Failure) -> None:
        # a SIGTERM sent to the whole process group may have stopped it already
        with contextlib.suppress(ReactorNotRunning):
            if reactor.running:
                reactor.stop()

    control = ControlProtocol(handler, on_lost=lost)
    handler.control = control
    forwarder = FilteringLogObserver(
        LogForwarder(control), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)]
    )
    globalLogBeginner.beginLoggingTo([forwarder], redirectStandardIO=False)
    reactor.adoptStreamConnection(CONTROL_FD, socket.AF_UNIX, _ControlFactory(control))
    os.close(CONTROL_FD)  # the reactor uses its own copy
    reactor.addSystemEventTrigger("before", "shutdown", handler.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
