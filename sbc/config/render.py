"""Render a configuration model as canonical configuration text.

The output is what ``show running-config`` prints and what a commit saves:
one space of indentation per mode level, a ``!`` line closing each block,
settings in a fixed order, defaults left out (except ``security`` and
``routing-policy``, which are always shown; the ``limits`` block appears only
when a limit differs from its default). ``parse_config(render_config(m))
== m`` for every model.
"""

from __future__ import annotations

from sbc.config.model import (
    DEFAULT_DNS_PORT,
    LIMIT_SETTINGS,
    Action,
    AdjacencyConfig,
    CallPolicySet,
    ClientCertificate,
    DnsServer,
    SbcConfig,
    Transport,
)

__all__ = ["render_config"]


def _family(version: int) -> str:
    return "ipv4" if version == 4 else "ipv6"


def _adjacency(adj: AdjacencyConfig) -> list[str]:
    lines = [f"adjacency sip {adj.name}"]
    body = []
    if adj.signaling_address is not None:
        address = adj.signaling_address
        body.append(f"signaling-address {_family(address.version)} {address}")
    if adj.signaling_port is not None:
        body.append(f"signaling-port {adj.signaling_port}")
    if adj.transport is not Transport.UDP_TCP:
        body.append(f"transport {adj.transport}")
    body.extend(f"remote-address {_family(net.version)} {net}" for net in adj.remote_addresses)
    if adj.signaling_peer is not None:
        body.append(f"signaling-peer {adj.signaling_peer}")
    if adj.signaling_peer_port is not None:
        body.append(f"signaling-peer-port {adj.signaling_peer_port}")
    if adj.security_inbound is adj.security_outbound:
        body.append(f"security {adj.security_inbound}")
    else:
        body.append(f"security inbound {adj.security_inbound}")
        body.append(f"security outbound {adj.security_outbound}")
    if adj.client_certificate is not ClientCertificate.REQUIRED:
        body.append(f"client-certificate {adj.client_certificate}")
    if adj.authentication is not None:
        body.append(f"authentication {adj.authentication}")
    if adj.digest_algorithms is not None:
        body.append("digest-algorithms " + " ".join(a.value for a in adj.digest_algorithms))
    if adj.sip_over_tls:
        body.append("sip-over-tls")
    if adj.cluster_link:
        identity = adj.cluster_identity
        body.append("cluster-link" if identity is None else f"cluster-link identity {identity}")
    if adj.attached:
        body.append("attach")
    return [*lines, *(" " + line for line in body), "!"]


def _dns_server(server: DnsServer) -> str:
    if server.port == DEFAULT_DNS_PORT:
        return f"dns-server {server.address}"
    return f"dns-server {server.address} {server.port}"


def _policy_set(number: int, cps: CallPolicySet) -> list[str]:
    out = [f"call-policy-set {number}"]
    if cps.first_call_routing_table is not None:
        out.append(f" first-call-routing-table {cps.first_call_routing_table}")
    for name, table in cps.tables.items():
        out.append(f" {table.kind} {name}")
        for entry in table.entries:
            out.append(f"  entry {entry.number}")
            if entry.match is not None and table.kind.match_command is not None:
                out.append(f"   {table.kind.match_command} {entry.match}")
            if entry.dst_adjacency is not None:
                out.append(f"   dst-adjacency {entry.dst_adjacency}")
            if entry.action is Action.NEXT_TABLE:
                out.append(f"   action next-table {entry.next_table}")
            else:
                out.append("   action complete")
            out.append("  !")
        out.append(" !")
    out.append("!")
    return out


def render_config(cfg: SbcConfig) -> str:
    """The canonical configuration text of ``cfg`` (ends with a newline)."""
    sbe: list[str] = [f"local-domain {domain}" for domain in cfg.local_domains]
    sbe.extend(_dns_server(server) for server in cfg.dns_servers)
    for adj in cfg.adjacencies:
        sbe.extend(_adjacency(adj))
    for number in sorted(cfg.call_policy_sets):
        sbe.extend(_policy_set(number, cfg.call_policy_sets[number]))
    if cfg.active_call_policy_set is not None:
        sbe.append(f"active-call-policy-set {cfg.active_call_policy_set}")
    sbe.append(f"routing-policy {cfg.routing_policy}")
    if cfg.user_database is not None:
        sbe.append(f"user-database {cfg.user_database}")
    sbe.extend(f"blocked-user-agent {text}" for text in cfg.blocked_user_agents)
    if cfg.store is not None:
        sbe.append(f"store {cfg.store}")
    if cfg.node is not None:
        sbe.append(f"node {cfg.node}")
    changed = [s for s in LIMIT_SETTINGS if not s.is_default(cfg.limits)]
    if changed:
        sbe.append("limits")
        sbe.extend(f" {s.keyword} {s.text(cfg.limits)}" for s in changed)
        sbe.append("!")
    lines = [f"sbc {cfg.service_name}", " sbe", *("  " + line for line in sbe), " !", "!"]
    return "\n".join(lines) + "\n"
