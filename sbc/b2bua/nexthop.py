"""The next hop of a request sent out of an adjacency, and the flows of its destinations.

A B-leg request goes to the adjacency's ``signaling-peer`` when it has one,
else to the host of its Request-URI (docs/routing.md). :func:`next_hop` turns
that into a :class:`~sbc.sip.locate.NextHop` for RFC 3263 (:mod:`sbc.sip.locate`):

- transports: TLS for a trusted-encrypted outbound side; otherwise those of
  the adjacency's ``transport`` (``udp-tcp``: UDP preferred, then TCP). When
  the Request-URI is the next hop and says ``;transport=`` with one of them,
  that one only (RFC 3263 §4.1);
- port: ``signaling-peer-port`` when configured, the Request-URI's port when
  it is the next hop, else none: a domain is then looked up with NAPTR and
  SRV records, an IP address gets the transport's default port.

:func:`destination_flow` is the :class:`~sbc.sip.stack.Flow` of one
destination found. For TLS its ``server_name`` (the identity the peer's
certificate must match, and the SNI) is the domain that was the *input* of
the resolution (RFC 5922 §7.3): the ``signaling-peer`` when it is a host
name, else the Request-URI's host, never a name learnt from SRV records.

:class:`Target` is one hunt candidate: an adjacency and a Request-URI, and
the flow once it is known.
"""

from __future__ import annotations

import attrs

from sbc.config import AdjacencyConfig, Transport
from sbc.identity import ip_literal
from sbc.sip.locate import TCP, TLS, UDP, Destination, NextHop
from sbc.sip.stack import Flow
from sbc.sip.uri import URI

__all__ = ["Target", "adjacency_transports", "destination_flow", "next_hop", "tls_server_name"]


@attrs.frozen
class Target:
    """One hunt candidate: an outbound adjacency and the Request-URI to use.

    ``flow`` is set for a registered contact (the flow it registered from)
    and for each destination DNS found for a target (RFC 3263); otherwise the
    hunt resolves the next hop first (a host name) or uses
    :func:`sbc.b2bua.call.outbound_flow` (an IP address). ``holder`` names
    the SBC node that holds a registered contact's flow when it is another
    node: ``adjacency`` is then the cluster link and ``uri`` names the
    binding to that node (docs/scaling.md, :mod:`sbc.cluster.hop`).
    """

    adjacency: str
    uri: URI
    flow: Flow | None = None
    holder: str | None = None


def adjacency_transports(adjacency: AdjacencyConfig) -> tuple[str, ...]:
    """The transports requests out of ``adjacency`` may use, most preferred first."""
    if adjacency.sends_tls:
        return (TLS,)
    if adjacency.transport is Transport.TCP:
        return (TCP,)
    if adjacency.transport is Transport.UDP:
        return (UDP,)
    return (UDP, TCP)


def next_hop(adjacency: AdjacencyConfig, uri: URI) -> NextHop:
    """Where a request out of ``adjacency`` to ``uri`` goes, before DNS (module docstring)."""
    transports = adjacency_transports(adjacency)
    family = adjacency.signaling_address.version if adjacency.signaling_address else 4
    peer = adjacency.signaling_peer
    if peer is not None:
        return NextHop(peer.strip("[]"), adjacency.signaling_peer_port, transports, family)
    chosen = (uri.param("transport") or "").upper()
    given = chosen in transports
    if given:
        transports = (chosen,)
    return NextHop(uri.host.strip("[]"), uri.port, transports, family, transport_given=given)


def tls_server_name(adjacency: AdjacencyConfig, uri: URI) -> str:
    """The name a TLS peer's certificate must match: the signaling peer when it is a host
    name, else the Request-URI's host (an IP address only when that is what it names)."""
    peer = adjacency.signaling_peer
    if peer is not None and ip_literal(peer) is None:
        return peer
    return uri.host.strip("[]")


def destination_flow(
    adjacency: AdjacencyConfig,
    uri: URI,
    destination: Destination,
    local: tuple[str, int] | None = None,
) -> Flow:
    """The flow of one destination of a request out of ``adjacency`` to ``uri``.

    ``local`` is the address and port it leaves from (default: the
    adjacency's; a worker process's own UDP port, see
    :meth:`~sbc.adjacencies.AdjacencyTable.local_address`).
    """
    server_name = tls_server_name(adjacency, uri) if destination.transport == TLS else None
    return Flow(
        destination.transport,
        local or (str(adjacency.address), adjacency.port),
        (destination.address, destination.port),
        None,
        server_name,
        adjacency=adjacency.name,
    )
