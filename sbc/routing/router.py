"""The router: tree walk, routing policy, security re-check (docs/routing.md).

:meth:`Router.route` applies, in this order:

1. the walk of the active call-policy-set's tree (with no active set: every
   attached adjacency except the one the request arrived on, in
   configuration order);
2. the security filter of :func:`sbc.security.may_send_out_of`, so the
   policy chooses among allowed destinations only;
3. the routing policy (:class:`sbc.interfaces.IRoutingPolicy`);
4. the security filter again on what the policy returned: a destination
   that fails, or that names no attached adjacency, is dropped;
5. nothing left: :func:`sbc.security.no_route` (480, with Warning 380 for
   a secure call) is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs
from twisted.plugin import getPlugins

import sbc.plugins
from sbc.adjacencies import AdjacencyTable
from sbc.config import SbcConfig
from sbc.errors import ConfigError
from sbc.interfaces import IRoutingNode, IRoutingPolicy, IRoutingPolicyFactory
from sbc.routing.policies import STOCK_FACTORIES, RoutingContext
from sbc.routing.tree import Destination, RouteKey, build_tree, walk
from sbc.security import may_send_out_of, no_route

__all__ = ["NO_POLICY_SET_LABEL", "Router", "RoutingDecision", "available_policies"]

NO_POLICY_SET_LABEL = "no active call-policy-set"
"""The matched path of a call routed without a call-policy-set."""


@attrs.frozen
class RoutingDecision:
    """Where a call is tried, in order, and why.

    ``destinations`` passed the routing policy and the security re-check;
    ``path`` is the matched path through the tree, for logs and show
    commands, e.g. ``("call-policy-set 1", "by-source entry 1",
    "by-domain entry 3")``.
    """

    destinations: tuple[Destination, ...]
    path: tuple[str, ...]


def available_policies() -> dict[str, IRoutingPolicyFactory]:
    """Every routing policy this program knows, by name.

    Discovered with ``getPlugins(IRoutingPolicyFactory, sbc.plugins)``: the
    stock policies and any plugin module in a ``sbc/plugins/`` directory on
    ``sys.path``. A plugin cannot replace a stock name; between two plugins
    with one name, the first found wins.
    """
    found: dict[str, IRoutingPolicyFactory] = {}
    for factory in getPlugins(IRoutingPolicyFactory, sbc.plugins):
        found.setdefault(factory.name, factory)
    for stock in STOCK_FACTORIES:
        found[stock.name] = stock
    return found


def _unique(destinations: Iterable[Destination]) -> list[Destination]:
    return list(dict.fromkeys(destinations))


class Router:
    """Routes requests for one loaded configuration.

    Build it with :meth:`from_config`; build a new one for every new
    configuration. It keeps the round-robin positions of the tree and of the
    policy between calls.
    """

    def __init__(
        self, root: IRoutingNode | None, policy: IRoutingPolicy, policy_set: int | None = None
    ) -> None:
        self.root = root
        self.policy = policy
        self.policy_set = policy_set

    @classmethod
    def from_config(
        cls,
        config: SbcConfig,
        policy_factories: Mapping[str, IRoutingPolicyFactory] | None = None,
    ) -> Router:
        """The router for ``config``.

        ``policy_factories`` maps routing-policy names to factories; None
        discovers them (:func:`available_policies`). Raises ConfigError for an
        unknown ``routing-policy`` name, an ``active-call-policy-set`` that
        does not exist, and a call-policy-set that cannot be walked
        (:func:`sbc.routing.build_tree`).
        """
        factories = available_policies() if policy_factories is None else policy_factories
        factory = factories.get(config.routing_policy)
        if factory is None:
            known = ", ".join(sorted(factories))
            raise ConfigError(
                config.source,
                config.setting_lines.get("routing-policy", 0),
                f"unknown routing-policy '{config.routing_policy}' (known: {known})",
            )
        policy = factory.make_policy(config)
        if not IRoutingPolicy.providedBy(policy):
            raise ConfigError(
                config.source,
                config.setting_lines.get("routing-policy", 0),
                f"routing-policy '{config.routing_policy}' made no IRoutingPolicy provider",
            )
        number = config.active_call_policy_set
        if number is None:
            return cls(None, policy)
        policy_set = config.call_policy_sets.get(number)
        if policy_set is None:
            raise ConfigError(
                config.source,
                config.setting_lines.get("active-call-policy-set", 0),
                f"active-call-policy-set {number}: no call-policy-set {number} is configured",
            )
        return cls(build_tree(number, policy_set, config.source), policy, number)

    def candidates(
        self, key: RouteKey, adjacencies: AdjacencyTable
    ) -> tuple[list[Destination], tuple[str, ...]]:
        """Step 1: the tree's candidates (unfiltered) and the matched path."""
        if self.root is None:
            everyone = [
                Destination(a.name) for a in adjacencies.attached if a.name != key.source_adjacency
            ]
            return everyone, (NO_POLICY_SET_LABEL,)
        leaf, path = walk(self.root, key)
        return _unique(leaf.candidates(key)), path

    def route(
        self,
        key: RouteKey,
        adjacencies: AdjacencyTable,
        active_calls: Callable[[str], int] = lambda name: 0,
    ) -> RoutingDecision:
        """The ordered destinations for ``key``, or raise the SipError to answer with.

        ``adjacencies`` are the attached adjacencies now; ``active_calls(name)``
        counts the calls using adjacency ``name`` (for policies such as
        least-calls).
        """

        def permitted(destination: object) -> bool:
            if not isinstance(destination, Destination):
                return False
            adjacency = adjacencies.get(destination.adjacency)
            return adjacency is not None and may_send_out_of(
                adjacency, key.secure, key.trusted_caller
            )

        found, path = self.candidates(key, adjacencies)
        allowed = [d for d in found if permitted(d)]
        if not allowed:
            raise no_route(key.secure)
        context = RoutingContext(adjacencies, active_calls)
        chosen = self.policy.choose(tuple(allowed), key, context)
        final = _unique(d for d in chosen if permitted(d))
        if not final:
            raise no_route(key.secure)
        return RoutingDecision(tuple(final), path)
