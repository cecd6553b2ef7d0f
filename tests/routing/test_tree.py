"""The routing tree: RouteKey, nodes, walk, and trees built from call-policy-sets."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sbc.config import CallPolicySet, RoutingEntry, RoutingTable, TableKind
from sbc.errors import ConfigError
from sbc.interfaces import IRoutingNode
from sbc.routing import (
    MAX_DEPTH,
    AddressTable,
    Destination,
    DomainTable,
    Junction,
    Leaf,
    RoundRobinTable,
    RouteKey,
    RoutingNode,
    SourceAdjacencyTable,
    build_tree,
    digits_of,
    walk,
)
from sbc.routing.tree import RoundRobinLeaf
from sbc.sip.uri import parse_uri


def key(
    source: str = "access",
    domain: str = "example.com",
    user: str | None = None,
    secure: bool = False,
) -> RouteKey:
    return RouteKey(source, domain, user, secure)


def complete(number: int, dst: str, match: str | None = None) -> RoutingEntry:
    return RoutingEntry(number, match=match, dst_adjacency=dst)


def next_table(number: int, table: str, match: str | None = None) -> RoutingEntry:
    return RoutingEntry(number, match=match, action="next-table", next_table=table)


def policy_set(first: str | None, **tables: RoutingTable) -> CallPolicySet:
    return CallPolicySet(first, tables)


def names(leaf: IRoutingNode, route_key: RouteKey) -> list[str]:
    return [d.adjacency for d in leaf.candidates(route_key)]


def routed(root: IRoutingNode, route_key: RouteKey) -> list[str]:
    """The candidate names of a walk from ``root``."""
    return names(walk(root, route_key)[0], route_key)


class RouteKeyTests(SynchronousTestCase):
    def test_domain_lower_case(self) -> None:
        """The destination domain is stored lower-case."""
        self.assertEqual(
            RouteKey("a", "Example.COM", None, False).destination_domain, "example.com"
        )

    def test_frozen(self) -> None:
        """A key cannot be changed once computed."""
        k = key()
        with self.assertRaises(AttributeError):
            k.secure = True  # type: ignore[misc]

    def test_from_sip_uri(self) -> None:
        """Host lower-cased, user unescaped, sip is not secure."""
        k = RouteKey.from_uri("access", parse_uri("sip:%2B4420@Example.Net;user=phone"))
        self.assertEqual(k, RouteKey("access", "example.net", "+4420", False))

    def test_from_sips_uri(self) -> None:
        """A SIPS Request-URI makes the key secure."""
        k = RouteKey.from_uri("trunk", parse_uri("sips:alice@example.com"))
        self.assertEqual(k, RouteKey("trunk", "example.com", "alice", True))

    def test_from_uri_without_user(self) -> None:
        """No user part: destination_user is None."""
        self.assertIsNone(RouteKey.from_uri("a", parse_uri("sip:example.com")).destination_user)

    def test_from_tel_uri(self) -> None:
        """A tel URI: the number is the user part, the domain is empty."""
        k = RouteKey.from_uri("a", parse_uri("tel:+1-212-555-0100"))
        self.assertEqual(k, RouteKey("a", "", "+1-212-555-0100", False))


class DigitsTests(SynchronousTestCase):
    def test_plain_and_plus(self) -> None:
        """Digits with an optional leading + are kept as they are."""
        self.assertEqual(digits_of("4420"), "4420")
        self.assertEqual(digits_of("+4420"), "+4420")

    def test_visual_separators_and_params(self) -> None:
        """RFC 3966 visual separators are removed, user parameters ignored."""
        self.assertEqual(digits_of("+1-212.(555)-0100;isub=12"), "+12125550100")

    def test_not_a_number(self) -> None:
        """Names, a + elsewhere, empty or absent user parts are not numbers."""
        for user in ("alice", "12+3", "", "+", None, "12a"):
            self.assertIsNone(digits_of(user), user)


class NodeTests(SynchronousTestCase):
    def test_verify_providers(self) -> None:
        """Every node class provides IRoutingNode."""
        nodes: list[IRoutingNode] = [
            RoutingNode("x"),
            Leaf("x", [Destination("a")]),
            Junction("x"),
            SourceAdjacencyTable("t"),
            DomainTable("t"),
            AddressTable("t"),
            RoundRobinTable("t"),
            RoundRobinLeaf("x", []),
        ]
        for node in nodes:
            self.assertTrue(verifyObject(IRoutingNode, node))

    def test_leaf_at_root(self) -> None:
        """A leaf root ends the walk at once."""
        leaf = Leaf("only", [Destination("core")])
        self.assertEqual(walk(leaf, key()), (leaf, ("only",)))

    def test_static_child_by_segment(self) -> None:
        """The static child under node.segment(key) is taken."""
        table = SourceAdjacencyTable("t")
        a, b = Leaf("a", [Destination("x")]), Leaf("b", [Destination("y")])
        table.put_child("access", a)
        table.put_child("trunk", b)
        self.assertIs(walk(table, key(source="trunk"))[0], b)

    def test_dynamic_child_after_static(self) -> None:
        """child_for is asked when no static child matches, with the step index."""
        seen: list[int] = []
        target = Leaf("dyn")

        class Dynamic(RoutingNode):
            def child_for(self, route_key: RouteKey, index: int) -> IRoutingNode | None:
                seen.append(index)
                return target

        root = Junction("root", Dynamic("mid"))
        leaf, path = walk(root, key())
        self.assertIs(leaf, target)
        self.assertEqual(seen, [1])
        self.assertEqual(path, ("root", "mid", "dyn"))

    def test_none_labels_skipped(self) -> None:
        """Nodes without a label are not recorded in the path."""
        table = DomainTable("t")
        table.put_child("example.com", Leaf("t entry 1", [Destination("a")]))
        _, path = walk(Junction("call-policy-set 9", table), key())
        self.assertEqual(path, ("call-policy-set 9", "t entry 1"))

    def test_no_match(self) -> None:
        """A node with no child for the key: a leaf with no candidates, path says so."""
        table = DomainTable("t")
        table.put_child("other.org", Leaf("t entry 1", [Destination("a")]))
        leaf, path = walk(Junction("root", table), key())
        self.assertTrue(leaf.is_leaf)
        self.assertEqual(list(leaf.candidates(key())), [])
        self.assertEqual(path, ("root", "no match"))

    def test_loop_guard(self) -> None:
        """A hand-built cycle stops after MAX_DEPTH steps with no candidates."""
        a = Junction("a")
        b = Junction("b", a)
        a.target = b
        leaf, path = walk(a, key())
        self.assertEqual(list(leaf.candidates(key())), [])
        self.assertEqual(path[-1], "walk too deep")
        self.assertEqual(len(path), MAX_DEPTH + 2)

    def test_domain_table_case_insensitive(self) -> None:
        """Domains are registered and looked up lower-case."""
        table = DomainTable("t")
        leaf = Leaf("x")
        table.put_child("Example.COM", leaf)
        self.assertIs(walk(table, key(domain="EXAMPLE.com"))[0], leaf)


class BuildTreeTests(SynchronousTestCase):
    def test_source_adjacency_table(self) -> None:
        """match-adjacency: the entry for the adjacency the call came in on."""
        root = build_tree(
            1,
            policy_set(
                "main",
                main=RoutingTable(
                    TableKind.SRC_ADJACENCY,
                    [complete(1, "trunk", "access"), complete(2, "core", "trunk")],
                ),
            ),
        )
        leaf, path = walk(root, key(source="trunk"))
        self.assertEqual(names(leaf, key()), ["core"])
        self.assertEqual(path, ("call-policy-set 1", "main entry 2"))
        leaf, path = walk(root, key(source="nowhere"))
        self.assertEqual(names(leaf, key()), [])
        self.assertEqual(path, ("call-policy-set 1", "no match"))

    def test_source_adjacency_exact(self) -> None:
        """Adjacency names compare exactly (case matters, no prefix)."""
        root = build_tree(
            1,
            policy_set(
                "m", m=RoutingTable(TableKind.SRC_ADJACENCY, [complete(1, "trunk", "access")])
            ),
        )
        for source in ("Access", "access2", "acces"):
            self.assertEqual(routed(root, key(source=source)), [], source)

    def test_domain_table(self) -> None:
        """match-domain: case-insensitive exact domain, no suffix match."""
        root = build_tree(
            2,
            policy_set(
                "d",
                d=RoutingTable(
                    TableKind.DST_DOMAIN,
                    [complete(1, "a", "Example.com"), complete(2, "b", "other.org")],
                ),
            ),
        )
        self.assertEqual(routed(root, key(domain="EXAMPLE.COM")), ["a"])
        self.assertEqual(routed(root, key(domain="other.org")), ["b"])
        self.assertEqual(routed(root, key(domain="sub.example.com")), [])

    def test_address_table_longest_prefix(self) -> None:
        """match-address: the longest matching prefix of the user part wins."""
        root = build_tree(
            1,
            policy_set(
                "n",
                n=RoutingTable(
                    TableKind.DST_ADDRESS,
                    [
                        complete(1, "short", "44"),
                        complete(2, "long", "4420"),
                        complete(3, "intl", "+44"),
                        complete(4, "intl-london", "+4420"),
                    ],
                ),
            ),
        )

        def route(user: str | None) -> tuple[list[str], tuple[str, ...]]:
            leaf, path = walk(root, key(user=user))
            return names(leaf, key()), path

        self.assertEqual(route("442071234567"), (["long"], ("call-policy-set 1", "n entry 2")))
        self.assertEqual(route("441611234567")[0], ["short"])
        self.assertEqual(route("4420")[0], ["long"])
        self.assertEqual(route("+442071234567")[0], ["intl-london"])
        self.assertEqual(route("+4416")[0], ["intl"])
        self.assertEqual(route("+44-20-7123-4567")[0], ["intl-london"])
        self.assertEqual(route("4")[0], [])
        self.assertEqual(route("33123")[0], [])
        self.assertEqual(route("alice")[0], [])
        self.assertEqual(route(None)[0], [])

    def test_round_robin_table_rotates(self) -> None:
        """All entries are candidates; the first one moves by one on every call."""
        root = build_tree(
            1,
            policy_set(
                "lb",
                lb=RoutingTable(
                    TableKind.ROUND_ROBIN,
                    [complete(1, "a"), complete(2, "b"), complete(3, "c")],
                ),
            ),
        )
        orders = []
        paths = []
        for _ in range(4):
            leaf, path = walk(root, key())
            orders.append(names(leaf, key()))
            paths.append(path)
        self.assertEqual(
            orders, [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
        )
        self.assertEqual(paths[1], ("call-policy-set 1", "lb round-robin from entry 2"))

    def test_round_robin_entries_with_next_table(self) -> None:
        """A next-table entry of a round-robin table contributes its own walk's candidates."""
        root = build_tree(
            1,
            policy_set(
                "lb",
                lb=RoutingTable(
                    TableKind.ROUND_ROBIN,
                    [complete(1, "a"), next_table(2, "dom"), complete(3, "a")],
                ),
                dom=RoutingTable(TableKind.DST_DOMAIN, [complete(1, "b", "example.com")]),
            ),
        )
        self.assertEqual(routed(root, key()), ["a", "b"])
        self.assertEqual(routed(root, key()), ["b", "a"])
        self.assertEqual(routed(root, key(domain="x.org")), ["a"])

    def test_next_table_chain_and_path(self) -> None:
        """action next-table continues in the named table; the path lists every entry."""
        root = build_tree(
            1,
            policy_set(
                "by-source",
                **{
                    "by-source": RoutingTable(
                        TableKind.SRC_ADJACENCY, [next_table(1, "by-domain", "access")]
                    ),
                    "by-domain": RoutingTable(
                        TableKind.DST_DOMAIN,
                        [
                            complete(1, "x", "other.org"),
                            complete(2, "y", "more.org"),
                            next_table(3, "by-number", "example.com"),
                        ],
                    ),
                    "by-number": RoutingTable(TableKind.DST_ADDRESS, [complete(1, "pstn", "1")]),
                },
            ),
        )
        leaf, path = walk(root, key(user="1555"))
        self.assertEqual(names(leaf, key()), ["pstn"])
        self.assertEqual(
            path,
            ("call-policy-set 1", "by-source entry 1", "by-domain entry 3", "by-number entry 1"),
        )
        _, path = walk(root, key(user="2555"))
        self.assertEqual(
            path, ("call-policy-set 1", "by-source entry 1", "by-domain entry 3", "no match")
        )

    def test_shared_table(self) -> None:
        """Two entries may lead to the same table (a DAG, not a loop)."""
        root = build_tree(
            1,
            policy_set(
                "s",
                s=RoutingTable(
                    TableKind.SRC_ADJACENCY,
                    [next_table(1, "d", "access"), next_table(2, "d", "trunk")],
                ),
                d=RoutingTable(TableKind.DST_DOMAIN, [complete(1, "core", "example.com")]),
            ),
        )
        for source in ("access", "trunk"):
            self.assertEqual(routed(root, key(source=source)), ["core"])

    def test_duplicate_match_lowest_entry_wins(self) -> None:
        """Two entries with one match: the lower entry number is the one used."""
        root = build_tree(
            1,
            policy_set(
                "d",
                d=RoutingTable(
                    TableKind.DST_DOMAIN,
                    [complete(7, "late", "EXAMPLE.com"), complete(3, "early", "example.com")],
                ),
            ),
        )
        leaf, path = walk(root, key())
        self.assertEqual((names(leaf, key()), path[-1]), (["early"], "d entry 3"))

    def test_unreachable_tables_ignored(self) -> None:
        """A table no walk can reach is not checked (validate reports it separately)."""
        build_tree(
            1,
            policy_set(
                "a",
                a=RoutingTable(TableKind.ROUND_ROBIN, [complete(1, "x")]),
                b=RoutingTable(TableKind.ROUND_ROBIN, [next_table(1, "missing")]),
            ),
        )


class BuildTreeErrorTests(SynchronousTestCase):
    def assert_config_error(self, cps: CallPolicySet, fragment: str) -> ConfigError:
        error = self.assertRaises(ConfigError, build_tree, 4, cps, "sbc.conf")
        self.assertEqual(error.path, "sbc.conf")
        self.assertIn(fragment, error.message)
        return error

    def test_no_first_table(self) -> None:
        """A set without first-call-routing-table cannot be walked."""
        self.assert_config_error(policy_set(None), "no first-call-routing-table")

    def test_unknown_first_table(self) -> None:
        """The first table must exist."""
        self.assert_config_error(policy_set("nope"), "call-policy-set 4 has no table 'nope'")

    def test_unknown_next_table(self) -> None:
        """A next-table naming no table of the set, with the entry's line."""
        entry = RoutingEntry(
            2, action="next-table", next_table="gone", line=30, setting_lines={"action": 33}
        )
        error = self.assert_config_error(
            policy_set("a", a=RoutingTable(TableKind.ROUND_ROBIN, [entry])),
            "entry 2 of table 'a' names unknown table 'gone'",
        )
        self.assertEqual(error.line, 33)

    def test_loop(self) -> None:
        """A next-table loop reachable from the first table is refused."""
        self.assert_config_error(
            policy_set(
                "a",
                a=RoutingTable(TableKind.ROUND_ROBIN, [next_table(1, "b")]),
                b=RoutingTable(TableKind.DST_DOMAIN, [next_table(1, "a", "example.com")]),
            ),
            "next-table loop in call-policy-set 4: a -> b -> a",
        )

    def test_self_loop(self) -> None:
        """A table that continues in itself is a loop too."""
        self.assert_config_error(
            policy_set("a", a=RoutingTable(TableKind.ROUND_ROBIN, [next_table(1, "a")])),
            "a -> a",
        )

    def test_complete_without_destination(self) -> None:
        """action complete needs a dst-adjacency."""
        self.assert_config_error(
            policy_set("a", a=RoutingTable(TableKind.ROUND_ROBIN, [RoutingEntry(1)])),
            "action complete but no dst-adjacency",
        )

    def test_missing_match(self) -> None:
        """An entry of a matching table needs its match."""
        self.assert_config_error(
            policy_set("a", a=RoutingTable(TableKind.DST_ADDRESS, [complete(1, "x")])),
            "has no match-address",
        )
