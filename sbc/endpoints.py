"""Helpers shared by the services that listen on a strports endpoint (CLI, SSH, metrics)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort

if TYPE_CHECKING:
    from sbc.cli.commands import SbcBackend

__all__ = ["ManagedSbc", "close_port"]


class ManagedSbc(Protocol):
    """What the management services need from the SBC they serve.

    An :class:`~sbc.service.SbcService` (one process) or a
    :class:`~sbc.workers.supervisor.Supervisor` (worker processes).
    """

    @property
    def reactor(self) -> Any:
        """The reactor the services listen with."""

    def fail(self, why: str) -> None:
        """Give up at start-up (a management endpoint that cannot be opened)."""

    def cli_backend(self) -> SbcBackend:
        """What a CLI session (socket or SSH) reads and changes."""


def close_port(port: IListeningPort | None) -> Deferred[None]:
    """Stop listening on ``port`` (None: nothing to do); fires when the port is closed."""
    if port is None:
        return succeed(None)
    result = port.stopListening()
    if isinstance(result, Deferred):
        return result.addCallback(lambda _: None)
    return succeed(None)
