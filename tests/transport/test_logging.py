"""Log events of the transport: every refused connection is an event, text lines rate-limited."""

from __future__ import annotations

import io
import json
from typing import Any, cast

from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable, ListenerKey
from sbc.config import Limits
from sbc.labpki import issue, make_ca
from sbc.logs import JsonLinesObserver
from sbc.sip.stack import Dropped, Flow
from sbc.transport.runtime import MAX_HELD_EVENTS, RateLimitedLog, event_name
from sbc.transport.tls import client_connection_creator
from tests.transport.fakes import (
    OPTIONS,
    OneProtocolFactory,
    Peer,
    Reactor,
    adjacency,
    drop,
    tls_identity,
)
from tests.transport.test_runtime import (
    HOST,
    PHONE,
    TCP_KEY,
    TLS_KEY,
    TRUNK,
    UDP_KEY,
    RuntimeMixin,
    TlsRuntimeMixin,
)

Event = dict[str, Any]


class EventsMixin(RuntimeMixin):
    def named(self, name: str) -> list[Event]:
        return [e for e in self.log_events if e.get("event") == name]

    def texts(self) -> list[str]:
        """What a text log shows (events without text are skipped by text observers)."""
        return [t for t in (formatEvent(e) for e in self.log_events) if t]


#: The connection floods below come from one source in no time: keep sbc.flood out of the way.
NO_FLOOD_DEFENCE = {"source_rate_requests": 1000000, "max_new_connections_per_second": 1000000}


class RefusedConnectionTests(EventsMixin):
    limits = Limits(
        max_connections_per_adjacency=50, max_connections_per_source=1, **NO_FLOOD_DEFENCE
    )

    def test_no_adjacency(self) -> None:
        self.start()
        self.tcp(("172.16.0.1", 4000))
        [event] = self.named("connection.refused")
        self.assertEqual(
            {k: event[k] for k in ("adjacency", "reason", "counter", "remote", "listener")},
            {
                "adjacency": None,
                "reason": "no-adjacency",
                "counter": "connections-refused:no-adjacency",
                "remote": "172.16.0.1:4000",
                "listener": str(TCP_KEY),
            },
        )
        self.assertIn("172.16.0.1:4000", formatEvent(event))
        self.assertIn("matches no attached adjacency", formatEvent(event))

    def test_every_refusal_is_an_event_but_the_text_is_rate_limited(self) -> None:
        self.start()
        self.tcp(("10.0.0.1", 1))
        for port in range(2, 12):  # ten refused: the source already has its one connection
            self.tcp(("10.0.0.1", port))
        refused = self.named("connection.refused")
        self.assertEqual(len(refused), 10)
        self.assertEqual(self.counter("access", "connections-refused:max-per-source"), 10)
        self.assertEqual([e["remote"] for e in refused], [f"10.0.0.1:{p}" for p in range(2, 12)])
        for event in refused:
            self.assertEqual(
                (event["adjacency"], event["reason"], event["limit"]),
                ("access", "max-per-source", 1),
            )
        # one text line; nine events with no text, kept for structured observers
        self.assertEqual(len([t for t in self.texts() if "refused" in t]), 1)
        held = [e for e in refused if e.get("suppressed")]
        self.assertEqual(len(held), 9)
        for event in held:
            self.assertIsNone(event["log_format"])
            self.assertEqual(formatEvent(event), "")
            self.assertIn("max-connections-per-source", event["held_format"])
        # the next line after the interval says how many were held
        self.reactor.advance(10)
        self.tcp(("10.0.0.1", 99))
        self.assertIn("(9 similar lines suppressed)", self.texts()[-1])
        self.assertEqual(self.named("connection.refused")[-1]["held"], 9)

    def test_stop_reports_what_is_still_held(self) -> None:
        self.start()
        self.tcp(("10.0.0.1", 1))
        for port in range(2, 5):
            self.tcp(("10.0.0.1", port))
        self.successResultOf(self.runtime.stop())
        [summary] = self.named("log.suppressed")
        self.assertEqual(
            (summary["rate_key"], summary["held"]), ("connections-refused:max-per-source", 2)
        )
        self.assertEqual(
            formatEvent(summary), "connections-refused:max-per-source: 2 similar lines suppressed"
        )

    def flood(self, first_port: int, count: int) -> None:
        """``count`` connections from 10.0.0.1 refused (its one connection is open already)."""
        for port in range(first_port, first_port + count):
            self.tcp(("10.0.0.1", port))

    def test_a_flood_is_capped_per_interval_and_the_rest_only_counted(self) -> None:
        self.assertEqual(MAX_HELD_EVENTS, 100)
        self.start()
        self.tcp(("10.0.0.1", 1))
        self.flood(2, 250)
        refused = self.named("connection.refused")
        self.assertEqual(self.counter("access", "connections-refused:max-per-source"), 250)
        # one text line, then MAX_HELD_EVENTS of the 249 held as events; 149 dropped
        self.assertEqual(len(refused), 1 + MAX_HELD_EVENTS)
        self.assertEqual([e.get("suppressed", False) for e in refused].count(True), 100)
        self.assertEqual(refused[-1]["remote"], "10.0.0.1:102")
        self.assertEqual(len([t for t in self.texts() if "refused" in t]), 1)
        # a few seconds later, still the same interval: still only counted
        self.reactor.advance(9)
        self.flood(1000, 10)
        self.assertEqual(len(self.named("connection.refused")), 1 + MAX_HELD_EVENTS)
        # the next interval's line says how many were held and how many never logged
        self.reactor.advance(1)
        self.tcp(("10.0.0.1", 2000))
        line = self.named("connection.refused")[-1]
        self.assertEqual((line["held"], line["dropped"]), (259, 159))
        self.assertIsNotNone(line["log_format"])
        self.assertIn(
            "(259 similar lines suppressed, 159 of them not logged at all)", self.texts()[-1]
        )
        # and the cap starts again
        self.flood(3000, 3)
        self.assertEqual(
            [e.get("suppressed", False) for e in self.named("connection.refused")[-4:]],
            [False, True, True, True],
        )
        self.assertEqual(self.counter("access", "connections-refused:max-per-source"), 264)

    def test_stop_reports_the_dropped_events(self) -> None:
        self.start()
        self.tcp(("10.0.0.1", 1))
        self.flood(2, MAX_HELD_EVENTS + 8)
        self.successResultOf(self.runtime.stop())
        [summary] = self.named("log.suppressed")
        self.assertEqual((summary["held"], summary["dropped"]), (MAX_HELD_EVENTS + 7, 7))
        self.assertEqual(
            formatEvent(summary),
            "connections-refused:max-per-source: 107 similar lines suppressed, "
            "7 of them not logged at all",
        )

    def test_caps_are_per_counter(self) -> None:
        """A flood of one refusal reason does not use up the events of another."""
        self.runtime.ratelog.max_held_events = 2
        self.start()
        self.tcp(("10.0.0.1", 1))
        self.flood(2, 5)
        for port in range(1, 5):
            self.tcp(("172.16.0.1", port))
        by_reason = [e["reason"] for e in self.named("connection.refused")]
        self.assertEqual(by_reason.count("max-per-source"), 3)
        self.assertEqual(by_reason.count("no-adjacency"), 3)
        self.assertEqual(self.counter(None, "connections-refused:no-adjacency"), 4)

    def test_tls_on_plain(self) -> None:
        self.start()
        conn, _wire = self.tcp(PHONE)
        conn.dataReceived(b"\x16\x03\x01\x02\x00\x01")
        [event] = self.named("connection.closed")
        self.assertEqual(
            (event["adjacency"], event["reason"], event["remote"]),
            ("access", "tls-on-plain", "10.0.0.5:5062"),
        )

    def test_udp_junk_flood_is_not_an_event_per_datagram(self) -> None:
        """Per-datagram drops keep the plain rate limit: held lines make no event at all."""
        self.start()
        protocol = self.reactor.udp_protocol(5060, HOST)
        for _ in range(20):
            protocol.datagramReceived(OPTIONS, ("172.16.0.1", 5060))
        dropped = self.named("message.dropped")
        self.assertEqual(len(dropped), 1)
        self.assertEqual(dropped[0]["reason"], "no-adjacency")

    def test_tls_identity_mismatch_drop_always_an_event(self) -> None:
        self.stack.reply = drop("tls-identity-mismatch")
        self.start()
        for _ in range(3):
            self.udp(OPTIONS, TRUNK)
        dropped = self.named("message.dropped")
        self.assertEqual(len(dropped), 3)
        self.assertEqual(
            {(e["adjacency"], e["reason"]) for e in dropped}, {("trunk", "tls-identity-mismatch")}
        )
        self.runtime.process([Dropped(Flow("UDP", (HOST, 5060), PHONE), "unparseable")])
        self.assertEqual(self.named("message.dropped")[-1]["reason"], "unparseable")


class TlsRefusalTests(TlsRuntimeMixin, EventsMixin):
    def test_handshake_failure(self) -> None:
        self.start()
        self.inbound_tls(Peer(greeting=OPTIONS))
        [event] = self.named("tls.handshake-failed")
        self.assertEqual((event["adjacency"], event["remote"]), ("core", "10.9.9.9:40000"))
        self.assertTrue(event["why"])

    def test_handshake_timeout(self) -> None:
        self.start()
        _conn, _wire, pump = self.inbound_tls(Peer())
        self.reactor.advance(self.limits.tls_handshake_timeout)
        pump.flush()
        [closed] = self.named("connection.closed")
        self.assertEqual(closed["reason"], "handshake-timeout")

    def test_verification_failure(self) -> None:
        """A client certificate from a CA the SBC does not trust: both events."""
        self.start()
        other_ca = make_ca("other CA")
        rogue = issue(other_ca, "lab.test", sip_uris=["sip:lab.test"])
        creator = client_connection_creator(
            tls_identity(self, rogue, self.ca, other_ca), "127.0.0.1"
        )
        client = TLSMemoryBIOFactory(
            creator, True, OneProtocolFactory(Peer()), clock=self.reactor
        ).buildProtocol(None)
        self.inbound_tls(client)
        [failed] = self.named("tls.handshake-failed")
        [refused] = self.named("tls.verification-failed")
        self.assertEqual((failed["adjacency"], refused["adjacency"]), ("core", "core"))
        self.assertEqual(refused["remote"], "10.9.9.9:40000")
        self.assertIn("peer certificate refused", formatEvent(refused))


class JsonEndToEndTests(EventsMixin):
    limits = Limits(max_connections_per_source=1, **NO_FLOOD_DEFENCE)

    def test_every_refused_connection_is_a_json_line_with_text(self) -> None:
        stream = io.StringIO()
        observer = JsonLinesObserver(stream)
        self.runtime.log = Logger(namespace="sbc.transport", observer=observer)
        self.runtime.ratelog.log = self.runtime.log
        self.start()
        self.tcp(("10.0.0.1", 1))
        for port in range(2, 6):
            self.tcp(("10.0.0.1", port))
        records = [json.loads(line) for line in stream.getvalue().splitlines()]
        refused = [r for r in records if r.get("event") == "connection.refused"]
        self.assertEqual(len(refused), 4)
        for record in refused:
            self.assertEqual(record["level"], "warn")
            self.assertEqual(record["namespace"], "sbc.transport")
            self.assertEqual(record["reason"], "max-per-source")
            self.assertIn("refused", record["message"])
            self.assertIn(record["remote"], record["message"])
        self.assertEqual([r.get("suppressed", False) for r in refused], [False, True, True, True])

    def test_a_flood_writes_a_bounded_number_of_json_lines(self) -> None:
        stream = io.StringIO()
        observer = JsonLinesObserver(stream)
        self.runtime.log = Logger(namespace="sbc.transport", observer=observer)
        self.runtime.ratelog.log = self.runtime.log
        self.start()
        written = len(stream.getvalue().splitlines())
        self.tcp(("10.0.0.1", 1))
        for port in range(2, 1002):  # 1000 refused in one interval
            self.tcp(("10.0.0.1", port))
        lines = stream.getvalue().splitlines()[written:]
        self.assertEqual(len(lines), 1 + MAX_HELD_EVENTS)
        self.reactor.advance(10)
        self.tcp(("10.0.0.1", 5000))
        last = json.loads(stream.getvalue().splitlines()[-1])
        self.assertEqual((last["held"], last["dropped"]), (999, 899))
        self.assertIn(
            "999 similar lines suppressed, 899 of them not logged at all", last["message"]
        )


class RateLimitedLogEventTests(SynchronousTestCase):
    def test_always_emits_held_lines_without_text(self) -> None:
        reactor = Reactor()
        events: list[Event] = []
        log = RateLimitedLog(Logger(observer=cast(ILogObserver, events.append)), reactor, 5)
        self.assertTrue(log.emit("k", "line {n}", always=True, n=1))
        self.assertFalse(log.emit("k", "line {n}", always=True, n=2))
        self.assertFalse(log.emit("k", "line {n}", n=3))
        self.assertEqual([formatEvent(e) for e in events], ["line 1", ""])
        self.assertEqual(events[1]["n"], 2)
        reactor.advance(5)
        log.emit("k", "line {n}", n=4)
        self.assertEqual(formatEvent(events[-1]), "line 4 (2 similar lines suppressed)")

    def test_held_events_capped_until_the_next_line(self) -> None:
        reactor = Reactor()
        events: list[Event] = []
        log = RateLimitedLog(
            Logger(observer=cast(ILogObserver, events.append)), reactor, 5, max_held_events=2
        )
        for n in range(6):
            log.emit("k", "line {n}", always=True, n=n)
        self.assertEqual([e["n"] for e in events], [0, 1, 2])
        reactor.advance(5)
        log.emit("k", "line {n}", always=True, n=6)
        self.assertEqual(
            formatEvent(events[-1]),
            "line 6 (5 similar lines suppressed, 3 of them not logged at all)",
        )
        self.assertEqual((events[-1]["held"], events[-1]["dropped"]), (5, 3))
        log.emit("k", "line {n}", always=True, n=7)
        log.flush()
        self.assertEqual(events[-2]["n"], 7)
        self.assertEqual((events[-1]["held"], events[-1]["dropped"]), (1, 0))
        self.assertEqual(formatEvent(events[-1]), "k: 1 similar lines suppressed")

    def test_flush_with_nothing_held(self) -> None:
        events: list[Event] = []
        log = RateLimitedLog(Logger(observer=cast(ILogObserver, events.append)), Reactor(), 5)
        log.emit("k", "once")
        log.flush()
        self.assertEqual(len(events), 1)


class EventNameTests(SynchronousTestCase):
    def test_names(self) -> None:
        self.assertEqual(event_name("connections-refused:max-per-source"), "connection.refused")
        self.assertEqual(event_name("connections-closed:tls-on-plain"), "connection.closed")
        self.assertEqual(event_name("handshake-failures"), "tls.handshake-failed")
        self.assertEqual(event_name("verification-failures"), "tls.verification-failed")
        self.assertEqual(event_name("drops:too-large"), "message.dropped")
        self.assertEqual(event_name("something-new"), "transport.something-new")


class ListenerEventTests(EventsMixin):
    """Listener and attached-set changes are events with a name (info)."""

    def test_listeners_opened_and_closed(self) -> None:
        self.start()
        opened = self.named("listener.opened")
        self.assertEqual(
            sorted(e["listener"] for e in opened),
            sorted(str(k) for k in (TCP_KEY, UDP_KEY, TLS_KEY)),
        )
        by_listener = {e["listener"]: e for e in opened}
        self.assertEqual(by_listener[str(UDP_KEY)]["adjacencies"], ["access", "trunk"])
        self.assertEqual(by_listener[str(TLS_KEY)]["adjacencies"], ["core"])
        self.assertEqual(formatEvent(by_listener[str(TLS_KEY)]), "listening on TLS 127.0.0.1:5061")
        self.assertEqual(self.named("listener.closed"), [])
        self.successResultOf(self.runtime.stop())
        closed = self.named("listener.closed")
        self.assertEqual(sorted(e["listener"] for e in closed), sorted(by_listener))
        self.assertEqual(formatEvent(closed[0]), f"stopped listening on {closed[0]['listener']}")

    def test_listener_failure_has_its_event(self) -> None:
        self.reactor.refuse_udp.add(5060)
        self.failureResultOf(self.runtime.start())
        [failed] = self.named("listener.failed")
        self.assertEqual(failed["listener"], str(UDP_KEY))
        self.assertNotIn(str(UDP_KEY), [e["listener"] for e in self.named("listener.opened")])

    def test_attach_and_detach(self) -> None:
        self.start()
        spare = adjacency("spare", port=5070)
        self.successResultOf(self.runtime.apply(AdjacencyTable([*self.configs[:3], spare])))
        [attached] = self.named("adjacency.attached")
        self.assertEqual(attached["adjacency"], "spare")
        self.assertEqual(formatEvent(attached), "adjacency spare attached")
        self.assertIn(
            str(ListenerKey(HOST, 5070, "TCP")),
            [e["listener"] for e in self.named("listener.opened")],
        )
        self.successResultOf(self.runtime.apply(AdjacencyTable(self.configs[1:3])))
        detached = self.named("adjacency.detached")
        self.assertEqual([e["adjacency"] for e in detached], ["access", "spare"])
        self.assertEqual(detached[0]["drain_time"], Limits().detach_drain_time)
        self.assertEqual(
            sorted(e["listener"] for e in self.named("listener.closed")),
            sorted(str(ListenerKey(HOST, 5070, t)) for t in ("TCP", "UDP")),
        )
        self.assertEqual(len(self.named("adjacency.attached")), 1)

    def test_no_change_no_event(self) -> None:
        self.start()
        self.successResultOf(self.runtime.apply(AdjacencyTable(self.configs)))
        self.assertEqual(self.named("adjacency.attached") + self.named("adjacency.detached"), [])
