"""The outbound-INVITE table (sbc/b2bua/outgoing.py), row by row.

Each row is driven through the machine's public API on a real
:class:`~sbc.sip.stack.SipStack` (the INVITE is a real client transaction,
the CANCEL a real Transmit), with a stand-in owner and host that record
what the machine did. The same rows are driven end to end, through calls,
by tests/b2bua/test_call.py and test_no_answer.py.
"""

from __future__ import annotations

import math

from twisted.trial.unittest import SynchronousTestCase

from sbc.b2bua import outgoing
from sbc.b2bua.outgoing import (
    OUTGOING_TABLE,
    STATE_TIMERS,
    DeadlineBuckets,
    IllegalOutgoingTransitionError,
    OutgoingAction,
    OutgoingEvent,
    OutgoingInvite,
    OutgoingState,
    OutgoingTimer,
    check_table,
    outgoing_transition,
)
from sbc.counters import Counters
from sbc.errors import SbcError
from sbc.sip import parse_message
from sbc.sip.message import Request
from sbc.sip.stack import Flow, SipStack, StackOutput, Transmit

S = OutgoingState
E = OutgoingEvent
A = OutgoingAction

FLOW = Flow("UDP", ("127.0.0.1", 5062), ("10.0.0.5", 5060))
NO_ANSWER_TIMEOUT = 180.0
T1 = 0.5


class Owner:
    """Records the machine's calls back (a call, or a relay)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def on_no_answer(self, invite: OutgoingInvite, now: float) -> list[StackOutput]:
        self.calls.append(("no-answer", now))
        return []

    def on_given_up(self, invite: OutgoingInvite, now: float) -> list[StackOutput]:
        self.calls.append(("given-up", now))
        return []


class Host:
    """What the machine uses of the CallManager: a real stack, deadlines, counters."""

    def __init__(self) -> None:
        self.stack = SipStack(_NoTU())  # type: ignore[arg-type]
        self.b_deadlines = DeadlineBuckets()
        self.counters = Counters()

    def no_answer_timeout(self) -> float:
        return NO_ANSWER_TIMEOUT

    def count(self, adjacency: str | None, name: str) -> None:
        self.counters.increment(adjacency, name)


class _NoTU:
    """The stack's transaction user: nothing reaches it in these tests."""


def invite_request(branch: str = "z9hG4bKout1") -> Request:
    data = (
        "INVITE sip:bob@10.0.0.5 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@lab.test>;tag=f1\r\n"
        "To: <sip:bob@remote.test>\r\n"
        "Call-ID: out-1@127.0.0.1\r\n"
        "CSeq: 7 INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


def sent_requests(outputs: list[StackOutput]) -> list[Request]:
    found = []
    for output in outputs:
        if isinstance(output, Transmit):
            message = parse_message(output.data)
            if isinstance(message, Request):
                found.append(message)
    return found


class OutgoingTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.host = Host()
        self.owner = Owner()
        self.now = 0.0

    def send(self) -> OutgoingInvite:
        """A fresh machine: the INVITE sent at ``now`` (state Calling)."""
        request = invite_request()
        client, _ = self.host.stack.send_request(request, FLOW, self.now)
        return OutgoingInvite.sent(self.host, self.owner, client, FLOW, "core", self.now)

    def counter(self, name: str) -> int:
        return self.host.counters.get("core", name)

    def fire(self, invite: OutgoingInvite) -> list[StackOutput]:
        """Run the machine's armed timer at its deadline (as CallManager.advance does)."""
        assert invite.deadline is not None
        self.now = float(invite.deadline)
        outputs: list[StackOutput] = []
        for waiting in self.host.b_deadlines.due(self.now):
            outputs += waiting.deadline_passed(self.now)
        return outputs


class TableTests(OutgoingTestCase):
    """Every row of the table, through the public API."""

    def reach(self, state: OutgoingState) -> OutgoingInvite:
        """A fresh machine (and host) in ``state``, at ``now`` 2.0."""
        self.setUp()
        invite = self.send()
        self.now = 1.0
        if state in (S.PROCEEDING, S.CANCELLING):
            invite.provisional(180, self.now)
        if state in (S.CANCEL_HELD, S.CANCELLING):
            invite.cancel(self.now)
        self.now = 2.0
        self.assertIs(invite.state, state)
        self.owner.calls.clear()
        return invite

    def inject(self, invite: OutgoingInvite, event: OutgoingEvent) -> list[StackOutput]:
        now = self.now
        if event is E.RESPONSE_100:
            return invite.provisional(100, now)
        if event is E.RESPONSE_1XX:
            return invite.provisional(183, now)
        if event is E.FINAL:
            return invite.final(now)
        if event is E.FAILURE:
            return invite.failed(now)
        if event is E.CANCEL:
            return invite.cancel(now)
        if event is E.DROP:
            invite.drop()
            return []
        return self.fire(invite)  # TIMER_C or CANCEL_WAIT: the one armed timer

    def check_row(self, state: OutgoingState, event: OutgoingEvent) -> None:
        actions, next_state = OUTGOING_TABLE[(state, event)]
        where = f"{state.name} x {event.name}"
        invite = self.reach(state)
        stack = self.host.stack
        before = (self.counter("no-answer-timeouts"), self.counter("cancel-unanswered"))
        outputs = self.inject(invite, event)
        now = self.now
        self.assertIs(invite.state, next_state, where)
        # SEND_CANCEL: a CANCEL for this INVITE (same branch), nothing else is sent
        cancels = sent_requests(outputs)
        if A.SEND_CANCEL in actions:
            [cancel] = cancels
            self.assertEqual(cancel.method, "CANCEL", where)
            self.assertEqual(cancel.top_via.branch, invite.client.request.top_via.branch, where)
        else:
            self.assertEqual(cancels, [], where)
        # START_C / START_CANCEL_WAIT: that timer armed from now; none left in Terminated
        if A.START_C in actions:
            self.assertEqual(invite.timer, OutgoingTimer.C, where)
            self.assertEqual(invite.deadline, math.ceil(now + NO_ANSWER_TIMEOUT), where)
        elif A.START_CANCEL_WAIT in actions:
            self.assertEqual(invite.timer, OutgoingTimer.CANCEL_WAIT, where)
            self.assertEqual(invite.deadline, math.ceil(now + 64 * T1), where)
        if invite.timer is not None:
            self.assertIn(invite.timer, STATE_TIMERS[next_state], where)
            self.assertEqual(len(self.host.b_deadlines), 1, where)
        else:
            self.assertIsNone(invite.deadline, where)
            self.assertEqual(len(self.host.b_deadlines), 0, where)
        # NO_ANSWER_TO_OWNER: counted, told, remembered
        told = [name for name, _ in self.owner.calls]
        no_answer = A.NO_ANSWER_TO_OWNER in actions
        self.assertEqual(self.counter("no-answer-timeouts"), before[0] + no_answer, where)
        self.assertEqual(invite.timed_out, no_answer, where)
        # ABANDON: the INVITE client transaction is gone, counted; the owner told after
        abandoned = A.ABANDON in actions
        self.assertEqual(invite.client.key in stack.transactions, not abandoned, where)
        self.assertEqual(self.counter("cancel-unanswered"), before[1] + abandoned, where)
        expected = []
        if no_answer:
            expected.append("no-answer")
        if A.GIVEN_UP_TO_OWNER in actions:
            expected.append("given-up")
        self.assertEqual(told, expected, where)

    def test_every_row(self) -> None:
        rows = [(state, event) for state, event in OUTGOING_TABLE if state is not None]
        for state, event in rows:
            self.check_row(state, event)
        self.assertEqual(len(rows), len(OUTGOING_TABLE) - 1)

    def test_creation_row(self) -> None:
        invite = self.send()
        self.assertIs(invite.state, S.CALLING)
        self.assertEqual(OUTGOING_TABLE[(None, E.SENT)], ((A.START_C,), S.CALLING))
        self.assertEqual((invite.timer, invite.deadline), (OutgoingTimer.C, 180))
        self.assertEqual(self.host.b_deadlines.next_deadline(), 180)
        self.assertTrue(invite.live)
        self.assertFalse(invite.cancelled)
        self.assertEqual(repr(invite), "<OutgoingInvite client/INVITE/z9hG4bKout1 CALLING>")

    def test_missing_row_raises(self) -> None:
        illegal = IllegalOutgoingTransitionError
        e = self.assertRaises(illegal, outgoing_transition, S.CALLING, E.SENT)
        self.assertEqual((e.state, e.event), (S.CALLING, E.SENT))
        self.assertIsInstance(e, SbcError)
        self.assertRaises(
            IllegalOutgoingTransitionError, outgoing_transition, S.CALLING, E.CANCEL_WAIT
        )
        self.assertRaises(
            IllegalOutgoingTransitionError, outgoing_transition, S.TERMINATED, E.FINAL
        )

    def test_events_after_the_end_raise_but_drop_is_a_no_op(self) -> None:
        invite = self.send()
        invite.final(1.0)
        self.assertFalse(invite.live)
        for event in (invite.final, invite.failed, invite.cancel):
            self.assertRaises(IllegalOutgoingTransitionError, event, 2.0)
        self.assertRaises(IllegalOutgoingTransitionError, invite.provisional, 180, 2.0)
        invite.drop()
        self.assertIs(invite.state, S.TERMINATED)

    def test_disarmed_timer_does_nothing(self) -> None:
        """A machine dropped by an earlier deadline of the same second does not fire."""
        invite = self.send()
        [waiting] = self.host.b_deadlines.due(180.0)
        invite.drop()
        self.assertEqual(waiting.deadline_passed(180.0), [])
        self.assertEqual(self.owner.calls, [])


class CheckTableTests(SynchronousTestCase):
    """The import-time check refuses a broken table."""

    def broken(self, **changes: object) -> None:
        table = dict(OUTGOING_TABLE)
        for key, value in changes.items():
            state_name, event_name = key.split("__")
            row_key = (None if state_name == "NEW" else S[state_name], E[event_name])
            if value is None:
                del table[row_key]
            else:
                table[row_key] = value  # type: ignore[assignment]
        self.assertRaises(AssertionError, check_table, table, STATE_TIMERS)

    def test_the_table_passes(self) -> None:
        check_table(OUTGOING_TABLE, STATE_TIMERS)

    def test_a_missing_network_event_fails(self) -> None:
        self.broken(PROCEEDING__FINAL=None)

    def test_a_timer_row_where_the_timer_cannot_run_fails(self) -> None:
        self.broken(CALLING__CANCEL_WAIT=((), S.TERMINATED))

    def test_a_missing_timer_row_fails(self) -> None:
        self.broken(CANCELLING__CANCEL_WAIT=None)

    def test_starting_a_timer_that_cannot_run_fails(self) -> None:
        self.broken(CANCELLING__RESPONSE_1XX=((A.START_C,), S.CANCELLING))

    def test_a_second_cancel_fails(self) -> None:
        self.broken(CANCELLING__CANCEL=((A.SEND_CANCEL, A.START_CANCEL_WAIT), S.CANCELLING))

    def test_a_row_out_of_terminated_fails(self) -> None:
        self.broken(TERMINATED__FINAL=((), S.TERMINATED))

    def test_a_second_creation_row_fails(self) -> None:
        self.broken(NEW__CANCEL=((), S.CALLING))

    def test_a_duplicate_row_fails(self) -> None:
        row = (S.CALLING, E.FINAL, (), S.TERMINATED)
        self.assertRaises(AssertionError, outgoing._table, row, row)


class LifecycleTests(OutgoingTestCase):
    """Whole lifecycles, as a call sees them."""

    def test_ringing_then_timer_c_then_the_cancel_never_answered(self) -> None:
        invite = self.send()
        self.now = 10.0
        invite.provisional(180, self.now)  # Timer C restarts: 190
        self.assertEqual(invite.deadline, 190)
        [cancel] = sent_requests(self.fire(invite))
        self.assertEqual((cancel.method, self.now), ("CANCEL", 190.0))
        self.assertEqual(self.owner.calls, [("no-answer", 190.0)])
        self.assertEqual(invite.deadline, 190 + 32)
        self.assertEqual(sent_requests(self.fire(invite)), [])
        self.assertEqual(self.owner.calls[-1], ("given-up", 222.0))
        self.assertNotIn(invite.client.key, self.host.stack.transactions)
        self.assertEqual(len(self.host.b_deadlines), 0)

    def test_100_does_not_restart_timer_c(self) -> None:
        invite = self.send()
        invite.provisional(100, 50.0)
        self.assertEqual(invite.deadline, 180)

    def test_cancel_before_any_provisional_is_held_for_the_first_one(self) -> None:
        invite = self.send()
        self.assertEqual(invite.cancel(1.0), [])
        self.assertTrue(invite.cancelled)
        self.assertEqual(invite.deadline, 180)  # Timer C still runs (counted if it fires)
        [cancel] = sent_requests(invite.provisional(100, 2.0))
        self.assertEqual(cancel.method, "CANCEL")
        self.assertEqual(invite.cancel(3.0), [])  # one CANCEL is enough
        self.assertEqual(invite.deadline, math.ceil(2.0 + 32))
