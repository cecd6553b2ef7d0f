"""Routing (docs/routing.md): which adjacencies a new call is tried on, in order.

- :class:`RouteKey`: what routing reads from a request, computed once
  (:mod:`sbc.routing.values`, with :class:`Destination` and
  :class:`RoutingContext`).
- :func:`walk` over :class:`RoutingNode` trees (built from a
  call-policy-set by :func:`build_tree`), like ``twisted.web.resource``.
- Routing policies (:class:`sbc.interfaces.IRoutingPolicy`), chosen with
  ``routing-policy NAME`` and discovered as Twisted plugins
  (:func:`available_policies`).
- :class:`Router`: walk, policy, security re-check -> :class:`RoutingDecision`.
"""

from sbc.routing.policies import (
    STOCK_FACTORIES,
    DefaultPolicy,
    LeastCallsPolicy,
    PolicyFactory,
    RoundRobinPolicy,
)
from sbc.routing.router import (
    NO_POLICY_SET_LABEL,
    Router,
    RoutingDecision,
    available_policies,
)
from sbc.routing.tree import (
    MAX_DEPTH,
    AddressTable,
    DomainTable,
    Junction,
    Leaf,
    RoundRobinTable,
    RoutingNode,
    SourceAdjacencyTable,
    TableNode,
    build_tree,
    digits_of,
    walk,
)
from sbc.routing.values import Destination, RouteKey, RoutingContext

__all__ = [
    "MAX_DEPTH",
    "NO_POLICY_SET_LABEL",
    "STOCK_FACTORIES",
    "AddressTable",
    "DefaultPolicy",
    "Destination",
    "DomainTable",
    "Junction",
    "Leaf",
    "LeastCallsPolicy",
    "PolicyFactory",
    "RoundRobinPolicy",
    "RoundRobinTable",
    "RouteKey",
    "Router",
    "RoutingContext",
    "RoutingDecision",
    "RoutingNode",
    "SourceAdjacencyTable",
    "TableNode",
    "available_policies",
    "build_tree",
    "digits_of",
    "walk",
]
