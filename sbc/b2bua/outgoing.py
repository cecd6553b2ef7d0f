"""The life of an INVITE the B2BUA sends, as ONE transition table. Sans-I/O.

Two kinds of outbound INVITE share it: a call's B-leg INVITE
(:class:`sbc.b2bua.call.Call`) and a re-INVITE relayed within a dialog
(:class:`sbc.b2bua.call.Relay`). Each has an :class:`OutgoingInvite` that
knows, from its state alone, whether a CANCEL may go, is held or went, and
which of its two timers runs:

* **Timer C** (RFC 3261 §16.6 step 11, §16.8; the ``no-answer-timeout``
  limit, default 180 s): started when the INVITE is sent, restarted by every
  provisional response above 100 (§16.7 step 2). When it fires the owner
  is told (the INVITE's end counts as 408) and the INVITE is CANCELled.
* **The wait after a CANCEL** (§9.1): the INVITE's final response should
  follow within 64*T1. If it does not, the INVITE client transaction is
  abandoned (later responses are strays) and the owner is told.

A CANCEL never goes before a provisional response (§9.1): one wanted
earlier is *held* and sent on the first provisional response; a silent
callee is ended by the transaction's Timer B instead. One CANCEL is enough.

The table maps ``(state, event)`` to the actions to take, in order, and the
next state, laid out like the transaction tables of :mod:`sbc.sip.transaction`
(from which it takes the events "provisional", "final", "failure"); the
row with state ``None`` creates the machine. Every event the network or the
owner can cause has a row in every live state; a timer event has a row
exactly where that timer may run (checked at import). Anything else raises
:class:`IllegalOutgoingTransitionError`.

Only the lifecycle lives here. What a response or a timeout *means* stays
with the owner: hunting on and relaying a final response (the call), 408 to
the source of a re-INVITE (the relay). The owner tells the machine what
happened (:meth:`OutgoingInvite.provisional`, :meth:`~OutgoingInvite.final`,
:meth:`~OutgoingInvite.failed`, :meth:`~OutgoingInvite.cancel`,
:meth:`~OutgoingInvite.drop`); the machine calls the owner back
(:class:`OutgoingOwner`) when Timer C fires and when the INVITE is given up.

:class:`DeadlineBuckets` holds the machines' deadlines (whole seconds: a busy
SBC arms one per call for minutes); the :class:`~sbc.b2bua.manager.CallManager`
runs them from its ``advance``.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from typing_extensions import TypeAlias

from sbc.sip.errors import SbcError
from sbc.sip.stack import Flow, SipStack, StackOutput
from sbc.sip.transaction import ClientTransaction, build_cancel

__all__ = [
    "OUTGOING_TABLE",
    "STATE_TIMERS",
    "DeadlineBuckets",
    "IllegalOutgoingTransitionError",
    "OutgoingAction",
    "OutgoingEvent",
    "OutgoingHost",
    "OutgoingInvite",
    "OutgoingOwner",
    "OutgoingState",
    "OutgoingTimer",
    "Waiting",
    "check_table",
    "outgoing_transition",
]


class OutgoingState(enum.Enum):
    """Where an outbound INVITE is."""

    __hash__ = object.__hash__  # identity: C speed (Enum hashes the name in Python)

    CALLING = "Calling"  # sent, no provisional response yet: no CANCEL may go
    PROCEEDING = "Proceeding"  # a provisional response came: a CANCEL may go
    CANCEL_HELD = "Cancel held"  # a CANCEL is wanted, held until a provisional response
    CANCELLING = "Cancelling"  # the CANCEL went: the final response is awaited 64*T1
    TERMINATED = "Terminated"  # final response, failure, given up, or dropped


class OutgoingEvent(enum.Enum):
    """What can happen to an outbound INVITE."""

    __hash__ = object.__hash__

    SENT = "INVITE sent"  # creates the machine
    RESPONSE_100 = "100"
    RESPONSE_1XX = "101-199"
    FINAL = "200-699"
    FAILURE = "Timer B or transport error"  # the INVITE client transaction failed
    CANCEL = "CANCEL wanted by the owner"  # the caller cancelled, the call is released...
    TIMER_C = "Timer C fires"
    CANCEL_WAIT = "64*T1 after the CANCEL"
    DROP = "dropped by the owner"  # the owner stops following it (its call is over)


class OutgoingAction(enum.Enum):
    """What a transition does."""

    __hash__ = object.__hash__

    START_C = "start C"  # (re)start Timer C: no-answer-timeout from now
    START_CANCEL_WAIT = "start 64*T1"
    SEND_CANCEL = "send CANCEL"
    NO_ANSWER_TO_OWNER = "inform owner (no answer)"  # counted as no-answer-timeouts
    ABANDON = "abandon INVITE"  # the client transaction; counted as cancel-unanswered
    GIVEN_UP_TO_OWNER = "inform owner (given up)"


class OutgoingTimer(enum.Enum):
    """The machine's two timers (one runs at a time)."""

    __hash__ = object.__hash__

    C = "Timer C"
    CANCEL_WAIT = "64*T1 after CANCEL"


class IllegalOutgoingTransitionError(SbcError):
    """*event* has no row in the outbound INVITE table for *state* (an owner's bug)."""

    def __init__(self, state: OutgoingState | None, event: OutgoingEvent) -> None:
        where = "creation" if state is None else state.name
        super().__init__(f"outbound INVITE: no transition for {event.name} in {where}")
        self.state = state
        self.event = event


Actions: TypeAlias = tuple[OutgoingAction, ...]
Row: TypeAlias = "tuple[OutgoingState | None, OutgoingEvent, Actions, OutgoingState]"
Table: TypeAlias = (
    "Mapping[tuple[OutgoingState | None, OutgoingEvent], tuple[Actions, OutgoingState]]"
)


def _table(*rows: Row) -> Table:
    table: dict[tuple[OutgoingState | None, OutgoingEvent], tuple[Actions, OutgoingState]] = {}
    for state, event, actions, next_state in rows:
        if (state, event) in table:
            raise AssertionError(f"duplicate row {state} x {event}")
        table[(state, event)] = (actions, next_state)
    return table


S = OutgoingState
E = OutgoingEvent
A = OutgoingAction
_NEW = None  # the machine does not exist yet
_NOTHING: Actions = ()
_CANCEL_NOW: Actions = (A.SEND_CANCEL, A.START_CANCEL_WAIT)

#: RFC 3261 §9.1 (CANCEL), §16.6 step 11 / §16.7 step 2 / §16.8 (Timer C).
OUTGOING_TABLE: Final[Table] = _table(
    # state         event            actions                                       next state
    (_NEW,          E.SENT,          (A.START_C,),                                 S.CALLING),
    (S.CALLING,     E.RESPONSE_100,  _NOTHING,                                     S.PROCEEDING),
    (S.CALLING,     E.RESPONSE_1XX,  (A.START_C,),                                 S.PROCEEDING),
    (S.CALLING,     E.FINAL,         _NOTHING,                                     S.TERMINATED),
    (S.CALLING,     E.FAILURE,       _NOTHING,                                     S.TERMINATED),
    # §9.1: no CANCEL before a provisional response
    (S.CALLING,     E.CANCEL,        _NOTHING,                                     S.CANCEL_HELD),
    (S.CALLING,     E.TIMER_C,       (A.NO_ANSWER_TO_OWNER,),                      S.CANCEL_HELD),
    (S.CALLING,     E.DROP,          _NOTHING,                                     S.TERMINATED),
    (S.PROCEEDING,  E.RESPONSE_100,  _NOTHING,                                     S.PROCEEDING),
    (S.PROCEEDING,  E.RESPONSE_1XX,  (A.START_C,),                                 S.PROCEEDING),
    (S.PROCEEDING,  E.FINAL,         _NOTHING,                                     S.TERMINATED),
    (S.PROCEEDING,  E.FAILURE,       _NOTHING,                                     S.TERMINATED),
    (S.PROCEEDING,  E.CANCEL,        _CANCEL_NOW,                                  S.CANCELLING),
    (S.PROCEEDING,  E.TIMER_C,       (A.NO_ANSWER_TO_OWNER, *_CANCEL_NOW),         S.CANCELLING),
    (S.PROCEEDING,  E.DROP,          _NOTHING,                                     S.TERMINATED),
    # the held CANCEL goes on the first provisional response
    (S.CANCEL_HELD, E.RESPONSE_100,  _CANCEL_NOW,                                  S.CANCELLING),
    (S.CANCEL_HELD, E.RESPONSE_1XX,  _CANCEL_NOW,                                  S.CANCELLING),
    (S.CANCEL_HELD, E.FINAL,         _NOTHING,                                     S.TERMINATED),
    (S.CANCEL_HELD, E.FAILURE,       _NOTHING,                                     S.TERMINATED),
    (S.CANCEL_HELD, E.CANCEL,        _NOTHING,                                     S.CANCEL_HELD),
    # Timer C still runs after an owner's CANCEL: it is counted, nothing more
    (S.CANCEL_HELD, E.TIMER_C,       (A.NO_ANSWER_TO_OWNER,),                      S.CANCEL_HELD),
    (S.CANCEL_HELD, E.DROP,          _NOTHING,                                     S.TERMINATED),
    (S.CANCELLING,  E.RESPONSE_100,  _NOTHING,                                     S.CANCELLING),
    (S.CANCELLING,  E.RESPONSE_1XX,  _NOTHING,                                     S.CANCELLING),
    (S.CANCELLING,  E.FINAL,         _NOTHING,                                     S.TERMINATED),
    (S.CANCELLING,  E.FAILURE,       _NOTHING,                                     S.TERMINATED),
    # one CANCEL is enough
    (S.CANCELLING,  E.CANCEL,        _NOTHING,                                     S.CANCELLING),
    # §9.1: no final response 64*T1 after the CANCEL: the INVITE is given up
    (S.CANCELLING,  E.CANCEL_WAIT,   (A.ABANDON, A.GIVEN_UP_TO_OWNER),             S.TERMINATED),
    (S.CANCELLING,  E.DROP,          _NOTHING,                                     S.TERMINATED),
)  # fmt: skip

#: The timer that may run in each state; entering a state stops one that may not.
STATE_TIMERS: Final[Mapping[OutgoingState, frozenset[OutgoingTimer]]] = {
    S.CALLING: frozenset({OutgoingTimer.C}),
    S.PROCEEDING: frozenset({OutgoingTimer.C}),
    S.CANCEL_HELD: frozenset({OutgoingTimer.C}),
    S.CANCELLING: frozenset({OutgoingTimer.CANCEL_WAIT}),
    S.TERMINATED: frozenset(),
}

_START: Final[Mapping[OutgoingAction, OutgoingTimer]] = {
    A.START_C: OutgoingTimer.C,
    A.START_CANCEL_WAIT: OutgoingTimer.CANCEL_WAIT,
}
_TIMER_EVENT: Final[Mapping[OutgoingTimer, OutgoingEvent]] = {
    OutgoingTimer.C: E.TIMER_C,
    OutgoingTimer.CANCEL_WAIT: E.CANCEL_WAIT,
}
#: Events the network or the owner can cause at any time while the INVITE lives.
_ALWAYS: Final = frozenset(e for e in OutgoingEvent if e is not E.SENT) - set(_TIMER_EVENT.values())
_LIVE: Final = frozenset(s for s in OutgoingState if s is not S.TERMINATED)


def _require(condition: bool, *what: object) -> None:
    if not condition:
        raise AssertionError(f"outbound INVITE table: {what}")


def check_table(
    table: Table, state_timers: Mapping[OutgoingState, frozenset[OutgoingTimer]]
) -> None:
    """Raise AssertionError unless ``table`` is consistent with ``state_timers`` (run at import).

    One creation row; nothing leaves Terminated; a row starts only a timer
    that may run in its next state; a timer event has a row exactly where
    that timer may run; every other event has a row in every live state;
    a CANCEL is sent once, entering Cancelling.
    """
    _require([e for s, e in table if s is None] == [OutgoingEvent.SENT], "creation rows")
    for (state, event), (actions, next_state) in table.items():
        _require(state is not OutgoingState.TERMINATED, "leaves Terminated", event)
        for action in actions:
            if action in _START:
                _require(_START[action] in state_timers[next_state], state, event, action)
        for timer, timer_event in _TIMER_EVENT.items():
            if event is timer_event:
                _require(state is not None and timer in state_timers[state], state, event)
        if OutgoingAction.SEND_CANCEL in actions:
            _require(next_state is OutgoingState.CANCELLING, state, event, next_state)
            _require(state is not OutgoingState.CANCELLING, "second CANCEL", event)
    for state in _LIVE:
        for event in _ALWAYS:
            _require((state, event) in table, "missing", state, event)
        for timer in state_timers[state]:
            _require((state, _TIMER_EVENT[timer]) in table, "missing", state, timer)


check_table(OUTGOING_TABLE, STATE_TIMERS)
del S, E, A


def outgoing_transition(
    state: OutgoingState | None, event: OutgoingEvent
) -> tuple[Actions, OutgoingState]:
    """The row for *event* in *state* (None: creation): its actions and next state.

    Raises :class:`IllegalOutgoingTransitionError` when there is none.
    """
    try:
        return OUTGOING_TABLE[(state, event)]
    except KeyError:
        raise IllegalOutgoingTransitionError(state, event) from None


# ---------------------------------------------------------------------------
# Deadlines
# ---------------------------------------------------------------------------


class Waiting(Protocol):
    """Something with one deadline in :class:`DeadlineBuckets` (an :class:`OutgoingInvite`)."""

    deadline: int | None

    def deadline_passed(self, now: float) -> list[StackOutput]:
        """Its deadline came."""
        ...


class DeadlineBuckets:
    """Machines waiting for a deadline rounded up to a whole second (their timers).

    Arming, re-arming (every 180 Ringing restarts Timer C) and disarming
    cost a dictionary operation and leave nothing behind, unlike heap
    entries that stay until their time: a busy SBC arms one of these per
    call for minutes. The heap holds one entry per second that has
    deadlines due.
    """

    __slots__ = ("_buckets", "_seconds")

    def __init__(self) -> None:
        self._buckets: dict[int, dict[Waiting, None]] = {}
        self._seconds: list[int] = []

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def arm(self, waiting: Waiting, at: float) -> None:
        """Wake ``waiting`` at ``at`` rounded up to a second (instead of any earlier arming).

        The second is kept in ``waiting.deadline`` (``None`` when not armed).
        """
        self.disarm(waiting)
        second = math.ceil(at)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = {}
            heapq.heappush(self._seconds, second)
        bucket[waiting] = None
        waiting.deadline = second

    def disarm(self, waiting: Waiting) -> None:
        """Forget ``waiting``'s deadline, if it has one."""
        second = waiting.deadline
        if second is not None:
            waiting.deadline = None
            bucket = self._buckets.get(second)
            if bucket is not None:
                bucket.pop(waiting, None)

    def next_deadline(self) -> int | None:
        """The first second with something due, or ``None``."""
        seconds, buckets = self._seconds, self._buckets
        while seconds and not buckets.get(seconds[0]):
            buckets.pop(heapq.heappop(seconds), None)
        return seconds[0] if seconds else None

    def due(self, now: float) -> list[Waiting]:
        """Remove and return (disarmed) what is due at ``now`` or earlier, in order."""
        found: list[Waiting] = []
        seconds, buckets = self._seconds, self._buckets
        while seconds and seconds[0] <= now:
            bucket = buckets.pop(heapq.heappop(seconds), None)
            if bucket:
                found.extend(bucket)
        for waiting in found:
            waiting.deadline = None
        return found


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------


class OutgoingHost(Protocol):
    """What the machine uses of the B2BUA (the :class:`~sbc.b2bua.manager.CallManager`)."""

    stack: SipStack
    b_deadlines: DeadlineBuckets
    no_answer_timeout: Callable[[], float]

    def count(self, adjacency: str | None, name: str) -> None:
        """Count ``name`` for ``adjacency``."""
        ...


class OutgoingOwner(Protocol):
    """Who sent the INVITE (a call, or a relay); called back from the table's actions.

    The machine is already in its next state when it calls back.
    """

    def on_no_answer(self, invite: OutgoingInvite, now: float) -> list[StackOutput]:
        """Timer C fired (``invite.timed_out`` is now True)."""
        ...

    def on_given_up(self, invite: OutgoingInvite, now: float) -> list[StackOutput]:
        """No final response 64*T1 after the CANCEL: the INVITE was abandoned."""
        ...


class OutgoingInvite:
    """One outbound INVITE's lifecycle; see the module docstring and :data:`OUTGOING_TABLE`.

    ``client`` is its INVITE client transaction, ``flow`` where it (and its
    CANCEL) went, ``adjacency`` the outbound adjacency its counters go to.
    ``timed_out`` is True once Timer C fired. Create one with :meth:`sent`.
    """

    __slots__ = (
        "__weakref__",
        "adjacency",
        "client",
        "deadline",
        "flow",
        "host",
        "owner",
        "state",
        "timed_out",
        "timer",
    )

    def __init__(
        self,
        host: OutgoingHost,
        owner: OutgoingOwner,
        client: ClientTransaction,
        flow: Flow,
        adjacency: str,
    ) -> None:
        self.host = host
        #: None once the INVITE ended: the owner refers to the machine, and
        #: a finished call must not be kept alive by a reference cycle
        self.owner: OutgoingOwner | None = owner
        self.client = client
        self.flow = flow
        self.adjacency = adjacency
        self.state = OutgoingState.TERMINATED  # until the creation row runs
        self.timed_out = False
        #: the timer armed, if any, and its second in the host's DeadlineBuckets
        self.timer: OutgoingTimer | None = None
        self.deadline: int | None = None

    @classmethod
    def sent(
        cls,
        host: OutgoingHost,
        owner: OutgoingOwner,
        client: ClientTransaction,
        flow: Flow,
        adjacency: str,
        now: float,
    ) -> OutgoingInvite:
        """The machine of an INVITE just sent (the creation row: Timer C starts)."""
        invite = cls(host, owner, client, flow, adjacency)
        invite._apply(None, OutgoingEvent.SENT, now)
        return invite

    def __repr__(self) -> str:
        return f"<OutgoingInvite {self.client.key} {self.state.name}>"

    @property
    def live(self) -> bool:
        """True until the INVITE ended (final response, failure, given up, dropped)."""
        return self.state is not OutgoingState.TERMINATED

    @property
    def cancelled(self) -> bool:
        """True once a CANCEL is wanted (held or sent) and the INVITE still lives."""
        state = self.state
        return state is OutgoingState.CANCEL_HELD or state is OutgoingState.CANCELLING

    # -- events from the owner ---------------------------------------------------

    def provisional(self, status: int, now: float) -> list[StackOutput]:
        """A provisional response (100-199) arrived."""
        event = OutgoingEvent.RESPONSE_100 if status == 100 else OutgoingEvent.RESPONSE_1XX
        return self._apply(self.state, event, now)

    def final(self, now: float) -> list[StackOutput]:
        """A final response (200-699) arrived."""
        return self._apply(self.state, OutgoingEvent.FINAL, now)

    def failed(self, now: float) -> list[StackOutput]:
        """The INVITE client transaction failed (Timer B, transport error)."""
        return self._apply(self.state, OutgoingEvent.FAILURE, now)

    def cancel(self, now: float) -> list[StackOutput]:
        """The owner wants the INVITE cancelled (sent now, or on the first provisional)."""
        return self._apply(self.state, OutgoingEvent.CANCEL, now)

    def drop(self) -> None:
        """The owner stops following the INVITE (nothing is sent); no-op once it ended."""
        if self.state is not OutgoingState.TERMINATED:
            self._apply(self.state, OutgoingEvent.DROP, 0.0)

    def deadline_passed(self, now: float) -> list[StackOutput]:
        """The armed timer fired (called by the manager through :class:`DeadlineBuckets`)."""
        timer = self.timer
        if timer is None:  # disarmed meanwhile (an earlier deadline of the same second)
            return []
        self.timer = None
        return self._apply(self.state, _TIMER_EVENT[timer], now)

    # -- the table -----------------------------------------------------------------

    def _apply(
        self, state: OutgoingState | None, event: OutgoingEvent, now: float
    ) -> list[StackOutput]:
        row = OUTGOING_TABLE.get((state, event))
        if row is None:
            raise IllegalOutgoingTransitionError(state, event)
        actions, next_state = row
        self.state = next_state
        timer = self.timer
        if timer is not None and timer not in STATE_TIMERS[next_state]:
            self.timer = None
            self.host.b_deadlines.disarm(self)
        outputs: list[StackOutput] = []
        for action in actions:
            outputs += self._do(action, now)
        if next_state is OutgoingState.TERMINATED:
            self.owner = None
        return outputs

    def _do(self, action: OutgoingAction, now: float) -> list[StackOutput]:
        host = self.host
        if action is OutgoingAction.START_C:
            self.timer = OutgoingTimer.C
            host.b_deadlines.arm(self, now + host.no_answer_timeout())
        elif action is OutgoingAction.START_CANCEL_WAIT:
            self.timer = OutgoingTimer.CANCEL_WAIT
            host.b_deadlines.arm(self, now + 64 * host.stack.transactions.settings.t1)
        elif action is OutgoingAction.SEND_CANCEL:
            _, sent = host.stack.send_request(build_cancel(self.client.request), self.flow, now)
            return sent
        elif action is OutgoingAction.NO_ANSWER_TO_OWNER:
            self.timed_out = True
            host.count(self.adjacency, "no-answer-timeouts")
            assert self.owner is not None
            return self.owner.on_no_answer(self, now)
        elif action is OutgoingAction.ABANDON:
            host.count(self.adjacency, "cancel-unanswered")
            return host.stack.abandon(self.client, now)
        elif action is OutgoingAction.GIVEN_UP_TO_OWNER:
            assert self.owner is not None
            return self.owner.on_given_up(self, now)
        else:  # pragma: no cover - every action is handled above
            raise AssertionError(action)
        return []
