"""One binding of an address-of-record to a contact, and the AOR's canonical key.

The value type :class:`sbc.interfaces.ILocationService` names; the store
itself is :class:`sbc.registrar.LocationService` (:mod:`sbc.registrar.bindings`).
"""

from __future__ import annotations

import attrs

from sbc.sip.stack import Flow
from sbc.sip.uri import URI

__all__ = ["Binding", "aor_key"]


def aor_key(uri: URI) -> str:
    """The canonical form of an address-of-record: ``user@host`` (host lower-cased).

    The scheme is not part of the key (``sip:bob@x`` and ``sips:bob@x`` name
    the same resource, RFC 5630 §5); the bindings keep their contact's own
    scheme and the caller picks the ones its call may use.
    """
    host = uri.host.lower()
    return f"{uri.user}@{host}" if uri.user is not None else host


@attrs.frozen
class Binding:
    """One contact of an AOR, with its absolute expiry and where it came from."""

    aor: str
    contact: URI
    expires_at: float
    adjacency: str
    flow: Flow
    call_id: str
    cseq: int
    q: float | None = None
    #: Registered from a trusted adjacency: an untrusted REGISTER neither sees nor changes it.
    trusted: bool = False
    #: The SBC node that holds the flow (a shared store, docs/scaling.md); None: this process.
    node: str | None = None
    #: The worker process of ``node`` that holds the flow (0: the only one, for now).
    worker: int = 0

    def remaining(self, now: float) -> int:
        """Whole seconds left before the binding expires (never negative)."""
        return max(0, int(self.expires_at - now + 0.5))
