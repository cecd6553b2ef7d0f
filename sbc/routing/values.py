"""The values routing passes around: what it reads of a request, what it yields.

- :class:`RouteKey`: what routing reads from a request, computed once;
- :class:`Destination`: one candidate adjacency;
- :class:`RoutingContext`: what a routing policy may consult while it chooses.

The routing interfaces (:mod:`sbc.interfaces`) name these types; this module
imports nothing of the interfaces or of the routing tree, so the two never
import each other.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from sbc.adjacencies import AdjacencyTable
from sbc.config import AdjacencyConfig
from sbc.sip.uri import URI, unescape

__all__ = ["Destination", "RouteKey", "RoutingContext"]


def _lower(value: str) -> str:
    return value.lower()


@attrs.frozen
class RouteKey:
    """What routing reads from a request, computed once per request.

    ``destination_domain`` is the Request-URI host (stored lower-case);
    ``destination_user`` its user part, unescaped (the number of a ``tel:``
    URI); ``secure`` is True for a SIPS Request-URI; ``trusted_caller`` is
    False for a request from an untrusted adjacency (it never leaves through
    a trusted-encrypted one, even with ``sip-over-tls``).
    """

    source_adjacency: str
    destination_domain: str = attrs.field(converter=_lower)
    destination_user: str | None
    secure: bool
    trusted_caller: bool = True

    @classmethod
    def from_uri(
        cls, source_adjacency: str, request_uri: URI, trusted_caller: bool = True
    ) -> RouteKey:
        """The key of a request that arrived on ``source_adjacency`` for ``request_uri``.

        For a ``tel:`` URI the number is the user part and the domain is empty.
        """
        if request_uri.scheme == "tel":
            return cls(source_adjacency, "", request_uri.host, False, trusted_caller)
        user = None if request_uri.user is None else unescape(request_uri.user)
        return cls(source_adjacency, request_uri.host, user, request_uri.is_secure, trusted_caller)


@attrs.frozen
class Destination:
    """One candidate: the outbound adjacency to send the call out of."""

    adjacency: str


def _no_calls(name: str) -> int:
    return 0


@attrs.frozen
class RoutingContext:
    """What a policy may consult about the SBC while it chooses.

    ``adjacencies`` are the attached adjacencies; ``active_calls(name)`` is
    the number of calls currently using adjacency ``name``.
    """

    adjacencies: AdjacencyTable
    active_calls: Callable[[str], int] = _no_calls

    def adjacency(self, name: str) -> AdjacencyConfig | None:
        """The configuration of attached adjacency ``name``, or None."""
        return self.adjacencies.get(name)
