"""The embedding API: :class:`SbcService`, a Twisted service built from a config.

An existing Twisted application creates one with :meth:`SbcService.from_config`
and attaches it to its own service tree::

    from sbc.config import load_config
    from sbc.service import SbcService, TlsFiles

    sbc = SbcService.from_config(load_config("sbc.conf"), reactor=reactor)
    sbc.setServiceParent(application)

``twistd sbc`` (see :mod:`sbc.tap`) is a thin caller of the same API.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import signal
import socket
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import gatherResults
from twisted.internet.error import ReactorNotRunning
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from sbc.adjacencies import TCP, TLS, UDP, AdjacencyTable, ListenerKey
from sbc.auth import DigestAuthenticator, UserDatabase, UserDatabaseError, load_user_database
from sbc.cluster import SharedStore
from sbc.commits import (
    CONFIRM_SECONDS_RANGE,
    CommitHistory,
    CommitRecord,
    history_directory,
    summarize_changes,
)
from sbc.config import (
    SECURITY_CHANGE_MESSAGE,
    SbcConfig,
    parse_config,
    render_config,
    security_changes_while_attached,
    validate,
)
from sbc.core import SbcCore
from sbc.errors import ConfigError, SbcError
from sbc.flood import SourceGuard
from sbc.registrar import Registrar
from sbc.routing import RouteKey, Router, RoutingDecision, available_policies
from sbc.sip.stack import SipStack
from sbc.sip.timers import TimerSettings
from sbc.transport.overload import LoadMeter
from sbc.transport.runtime import SipRuntime
from sbc.transport.tls import TlsConfigError, TlsFilePaths, TlsIdentity, load_tls_identity


@attrs.frozen
class TlsFiles:
    """The router's default TLS identity: PEM file paths.

    ``certificate`` and ``private_key`` are the SBC's own certificate (with
    any intermediates after it) and key; ``ca_certificates`` holds the trust
    anchors used to verify peers.
    """

    certificate: str
    private_key: str
    ca_certificates: str | None = None


@attrs.frozen
class SshSettings:
    """The management CLI over SSH (:mod:`sbc.cli.ssh`).

    ``endpoint`` is a strports description (``tcp:2222:interface=127.0.0.1``);
    ``authorized_keys`` names an OpenSSH ``authorized_keys`` file: the public
    keys allowed to log in (public-key authentication only). ``host_key`` is
    the server's private key file, generated (mode 0600) when it is missing.
    """

    endpoint: str
    authorized_keys: str
    host_key: str


@attrs.define(eq=False)
class PendingConfirmation:
    """A ``commit confirmed`` that is rolled back at ``deadline`` unless a commit confirms it."""

    commit_id: int
    seconds: int
    deadline: float
    before: str  # the configuration text to return to
    user: str
    timer: Any = None  # IDelayedCall

    def seconds_left(self, now: float) -> int:
        """Whole seconds until the rollback (at least 0)."""
        return max(0, int(self.deadline - now + 0.999))


class SbcService(MultiService):
    """One SBC: every adjacency of one ``sbc NAME`` configuration.

    Create it with :meth:`from_config`; start and stop it like any Twisted
    service (``setServiceParent`` on an application, or ``startService`` /
    ``stopService`` directly). The ``reactor`` is injected so that tests can
    pass a ``MemoryReactorClock``.
    """

    log = Logger()

    def __init__(
        self,
        config: SbcConfig,
        reactor: Any,
        tls: TlsIdentity | None = None,
        *,
        config_path: str | None = None,
        cli_endpoint: str | None = None,
        ssh: SshSettings | None = None,
        metrics_endpoint: str | None = None,
        tune_gc: bool = False,
        reload_on_sighup: bool = False,
        users: UserDatabase | None = None,
        overload_control: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        #: The digest credentials (``user-database``); replaced whole by a reload.
        self.users = users if users is not None else UserDatabase()
        #: Tune the garbage collector once listening (a daemon owns its process).
        self.tune_gc = tune_gc
        #: Install a SIGHUP handler that reloads the TLS identity (a daemon owns its signals).
        self.reload_on_sighup = reload_on_sighup
        self._previous_sighup: Any = None
        #: The log observer ``twistd sbc`` gives the application (see :meth:`setServiceParent`).
        self.log_observer: ILogObserver | None = None
        #: Why the service gave up at start-up (a listener or endpoint it could not open).
        self.fatal_error: str | None = None
        #: The ``commit confirmed`` waiting for its confirmation, if any.
        self.pending_confirmation: PendingConfirmation | None = None
        #: The file a commit saves to (None: commits are not saved).
        self.config_path = config_path
        #: Every commit: ``show configuration commit list``, ``rollback configuration``.
        self.commits = CommitHistory(
            history_directory(config_path) if config_path is not None else None,
            keep=config.limits.commit_history,
        )
        if config_path is not None:
            # a daemon killed during a save leaves a record of a commit never in force,
            # and its temporary file
            self.commits.forget_unsaved(render_config(config))
            remove_interrupted_saves(config_path)
        self.reactor = reactor
        self.tls = tls
        #: The PEM files ``crypto reload`` / SIGHUP read again (None: no TLS).
        self.tls_files: TlsFilePaths | None = tls.files if tls is not None else None
        self.setName(f"sbc {config.service_name}")
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
        if config.store is not None:
            self.store = SharedStore(
                node_name(config),
                reactor.seconds,
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
            dns_servers=_dns_servers(config),
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
        if self.store is not None and config.store is not None:
            from sbc.transport.redis import RedisStoreService

            self.store.relayed = self.core.relay.bindings
            self.store.call_counts = self._call_counts
            self.core.relay.store = self.store
            RedisStoreService(reactor, config.store, self.store).setServiceParent(self)
        if cli_endpoint is not None:
            from sbc.cli.server import CliService

            CliService(self, cli_endpoint).setServiceParent(self)
        if ssh is not None:
            from sbc.cli.ssh import SshCliService

            SshCliService(self, ssh).setServiceParent(self)
        if metrics_endpoint is not None:
            from sbc.metrics import MetricsService

            MetricsService(self, metrics_endpoint).setServiceParent(self)

    def _route(
        self, key: RouteKey, table: AdjacencyTable, active: Callable[[str], int]
    ) -> RoutingDecision:
        """Routing with the router in force; with a shared store, least-calls counts every node."""
        if self.store is not None:
            active = self.store.active_calls(active)
        return self.router.route(key, table, active)

    def _call_counts(self) -> dict[str, int]:
        """This node's active calls per adjacency (what the other nodes add to theirs)."""
        calls = self.core.calls
        counts = {a.name: calls.active_calls(a.name) for a in self.config.adjacencies}
        return {name: count for name, count in counts.items() if count}

    @property
    def guard(self) -> SourceGuard:
        """The flood and scanner defence (bans, rate limits): ``note_auth_failure`` goes here."""
        return self.runtime.guard

    @classmethod
    def from_config(
        cls,
        config: SbcConfig,
        reactor: Any = None,
        tls: TlsFiles | None = None,
        *,
        config_path: str | None = None,
        cli_endpoint: str | None = None,
        ssh: SshSettings | None = None,
        metrics_endpoint: str | None = None,
        tune_gc: bool = False,
        reload_on_sighup: bool = False,
        overload_control: bool = False,
    ) -> SbcService:
        """Validate ``config``, load the TLS identity and build the service.

        Raises ``ConfigError`` (naming the file and line) when the
        configuration, a TLS file or the ``user-database`` file is refused;
        nothing is started then.
        ``config_path`` is where a CLI commit saves the configuration;
        ``cli_endpoint`` (a strports description) starts the management CLI,
        ``ssh`` serves the same CLI over SSH, ``metrics_endpoint`` (strports)
        serves Prometheus metrics over HTTP.
        ``tune_gc`` tunes the process's garbage collector once listening
        (:func:`tune_garbage_collector`): for a process that is the SBC, as
        under ``twistd sbc``; leave it off when embedding. ``reload_on_sighup``
        installs a SIGHUP handler that reloads the TLS identity
        (:meth:`reload_tls`) while the service runs; also for ``twistd sbc``
        only, since an embedding application owns its signals.
        ``overload_control`` runs the 50 ms heartbeat that measures the
        event-loop lag and sheds new calls when it grows (:mod:`sbc.overload`):
        on under ``twistd sbc``; an embedding application whose reactor does
        other work may turn it on too.
        """
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        validate(
            config,
            certificate_configured=tls is not None,
            routing_policies=tuple(available_policies()),
        )
        identity = load_tls_identity(tls) if tls is not None else None
        users = None
        if config.user_database is not None:
            users = load_user_database(user_database_path(config.user_database, config_path))
        return cls(
            config,
            reactor,
            identity,
            config_path=config_path,
            cli_endpoint=cli_endpoint,
            ssh=ssh,
            metrics_endpoint=metrics_endpoint,
            tune_gc=tune_gc,
            reload_on_sighup=reload_on_sighup,
            users=users,
            overload_control=overload_control,
        )

    def setServiceParent(self, parent: Any) -> None:
        """Attach to ``parent``; hand :attr:`log_observer` to a twistd application.

        twistd logs through the ``ILogObserver`` component of its application
        when it has one (and neither ``--syslog`` nor ``--logger`` was given);
        ``twistd sbc`` uses this for its text log (:class:`sbc.logs.TextLogFile`).
        """
        if (
            self.log_observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver, None) is None
        ):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        if self.reload_on_sighup:
            self._install_sighup()
        for adjacency in self.config.adjacencies:
            self.log.info(
                "adjacency {name}: {state}, {address}:{port} {transport}, security {security}",
                name=adjacency.name,
                state="attached" if adjacency.attached else "detached",
                address=adjacency.signaling_address or "(no address)",
                port=adjacency.port,
                transport=adjacency.transport_display,
                security=adjacency.security_display,
            )
        self.started = self.runtime.start()
        self.started.addCallbacks(self._listening, self._listen_failed)
        if self.overload_meter is not None:
            self.overload_meter.start()

    def _listening(self, _: object) -> None:
        if self.tune_gc:
            tune_garbage_collector()
        # Logged once the reactor runs (signal handlers are installed by then).
        self.reactor.callWhenRunning(
            self.log.info,
            "sbc {name} started with {count} adjacencies",
            name=self.config.service_name,
            count=len(self.config.adjacencies),
        )

    def _listen_failed(self, failure: Failure) -> None:
        self.fail(
            f"sbc {self.config.service_name} cannot open its listeners: {failure.getErrorMessage()}"
        )

    def fail(self, why: str) -> None:
        """Give up at start-up: log ``why`` as critical, record it and stop the reactor.

        The SBC does not run without its listeners or its management
        endpoints; ``twistd sbc`` then exits with status 1.
        """
        first = self.fatal_error is None
        if first:
            self.fatal_error = why
        self.log.critical("{why}", why=why)
        if first:
            self.reactor.callWhenRunning(self._stop_reactor)

    def _stop_reactor(self) -> None:
        if getattr(self.reactor, "running", True):
            with contextlib.suppress(ReactorNotRunning):  # SIGTERM raced us
                self.reactor.stop()

    def preflight(self) -> list[str]:
        """What would stop the service from starting, checked before the reactor runs.

        Each attached listener is probed with a socket bound and closed at
        once, and a UNIX management socket path must be free (a stale socket
        is removed). One line per problem; empty when all is well.
        """
        problems = []
        for key in sorted(AdjacencyTable(self.config.adjacencies).listeners):
            problem = _cannot_listen(key)
            if problem is not None:
                problems.append(f"cannot listen on {key}: {problem}")
        for child in self:
            check = getattr(child, "preflight", None)
            if check is not None:
                problems.extend(check())
        return problems

    def stopService(self) -> Any:
        self.log.info("sbc {name} stopping", name=self.config.service_name)
        if self.overload_meter is not None:
            self.overload_meter.stop()
        pending = self.pending_confirmation
        if pending is not None:
            self.pending_confirmation = None
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            self.log.warn(
                "commit {commit_id} was still waiting for confirmation: it stays in force "
                "(saved); roll it back with 'rollback configuration last 1' if needed",
                event="config.confirm-abandoned",
                commit_id=pending.commit_id,
            )
        self._restore_sighup()
        children = super().stopService()
        stopped = self.runtime.stop()
        if self.store is None:
            return stopped
        # the store service removes this node's bindings from Redis first
        return gatherResults([children, stopped], consumeErrors=True)

    # -- TLS identity reload (``crypto reload``, SIGHUP) -------------------------

    def reload_tls(self) -> list[str]:
        """Read the TLS files again and use them for new handshakes; the ``%`` error lines.

        All or nothing: when a file is missing or bad, or the key does not
        match the certificate, nothing changes and the one ``%`` line says
        why. Established connections keep the identity they were made with.
        Returns an empty list on success (:attr:`tls` is then the new identity).
        """
        if self.tls_files is None:
            return ["% no TLS identity is configured"]
        try:
            identity = load_tls_identity(self.tls_files)
        except TlsConfigError as error:
            self.log.error(
                "TLS identity not reloaded: {error}", event="tls.reload-failed", error=str(error)
            )
            return [f"% TLS identity not reloaded: {error}"]
        self.tls = identity
        self.runtime.set_tls_identity(identity)
        self.log.info(
            "TLS identity reloaded: {identity}",
            event="tls.reloaded",
            identity=describe_tls_identity(identity),
        )
        return []

    def _install_sighup(self) -> None:
        try:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        except (ValueError, OSError, AttributeError) as error:  # not the main thread
            self.log.warn("SIGHUP reload not available: {error}", error=str(error))

    def _restore_sighup(self) -> None:
        previous, self._previous_sighup = self._previous_sighup, None
        if previous is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGHUP, previous)

    def _sighup(self, signum: int, frame: Any) -> None:
        # A signal handler may run between any two bytecodes: hand over to the reactor.
        self.reactor.callFromThread(self._reload_on_signal)

    def _reload_on_signal(self) -> None:
        self.log.info("SIGHUP: reloading the TLS identity and the user database")
        errors = self.reload_tls()
        if errors == ["% no TLS identity is configured"]:
            self.log.info("SIGHUP: no TLS identity is configured, nothing to reload")
        if self.config.user_database is not None:
            self.reload_user_database()

    # -- the user database (``reload user-database``, SIGHUP) ------------------

    def reload_user_database(self) -> list[str]:
        """Read ``user-database`` again and use it at once; the ``%`` error lines.

        All or nothing: a file that cannot be read or has a bad line changes
        nothing, and the one ``%`` line names the file, the line and the
        problem (never a hash). Returns an empty list on success.
        """
        name = self.config.user_database
        if name is None:
            return ["% no user-database is configured"]
        path = user_database_path(name, self.config_path)
        try:
            users = load_user_database(path)
        except UserDatabaseError as error:
            self.log.error(
                "user database not reloaded: {error}",
                event="auth.users-reload-failed",
                error=str(error),
            )
            return [f"% user database not reloaded: {error}"]
        self.users = users
        self.log.info(
            "user database reloaded: {summary}",
            event="auth.users-reloaded",
            path=path,
            users=len(users),
            summary=self.describe_user_database(),
        )
        return []

    def describe_user_database(self) -> str:
        """``PATH: N users in M realms`` for the CLI and the log."""
        path = self.config.user_database or "(none)"
        realms = len(self.users.realms)
        return (
            f"{path}: {len(self.users)} user{'s' if len(self.users) != 1 else ''} "
            f"in {realms} realm{'s' if realms != 1 else ''}"
        )

    # -- commit (the management CLI) -------------------------------------------

    def apply_config(
        self,
        candidate: SbcConfig,
        *,
        user: str = "",
        client: str = "",
        comment: str = "",
        confirm_within: int | None = None,
    ) -> list[str]:
        """Validate, apply and save ``candidate`` whole; return the ``%`` error lines.

        Refused (nothing changes) when the candidate is invalid, changes the
        security of an attached adjacency, needs a listener that cannot be
        opened, or cannot be saved. Otherwise the commit is recorded in
        :attr:`commits` (``user``, ``client`` and ``comment`` go into the
        record), the listeners follow the new attached set
        (:meth:`SipRuntime.apply`), routing switches to a new
        :class:`Router` at once, and the file is replaced atomically (the
        previous one kept as ``FILE.bak``). Returns an empty list then.
        Calls using an adjacency the commit detaches (or removes) are
        released first (:meth:`CallManager.release_adjacency`).

        ``confirm_within`` (seconds) makes it a ``commit confirmed``: unless
        a later commit (or :meth:`confirm_commit`) confirms it within that
        time, the configuration before it is restored automatically, as a
        new commit. Refused while another one is waiting. Any successful
        commit confirms a waiting one.
        """
        # behaviour.md §2: this refusal comes before every other one, so the
        # operator hears it first whatever else is wrong with the candidate.
        refused = security_changes_while_attached(self.config, candidate)
        if refused:
            line = SECURITY_CHANGE_MESSAGE.format(name=refused[0])
            if len(refused) > 1:
                line += f" (also: {', '.join(refused[1:])})"
            self._log_refusal([line], user, client)
            return [line]
        if (candidate.store, candidate.node) != (self.config.store, self.config.node):
            line = (
                "% store and node are read at start only: change them in the file and "
                "restart sbc (docs/scaling.md)"
            )
            self._log_refusal([line], user, client)
            return [line]
        pending = self.pending_confirmation
        if confirm_within is not None:
            low, high = CONFIRM_SECONDS_RANGE
            if not low <= confirm_within <= high:
                return [f"% commit confirmed takes {low} to {high} seconds, not {confirm_within}"]
            if pending is not None:
                return [
                    f"% commit {pending.commit_id} is waiting for confirmation: "
                    "'commit' confirms it first"
                ]
            # The way back must be a commit the SBC accepts: not one that
            # changes the security of an adjacency this trial attaches.
            stuck = security_changes_while_attached(candidate, self.config)
            if stuck:
                return [
                    f"% commit confirmed could not roll back: it attaches adjacency {stuck[0]} "
                    "with a new security, which cannot be undone while it is attached; "
                    "commit without 'confirmed'"
                ]
        errors = self._apply_config(candidate, user=user, client=client, comment=comment)
        if not errors:
            record = self.commits.records[-1]
            if pending is not None:
                self._end_confirmation(pending, f"confirmed by commit {record.id}", user, client)
            if confirm_within is not None:
                self._start_confirmation(record, confirm_within, user)
        if errors:
            self._log_refusal(errors, user, client)
        return errors

    def _log_refusal(self, errors: list[str], user: str, client: str) -> None:
        self.log.info(
            "commit by {user} ({client}) refused: {reason}",
            event="config.refused",
            user=user or "-",
            client=client or "-",
            reason=" ".join(e.lstrip("% ") for e in errors),
        )

    def _apply_config(
        self, candidate: SbcConfig, *, user: str, client: str, comment: str
    ) -> list[str]:
        try:
            validate(
                candidate,
                certificate_configured=self.tls is not None,
                routing_policies=tuple(available_policies()),
            )
            router = Router.from_config(candidate)
        except ConfigError as error:
            return [f"% {error.message}"]
        users = self.users
        if candidate.user_database is not None and (
            candidate.user_database != self.config.user_database or not len(users)
        ):
            try:
                users = load_user_database(
                    user_database_path(candidate.user_database, self.config_path)
                )
            except UserDatabaseError as error:
                return [f"% user-database not usable: {error}"]
        table = AdjacencyTable(candidate.adjacencies)
        if self.running:
            for key in sorted(set(table.listeners) - set(self.runtime.listening)):
                problem = _cannot_listen(key)
                if problem is not None:
                    return [f"% cannot listen on {key}: {problem}"]
        before = self.config
        try:
            record = self.commits.record(
                render_config(before),
                render_config(candidate),
                now=self.reactor.seconds(),
                user=user,
                client=client,
                comment=comment,
            )
        except OSError as error:
            return [f"% cannot record the commit: {error.strerror or error}"]
        if self.config_path is not None:
            try:
                save_config(self.config_path, candidate)
            except OSError as error:
                self.commits.discard(record.id)
                return [f"% cannot save {self.config_path}: {error.strerror or error}"]
        self.commits.prune(candidate.limits.commit_history)
        still_attached = {a.name for a in candidate.adjacencies if a.attached}
        detached = [
            a.name for a in before.adjacencies if a.attached and a.name not in still_attached
        ]
        self.config = candidate
        self.router = router
        self.users = users
        self.authenticator.nonce_lifetime = float(candidate.limits.nonce_lifetime)
        # ``no attach`` releases the calls using the adjacency; their BYEs,
        # responses and CANCELs leave before its listeners close.
        now = self.reactor.seconds()
        for name in detached:
            self.runtime.process(self.core.calls.release_adjacency(name, now))
            self.core.relay.release_adjacency(name, now)
        if candidate.dns_servers != before.dns_servers:
            self.runtime.set_dns_servers(_dns_servers(candidate))
        applied = self.runtime.apply(table, candidate.limits)
        self.guard.configure(candidate.limits, candidate.blocked_user_agents)
        applied.addErrback(
            lambda failure: self.log.error(
                "commit: cannot open a listener: {error}", error=failure.getErrorMessage()
            )
        )
        changes = summarize_changes(before, candidate)
        self.log.info(
            "commit {commit_id} by {user} ({client}): {summary}",
            event="config.committed",
            commit_id=record.id,
            user=user or "-",
            client=client or "-",
            comment=comment,
            changes=changes,
            summary="; ".join(changes) or "no effective change",
        )
        return []

    # -- commit confirmed ------------------------------------------------------

    def confirm_commit(self, *, user: str = "", client: str = "") -> list[str]:
        """Confirm the waiting ``commit confirmed``: the output line or a ``%`` line."""
        pending = self.pending_confirmation
        if pending is None:
            return ["% no commit is waiting for confirmation"]
        self._end_confirmation(pending, "confirmed", user, client)
        return [f"Commit {pending.commit_id} confirmed."]

    def _start_confirmation(self, record: CommitRecord, seconds: int, user: str) -> None:
        now = self.reactor.seconds()
        pending = PendingConfirmation(record.id, seconds, now + seconds, record.before, user)
        pending.timer = self.reactor.callLater(seconds, self._confirmation_expired, pending)
        self.pending_confirmation = pending
        self.log.info(
            "commit {commit_id} is rolled back in {seconds} s unless confirmed",
            event="config.confirm-pending",
            commit_id=record.id,
            seconds=seconds,
        )

    def _end_confirmation(
        self, pending: PendingConfirmation, how: str, user: str, client: str
    ) -> None:
        self.pending_confirmation = None
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self.log.info(
            "commit {commit_id} {how} by {user} ({client})",
            event="config.confirmed",
            commit_id=pending.commit_id,
            how=how,
            user=user or "-",
            client=client or "-",
        )

    def _confirmation_expired(self, pending: PendingConfirmation) -> None:
        if self.pending_confirmation is not pending:
            return
        self.pending_confirmation = None
        label = f"commit {pending.commit_id} not confirmed within {pending.seconds} s"
        try:
            target = parse_config(pending.before, path=f"<before commit {pending.commit_id}>")
        except ConfigError as error:
            errors = [f"% {error}"]
        else:
            errors = self.apply_config(target, user="sbc", client="commit confirmed", comment=label)
        if errors:
            self.log.error(
                "{label}: cannot roll it back: {reason}",
                event="config.confirm-expired",
                label=label,
                commit_id=pending.commit_id,
                rolled_back=False,
                reason=" ".join(e.lstrip("% ") for e in errors),
            )
            return
        self.log.warn(
            "{label}: rolled back (commit {rollback_id})",
            event="config.confirm-expired",
            label=label,
            commit_id=pending.commit_id,
            rolled_back=True,
            rollback_id=self.commits.records[-1].id,
        )

    def rollback(
        self,
        *,
        last: int | None = None,
        to: int | None = None,
        user: str = "",
        client: str = "",
    ) -> list[str]:
        """``rollback configuration last N`` / ``to ID``: the output or ``%`` error lines.

        ``last=N`` returns to the configuration before the last N commits;
        ``to=ID`` to the configuration right after commit ID. The rollback
        is applied like any commit (:meth:`apply_config`: the same checks,
        so it is refused whole, for instance, when it would change the
        security of an attached adjacency) and becomes a new commit.
        """
        record: CommitRecord | None
        if last is not None:
            record = self.commits.last(last)
            if record is None:
                kept = len(self.commits.records)
                return [f"% cannot roll back {last} commit(s): only {kept} in the history"]
            text, label = record.before, f"rollback configuration last {last}"
        elif to is not None:
            record = self.commits.get(to)
            if record is None:
                return [f"% no commit {to} in the history (show configuration commit list)"]
            text, label = record.after, f"rollback configuration to {to}"
        else:
            raise TypeError("rollback needs last= or to=")
        try:
            target = parse_config(text, path=f"<commit {record.id}>")
        except ConfigError as error:
            return [f"% commit {record.id} cannot be restored: {error}"]
        if target == self.config:
            return ["No configuration changes: the running configuration is already that one."]
        errors = self.apply_config(target, user=user, client=client, comment=label)
        if errors:
            return errors
        return [f"Configuration rolled back ({label}): commit {self.commits.records[-1].id}."]


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


def _cannot_listen(key: ListenerKey) -> str | None:
    """Why ``key`` cannot be bound right now (a probe socket, closed at once), or None."""
    family = socket.AF_INET6 if ":" in key.address else socket.AF_INET
    kind = socket.SOCK_DGRAM if key.transport == UDP else socket.SOCK_STREAM
    probe = socket.socket(family, kind)
    try:
        if key.transport in (TLS, TCP):
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((key.address, key.port))
    except OSError as error:
        return error.strerror or str(error)
    finally:
        probe.close()
    return None


def _temporary_path(path: str, pid: int) -> str:
    """The temporary file :func:`save_config` writes ``path`` to from process ``pid``."""
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f".{os.path.basename(path)}.{pid}.tmp")


def remove_interrupted_saves(path: str) -> list[str]:
    """Delete the temporary copies of ``path`` left by saves that never finished.

    :func:`save_config` writes ``.NAME.PID.tmp`` beside the file and renames
    it over the file; a process killed before the rename leaves it behind.
    Only files of that exact form from other processes are removed. Returns
    their paths.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix) : -len(".tmp")]
        if not (name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit()):
            continue
        if int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
    return removed


def save_config(path: str, config: SbcConfig) -> None:
    """Write ``config`` to ``path`` atomically: temp file, fsync, rename; old one kept as .bak."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = _temporary_path(path, os.getpid())
    text = render_config(config)
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + ".bak")
            os.link(path, path + ".bak")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


#: Seconds to which the timers that only end a lingering transaction are rounded up.
LINGER_GRANULARITY = 1.0

#: Generation-0 threshold once the daemon runs (CPython's default is 700).
GC_THRESHOLDS = (20_000, 20, 20)


def tune_garbage_collector() -> None:
    """Make CPython's cyclic garbage collector cheap for a long-running SBC.

    Profiling at 200 calls/s showed a quarter of the CPU in full collections
    that walk every object, including everything loaded at start-up, and the
    pauses overflowed the UDP receive buffer. Freezing the start-up heap
    takes it out of every later collection; a larger generation-0 threshold
    makes collections rarer. ``docs/performance.md`` has the numbers.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _dns_servers(config: SbcConfig) -> list[tuple[str, int]]:
    """The configured ``dns-server`` lines as (address, port) pairs (none: the system's)."""
    return [(str(server.address), server.port) for server in config.dns_servers]
