"""The call decision log (sbc.b2bua.calllog): events of real calls through SipStack + SbcCore."""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable
from sbc.b2bua import calllog
from sbc.config import parse_config
from sbc.core import SbcCore
from sbc.errors import SipError
from sbc.logs import event_as_json_line
from sbc.routing import Router
from sbc.sip.stack import SipStack
from tests.b2bua.test_call import (
    A_FLOW,
    ACCESS,
    B2_FLOW,
    B_FLOW,
    CONFIG,
    CORE,
    CORE2,
    SDP,
    T_FLOW,
    TRUSTED,
    CallTestCase,
    Net,
    answer,
    invite,
)

Event = dict[str, Any]


class CallLogMixin(CallTestCase):
    """Collects the events of the ``sbc.calls`` logger."""

    def setUp(self) -> None:
        super().setUp()
        self.events: list[Event] = []
        self.patch(calllog.log, "observer", self.events.append)

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.get("event") == name]

    def names(self) -> list[str]:
        return [str(e["event"]) for e in self.events]

    def one(self, name: str) -> Event:
        [event] = self.named(name)
        return event

    def fields(self, event: Event, *keys: str) -> dict[str, Any]:
        return {k: event[k] for k in keys}


class AnsweredCallTests(CallLogMixin):
    def test_basic_call_decision_outcome_and_end(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.now = 2.0
        self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        [(_, ok)] = self.net.responses(sent)
        self.net.feed(
            invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKack1", body=b""), A_FLOW, ACCESS
        )
        self.net.now = 62.5
        bye = invite(method="BYE", to_tag=ok.to.tag, branch="z9hG4bKbye1", cseq=2, body=b"")
        self.net.feed(bye, A_FLOW, ACCESS)

        # two events for a whole basic call, none of them per message
        self.assertEqual(self.names(), ["call.routed", "call.ended"])
        routed, ended = self.events
        self.assertEqual(
            self.fields(
                routed,
                "call_id",
                "method",
                "adjacency",
                "trust",
                "secure",
                "route_path",
                "candidates",
                "outbound",
            ),
            {
                "call_id": 1,
                "method": "INVITE",
                "adjacency": "access",
                "trust": "untrusted",
                "secure": False,
                "route_path": ("stand-in",),
                "candidates": ("core", "core2"),
                "outbound": "core",
            },
        )
        self.assertEqual(str(routed["target"]), "sip:bob@remote.test")
        self.assertEqual(routed["log_level"], LogLevel.info)
        self.assertEqual(routed["log_namespace"], "sbc.calls")
        self.assertEqual(
            formatEvent(routed),
            "call 1 INVITE from access (untrusted) to sip:bob@remote.test: routed to core "
            "(candidates core, core2; route stand-in)",
        )
        self.assertEqual(
            self.fields(
                ended,
                "call_id",
                "method",
                "adjacency",
                "outcome",
                "status",
                "reason",
                "outbound",
                "setup_time",
                "duration",
                "why",
            ),
            {
                "call_id": 1,
                "method": "INVITE",
                "adjacency": "access",
                "outcome": "answered",
                "status": 200,
                "reason": "OK",
                "outbound": "core",
                "setup_time": 2.0,
                "duration": 60.5,
                "why": "BYE from the caller",
            },
        )
        self.assertEqual(ended["log_level"], LogLevel.info)
        self.assertEqual(
            formatEvent(ended),
            "call 1 INVITE from access: answered 200 OK (adjacency core) after 2.000 s, "
            "ended after 60.500 s (BYE from the caller)",
        )

    def test_callee_hangs_up(self) -> None:
        _a_invite, b_invite, _ok = self.establish()
        bye = answer(b_invite, 200)  # only for its dialog identifiers
        request = invite(method="BYE", body=b"")
        request.headers.set("Call-ID", bye.call_id)
        request.headers.set("From", bye.to)
        request.headers.set("To", bye.from_)
        request.headers.set("CSeq", "5 BYE")
        self.net.feed(request, B_FLOW, CORE)
        self.assertEqual(self.one("call.ended")["why"], "BYE from the callee")

    def test_call_ids_count_up(self) -> None:
        self.start()
        self.start(invite(call_id="a-call-2", branch="z9hG4bKa2"))
        self.assertEqual([e["call_id"] for e in self.named("call.routed")], [1, 2])

    def test_out_of_dialog_request_has_no_end_event(self) -> None:
        request = invite(method="OPTIONS", body=b"")
        sent = self.net.feed(request, A_FLOW, ACCESS)
        [(_, options)] = self.net.requests(sent, "OPTIONS")
        self.net.feed(answer(options, 200, contact=None), B_FLOW, CORE)
        self.assertEqual(self.names(), ["call.routed", "call.outcome"])
        self.assertEqual(self.events[0]["method"], "OPTIONS")
        self.assertEqual(self.events[1]["outcome"], "answered")


class JsonTests(CallLogMixin):
    def test_call_events_as_json_lines(self) -> None:
        self.start()
        [routed] = self.events
        record = json.loads(event_as_json_line(routed))
        self.assertEqual(record["message"], formatEvent(routed))
        self.assertEqual(record["event"], "call.routed")
        self.assertEqual(record["namespace"], "sbc.calls")
        self.assertEqual(record["route_path"], ["stand-in"])
        self.assertEqual(record["candidates"], ["core", "core2"])
        self.assertEqual(record["target"], "sip:bob@remote.test")
        self.assertNotIn("log_text", record)


class RefusalTests(CallLogMixin):
    def test_sips_from_untrusted_refused_403(self) -> None:
        sent = self.net.feed(invite("sips:bob@remote.test"), A_FLOW, ACCESS)
        self.assertEqual([m.status for _, m in self.net.responses(sent)], [100, 403])
        self.assertEqual(self.names(), ["call.refused"])
        refused = self.events[0]
        self.assertEqual(
            self.fields(
                refused,
                "call_id",
                "method",
                "adjacency",
                "trust",
                "secure",
                "status",
                "reason",
                "sip_warning",
                "rule",
            ),
            {
                "call_id": 1,
                "method": "INVITE",
                "adjacency": "access",
                "trust": "untrusted",
                "secure": True,
                "status": 403,
                "reason": "Forbidden",
                "sip_warning": "380 SIPS Not Allowed",
                "rule": "sips-from-untrusted",
            },
        )
        self.assertEqual(str(refused["target"]), "sips:bob@remote.test")
        self.assertEqual(refused["log_level"], LogLevel.info)
        self.assertEqual(
            formatEvent(refused),
            "call 1 INVITE from access (untrusted) to sips:bob@remote.test: refused 403 "
            "Forbidden (SIPS Not Allowed: untrusted caller)",
        )
        self.assertIdle()

    def test_no_route_480(self) -> None:
        self.net.feed(invite("sip:bob@nowhere.test"), A_FLOW, ACCESS)
        refused = self.one("call.refused")
        self.assertEqual(
            self.fields(refused, "status", "rule", "sip_warning", "trust", "secure"),
            {
                "status": 480,
                "rule": "no-route",
                "sip_warning": None,
                "trust": "untrusted",
                "secure": False,
            },
        )
        self.assertEqual(self.named("call.routed"), [])
        self.assertEqual(self.named("call.outcome"), [])
        # counted with the event's rule on the caller's adjacency, not as a started call
        counters = self.net.core.calls.counters
        self.assertEqual(counters.get("access", "calls-refused:no-route"), 1)
        self.assertEqual(counters.get("access", "calls-started"), 0)

    def test_max_forwards_483(self) -> None:
        request = invite()
        request.headers.set("Max-Forwards", "0")
        self.net.feed(request, A_FLOW, ACCESS)
        self.assertEqual(self.one("call.refused")["rule"], "max-forwards")
        self.assertEqual(
            self.net.core.calls.counters.get("access", "calls-refused:max-forwards"), 1
        )

    def test_every_refusal_event_is_counted_once(self) -> None:
        self.net.feed(invite("sips:bob@remote.test"), A_FLOW, ACCESS)
        self.net.feed(
            invite("sip:bob@nowhere.test", call_id="other", branch="z9hG4bKa2"), A_FLOW, ACCESS
        )
        counters = self.net.core.calls.counters
        rules = [str(e["rule"]) for e in self.named("call.refused")]
        self.assertEqual(rules, ["sips-from-untrusted", "no-route"])
        for rule in rules:
            self.assertEqual(counters.get("access", f"calls-refused:{rule}"), 1)


class RefusalFloodTests(CallLogMixin):
    """A flood of refused requests is counted in full but logged only in part."""

    def flood(self, count: int, start: int = 0) -> None:
        for n in range(start, start + count):
            request = invite("sips:bob@remote.test", call_id=f"flood-{n}", branch=f"z9hG4bKf{n}")
            self.net.feed(request, A_FLOW, ACCESS)

    def test_capped_per_window_then_summarised(self) -> None:
        self.flood(50)
        refused = self.named("call.refused")
        self.assertEqual(len(refused), calllog.REFUSALS_PER_WINDOW)
        self.assertEqual(
            self.net.core.calls.counters.get("access", "calls-refused:sips-from-untrusted"), 50
        )
        self.net.now = calllog.REFUSAL_WINDOW
        self.flood(1, start=50)
        last = self.named("call.refused")[-1]
        self.assertEqual(last["suppressed"], 50 - calllog.REFUSALS_PER_WINDOW)
        self.assertIn(
            f"({50 - calllog.REFUSALS_PER_WINDOW} similar refusals before this one were not "
            "logged)",
            formatEvent(last),
        )

    def test_rules_and_adjacencies_are_capped_separately(self) -> None:
        limiter = calllog.RefusalLimiter()
        for _ in range(calllog.REFUSALS_PER_WINDOW):
            self.assertEqual(limiter.admit(("access", "no-route"), 0.0), 0)
        self.assertIsNone(limiter.admit(("access", "no-route"), 1.0))
        self.assertEqual(limiter.admit(("access", "sips-from-untrusted"), 1.0), 0)
        self.assertEqual(limiter.admit(("trunk", "no-route"), 1.0), 0)
        self.assertEqual(limiter.admit(("access", "no-route"), 10.0), 1)


class RefusedCounterTests(SynchronousTestCase):
    """calllog.refused_counter: the counter name carries the call.refused event's rule."""

    def test_rules(self) -> None:
        cases = [
            (SipError(403, "Forbidden", warning=(380, "SIPS Not Allowed")), "sips-from-untrusted"),
            (
                SipError(480, "Temporarily Unavailable", warning=(380, "SIPS Not Allowed")),
                "no-secure-route",
            ),
            (SipError(480, "Temporarily Unavailable"), "no-route"),
            (SipError(483, "Too Many Hops"), "max-forwards"),
            (SipError(503, "Service Unavailable"), "routing"),
        ]
        for error, rule in cases:
            self.assertEqual(calllog.refusal_rule(error)[0], rule)
            self.assertEqual(calllog.refused_counter(error), f"calls-refused:{rule}")


class NoSecureRouteTests(SynchronousTestCase):
    """The real router: a SIPS call from a trusted caller with no trusted way out."""

    def test_480_no_secure_route(self) -> None:
        config = parse_config(CONFIG.replace("security trusted-encrypted", "security untrusted"))
        table = AdjacencyTable(config.adjacencies)
        core = SbcCore(lambda: table, Router.from_config(config).route)
        stack = SipStack(core)
        core.stack = stack
        with capturedLogs() as captured:
            stack.receive(
                invite("sips:bob@remote.test", via_host="127.0.0.3").serialize(),
                T_FLOW,
                0.0,
                TRUSTED,
            )
        [refused] = [e for e in captured if e.get("event") == "call.refused"]
        self.assertEqual(
            {k: refused[k] for k in ("status", "rule", "sip_warning", "trust", "secure")},
            {
                "status": 480,
                "rule": "no-secure-route",
                "sip_warning": "380 SIPS Not Allowed",
                "trust": "trusted",
                "secure": True,
            },
        )
        self.assertIn("refused 480 Temporarily Unavailable (SIPS Not Allowed", formatEvent(refused))
        self.assertEqual(core.calls.counters.get("trusted", "calls-refused:no-secure-route"), 1)


POLICY_SET = """
  call-policy-set 1
   first-call-routing-table by-source
   rtg-src-adjacency-table by-source
    entry 1
     match-adjacency access
     action next-table by-domain
   rtg-dst-domain-table by-domain
    entry 1
     match-domain remote.test
     dst-adjacency core2
     action complete
  active-call-policy-set 1
"""


class RoutePathTests(CallLogMixin):
    def test_matched_path_of_a_call_policy_set(self) -> None:
        config = parse_config(CONFIG + POLICY_SET)
        self.net.core.calls.router = Router.from_config(config).route
        sent = self.net.feed(invite(), A_FLOW, ACCESS)
        [(flow, _)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        routed = self.one("call.routed")
        self.assertEqual(
            routed["route_path"], ("call-policy-set 1", "by-source entry 1", "by-domain entry 1")
        )
        self.assertEqual((routed["candidates"], routed["outbound"]), (("core2",), "core2"))
        self.assertIn(
            "route call-policy-set 1 > by-source entry 1 > by-domain entry 1", formatEvent(routed)
        )

    def test_registered_contact(self) -> None:
        register = invite("sip:example.com", method="REGISTER", body=b"")
        register.headers.set("To", "<sip:carol@example.com>")
        register.headers.set("From", "<sip:carol@example.com>;tag=r1")
        register.headers.set("Contact", "<sip:carol@127.0.0.2:5070>")
        register.headers.set("Expires", "600")
        self.net.feed(register, A_FLOW, ACCESS)
        self.net.feed(
            invite("sip:carol@example.com", call_id="to-carol", branch="z9hG4bKc1"),
            A_FLOW,
            ACCESS,
        )
        routed = self.one("call.routed")
        self.assertEqual(
            (routed["route_path"], routed["outbound"]), (("registered contacts",), "access")
        )


class HuntingLogTests(CallLogMixin):
    def test_hunt_past_503(self) -> None:
        _a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 503, contact=None), B_FLOW, CORE)
        [(_, second)] = self.net.requests(sent, "INVITE")
        self.net.now = 1.0
        self.net.feed(answer(second, 200, body=SDP), B2_FLOW, CORE2)
        self.assertEqual(self.names(), ["call.routed", "call.hunt"])  # answered: no event yet
        self.net.core.calls.release_adjacency("core2", 3.0)
        self.assertEqual(self.names(), ["call.routed", "call.hunt", "call.ended"])
        routed, hunt, outcome = self.events
        self.assertEqual(routed["outbound"], "core")
        self.assertEqual(
            self.fields(hunt, "call_id", "failed", "why", "outbound", "skipped"),
            {
                "call_id": 1,
                "failed": "core",
                "why": "503 Service Unavailable",
                "outbound": "core2",
                "skipped": False,
            },
        )
        self.assertEqual(hunt["log_level"], LogLevel.debug)
        self.assertEqual(
            formatEvent(hunt),
            "call 1: core failed (503 Service Unavailable); trying core2 for sip:bob@remote.test",
        )
        self.assertEqual(
            self.fields(outcome, "outcome", "status", "outbound", "setup_time", "duration"),
            {
                "outcome": "answered",
                "status": 200,
                "outbound": "core2",
                "setup_time": 1.0,
                "duration": 2.0,
            },
        )

    def test_hunt_past_timeout_then_rejected(self) -> None:
        self.start()
        self.net.tick(31.9)
        sent = self.net.tick(32.0)
        [(_, second)] = self.net.requests(sent, "INVITE")
        self.net.feed(answer(second, 486, contact=None), B2_FLOW, CORE2)
        hunt = self.one("call.hunt")
        self.assertEqual((hunt["failed"], hunt["why"]), ("core", "timeout"))
        outcome = self.one("call.outcome")
        self.assertEqual(
            self.fields(outcome, "outcome", "status", "reason", "outbound"),
            {"outcome": "rejected", "status": 486, "reason": "Busy Here", "outbound": "core2"},
        )
        self.assertEqual(self.named("call.ended"), [])

    def test_every_candidate_failed(self) -> None:
        _a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 503, contact=None), B_FLOW, CORE)
        [(_, second)] = self.net.requests(sent, "INVITE")
        self.net.feed(answer(second, 408, contact=None), B2_FLOW, CORE2)
        outcome = self.one("call.outcome")
        self.assertEqual(
            self.fields(outcome, "outcome", "status", "outbound"),
            {"outcome": "failed", "status": 408, "outbound": "core2"},
        )

    def test_candidate_refused_by_the_security_recheck(self) -> None:
        """A router returning a forbidden adjacency: skipped, then no candidate left."""
        self.net = Net({"remote.test": ["tls"]})
        self.net.feed(invite(), A_FLOW, ACCESS)
        self.assertEqual(self.names(), ["call.hunt", "call.routed", "call.outcome"])
        skipped, routed, outcome = self.events
        self.assertEqual((skipped["outbound"], skipped["skipped"]), ("tls", True))
        self.assertEqual(skipped["why"], "refused by the security rules")
        self.assertIsNone(routed["outbound"])
        self.assertIn("no candidate passed the security re-check", formatEvent(routed))
        self.assertEqual((outcome["outcome"], outcome["status"]), ("failed", 503))

    def test_redirect_refused_is_a_rejection_with_its_warning(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 302, contact="sips:carol@remote.test"), B_FLOW, CORE)
        outcome = self.one("call.outcome")
        self.assertEqual(
            self.fields(outcome, "outcome", "status", "sip_warning"),
            {"outcome": "rejected", "status": 480, "sip_warning": "381 SIPS Required"},
        )
        self.assertIn("warning 381 SIPS Required", formatEvent(outcome))


class EndingTests(CallLogMixin):
    def test_cancelled(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        self.net.feed(invite(method="CANCEL", body=b""), A_FLOW, ACCESS)
        outcome = self.one("call.outcome")
        self.assertEqual((outcome["outcome"], outcome["status"]), ("cancelled", 487))
        self.assertEqual(self.named("call.ended"), [])

    def test_ringing_call_released_by_detach(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        self.net.core.calls.release_adjacency("core", self.net.now)
        outcome = self.one("call.outcome")
        self.assertEqual((outcome["outcome"], outcome["status"]), ("released", 503))

    def test_answered_call_released_by_detach(self) -> None:
        self.establish()
        self.net.now = 10.0
        self.net.core.calls.release_adjacency("core", self.net.now)
        self.assertEqual(self.named("call.outcome"), [])
        ended = self.one("call.ended")
        self.assertEqual(ended["outcome"], "answered")
        self.assertEqual((ended["why"], ended["duration"]), ("adjacency core detached", 10.0))

    def test_no_ack(self) -> None:
        _a_invite, b_invite = self.start()
        self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        self.net.tick(64 * 0.5)
        ended = self.one("call.ended")
        self.assertEqual((ended["why"], ended["duration"]), ("no ACK for the 2xx", 32.0))

    def test_trusted_caller(self) -> None:
        self.net = Net({"remote.test": ["core"]})
        self.net.feed(invite(via_host="127.0.0.3"), T_FLOW, TRUSTED)
        self.assertEqual(self.one("call.routed")["trust"], "trusted")
