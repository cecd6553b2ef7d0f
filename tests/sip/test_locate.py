"""RFC 3263 §4 and RFC 2782 selection, sans-I/O: queries out, answers in, destinations out."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

from twisted.trial.unittest import SynchronousTestCase

from sbc.sip.locate import (
    Answer,
    Destination,
    Lookup,
    Naptr,
    NextHop,
    Query,
    Resolution,
    Srv,
    naptr_services,
    order_srv,
)

Zone = Mapping[tuple[str, str], Answer]

NXDOMAIN = Answer(error="no such domain", nxdomain=True)
TIMEOUT = Answer(error="no answer from the DNS server (timeout)")


def records(*items: object, ttl: float = 300) -> Answer:
    return Answer(tuple(items), ttl)  # type: ignore[arg-type]


def run(hop: NextHop, zone: Zone, seed: int = 1) -> tuple[Resolution, list[list[Query]]]:
    """Drive a Lookup against ``zone`` ((name, type) -> Answer; missing: no such domain)."""
    lookup = Lookup(hop, random.Random(seed))
    asked: list[list[Query]] = []
    queries = lookup.start()
    while queries:
        asked.append(list(queries))
        queries = lookup.feed({q: zone.get((q.name, q.type), NXDOMAIN) for q in queries})
    assert lookup.result is not None
    return lookup.result, asked


def hop(host: str, port: int | None = None, *transports: str, **kw: object) -> NextHop:
    return NextHop(host, port, transports or ("UDP",), **kw)  # type: ignore[arg-type]


def places(resolution: Resolution) -> list[tuple[str, str, int]]:
    return [(d.transport, d.address, d.port) for d in resolution.destinations]


CARRIER: Zone = {
    ("carrier.test", "NAPTR"): records(
        Naptr(50, 10, "s", "SIP+D2U", "_sip._udp.carrier.test."),
        Naptr(10, 10, "S", "SIPS+D2T", "_sips._tcp.carrier.test."),
        Naptr(20, 10, "s", "sip+d2t", "_sip._tcp.carrier.test."),
        Naptr(5, 10, "u", "SIP+D2T", "!^.*$!sip:x@y!"),  # not an SRV pointer
        Naptr(1, 10, "s", "SIP+D2W", "_sip._ws.carrier.test."),  # WebSocket: not ours
    ),
    ("_sips._tcp.carrier.test", "SRV"): records(Srv(10, 0, 5061, "tls1.carrier.test.")),
    ("_sip._tcp.carrier.test", "SRV"): records(
        Srv(20, 0, 5070, "b.carrier.test."), Srv(10, 0, 5060, "a.carrier.test.")
    ),
    ("_sip._udp.carrier.test", "SRV"): records(Srv(10, 0, 5060, "a.carrier.test.")),
    ("tls1.carrier.test", "A"): records("192.0.2.11"),
    ("a.carrier.test", "A"): records("192.0.2.1", "192.0.2.2"),
    ("b.carrier.test", "A"): records("192.0.2.3"),
    ("carrier.test", "A"): records("192.0.2.99"),
}


class NaptrTests(SynchronousTestCase):
    def test_service_filter_and_order(self) -> None:
        naptrs = CARRIER[("carrier.test", "NAPTR")].records
        self.assertEqual(
            naptr_services(naptrs, ("UDP", "TCP", "TLS")),
            [
                ("TLS", "_sips._tcp.carrier.test"),
                ("TCP", "_sip._tcp.carrier.test"),
                ("UDP", "_sip._udp.carrier.test"),
            ],
        )
        self.assertEqual(naptr_services(naptrs, ("UDP",)), [("UDP", "_sip._udp.carrier.test")])

    def test_preference_within_one_order(self) -> None:
        naptrs = (
            Naptr(10, 20, "s", "SIP+D2T", "_sip._tcp.b.test"),
            Naptr(10, 10, "s", "SIP+D2U", "_sip._udp.a.test"),
        )
        self.assertEqual(
            naptr_services(naptrs, ("UDP", "TCP")),
            [("UDP", "_sip._udp.a.test"), ("TCP", "_sip._tcp.b.test")],
        )

    def test_tls_adjacency_follows_the_sips_service(self) -> None:
        result, asked = run(hop("carrier.test", None, "TLS"), CARRIER)
        self.assertEqual(places(result), [("TLS", "192.0.2.11", 5061)])
        self.assertEqual(result.destinations[0].name, "tls1.carrier.test")
        self.assertEqual(
            asked,
            [
                [Query("carrier.test", "NAPTR")],
                [Query("_sips._tcp.carrier.test", "SRV")],
                [Query("tls1.carrier.test", "A")],
            ],
        )

    def test_tcp_adjacency_uses_its_own_service_in_srv_priority_order(self) -> None:
        result, _ = run(hop("carrier.test", None, "TCP"), CARRIER)
        self.assertEqual(
            places(result),
            [("TCP", "192.0.2.1", 5060), ("TCP", "192.0.2.2", 5060), ("TCP", "192.0.2.3", 5070)],
        )

    def test_udp_tcp_adjacency_takes_the_first_naptr_it_supports(self) -> None:
        result, _ = run(hop("carrier.test", None, "UDP", "TCP"), CARRIER)
        self.assertEqual({d.transport for d in result.destinations}, {"TCP"})

    def test_naptr_whose_srv_is_empty_falls_to_the_next(self) -> None:
        zone = dict(CARRIER)
        zone[("_sip._tcp.carrier.test", "SRV")] = records()
        result, _ = run(hop("carrier.test", None, "UDP", "TCP"), zone)
        self.assertEqual(places(result), [("UDP", "192.0.2.1", 5060), ("UDP", "192.0.2.2", 5060)])


class SrvWithoutNaptrTests(SynchronousTestCase):
    ZONE: Zone = {
        ("pbx.test", "NAPTR"): records(),
        ("_sip._udp.pbx.test", "SRV"): records(Srv(0, 0, 5080, "pbx1.pbx.test")),
        ("_sip._tcp.pbx.test", "SRV"): records(Srv(0, 0, 5090, "pbx2.pbx.test")),
        ("pbx1.pbx.test", "A"): records("192.0.2.31"),
        ("pbx2.pbx.test", "A"): records("192.0.2.32"),
        ("pbx.test", "A"): records("192.0.2.30"),
    }

    def test_srv_of_each_transport_asked_at_once_first_transport_wins(self) -> None:
        result, asked = run(hop("pbx.test", None, "UDP", "TCP"), self.ZONE)
        self.assertEqual(places(result), [("UDP", "192.0.2.31", 5080)])
        self.assertEqual(
            asked[1], [Query("_sip._udp.pbx.test", "SRV"), Query("_sip._tcp.pbx.test", "SRV")]
        )

    def test_no_naptr_record_at_all(self) -> None:
        zone = dict(self.ZONE)
        del zone[("pbx.test", "NAPTR")]  # NXDOMAIN for NAPTR: SRV is still asked
        result, _ = run(hop("pbx.test", None, "TCP"), zone)
        self.assertEqual(places(result), [("TCP", "192.0.2.32", 5090)])

    def test_transport_given_skips_naptr(self) -> None:
        result, asked = run(hop("pbx.test", None, "TCP", transport_given=True), self.ZONE)
        self.assertEqual(asked[0], [Query("_sip._tcp.pbx.test", "SRV")])
        self.assertEqual(places(result), [("TCP", "192.0.2.32", 5090)])

    def test_no_srv_means_the_domain_addresses_on_the_default_port(self) -> None:
        zone = {("pbx.test", "A"): records("192.0.2.30", "192.0.2.40")}
        result, _ = run(hop("pbx.test", None, "TLS"), zone)
        self.assertEqual(places(result), [("TLS", "192.0.2.30", 5061), ("TLS", "192.0.2.40", 5061)])
        result, _ = run(hop("pbx.test", None, "UDP", "TCP"), zone)
        self.assertEqual(places(result)[0], ("UDP", "192.0.2.30", 5060))


class PortAndAddressTests(SynchronousTestCase):
    def test_ip_address_needs_no_dns(self) -> None:
        result, asked = run(hop("192.0.2.5", None, "TLS"), {})
        self.assertEqual((places(result), asked), ([("TLS", "192.0.2.5", 5061)], []))
        result, asked = run(hop("[2001:db8::1]", 5070, "UDP"), {})
        self.assertEqual((places(result), asked), ([("UDP", "2001:db8::1", 5070)], []))

    def test_explicit_port_means_addresses_only(self) -> None:
        result, asked = run(hop("carrier.test", 5999, "TCP"), CARRIER)
        self.assertEqual(asked, [[Query("carrier.test", "A")]])
        self.assertEqual(places(result), [("TCP", "192.0.2.99", 5999)])

    def test_ipv6_adjacency_asks_aaaa(self) -> None:
        zone = {("v6.test", "AAAA"): records("2001:db8::5"), ("v6.test", "A"): records("192.0.2.5")}
        result, asked = run(hop("v6.test", 5060, "UDP", family=6), zone)
        self.assertEqual(asked, [[Query("v6.test", "AAAA")]])
        self.assertEqual(places(result), [("UDP", "2001:db8::5", 5060)])

    def test_names_are_compared_without_case_or_final_dot(self) -> None:
        result, asked = run(hop("Carrier.TEST.", 5999, "TCP"), CARRIER)
        self.assertEqual(asked, [[Query("carrier.test", "A")]])
        self.assertEqual(len(result.destinations), 1)


class FailureTests(SynchronousTestCase):
    def test_unknown_domain(self) -> None:
        result, asked = run(hop("nowhere.test", None, "TCP"), {})
        self.assertTrue(result.failed)
        self.assertEqual(result.error, "nowhere.test A: no such domain")
        self.assertEqual(
            [q.type for step in asked for q in step], ["NAPTR", "SRV", "A"]
        )  # RFC 3263 asks all three before giving up

    def test_timeout_on_naptr_ends_the_lookup(self) -> None:
        result, asked = run(hop("slow.test", None, "TCP"), {("slow.test", "NAPTR"): TIMEOUT})
        self.assertEqual(result.error, "slow.test NAPTR: no answer from the DNS server (timeout)")
        self.assertEqual(len(asked), 1)

    def test_srv_target_dot_means_not_available(self) -> None:
        zone = {("_sip._udp.off.test", "SRV"): records(Srv(0, 0, 0, "."))}
        result, _ = run(hop("off.test", None, "UDP"), zone)
        self.assertIn("not available", result.error or "")

    def test_srv_targets_without_address(self) -> None:
        zone = {("_sip._udp.x.test", "SRV"): records(Srv(0, 0, 5060, "gone.x.test"))}
        result, _ = run(hop("x.test", None, "UDP"), zone)
        self.assertEqual(result.error, "gone.x.test A: no such domain")

    def test_one_srv_target_without_address_is_skipped(self) -> None:
        zone = {
            ("_sip._udp.x.test", "SRV"): records(
                Srv(0, 0, 5060, "gone.x.test"), Srv(1, 0, 5062, "here.x.test")
            ),
            ("here.x.test", "A"): records("192.0.2.9"),
        }
        result, _ = run(hop("x.test", None, "UDP"), zone)
        self.assertEqual(places(result), [("UDP", "192.0.2.9", 5062)])

    def test_feed_needs_every_answer(self) -> None:
        lookup = Lookup(hop("x.test", None, "UDP", "TCP", transport_given=False), random.Random(1))
        lookup.start()
        lookup.feed({Query("x.test", "NAPTR"): records()})
        self.assertRaises(ValueError, lookup.feed, {})

    def test_bad_transport(self) -> None:
        self.assertRaises(ValueError, NextHop, "x.test", None, ("SCTP",))
        self.assertRaises(ValueError, NextHop, "x.test", None, ())


class SrvOrderTests(SynchronousTestCase):
    """RFC 2782: priority ascending; weighted random within a priority."""

    def test_priority_first(self) -> None:
        srvs = [Srv(20, 100, 1, "c"), Srv(10, 0, 1, "a"), Srv(30, 0, 1, "d"), Srv(10, 0, 1, "b")]
        for seed in range(20):
            ordered = order_srv(srvs, random.Random(seed))
            self.assertEqual([r.priority for r in ordered], [10, 10, 20, 30])

    def test_weights_decide_how_often_each_comes_first(self) -> None:
        """Weights 60/30/10: over 10000 seeded draws the shares are close to 6:3:1."""
        srvs = [Srv(1, 10, 1, "small"), Srv(1, 60, 1, "big"), Srv(1, 30, 1, "mid")]
        rng = random.Random(3263)
        firsts = Counter(order_srv(srvs, rng)[0].target for _ in range(10000))
        self.assertEqual(sum(firsts.values()), 10000)
        for name, weight in (("big", 60), ("mid", 30), ("small", 10)):
            self.assertLess(abs(firsts[name] / 10000 - weight / 100), 0.02, firsts)

    def test_same_seed_same_order(self) -> None:
        srvs = [Srv(1, w, 1, f"t{w}") for w in (5, 10, 20, 40)]
        first = order_srv(srvs, random.Random(42))
        self.assertEqual(order_srv(srvs, random.Random(42)), first)
        self.assertEqual(
            sorted(first, key=lambda r: r.weight), sorted(srvs, key=lambda r: r.weight)
        )

    def test_weight_zero_rarely_first_when_others_weigh(self) -> None:
        """Picked first only when the random number is 0: 1 in (sum + 1)."""
        srvs = [Srv(1, 0, 1, "zero"), Srv(1, 99, 1, "heavy")]
        rng = random.Random(7)
        firsts = Counter(order_srv(srvs, rng)[0].target for _ in range(10000))
        self.assertLess(firsts["zero"], 300)  # about 100 expected
        self.assertGreater(firsts["zero"], 0)

    def test_all_weights_zero_keep_their_order(self) -> None:
        srvs = [Srv(1, 0, 1, "x"), Srv(1, 0, 1, "y")]
        self.assertEqual([r.target for r in order_srv(srvs, random.Random(1))], ["x", "y"])

    def test_every_record_once(self) -> None:
        srvs = [Srv(p, w, 1, f"{p}-{w}") for p in (1, 2) for w in (0, 1, 7)]
        for seed in range(50):
            self.assertEqual(Counter(order_srv(srvs, random.Random(seed))), Counter(srvs))

    def test_dot_target_is_left_out(self) -> None:
        self.assertEqual(order_srv([Srv(0, 0, 0, ".")], random.Random(1)), [])

    def test_lookup_orders_destinations_with_its_rng(self) -> None:
        zone = {
            ("_sip._udp.w.test", "SRV"): records(
                Srv(10, 1, 5060, "light.w.test"), Srv(10, 1000, 5060, "heavy.w.test")
            ),
            ("light.w.test", "A"): records("192.0.2.1"),
            ("heavy.w.test", "A"): records("192.0.2.2"),
        }
        firsts = Counter(
            run(hop("w.test", None, "UDP"), zone, seed)[0].destinations[0].name
            for seed in range(200)
        )
        self.assertGreater(firsts["heavy.w.test"], 190)


class DestinationTests(SynchronousTestCase):
    def test_duplicates_are_tried_once(self) -> None:
        zone = {
            ("_sip._udp.d.test", "SRV"): records(
                Srv(1, 0, 5060, "a.d.test"), Srv(2, 0, 5060, "b.d.test")
            ),
            ("a.d.test", "A"): records("192.0.2.1"),
            ("b.d.test", "A"): records("192.0.2.1", "192.0.2.2"),
        }
        result, _ = run(hop("d.test", None, "UDP"), zone)
        self.assertEqual(
            result.destinations,
            (
                Destination("UDP", "192.0.2.1", 5060, "a.d.test"),
                Destination("UDP", "192.0.2.2", 5060, "b.d.test"),
            ),
        )
