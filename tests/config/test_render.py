"""Tests for sbc.config.render: canonical text and parse(render(m)) == m."""

from __future__ import annotations

import ipaddress
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sbc.config import (
    DEFAULT_REDIS_PORT,
    LIMIT_SETTINGS,
    Action,
    AdjacencyConfig,
    Authentication,
    CallPolicySet,
    ClientCertificate,
    DigestAlgorithm,
    DnsServer,
    Limits,
    RoutingEntry,
    RoutingTable,
    SbcConfig,
    Security,
    StoreUrl,
    TableKind,
    Transport,
    parse_config,
    render_config,
)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,12}", fullmatch=True)
labels = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,8}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "test"]))
hosts = st.one_of(hostnames, st.ip_addresses().map(str))
ports = st.integers(1, 65535)
securities = st.sampled_from(Security)


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    address = draw(st.ip_addresses())
    length = draw(st.integers(0, address.max_prefixlen))
    return ipaddress.ip_network(f"{address}/{length}", strict=False)


@st.composite
def adjacencies(draw: st.DrawFn, name: str) -> AdjacencyConfig:
    return AdjacencyConfig(
        name=name,
        signaling_address=draw(st.ip_addresses()),
        signaling_port=draw(st.none() | ports),
        transport=draw(st.sampled_from(Transport)),
        remote_addresses=draw(st.lists(networks(), max_size=3, unique=True)),
        signaling_peer=draw(st.none() | hosts),
        signaling_peer_port=draw(st.none() | ports),
        security_inbound=draw(securities),
        security_outbound=draw(securities),
        attached=draw(st.booleans()),
        client_certificate=draw(st.sampled_from(ClientCertificate)),
        authentication=draw(st.none() | st.sampled_from(Authentication)),
        digest_algorithms=draw(
            st.none()
            | st.lists(st.sampled_from(DigestAlgorithm), min_size=1, max_size=2, unique=True)
        ),
        sip_over_tls=draw(st.booleans()),
    )


def match_values(kind: TableKind) -> st.SearchStrategy[str | None]:
    if kind is TableKind.SRC_ADJACENCY:
        return st.none() | names
    if kind is TableKind.DST_DOMAIN:
        return st.none() | hosts
    if kind is TableKind.DST_ADDRESS:
        return st.none() | st.from_regex(r"\+?[0-9]{1,12}", fullmatch=True)
    return st.none()


@st.composite
def tables(draw: st.DrawFn, table_names: list[str]) -> RoutingTable:
    kind = draw(st.sampled_from(TableKind))
    numbers = draw(st.lists(st.integers(1, 2**31 - 1), max_size=4, unique=True))
    entries = []
    for number in numbers:
        next_table = draw(st.none() | st.sampled_from(table_names))
        entries.append(
            RoutingEntry(
                number=number,
                match=draw(match_values(kind)),
                dst_adjacency=draw(st.none() | names),
                action=Action.COMPLETE if next_table is None else Action.NEXT_TABLE,
                next_table=next_table,
            )
        )
    return RoutingTable(kind, tuple(entries))


@st.composite
def policy_sets(draw: st.DrawFn) -> CallPolicySet:
    table_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    return CallPolicySet(
        first_call_routing_table=draw(st.none() | names),
        tables={name: draw(tables(table_names)) for name in table_names},
    )


#: blocked-user-agent texts: printable words joined by single spaces.
user_agent_texts = st.lists(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
    min_size=1,
    max_size=3,
).map(" ".join)


@st.composite
def limits(draw: st.DrawFn) -> Limits:
    values = {
        number.attribute: draw(st.just(number.default) | st.integers(number.low, number.high))
        for setting in LIMIT_SETTINGS
        for number in setting.numbers
    }
    return Limits(**values)


stores = st.builds(
    StoreUrl,
    hosts,
    st.just(DEFAULT_REDIS_PORT) | ports,
    st.integers(0, 65535),
)
dns_servers = st.builds(DnsServer, st.ip_addresses(), st.just(53) | ports)


@st.composite
def configs(draw: st.DrawFn) -> SbcConfig:
    adjacency_names = draw(st.lists(names, max_size=4, unique=True))
    return SbcConfig(
        service_name=draw(names),
        local_domains=draw(st.lists(hosts, max_size=3, unique=True)),
        adjacencies=[draw(adjacencies(name)) for name in adjacency_names],
        call_policy_sets=draw(
            st.dictionaries(st.integers(1, 2**31 - 1), policy_sets(), max_size=2)
        ),
        active_call_policy_set=draw(st.none() | st.integers(1, 2**31 - 1)),
        routing_policy=draw(names),
        limits=draw(limits()),
        user_database=draw(st.none() | st.from_regex(r"[a-z0-9/._\-]{1,30}", fullmatch=True)),
        dns_servers=draw(st.lists(dns_servers, max_size=3, unique=True)),
        blocked_user_agents=draw(st.lists(user_agent_texts, max_size=3, unique=True)),
        store=draw(st.none() | stores),
        node=draw(st.none() | names),
    )


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(configs())
    def test_parse_render_round_trip(self, cfg: SbcConfig) -> None:
        text = render_config(cfg)
        self.assertEqual(parse_config(text), cfg, text)

    @settings(max_examples=100, deadline=None)
    @given(configs())
    def test_render_is_a_fixed_point(self, cfg: SbcConfig) -> None:
        text = render_config(cfg)
        self.assertEqual(render_config(parse_config(text)), text)

    @settings(max_examples=100, deadline=None)
    @given(configs())
    def test_flattened_render_parses_the_same(self, cfg: SbcConfig) -> None:
        flat = "\n".join(line.strip() for line in render_config(cfg).splitlines())
        self.assertEqual(parse_config(flat), cfg)


class CanonicalTextTests(SynchronousTestCase):
    def test_canonical_form(self) -> None:
        cfg = parse_config(
            textwrap.dedent(
                """\
                sbc mysbc
                sbe
                routing-policy round-robin
                active-call-policy-set 1
                adjacency sip core
                attach
                security outbound trusted-encrypted
                signaling-peer core.example.net
                signaling-peer-port 5071
                remote-address ipv6 2001:db8::/32
                transport tcp
                signaling-port 5070
                signaling-address ipv6 2001:db8::1
                local-domain example.com
                call-policy-set 1
                rtg-dst-address-table num
                entry 2
                action complete
                dst-adjacency core
                match-address 44
                entry 1
                action next-table num
                first-call-routing-table num
                """
            )
        )
        self.assertEqual(
            render_config(cfg),
            textwrap.dedent(
                """\
                sbc mysbc
                 sbe
                  local-domain example.com
                  adjacency sip core
                   signaling-address ipv6 2001:db8::1
                   signaling-port 5070
                   transport tcp
                   remote-address ipv6 2001:db8::/32
                   signaling-peer core.example.net
                   signaling-peer-port 5071
                   security inbound untrusted
                   security outbound trusted-encrypted
                   attach
                  !
                  call-policy-set 1
                   first-call-routing-table num
                   rtg-dst-address-table num
                    entry 1
                     action next-table num
                    !
                    entry 2
                     match-address 44
                     dst-adjacency core
                     action complete
                    !
                   !
                  !
                  active-call-policy-set 1
                  routing-policy round-robin
                 !
                !
                """
            ),
        )

    def test_defaults_left_out(self) -> None:
        cfg = SbcConfig("s", adjacencies=[AdjacencyConfig("a", ipaddress.ip_address("10.0.0.1"))])
        self.assertEqual(
            render_config(cfg),
            "sbc s\n sbe\n  adjacency sip a\n   signaling-address ipv4 10.0.0.1\n"
            "   security untrusted\n  !\n  routing-policy default\n !\n!\n",
        )


class LimitsRenderTests(SynchronousTestCase):
    def test_default_limits_left_out(self) -> None:
        self.assertNotIn("limits", render_config(SbcConfig("s")))

    def test_changed_limits_only(self) -> None:
        cfg = SbcConfig("s", limits=Limits(tcp_idle_timeout=60, max_message_size=4096))
        self.assertEqual(
            render_config(cfg),
            textwrap.dedent(
                """\
                sbc s
                 sbe
                  routing-policy default
                  limits
                   max-message-size 4096
                   tcp-idle-timeout 60
                  !
                 !
                !
                """
            ),
        )
        self.assertEqual(parse_config(render_config(cfg)), cfg)


class DnsServerRenderTests(SynchronousTestCase):
    def test_dns_servers_after_the_domains_port_53_left_out(self) -> None:
        cfg = SbcConfig(
            "s",
            local_domains=("lab.test",),
            dns_servers=(
                DnsServer(ipaddress.ip_address("127.0.0.1"), 5353),
                DnsServer(ipaddress.ip_address("2001:db8::53")),
            ),
        )
        text = render_config(cfg)
        self.assertEqual(
            text,
            "sbc s\n sbe\n  local-domain lab.test\n  dns-server 127.0.0.1 5353\n"
            "  dns-server 2001:db8::53\n  routing-policy default\n !\n!\n",
        )
        self.assertEqual(parse_config(text), cfg)
