"""The routing tree: nodes, the walk, and the tree built from a call-policy-set.

The shape is that of ``twisted.web.resource``: a node has static children
(:meth:`RoutingNode.put_child`) and a dynamic :meth:`RoutingNode.child_for`;
:attr:`RoutingNode.is_leaf` stops the walk; the walk is the free function
:func:`walk`. The request is never touched: the :class:`RouteKey` is computed
once per request and every node reads the field it consumes.

A call-policy-set becomes this tree (:func:`build_tree`)::

    call-policy-set 1          Junction -> the first-call-routing-table
      table by-source          SourceAdjacencyTable: static children by adjacency name
        by-source entry 1      Junction (action next-table by-domain) -> table by-domain
          table by-domain      DomainTable: static children by lower-case domain
            by-domain entry 3  Leaf (action complete): candidate dst-adjacency

Tables only pass the walk on (their label is None), so the matched path reads
``("call-policy-set 1", "by-source entry 1", "by-domain entry 3")``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from zope.interface import implementer

from sbc.config import Action, CallPolicySet, RoutingEntry, RoutingTable, TableKind
from sbc.errors import ConfigError
from sbc.interfaces import IRoutingNode
from sbc.routing.values import Destination, RouteKey

__all__ = [
    "MAX_DEPTH",
    "AddressTable",
    "Destination",
    "DomainTable",
    "Junction",
    "Leaf",
    "RoundRobinTable",
    "RouteKey",
    "RoutingNode",
    "SourceAdjacencyTable",
    "TableNode",
    "build_tree",
    "digits_of",
    "walk",
]

MAX_DEPTH = 64
"""A walk longer than this many steps stops with no candidates (a loop in a hand-built tree)."""


_VISUAL_SEPARATORS = re.compile(r"[-.()]")
_DIGITS = re.compile(r"\+?[0-9]+")


def digits_of(user: str | None) -> str | None:
    """The dialled digits of a user part, for ``match-address``; None when it is no number.

    RFC 3966 visual separators (``-``, ``.``, ``(``, ``)``) are removed and
    user parameters (after ``;``) ignored; what is left must be digits with an
    optional leading ``+`` (``"+1-212-555-0100"`` gives ``"+12125550100"``).
    """
    if user is None:
        return None
    number = _VISUAL_SEPARATORS.sub("", user.split(";", 1)[0])
    return number if _DIGITS.fullmatch(number) else None


@implementer(IRoutingNode)
class RoutingNode:
    """Base node: static children by segment, no dynamic child, not a leaf."""

    is_leaf = False

    def __init__(self, label: str | None) -> None:
        self.label = label
        self.children: dict[str, IRoutingNode] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r}>"

    def put_child(self, segment: str, child: IRoutingNode) -> None:
        """Register ``child`` under ``segment`` (a later call replaces it)."""
        self.children[segment] = child

    def segment(self, key: RouteKey) -> str | None:
        """No static lookup by default."""
        return None

    def child_for(self, key: RouteKey, index: int) -> IRoutingNode | None:
        """No dynamic child by default."""
        return None

    def candidates(self, key: RouteKey) -> Sequence[Destination]:
        """Only leaves have candidates."""
        return ()


class Leaf(RoutingNode):
    """A node that ends the walk with fixed candidates (``action complete``)."""

    is_leaf = True

    def __init__(self, label: str | None, destinations: Iterable[Destination] = ()) -> None:
        super().__init__(label)
        self.destinations = tuple(destinations)

    def candidates(self, key: RouteKey) -> Sequence[Destination]:
        """The fixed destinations."""
        return self.destinations


class Junction(RoutingNode):
    """A node with one way on: the root of a call-policy-set, or an ``action next-table`` entry."""

    def __init__(self, label: str | None, target: IRoutingNode | None = None) -> None:
        super().__init__(label)
        self.target = target

    def child_for(self, key: RouteKey, index: int) -> IRoutingNode | None:
        """The table the walk continues in."""
        return self.target


class TableNode(RoutingNode):
    """A routing table: its entries are its children; the table itself is not in the path."""

    kind: TableKind

    def __init__(self, name: str) -> None:
        super().__init__(None)
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class SourceAdjacencyTable(TableNode):
    """``rtg-src-adjacency-table``: the entry whose match-adjacency is the source adjacency."""

    kind = TableKind.SRC_ADJACENCY

    def segment(self, key: RouteKey) -> str | None:
        """The adjacency the request arrived on (exact, case-sensitive like every name)."""
        return key.source_adjacency


class DomainTable(TableNode):
    """``rtg-dst-domain-table``: the entry whose match-domain is the Request-URI host."""

    kind = TableKind.DST_DOMAIN

    def put_child(self, segment: str, child: IRoutingNode) -> None:
        """Domains compare case-insensitively: children are kept under the lower-case name."""
        super().put_child(segment.lower(), child)

    def segment(self, key: RouteKey) -> str | None:
        """The Request-URI host (already lower-case in the key)."""
        return key.destination_domain.lower()


class AddressTable(TableNode):
    """``rtg-dst-address-table``: the entry with the longest match-address prefix of the user part.

    Prefixes compare as strings, so ``+44`` matches ``+4420...`` but not
    ``4420...``.
    """

    kind = TableKind.DST_ADDRESS

    def child_for(self, key: RouteKey, index: int) -> IRoutingNode | None:
        """The child registered under the longest prefix of the dialled digits."""
        number = digits_of(key.destination_user)
        if number is None:
            return None
        for length in range(len(number), 0, -1):
            child = self.children.get(number[:length])
            if child is not None:
                return child
        return None


class RoundRobinTable(TableNode):
    """``rtg-round-robin-table``: every entry is a candidate; the first one rotates per call.

    Children are registered in entry order (the segment is the entry number).
    Each walk that reaches the table yields a :class:`RoundRobinLeaf` starting
    one entry further than the previous walk.
    """

    kind = TableKind.ROUND_ROBIN

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._next_start = 0

    def child_for(self, key: RouteKey, index: int) -> IRoutingNode | None:
        """All entries, rotated by one more each call."""
        entries = list(self.children.items())
        if not entries:
            return None
        start = self._next_start % len(entries)
        self._next_start = start + 1
        rotated = entries[start:] + entries[:start]
        label = f"{self.name} round-robin from entry {rotated[0][0]}"
        return RoundRobinLeaf(label, [child for _, child in rotated])


class RoundRobinLeaf(RoutingNode):
    """The entries of a round-robin table in the order of this call.

    A complete entry gives its dst-adjacency; a next-table entry gives the
    candidates of a walk from it, so every entry contributes.
    """

    is_leaf = True

    def __init__(self, label: str, entries: Sequence[IRoutingNode]) -> None:
        super().__init__(label)
        self.entries = tuple(entries)

    def candidates(self, key: RouteKey) -> Sequence[Destination]:
        """The entries' candidates in rotated order, each destination once."""
        found: dict[Destination, None] = {}
        for entry in self.entries:
            leaf = entry if entry.is_leaf else walk(entry, key)[0]
            found.update(dict.fromkeys(leaf.candidates(key)))
        return tuple(found)


NO_MATCH_LABEL = "no match"
TOO_DEEP_LABEL = "walk too deep"


def walk(root: IRoutingNode, key: RouteKey) -> tuple[IRoutingNode, tuple[str, ...]]:
    """Walk from ``root`` to a leaf, like ``twisted.web.resource.getChildForRequest``.

    At each node the static child registered under ``node.segment(key)`` is
    taken, else ``node.child_for(key, index)``. Returns the leaf and the
    matched path (the labels of the nodes passed, root and leaf included;
    None labels are skipped). When a node has no child for the key the walk
    ends at a leaf with no candidates, labelled ``"no match"``.
    """
    node = root
    path: list[str] = []
    index = 0
    while True:
        if node.label is not None:
            path.append(node.label)
        if node.is_leaf:
            return node, tuple(path)
        if index >= MAX_DEPTH:
            return Leaf(TOO_DEEP_LABEL), (*path, TOO_DEEP_LABEL)
        segment = node.segment(key)
        child = node.children.get(segment) if segment is not None else None
        if child is None:
            child = node.child_for(key, index)
        if child is None:
            return Leaf(NO_MATCH_LABEL), (*path, NO_MATCH_LABEL)
        node = child
        index += 1


_TABLE_CLASSES: Mapping[TableKind, type[TableNode]] = {
    TableKind.SRC_ADJACENCY: SourceAdjacencyTable,
    TableKind.DST_DOMAIN: DomainTable,
    TableKind.DST_ADDRESS: AddressTable,
    TableKind.ROUND_ROBIN: RoundRobinTable,
}


def _entry_line(entry: RoutingEntry, setting: str) -> int:
    return entry.setting_lines.get(setting) or entry.line


def build_tree(number: int, policy_set: CallPolicySet, source: str = "<string>") -> RoutingNode:
    """The routing tree of ``call-policy-set number``, rooted at a :class:`Junction`.

    Only tables reachable from the first-call-routing-table are built. An
    entry whose match repeats an earlier entry's is unreachable and skipped
    (the lower entry number wins). Raises :class:`ConfigError` (naming
    ``source``) for what cannot be walked: no or an unknown first table, an
    unknown next table, a complete entry with no dst-adjacency, an entry of a
    matching table with no match, or a next-table loop.
    """
    first = policy_set.first_call_routing_table
    where = f"call-policy-set {number}"
    if first is None or first not in policy_set.tables:
        line = policy_set.setting_lines.get("first-call-routing-table") or policy_set.line
        what = "has no first-call-routing-table" if first is None else f"has no table '{first}'"
        raise ConfigError(source, line, f"{where} {what}")
    nodes: dict[str, TableNode] = {}
    junctions: list[tuple[Junction, str]] = []
    pending = [first]
    while pending:
        name = pending.pop()
        if name in nodes:
            continue
        table = policy_set.tables[name]
        nodes[name] = _build_table(name, table, where, source, junctions)
        for entry in table.entries:
            if entry.next_table is not None:
                if entry.next_table not in policy_set.tables:
                    raise ConfigError(
                        source,
                        _entry_line(entry, "action"),
                        f"entry {entry.number} of table '{name}' names unknown table "
                        f"'{entry.next_table}'",
                    )
                pending.append(entry.next_table)
    _check_loops(first, policy_set, where, source)
    for junction, target in junctions:
        junction.target = nodes[target]
    return Junction(where, nodes[first])


def _build_table(
    name: str,
    table: RoutingTable,
    where: str,
    source: str,
    junctions: list[tuple[Junction, str]],
) -> TableNode:
    node = _TABLE_CLASSES[table.kind](name)
    seen: set[str] = set()
    for entry in table.entries:
        label = f"{name} entry {entry.number}"
        child: RoutingNode
        if entry.action is Action.COMPLETE:
            if entry.dst_adjacency is None:
                raise ConfigError(
                    source,
                    _entry_line(entry, "action"),
                    f"entry {entry.number} of table '{name}' in {where} has action complete "
                    "but no dst-adjacency",
                )
            child = Leaf(label, (Destination(entry.dst_adjacency),))
        else:
            assert entry.next_table is not None  # the model guarantees it
            junction = Junction(label)
            junctions.append((junction, entry.next_table))
            child = junction
        if table.kind is TableKind.ROUND_ROBIN:
            node.put_child(str(entry.number), child)
            continue
        if entry.match is None:
            raise ConfigError(
                source,
                entry.line,
                f"entry {entry.number} of table '{name}' in {where} has no "
                f"{table.kind.match_command}",
            )
        match = entry.match.lower() if table.kind is TableKind.DST_DOMAIN else entry.match
        if match not in seen:
            seen.add(match)
            node.put_child(entry.match, child)
    return node


def _check_loops(first: str, policy_set: CallPolicySet, where: str, source: str) -> None:
    """Raise ConfigError when a next-table chain reachable from ``first`` comes back on itself."""
    on_path: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        on_path.append(name)
        for entry in policy_set.tables[name].entries:
            target = entry.next_table
            if target is None or target in done:
                continue
            if target in on_path:
                cycle = " -> ".join([*on_path[on_path.index(target) :], target])
                raise ConfigError(
                    source, _entry_line(entry, "action"), f"next-table loop in {where}: {cycle}"
                )
            visit(target)
        on_path.pop()
        done.add(name)

    visit(first)
