"""The location service: bindings of an address-of-record to contacts (RFC 3261 §10).

Each binding has an absolute expiry time (``expires_at``, on the same
monotonic clock as every ``now`` the SBC passes around); nothing here reads
a clock. A binding also remembers where it was registered from (the
adjacency and the :class:`~sbc.sip.stack.Flow`), because calls to the AOR
are sent back over that adjacency and connection (docs/phones.md).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from zope.interface import implementer

from sbc.interfaces import ILocationService
from sbc.registrar.binding import Binding, aor_key

__all__ = ["Binding", "LocationService", "aor_key"]


@implementer(ILocationService)
class LocationService:
    """An in-memory :class:`ILocationService`; :meth:`expire` removes expired bindings.

    Expiry times wait in a heap (an entry made stale by a refresh or a
    removal is skipped when it comes up), and the AORs that have a binding
    on a stream connection are indexed by the connection's id, so expiry and
    a closed connection cost time in the bindings they touch, not in every
    binding held.
    """

    def __init__(self) -> None:
        self._bindings: dict[str, list[Binding]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._by_connection: dict[int, set[str]] = {}

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """The live bindings of ``aor``, highest q first (registration order otherwise)."""
        live = [b for b in self._bindings.get(aor, ()) if b.expires_at > now]
        # expired ones stay until expire() removes (and reports) them
        return sorted(live, key=lambda b: -(b.q if b.q is not None else 1.0))

    def update(self, aor: str, bindings: list[Binding], now: float) -> None:
        """Replace the bindings of ``aor``; expired ones are not kept."""
        self._replace(aor, bindings, now)

    def _replace(self, aor: str, bindings: list[Binding], now: float) -> None:
        """:meth:`update` itself; expiry and closed connections use it too.

        A subclass that writes changes elsewhere overrides :meth:`update`
        (what the registrar asks) and sees expiry and closed connections
        through :meth:`expire` and :meth:`remove_connection` instead.
        """
        old = self._bindings.get(aor, ())
        live = [b for b in bindings if b.expires_at > now]
        if live:
            self._bindings[aor] = live
        else:
            self._bindings.pop(aor, None)
        known = {(b.expires_at, b.flow.connection_id) for b in old}
        for binding in live:
            if (binding.expires_at, binding.flow.connection_id) not in known:
                heapq.heappush(self._expiries, (binding.expires_at, aor))
        self._reindex(aor, old, live)

    def _reindex(self, aor: str, old: Iterable[Binding], new: Iterable[Binding]) -> None:
        before = {b.flow.connection_id for b in old if b.flow.connection_id is not None}
        after = {b.flow.connection_id for b in new if b.flow.connection_id is not None}
        for connection_id in before - after:
            aors = self._by_connection.get(connection_id)
            if aors is not None:
                aors.discard(aor)
                if not aors:
                    del self._by_connection[connection_id]
        for connection_id in after - before:
            self._by_connection.setdefault(connection_id, set()).add(aor)

    def expire(self, now: float) -> list[Binding]:
        """Remove and return every binding whose expiry is at or before ``now``."""
        gone: list[Binding] = []
        while self._expiries and self._expiries[0][0] <= now:
            _, aor = heapq.heappop(self._expiries)
            bindings = self._bindings.get(aor)
            if not bindings:
                continue
            expired = [b for b in bindings if b.expires_at <= now]
            if expired:
                gone.extend(expired)
                self._replace(aor, [b for b in bindings if b.expires_at > now], now)
        return gone

    def remove_connection(self, connection_id: int, now: float) -> list[Binding]:
        """Remove and return the bindings registered over stream connection ``connection_id``."""
        gone: list[Binding] = []
        for aor in sorted(self._by_connection.get(connection_id, ())):
            bindings = self._bindings.get(aor, [])
            closed = [b for b in bindings if b.flow.connection_id == connection_id]
            gone.extend(closed)
            self._replace(aor, [b for b in bindings if b not in closed], now)
        self._by_connection.pop(connection_id, None)
        return gone

    def purge(self, now: float) -> int:
        """Drop every expired binding; return how many went."""
        return len(self.expire(now))

    def next_expiry(self) -> float | None:
        """The earliest time a binding may expire (a stale time at worst), or ``None``."""
        while self._expiries:
            at, aor = self._expiries[0]
            if any(b.expires_at == at for b in self._bindings.get(aor, ())):
                return at
            heapq.heappop(self._expiries)  # refreshed or removed since: stale
        return None

    def __len__(self) -> int:
        """The number of bindings held (expired ones included until purged)."""
        return sum(len(bs) for bs in self._bindings.values())

    def __iter__(self) -> Iterator[Binding]:
        for bindings in list(self._bindings.values()):
            yield from bindings
