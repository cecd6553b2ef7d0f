"""Timer C / no-answer-timeout corner cases (RFC 3261 §9.1, §16.6 step 11, §16.7, §16.8).

Races and corner cases around the B-leg INVITE timer of
:mod:`sbc.b2bua.call`: each test drives a real SipStack + SbcCore through
:class:`tests.b2bua.test_call.Net` in virtual time.
"""

from __future__ import annotations

from sbc.adjacencies import InboundContext, ListenerKey
from sbc.b2bua import HuntPolicy
from sbc.sip.message import Request, Response
from sbc.sip.stack import Flow
from tests.b2bua.test_call import (
    A_FLOW,
    ACCESS,
    B2_FLOW,
    B_FLOW,
    CORE,
    CORE2,
    SDP,
    CallTestCase,
    Net,
    answer,
    invite,
)

TCP_FLOW = Flow("TCP", ("127.0.0.1", 5066), ("192.0.2.20", 5060))  # remote.test, from DNS
TCP_OUT = InboundContext("tcp-out", ListenerKey("127.0.0.1", 5066, "TCP"))


class NoAnswerBase(CallTestCase):
    """Shared steps for the Timer C tests."""

    def ring(self) -> tuple[Request, Request, Response]:
        """Caller INVITE in, B-leg INVITE out, 180 relayed; returns (A INVITE, B INVITE, 180)."""
        a_invite, b_invite = self.start()
        sent = self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        [(flow, ringing)] = self.net.responses(sent)
        self.assertEqual((flow, ringing.status), (A_FLOW, 180))
        return a_invite, b_invite, ringing

    def counter(self, adjacency: str, name: str) -> int:
        return self.net.core.calls.counters.get(adjacency, name)

    def finish_a(self, final: Response) -> None:
        """ACK the caller's non-2xx final response (its transaction then ends)."""
        ack = invite(method="ACK", to_tag=final.to.tag, body=b"")
        self.net.feed(ack, A_FLOW, ACCESS)

    def bye_both(self, sent: list[tuple[Flow, Request | Response]]) -> None:
        """Answer every BYE in ``sent`` with 200."""
        for flow, bye in self.net.requests(sent, "BYE"):
            context = ACCESS if flow == A_FLOW else CORE if flow == B_FLOW else CORE2
            self.net.feed(answer(bye, 200, contact=None), flow, context)


class TimerCRaceTests(NoAnswerBase):
    """Races around Timer C's CANCEL, release, hunting, TCP."""

    def test_2xx_after_timer_c_cancel_connects_and_leaves_tables_empty(self) -> None:
        _a_invite, b_invite, _ringing = self.ring()
        [(_, cancel)] = self.net.requests(self.net.tick(180.0), "CANCEL")
        self.net.feed(answer(cancel, 200, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual((flow, ok.status), (A_FLOW, 200))
        self.assertEqual(self.net.requests(sent, "INVITE"), [])  # no hunting
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKack1", body=b"")
        [(flow, _)] = self.net.requests(self.net.feed(ack, A_FLOW, ACCESS), "ACK")
        self.assertEqual(flow, B_FLOW)
        # the call stays up well past the wait after the CANCEL (64*T1)
        self.net.tick(400.0)
        self.assertEqual(len(self.net.core.calls.calls), 1)
        bye = invite(method="BYE", to_tag=ok.to.tag, branch="z9hG4bKbye1", cseq=2, body=b"")
        sent = self.net.feed(bye, A_FLOW, ACCESS)
        self.bye_both(sent)
        self.assertIdle()

    def test_caller_cancel_while_timer_c_cancel_pending(self) -> None:
        _a_invite, b_invite, _ringing = self.ring()
        [(_, cancel)] = self.net.requests(self.net.tick(180.0), "CANCEL")
        sent = self.net.feed(invite(method="CANCEL", body=b""), A_FLOW, ACCESS)
        statuses = sorted((m.status, m.cseq.method) for _, m in self.net.responses(sent))
        self.assertEqual(statuses, [(200, "CANCEL"), (487, "INVITE")])
        self.assertEqual(self.net.requests(sent, "CANCEL"), [])  # one CANCEL is enough
        self.net.feed(answer(cancel, 200, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        self.assertEqual(self.net.requests(sent, "INVITE"), [])  # no hunting after the caller left
        self.assertEqual(self.net.responses(sent), [])
        self.net.feed(invite(method="ACK", body=b""), A_FLOW, ACCESS)
        self.assertEqual(self.counter("access", "calls-cancelled"), 1)
        self.assertEqual(self.counter("core", "hunt-skip:no-answer"), 0)
        self.assertIdle()

    def test_caller_cancel_while_timer_c_cancel_pending_callee_silent(self) -> None:
        self.ring()
        self.net.tick(180.0)
        self.net.feed(invite(method="CANCEL", body=b""), A_FLOW, ACCESS)
        self.net.feed(invite(method="ACK", body=b""), A_FLOW, ACCESS)
        sent = self.net.tick(260.0)
        self.assertEqual(self.net.requests(sent, "INVITE"), [])
        self.assertEqual(self.counter("core", "cancel-unanswered"), 1)
        self.assertIdle()

    def test_release_after_timer_c_cancel_callee_silent(self) -> None:
        self.ring()
        self.net.tick(180.0)
        sent = self.net._collect(self.net.core.calls.release_adjacency("core", self.net.now))
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 503)
        self.assertEqual(self.net.requests(sent, "CANCEL"), [])
        self.finish_a(final)
        sent = self.net.tick(260.0)
        self.assertEqual(self.net.requests(sent, "INVITE"), [])  # no hunting once released
        self.assertIdle()

    def test_release_while_ringing_callee_never_answers_anything(self) -> None:
        self.ring()
        self.net.tick(50.0)
        sent = self.net._collect(self.net.core.calls.release_adjacency("core", self.net.now))
        [(_, final)] = self.net.responses(sent)
        self.finish_a(final)
        [(flow, _)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(flow, B_FLOW)
        self.net.tick(100.0)  # the CANCEL's own retransmissions (Timer E) are over
        sent = self.net.tick(200.0)  # Timer C would have fired at 180: no second CANCEL
        self.assertEqual(self.net.requests(sent, "CANCEL"), [])
        self.assertEqual(self.counter("core", "no-answer-timeouts"), 0)
        self.assertIdle()

    def test_release_after_timer_c_cancel_late_2xx_gets_ack_and_bye(self) -> None:
        _a_invite, b_invite, _ringing = self.ring()
        self.net.tick(180.0)
        sent = self.net._collect(self.net.core.calls.release_adjacency("core", self.net.now))
        [(_, final)] = self.net.responses(sent)
        self.finish_a(final)
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        self.assertEqual(self.net.responses(sent), [])
        self.assertEqual([f for f, _ in self.net.requests(sent, "ACK")], [B_FLOW])
        self.bye_both(sent)
        self.assertEqual(len(self.net.requests(sent, "BYE")), 1)
        self.assertIdle()

    def test_hunt_after_no_answer_then_second_callee_answers(self) -> None:
        self.net = Net(no_answer_timeout=lambda: 60.0)
        _a_invite, b_invite, ringing = self.ring()
        [(_, cancel)] = self.net.requests(self.net.tick(60.0), "CANCEL")
        self.net.feed(answer(cancel, 200, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        [(_, second)] = self.net.requests(sent, "INVITE")
        sent = self.net.feed(answer(second, 180, tag="b2tag"), B2_FLOW, CORE2)
        [(_, ringing2)] = self.net.responses(sent)
        sent = self.net.feed(answer(second, 200, tag="b2tag", body=SDP), B2_FLOW, CORE2)
        [(_, ok)] = self.net.responses(sent)
        self.assertEqual(ok.status, 200)
        # one A-leg dialog: the tag the caller saw with the first 180 is kept
        self.assertEqual({ringing.to.tag, ringing2.to.tag, ok.to.tag}, {ok.to.tag})
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKack1", body=b"")
        [(flow, b_ack)] = self.net.requests(self.net.feed(ack, A_FLOW, ACCESS), "ACK")
        self.assertEqual((flow, b_ack.to.tag), (B2_FLOW, "b2tag"))
        # the B2 leg has its own Timer C: none left armed once answered
        self.assertEqual(len(self.net.core.calls.b_deadlines), 0)
        sent = self.net.tick(400.0)
        self.assertEqual(self.net.requests(sent, "CANCEL"), [])
        bye = invite(method="BYE", to_tag=ok.to.tag, branch="z9hG4bKbye1", cseq=2, body=b"")
        self.bye_both(self.net.feed(bye, A_FLOW, ACCESS))
        self.assertIdle()

    def test_reinvite_on_an_answered_call_is_not_touched_by_timer_c(self) -> None:
        _a_invite, b_invite, ok = self.establish()
        self.net.tick(170.0)
        reinvite = invite(to_tag=ok.to.tag, branch="z9hG4bKre1", cseq=2)
        [(_, b_re)] = self.net.requests(self.net.feed(reinvite, A_FLOW, ACCESS), "INVITE")
        self.net.feed(answer(b_re, 180), B_FLOW, CORE)
        sent = self.net.tick(200.0)
        self.assertEqual(self.net.requests(sent, "CANCEL"), [])
        sent = self.net.feed(answer(b_re, 200, body=SDP), B_FLOW, CORE)
        [(_, re_ok)] = self.net.responses(sent)
        self.assertEqual(re_ok.status, 200)
        self.assertEqual(b_re.call_id, b_invite.call_id)

    def test_timer_c_over_tcp(self) -> None:
        self.net = Net({"remote.test": ["tcp-out", "core2"]})
        request = invite()
        sent = self.net.feed(request, A_FLOW, ACCESS)
        [(flow, b_invite)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, TCP_FLOW)
        self.net.feed(answer(b_invite, 180), TCP_FLOW, TCP_OUT)
        sent = self.net.tick(180.0)
        [(flow, cancel)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(flow, TCP_FLOW)
        self.net.feed(answer(cancel, 200, contact=None), TCP_FLOW, TCP_OUT)
        sent = self.net.feed(answer(b_invite, 487, contact=None), TCP_FLOW, TCP_OUT)
        [(flow, second)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        sent = self.net.feed(answer(second, 486, contact=None), B2_FLOW, CORE2)
        [(_, busy)] = self.net.responses(sent)
        self.assertEqual(busy.status, 486)
        self.finish_a(busy)
        self.assertIdle()

    def test_timer_c_over_tcp_cancel_never_answered(self) -> None:
        self.net = Net({"remote.test": ["tcp-out"]})
        sent = self.net.feed(invite(), A_FLOW, ACCESS)
        [(_, b_invite)] = self.net.requests(sent, "INVITE")
        self.net.feed(answer(b_invite, 183), TCP_FLOW, TCP_OUT)
        self.net.tick(180.0)
        sent = self.net.tick(212.0)
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 408)
        self.finish_a(final)
        self.assertIdle()


class TimerCBeforeProvisionalTests(NoAnswerBase):
    """Timer C before any provisional response: no CANCEL yet (§9.1), the first 1xx brings it."""

    def test_late_1xx_gets_the_cancel_then_hunting_goes_on(self) -> None:
        self.net = Net(no_answer_timeout=lambda: 5.0)
        _a_invite, b_invite = self.start()
        self.net.tick(5.0)
        self.assertEqual(self.counter("core", "no-answer-timeouts"), 1)
        sent = self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        self.assertEqual(self.net.responses(sent), [])  # not relayed: the attempt is over
        [(flow, cancel)] = self.net.requests(sent, "CANCEL")
        self.assertEqual((flow, cancel.top_via.branch), (B_FLOW, b_invite.top_via.branch))
        self.net.feed(answer(cancel, 200, contact=None), B_FLOW, CORE)
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        [(flow, _second)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow, B2_FLOW)
        self.assertEqual(self.counter("core", "hunt-skip:no-answer"), 1)

    def test_silent_callee_ends_with_timer_b_then_hunting_goes_on(self) -> None:
        self.net = Net(no_answer_timeout=lambda: 5.0)
        _a_invite, _b_invite = self.start()
        self.net.tick(31.9)
        sent = self.net.tick(32.0)
        [(flow, _second)] = [(f, m) for f, m in self.net.requests(sent, "INVITE") if f != B_FLOW]
        self.assertEqual(flow, B2_FLOW)
        self.assertEqual(self.counter("core", "hunt-skip:no-answer"), 1)
        self.assertEqual(self.counter("core", "hunt-skip:timeout"), 0)

    def test_late_2xx_connects_the_call(self) -> None:
        """Nothing was cancelled yet: a callee that answers late is connected."""
        self.net = Net(no_answer_timeout=lambda: 5.0)
        _a_invite, b_invite = self.start()
        self.net.tick(5.0)
        sent = self.net.feed(answer(b_invite, 200, body=SDP), B_FLOW, CORE)
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual((flow, ok.status), (A_FLOW, 200))
        self.assertEqual(len(self.net.core.calls.b_deadlines), 0)

    def test_caller_cancel_then_timer_c_late_1xx_still_cancelled(self) -> None:
        self.net = Net(no_answer_timeout=lambda: 5.0)
        _a_invite, b_invite = self.start()
        self.net.feed(invite(method="CANCEL", body=b""), A_FLOW, ACCESS)
        self.net.feed(invite(method="ACK", body=b""), A_FLOW, ACCESS)
        self.net.tick(5.0)
        sent = self.net.feed(answer(b_invite, 180), B_FLOW, CORE)
        self.assertEqual([f for f, _ in self.net.requests(sent, "CANCEL")], [B_FLOW])
        self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        self.assertIdle()

    def test_no_hunting_on_408_late_183_cancelled_caller_gets_408(self) -> None:
        self.net = Net(hunting=HuntPolicy(frozenset({503})), no_answer_timeout=lambda: 5.0)
        _a_invite, b_invite = self.start()
        sent = self.net.tick(5.0)
        self.assertEqual([m.status for _, m in self.net.responses(sent) if m.status >= 200], [])
        sent = self.net.feed(answer(b_invite, 183), B_FLOW, CORE)
        self.assertEqual([f for f, _ in self.net.requests(sent, "CANCEL")], [B_FLOW])
        sent = self.net.feed(answer(b_invite, 487, contact=None), B_FLOW, CORE)
        [(_, final)] = self.net.responses(sent)
        self.assertEqual(final.status, 408)
        self.finish_a(final)
        self.assertIdle()


class ReinviteTimerTests(NoAnswerBase):
    """Timer C and the wait after a CANCEL for relayed re-INVITEs."""

    def test_reinvite_with_1xx_and_no_final_response_is_timed_out(self) -> None:
        """§16.6 step 11 covers every INVITE: a re-INVITE stuck after a 1xx gets 408 and CANCEL.

        Then, with no final response 64*T1 after that CANCEL, it is given up,
        so neither the relay nor (after the BYE) the call stays in the tables.
        """
        _a_invite, _b_invite, ok = self.establish()
        reinvite = invite(to_tag=ok.to.tag, branch="z9hG4bKre1", cseq=2)
        [(_, b_re)] = self.net.requests(self.net.feed(reinvite, A_FLOW, ACCESS), "INVITE")
        self.net.feed(answer(b_re, 100, contact=None), B_FLOW, CORE)
        sent = self.net.tick(400.0)
        finals = {m.status for f, m in self.net.responses(sent) if f == A_FLOW and m.status >= 200}
        self.assertEqual(finals, {408})  # retransmitted until its ACK
        cancels = self.net.requests(sent, "CANCEL")  # after the 100 (retransmitted: no 200)
        self.assertEqual(
            {(f, m.top_via.branch) for f, m in cancels}, {(B_FLOW, b_re.top_via.branch)}
        )
        self.assertEqual(self.counter("core", "no-answer-timeouts"), 1)
        self.assertEqual(self.counter("core", "cancel-unanswered"), 1)
        # the call ends normally afterwards and leaves nothing behind
        bye = invite(method="BYE", to_tag=ok.to.tag, branch="z9hG4bKbye1", cseq=3, body=b"")
        self.bye_both(self.net.feed(bye, A_FLOW, ACCESS))
        self.assertIdle()

    def test_cancelled_reinvite_never_answered_is_given_up(self) -> None:
        """§9.1 for a relayed re-INVITE the caller CANCELled: given up 64*T1 later."""
        _a_invite, _b_invite, ok = self.establish()
        reinvite = invite(to_tag=ok.to.tag, branch="z9hG4bKre1", cseq=2)
        [(_, b_re)] = self.net.requests(self.net.feed(reinvite, A_FLOW, ACCESS), "INVITE")
        self.net.feed(answer(b_re, 180), B_FLOW, CORE)
        cancel = invite(method="CANCEL", to_tag=ok.to.tag, branch="z9hG4bKre1", cseq=2, body=b"")
        sent = self.net.feed(cancel, A_FLOW, ACCESS)
        [(flow, _)] = self.net.requests(sent, "CANCEL")
        self.assertEqual(flow, B_FLOW)
        [(_, re_final)] = [(f, m) for f, m in self.net.responses(sent) if m.status == 487]
        ack = invite(method="ACK", to_tag=ok.to.tag, branch="z9hG4bKre1", cseq=2, body=b"")
        self.net.feed(ack, A_FLOW, ACCESS)
        self.assertEqual(re_final.cseq.method, "INVITE")
        # the callee ignores the CANCEL and never answers the re-INVITE; the call ends
        bye = invite(method="BYE", to_tag=ok.to.tag, branch="z9hG4bKbye1", cseq=3, body=b"")
        self.bye_both(self.net.feed(bye, A_FLOW, ACCESS))
        self.assertIdle()
