"""prefer-tls: a third-party sbc routing policy (a worked example).

For a call that may leave over several adjacencies, try the ones whose
outbound side is SIP over TLS (trusted-encrypted) first, then the others,
each group in the order the routing tables gave. For an insecure (sip:) call
the security rules already exclude trusted-encrypted adjacencies, so the
order is unchanged.

The policy only reorders. Even if it returned an adjacency the security
rules forbid, sbc's router would drop it: a policy can never weaken them.

The plugin itself (what ``routing-policy prefer-tls`` finds) is the module
``sbc/plugins/prefer_tls.py`` next to this package; see README.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from zope.interface import implementer

from sbc.config import SbcConfig
from sbc.interfaces import IRoutingPolicy, IRoutingPolicyFactory
from sbc.routing import Destination, RouteKey, RoutingContext

__all__ = ["PreferTlsPolicy", "PreferTlsPolicyFactory", "factory"]


@implementer(IRoutingPolicy)
class PreferTlsPolicy:
    """Trusted-encrypted adjacencies first; the tables' order otherwise."""

    name = "prefer-tls"

    def choose(
        self, candidates: Sequence[Destination], key: RouteKey, context: RoutingContext
    ) -> Sequence[Destination]:
        """The candidates, TLS ones first (a stable sort keeps the rest in order)."""

        def over_tls(destination: Destination) -> bool:
            adjacency = context.adjacency(destination.adjacency)
            return adjacency is not None and adjacency.sends_tls

        return sorted(candidates, key=lambda d: not over_tls(d))


@implementer(IRoutingPolicyFactory)
@attrs.frozen
class PreferTlsPolicyFactory:
    """Makes the prefer-tls policy; found by sbc as a Twisted plugin."""

    name: str = "prefer-tls"
    description: str = "trusted-encrypted (TLS) adjacencies first, then table order"

    def make_policy(self, config: SbcConfig) -> IRoutingPolicy:
        """A new policy (it keeps no state, the configuration is not needed)."""
        return PreferTlsPolicy()


factory = PreferTlsPolicyFactory()
