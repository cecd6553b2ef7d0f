"""Tests for sbc.config.model."""

from __future__ import annotations

import ipaddress

import attrs
from twisted.trial.unittest import SynchronousTestCase

from sbc.config import (
    LIMIT_SETTINGS,
    Action,
    AdjacencyConfig,
    CallPolicySet,
    FrozenMap,
    Limits,
    RoutingEntry,
    RoutingTable,
    SbcConfig,
    Security,
    TableKind,
    Transport,
)


class SecurityTests(SynchronousTestCase):
    def test_values_and_display(self) -> None:
        self.assertEqual(
            [(s.value, s.display) for s in Security],
            [
                ("untrusted", "Untrusted"),
                ("trusted-encrypted", "Trusted-Encrypted"),
                ("trusted-unencrypted", "Trusted-Unencrypted"),
            ],
        )

    def test_flags(self) -> None:
        self.assertEqual([s.trusted for s in Security], [False, True, True])
        self.assertEqual([s.encrypted for s in Security], [False, True, False])

    def test_compares_with_config_words(self) -> None:
        self.assertEqual(Security.TRUSTED_ENCRYPTED, "trusted-encrypted")
        self.assertEqual(str(Security.UNTRUSTED), "untrusted")


class TransportTests(SynchronousTestCase):
    def test_flags(self) -> None:
        self.assertEqual(
            [(t.udp, t.tcp) for t in Transport], [(True, False), (False, True), (True, True)]
        )


class TableKindTests(SynchronousTestCase):
    def test_match_commands(self) -> None:
        self.assertEqual(
            [k.match_command for k in TableKind],
            ["match-adjacency", "match-domain", "match-address", None],
        )


class FrozenMapTests(SynchronousTestCase):
    def test_mapping(self) -> None:
        m = FrozenMap([("b", 1), ("a", 2)])
        self.assertEqual(list(m), ["b", "a"])
        self.assertEqual(m["a"], 2)
        self.assertEqual(len(m), 2)
        self.assertEqual(m, {"a": 2, "b": 1})
        self.assertEqual(m, FrozenMap({"a": 2, "b": 1}))
        self.assertEqual(hash(m), hash(FrozenMap({"a": 2, "b": 1})))
        self.assertNotEqual(m, FrozenMap({"a": 2}))
        self.assertIn("FrozenMap", repr(m))

    def test_immutable(self) -> None:
        m = FrozenMap({"a": 1})
        with self.assertRaises(TypeError):
            m["b"] = 2  # type: ignore[index]
        with self.assertRaises(AttributeError):
            m.x = 1  # type: ignore[attr-defined]


def adjacency(**kw: object) -> AdjacencyConfig:
    return AdjacencyConfig(name=kw.pop("name", "a"), signaling_address="127.0.0.1", **kw)  # type: ignore[arg-type]


class AdjacencyConfigTests(SynchronousTestCase):
    def test_converters(self) -> None:
        adj = AdjacencyConfig(
            "a",
            "::1",  # type: ignore[arg-type]
            remote_addresses=["2001:db8::/32"],  # type: ignore[arg-type]
            transport="tcp",  # type: ignore[arg-type]
            security_inbound="trusted-encrypted",  # type: ignore[arg-type]
        )
        self.assertEqual(adj.signaling_address, ipaddress.IPv6Address("::1"))
        self.assertEqual(adj.remote_addresses, (ipaddress.IPv6Network("2001:db8::/32"),))
        self.assertIs(adj.transport, Transport.TCP)
        self.assertIs(adj.security_inbound, Security.TRUSTED_ENCRYPTED)

    def test_port_defaults(self) -> None:
        self.assertEqual(adjacency().port, 5060)
        self.assertEqual(adjacency(security_inbound=Security.TRUSTED_ENCRYPTED).port, 5061)
        self.assertEqual(adjacency(security_outbound=Security.TRUSTED_ENCRYPTED).port, 5060)
        self.assertEqual(adjacency(security_inbound=Security.TRUSTED_UNENCRYPTED).port, 5060)
        self.assertEqual(
            adjacency(security_inbound=Security.TRUSTED_ENCRYPTED, signaling_port=5090).port, 5090
        )

    def test_peer_port_defaults(self) -> None:
        self.assertEqual(adjacency().peer_port, 5060)
        self.assertEqual(adjacency(security_outbound=Security.TRUSTED_ENCRYPTED).peer_port, 5061)
        self.assertEqual(adjacency(security_inbound=Security.TRUSTED_ENCRYPTED).peer_port, 5060)
        self.assertEqual(adjacency(signaling_peer_port=5071).peer_port, 5071)

    def test_displays(self) -> None:
        tls = adjacency(
            security_inbound=Security.TRUSTED_ENCRYPTED,
            security_outbound=Security.TRUSTED_ENCRYPTED,
        )
        self.assertEqual(tls.security_display, "Trusted-Encrypted")
        self.assertEqual(tls.transport_display, "TLS")
        self.assertTrue(tls.listens_tls and tls.sends_tls)
        mixed = adjacency(security_inbound=Security.TRUSTED_ENCRYPTED)
        self.assertEqual(mixed.security_display, "inbound Trusted-Encrypted, outbound Untrusted")
        self.assertEqual(
            [adjacency(transport=t).transport_display for t in Transport], ["UDP", "TCP", "UDP+TCP"]
        )

    def test_frozen(self) -> None:
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            adjacency().attached = True  # type: ignore[misc]

    def test_lines_not_part_of_equality(self) -> None:
        self.assertEqual(adjacency(line=3, setting_lines={"attach": 4}), adjacency())
        self.assertEqual(hash(adjacency(line=3)), hash(adjacency()))
        self.assertNotEqual(adjacency(attached=True), adjacency())


class RoutingTests(SynchronousTestCase):
    def test_entry_invariant(self) -> None:
        RoutingEntry(1, action=Action.NEXT_TABLE, next_table="t")
        with self.assertRaises(ValueError):
            RoutingEntry(1, action=Action.NEXT_TABLE)
        with self.assertRaises(ValueError):
            RoutingEntry(1, action=Action.COMPLETE, next_table="t")

    def test_entries_sorted_and_unique(self) -> None:
        table = RoutingTable(
            TableKind.DST_ADDRESS, (RoutingEntry(5, "1"), RoutingEntry(2, "2")), line=9
        )
        self.assertEqual([e.number for e in table.entries], [2, 5])
        self.assertEqual(table.entry(5).match, "1")
        self.assertRaises(KeyError, table.entry, 3)
        with self.assertRaises(ValueError):
            RoutingTable(TableKind.DST_ADDRESS, (RoutingEntry(1), RoutingEntry(1)))

    def test_round_robin_entries_have_no_match(self) -> None:
        with self.assertRaises(ValueError):
            RoutingTable(TableKind.ROUND_ROBIN, (RoutingEntry(1, "x"),))

    def test_kind_converter(self) -> None:
        self.assertIs(RoutingTable("rtg-dst-domain-table").kind, TableKind.DST_DOMAIN)  # type: ignore[arg-type]


class SbcConfigTests(SynchronousTestCase):
    def test_lookups(self) -> None:
        a, b = adjacency(name="a"), adjacency(name="b", signaling_port=5070)
        cps = CallPolicySet("t", {"t": RoutingTable(TableKind.ROUND_ROBIN)})
        cfg = SbcConfig(
            "s", adjacencies=[a, b], call_policy_sets={1: cps}, active_call_policy_set=1
        )
        self.assertIs(cfg.adjacency("b"), b)
        self.assertRaises(KeyError, cfg.adjacency, "c")
        self.assertIsNone(cfg.get_adjacency("c"))
        self.assertEqual(list(cfg.adjacencies_by_name), ["a", "b"])
        self.assertIs(cfg.active_policy_set, cps)
        self.assertIsNone(attrs.evolve(cfg, active_call_policy_set=2).active_policy_set)
        self.assertIsNone(attrs.evolve(cfg, active_call_policy_set=None).active_policy_set)

    def test_defaults(self) -> None:
        cfg = SbcConfig("s")
        self.assertEqual(
            (cfg.local_domains, cfg.adjacencies, cfg.call_policy_sets, cfg.active_call_policy_set),
            ((), (), {}, None),
        )
        self.assertEqual(cfg.routing_policy, "default")

    def test_hashable(self) -> None:
        cps = CallPolicySet("t", {"t": RoutingTable(TableKind.ROUND_ROBIN)})
        one = SbcConfig("s", call_policy_sets={1: cps})
        two = SbcConfig("s", call_policy_sets={1: cps}, source="x.conf", line=4)
        self.assertEqual(one, two)
        self.assertEqual(len({one, two}), 1)


class LimitsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        limits = Limits()
        self.assertEqual(limits.max_message_size, 65536)
        self.assertEqual(limits.max_connections_per_adjacency, 1024)
        self.assertEqual(limits.max_connections_per_source, 32)
        self.assertEqual(limits.tls_handshake_timeout, 10)
        self.assertEqual(limits.tcp_idle_timeout, 300)
        self.assertEqual(limits.partial_message_timeout, 30)
        self.assertEqual(limits.outbound_idle_timeout, 120)
        self.assertEqual(limits.outbound_connect_timeout, 10)
        self.assertEqual(limits.changed, {})

    def test_config_without_block_has_defaults(self) -> None:
        self.assertEqual(SbcConfig("s").limits, Limits())

    def test_settings_table_matches_fields(self) -> None:
        fields = [f.name for f in attrs.fields(Limits) if f.eq]
        self.assertEqual([n.attribute for s in LIMIT_SETTINGS for n in s.numbers], fields)
        for setting in LIMIT_SETTINGS:
            for number in setting.numbers:
                self.assertEqual(getattr(Limits(), number.attribute), number.default)
                self.assertLessEqual(number.low, number.default)
                self.assertLessEqual(number.default, number.high)

    def test_out_of_range_refused(self) -> None:
        self.assertRaises(ValueError, Limits, max_message_size=10)
        self.assertRaises(ValueError, Limits, tcp_idle_timeout=0)
        error = self.assertRaises(ValueError, Limits, source_rate_seconds=0)
        self.assertEqual(str(error), "source-rate-limit SECONDS 0 is out of range 1..3600")

    def test_two_number_setting(self) -> None:
        """source-rate-limit REQUESTS SECONDS: two attributes, one keyword, one text."""
        (setting,) = [s for s in LIMIT_SETTINGS if s.keyword == "source-rate-limit"]
        self.assertEqual(setting.syntax, "source-rate-limit REQUESTS SECONDS")
        self.assertEqual(setting.default_text, "200 10")
        limits = Limits(source_rate_seconds=5)
        self.assertEqual(setting.values(limits), (200, 5))
        self.assertEqual(setting.text(limits), "200 5")
        self.assertFalse(setting.is_default(limits))
        self.assertEqual(limits.changed, {"source-rate-limit": (200, 5)})

    def test_changed_in_canonical_order(self) -> None:
        limits = Limits(outbound_idle_timeout=5, max_connections_per_source=2)
        self.assertEqual(
            list(limits.changed.items()),
            [("max-connections-per-source", 2), ("outbound-idle-timeout", 5)],
        )

    def test_lines_not_part_of_equality(self) -> None:
        self.assertEqual(Limits(line=4, setting_lines={"tcp-idle-timeout": 5}), Limits())
