"""Every zope interface of sbc: the seams where behaviour can be swapped.

- :class:`IRoutingNode`: a node of the routing tree (docs/routing.md), walked
  by :func:`sbc.routing.walk` the way ``twisted.web.resource`` walks
  resources.
- :class:`IRoutingPolicy`: orders (or narrows) the candidate destinations of
  one call; the router re-checks the security rules on whatever it returns.
- :class:`IRoutingPolicyFactory`: a Twisted plugin (found in the
  :mod:`sbc.plugins` package) that makes a policy; ``routing-policy NAME``
  in the configuration selects one by its :attr:`name`.
- :class:`ILocationService`: the registrar's binding store (docs/phones.md),
  :class:`sbc.registrar.LocationService` in memory, or
  :class:`sbc.cluster.SharedLocationService` shared through Redis
  (docs/scaling.md).
- :class:`IAuthenticator`: checks a request's credentials (SIP digest,
  docs/authentication.md), :class:`sbc.auth.DigestAuthenticator`.

Only interfaces live here. The value types named in the signatures live in
modules that import nothing back from here or from their implementations:
:mod:`sbc.routing.values`, :mod:`sbc.registrar.binding`, :mod:`sbc.config`,
:mod:`sbc.sip.message` (tests/test_import_cycles.py checks it).
"""

# zope interface methods are declared without ``self``:
# ruff: noqa: N805

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from sbc.config import SbcConfig
    from sbc.registrar.binding import Binding
    from sbc.routing.values import Destination, RouteKey, RoutingContext
    from sbc.sip.message import Request

__all__ = [
    "IAuthenticator",
    "ILocationService",
    "IRoutingNode",
    "IRoutingPolicy",
    "IRoutingPolicyFactory",
]


class IRoutingNode(Interface):
    """A node of the routing tree.

    Like a ``twisted.web.resource.IResource``: a node has static children
    (registered with :meth:`put_child` under a *segment*) and may compute a
    child dynamically (:meth:`child_for`); a leaf ends the walk and yields the
    ordered candidate destinations. Unlike a resource, nothing is mutated
    during the walk: every node reads the same immutable
    :class:`~sbc.routing.RouteKey`, and ``index`` says how many steps the walk
    has already taken.
    """

    label = Attribute(
        "str or None: what the walk records in the matched path when it passes"
        " this node (e.g. 'by-domain entry 3'); None for nodes that only pass"
        " the walk on."
    )
    is_leaf = Attribute("bool: True when the walk stops at this node.")
    children = Attribute("Mapping[str, IRoutingNode]: the static children, by segment.")

    def put_child(segment: str, child: IRoutingNode) -> None:
        """Register ``child`` as the static child for ``segment``."""

    def segment(key: RouteKey) -> str | None:
        """The part of ``key`` this node consumes, looked up among the static children.

        None when the node has no static lookup (only :meth:`child_for`).
        """

    def child_for(key: RouteKey, index: int) -> IRoutingNode | None:
        """The dynamic child for ``key`` when no static child matched, or None.

        ``index`` is the number of steps the walk has taken to reach this node
        (0 at the root).
        """

    def candidates(key: RouteKey) -> Sequence[Destination]:
        """The ordered candidate destinations of a leaf (empty for other nodes)."""


class IRoutingPolicy(Interface):
    """Chooses, among the candidates the tree yielded, where a call is tried and in what order.

    A policy may reorder, narrow, or add destinations; it can never weaken the
    security rules: the router re-checks every destination it returns with
    :func:`sbc.security.may_send_out_of` and drops those that fail, and those
    that name no attached adjacency. A policy may keep state across calls
    (round-robin does) and is called from the reactor thread only.
    """

    name = Attribute("str: the routing-policy name that selects this policy.")

    def choose(
        candidates: Sequence[Destination], key: RouteKey, context: RoutingContext
    ) -> Sequence[Destination]:
        """Return the destinations to try, in order.

        ``candidates`` already passed the security rules (and are attached);
        ``context`` gives the adjacencies' configuration and their active call
        counts.
        """


class IRoutingPolicyFactory(IPlugin):
    """A Twisted plugin that makes a routing policy.

    Providers are found with ``twisted.plugin.getPlugins(IRoutingPolicyFactory,
    sbc.plugins)``: put a module defining one at module level in a directory
    ``sbc/plugins/`` on ``sys.path`` (docs/routing.md).
    """

    name = Attribute("str: the name used with 'routing-policy NAME'; unique.")
    description = Attribute("str: one line for operators (shown in help and docs).")

    def make_policy(config: SbcConfig) -> IRoutingPolicy:
        """A new policy for the configuration being loaded (most policies ignore it)."""


class ILocationService(Interface):
    """Bindings of addresses-of-record to contacts, with absolute expiry (RFC 3261 §10).

    ``aor`` is the canonical key of :func:`sbc.registrar.aor_key`; ``now`` is
    the caller's clock (the store reads none).
    """

    def lookup(aor: str, now: float) -> list[Binding]:
        """The live bindings of ``aor``, highest q first."""

    def update(aor: str, bindings: list[Binding], now: float) -> None:
        """Replace the bindings of ``aor`` (an empty list removes the AOR).

        A store shared with other nodes (:class:`sbc.cluster.SharedLocationService`)
        may refuse a change it cannot record by raising a ``SipError`` (503);
        nothing has changed then.
        """

    def purge(now: float) -> int:
        """Drop every expired binding; return how many went."""

    def expire(now: float) -> list[Binding]:
        """Remove and return every binding whose expiry is at or before ``now``."""

    def remove_connection(connection_id: int, now: float) -> list[Binding]:
        """Remove and return the bindings registered over that stream connection."""

    def next_expiry() -> float | None:
        """When :meth:`expire` may next have something to remove, or ``None``."""

    def __len__() -> int:
        """The number of bindings held."""


class IAuthenticator(Interface):
    """Decides whether a request carries valid credentials (docs/authentication.md).

    Pure: ``now`` is the caller's clock; nothing is sent. A refusal is raised
    as a :class:`sbc.errors.SipError` subclass
    (:class:`sbc.auth.AuthenticationError`) that the SIP stack answers with.
    """

    def authenticate(
        request: Request,
        *,
        realm: str,
        user: str | None,
        registrar: bool,
        now: float,
        algorithms: Sequence[str] | None = None,
    ) -> str:
        """Return the authenticated user name, or raise ``AuthenticationError``.

        Only credentials for ``realm`` are considered: ``Authorization`` when
        ``registrar`` (the SBC answers as the registrar: 401 +
        ``WWW-Authenticate``), ``Proxy-Authorization`` otherwise (407 +
        ``Proxy-Authenticate``); credentials for other realms belong to
        someone further on and are ignored. ``user`` is the AOR's user (To
        for REGISTER, From otherwise); valid credentials for another user, or
        for another of the authenticator's realms, raise a 403. ``user``
        None accepts any user of ``realm``. Malformed credentials raise a
        400. ``algorithms`` overrides the offered algorithms ("SHA-256",
        "MD5", in order) for this call.
        """

    def strip_credentials(request: Request, realms: Iterable[str]) -> None:
        """Remove the ``Authorization`` / ``Proxy-Authorization`` values for ``realms``.

        Every other value (other realms, other schemes) stays, so only
        credentials meant for someone further on are relayed.
        """
