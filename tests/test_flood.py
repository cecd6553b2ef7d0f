"""sbc.flood: rate windows, bans, evictions, release, User-Agent matching, caps (pure, no clock).

Time is the ``now`` argument throughout; nothing sleeps.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from sbc.config import Limits
from sbc.counters import Counters
from sbc.flood import (
    AUTH_FAILURES,
    RATE_LIMIT,
    USER_AGENT,
    Ban,
    RateCap,
    RateWindows,
    SourceGuard,
    Verdict,
    user_agent_of,
)

SCANNER = (
    b"OPTIONS sip:100@192.0.2.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK-1\r\n"
    b"From: <sip:100@1.1.1.1>;tag=1\r\n"
    b"To: <sip:100@1.1.1.1>\r\n"
    b"Call-ID: 1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"User-Agent: friendly-scanner\r\n"
    b"Content-Length: 0\r\n\r\n"
)
PHONE = SCANNER.replace(b"friendly-scanner", b"Yealink SIP-T46S 66.86.0.15")


class RateWindowsTests(SynchronousTestCase):
    def test_fixed_window_opens_with_the_first_event(self) -> None:
        windows = RateWindows(10)
        results = [windows.hit("a", 100.0 + i, limit=3, seconds=10) for i in range(4)]
        self.assertEqual(results, [False, False, False, True])
        # 10 s after the first event a new window opens
        self.assertFalse(windows.hit("a", 110.0, limit=3, seconds=10))
        self.assertEqual(windows.count("a"), 1)

    def test_keys_are_independent(self) -> None:
        windows = RateWindows(10)
        for _ in range(3):
            windows.hit("a", 0.0, 2, 10)
        self.assertFalse(windows.hit("b", 0.0, 2, 10))
        self.assertEqual((windows.count("a"), windows.count("b")), (3, 1))

    def test_oldest_window_forgotten_when_full(self) -> None:
        windows = RateWindows(3)
        for key, at in (("a", 0.0), ("b", 1.0), ("c", 2.0)):
            windows.hit(key, at, 5, 10)
        windows.hit("a", 10.5, 5, 10)  # a's new window: a moves to the end
        windows.hit("d", 11.0, 5, 10)  # full: b (the oldest window) goes
        self.assertNotIn("b", windows)
        self.assertEqual(sorted(k for k in "abcd" if k in windows), ["a", "c", "d"])
        self.assertEqual((len(windows), windows.evicted), (3, 1))

    def test_resize_forgets_the_oldest(self) -> None:
        windows = RateWindows(5)
        for i, key in enumerate("abcde"):
            windows.hit(key, float(i), 5, 10)
        windows.resize(2)
        self.assertEqual([k for k in "abcde" if k in windows], ["d", "e"])

    def test_clock_going_back_opens_a_new_window(self) -> None:
        windows = RateWindows(5)
        windows.hit("a", 100.0, 1, 10)
        self.assertFalse(windows.hit("a", 50.0, 1, 10))


class RateCapTests(SynchronousTestCase):
    def test_per_second_and_refusals_not_counted(self) -> None:
        cap = RateCap()
        self.assertEqual([cap.allow(5.0, 2) for _ in range(4)], [True, True, False, False])
        self.assertTrue(cap.full(5.9, 2))
        self.assertFalse(cap.full(6.0, 2))
        self.assertTrue(cap.allow(6.0, 2))


class UserAgentTests(SynchronousTestCase):
    def test_value_of_a_request(self) -> None:
        self.assertEqual(user_agent_of(SCANNER), "friendly-scanner")

    def test_any_case_and_spacing(self) -> None:
        data = SCANNER.replace(b"User-Agent: ", b"user-AGENT \t:  ")
        self.assertEqual(user_agent_of(data), "friendly-scanner")

    def test_responses_and_missing_header(self) -> None:
        response = b"SIP/2.0 200 OK\r\nUser-Agent: friendly-scanner\r\n\r\n"
        self.assertIsNone(user_agent_of(response))
        self.assertIsNone(user_agent_of(SCANNER.replace(b"User-Agent", b"Server")))

    def test_body_is_not_searched(self) -> None:
        data = SCANNER.replace(b"User-Agent: friendly-scanner\r\n", b"") + b"\nUser-Agent: x\r\n"
        self.assertIsNone(user_agent_of(data))

    def test_undecodable_bytes(self) -> None:
        self.assertEqual(user_agent_of(SCANNER.replace(b"friendly", b"\xff")), "\ufffd-scanner")


class GuardMixin(SynchronousTestCase):
    limits = Limits(source_rate_requests=5, source_rate_seconds=10, source_ban_time=60)

    def setUp(self) -> None:
        self.counters = Counters()
        self.events: list[dict[str, Any]] = []
        self.guard = SourceGuard(
            self.limits, counters=self.counters, log=Logger(observer=self.events.append)
        )
        self.bans: list[Ban] = []
        self.changes = 0
        self.guard.on_ban = self.bans.append
        self.guard.on_change = self._changed

    def _changed(self) -> None:
        self.changes += 1

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def flood(self, source: str, count: int, now: float = 0.0) -> list[Verdict]:
        return [self.guard.screen(source, "access", PHONE, now) for _ in range(count)]


class RateLimitTests(GuardMixin):
    def test_the_message_over_the_limit_bans(self) -> None:
        verdicts = self.flood("203.0.113.9", 8)
        self.assertEqual(
            verdicts,
            [Verdict.PASS] * 5 + [Verdict.RATE_LIMIT] + [Verdict.BANNED] * 2,
        )
        [ban] = self.bans
        self.assertEqual(
            (ban.address, ban.adjacency, ban.reason, ban.since, ban.until, ban.dropped),
            ("203.0.113.9", "access", RATE_LIMIT, 0.0, 60.0, 3),
        )
        self.assertEqual(self.counters.get("access", "bans:rate-limit"), 1)

    def test_logged_once_per_ban(self) -> None:
        self.flood("203.0.113.9", 500)
        [banned] = self.named("source.banned")
        self.assertEqual(
            (banned["address"], banned["adjacency"], banned["reason"], banned["ban_time"]),
            ("203.0.113.9", "access", "rate-limit", 60),
        )
        self.assertIn("more than 5 messages within 10 s", banned["detail"])
        self.assertEqual(self.named("source.released"), [])

    def test_spread_over_windows_never_bans(self) -> None:
        """A phone: 5 messages every 10 s, for an hour."""
        for window in range(360):
            verdicts = self.flood("198.51.100.7", 5, now=window * 10.0)
            self.assertEqual(verdicts, [Verdict.PASS] * 5)
        self.assertEqual(self.bans, [])

    def test_sources_are_independent(self) -> None:
        self.flood("203.0.113.9", 6)
        self.assertEqual(self.flood("198.51.100.7", 5), [Verdict.PASS] * 5)

    def test_connections_count_too(self) -> None:
        for _ in range(5):
            self.assertIs(self.guard.screen("203.0.113.9", "access", None, 0.0), Verdict.PASS)
        self.assertIs(self.guard.screen("203.0.113.9", "access", None, 0.0), Verdict.RATE_LIMIT)
        self.assertIn("messages or connections", self.named("source.banned")[0]["detail"])


class BanLifetimeTests(GuardMixin):
    def test_ban_ends_after_ban_time_and_counting_starts_over(self) -> None:
        self.flood("203.0.113.9", 6, now=0.0)
        self.assertIs(self.guard.screen("203.0.113.9", "access", PHONE, 59.9), Verdict.BANNED)
        self.assertEqual(self.guard.next_expiry(), 60.0)
        self.assertEqual(self.guard.expire(59.9), 0)
        self.assertEqual(self.guard.expire(60.0), 1)
        [released] = self.named("source.released")
        self.assertEqual(
            (released["address"], released["why"], released["dropped"], released["banned_for"]),
            ("203.0.113.9", "expired", 2, 60),
        )
        self.assertIsNone(self.guard.next_expiry())
        self.assertEqual(self.flood("203.0.113.9", 5, now=60.0), [Verdict.PASS] * 5)

    def test_expired_ban_found_by_the_next_message(self) -> None:
        """Even if nobody called expire(), a message after the ban's end passes."""
        self.flood("203.0.113.9", 6, now=0.0)
        self.assertIs(self.guard.screen("203.0.113.9", "access", PHONE, 61.0), Verdict.PASS)
        self.assertEqual(self.named("source.released")[0]["why"], "expired")
        self.assertEqual(self.guard.expire(100.0), 0)  # already gone: not released twice
        self.assertEqual(len(self.named("source.released")), 1)

    def test_release_now(self) -> None:
        self.flood("203.0.113.9", 6)
        ban = self.guard.release("203.0.113.9", 5.0)
        assert ban is not None
        self.assertEqual(ban.reason, RATE_LIMIT)
        self.assertIsNone(self.guard.banned("203.0.113.9", 5.0))
        self.assertEqual(self.named("source.released")[0]["why"], "cleared")
        # the old window is forgotten with the ban: a fresh budget
        self.assertEqual(self.flood("203.0.113.9", 5, now=5.0), [Verdict.PASS] * 5)
        self.assertIsNone(self.guard.release("192.0.2.1", 5.0))
        self.assertIsNone(self.guard.next_expiry())

    def test_release_all(self) -> None:
        for source in ("203.0.113.9", "203.0.113.10"):
            self.flood(source, 6)
        self.assertEqual(self.guard.release_all(1.0), 2)
        self.assertEqual(self.guard.bans(1.0), [])

    def test_listing_oldest_first_with_remaining(self) -> None:
        self.flood("203.0.113.10", 6, now=5.0)
        self.flood("203.0.113.9", 6, now=0.0)
        self.assertEqual(
            [(b.address, b.remaining(30.5)) for b in self.guard.bans(30.5)],
            [("203.0.113.9", 30), ("203.0.113.10", 35)],
        )

    def test_timer_is_told(self) -> None:
        self.flood("203.0.113.9", 6)
        self.assertEqual(self.changes, 1)
        self.guard.expire(60.0)
        self.assertEqual(self.changes, 2)

    def test_a_new_ban_time_applies_to_new_bans(self) -> None:
        self.flood("203.0.113.9", 6, now=0.0)
        self.guard.configure(Limits(source_rate_requests=5, source_ban_time=600))
        self.flood("203.0.113.10", 6, now=1.0)
        self.assertEqual([b.until for b in self.guard.bans(2.0)], [60.0, 601.0])


class EvictionTests(GuardMixin):
    limits = Limits(
        source_rate_requests=1, source_rate_seconds=10, source_ban_time=60, max_tracked_sources=16
    )

    def test_windows_bounded(self) -> None:
        for i in range(1000):
            self.guard.screen(f"10.0.{i // 256}.{i % 256}", "access", PHONE, 0.0)
        tracked = self.guard.tracked()
        self.assertEqual(tracked["windows"], 16)
        self.assertEqual(tracked["evicted"], 1000 - 16)

    def test_bans_bounded_oldest_released_first(self) -> None:
        for i in range(20):
            self.flood(f"10.0.0.{i}", 2, now=float(i))
        bans = self.guard.bans(20.0)
        self.assertEqual(len(bans), 16)
        self.assertEqual(bans[0].address, "10.0.0.4")
        evicted = [e for e in self.named("source.released") if e["why"] == "evicted"]
        self.assertEqual([e["address"] for e in evicted], [f"10.0.0.{i}" for i in range(4)])
        # the expiry heap does not grow without bound either
        self.assertLessEqual(len(self.guard._ends), 2 * 16 + 64)
        self.assertEqual(self.guard.next_expiry(), 64.0)


class UserAgentBanTests(GuardMixin):
    def setUp(self) -> None:
        super().setUp()
        self.guard.configure(self.limits, ["Friendly-Scanner", "sipcli", "VaxSIPUserAgent"])

    def test_a_scanner_request_bans_at_once(self) -> None:
        verdict = self.guard.screen("203.0.113.9", "access", SCANNER, 0.0)
        self.assertIs(verdict, Verdict.USER_AGENT)
        self.assertIs(self.guard.screen("203.0.113.9", "access", PHONE, 0.0), Verdict.BANNED)
        [banned] = self.named("source.banned")
        self.assertEqual(banned["reason"], USER_AGENT)
        self.assertIn(
            "'friendly-scanner' contains blocked-user-agent 'friendly-scanner'", banned["detail"]
        )
        self.assertEqual(self.counters.get("access", "bans:user-agent"), 1)

    def test_substring_any_case(self) -> None:
        data = SCANNER.replace(b"friendly-scanner", b"sipcli/v1.8")
        self.assertIs(self.guard.screen("203.0.113.9", "access", data, 0.0), Verdict.USER_AGENT)

    def test_phones_pass(self) -> None:
        self.assertIs(self.guard.screen("198.51.100.7", "access", PHONE, 0.0), Verdict.PASS)

    def test_off_by_default(self) -> None:
        guard = SourceGuard(self.limits)
        self.assertEqual(guard.user_agents, ())
        self.assertIs(guard.screen("203.0.113.9", "access", SCANNER, 0.0), Verdict.PASS)


class AuthFailureTests(GuardMixin):
    limits = Limits(auth_failure_limit=3, auth_failure_seconds=60, source_ban_time=60)

    def test_the_failure_over_the_limit_bans(self) -> None:
        results = [
            self.guard.note_auth_failure("203.0.113.9", "access", float(i)) for i in range(4)
        ]
        self.assertEqual(results, [False, False, False, True])
        [ban] = self.guard.bans(4.0)
        self.assertEqual((ban.reason, ban.adjacency), (AUTH_FAILURES, "access"))
        self.assertIs(self.guard.screen("203.0.113.9", "access", PHONE, 5.0), Verdict.BANNED)
        self.assertEqual(self.counters.get("access", "bans:auth-failures"), 1)
        self.assertIn(
            "more than 3 failed authentications", self.named("source.banned")[0]["detail"]
        )

    def test_failures_spread_out_do_not_ban(self) -> None:
        for i in range(10):
            self.assertFalse(self.guard.note_auth_failure("203.0.113.9", "access", i * 30.0))

    def test_trusted_adjacency_and_banned_source_ignored(self) -> None:
        self.guard.trusted = frozenset({"core"})
        for i in range(10):
            self.assertFalse(self.guard.note_auth_failure("192.0.2.5", "core", float(i)))
        self.guard.ban("203.0.113.9", "access", RATE_LIMIT, 0.0)
        self.assertFalse(self.guard.note_auth_failure("203.0.113.9", "access", 1.0))
        self.assertEqual(len(self.guard.bans(1.0)), 1)


class ConnectionCapTests(SynchronousTestCase):
    def test_new_connections_and_handshakes(self) -> None:
        guard = SourceGuard(
            Limits(max_new_connections_per_second=3, max_tls_handshakes_per_second=2)
        )
        self.assertEqual(
            [guard.allow_connection(True, 0.0) for _ in range(3)],
            [None, None, "handshake-rate"],
        )
        self.assertEqual(
            [guard.allow_connection(False, 0.5) for _ in range(2)], [None, "connection-rate"]
        )
        self.assertIsNone(guard.allow_connection(True, 1.0))
