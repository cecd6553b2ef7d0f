"""The flood defence inside the runtime: before parsing, per adjacency trust, bans on time.

The topology of tests.transport.test_runtime: ``access`` (untrusted,
10.0.0.0/8) and ``trunk`` (trusted-unencrypted, 192.0.2.0/24) share
127.0.0.1:5060 UDP+TCP; ``core`` is TLS (trusted-encrypted) on 5061.
"""

from __future__ import annotations

from typing import Any

from sbc.adjacencies import AdjacencyTable
from sbc.config import Limits
from tests.transport.fakes import OPTIONS, Peer, adjacency
from tests.transport.test_runtime import RuntimeMixin, TlsRuntimeMixin

PHONE = ("10.0.0.5", 5062)
SCANNER = ("10.6.6.6", 5060)
TRUNK = ("192.0.2.9", 5060)

LIMITS = Limits(source_rate_requests=10, source_rate_seconds=10, source_ban_time=60)


class DatagramTests(RuntimeMixin):
    limits = LIMITS

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log_events if e.get("event") == name]

    def test_untrusted_source_banned_before_parsing(self) -> None:
        for _ in range(100):
            self.udp(OPTIONS, SCANNER)
        self.assertEqual(len(self.stack.received), 10)
        self.assertEqual(self.counter("access", "messages-received"), 10)
        self.assertEqual(self.counter("access", "drops:rate-limit"), 1)
        self.assertEqual(self.counter("access", "drops:banned"), 89)
        self.assertEqual(self.counter("access", "bans:rate-limit"), 1)
        [banned] = self.named("source.banned")
        self.assertEqual((banned["address"], banned["adjacency"]), ("10.6.6.6", "access"))
        # garbage from a banned source is not even looked at (no drops:unparseable, no 400)
        self.udp(b"\x16\x03garbage", SCANNER)
        self.assertEqual(self.counter("access", "drops:tls-on-plain"), 0)
        self.assertEqual(self.counter("access", "drops:banned"), 90)

    def test_other_sources_unaffected(self) -> None:
        for _ in range(11):
            self.udp(OPTIONS, SCANNER)
        for _ in range(10):
            self.udp(OPTIONS, PHONE)
        self.assertEqual([r.flow.remote for r in self.stack.received[10:]], [PHONE] * 10)

    def test_trusted_adjacency_never_limited(self) -> None:
        for _ in range(1000):
            self.udp(OPTIONS, TRUNK)
        self.assertEqual(len(self.stack.received), 1000)
        self.assertEqual(self.runtime.guard.bans(self.reactor.seconds()), [])
        self.assertEqual(self.runtime.guard.tracked()["windows"], 0)

    def test_keepalives_never_count(self) -> None:
        for _ in range(1000):
            self.udp(b"\r\n\r\n", PHONE)
        self.assertEqual(self.counter("access", "keepalives"), 1000)
        self.udp(OPTIONS, PHONE)
        self.assertEqual(len(self.stack.received), 1)

    def test_released_on_time_by_the_runtime_timer(self) -> None:
        for _ in range(11):
            self.udp(OPTIONS, SCANNER)
        self.reactor.advance(59)
        self.assertEqual(self.named("source.released"), [])
        self.reactor.advance(1)
        [released] = self.named("source.released")
        self.assertEqual((released["address"], released["why"]), ("10.6.6.6", "expired"))
        self.udp(OPTIONS, SCANNER)
        self.assertEqual(len(self.stack.received), 11)

    def test_blocked_user_agent(self) -> None:
        self.runtime.guard.configure(LIMITS, ["friendly-scanner"])
        scan = OPTIONS.replace(b"Content-Length", b"User-Agent: friendly-scanner\r\nContent-Length")
        self.udp(scan, SCANNER)
        self.udp(OPTIONS, SCANNER)
        self.assertEqual(self.stack.received, [])
        self.assertEqual(self.counter("access", "drops:user-agent"), 1)
        self.assertEqual(self.counter("access", "drops:banned"), 1)
        # the same User-Agent from a trusted peer is not screened
        self.udp(scan, TRUNK)
        self.assertEqual(len(self.stack.received), 1)

    def test_a_commit_that_trusts_the_adjacency_stops_screening(self) -> None:
        configs = [
            adjacency("access", remote=("10.0.0.0/8",), security="trusted-unencrypted"),
            adjacency("trunk", remote=("192.0.2.0/24",), security="trusted-unencrypted"),
        ]
        self.successResultOf(self.runtime.apply(AdjacencyTable(configs), LIMITS))
        for _ in range(100):
            self.udp(OPTIONS, SCANNER)
        self.assertEqual(len(self.stack.received), 100)

    def test_stop_disarms_the_ban_timer(self) -> None:
        for _ in range(11):
            self.udp(OPTIONS, SCANNER)
        self.successResultOf(self.runtime.stop())
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class StreamTests(RuntimeMixin):
    limits = LIMITS

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def test_messages_on_a_connection_count_and_the_ban_closes_it(self) -> None:
        first, wire = self.tcp(("10.6.6.6", 40000))
        _, other_wire = self.tcp(("10.6.6.6", 40001))
        # the two connections counted 2; 8 messages pass, the 9th bans
        first.dataReceived(OPTIONS * 20)
        self.assertEqual(len(self.stack.received), 8)
        self.assertTrue(wire.aborted)
        self.assertTrue(other_wire.aborted)
        self.assertEqual(self.counter("access", "connections-closed:banned"), 2)
        self.assertEqual(self.counter("access", "drops:rate-limit"), 1)

    def test_new_connections_from_a_banned_source_refused_before_any_byte(self) -> None:
        for _ in range(11):
            self.udp(OPTIONS, SCANNER)
        _, wire = self.tcp(("10.6.6.6", 40000))
        self.assertTrue(wire.aborted)
        self.assertEqual(wire.value(), b"")
        self.assertEqual(self.counter("access", "connections-refused:banned"), 1)
        self.assertEqual(self.counter("access", "connections-accepted"), 0)

    def test_trusted_connections_not_counted(self) -> None:
        for port in range(20):
            _, wire = self.tcp(("192.0.2.9", 40000 + port))
            self.assertFalse(wire.aborted)
        conn, wire = self.tcp(("192.0.2.9", 41000))
        conn.dataReceived(OPTIONS * 50)
        self.assertFalse(wire.aborted)
        self.assertEqual(len(self.stack.received), 50)


class ConnectionRateTests(RuntimeMixin):
    limits = Limits(max_new_connections_per_second=3, max_connections_per_source=100)

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def test_global_cap_per_second(self) -> None:
        aborted = [self.tcp((f"10.0.0.{i}", 40000))[1].aborted for i in range(5)]
        self.assertEqual(aborted, [False, False, False, True, True])
        self.assertEqual(self.counter("access", "connections-refused:connection-rate"), 2)
        # trusted peers are under the same global cap (it protects the whole box)
        self.assertTrue(self.tcp(TRUNK)[1].aborted)
        lines = self.log_lines()
        self.assertIn(
            "more than 3 new connections per second (max-new-connections-per-second)", lines[0]
        )
        self.reactor.advance(1)
        self.assertFalse(self.tcp(("10.0.0.9", 40000))[1].aborted)


class HandshakeRateTests(TlsRuntimeMixin):
    limits = Limits(max_tls_handshakes_per_second=2, max_connections_per_source=100)

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def test_tls_connections_over_the_cap_refused_before_the_handshake(self) -> None:
        results = []
        for port in range(3):
            conn, wire, _ = self.inbound_tls(self.tls_client(Peer()), ("10.9.9.9", 40000 + port))
            results.append((conn.accepted, wire.disconnecting or wire.disconnected))
        self.assertEqual(results[:2], [(True, False), (True, False)])
        self.assertFalse(results[2][0])
        self.assertEqual(self.counter("core", "connections-refused:handshake-rate"), 1)
        self.assertEqual(self.counter("core", "handshakes"), 2)
        # plain TCP is not a handshake
        self.assertFalse(self.tcp(("10.0.0.1", 40000))[1].aborted)


class GuardedAdjacenciesTests(RuntimeMixin):
    """Which adjacencies the flood guard leaves alone."""

    def test_phones_adjacency_is_guarded_like_an_untrusted_one(self) -> None:
        import attrs

        from sbc.config import ClientCertificate
        from sbc.transport.runtime import _trusted_names

        trunk = adjacency("trunk", port=5070, security="trusted-unencrypted")
        peers = adjacency("peers", port=5061, security="trusted-encrypted")
        phones = attrs.evolve(
            adjacency("phones", port=5063, security="trusted-encrypted"),
            client_certificate=ClientCertificate.OPTIONAL,
        )
        access = adjacency("access", port=5060)
        table = AdjacencyTable([trunk, peers, phones, access])
        self.assertEqual(_trusted_names(table), frozenset({"trunk", "peers"}))
