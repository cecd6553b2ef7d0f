"""Helpers shared by the services that listen on a strports endpoint (CLI, SSH, metrics)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort

__all__ = ["close_port"]


def close_port(port: IListeningPort | None) -> Deferred[None]:
    """Stop listening on ``port`` (None: nothing to do); fires when the port is closed."""
    if port is None:
        return succeed(None)
    result = port.stopListening()
    if isinstance(result, Deferred):
        return result.addCallback(lambda _: None)
    return succeed(None)
