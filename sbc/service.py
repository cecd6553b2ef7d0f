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

from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python.failure import Failure

from sbc.adjacencies import AdjacencyTable
from sbc.config import SbcConfig, validate
from sbc.core import SbcCore
from sbc.routing import Router, available_policies
from sbc.sip.stack import SipStack
from sbc.transport.runtime import SipRuntime
from sbc.transport.tls import TlsIdentity, load_tls_identity


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

    def __init__(self, config: SbcConfig, reactor: Any, tls: TlsIdentity | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.tls = tls
        self.setName(f"sbc {config.service_name}")
        self.router = Router.from_config(config)
        self.core = SbcCore(
            lambda: self.runtime.table,
            lambda key, table, active: self.router.route(key, table, active),
            local_domains=lambda: self.config.local_domains,
        )
        self.stack = SipStack(self.core)
        self.core.stack = self.stack
        self.runtime = SipRuntime(
            reactor,
            self.stack,
            AdjacencyTable(config.adjacencies),
            limits=config.limits,
            tls=tls,
        )

    @classmethod
    def from_config(
        cls,
        config: SbcConfig,
        reactor: Any = None,
        tls: TlsFiles | None = None,
    ) -> SbcService:
        """Validate ``config``, load the TLS identity and build the service.

        Raises ``ConfigError`` (naming the file and line) when the
        configuration or a TLS file is refused; nothing is started then.
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
        return cls(config, reactor, identity)

    def startService(self) -> None:
        super().startService()
        for adjacency in self.config.adjacencies:
            self.log.info(
                "adjacency {name}: {state}, {address}:{port} {transport}, security {security}",
                name=adjacency.name,
                state="attached" if adjacency.attached else "detached",
                address=adjacency.signaling_address,
                port=adjacency.port,
                transport=adjacency.transport_display,
                security=adjacency.security_display,
            )
        self.started = self.runtime.start()
        self.started.addCallbacks(self._listening, self._listen_failed)

    def _listening(self, _: object) -> None:
        # Logged once the reactor runs (signal handlers are installed by then).
        self.reactor.callWhenRunning(
            self.log.info,
            "sbc {name} started with {count} adjacencies",
            name=self.config.service_name,
            count=len(self.config.adjacencies),
        )

    def _listen_failed(self, failure: Failure) -> None:
        self.log.critical(
            "sbc {name} cannot open its listeners: {error}",
            name=self.config.service_name,
            error=failure.getErrorMessage(),
        )
        self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Any:
        self.log.info("sbc {name} stopping", name=self.config.service_name)
        super().stopService()
        return self.runtime.stop()
