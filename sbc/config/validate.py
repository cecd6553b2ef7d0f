"""Whole-configuration checks, run before a configuration is used.

:func:`sbc.config.parse_config` checks the language and each block on its
own; :func:`validate` checks what only the whole configuration can tell:
references between blocks, adjacencies that could not share a listener, TLS
prerequisites and names that must be known to the running program.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from sbc.config.model import (
    Action,
    AdjacencyConfig,
    Authentication,
    CallPolicySet,
    ClientCertificate,
    SbcConfig,
    Transport,
)
from sbc.errors import ConfigError

__all__ = [
    "DEFAULT_ROUTING_POLICIES",
    "SECURITY_CHANGE_MESSAGE",
    "find_problems",
    "security_changes_while_attached",
    "validate",
]

DEFAULT_ROUTING_POLICIES: tuple[str, ...] = ("default", "round-robin", "least-calls")
"""Routing policies shipped with sbc (the stock IRoutingPolicy providers)."""

SECURITY_CHANGE_MESSAGE = "% Security policy cannot be changed while adjacency {name} is attached"
"""The line the CLI prints, once per name from :func:`security_changes_while_attached`."""

_Problem = tuple[int, str]


def _line(lines: Mapping[str, int], *keys: str, default: int) -> int:
    for key in keys:
        value = lines.get(key)
        if value:
            return value
    return default


def _check_adjacencies(cfg: SbcConfig, certificate_configured: bool) -> Iterator[_Problem]:
    seen: dict[str, AdjacencyConfig] = {}
    for adj in cfg.adjacencies:
        if adj.name in seen:
            yield adj.line, f"duplicate adjacency '{adj.name}'"
        seen[adj.name] = adj
        encrypted = adj.security_inbound.encrypted or adj.security_outbound.encrypted
        security_line = _line(
            adj.setting_lines,
            "security inbound" if adj.security_inbound.encrypted else "security outbound",
            default=adj.line,
        )
        # Inbound trusted-encrypted with a plain outbound side is fine: the
        # adjacency listens on TLS and sends over its transport (docs/configuration.md).
        if adj.security_outbound.encrypted and adj.transport is Transport.UDP:
            yield (
                _line(adj.setting_lines, "transport", default=adj.line),
                f"adjacency '{adj.name}' is trusted-encrypted but uses transport udp: "
                "TLS runs over TCP only (use transport tcp, or leave transport out)",
            )
        if encrypted and not certificate_configured:
            yield (
                security_line,
                f"adjacency '{adj.name}' is trusted-encrypted but no certificate is "
                "configured (start sbc with --certificate, --private-key and --ca-certificates)",
            )
        yield from _check_access(cfg, adj)
        address = adj.signaling_address
        for net in adj.remote_addresses:
            if address is not None and net.version != address.version:
                yield (
                    _line(adj.setting_lines, f"remote-address {net}", default=adj.line),
                    f"adjacency '{adj.name}': remote-address {net} is IPv{net.version} but "
                    f"the signaling-address is IPv{address.version}",
                )


def _check_access(cfg: SbcConfig, adj: AdjacencyConfig) -> Iterator[_Problem]:
    """The phone settings: client certificates, authentication, sip-over-tls."""
    lines = adj.setting_lines
    if adj.client_certificate is not ClientCertificate.REQUIRED and not adj.listens_tls:
        yield (
            _line(lines, "client-certificate", default=adj.line),
            f"adjacency '{adj.name}': client-certificate {adj.client_certificate} applies to "
            "an inbound trusted-encrypted (TLS) adjacency only",
        )
    if adj.sip_over_tls and not (adj.listens_tls and adj.sends_tls):
        yield (
            _line(lines, "sip-over-tls", default=adj.line),
            f"adjacency '{adj.name}': sip-over-tls needs security trusted-encrypted on both "
            "the inbound and the outbound side",
        )
    if adj.digest_algorithms is not None and adj.authentication is not Authentication.DIGEST:
        yield (
            _line(lines, "digest-algorithms", default=adj.line),
            f"adjacency '{adj.name}': digest-algorithms needs authentication digest",
        )
    if adj.authentication is Authentication.DIGEST and cfg.user_database is None:
        yield (
            _line(lines, "authentication", default=adj.line),
            f"adjacency '{adj.name}': authentication digest needs a user-database under sbe",
        )


def _check_cluster(cfg: SbcConfig, shared_store: bool = False) -> Iterator[_Problem]:
    """The cluster link (``cluster-link``, docs/scaling.md): one, trusted, with a store.

    ``shared_store``: worker processes share a store without a ``store``
    line (the supervisor's), which the link's workers find each other in.
    """
    links = [adj for adj in cfg.adjacencies if adj.cluster_link]
    for later in links[1:]:
        yield (
            _line(later.setting_lines, "cluster-link", default=later.line),
            f"adjacencies '{links[0].name}' and '{later.name}' are both cluster-links: "
            "one adjacency links the nodes",
        )
    for adj in links:
        lines = adj.setting_lines
        where = _line(lines, "cluster-link", default=adj.line)
        what = f"adjacency '{adj.name}' is a cluster-link"
        if cfg.store is None and not shared_store:
            yield (
                where,
                (
                    f"{what} but no store is configured (and no --workers): "
                    "the nodes find each other there"
                ),
            )
        if adj.security_inbound is not adj.security_outbound or not adj.security_inbound.trusted:
            yield (
                _line(lines, "security inbound", "security outbound", default=where),
                f"{what}: its security must be trusted-encrypted (mutual TLS) or "
                "trusted-unencrypted (a private link), the same on both sides",
            )
        elif adj.security_inbound.encrypted and adj.cluster_identity is None:
            yield (
                where,
                f"{what} over TLS: name the identity every node's certificate carries "
                "(cluster-link identity NAME)",
            )
        elif not adj.security_inbound.encrypted and adj.cluster_identity is not None:
            yield where, f"{what}: identity applies to a trusted-encrypted cluster-link only"
        if shared_store and not adj.security_inbound.encrypted and not adj.transport.tcp:
            yield (
                _line(lines, "transport", default=where),
                f"{what}: with --workers it must carry TCP (transport tcp or udp-tcp) or "
                "TLS: each worker process takes calls on a TCP port of its own",
            )
        for keyword, present in (
            ("signaling-peer", adj.signaling_peer is not None),
            ("signaling-peer-port", adj.signaling_peer_port is not None),
            ("client-certificate", adj.client_certificate is not ClientCertificate.REQUIRED),
            ("authentication", adj.authentication is not None),
            ("sip-over-tls", adj.sip_over_tls),
        ):
            if present:
                yield (
                    _line(lines, keyword, default=where),
                    f"{what}: {keyword} does not apply to it (calls go to the node that holds "
                    "the phone, every node's certificate is required and checked, and the "
                    "caller's own adjacency decides authentication)",
                )
        address = adj.signaling_address
        for other in cfg.adjacencies:
            if other is adj or address is None or other.signaling_address != address:
                continue
            if other.port == adj.port:
                yield (
                    where,
                    f"{what}: it cannot share {address}:{adj.port} with adjacency "
                    f"'{other.name}'; give it a signaling-port of its own",
                )


def _check_listeners(cfg: SbcConfig) -> Iterator[_Problem]:
    by_listener: dict[tuple[str, int], list[AdjacencyConfig]] = {}
    for adj in cfg.adjacencies:
        if adj.signaling_address is not None:
            by_listener.setdefault((str(adj.signaling_address), adj.port), []).append(adj)
    for (address, port), group in by_listener.items():
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        for i, later in enumerate(group):
            for earlier in group[:i]:
                if earlier.listens_tls != later.listens_tls:
                    tls, plain = (earlier, later) if earlier.listens_tls else (later, earlier)
                    yield (
                        later.line,
                        f"adjacencies '{earlier.name}' and '{later.name}' cannot share "
                        f"{where}: '{tls.name}' is trusted-encrypted (TLS) and "
                        f"'{plain.name}' is not; give one of them another signaling-port",
                    )
                elif set(earlier.remote_addresses) == set(later.remote_addresses):
                    remotes = (
                        " ".join(str(n) for n in earlier.remote_addresses)
                        if earlier.remote_addresses
                        else "any address"
                    )
                    yield (
                        later.line,
                        f"adjacencies '{earlier.name}' and '{later.name}' share {where} "
                        f"with the same remote-address set ({remotes}): inbound messages "
                        "could not be told apart",
                    )


def _check_policy_set(cfg: SbcConfig, number: int, cps: CallPolicySet) -> Iterator[_Problem]:
    adjacencies = {adj.name for adj in cfg.adjacencies}
    links = {adj.name for adj in cfg.adjacencies if adj.cluster_link}
    first = cps.first_call_routing_table
    if first is None:
        yield cps.line, f"call-policy-set {number} has no first-call-routing-table"
    elif first not in cps.tables:
        yield (
            _line(cps.setting_lines, "first-call-routing-table", default=cps.line),
            f"first-call-routing-table '{first}' is not a table of call-policy-set {number}",
        )
    for name, table in cps.tables.items():
        for entry in table.entries:
            what = f"entry {entry.number} of table '{name}'"
            lines = entry.setting_lines
            keyword = table.kind.match_command
            if keyword is not None and entry.match is None:
                yield entry.line, f"{what} has no {keyword}"
            if (
                keyword == "match-adjacency"
                and entry.match is not None
                and entry.match not in adjacencies
            ):
                yield (
                    _line(lines, "match", default=entry.line),
                    f"{what} names unknown adjacency '{entry.match}'",
                )
            if entry.dst_adjacency is not None and entry.dst_adjacency not in adjacencies:
                yield (
                    _line(lines, "dst-adjacency", default=entry.line),
                    f"{what} names unknown adjacency '{entry.dst_adjacency}'",
                )
            elif entry.dst_adjacency in links:
                yield (
                    _line(lines, "dst-adjacency", default=entry.line),
                    f"{what} sends calls to cluster-link '{entry.dst_adjacency}': it carries "
                    "only calls for the phones another node holds",
                )
            if entry.action is Action.COMPLETE and entry.dst_adjacency is None:
                yield (
                    _line(lines, "action", default=entry.line),
                    f"{what} has action complete but no dst-adjacency",
                )
            if entry.next_table is not None and entry.next_table not in cps.tables:
                yield (
                    _line(lines, "action", default=entry.line),
                    f"{what} names unknown table '{entry.next_table}'",
                )
    yield from _check_loops(number, cps)


def _check_loops(number: int, cps: CallPolicySet) -> Iterator[_Problem]:
    """Report each next-table cycle once, at the entry that closes it."""
    edges: dict[str, list[tuple[str, int]]] = {}
    for name, table in cps.tables.items():
        edges[name] = [
            (e.next_table, _line(e.setting_lines, "action", default=e.line))
            for e in table.entries
            if e.next_table is not None and e.next_table in cps.tables
        ]
    grey: set[str] = set()
    black: set[str] = set()
    for start in cps.tables:
        if start in black:
            continue
        path = [start]
        grey.add(start)
        stack = [iter(edges[start])]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                finished = path.pop()
                grey.discard(finished)
                black.add(finished)
                continue
            target, line = step
            if target in grey:
                cycle = [*path[path.index(target) :], target]
                yield (
                    line,
                    f"next-table loop in call-policy-set {number}: " + " -> ".join(cycle),
                )
            elif target not in black:
                path.append(target)
                grey.add(target)
                stack.append(iter(edges[target]))


def _check_top(cfg: SbcConfig, routing_policies: Collection[str]) -> Iterator[_Problem]:
    active = cfg.active_call_policy_set
    if active is not None and active not in cfg.call_policy_sets:
        yield (
            _line(cfg.setting_lines, "active-call-policy-set", default=cfg.line),
            f"active-call-policy-set {active}: no call-policy-set {active} is configured",
        )
    if cfg.routing_policy not in routing_policies:
        known = ", ".join(sorted(routing_policies))
        yield (
            _line(cfg.setting_lines, "routing-policy", default=cfg.line),
            f"unknown routing-policy '{cfg.routing_policy}' (known: {known})",
        )


def _check_dns_servers(cfg: SbcConfig) -> Iterator[_Problem]:
    """A ``dns-server`` must not be one of the SBC's own UDP listeners (it would ask itself)."""
    for server in cfg.dns_servers:
        for adj in cfg.adjacencies:
            if (
                adj.attached
                and adj.signaling_address == server.address
                and adj.port == server.port
                and adj.transport.udp
                and not adj.listens_tls
            ):
                yield (
                    _line(
                        cfg.setting_lines,
                        f"dns-server {server.address} {server.port}",
                        default=cfg.line,
                    ),
                    f"dns-server {server.address} {server.port} is the SIP listener of "
                    f"adjacency '{adj.name}': the SBC would send its DNS queries to itself",
                )


def find_problems(
    cfg: SbcConfig,
    *,
    certificate_configured: bool,
    routing_policies: Collection[str] = DEFAULT_ROUTING_POLICIES,
    shared_store: bool = False,
) -> list[ConfigError]:
    """Every problem :func:`validate` would report, ordered by line (line 0 last).

    ``shared_store``: the SBC runs worker processes, which share a store even
    without a ``store`` line.
    """
    problems: list[_Problem] = [
        *_check_adjacencies(cfg, certificate_configured),
        *_check_listeners(cfg),
        *_check_cluster(cfg, shared_store),
        *(
            problem
            for number, cps in sorted(cfg.call_policy_sets.items())
            for problem in _check_policy_set(cfg, number, cps)
        ),
        *_check_top(cfg, routing_policies),
        *_check_dns_servers(cfg),
    ]
    unique = dict.fromkeys(problems)
    ordered = sorted(unique, key=lambda p: (p[0] == 0, p[0]))
    return [ConfigError(cfg.source, line, message) for line, message in ordered]


def validate(
    cfg: SbcConfig,
    *,
    certificate_configured: bool,
    routing_policies: Collection[str] = DEFAULT_ROUTING_POLICIES,
    shared_store: bool = False,
) -> None:
    """Check ``cfg`` as a whole; raise ConfigError for the first problem (by line).

    ``certificate_configured`` says whether the SBC has a certificate and key
    (needed by trusted-encrypted adjacencies); ``routing_policies`` are the
    routing-policy names the running program knows.
    """
    problems = find_problems(
        cfg,
        certificate_configured=certificate_configured,
        routing_policies=routing_policies,
        shared_store=shared_store,
    )
    if problems:
        raise problems[0]


def security_changes_while_attached(running: SbcConfig, candidate: SbcConfig) -> list[str]:
    """Names of adjacencies whose security a commit of ``candidate`` would change while attached.

    An adjacency counts when it is attached in ``running`` and its inbound
    or outbound security differs in ``candidate``, even when the same
    commit detaches it (the seed: the field "can only be changed when the
    adjacency is detached": detach it with one commit, change it with the
    next). Names are in candidate order. The CLI refuses such a commit
    whole, printing :data:`SECURITY_CHANGE_MESSAGE` for each name.
    """
    names = []
    for new in candidate.adjacencies:
        old = running.get_adjacency(new.name)
        if old is None or not old.attached:
            continue
        if (old.security_inbound, old.security_outbound) != (
            new.security_inbound,
            new.security_outbound,
        ):
            names.append(new.name)
    return names
