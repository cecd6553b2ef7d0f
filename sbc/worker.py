"""The SIP side of one process: :class:`SipWorker`.

A :class:`SipWorker` runs everything that carries SIP for one configuration:
the routing tree, digest authentication, the core (B2BUA, registrar,
registration relay), the SIP stack and its :class:`~sbc.transport.runtime.SipRuntime`
(listeners, connections, the flood defence), overload control. It applies
the configurations a :class:`~sbc.controller.ConfigController` commits
(it is a :class:`~sbc.controller.ConfigTarget`), reloads the TLS identity
and the user database, and answers what the CLI and the metrics show
(counters, calls, registrations, banned sources) as plain data.

In a single process (``twistd sbc``, or an application embedding
:class:`~sbc.service.SbcService`) there is one, inside the service. With
``twistd sbc --workers N`` each worker process runs one
(:mod:`sbc.workers.process`), built with ``reuse_port=True`` so that the N
processes share every listening port (docs/scaling.md).
"""

from __future__ import annotations

import gc
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from sbc.adjacencies import TCP, TLS, UDP, AdjacencyTable, ListenerKey
from sbc.auth import DigestAuthenticator, UserDatabase, UserDatabaseError, load_user_database
from sbc.b2bua.call import CallState
from sbc.cli.commands import BlockedSourceInfo, CallInfo, OpenConnection, RegistrationInfo
from sbc.cluster import SharedStore
from sbc.config import SbcConfig
from sbc.controller import CommitPlan, Refused
from sbc.core import SbcCore
from sbc.errors import ConfigError, SbcError
from sbc.flood import SourceGuard
from sbc.registrar import Binding, Registrar
from sbc.routing import RouteKey, Router, RoutingDecision
from sbc.sip.stack import Flow, SipStack
from sbc.sip.timers import TimerSettings
from sbc.transport.overload import LoadMeter
from sbc.transport.runtime import SipRuntime
from sbc.transport.tls import TlsConfigError, TlsFilePaths, TlsIdentity, load_tls_identity

__all__ = [
    "GC_THRESHOLDS",
    "LINGER_GRANULARITY",
    "Released",
    "SipWorker",
    "TlsReloaded",
    "UsersReloaded",
    "cannot_listen",
    "describe_tls_identity",
    "merge_counters",
    "node_name",
    "tune_garbage_collector",
    "user_database_path",
]

#: Seconds to which the timers that only end a lingering transaction are rounded up.
LINGER_GRANULARITY = 1.0

#: Collector thresholds once the daemon runs (CPython's default is (700, 10, 10)).
GC_THRESHOLDS = (50_000, 2, 1000)


@attrs.frozen
class TlsReloaded:
    """``crypto reload`` worked: the new identity, described (:func:`describe_tls_identity`)."""

    identity: str


@attrs.frozen
class UsersReloaded:
    """``reload user-database`` worked: ``PATH: N users in M realms``."""

    summary: str


@attrs.frozen
class Released:
    """``clear ... blocked-source``: the bans ended (``address`` None: every ban, ``count``)."""

    address: str | None
    bans: tuple[BlockedSourceInfo, ...] = ()
    count: int = 0


class SipWorker:
    """Everything that carries SIP for one configuration (see the module docstring).

    ``reactor`` provides time, TCP and UDP (a ``MemoryReactorClock`` in
    tests). ``tls`` is the SBC's identity (None: no TLS adjacency may be
    attached) and ``users`` the digest credentials. ``config_path`` places a
    relative ``user-database`` name. ``overload_control`` runs the heartbeat
    that measures the event-loop lag (:mod:`sbc.overload`). ``reuse_port``
    opens every listener with ``SO_REUSEPORT`` and gives each UDP listener a
    socket of this process's own (a worker process of ``--workers N``);
    ``worker_id`` is that worker's number (0: the only process).
    ``share_registrations`` makes a :class:`~sbc.cluster.SharedStore` even
    without a ``store`` line: its client is then the owner's business (the
    worker processes of one machine share through their supervisor,
    :mod:`sbc.workers.process`); with a ``store`` line it is Redis
    (:attr:`store_service`).
    """

    log = Logger()

    def __init__(
        self,
        config: SbcConfig,
        reactor: Any,
        tls: TlsIdentity | None = None,
        *,
        users: UserDatabase | None = None,
        config_path: str | None = None,
        overload_control: bool = False,
        reuse_port: bool = False,
        worker_id: int = 0,
        share_registrations: bool = False,
    ) -> None:
        self.config = config
        #: This process's number among the worker processes (0: the only process).
        self.worker_id = worker_id
        self.reactor = reactor
        self.tls = tls
        #: The PEM files ``crypto reload`` / SIGHUP read again (None: no TLS).
        self.tls_files: TlsFilePaths | None = tls.files if tls is not None else None
        #: The digest credentials (``user-database``); replaced whole by a reload.
        self.users = users if users is not None else UserDatabase()
        self.config_path = config_path
        self.router = Router.from_config(config)
        #: Digest authentication (``authentication digest``): a new secret per
        #: process, so nonces do not outlive a restart.
        self.authenticator = DigestAuthenticator(
            secrets.token_bytes(32),
            lambda: self.users,
            nonce_lifetime=config.limits.nonce_lifetime,
        )
        #: The store shared with other SBC nodes (``store`` under ``sbe``), or None.
        self.store: SharedStore | None = None
        registrar = None
        if config.store is not None or share_registrations:
            self.store = SharedStore(
                node_name(config),
                reactor.seconds,
                worker=worker_id,
                count=lambda adjacency, name: self.core.calls.count(adjacency, name),
            )
            registrar = Registrar(self.store.location)
        self.core = SbcCore(
            lambda: self.runtime.table,
            self._route,
            local_domains=lambda: self.config.local_domains,
            no_answer_timeout=lambda: self.config.limits.no_answer_timeout,
            authenticator=self.authenticator,
            register_refresh_min=lambda: self.config.limits.register_refresh_min,
            registrar=registrar,
        )
        # Transactions waiting only for retransmissions end on whole seconds:
        # one wake-up ends all of a second's, instead of one wake-up each.
        self.stack = SipStack(self.core, TimerSettings(linger_granularity=LINGER_GRANULARITY))
        self.core.stack = self.stack
        self.runtime = SipRuntime(
            reactor,
            self.stack,
            AdjacencyTable(config.adjacencies),
            limits=config.limits,
            tls=tls,
            dns_servers=dns_servers(config),
            reuse_port=reuse_port,
        )
        self.guard.configure(config.limits, config.blocked_user_agents)
        # repeated digest failures from one source count toward a ban (docs/hardening.md)
        self.core.on_auth_failure = self.guard.note_auth_failure
        #: Overload control (sbc.overload): the core consults it; the heartbeat that
        #: measures the load runs only when ``overload_control`` is true.
        self.overload = self.core.overload
        self.overload_meter: LoadMeter | None = None
        if overload_control:
            self.overload_meter = LoadMeter(
                reactor,
                self.overload,
                lambda: self.runtime.table,
                lambda: self.runtime.listening,
            )
        self.overload.limits = lambda: self.config.limits
        #: The Redis connection of :attr:`store` (a service its owner starts and stops), or None.
        self.store_service: Service | None = None
        if self.store is not None:
            self.store.relayed = self.core.relay.bindings
            self.store.call_counts = self._call_counts
            self.core.relay.store = self.store
            self.core.sibling_flow = self._sibling_flow
            # calls for phones another node holds go there: the cluster link (docs/scaling.md)
            from sbc.cluster.routing import ClusterRouting

            relay = self.core.relay
            table = lambda: self.runtime.table  # noqa: E731
            # a worker process advertises its own cluster-link port (see ClusterRouting)
            own_link = self.runtime.own_link_port if reuse_port else None
            self.core.cluster = ClusterRouting(
                self.store, table, lambda: relay.tokens, own_link_port=own_link
            )
            self.core.calls.cluster_caller = self.core.cluster.caller
        if self.store is not None and config.store is not None:
            from sbc.transport.redis import RedisStoreService

            self.store_service = RedisStoreService(reactor, config.store, self.store)
        self._prepared: tuple[CommitPlan, Router, UserDatabase, AdjacencyTable] | None = None

    def _route(
        self, key: RouteKey, table: AdjacencyTable, active: Callable[[str], int]
    ) -> RoutingDecision:
        """Routing with the router in force; with a shared store, least-calls counts every node."""
        if self.store is not None:
            active = self.store.active_calls(active)
        return self.router.route(key, table, active)

    def _sibling_flow(self, binding: Binding) -> Flow | None:
        """The flow to a UDP binding that another worker process of this node holds.

        It leaves from this process's own UDP port beside the listener the
        phone registered to (same address), so that the phone's answers,
        sent back to where the request came from (RFC 3581), reach this
        process and not the holder: the kernel would give a datagram to the
        shared port to the holder, as it gave it the REGISTER
        (docs/scaling.md says what this means for phones behind a NAT). None
        for a stream flow (its connection lives in the holder), another
        node's binding, or a listener this process does not have.
        """
        store = self.store
        flow = binding.flow
        if store is None or binding.node != store.node or flow.transport != UDP:
            return None
        own = self.runtime.own_port(flow.local)
        if own is None:
            return None
        return attrs.evolve(flow, local=(flow.local[0], own), advertised=None)

    def _call_counts(self) -> dict[str, int]:
        """This process's active calls per adjacency (what the other nodes add to theirs)."""
        calls = self.core.calls
        counts = {a.name: calls.active_calls(a.name) for a in self.config.adjacencies}
        return {name: count for name, count in counts.items() if count}

    @property
    def guard(self) -> SourceGuard:
        """The flood and scanner defence (bans, rate limits)."""
        return self.runtime.guard

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self.runtime.running

    # -- start and stop ------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Open the listeners (fires when all are open) and start overload control."""
        started = self.runtime.start()
        if self.overload_meter is not None:
            self.overload_meter.start()
        return started

    def stop(self) -> Deferred[None]:
        """Stop overload control, close listeners and connections; fires when closed."""
        if self.overload_meter is not None:
            self.overload_meter.stop()
        return self.runtime.stop()

    # -- configuration (a ConfigTarget) ---------------------------------------------

    def prepare(self, plan: CommitPlan) -> Deferred[str | None]:
        """Check what ``plan`` needs here; None when it can be applied, else why not.

        Reads the user database when the candidate names another one (or
        none is loaded yet) and, while running, checks that every listener
        it adds can be opened. The routing tree, the users and the listener
        set are kept for :meth:`commit`.
        """
        candidate = plan.candidate
        try:
            router = Router.from_config(candidate)
        except ConfigError as error:
            return succeed(error.message)
        users = self.users
        if candidate.user_database is not None and (
            candidate.user_database != self.config.user_database or not len(users)
        ):
            try:
                users = load_user_database(
                    user_database_path(candidate.user_database, self.config_path)
                )
            except UserDatabaseError as error:
                return succeed(f"user-database not usable: {error}")
        table = AdjacencyTable(candidate.adjacencies)
        if self.running:
            for key in sorted(set(table.listeners) - set(self.runtime.listening)):
                problem = cannot_listen(key, reuse_port=self.runtime.reuse_port)
                if problem is not None:
                    return succeed(f"cannot listen on {key}: {problem}")
        self._prepared = (plan, router, users, table)
        return succeed(None)

    def abort(self, plan: CommitPlan) -> None:
        """Forget the prepared ``plan``."""
        if self._prepared is not None and self._prepared[0] is plan:
            self._prepared = None

    def commit(self, plan: CommitPlan) -> Deferred[None]:
        """Apply the prepared ``plan``: routing at once, then the listeners.

        Calls using an adjacency the commit detaches (or removes) are
        released first (:meth:`CallManager.release_adjacency`); their BYEs,
        responses and CANCELs leave before its listeners close. Fires once
        the SIP side switched; a listener that then fails to open is logged.
        """
        prepared, self._prepared = self._prepared, None
        if prepared is None or prepared[0] is not plan:
            raise RuntimeError("SipWorker.commit without a matching prepare")
        _, router, users, table = prepared
        before, candidate = self.config, plan.candidate
        still_attached = {a.name for a in candidate.adjacencies if a.attached}
        detached = [
            a.name for a in before.adjacencies if a.attached and a.name not in still_attached
        ]
        self.config = candidate
        self.router = router
        self.users = users
        self.authenticator.nonce_lifetime = float(candidate.limits.nonce_lifetime)
        now = self.reactor.seconds()
        for name in detached:
            self.runtime.process(self.core.calls.release_adjacency(name, now))
            self.core.relay.release_adjacency(name, now)
        if candidate.dns_servers != before.dns_servers:
            self.runtime.set_dns_servers(dns_servers(candidate))
        applied = self.runtime.apply(table, candidate.limits)
        self.guard.configure(candidate.limits, candidate.blocked_user_agents)
        applied.addErrback(
            lambda failure: self.log.error(
                "commit: cannot open a listener: {error}", error=failure.getErrorMessage()
            )
        )
        return succeed(None)

    # -- TLS identity and user database ----------------------------------------------

    def reload_tls(self) -> TlsReloaded | Refused:
        """Read the TLS files again and use them for new handshakes.

        All or nothing: when a file is missing or bad, or the key does not
        match the certificate, nothing changes and the result says why.
        Established connections keep the identity they were made with.
        """
        if self.tls_files is None:
            return Refused("no TLS identity is configured")
        try:
            identity = load_tls_identity(self.tls_files)
        except TlsConfigError as error:
            self.log.error(
                "TLS identity not reloaded: {error}", event="tls.reload-failed", error=str(error)
            )
            return Refused(f"TLS identity not reloaded: {error}")
        self.tls = identity
        self.runtime.set_tls_identity(identity)
        described = describe_tls_identity(identity)
        self.log.info("TLS identity reloaded: {identity}", event="tls.reloaded", identity=described)
        return TlsReloaded(described)

    def reload_users(self) -> UsersReloaded | Refused:
        """Read ``user-database`` again and use it at once.

        All or nothing: a file that cannot be read or has a bad line changes
        nothing, and the result names the file, the line and the problem
        (never a hash).
        """
        name = self.config.user_database
        if name is None:
            return Refused("no user-database is configured")
        path = user_database_path(name, self.config_path)
        try:
            users = load_user_database(path)
        except UserDatabaseError as error:
            self.log.error(
                "user database not reloaded: {error}",
                event="auth.users-reload-failed",
                error=str(error),
            )
            return Refused(f"user database not reloaded: {error}")
        self.users = users
        summary = self.describe_user_database()
        self.log.info(
            "user database reloaded: {summary}",
            event="auth.users-reloaded",
            path=path,
            users=len(users),
            summary=summary,
        )
        return UsersReloaded(summary)

    def describe_user_database(self) -> str:
        """``PATH: N users in M realms`` for the CLI and the log."""
        path = self.config.user_database or "(none)"
        realms = len(self.users.realms)
        return (
            f"{path}: {len(self.users)} user{'s' if len(self.users) != 1 else ''} "
            f"in {realms} realm{'s' if realms != 1 else ''}"
        )

    # -- what the CLI and the metrics show --------------------------------------------

    def counters(self) -> dict[str, dict[str, int]]:
        """Every counter, ``{adjacency: {name: value}}``, both levels sorted."""
        sources = [self.runtime.counters, self.core.calls.counters]
        unique = {id(s): s for s in sources}.values()
        return merge_counters(source.snapshot() for source in unique)

    def calls(self) -> list[CallInfo]:
        """The live calls."""
        now = self.reactor.seconds()
        out = []
        for call in list(self.core.calls.calls.values()):
            if call.state is CallState.ENDED:
                continue
            out.append(
                CallInfo(
                    id=call.id,
                    method=call.method,
                    state=call.state.value,
                    inbound=call.a.adjacency,
                    outbound=call.b.adjacency if call.b is not None else None,
                    secure=call.secure,
                    age=max(0.0, now - call.started_at),
                    from_uri=str(call.request.from_.uri),
                    to_uri=str(call.request.uri),
                )
            )
        return out

    def registrations(self) -> list[RegistrationInfo]:
        """The live bindings: the registrar's, then the relayed registrations.

        With a shared store, the other nodes' and workers' bindings too
        (``held_here`` false). ``node`` names the node that holds a binding
        (with a ``store`` line only); ``worker`` the worker process (worker
        processes only).
        """
        now = self.reactor.seconds()
        location: Any = self.core.registrar.location
        try:
            bindings = list(location)
        except TypeError:  # a location service that cannot be listed
            return []
        store = self.store
        named = self.config.store is not None
        here = store.node if store is not None and named else ""
        mine = str(self.worker_id) if self.worker_id else ""

        def node_of(node: str | None) -> str:
            return (node or here) if named else ""

        local = [
            RegistrationInfo(
                b.aor,
                str(b.contact),
                b.adjacency,
                b.remaining(now),
                b.flow.describe(),
                node=node_of(b.node),
                held_here=b.node is None,
                worker=mine if b.node is None else str(b.worker or ""),
            )
            for b in bindings
            if b.remaining(now) > 0
        ]
        relayed = [
            RegistrationInfo(
                r.aor,
                str(r.phone_contact),
                r.inbound,
                r.remaining(now),
                r.flow.describe(),
                relayed_to=r.outbound,
                node=here,
                worker=mine,
            )
            for r in self.core.relay.bindings()
            if r.remaining(now) > 0
        ]
        if store is not None:
            relayed += [
                RegistrationInfo(
                    r.aor,
                    str(r.phone_contact),
                    r.inbound,
                    r.remaining(now),
                    r.flow.describe(),
                    relayed_to=r.outbound,
                    node=node_of(r.node),
                    held_here=False,
                    worker=str(r.worker or ""),
                )
                for r in store.remote_relayed.values()
                if r.remaining(now) > 0
            ]
        return local + relayed

    def blocked_sources(self) -> list[BlockedSourceInfo]:
        """The sources banned by the flood defence."""
        now = self.reactor.seconds()
        return [
            BlockedSourceInfo(
                b.address, b.adjacency or "-", b.reason, b.since, b.remaining(now), b.dropped
            )
            for b in self.guard.bans(now)
        ]

    def release_source(self, address: str | None) -> Released:
        """End the ban on ``address`` (None: every ban) now."""
        now = self.reactor.seconds()
        ended = [
            BlockedSourceInfo(
                b.address, b.adjacency or "-", b.reason, b.since, b.remaining(now), b.dropped
            )
            for b in self.guard.bans(now)
            if address is None or b.address == address
        ]
        count = len(ended)
        if address is None:
            count = self.guard.release_all(now)
        elif ended:
            self.guard.release(address, now)
        return Released(address, tuple(ended), count)

    def connections(self) -> list[OpenConnection]:
        """The open stream connections (adjacency, direction, transport)."""
        return [
            OpenConnection(c.adjacency, c.outbound, c.transport_name)
            for c in self.runtime.connections.values()
        ]

    def transactions(self) -> dict[str, int]:
        """Live transactions by ``"MACHINE STATE"``."""
        return self.stack.transactions_by_state()

    def overload_state(self) -> tuple[float, float]:
        """(smoothed event-loop lag in seconds, share of new calls shed)."""
        return self.overload.lag, self.overload.share

    def active_calls(self) -> dict[str, int]:
        """Live calls per inbound adjacency (what a dying worker process loses)."""
        counts: dict[str, int] = {}
        for call in self.calls():
            counts[call.inbound] = counts.get(call.inbound, 0) + 1
        return counts


def merge_counters(
    snapshots: Iterable[Mapping[str, Mapping[str, int]]],
) -> dict[str, dict[str, int]]:
    """Counter snapshots added together, ``{adjacency: {name: value}}``, both levels sorted."""
    merged: dict[str, dict[str, int]] = {}
    for snapshot in snapshots:
        for adjacency, values in snapshot.items():
            into = merged.setdefault(adjacency, {})
            for name, value in values.items():
                into[name] = into.get(name, 0) + value
    return {a: dict(sorted(v.items())) for a, v in sorted(merged.items())}


def node_name(config: SbcConfig) -> str:
    """This SBC's name among the nodes sharing a store: ``node NAME``, else the host name."""
    return config.node if config.node is not None else socket.gethostname()


def user_database_path(name: str, config_path: str | None) -> str:
    """Where ``user-database NAME`` is: a relative name is beside the configuration file."""
    if os.path.isabs(name) or config_path is None:
        return name
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), name)


def describe_tls_identity(identity: TlsIdentity) -> str:
    """One line for logs and the CLI: the certificate's subject and its names."""
    subject = identity.certificate.subject.rfc4514_string() or "(empty subject)"
    try:
        names = identity.identities.describe()
    except SbcError as error:  # names service_identity cannot parse
        names = str(error)
    return f"{subject} ({names})"


def cannot_listen(key: ListenerKey, *, reuse_port: bool = False) -> str | None:
    """Why ``key`` cannot be bound right now (a probe socket, closed at once), or None.

    With ``reuse_port`` the probe sets ``SO_REUSEPORT``, as the listeners of
    worker processes do: a port the other workers already hold is free for it.
    """
    family = socket.AF_INET6 if ":" in key.address else socket.AF_INET
    kind = socket.SOCK_DGRAM if key.transport == UDP else socket.SOCK_STREAM
    probe = socket.socket(family, kind)
    try:
        if key.transport in (TLS, TCP):
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((key.address, key.port))
    except OSError as error:
        return error.strerror or str(error)
    finally:
        probe.close()
    return None


def tune_garbage_collector() -> bool:
    """Make CPython's cyclic garbage collector cheap for a long-running SBC.

    Profiling at 200 calls/s showed a quarter of the CPU in full collections
    that walk every object, including everything loaded at start-up, and the
    pauses overflowed the UDP receive buffer. Freezing the start-up heap
    takes it out of every later collection. A call leaves no reference
    cycles, but its transactions live 32 s after it (waiting for
    retransmissions), so every collection of the older generations walks
    them: a pause grows with the generation's size, not with what it frees.
    Generation 0 every 50,000 net new objects, generation 1 every second
    one of those (each object is walked there once, in pauses under about
    100 ms instead of the 150 to 220 ms that (20000, 20, 20) gave), and a
    full collection only every 1000 generation-1 ones.
    ``docs/performance.md`` has the numbers.

    Returns False, changing nothing, on PyPy: its incremental generational
    collector has neither these settings nor these pauses.
    """
    if not hasattr(gc, "freeze"):
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return True


def dns_servers(config: SbcConfig) -> list[tuple[str, int]]:
    """The configured ``dns-server`` lines as (address, port) pairs (none: the system's)."""
    return [(str(server.address), server.port) for server in config.dns_servers]


def bans_released(results: Sequence[Released]) -> Released:
    """Several processes' answers to one ``clear ... blocked-source`` as one."""
    address = results[0].address if results else None
    bans = tuple(ban for result in results for ban in result.bans)
    return Released(address, bans, sum(result.count for result in results))
