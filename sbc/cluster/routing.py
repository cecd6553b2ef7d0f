"""Calls for phones another node holds: through the cluster link to that node (docs/scaling.md).

:class:`ClusterRouting` is what the core asks, on both ends of the cluster
hop (:mod:`sbc.cluster.hop` is its wire format):

- on the node a call enters (B), :meth:`ClusterRouting.remote_target` turns a
  binding held by node A into a hunt target: out of B's attached cluster link,
  to the address A advertises in the store, naming the binding by its key.
  Without a cluster link, or while A advertises no address, there is none
  and the contact is skipped as before (480 when nothing else is left);
- on the node holding the phone (A), :meth:`ClusterRouting.own_targets`
  finds the binding a request from the cluster link names, among A's own
  bindings only (a node never hands a call on to a third node), and
  :meth:`ClusterRouting.advertised` is what A's heartbeat advertises.

Pure: the adjacency table and the store are handed in, time is an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from sbc.adjacencies import AdjacencyTable
from sbc.b2bua.nexthop import Target
from sbc.cluster.codec import REGISTRAR_PREFIX, RELAY_PREFIX, holder_name
from sbc.cluster.hop import (
    ClusterAddress,
    ClusterCaller,
    binding_key_of,
    cluster_user,
    not_reached,
)
from sbc.cluster.store import SharedStore
from sbc.config import AdjacencyConfig
from sbc.errors import SipError
from sbc.sip.locate import TCP, TLS, UDP
from sbc.sip.stack import Flow
from sbc.sip.uri import URI, host_text

__all__ = ["ClusterRouting", "RelayedPhone"]


class RelayedPhone(Protocol):
    """What :class:`ClusterRouting` reads of a relayed binding this node holds.

    :class:`sbc.registrar.relay.RelayedBinding` is one.
    """

    @property
    def inbound(self) -> str: ...

    @property
    def phone_contact(self) -> URI: ...

    @property
    def flow(self) -> Flow: ...

    @property
    def phone_expires_at(self) -> float: ...


class ClusterRouting:
    """The cluster link's routing decisions; see the module docstring.

    ``table`` returns the adjacency table in force, ``relayed`` this node's
    relayed bindings by token. Creating one makes ``store`` advertise this
    node's cluster link (:meth:`advertised`) with its heartbeat.

    ``own_link_port`` is given in a worker process (``--workers N``): it
    returns the process's own port beside the shared cluster-link listener
    (None while it has none), and that port is what the process advertises,
    so that calls for its phones reach it and not whichever worker the
    kernel would pick on the shared port. Without it (one process per
    node) the link's configured port is advertised.
    """

    def __init__(
        self,
        store: SharedStore,
        table: Callable[[], AdjacencyTable],
        relayed: Callable[[], Mapping[str, RelayedPhone]],
        own_link_port: Callable[[tuple[str, int]], int | None] | None = None,
    ) -> None:
        self.store = store
        self.table = table
        self.relayed = relayed
        self.own_link_port = own_link_port
        store.advertise = self.advertised

    @property
    def node(self) -> str:
        """This process's name as a holder of bindings: the node, or ``NODE/W`` for worker W."""
        return self.store.holder

    def link(self) -> AdjacencyConfig | None:
        """This node's attached cluster link, if any."""
        for adjacency in self.table().attached:
            if adjacency.cluster_link:
                return adjacency
        return None

    def advertised(self) -> ClusterAddress | None:
        """Where this process takes calls for its phones: its cluster link's address and port.

        A worker process advertises its own port beside the link's (None
        until it is open); a single process the link's configured port.
        """
        link = self.link()
        if link is None:
            return None
        address = str(link.address)
        if self.own_link_port is None:
            return ClusterAddress(address, link.port)
        own = self.own_link_port((address, link.port))
        return None if own is None else ClusterAddress(address, own)

    # -- the node a call enters ---------------------------------------------------

    def caller(self, inbound: str, trusted: bool) -> ClusterCaller:
        """What this node tells the node holding a phone about a call's caller."""
        return ClusterCaller(self.node, inbound, trusted, self.advertised())

    def remote_target(self, node: str, worker: int, key: str, scheme: str) -> Target | str:
        """The target that reaches binding ``key`` held by ``node``, or why there is none.

        ``worker`` is the holding worker process of ``node`` (0: its only
        process); the address is the one that holder advertises. ``scheme``
        is the call's (``sips`` for a secure call): the cluster Request-URI
        keeps it. The flow goes out of the cluster link to that address; over
        TLS the peer's certificate must carry the link's identity. A binding
        another worker of this node holds goes the same way: each worker
        process advertises a cluster-link port of its own.
        """
        holder = holder_name(node, worker)
        if holder == self.store.holder:
            return "held by this process, but not found here"
        sibling = node == self.store.node
        link = self.link()
        if link is None:
            if sibling:
                return (
                    "another worker of this node holds its connection; no cluster-link is attached"
                )
            return "no cluster-link is attached"
        address = self.store.peer_address(holder)
        if address is None:
            return (
                f"{holder} advertises no cluster link (its heartbeat has none, or it sent "
                "none in the last 6 s: stopped, crashed or cut off)"
            )
        if link.sends_tls:
            transport = TLS
        else:
            transport = TCP if link.transport.tcp else UDP
        uri = URI(scheme, cluster_user(key), None, host_text(address.address), address.port, ())
        flow = Flow(
            transport,
            (str(link.address), link.port),
            (address.address, address.port),
            None,
            link.cluster_identity if transport == TLS else None,
            adjacency=link.name,
        )
        return Target(link.name, uri, flow, holder=holder)

    # -- the node that holds the phone ---------------------------------------------

    def reply_flow(self, caller: ClusterCaller, arrived: Flow) -> Flow:
        """Where the in-dialog requests of a call from another node go: back to it.

        Over the connection the call arrived on while it is open, else over a
        new one to that node's cluster link (the address the call named, else
        the one its heartbeat advertises; over TLS its certificate must carry
        the link's identity), never to the source port of the closed
        connection. UDP flows are left as they are: the other node sends from
        its cluster link's own port.
        """
        address = caller.link or self.store.peer_address(caller.node)
        link = self.link()
        if address is None or link is None or arrived.transport == UDP:
            return arrived
        return Flow(
            arrived.transport,
            arrived.local,
            (address.address, address.port),
            arrived.connection_id,
            link.cluster_identity if arrived.transport == TLS else None,
            adjacency=link.name,
        )

    def own_targets(self, uri: URI, now: float) -> list[Target]:
        """The phone a request from the cluster link is for: a binding this node holds.

        Raises ``SipError(404)`` for a Request-URI that names no binding,
        and 480 when the binding is no longer here (it expired, its
        connection closed, it moved to another node); both are marked
        not reached (:func:`~sbc.cluster.hop.not_reached`), so the node that
        sent the call hunts on.
        """
        key = binding_key_of(uri.user)
        if key is None:
            raise not_reached(SipError(404, "Not Found - no binding named"))
        if key.startswith(REGISTRAR_PREFIX):
            binding = self.store.location.own_binding(key, now)
            if binding is not None:
                return [Target(binding.adjacency, binding.contact, binding.flow)]
        elif key.startswith(RELAY_PREFIX):
            relayed = self.relayed().get(key[len(RELAY_PREFIX) :])
            if relayed is not None and relayed.phone_expires_at > now:
                return [Target(relayed.inbound, relayed.phone_contact, relayed.flow)]
        raise not_reached(SipError(480, "Temporarily Unavailable"))
