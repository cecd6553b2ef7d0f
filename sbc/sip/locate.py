"""Locating SIP servers (RFC 3263 §4), sans-I/O: which DNS queries to make and what they mean.

The input is a :class:`NextHop`: the host of the next hop (a domain or an IP
address), its port when one was given, the transports the outbound adjacency
may use (most preferred first) and the address family it sends from. The
output is a :class:`Resolution`: the destinations to try, in order, each a
transport, an IP address and a port.

The procedure (:class:`Lookup`), driven by whoever can ask DNS:

- an IP address needs no DNS: the given port, else the transport's default
  (5060, or 5061 for TLS);
- a domain with an explicit port: its A (or AAAA, for an IPv6 adjacency)
  records, with that port;
- a domain without a port: NAPTR records, keeping those whose service is one
  of the adjacency's transports (``SIP+D2U`` UDP, ``SIP+D2T`` TCP,
  ``SIPS+D2T`` TLS) in order/preference order, the first whose SRV name has
  records wins. With no usable NAPTR record, or when the URI chose its
  transport (``;transport=``, RFC 3263 §4.1), the SRV names of the
  adjacency's transports are asked directly (``_sips._tcp`` for TLS,
  ``_sip._tcp``, ``_sip._udp``), the first transport with records wins. SRV
  records are ordered by priority and, within a priority, by RFC 2782's
  weighted random choice (:func:`order_srv`, with an injected random
  generator). Every address of every SRV target is a destination, in that
  order. With no SRV records at all, the domain's own A/AAAA records are used
  with the transport's default port (RFC 3263 §4.2);
- a DNS server that fails to answer a NAPTR or SRV query (a timeout, a server
  failure; not "no such name" nor "no records") ends the lookup at once: it
  would fail the same way on the next query.

Nothing here does I/O: :meth:`Lookup.start` and :meth:`Lookup.feed` return
the :class:`Query` objects to ask (several at once may be asked in
parallel), and the caller feeds back one :class:`Answer` per query.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Generator, Iterable, Mapping, Sequence

import attrs
from typing_extensions import TypeAlias

__all__ = [
    "DEFAULT_PORTS",
    "NAPTR_SERVICES",
    "SRV_PREFIXES",
    "Answer",
    "Destination",
    "Lookup",
    "Naptr",
    "NextHop",
    "Query",
    "Resolution",
    "Srv",
    "naptr_services",
    "order_srv",
]

UDP, TCP, TLS = "UDP", "TCP", "TLS"

DEFAULT_PORTS: Mapping[str, int] = {UDP: 5060, TCP: 5060, TLS: 5061}
"""The port of a transport when neither the next hop nor DNS gives one (RFC 3261 §19.1.2)."""

NAPTR_SERVICES: Mapping[str, str] = {UDP: "SIP+D2U", TCP: "SIP+D2T", TLS: "SIPS+D2T"}
"""The NAPTR service field of each transport (RFC 3263 §4.1)."""

SRV_PREFIXES: Mapping[str, str] = {UDP: "_sip._udp", TCP: "_sip._tcp", TLS: "_sips._tcp"}
"""The SRV name prefix of each transport (RFC 3263 §4.1)."""

_SERVICE_TRANSPORTS = {service.upper(): transport for transport, service in NAPTR_SERVICES.items()}


def normalize_name(name: str) -> str:
    """A domain name as the lookups compare it: lower case, no trailing dot."""
    return name.strip().rstrip(".").lower()


@functools.lru_cache(maxsize=1024)
def _is_address(host: str) -> bool:
    """True for an IP address (IPv6 with or without brackets); remembered for repeated hosts."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@attrs.frozen
class Query:
    """One DNS question: ``name`` (normalized) and ``type`` (NAPTR, SRV, A or AAAA)."""

    name: str = attrs.field(converter=normalize_name)
    type: str


@attrs.frozen
class Naptr:
    """A NAPTR record (RFC 3403), the fields RFC 3263 uses."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@attrs.frozen
class Srv:
    """An SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


Record: TypeAlias = "Naptr | Srv | str"
"""A NAPTR or SRV record, or an address (A, AAAA) as text."""


@attrs.frozen
class Answer:
    """The answer to one :class:`Query`.

    ``records`` of the query's type (empty: the name exists but has none);
    ``ttl`` is how long they may be kept, in seconds. ``error`` says why there
    is no answer: ``nxdomain`` is true when the name does not exist at all,
    false when the server failed to answer (timeout, server failure...).
    """

    records: tuple[Record, ...] = ()
    ttl: float = 0.0
    error: str | None = None
    nxdomain: bool = False

    @property
    def failed(self) -> bool:
        """True when the server did not answer (an error other than "no such name")."""
        return self.error is not None and not self.nxdomain

    def describe(self) -> str:
        """What the answer said, for a log line: ``no such domain``, ``no records``..."""
        if self.error is not None:
            return self.error
        return "no records" if not self.records else f"{len(self.records)} records"


@attrs.frozen
class NextHop:
    """What to locate (the input of RFC 3263 §4).

    ``host`` is a domain or an IP address (without brackets); ``port`` the
    port it came with, or None. ``transports`` are the transports the
    outbound adjacency may use, most preferred first; ``family`` (4 or 6)
    the IP version it sends from (A or AAAA records). ``transport_given`` is
    true when the Request-URI chose the transport (``;transport=``): no NAPTR
    query then (RFC 3263 §4.1).
    """

    host: str
    port: int | None
    transports: tuple[str, ...]
    family: int = 4
    transport_given: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.transports or any(t not in DEFAULT_PORTS for t in self.transports):
            raise ValueError(f"bad transports {self.transports!r}")

    @property
    def numeric(self) -> bool:
        """True when ``host`` is an IP address: no DNS at all."""
        return _is_address(self.host)

    @property
    def address_type(self) -> str:
        """The address record type asked for this hop: A or AAAA."""
        return "AAAA" if self.family == 6 else "A"

    @property
    def default_destination(self) -> Destination:
        """The first transport, ``host`` and the port (given or default): no DNS involved."""
        transport = self.transports[0]
        port = self.port if self.port is not None else DEFAULT_PORTS[transport]
        return Destination(transport, self.host.strip("[]"), port, self.host)


@attrs.frozen
class Destination:
    """One place to send to: transport, IP address, port; ``name`` is the host it came from
    (an SRV target, or the next hop's own domain)."""

    transport: str
    address: str
    port: int
    name: str


@attrs.frozen
class Resolution:
    """The destinations of ``hop`` in the order to try them, or why there are none.

    ``queries`` is how many DNS queries the lookup sent (0: no DNS, or every
    answer came from a cache); the edge fills it in.
    """

    hop: NextHop
    destinations: tuple[Destination, ...] = ()
    error: str | None = None
    queries: int = 0

    @property
    def failed(self) -> bool:
        """True when there is nothing to try."""
        return not self.destinations


def naptr_services(records: Iterable[Record], transports: Sequence[str]) -> list[tuple[str, str]]:
    """The (transport, SRV name) of the usable NAPTR records, in the order to try them.

    Usable: flag ``s`` (the replacement is an SRV name) and a service that is
    one of ``transports`` (RFC 3263 §4.1); ordered by order, then preference.
    """
    usable = []
    for record in records:
        if not isinstance(record, Naptr) or record.flags.lower() != "s":
            continue
        transport = _SERVICE_TRANSPORTS.get(record.service.upper())
        if transport is None or transport not in transports:
            continue
        replacement = normalize_name(record.replacement)
        if replacement:
            usable.append((record.order, record.preference, transport, replacement))
    usable.sort(key=lambda item: (item[0], item[1]))
    seen: set[tuple[str, str]] = set()
    out = []
    for _, _, transport, name in usable:
        if (transport, name) not in seen:
            seen.add((transport, name))
            out.append((transport, name))
    return out


def order_srv(records: Iterable[Record], rng: random.Random) -> list[Srv]:
    """SRV records in the order to try them (RFC 2782).

    Lowest priority first; within one priority, repeatedly a weighted random
    choice among those left: records of weight 0 are put first and a random
    number in ``[0, sum of weights]`` picks the first record whose running
    sum of weights reaches it, so weight 0 is chosen only rarely when others
    have weight. A target ``.`` ("the service is decidedly not available")
    is left out.
    """
    usable = [
        r for r in records if isinstance(r, Srv) and normalize_name(r.target) not in ("", ".")
    ]
    ordered: list[Srv] = []
    for priority in sorted({r.priority for r in usable}):
        group = [r for r in usable if r.priority == priority]
        group.sort(key=lambda r: r.weight != 0)  # stable: weight 0 first, else as given
        while group:
            ordered.append(group.pop(_weighted_choice(group, rng)))
    return ordered


def _weighted_choice(group: Sequence[Srv], rng: random.Random) -> int:
    """The index RFC 2782's selection picks in ``group`` (weight 0 records first)."""
    pick = rng.randint(0, sum(r.weight for r in group))
    running = 0
    for index, record in enumerate(group):
        running += record.weight
        if running >= pick:
            return index
    return len(group) - 1  # not reached: the last running sum is the total


_Steps: TypeAlias = Generator[tuple[Query, ...], Mapping[Query, Answer], Resolution]


class Lookup:
    """The RFC 3263 procedure for one :class:`NextHop` (see the module docstring).

    ``start()`` returns the first queries; each ``feed(answers)`` (one
    :class:`Answer` for every query asked last) returns the next ones, or an
    empty tuple once :attr:`result` is set. ``rng`` orders SRV records of equal
    priority (:func:`order_srv`).
    """

    def __init__(self, hop: NextHop, rng: random.Random) -> None:
        self.hop = hop
        self.result: Resolution | None = None
        self._steps = _procedure(hop, rng)
        self._asked: tuple[Query, ...] = ()

    def start(self) -> tuple[Query, ...]:
        """The first queries to ask (empty when no DNS is needed: :attr:`result` is set)."""
        return self._advance(None)

    def feed(self, answers: Mapping[Query, Answer]) -> tuple[Query, ...]:
        """Answers to the queries asked last; returns the next ones (empty when done)."""
        missing = [q for q in self._asked if q not in answers]
        if missing:
            raise ValueError(f"no answer for {missing}")
        return self._advance(answers)

    def _advance(self, answers: Mapping[Query, Answer] | None) -> tuple[Query, ...]:
        if self.result is not None:
            return ()
        try:
            if answers is None:
                queries = next(self._steps)
            else:
                queries = self._steps.send(answers)
        except StopIteration as stop:
            self.result = stop.value
            self._asked = ()
            return ()
        self._asked = queries
        return queries


def _procedure(hop: NextHop, rng: random.Random) -> _Steps:
    if hop.numeric:
        return Resolution(hop, (hop.default_destination,))
    host = normalize_name(hop.host)
    first = hop.transports[0]
    if hop.port is not None:
        return (yield from _addresses(hop, [(first, host, hop.port)]))
    found: tuple[str, list[Srv], str] | None = None  # transport, records, SRV name
    services: list[tuple[str, str]] = []
    if not hop.transport_given:
        naptr = Query(host, "NAPTR")
        answer = (yield (naptr,))[naptr]
        if answer.failed:
            return _failure(hop, naptr, answer)
        services = naptr_services(answer.records, hop.transports)
    if services:
        for transport, name in services:
            query = Query(name, "SRV")
            answer = (yield (query,))[query]
            if answer.failed:
                return _failure(hop, query, answer)
            records = [r for r in answer.records if isinstance(r, Srv)]
            if records:
                found = (transport, records, name)
                break
    else:
        queries = tuple(Query(f"{SRV_PREFIXES[t]}.{host}", "SRV") for t in hop.transports)
        answers = yield queries
        for transport, query in zip(hop.transports, queries):
            records = [r for r in answers[query].records if isinstance(r, Srv)]
            if records:
                found = (transport, records, query.name)
                break
        if found is None:
            for query in queries:
                if answers[query].failed:
                    return _failure(hop, query, answers[query])
    if found is None:  # RFC 3263 §4.2: no SRV, the domain's own addresses
        return (yield from _addresses(hop, [(first, host, DEFAULT_PORTS[first])]))
    transport, records, name = found
    ordered = order_srv(records, rng)
    if not ordered:
        return Resolution(hop, (), f"{name} SRV: the service is not available (target '.')")
    targets = [(transport, normalize_name(r.target), r.port) for r in ordered]
    return (yield from _addresses(hop, targets))


def _failure(hop: NextHop, query: Query, answer: Answer) -> Resolution:
    return Resolution(hop, (), f"{query.name} {query.type}: {answer.describe()}")


def _addresses(
    hop: NextHop, targets: list[tuple[str, str, int]]
) -> Generator[tuple[Query, ...], Mapping[Query, Answer], Resolution]:
    """The destinations of ``targets`` (transport, host, port), in order, by A/AAAA lookups."""
    kind = hop.address_type
    queries = tuple(dict.fromkeys(Query(n, kind) for _, n, _ in targets if not _is_address(n)))
    answers: Mapping[Query, Answer] = (yield queries) if queries else {}
    destinations: dict[tuple[str, str, int], Destination] = {}
    problems = []
    for transport, name, port in targets:
        if _is_address(name):
            addresses: tuple[Record, ...] = (name.strip("[]"),)
        else:
            query = Query(name, kind)
            answer = answers[query]
            addresses = answer.records
            if not addresses:
                problems.append(f"{query.name} {kind}: {answer.describe()}")
        for address in addresses:
            if isinstance(address, str):
                destinations.setdefault(
                    (transport, address, port), Destination(transport, address, port, name)
                )
    if destinations:
        return Resolution(hop, tuple(destinations.values()))
    return Resolution(hop, (), "; ".join(dict.fromkeys(problems)) or "no address")
