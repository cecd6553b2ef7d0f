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

from sbc.config import SbcConfig, validate
from sbc.errors import ConfigError


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

    def missing_files(self) -> list[str]:
        """Return the configured paths that cannot be opened for reading."""
        missing = []
        for path in (self.certificate, self.private_key, self.ca_certificates):
            if path is None:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError:
                missing.append(path)
        return missing


class SbcService(MultiService):
    """One SBC: every adjacency of one ``sbc NAME`` configuration.

    Create it with :meth:`from_config`; start and stop it like any Twisted
    service (``setServiceParent`` on an application, or ``startService`` /
    ``stopService`` directly). The ``reactor`` is injected so that tests can
    pass a ``MemoryReactorClock``.
    """

    log = Logger()

    def __init__(self, config: SbcConfig, reactor: Any, tls: TlsFiles | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.tls = tls
        self.setName(f"sbc {config.service_name}")

    @classmethod
    def from_config(
        cls,
        config: SbcConfig,
        reactor: Any = None,
        tls: TlsFiles | None = None,
    ) -> SbcService:
        """Validate ``config`` and build the service; raise ``ConfigError`` if it is refused."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        validate(config, certificate_configured=tls is not None)
        if tls is not None:
            missing = tls.missing_files()
            if missing:
                raise ConfigError(missing[0], 0, "cannot read TLS file")
        return cls(config, reactor, tls)

    def startService(self) -> None:
        super().startService()
        for adjacency in self.config.adjacencies:
            self.log.info(
                "adjacency {name}: {state}, {address}:{port} {transport}, security {security}",
                name=adjacency.name,
                state="attached" if adjacency.attached else "detached",
                address=adjacency.signaling_address,
                port=adjacency.port,
                transport=describe_transport(adjacency),
                security=describe_security(adjacency),
            )
        self.log.info(
            "sbc {name} started with {count} adjacencies",
            name=self.config.service_name,
            count=len(self.config.adjacencies),
        )

    def stopService(self) -> Any:
        self.log.info("sbc {name} stopping", name=self.config.service_name)
        return super().stopService()


def describe_transport(adjacency: Any) -> str:
    """The transport line of ``show ... adjacencies``: TLS, UDP, TCP or UDP+TCP."""
    if adjacency.security_inbound.value == "trusted-encrypted":
        return "TLS"
    return {"udp": "UDP", "tcp": "TCP", "udp-tcp": "UDP+TCP"}[adjacency.transport]


def describe_security(adjacency: Any) -> str:
    """The Security line of ``show ... adjacencies`` (behaviour.md §9)."""
    inbound = adjacency.security_inbound.display
    outbound = adjacency.security_outbound.display
    if inbound == outbound:
        return str(inbound)
    return f"inbound {inbound}, outbound {outbound}"
