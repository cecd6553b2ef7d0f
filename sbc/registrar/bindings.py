"""The location service: bindings of an address-of-record to contacts (RFC 3261 §10).

Each binding has an absolute expiry time (``expires_at``, on the same
monotonic clock as every ``now`` the SBC passes around); nothing here reads
a clock. A binding also remembers where it was registered from (the
adjacency and the :class:`~sbc.sip.stack.Flow`), because calls to the AOR
are sent back over that adjacency and connection (behaviour.md §1, §7).
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
from zope.interface import implementer

from sbc.interfaces import ILocationService
from sbc.sip.stack import Flow
from sbc.sip.uri import URI

__all__ = ["Binding", "LocationService", "aor_key"]


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

    def remaining(self, now: float) -> int:
        """Whole seconds left before the binding expires (never negative)."""
        return max(0, int(self.expires_at - now + 0.5))


@implementer(ILocationService)
class LocationService:
    """An in-memory :class:`ILocationService`; expired bindings vanish on access."""

    def __init__(self) -> None:
        self._bindings: dict[str, list[Binding]] = {}

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """The live bindings of ``aor``, highest q first (registration order otherwise)."""
        live = [b for b in self._bindings.get(aor, ()) if b.expires_at > now]
        if not live:
            self._bindings.pop(aor, None)
            return []
        self._bindings[aor] = live
        return sorted(live, key=lambda b: -(b.q if b.q is not None else 1.0))

    def update(self, aor: str, bindings: list[Binding], now: float) -> None:
        """Replace the bindings of ``aor``; expired ones are not kept."""
        live = [b for b in bindings if b.expires_at > now]
        if live:
            self._bindings[aor] = live
        else:
            self._bindings.pop(aor, None)

    def purge(self, now: float) -> int:
        """Drop every expired binding; return how many went."""
        gone = 0
        for aor in list(self._bindings):
            before = len(self._bindings[aor])
            self.lookup(aor, now)
            gone += before - len(self._bindings.get(aor, ()))
        return gone

    def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` of any binding, or ``None``."""
        times = [b.expires_at for bs in self._bindings.values() for b in bs]
        return min(times) if times else None

    def __len__(self) -> int:
        """The number of bindings held (expired ones included until purged)."""
        return sum(len(bs) for bs in self._bindings.values())

    def __iter__(self) -> Iterator[Binding]:
        for bindings in list(self._bindings.values()):
            yield from bindings
