"""The stock routing policies and what a policy is told about a call.

A routing policy (:class:`sbc.interfaces.IRoutingPolicy`) receives the
candidates the routing tree yielded, already filtered by the security rules,
and returns the destinations to try in order. The router re-checks the
security rules on the result, so a policy can reorder or narrow but never
weaken them (docs/routing.md).

Stock policies, selected with ``routing-policy NAME``:

- ``default``: the tree's order, unchanged.
- ``round-robin``: the candidates rotated by one more for each call.
- ``least-calls``: the adjacency with the fewest active calls first (ties
  keep the tree's order).

Their factories (:data:`STOCK_FACTORIES`) are published as Twisted plugins by
:mod:`sbc.plugins.sbc_policies`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from zope.interface import implementer

from sbc.config import SbcConfig
from sbc.interfaces import IRoutingPolicy, IRoutingPolicyFactory
from sbc.routing.values import Destination, RouteKey, RoutingContext

__all__ = [
    "STOCK_FACTORIES",
    "DefaultPolicy",
    "LeastCallsPolicy",
    "PolicyFactory",
    "RoundRobinPolicy",
    "RoutingContext",
]


@implementer(IRoutingPolicy)
class DefaultPolicy:
    """The seed's rules and nothing more: the candidates in the tree's order.

    The security filter itself (secure calls only out of trusted adjacencies,
    insecure calls only out of untrusted or trusted-unencrypted ones, attached
    adjacencies only) is applied by the router around every policy.
    """

    name = "default"

    def choose(
        self, candidates: Sequence[Destination], key: RouteKey, context: RoutingContext
    ) -> Sequence[Destination]:
        """The candidates unchanged."""
        return list(candidates)


@implementer(IRoutingPolicy)
class RoundRobinPolicy:
    """Spreads calls: each call starts one candidate further than the previous one."""

    name = "round-robin"

    def __init__(self) -> None:
        self._calls = 0

    def choose(
        self, candidates: Sequence[Destination], key: RouteKey, context: RoutingContext
    ) -> Sequence[Destination]:
        """The candidates rotated left by the number of calls routed so far."""
        items = list(candidates)
        if not items:
            return items
        start = self._calls % len(items)
        self._calls += 1
        return items[start:] + items[:start]


@implementer(IRoutingPolicy)
class LeastCallsPolicy:
    """Fewest active calls first; candidates with equal counts keep their order."""

    name = "least-calls"

    def choose(
        self, candidates: Sequence[Destination], key: RouteKey, context: RoutingContext
    ) -> Sequence[Destination]:
        """The candidates sorted (stably) by ``context.active_calls`` ascending."""
        return sorted(candidates, key=lambda d: context.active_calls(d.adjacency))


@implementer(IRoutingPolicyFactory)
@attrs.frozen
class PolicyFactory:
    """A routing-policy plugin that makes a new ``policy_class()`` per configuration load."""

    name: str
    description: str
    policy_class: Callable[[], IRoutingPolicy]

    def make_policy(self, config: SbcConfig) -> IRoutingPolicy:
        """A fresh policy (its state, e.g. a rotation, starts anew on each load)."""
        return self.policy_class()


STOCK_FACTORIES: tuple[PolicyFactory, ...] = (
    PolicyFactory("default", "the security rules only; candidates in table order", DefaultPolicy),
    PolicyFactory("round-robin", "rotate the first candidate on every call", RoundRobinPolicy),
    PolicyFactory(
        "least-calls", "fewest active calls first; ties keep table order", LeastCallsPolicy
    ),
)
"""The factories of the stock policies; :mod:`sbc.plugins.sbc_policies` publishes them."""
