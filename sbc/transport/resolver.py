"""Next hops found by DNS at the edge: Twisted Names, a TTL cache, shared queries.

:class:`NextHopResolver` runs the RFC 3263 procedure of :mod:`sbc.sip.locate`
(which queries, what the answers mean) against a :class:`DnsCache`, which
asks a Twisted Names resolver (:func:`names_resolver`) only for what it does
not hold:

- each answer (one record set: a name and a type) is kept for its TTL, the
  smallest TTL of its records; a negative answer (no such domain, no
  records) and a failure (timeout, server failure) for the
  ``dns-negative-cache-time`` limit; at most ``dns-cache-entries`` answers
  are kept (expired ones go first, then the oldest);
- while a query is on its way, every other lookup of the same name and type
  waits for that one query instead of sending its own;
- nothing here blocks the reactor: Twisted Names sends UDP (TCP when an
  answer is truncated) and each query gives up after ``dns-timeout``.

:func:`names_resolver` builds the Twisted Names chain: ``/etc/hosts`` first
(for A and AAAA), then the configured ``dns-server`` list or, when there is
none, the ``nameserver`` lines of ``/etc/resolv.conf`` (read when the chain is
built: at start-up and at each commit).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.names import client, dns, hosts, resolve
from twisted.names import error as dns_error
from twisted.names.common import ResolverBase
from twisted.python.failure import Failure

from sbc.sip.locate import Answer, Lookup, Naptr, NextHop, Query, Record, Resolution, Srv

__all__ = [
    "DnsCache",
    "NextHopResolver",
    "QueryFunction",
    "names_query",
    "names_resolver",
    "query_timeouts",
    "system_dns_servers",
]

QueryFunction = Callable[[Query], "Deferred[Answer]"]
"""Ask DNS one :class:`~sbc.sip.locate.Query`; fires with its Answer, never fails."""

RESOLV_CONF = "/etc/resolv.conf"
HOSTS_FILE = "/etc/hosts"
DNS_PORT = 53

_LOOKUPS = {
    "NAPTR": "lookupNamingAuthorityPointer",
    "SRV": "lookupService",
    "A": "lookupAddress",
    "AAAA": "lookupIPV6Address",
}
_TYPES = {"NAPTR": dns.NAPTR, "SRV": dns.SRV, "A": dns.A, "AAAA": dns.AAAA}


def query_timeouts(total: float) -> tuple[float, ...]:
    """Twisted Names' retry schedule for a query that may take ``total`` seconds.

    Asked once, again after one second (UDP loss), and given up at ``total``.
    """
    if total <= 1:
        return (total,)
    return (1.0, total - 1.0)


def system_dns_servers(path: str = RESOLV_CONF) -> list[tuple[str, int]]:
    """The ``nameserver`` addresses of ``path``; 127.0.0.1 when it names none (resolv.conf(5))."""
    servers = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append((words[1].split("%")[0], DNS_PORT))
    return servers or [("127.0.0.1", DNS_PORT)]


class _QuietReactor:
    """The reactor as Twisted Names' client sees it: its sockets say nothing when they start.

    The client opens one UDP socket per query (a random source port, so an
    off-path attacker must guess it as well as the query id); Twisted would log
    "Starting protocol" and "Stopping protocol" for each of them.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenUDP(self, port: int, protocol: Any, *args: Any, **kwargs: Any) -> Any:
        protocol.noisy = False
        return self._reactor.listenUDP(port, protocol, *args, **kwargs)

    def connectTCP(self, host: str, port: int, factory: Any, *args: Any, **kwargs: Any) -> Any:
        factory.noisy = False
        return self._reactor.connectTCP(host, port, factory, *args, **kwargs)


def names_resolver(
    reactor: Any, servers: Sequence[tuple[str, int]] = (), hosts_file: str = HOSTS_FILE
) -> ResolverBase:
    """The Twisted Names chain: ``hosts_file``, then ``servers`` (default: the system's)."""
    chosen = list(servers) or system_dns_servers()
    return resolve.ResolverChain(
        [
            hosts.Resolver(file=hosts_file.encode()),
            client.Resolver(servers=chosen, reactor=_QuietReactor(reactor)),
        ]
    )


def _record(payload: Any) -> Record | None:
    if isinstance(payload, dns.Record_NAPTR):
        return Naptr(
            payload.order,
            payload.preference,
            payload.flags.string.decode("ascii", "replace"),
            payload.service.string.decode("ascii", "replace"),
            payload.replacement.name.decode("ascii", "replace"),
        )
    if isinstance(payload, dns.Record_SRV):
        target = payload.target.name.decode("ascii", "replace")
        return Srv(payload.priority, payload.weight, payload.port, target)
    if isinstance(payload, dns.Record_A):
        return str(payload.dottedQuad())
    if isinstance(payload, dns.Record_AAAA):
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    return None


def _answer(query: Query, result: Any) -> Answer:
    """An Answer from Twisted Names' (answers, authority, additional)."""
    wanted = _TYPES[query.type]
    records: list[Record] = []
    ttls = []
    for header in result[0]:
        if header.type != wanted:
            continue  # a CNAME on the way
        record = _record(header.payload)
        if record is not None and record not in records:
            records.append(record)
            ttls.append(header.ttl)
    return Answer(tuple(records), float(min(ttls)) if ttls else 0.0)


def _failure(failure: Failure) -> Answer:
    """An Answer saying why a query got no answer."""
    error = failure.value
    if isinstance(error, (dns_error.DNSNameError, dns_error.AuthoritativeDomainError)):
        return Answer(error="no such domain", nxdomain=True)
    if type(error) is dns_error.DomainError:  # no resolver of the chain knows the name
        return Answer(error="no such domain", nxdomain=True)
    if isinstance(error, DeferredTimeoutError):
        return Answer(error="no answer from the DNS server (timeout)")
    if isinstance(error, dns_error.DNSServerError):
        return Answer(error="DNS server failure")
    if isinstance(error, dns_error.DNSQueryRefusedError):
        return Answer(error="the DNS server refused the query")
    return Answer(error=f"DNS error: {failure.getErrorMessage() or type(error).__name__}")


def names_query(resolver: Any, timeout: Callable[[], float]) -> QueryFunction:
    """A :data:`QueryFunction` asking the Twisted Names ``resolver`` (an ``IResolver``).

    ``timeout()`` is the time one query may take (the ``dns-timeout`` limit).
    """

    def ask(query: Query) -> Deferred[Answer]:
        lookup = getattr(resolver, _LOOKUPS[query.type])
        try:
            asked: Deferred[Any] = lookup(query.name, query_timeouts(timeout()))
        except Exception:
            return succeed(_failure(Failure()))
        return asked.addCallbacks(lambda result: _answer(query, result), _failure)

    return ask


class _Entry:
    __slots__ = ("answer", "expires")

    def __init__(self, answer: Answer, expires: float) -> None:
        self.answer = answer
        self.expires = expires


class DnsCache:
    """DNS answers kept for their TTL, and one query at a time per name and type.

    ``query`` asks DNS (a :data:`QueryFunction`); ``negative_ttl()`` is how
    long a negative answer or a failure is kept, ``max_entries()`` how many
    answers at most. ``clock`` gives the time (the reactor).
    """

    def __init__(
        self,
        clock: IReactorTime,
        query: QueryFunction,
        *,
        negative_ttl: Callable[[], float] = lambda: 30.0,
        max_entries: Callable[[], int] = lambda: 10000,
    ) -> None:
        self.clock = clock
        self.query = query
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: dict[Query, _Entry] = {}
        self._waiting: dict[Query, list[Deferred[Answer]]] = {}
        #: Queries sent to DNS (not answered from the cache nor joined), since creation.
        self.sent = 0
        #: Lookups answered from the cache.
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every answer (the DNS servers changed); queries on their way still finish."""
        self._entries.clear()

    def cached(self, query: Query) -> Answer | None:
        """The answer held for ``query`` if it has not expired, else None."""
        entry = self._entries.get(query)
        if entry is None:
            return None
        if entry.expires <= self.clock.seconds():
            del self._entries[query]
            return None
        return entry.answer

    def lookup(self, query: Query) -> Deferred[Answer]:
        """The answer to ``query``: from the cache, from a query on its way, or asked now."""
        return self.fetch(query)[0]

    def fetch(self, query: Query) -> tuple[Deferred[Answer], bool]:
        """Like :meth:`lookup`; also says whether a query was sent to DNS for it."""
        answer = self.cached(query)
        if answer is not None:
            self.hits += 1
            return succeed(answer), False
        waiter: Deferred[Answer] = Deferred()
        waiting = self._waiting.get(query)
        if waiting is not None:
            waiting.append(waiter)
            return waiter, False
        self._waiting[query] = [waiter]
        self.sent += 1
        try:
            asked = self.query(query)
        except Exception:
            asked = succeed(_failure(Failure()))
        asked.addErrback(_failure)
        asked.addCallback(self._answered, query)
        return waiter, True

    def _answered(self, answer: Answer, query: Query) -> None:
        if answer.error is not None or not answer.records:
            ttl = float(self.negative_ttl())
        else:
            ttl = answer.ttl
        if ttl > 0:
            self._store(query, answer, self.clock.seconds() + ttl)
        for waiter in self._waiting.pop(query, []):
            waiter.callback(answer)

    def _store(self, query: Query, answer: Answer, expires: float) -> None:
        entries = self._entries
        entries.pop(query, None)
        limit = max(1, self.max_entries())
        if len(entries) >= limit:
            now = self.clock.seconds()
            for key in [k for k, e in entries.items() if e.expires <= now]:
                del entries[key]
            while len(entries) >= limit:
                del entries[next(iter(entries))]  # the oldest
        entries[query] = _Entry(answer, expires)


class NextHopResolver:
    """Resolves :class:`~sbc.sip.locate.NextHop` objects through a :class:`DnsCache`.

    ``rng`` orders SRV records of equal priority (RFC 2782 weights); tests
    pass a seeded one.
    """

    def __init__(self, cache: DnsCache, rng: random.Random | None = None) -> None:
        self.cache = cache
        self.rng = rng if rng is not None else random.Random()

    def resolve(self, hop: NextHop) -> Deferred[Resolution]:
        """The destinations of ``hop``; never fails (a failure is a Resolution with ``error``)."""
        lookup = Lookup(hop, self.rng)
        result: Deferred[Resolution] = Deferred()
        sent = [0]

        def finish() -> None:
            found = lookup.result
            assert found is not None
            result.callback(Resolution(found.hop, found.destinations, found.error, queries=sent[0]))

        def step(queries: tuple[Query, ...]) -> None:
            if not queries:
                finish()
                return
            fetched = [self.cache.fetch(q) for q in queries]
            sent[0] += sum(1 for _, asked in fetched if asked)
            answers = gatherResults([d for d, _ in fetched])
            answers.addCallback(lambda got: step(lookup.feed(dict(zip(queries, got)))))
            answers.addErrback(broken)

        def broken(failure: Failure) -> None:
            if not result.called:
                why = f"internal error: {failure.getErrorMessage()}"
                result.callback(Resolution(hop, (), why))

        try:
            step(lookup.start())
        except Exception:
            broken(Failure())
        return result


class OncePerInterval:
    """At most one log line per key every ``interval`` seconds of ``clock`` time.

    :meth:`allow` says whether ``key`` may be logged now, and how many lines
    were held back since its last one. Keys whose interval is over are
    forgotten, so the table holds only the keys seen within one interval
    (DNS failures are keyed by domain, and a caller chooses the domain).
    """

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._last)

    def allow(self, key: str) -> tuple[bool, int]:
        """(True, lines held since the last one) when ``key`` may be logged now."""
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False, last[1] + 1
        self._last.pop(key, None)
        if len(self._last) >= 64:
            for old in [k for k, (t, _) in self._last.items() if now - t >= self.interval]:
                del self._last[old]
        self._last[key] = (now, 0)
        return True, 0 if last is None else last[1]
