"""The embedding API: :class:`SbcService`, a Twisted service built from a config.

An existing Twisted application creates one with :meth:`SbcService.from_config`
and attaches it to its own service tree::

    from sbc.config import load_config
    from sbc.service import SbcService, TlsFiles

    sbc = SbcService.from_config(load_config("sbc.conf"), reactor=reactor)
    sbc.setServiceParent(application)

``twistd sbc`` (see :mod:`sbc.tap`) is a thin caller of the same API.

The service is the composition root of one SBC process: a
:class:`~sbc.controller.ConfigController` (commits, their history, the file),
a :class:`~sbc.worker.SipWorker` (the SIP side it configures) and the
management services (CLI, SSH, metrics). Its methods that answer the CLI
(:meth:`SbcService.apply_config`, :meth:`SbcService.rollback`...) return the
CLI's lines, rendered from the typed results by :mod:`sbc.cli.replies`.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import gatherResults
from twisted.internet.error import ReactorNotRunning
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from sbc.adjacencies import AdjacencyTable, ListenerKey
from sbc.auth import DigestAuthenticator, UserDatabase, load_user_database
from sbc.cli import replies
from sbc.cli.commands import BlockedSourceInfo, CallInfo, OpenConnection, RegistrationInfo
from sbc.cli.ssh import SshSettings
from sbc.cluster import SharedStore
from sbc.commits import CommitHistory, CommitRecord
from sbc.config import SbcConfig, validate
from sbc.controller import (
    ConfigController,
    PendingConfirmation,
    remove_interrupted_saves,
    result_now,
    save_config,
)
from sbc.core import SbcCore
from sbc.errors import ConfigError
from sbc.flood import SourceGuard
from sbc.identity import identity_matches
from sbc.overload import OverloadControl
from sbc.routing import Router, available_policies
from sbc.sip.stack import SipStack
from sbc.transport.overload import LoadMeter
from sbc.transport.runtime import SipRuntime
from sbc.transport.tls import TlsFilePaths, TlsIdentity, load_tls_identity
from sbc.worker import (
    GC_THRESHOLDS,
    LINGER_GRANULARITY,
    SipWorker,
    cannot_listen,
    describe_tls_identity,
    node_name,
    tune_garbage_collector,
    user_database_path,
)

if TYPE_CHECKING:
    from sbc.metrics import SbcCollector

__all__ = [
    "GC_THRESHOLDS",
    "LINGER_GRANULARITY",
    "PendingConfirmation",
    "SbcService",
    "ServiceBackend",
    "SshSettings",
    "TlsFiles",
    "describe_tls_identity",
    "node_name",
    "remove_interrupted_saves",
    "save_config",
    "tune_garbage_collector",
    "user_database_path",
]


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
        #: Tune the garbage collector once listening (a daemon owns its process).
        self.tune_gc = tune_gc
        #: Install a SIGHUP handler that reloads the TLS identity (a daemon owns its signals).
        self.reload_on_sighup = reload_on_sighup
        self._previous_sighup: Any = None
        #: The log observer ``twistd sbc`` gives the application (see :meth:`setServiceParent`).
        self.log_observer: ILogObserver | None = None
        #: Why the service gave up at start-up (a listener or endpoint it could not open).
        self.fatal_error: str | None = None
        self.reactor = reactor
        #: The SIP side: listeners, stack, calls, registrations.
        self.worker = SipWorker(
            config,
            reactor,
            tls,
            users=users,
            config_path=config_path,
            overload_control=overload_control,
        )
        if self.worker.store_service is not None:
            # the store's connection stops with the service: it removes this node's bindings
            self.worker.store_service.setServiceParent(self)
        #: The running configuration, its commits and the file (``config_path``).
        self.controller = ConfigController(
            config,
            reactor,
            config_path=config_path,
            certificate_configured=tls is not None,
            target=self.worker,
        )
        self.setName(f"sbc {config.service_name}")
        if cli_endpoint is not None:
            from sbc.cli.server import CliService

            CliService(self, cli_endpoint).setServiceParent(self)
        if ssh is not None:
            from sbc.cli.ssh import SshCliService

            SshCliService(self, ssh).setServiceParent(self)
        if metrics_endpoint is not None:
            from sbc.metrics import MetricsService

            MetricsService(self, metrics_endpoint, self.metrics_collector()).setServiceParent(self)

    # -- what the service is made of (read-only views) ---------------------------------

    @property
    def config(self) -> SbcConfig:
        """The configuration in force."""
        return self.controller.running

    @property
    def config_path(self) -> str | None:
        """The file a commit saves to (None: commits are not saved)."""
        return self.controller.config_path

    @property
    def commits(self) -> CommitHistory:
        """Every commit: ``show configuration commit list``, ``rollback configuration``."""
        return self.controller.commits

    @property
    def pending_confirmation(self) -> PendingConfirmation | None:
        """The ``commit confirmed`` waiting for its confirmation, if any."""
        return self.controller.pending

    @property
    def store(self) -> SharedStore | None:
        """The store shared with other SBC nodes (``store`` under ``sbe``), or None."""
        return self.worker.store

    @property
    def core(self) -> SbcCore:
        return self.worker.core

    @property
    def stack(self) -> SipStack:
        return self.worker.stack

    @property
    def runtime(self) -> SipRuntime:
        return self.worker.runtime

    @property
    def router(self) -> Router:
        return self.worker.router

    @property
    def users(self) -> UserDatabase:
        """The digest credentials (``user-database``)."""
        return self.worker.users

    @property
    def authenticator(self) -> DigestAuthenticator:
        return self.worker.authenticator

    @property
    def guard(self) -> SourceGuard:
        """The flood and scanner defence (bans, rate limits): ``note_auth_failure`` goes here."""
        return self.worker.guard

    @property
    def overload(self) -> OverloadControl:
        return self.worker.overload

    @property
    def overload_meter(self) -> LoadMeter | None:
        return self.worker.overload_meter

    @property
    def tls(self) -> TlsIdentity | None:
        """The TLS identity new handshakes use."""
        return self.worker.tls

    @property
    def tls_files(self) -> TlsFilePaths | None:
        """The PEM files ``crypto reload`` / SIGHUP read again (None: no TLS)."""
        return self.worker.tls_files

    def cli_backend(self) -> ServiceBackend:
        """What the management CLI (socket and SSH) works on."""
        return ServiceBackend(self)

    def metrics_collector(self) -> SbcCollector:
        """The Prometheus collector of this service (read through :meth:`cli_backend`)."""
        from sbc.metrics import SbcCollector

        backend = self.cli_backend()

        def connections() -> Iterator[OpenConnection]:
            for connection in self.runtime.connections.values():
                yield OpenConnection(
                    connection.adjacency, connection.outbound, connection.transport_name
                )

        return SbcCollector(
            backend.counters,
            adjacencies=lambda: self.config.adjacencies,
            calls=backend.calls,
            registrations=backend.registrations,
            connections=connections,
            transactions=self.stack.transactions_by_state,
            blocked=backend.blocked_sources,
            service_name=self.config.service_name,
            overload=lambda: (self.overload.lag, self.overload.share),
        )

    # -- building ------------------------------------------------------------------

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
        identity, users = load_checked(config, tls, config_path)
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
        use_log_observer(self.log_observer, parent)
        super().setServiceParent(parent)

    # -- start and stop ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.reload_on_sighup:
            self._install_sighup()
        log_adjacencies(self.log, self.config)
        self.started = self.worker.start()
        self.started.addCallbacks(self._listening, self._listen_failed)

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
        return preflight_problems(self.config, self)

    def stopService(self) -> Any:
        self.log.info("sbc {name} stopping", name=self.config.service_name)
        self.controller.stop()
        self._restore_sighup()
        children = super().stopService()
        stopped = self.worker.stop()
        if self.worker.store is None:
            return stopped
        # the store service removes this node's bindings from Redis first
        return gatherResults([children, stopped], consumeErrors=True)

    # -- TLS identity and user database (``crypto reload``, SIGHUP) ----------------------

    def reload_tls(self) -> list[str]:
        """Read the TLS files again and use them for new handshakes; the ``%`` error lines.

        All or nothing: when a file is missing or bad, or the key does not
        match the certificate, nothing changes and the one ``%`` line says
        why. Established connections keep the identity they were made with.
        Returns an empty list on success (:attr:`tls` is then the new identity).
        """
        from sbc.cli.replies import refusal
        from sbc.controller import Refused

        result = self.worker.reload_tls()
        return refusal(result) if isinstance(result, Refused) else []

    def reload_user_database(self) -> list[str]:
        """Read ``user-database`` again and use it at once; the ``%`` error lines.

        All or nothing: a file that cannot be read or has a bad line changes
        nothing, and the one ``%`` line names the file, the line and the
        problem (never a hash). Returns an empty list on success.
        """
        from sbc.cli.replies import refusal
        from sbc.controller import Refused

        result = self.worker.reload_users()
        return refusal(result) if isinstance(result, Refused) else []

    def describe_user_database(self) -> str:
        """``PATH: N users in M realms`` for the CLI and the log."""
        return self.worker.describe_user_database()

    def _install_sighup(self) -> None:
        self._previous_sighup = install_sighup(self.reactor, self._reload_on_signal, self.log)

    def _restore_sighup(self) -> None:
        previous, self._previous_sighup = self._previous_sighup, None
        restore_sighup(previous)

    def _reload_on_signal(self) -> None:
        self.log.info("SIGHUP: reloading the TLS identity and the user database")
        errors = self.reload_tls()
        if errors == ["% no TLS identity is configured"]:
            self.log.info("SIGHUP: no TLS identity is configured, nothing to reload")
        if self.config.user_database is not None:
            self.reload_user_database()

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

        :meth:`ConfigController.commit` on this process's SIP side: refused
        (nothing changes) when the candidate is invalid, changes the
        security of an attached adjacency, needs a listener that cannot be
        opened, or cannot be saved; otherwise recorded in :attr:`commits`,
        applied at once and saved atomically. ``confirm_within`` (seconds)
        makes it a ``commit confirmed``. Returns an empty list on success.
        """
        from sbc.cli.replies import commit_lines

        result = result_now(
            self.controller.commit(
                candidate, user=user, client=client, comment=comment, confirm_within=confirm_within
            )
        )
        return commit_lines(result)

    def confirm_commit(self, *, user: str = "", client: str = "") -> list[str]:
        """Confirm the waiting ``commit confirmed``: the output line or a ``%`` line."""
        from sbc.cli.replies import confirm_lines

        return confirm_lines(self.controller.confirm(user=user, client=client))

    def rollback(
        self,
        *,
        last: int | None = None,
        to: int | None = None,
        user: str = "",
        client: str = "",
    ) -> list[str]:
        """``rollback configuration last N`` / ``to ID``: the output or ``%`` error lines.

        :meth:`ConfigController.rollback`: applied like any commit and
        recorded as a new one.
        """
        from sbc.cli.replies import rollback_lines

        result = result_now(self.controller.rollback(last=last, to=to, user=user, client=client))
        return rollback_lines(result)


# -- shared with the supervisor of worker processes (sbc.workers.supervisor) -----------


def load_checked(
    config: SbcConfig,
    tls: TlsFilePaths | None,
    config_path: str | None,
    *,
    shared_store: bool = False,
) -> tuple[TlsIdentity | None, UserDatabase | None]:
    """Validate ``config`` and read its TLS identity and user database.

    ``shared_store``: worker processes (they share a store without a ``store`` line).

    Raises ``ConfigError`` (file and line) when the configuration, a TLS
    file or the user database is refused.
    """
    validate(
        config,
        certificate_configured=tls is not None,
        routing_policies=tuple(available_policies()),
        shared_store=shared_store,
    )
    identity = load_tls_identity(tls) if tls is not None else None
    if identity is not None:
        check_cluster_identity(config, identity)
    users = None
    if config.user_database is not None:
        users = load_user_database(user_database_path(config.user_database, config_path))
    return identity, users


def check_cluster_identity(config: SbcConfig, identity: TlsIdentity) -> None:
    """Refuse a ``cluster-link identity NAME`` that this node's own certificate lacks.

    The other nodes check that name on this node's certificate at every
    handshake of the link, so such a node could never hand over or take a
    call; said at start (and by ``--check-config``) instead of as calls that
    fail after Timer B.
    """
    for adjacency in config.adjacencies:
        name = adjacency.cluster_identity
        if not adjacency.cluster_link or name is None:
            continue
        own = identity.identities
        if not identity_matches(own, name):
            raise ConfigError(
                config.source,
                adjacency.setting_lines.get("cluster-link", adjacency.line),
                f"cluster-link identity {name}: this node's certificate ({own.describe()}) "
                "does not carry that name, so the other nodes would refuse its link",
            )


def use_log_observer(observer: ILogObserver | None, parent: Any) -> None:
    """Make ``observer`` the ``ILogObserver`` of a twistd application ``parent``."""
    if (
        observer is not None
        and isinstance(parent, Componentized)
        and parent.getComponent(ILogObserver, None) is None
    ):
        parent.setComponent(ILogObserver, observer)


def log_adjacencies(log: Logger, config: SbcConfig) -> None:
    """One start-up line per adjacency: state, address, transport, security."""
    for adjacency in config.adjacencies:
        log.info(
            "adjacency {name}: {state}, {address}:{port} {transport}, security {security}",
            name=adjacency.name,
            state="attached" if adjacency.attached else "detached",
            address=adjacency.signaling_address or "(no address)",
            port=adjacency.port,
            transport=adjacency.transport_display,
            security=adjacency.security_display,
        )


def preflight_problems(config: SbcConfig, services: Any) -> list[str]:
    """Listeners that cannot be bound, then the problems of the child ``services``."""
    problems = []
    for key in sorted(AdjacencyTable(config.adjacencies).listeners):
        problem = _cannot_listen(key)
        if problem is not None:
            problems.append(f"cannot listen on {key}: {problem}")
    for child in services:
        check = getattr(child, "preflight", None)
        if check is not None:
            problems.extend(check())
    return problems


def install_sighup(reactor: Any, reload: Any, log: Logger) -> Any:
    """Call ``reload`` in the reactor on SIGHUP; the previous handler (None: not installed)."""

    def handler(signum: int, frame: Any) -> None:
        # A signal handler may run between any two bytecodes: hand over to the reactor.
        reactor.callFromThread(reload)

    try:
        return signal.signal(signal.SIGHUP, handler)
    except (ValueError, OSError, AttributeError) as error:  # not the main thread
        log.warn("SIGHUP reload not available: {error}", error=str(error))
        return None


def restore_sighup(previous: Any) -> None:
    """Put back the SIGHUP handler :func:`install_sighup` replaced."""
    if previous is not None:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGHUP, previous)


def _cannot_listen(key: ListenerKey) -> str | None:
    """Why ``key`` cannot be bound right now (without SO_REUSEPORT), or None."""
    return cannot_listen(key)


class ServiceBackend:
    """:class:`~sbc.cli.commands.SbcBackend` over a running :class:`SbcService`.

    Commits and rollbacks go to its :class:`~sbc.controller.ConfigController`,
    everything else to its :class:`~sbc.worker.SipWorker`; the typed results
    become lines through :mod:`sbc.cli.replies`.
    """

    def __init__(self, service: SbcService) -> None:
        self.service = service

    def running_config(self) -> SbcConfig:
        return self.service.config

    def commit(
        self,
        candidate: SbcConfig,
        *,
        user: str = "",
        client: str = "",
        comment: str = "",
        confirm_within: int | None = None,
    ) -> list[str]:
        return self.service.apply_config(
            candidate, user=user, client=client, comment=comment, confirm_within=confirm_within
        )

    def pending_confirmation(self) -> tuple[int, int] | None:
        return self.service.controller.pending_confirmation()

    def confirm_commit(self, *, user: str = "", client: str = "") -> list[str]:
        return self.service.confirm_commit(user=user, client=client)

    def commit_history(self) -> Sequence[CommitRecord]:
        return self.service.commits.records

    def rollback(
        self, *, last: int | None = None, to: int | None = None, user: str = "", client: str = ""
    ) -> list[str]:
        return self.service.rollback(last=last, to=to, user=user, client=client)

    def reload_tls(self) -> list[str]:
        return replies.reload_tls_lines(self.service.worker.reload_tls())

    def reload_users(self) -> list[str]:
        return replies.reload_users_lines(self.service.worker.reload_users())

    def counters(self) -> Mapping[str, Mapping[str, int]]:
        return self.service.worker.counters()

    def calls(self) -> Sequence[CallInfo]:
        return self.service.worker.calls()

    def blocked_sources(self) -> Sequence[BlockedSourceInfo]:
        return self.service.worker.blocked_sources()

    def release_source(self, address: str | None) -> list[str]:
        return replies.release_lines(self.service.worker.release_source(address))

    def registrations(self) -> Sequence[RegistrationInfo]:
        return self.service.worker.registrations()
