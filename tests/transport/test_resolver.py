"""sbc.transport.resolver and the runtime's Resolve outputs: TTL cache, shared queries,
Twisted Names glue, DNS failures counted and logged; virtual time, no network."""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.names.resolve import ResolverChain
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable
from sbc.sip.locate import Answer, Naptr, NextHop, Query, Resolution, Srv
from sbc.sip.stack import Flow, Resolve, Transmit
from sbc.transport.resolver import (
    DnsCache,
    NextHopResolver,
    OncePerInterval,
    names_query,
    names_resolver,
    query_timeouts,
    system_dns_servers,
)
from sbc.transport.runtime import SipRuntime
from tests.transport.fakes import FakeStack, Reactor, adjacency


class FakeDns:
    """A query function whose answers the test gives: at once from ``zone`` or held."""

    def __init__(self, zone: dict[tuple[str, str], Answer] | None = None) -> None:
        self.zone = zone or {}
        self.hold = False
        self.asked: list[Query] = []
        self.held: dict[Query, Deferred[Answer]] = {}

    def __call__(self, query: Query) -> Deferred[Answer]:
        self.asked.append(query)
        if self.hold:
            waiter: Deferred[Answer] = Deferred()
            self.held[query] = waiter
            return waiter
        answer = self.zone.get((query.name, query.type))
        return succeed(answer or Answer(error="no such domain", nxdomain=True))

    def answer(self, query: Query, answer: Answer) -> None:
        self.held.pop(query).callback(answer)


A_QUERY = Query("sip.example.test", "A")


class DnsCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = FakeDns({("sip.example.test", "A"): Answer(("192.0.2.1",), 60)})
        self.cache = DnsCache(self.clock, self.dns, negative_ttl=lambda: 5, max_entries=lambda: 4)

    def test_answer_kept_for_its_ttl(self) -> None:
        first = self.successResultOf(self.cache.lookup(A_QUERY))
        self.assertEqual(first.records, ("192.0.2.1",))
        self.clock.advance(59.9)
        self.assertEqual(self.successResultOf(self.cache.lookup(A_QUERY)), first)
        self.assertEqual((len(self.dns.asked), self.cache.sent, self.cache.hits), (1, 1, 1))
        self.clock.advance(0.1)
        self.successResultOf(self.cache.lookup(A_QUERY))
        self.assertEqual(len(self.dns.asked), 2)

    def test_negative_answer_kept_briefly(self) -> None:
        unknown = Query("nowhere.test", "A")
        answer = self.successResultOf(self.cache.lookup(unknown))
        self.assertTrue(answer.nxdomain)
        self.clock.advance(4.9)
        self.cache.lookup(unknown)
        self.assertEqual(self.dns.asked, [unknown])
        self.clock.advance(0.1)
        self.cache.lookup(unknown)
        self.assertEqual(self.dns.asked, [unknown, unknown])

    def test_empty_answer_is_negative(self) -> None:
        self.dns.zone[("empty.test", "SRV")] = Answer((), 3600)
        self.cache.lookup(Query("empty.test", "SRV"))
        self.clock.advance(5)
        self.cache.lookup(Query("empty.test", "SRV"))
        self.assertEqual(len(self.dns.asked), 2)

    def test_no_negative_caching_when_the_limit_is_zero(self) -> None:
        cache = DnsCache(self.clock, self.dns, negative_ttl=lambda: 0)
        cache.lookup(Query("nowhere.test", "A"))
        cache.lookup(Query("nowhere.test", "A"))
        self.assertEqual(len(self.dns.asked), 2)
        self.assertEqual(len(cache), 0)

    def test_zero_ttl_is_not_kept(self) -> None:
        self.dns.zone[("volatile.test", "A")] = Answer(("192.0.2.7",), 0)
        self.cache.lookup(Query("volatile.test", "A"))
        self.cache.lookup(Query("volatile.test", "A"))
        self.assertEqual(len(self.dns.asked), 2)

    def test_concurrent_lookups_share_one_query(self) -> None:
        self.dns.hold = True
        first = self.cache.lookup(A_QUERY)
        second, asked = self.cache.fetch(A_QUERY)
        self.assertFalse(asked)
        self.assertNoResult(first)
        self.assertEqual(self.dns.asked, [A_QUERY])
        self.dns.answer(A_QUERY, Answer(("192.0.2.9",), 30))
        self.assertEqual(self.successResultOf(first).records, ("192.0.2.9",))
        self.assertEqual(self.successResultOf(second).records, ("192.0.2.9",))
        self.assertEqual(self.successResultOf(self.cache.lookup(A_QUERY)).records, ("192.0.2.9",))
        self.assertEqual(len(self.dns.asked), 1)

    def test_a_failing_query_function_is_a_failed_answer(self) -> None:
        def broken(query: Query) -> Deferred[Answer]:
            return fail(RuntimeError("socket trouble"))

        cache = DnsCache(self.clock, broken)
        answer = self.successResultOf(cache.lookup(A_QUERY))
        self.assertTrue(answer.failed)
        self.assertIn("socket trouble", answer.error or "")

    def test_bounded_oldest_first_expired_first(self) -> None:
        for n in range(4):
            self.dns.zone[(f"h{n}.test", "A")] = Answer((f"192.0.2.{n}",), 100 + n)
        for n in range(4):
            self.cache.lookup(Query(f"h{n}.test", "A"))
        self.clock.advance(100.5)  # h0 expired
        self.cache.lookup(A_QUERY)
        self.assertEqual(len(self.cache), 4)
        self.assertIsNone(self.cache.cached(Query("h0.test", "A")))
        self.assertIsNotNone(self.cache.cached(Query("h1.test", "A")))
        self.cache.lookup(Query("nowhere.test", "A"))  # nothing expired: the oldest goes
        self.assertEqual(len(self.cache), 4)
        self.assertIsNone(self.cache.cached(Query("h1.test", "A")))

    def test_clear(self) -> None:
        self.cache.lookup(A_QUERY)
        self.cache.clear()
        self.cache.lookup(A_QUERY)
        self.assertEqual(len(self.dns.asked), 2)


ZONE = {
    ("trunk.test", "NAPTR"): Answer((Naptr(10, 10, "s", "SIP+D2T", "_sip._tcp.trunk.test"),), 300),
    ("_sip._tcp.trunk.test", "SRV"): Answer(
        (Srv(10, 0, 5070, "a.trunk.test"), Srv(20, 0, 5080, "b.trunk.test")), 300
    ),
    ("a.trunk.test", "A"): Answer(("192.0.2.1",), 300),
    ("b.trunk.test", "A"): Answer(("192.0.2.2",), 30),
}
TRUNK = NextHop("trunk.test", None, ("TCP",))


class NextHopResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = FakeDns(dict(ZONE))
        self.resolver = NextHopResolver(DnsCache(self.clock, self.dns), random.Random(1))

    def test_resolution_and_its_query_count(self) -> None:
        found = self.successResultOf(self.resolver.resolve(TRUNK))
        self.assertEqual(
            [(d.address, d.port, d.name) for d in found.destinations],
            [("192.0.2.1", 5070, "a.trunk.test"), ("192.0.2.2", 5080, "b.trunk.test")],
        )
        self.assertEqual(found.queries, 4)

    def test_second_resolution_within_the_ttls_asks_nothing(self) -> None:
        self.resolver.resolve(TRUNK)
        self.clock.advance(29)
        again = self.successResultOf(self.resolver.resolve(TRUNK))
        self.assertEqual((again.queries, len(again.destinations)), (0, 2))
        self.clock.advance(1)  # b.trunk.test's A record expired, nothing else
        again = self.successResultOf(self.resolver.resolve(TRUNK))
        self.assertEqual(again.queries, 1)
        self.assertEqual(self.dns.asked[-1], Query("b.trunk.test", "A"))

    def test_two_calls_to_one_domain_share_the_queries(self) -> None:
        self.dns.hold = True
        first = self.resolver.resolve(TRUNK)
        second = self.resolver.resolve(TRUNK)
        self.dns.answer(Query("trunk.test", "NAPTR"), ZONE[("trunk.test", "NAPTR")])
        self.dns.answer(Query("_sip._tcp.trunk.test", "SRV"), ZONE[("_sip._tcp.trunk.test", "SRV")])
        self.dns.answer(Query("a.trunk.test", "A"), ZONE[("a.trunk.test", "A")])
        self.dns.answer(Query("b.trunk.test", "A"), ZONE[("b.trunk.test", "A")])
        self.assertEqual(len(self.successResultOf(first).destinations), 2)
        self.assertEqual(len(self.successResultOf(second).destinations), 2)
        self.assertEqual(len(self.dns.asked), 4)

    def test_failure_is_a_resolution_not_an_error(self) -> None:
        found = self.successResultOf(self.resolver.resolve(NextHop("gone.test", None, ("UDP",))))
        self.assertTrue(found.failed)
        self.assertEqual(found.error, "gone.test A: no such domain")

    def test_ip_address_asks_nothing(self) -> None:
        found = self.successResultOf(self.resolver.resolve(NextHop("192.0.2.5", 5070, ("UDP",))))
        self.assertEqual((found.destinations[0].address, found.queries), ("192.0.2.5", 0))
        self.assertEqual(self.dns.asked, [])


def rr(name: str, payload: Any, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(name.encode(), payload.TYPE, dns.IN, ttl, payload)


class StandInNames:
    """An IResolver that answers from a dict, or fails with a given exception."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.timeouts: list[Any] = []

    def _answer(self, name: str, timeout: Any) -> Deferred[Any]:
        self.timeouts.append(timeout)
        result = self.results[name]
        if isinstance(result, Exception):
            return fail(result)
        return succeed((result, [], []))

    lookupNamingAuthorityPointer = lookupService = lookupAddress = lookupIPV6Address = _answer


class NamesQueryTests(SynchronousTestCase):
    def ask(self, names: StandInNames, query: Query) -> Answer:
        return self.successResultOf(names_query(names, lambda: 5)(query))

    def test_records_converted_ttl_is_the_smallest(self) -> None:
        names = StandInNames(
            {
                "t.test": [
                    rr(
                        "t.test",
                        dns.Record_NAPTR(10, 20, b"S", b"SIPS+D2T", b"", b"_sips._tcp.t.test"),
                        600,
                    ),
                ],
                "_sips._tcp.t.test": [
                    rr("_sips._tcp.t.test", dns.Record_SRV(1, 5, 5061, b"a.t.test"), 120),
                    rr("_sips._tcp.t.test", dns.Record_SRV(2, 0, 5061, b"b.t.test"), 90),
                ],
                "a.t.test": [
                    rr("a.t.test", dns.Record_CNAME(b"real.t.test"), 10),
                    rr("real.t.test", dns.Record_A("192.0.2.4"), 50),
                ],
                "v6.t.test": [rr("v6.t.test", dns.Record_AAAA("2001:db8::4"), 40)],
            }
        )
        naptr = self.ask(names, Query("t.test", "NAPTR"))
        self.assertEqual(naptr, Answer((Naptr(10, 20, "S", "SIPS+D2T", "_sips._tcp.t.test"),), 600))
        srv = self.ask(names, Query("_sips._tcp.t.test", "SRV"))
        self.assertEqual(
            srv, Answer((Srv(1, 5, 5061, "a.t.test"), Srv(2, 0, 5061, "b.t.test")), 90)
        )
        self.assertEqual(self.ask(names, Query("a.t.test", "A")), Answer(("192.0.2.4",), 50))
        self.assertEqual(self.ask(names, Query("v6.t.test", "AAAA")), Answer(("2001:db8::4",), 40))
        self.assertEqual(names.timeouts[0], (1.0, 4.0))

    def test_errors(self) -> None:
        names = StandInNames(
            {
                "nx.test": dns_error.DNSNameError("nx.test"),
                "slow.test": dns_error.DNSQueryTimeoutError("slow.test"),
                "broken.test": dns_error.DNSServerError("broken.test"),
                "refused.test": dns_error.DNSQueryRefusedError("refused.test"),
                "odd.test": dns_error.DNSFormatError("odd.test"),
            }
        )
        nx = self.ask(names, Query("nx.test", "A"))
        self.assertEqual((nx.nxdomain, nx.failed), (True, False))
        for name, words in (
            ("slow.test", "timeout"),
            ("broken.test", "server failure"),
            ("refused.test", "refused"),
            ("odd.test", "DNS error"),
        ):
            answer = self.ask(names, Query(name, "SRV"))
            self.assertTrue(answer.failed, name)
            self.assertIn(words, answer.error or "", name)

    def test_query_timeouts(self) -> None:
        self.assertEqual(query_timeouts(5), (1.0, 4.0))
        self.assertEqual(query_timeouts(1), (1,))


class SystemConfigurationTests(SynchronousTestCase):
    def test_resolv_conf_nameservers(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "search lab.test\nnameserver 192.0.2.53\n"
                "# nameserver 1.1.1.1\nnameserver fe80::1%eth0\n"
            )
        self.assertEqual(system_dns_servers(path), [("192.0.2.53", 53), ("fe80::1", 53)])

    def test_no_nameserver_means_the_local_one(self) -> None:
        self.assertEqual(system_dns_servers(self.mktemp()), [("127.0.0.1", 53)])

    def test_chain_reads_the_hosts_file_first(self) -> None:
        hosts = self.mktemp()
        with open(hosts, "w") as f:
            f.write("192.0.2.77 pbx.hosts.test\n")
        chain = names_resolver(Clock(), [("127.0.0.1", 1)], hosts)
        self.assertIsInstance(chain, ResolverChain)
        answer = self.successResultOf(names_query(chain, lambda: 1)(Query("pbx.hosts.test", "A")))
        self.assertEqual(answer.records, ("192.0.2.77",))
        self.assertTrue(os.path.exists(hosts))

    def test_query_sockets_are_quiet(self) -> None:
        """One UDP socket per query: Twisted's Starting/Stopping protocol lines are left out."""
        reactor = Reactor()
        chain = names_resolver(reactor, [("192.0.2.53", 53)], self.mktemp())
        asked = chain.lookupService("_sip._udp.x.test", (1,))
        [port] = reactor.udpServers
        self.assertFalse(port.protocol.noisy)
        self.assertNoResult(asked)  # waiting for an answer that this fake network never brings


class OncePerIntervalTests(SynchronousTestCase):
    def test_once_per_key_per_interval_and_bounded(self) -> None:
        clock = Clock()
        gate = OncePerInterval(clock, 10)
        self.assertEqual(gate.allow("a.test"), (True, 0))
        self.assertEqual(gate.allow("a.test"), (False, 1))
        self.assertEqual(gate.allow("b.test"), (True, 0))
        clock.advance(10)
        self.assertEqual(gate.allow("a.test"), (True, 1))
        for n in range(200):
            gate.allow(f"flood{n}.test")
            clock.advance(0.1)
        self.assertLess(len(gate), 120)  # only the keys of the last interval are kept


class RuntimeResolveTests(SynchronousTestCase):
    """SipRuntime carries out Resolve outputs with its resolver and counts failures."""

    def setUp(self) -> None:
        self.reactor = Reactor()
        self.events: list[dict[str, Any]] = []
        self.dns = FakeDns(dict(ZONE))
        self.runtime = SipRuntime(
            self.reactor,
            FakeStack(),
            AdjacencyTable([adjacency("trunk", transport="udp")]),
            log=Logger(observer=self.events.append),
            log_interval=10,
            resolver=NextHopResolver(DnsCache(self.reactor, self.dns), random.Random(1)),
        )
        self.successResultOf(self.runtime.start())
        self.replies: list[tuple[Resolution, float]] = []

    def resolve(self, hop: NextHop) -> None:
        def reply(resolution: Resolution, now: float) -> list[Any]:
            self.replies.append((resolution, now))
            if resolution.failed:
                return []
            first = resolution.destinations[0]
            flow = Flow("UDP", ("127.0.0.1", 5060), (first.address, first.port), adjacency="trunk")
            return [Transmit(flow, b"INVITE")]

        self.runtime.process([Resolve(hop, reply, "trunk")])

    def failures(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("event") == "dns.failed"]

    def test_reply_gets_the_destinations_and_its_outputs_are_sent(self) -> None:
        self.reactor.advance(7)
        self.resolve(NextHop("trunk.test", None, ("UDP", "TCP")))
        [(found, now)] = self.replies
        self.assertEqual(now, 7)
        self.assertEqual(found.destinations[0].address, "192.0.2.1")
        written = self.reactor.udp_protocol(5060, "127.0.0.1").transport.written
        self.assertEqual(written, [(b"INVITE", ("192.0.2.1", 5070))])
        self.assertEqual(self.runtime.counters.get("trunk", "messages-sent"), 1)
        [resolved] = [e for e in self.events if e.get("event") == "dns.resolved"]
        self.assertEqual(resolved["queries"], 4)
        self.assertEqual(
            formatEvent(resolved),
            "trunk.test (adjacency trunk): TCP 192.0.2.1:5070 (a.trunk.test), "
            "TCP 192.0.2.2:5080 (b.trunk.test); 4 DNS queries",
        )

    def test_failure_counted_every_time_logged_once_per_domain_per_interval(self) -> None:
        for _ in range(3):
            self.resolve(NextHop("gone.test", None, ("UDP",)))
        self.resolve(NextHop("other.test", None, ("UDP",)))
        self.assertEqual(self.runtime.counters.get("trunk", "dns-failures"), 4)
        self.assertEqual(
            self.failures(),
            [
                "cannot resolve gone.test (adjacency trunk): gone.test A: no such domain",
                "cannot resolve other.test (adjacency trunk): other.test A: no such domain",
            ],
        )
        self.assertEqual([r.failed for r, _ in self.replies], [True] * 4)
        self.reactor.advance(31)  # past the interval and the negative cache time
        self.resolve(NextHop("gone.test", None, ("UDP",)))
        self.assertEqual(
            self.failures()[-1],
            "cannot resolve gone.test (adjacency trunk): gone.test A: no such domain "
            "(2 similar lines suppressed)",
        )

    def test_answer_after_stop_is_dropped(self) -> None:
        self.dns.hold = True
        self.resolve(NextHop("trunk.test", None, ("TCP",)))
        self.successResultOf(self.runtime.stop())
        self.dns.answer(Query("trunk.test", "NAPTR"), Answer())
        self.dns.answer(Query("_sip._tcp.trunk.test", "SRV"), Answer())
        self.dns.answer(Query("trunk.test", "A"), Answer(("192.0.2.1",), 60))
        self.assertEqual(self.replies, [])

    def test_a_failing_reply_is_logged_not_raised(self) -> None:
        def reply(resolution: Resolution, now: float) -> list[Any]:
            raise RuntimeError("bug")

        self.runtime.process([Resolve(NextHop("192.0.2.1", 5060, ("UDP",)), reply, "trunk")])
        self.assertEqual(self.runtime.counters.get("trunk", "stack-errors"), 1)
        [failure] = [e["log_failure"] for e in self.events if "log_failure" in e]
        self.assertIsInstance(failure.value, RuntimeError)

    def test_dns_servers_switch_builds_a_new_resolver(self) -> None:
        runtime = SipRuntime(
            Reactor(), FakeStack(), AdjacencyTable([]), dns_servers=[("192.0.2.53", 53)]
        )
        first = runtime.resolver
        self.assertIs(runtime.resolver, first)
        runtime.set_dns_servers([("192.0.2.54", 5353)])
        self.assertIsNot(runtime.resolver, first)
        given = NextHopResolver(DnsCache(Clock(), FakeDns()))
        runtime = SipRuntime(Reactor(), FakeStack(), AdjacencyTable([]), resolver=given)
        runtime.set_dns_servers([("192.0.2.54", 5353)])
        self.assertIs(runtime.resolver, given)
