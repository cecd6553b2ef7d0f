"""The RFC 3261 §17 transaction layer, with RFC 6026's Accepted state. Sans-I/O.

Four machines, each ONE transition table laid out like its RFC figure:

* INVITE client (§17.1.1, Figure 5; RFC 6026 §8.4 adds Accepted / Timer M),
* non-INVITE client (§17.1.2, Figure 6),
* INVITE server (§17.2.1, Figure 7 as redrawn by RFC 6026 §8.7; Accepted / Timer L),
* non-INVITE server (§17.2.2, Figure 8).

A table maps ``(state, event)`` to the actions to take, in order, and the
next state. The row with state ``None`` is the arrow that creates the
transaction. A pair with no row is an illegal transition and raises
:class:`IllegalTransitionError`: network events that are merely unexpected (a 1xx
after the final response, an ACK while Proceeding...) have explicit rows that
absorb them, so only a transaction user (TU) that breaks the protocol (a
second final response) or a bug reaches the error.

:class:`TransactionLayer` holds the live transactions, matches incoming
messages to them (§17.1.3, §17.2.3, with the RFC 2543 fallback), runs their
timers and returns what is to be done as a list of outputs (:class:`Send`,
:class:`DeliverRequest`, :class:`DeliverResponse`, :class:`TransactionTimeout`,
:class:`TransportError`, :class:`Terminated`, :class:`StrayResponse`). Time is
always an argument (``now``, seconds on any monotonic clock); absolute times
end in ``_at``. The adapter keeps one timer armed at :meth:`next_deadline`
and calls :meth:`advance` when it fires. Terminated transactions leave the
table at once.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Final

import attrs
from typing_extensions import TypeAlias

from sbc.sip.errors import SbcError
from sbc.sip.headers import Headers, Via
from sbc.sip.message import Request, Response, response_to
from sbc.sip.timers import LINGER_TIMERS, RETRANSMIT_TIMERS, Timer, TimerSettings

__all__ = [
    "MAGIC_COOKIE",
    "STATE_TIMERS",
    "TABLES",
    "Action",
    "AnyTransaction",
    "ClientTransaction",
    "DeliverRequest",
    "DeliverResponse",
    "DuplicateTransactionError",
    "Event",
    "IllegalTransitionError",
    "Machine",
    "Output",
    "Send",
    "ServerTransaction",
    "StrayResponse",
    "Terminated",
    "Timer",
    "TimerSettings",
    "Transaction",
    "TransactionError",
    "TransactionKey",
    "TransactionLayer",
    "TransactionState",
    "TransactionTimeout",
    "Transition",
    "TransportError",
    "build_ack",
    "build_cancel",
    "client_key",
    "transition",
]

#: Every branch made by an RFC 3261 element starts with this (§8.1.1.7).
MAGIC_COOKIE: Final = "z9hG4bK"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class TransactionError(SbcError):
    """Misuse of the transaction layer (never caused by what a peer sends)."""


class IllegalTransitionError(TransactionError):
    """*event* has no row in *machine*'s table for *state*."""

    def __init__(self, machine: Machine, state: TransactionState | None, event: Event) -> None:
        where = "creation" if state is None else state.name
        super().__init__(f"{machine.name}: no transition for {event.name} in {where}")
        self.machine = machine
        self.state = state
        self.event = event


class DuplicateTransactionError(TransactionError):
    """A transaction with this key is already in the table."""

    def __init__(self, key: TransactionKey) -> None:
        super().__init__(f"transaction already exists: {key}")
        self.key = key


# ---------------------------------------------------------------------------
# States, events, actions
# ---------------------------------------------------------------------------


class TransactionState(enum.Enum):
    """The states of RFC 3261 §17 and RFC 6026 (Accepted)."""

    __hash__ = object.__hash__  # identity: C speed (Enum hashes the name in Python)

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Machine(enum.Enum):
    """Which of the four transaction machines."""

    __hash__ = object.__hash__  # identity: C speed (Enum hashes the name in Python)

    INVITE_CLIENT = "INVITE client"
    NON_INVITE_CLIENT = "non-INVITE client"
    INVITE_SERVER = "INVITE server"
    NON_INVITE_SERVER = "non-INVITE server"

    @property
    def is_client(self) -> bool:
        """True for the two client machines."""
        return self in (Machine.INVITE_CLIENT, Machine.NON_INVITE_CLIENT)


_LINGERING = frozenset(
    (TransactionState.COMPLETED, TransactionState.CONFIRMED, TransactionState.ACCEPTED)
)
"""States that only absorb retransmissions until a timer ends the transaction."""
_NON_INVITE = frozenset((Machine.NON_INVITE_CLIENT, Machine.NON_INVITE_SERVER))


class Event(enum.Enum):
    """What can happen to a transaction (the labels above the figures' lines)."""

    __hash__ = object.__hash__  # identity: C speed (Enum hashes the name in Python)

    REQUEST_FROM_TU = "request from TU"  # creates a client transaction
    REQUEST = "request received"  # creates a server transaction
    RETRANSMISSION = "request received again"
    ACK = "ACK"
    RESPONSE_1XX = "1xx"
    RESPONSE_2XX = "2xx"
    RESPONSE_300_699 = "300-699"
    TU_1XX = "1xx from TU"
    TU_2XX = "2xx from TU"
    TU_300_699 = "300-699 from TU"
    TRANSPORT_ERROR = "Transport Err."
    TU_ABANDON = "abandoned by TU"  # RFC 3261 §9.1: no final response 64*T1 after CANCEL
    TIMER_A = "Timer A fires"
    TIMER_B = "Timer B fires"
    TIMER_D = "Timer D fires"
    TIMER_E = "Timer E fires"
    TIMER_F = "Timer F fires"
    TIMER_G = "Timer G fires"
    TIMER_H = "Timer H fires"
    TIMER_I = "Timer I fires"
    TIMER_J = "Timer J fires"
    TIMER_K = "Timer K fires"
    TIMER_L = "Timer L fires"
    TIMER_M = "Timer M fires"


_TIMER_EVENT: Final[Mapping[Timer, Event]] = {t: Event["TIMER_" + t.value] for t in Timer}
_EVENT_TIMER: Final[Mapping[Event, Timer]] = {e: t for t, e in _TIMER_EVENT.items()}


class Action(enum.Enum):
    """What a transition does (the labels below the figures' lines)."""

    __hash__ = object.__hash__  # identity: C speed (Enum hashes the name in Python)

    SEND_REQUEST = "request sent"  # first time, or again on Timer A/E
    SEND_ACK = "ACK sent"  # §17.1.1.3 ACK, built on first use, then resent
    SEND_RESPONSE = "send response"  # the TU's response, kept as the last one
    RESEND_RESPONSE = "send last response"  # again (nothing if none sent yet)
    SEND_100 = "send 100 if TU won't in 200 ms"
    REQUEST_TO_TU = "pass request to TU"
    RESPONSE_TO_TU = "resp. to TU"
    ACK_TO_TU = "ACK to TU"
    TIMEOUT_TO_TU = "inform TU (timeout)"
    ERROR_TO_TU = "inform TU (transport error)"
    START_A = "start A"  # T1 (unreliable only)
    RESET_A = "reset A"  # 2 x previous interval
    START_B = "start B"
    START_D = "start D"
    START_E = "start E"  # T1 (unreliable only)
    RESET_E = "reset E"  # min(2 x previous, T2)
    RESET_E_T2 = "reset E to T2"
    START_F = "start F"
    START_G = "start G"  # T1 (unreliable only)
    RESET_G = "reset G"  # min(2 x previous, T2)
    START_H = "start H"
    START_I = "start I"
    START_J = "start J"
    START_K = "start K"
    START_L = "start L"
    START_M = "start M"


_START: Final[Mapping[Action, Timer]] = {
    a: Timer[a.name[-1]] for a in Action if a.name.startswith("START_")
}
_RESET: Final[Mapping[Action, Timer]] = {
    Action.RESET_A: Timer.A,
    Action.RESET_E: Timer.E,
    Action.RESET_G: Timer.G,
}


@attrs.frozen
class Transition:
    """One row of a table: the actions to take, in order, and the next state."""

    actions: tuple[Action, ...]
    next_state: TransactionState


Table: TypeAlias = "Mapping[tuple[TransactionState | None, Event], Transition]"
Row: TypeAlias = "tuple[TransactionState | None, Event, tuple[Action, ...], TransactionState]"


def _table(*rows: Row) -> Table:
    table: dict[tuple[TransactionState | None, Event], Transition] = {}
    for state, event, actions, next_state in rows:
        if (state, event) in table:
            raise AssertionError(f"duplicate row {state} x {event}")
        table[(state, event)] = Transition(actions, next_state)
    return table


S = TransactionState
E = Event
A = Action
_NEW = None  # the transaction does not exist yet
_NOTHING: tuple[Action, ...] = ()  # "-" in the figures: absorbed


# §17.1.1.2, Figure 5, with RFC 6026 §8.4 (2xx -> Accepted, Timer M).
INVITE_CLIENT_TABLE: Final[Table] = _table(
    # state        event               actions                                      next state
    (_NEW,         E.REQUEST_FROM_TU,  (A.SEND_REQUEST, A.START_A, A.START_B),      S.CALLING),
    (S.CALLING,    E.TIMER_A,          (A.SEND_REQUEST, A.RESET_A),                 S.CALLING),
    (S.CALLING,    E.TIMER_B,          (A.TIMEOUT_TO_TU,),                          S.TERMINATED),
    (S.CALLING,    E.TRANSPORT_ERROR,  (A.ERROR_TO_TU,),                            S.TERMINATED),
    (S.CALLING,    E.RESPONSE_1XX,     (A.RESPONSE_TO_TU,),                         S.PROCEEDING),
    (S.CALLING,    E.RESPONSE_2XX,     (A.RESPONSE_TO_TU, A.START_M),               S.ACCEPTED),
    (S.CALLING,    E.RESPONSE_300_699, (A.SEND_ACK, A.RESPONSE_TO_TU, A.START_D),   S.COMPLETED),
    (S.PROCEEDING, E.RESPONSE_1XX,     (A.RESPONSE_TO_TU,),                         S.PROCEEDING),
    (S.PROCEEDING, E.RESPONSE_2XX,     (A.RESPONSE_TO_TU, A.START_M),               S.ACCEPTED),
    (S.PROCEEDING, E.RESPONSE_300_699, (A.SEND_ACK, A.RESPONSE_TO_TU, A.START_D),   S.COMPLETED),
    # a late error for an earlier send: nothing is in flight any more
    (S.PROCEEDING, E.TRANSPORT_ERROR,  _NOTHING,                                    S.PROCEEDING),
    # §9.1: no final response 64*T1 after a CANCEL (or Timer C): the TU gives up
    (S.CALLING,    E.TU_ABANDON,       _NOTHING,                                    S.TERMINATED),
    (S.PROCEEDING, E.TU_ABANDON,       _NOTHING,                                    S.TERMINATED),
    (S.COMPLETED,  E.RESPONSE_300_699, (A.SEND_ACK,),                               S.COMPLETED),
    (S.COMPLETED,  E.RESPONSE_1XX,     _NOTHING,                                    S.COMPLETED),
    (S.COMPLETED,  E.RESPONSE_2XX,     _NOTHING,                                    S.COMPLETED),
    (S.COMPLETED,  E.TRANSPORT_ERROR,  (A.ERROR_TO_TU,),                            S.TERMINATED),
    (S.COMPLETED,  E.TIMER_D,          _NOTHING,                                    S.TERMINATED),
    (S.ACCEPTED,   E.RESPONSE_2XX,     (A.RESPONSE_TO_TU,),                         S.ACCEPTED),
    (S.ACCEPTED,   E.RESPONSE_1XX,     _NOTHING,                                    S.ACCEPTED),
    (S.ACCEPTED,   E.RESPONSE_300_699, _NOTHING,                                    S.ACCEPTED),
    (S.ACCEPTED,   E.TRANSPORT_ERROR,  _NOTHING,                                    S.ACCEPTED),
    (S.ACCEPTED,   E.TIMER_M,          _NOTHING,                                    S.TERMINATED),
)  # fmt: skip

# §17.1.2.2, Figure 6.
NON_INVITE_CLIENT_TABLE: Final[Table] = _table(
    # state        event               actions                                      next state
    (_NEW,         E.REQUEST_FROM_TU,  (A.SEND_REQUEST, A.START_E, A.START_F),      S.TRYING),
    (S.TRYING,     E.TIMER_E,          (A.SEND_REQUEST, A.RESET_E),                 S.TRYING),
    (S.TRYING,     E.TIMER_F,          (A.TIMEOUT_TO_TU,),                          S.TERMINATED),
    (S.TRYING,     E.TRANSPORT_ERROR,  (A.ERROR_TO_TU,),                            S.TERMINATED),
    (S.TRYING,     E.RESPONSE_1XX,     (A.RESPONSE_TO_TU,),                         S.PROCEEDING),
    (S.TRYING,     E.RESPONSE_2XX,     (A.RESPONSE_TO_TU, A.START_K),               S.COMPLETED),
    (S.TRYING,     E.RESPONSE_300_699, (A.RESPONSE_TO_TU, A.START_K),               S.COMPLETED),
    (S.PROCEEDING, E.TIMER_E,          (A.SEND_REQUEST, A.RESET_E_T2),              S.PROCEEDING),
    (S.PROCEEDING, E.TIMER_F,          (A.TIMEOUT_TO_TU,),                          S.TERMINATED),
    (S.PROCEEDING, E.TRANSPORT_ERROR,  (A.ERROR_TO_TU,),                            S.TERMINATED),
    (S.PROCEEDING, E.RESPONSE_1XX,     (A.RESPONSE_TO_TU,),                         S.PROCEEDING),
    (S.PROCEEDING, E.RESPONSE_2XX,     (A.RESPONSE_TO_TU, A.START_K),               S.COMPLETED),
    (S.PROCEEDING, E.RESPONSE_300_699, (A.RESPONSE_TO_TU, A.START_K),               S.COMPLETED),
    (S.COMPLETED,  E.RESPONSE_1XX,     _NOTHING,                                    S.COMPLETED),
    (S.COMPLETED,  E.RESPONSE_2XX,     _NOTHING,                                    S.COMPLETED),
    (S.COMPLETED,  E.RESPONSE_300_699, _NOTHING,                                    S.COMPLETED),
    (S.COMPLETED,  E.TRANSPORT_ERROR,  _NOTHING,                                    S.COMPLETED),
    (S.COMPLETED,  E.TIMER_K,          _NOTHING,                                    S.TERMINATED),
)  # fmt: skip

# §17.2.1, Figure 7 as redrawn by RFC 6026 §8.7 (2xx -> Accepted, Timer L;
# a transport error in Proceeding, Completed or Accepted informs the TU and
# keeps absorbing retransmissions). Timer H informs the TU (§17.2.1 text).
INVITE_SERVER_TABLE: Final[Table] = _table(
    # state        event               actions                                      next state
    (_NEW,         E.REQUEST,          (A.REQUEST_TO_TU, A.SEND_100),               S.PROCEEDING),
    (S.PROCEEDING, E.RETRANSMISSION,   (A.RESEND_RESPONSE,),                        S.PROCEEDING),
    (S.PROCEEDING, E.TU_1XX,           (A.SEND_RESPONSE,),                          S.PROCEEDING),
    (S.PROCEEDING, E.TU_2XX,           (A.SEND_RESPONSE, A.START_L),                S.ACCEPTED),
    (S.PROCEEDING, E.TU_300_699,       (A.SEND_RESPONSE, A.START_G, A.START_H),     S.COMPLETED),
    (S.PROCEEDING, E.TRANSPORT_ERROR,  (A.ERROR_TO_TU,),                            S.PROCEEDING),
    # an ACK before any final response acknowledges nothing
    (S.PROCEEDING, E.ACK,              _NOTHING,                                    S.PROCEEDING),
    (S.COMPLETED,  E.RETRANSMISSION,   (A.RESEND_RESPONSE,),                        S.COMPLETED),
    (S.COMPLETED,  E.TIMER_G,          (A.RESEND_RESPONSE, A.RESET_G),              S.COMPLETED),
    (S.COMPLETED,  E.ACK,              (A.START_I,),                                S.CONFIRMED),
    (S.COMPLETED,  E.TIMER_H,          (A.TIMEOUT_TO_TU,),                          S.TERMINATED),
    (S.COMPLETED,  E.TRANSPORT_ERROR,  (A.ERROR_TO_TU,),                            S.COMPLETED),
    (S.CONFIRMED,  E.ACK,              _NOTHING,                                    S.CONFIRMED),
    (S.CONFIRMED,  E.RETRANSMISSION,   _NOTHING,                                    S.CONFIRMED),
    (S.CONFIRMED,  E.TRANSPORT_ERROR,  _NOTHING,                                    S.CONFIRMED),
    (S.CONFIRMED,  E.TIMER_I,          _NOTHING,                                    S.TERMINATED),
    (S.ACCEPTED,   E.RETRANSMISSION,   _NOTHING,                                    S.ACCEPTED),
    (S.ACCEPTED,   E.ACK,              (A.ACK_TO_TU,),                              S.ACCEPTED),
    (S.ACCEPTED,   E.TU_2XX,           (A.SEND_RESPONSE,),                          S.ACCEPTED),
    (S.ACCEPTED,   E.TRANSPORT_ERROR,  (A.ERROR_TO_TU,),                            S.ACCEPTED),
    (S.ACCEPTED,   E.TIMER_L,          _NOTHING,                                    S.TERMINATED),
)  # fmt: skip

# §17.2.2, Figure 8. Final responses from the TU in Completed are discarded
# (§17.2.2: "MUST be discarded").
NON_INVITE_SERVER_TABLE: Final[Table] = _table(
    # state        event               actions                                      next state
    (_NEW,         E.REQUEST,          (A.REQUEST_TO_TU,),                          S.TRYING),
    (S.TRYING,     E.RETRANSMISSION,   _NOTHING,                                    S.TRYING),
    (S.TRYING,     E.TU_1XX,           (A.SEND_RESPONSE,),                          S.PROCEEDING),
    (S.TRYING,     E.TU_2XX,           (A.SEND_RESPONSE, A.START_J),                S.COMPLETED),
    (S.TRYING,     E.TU_300_699,       (A.SEND_RESPONSE, A.START_J),                S.COMPLETED),
    (S.PROCEEDING, E.RETRANSMISSION,   (A.RESEND_RESPONSE,),                        S.PROCEEDING),
    (S.PROCEEDING, E.TU_1XX,           (A.SEND_RESPONSE,),                          S.PROCEEDING),
    (S.PROCEEDING, E.TU_2XX,           (A.SEND_RESPONSE, A.START_J),                S.COMPLETED),
    (S.PROCEEDING, E.TU_300_699,       (A.SEND_RESPONSE, A.START_J),                S.COMPLETED),
    (S.PROCEEDING, E.TRANSPORT_ERROR,  (A.ERROR_TO_TU,),                            S.TERMINATED),
    (S.COMPLETED,  E.RETRANSMISSION,   (A.RESEND_RESPONSE,),                        S.COMPLETED),
    (S.COMPLETED,  E.TU_2XX,           _NOTHING,                                    S.COMPLETED),
    (S.COMPLETED,  E.TU_300_699,       _NOTHING,                                    S.COMPLETED),
    (S.COMPLETED,  E.TRANSPORT_ERROR,  (A.ERROR_TO_TU,),                            S.TERMINATED),
    (S.COMPLETED,  E.TIMER_J,          _NOTHING,                                    S.TERMINATED),
)  # fmt: skip

#: The one table of each machine.
TABLES: Final[Mapping[Machine, Table]] = {
    Machine.INVITE_CLIENT: INVITE_CLIENT_TABLE,
    Machine.NON_INVITE_CLIENT: NON_INVITE_CLIENT_TABLE,
    Machine.INVITE_SERVER: INVITE_SERVER_TABLE,
    Machine.NON_INVITE_SERVER: NON_INVITE_SERVER_TABLE,
}

#: The timers that may run in each state; entering a state stops the others.
STATE_TIMERS: Final[Mapping[Machine, Mapping[TransactionState, frozenset[Timer]]]] = {
    Machine.INVITE_CLIENT: {
        S.CALLING: frozenset({Timer.A, Timer.B}),
        S.PROCEEDING: frozenset(),
        S.COMPLETED: frozenset({Timer.D}),
        S.ACCEPTED: frozenset({Timer.M}),
    },
    Machine.NON_INVITE_CLIENT: {
        S.TRYING: frozenset({Timer.E, Timer.F}),
        S.PROCEEDING: frozenset({Timer.E, Timer.F}),
        S.COMPLETED: frozenset({Timer.K}),
    },
    Machine.INVITE_SERVER: {
        S.PROCEEDING: frozenset(),
        S.COMPLETED: frozenset({Timer.G, Timer.H}),
        S.CONFIRMED: frozenset({Timer.I}),
        S.ACCEPTED: frozenset({Timer.L}),
    },
    Machine.NON_INVITE_SERVER: {
        S.TRYING: frozenset(),
        S.PROCEEDING: frozenset(),
        S.COMPLETED: frozenset({Timer.J}),
    },
}


def _check_tables() -> None:
    # every timer a row starts or resets may run in that row's next state,
    # and every timer that may run in a state has a row for when it fires.
    for machine, table in TABLES.items():
        live = STATE_TIMERS[machine]
        for (state, event), tr in table.items():
            for action in tr.actions:
                timer = _START.get(action) or _RESET.get(action)
                if action is Action.RESET_E_T2:
                    timer = Timer.E
                if timer is not None and timer not in live[tr.next_state]:
                    raise AssertionError(f"{machine}: {action} into {tr.next_state}")
            if event in _EVENT_TIMER and state is not None:
                assert _EVENT_TIMER[event] in live[state], (machine, state, event)
        for state, timers in live.items():
            for timer in timers:
                assert (state, _TIMER_EVENT[timer]) in table, (machine, state, timer)


_check_tables()
del S, E, A


_ABANDONABLE: Final[frozenset[tuple[Machine, TransactionState]]] = frozenset(
    (Machine.INVITE_CLIENT, state)
    for state in (TransactionState.CALLING, TransactionState.PROCEEDING)
)


def transition(machine: Machine, state: TransactionState | None, event: Event) -> Transition:
    """The row of *machine*'s table for *event* in *state* (None: creation).

    Raises :class:`IllegalTransitionError` when there is none.
    """
    try:
        return TABLES[machine][(state, event)]
    except KeyError:
        raise IllegalTransitionError(machine, state, event) from None


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


@attrs.frozen(cache_hash=True)
class TransactionKey:
    """What identifies a transaction (§17.1.3, §17.2.3).

    Client: ``branch`` of the top Via and the CSeq ``method``. Server:
    ``branch``, ``sent_by`` of the top Via and ``method`` (INVITE for an ACK).
    A server transaction whose request carries no RFC 3261 branch (no
    ``z9hG4bK``) is keyed by the RFC 2543 fields instead, in ``legacy``:
    (Call-ID, CSeq number, From tag, To tag, Request-URI text, top Via text).
    An RFC 3261 server key also holds the request's Call-ID, CSeq number and
    Request-URI text in ``request_id``: a retransmission, the ACK of a
    non-2xx answer and a CANCEL all carry the same (§9.1, §17.1.1.3), so
    this only parts requests that share a branch by mistake (the torture
    messages of RFC 4475 and RFC 5118 reuse a few). A server key
    also holds the ``scope`` its request arrived in (opaque, hashable; the
    SIP stack passes the inbound context: listener, adjacency, TLS
    identity), so that the same request arriving over another transport or
    adjacency is a request of its own, not a retransmission.
    """

    server: bool
    method: str
    branch: str | None
    sent_by: tuple[str, int | None] | None = None
    legacy: tuple[str, int, str | None, str | None, str, str] | None = None
    scope: object = None
    request_id: tuple[str, int, str] | None = None

    def __str__(self) -> str:
        side = "server" if self.server else "client"
        if self.legacy is not None:
            return f"{side}/{self.method}/rfc2543:{self.legacy[0]}:{self.legacy[1]}"
        where = ""
        if self.sent_by is not None:
            host, port = self.sent_by
            where = f"@{host}" if port is None else f"@{host}:{port}"
        return f"{side}/{self.method}/{self.branch}{where}"


def _is_rfc3261_branch(branch: str | None) -> bool:
    return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7


def client_key(message: Request | Response) -> TransactionKey | None:
    """The client transaction key of a request we send or a response to it.

    None when the top Via has no branch.
    """
    branch = message.top_via.branch
    if not branch:
        return None
    return TransactionKey(False, message.cseq.method, branch)


def _server_key(request: Request, method: str, scope: object) -> TransactionKey | None:
    via = request.top_via
    branch = via.branch
    if not _is_rfc3261_branch(branch):
        return None
    return TransactionKey(
        True,
        method,
        branch,
        (via.host.lower(), via.port),
        scope=scope,
        request_id=(request.call_id, request.cseq.seq, request.uri_text),
    )


def _legacy_key(request: Request, scope: object) -> TransactionKey:
    cseq = request.cseq
    fields = (
        request.call_id,
        cseq.seq,
        request.from_.tag,
        request.to.tag,
        request.uri_text,
        request.top_via.serialize(),
    )
    return TransactionKey(True, cseq.method, request.top_via.branch, None, fields, scope)


def _same_uri(a: Request, b: Request) -> bool:
    if a.uri_text == b.uri_text:
        return True
    try:
        return a.uri.rfc_equal(b.uri)
    except SbcError:
        return False


def _param_set(via: Via) -> frozenset[tuple[str, str | None]]:
    return frozenset((k.lower(), v) for k, v in via.params)


def _same_via(a: Via, b: Via) -> bool:
    if a == b:
        return True
    return (
        a.transport == b.transport
        and a.host.lower() == b.host.lower()
        and a.port == b.port
        and _param_set(a) == _param_set(b)
    )


# ---------------------------------------------------------------------------
# Messages the transaction layer builds
# ---------------------------------------------------------------------------


def _hop_headers(request: Request, method: str, to: str) -> Headers:
    h = request.headers
    headers = Headers()
    headers.add("Via", request.top_via)
    headers.add("Max-Forwards", h.get("Max-Forwards") or "70")
    for route in h.get_all("Route"):
        headers.add("Route", route)
    headers.add("From", h.get("From") or "")
    headers.add("To", to)
    headers.add("Call-ID", h.get("Call-ID") or "")
    headers.add("CSeq", f"{request.cseq.seq} {method}")
    return headers


def build_ack(request: Request, response: Response) -> Request:
    """The ACK for a non-2xx final *response* to INVITE *request* (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the request (method
    ACK), the To of the response (with its tag), the request's Route
    headers, and one Via: the request's top Via (so the same branch).
    """
    to = response.headers.get("To") or ""
    return Request("ACK", request.uri_text, _hop_headers(request, "ACK", to))


def build_cancel(request: Request) -> Request:
    """A CANCEL for *request* (§9.1).

    Same Request-URI, Call-ID, From, To and CSeq number as the request
    (method CANCEL), its Route headers, and one Via: the request's top Via.
    Send it with :meth:`TransactionLayer.client_request` (it is a non-INVITE
    transaction of its own), only once a provisional response has arrived.
    """
    to = request.headers.get("To") or ""
    return Request("CANCEL", request.uri_text, _hop_headers(request, "CANCEL", to))


# ---------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------


class Transaction:
    """One transaction: a handle the TU keeps; the layer drives it.

    ``key`` (:class:`TransactionKey`), ``machine``, ``request`` (the one that
    created it), ``reliable`` (transport), ``peer`` (opaque adapter data
    given at creation and echoed in every :class:`Send`: a destination
    address, a connection...), ``state``, ``last_response`` (the last one
    sent by a server transaction, or the last one received by a client
    transaction), ``created_at``.
    """

    # Timers: a transaction runs at most one retransmission timer (A, E, G:
    # the ``_rt*`` slots) and one other (B, D, F, H-M: ``_to*``) at a time
    # (STATE_TIMERS). Plain slots instead of dicts: a lingering transaction
    # holds no container the garbage collector has to walk.
    __slots__ = (
        "_live",
        "_rt",
        "_rt_at",
        "_rt_interval",
        "_rt_seq",
        "_sent",
        "_to",
        "_to_at",
        "_to_interval",
        "_to_seq",
        "created_at",
        "key",
        "last_response",
        "machine",
        "peer",
        "reliable",
        "request",
        "state",
    )

    def __init__(
        self,
        machine: Machine,
        key: TransactionKey,
        request: Request,
        reliable: bool,
        peer: object,
        now: float,
    ) -> None:
        self.machine = machine
        self.key = key
        self.request = request
        self.reliable = reliable
        self.peer = peer
        self.created_at = now
        self.state = TransactionState.TERMINATED  # until the creation row runs
        self.last_response: Response | None = None
        self._rt: Timer | None = None
        self._rt_seq: int | None = None
        self._rt_at = 0.0
        self._rt_interval = 0.0
        self._to: Timer | None = None
        self._to_seq: int | None = None
        self._to_at = 0.0
        self._to_interval = 0.0
        self._live = False
        self._sent = False

    @property
    def is_client(self) -> bool:
        """True for a client transaction."""
        return self.machine.is_client

    @property
    def is_invite(self) -> bool:
        """True for an INVITE transaction."""
        return self.machine in (Machine.INVITE_CLIENT, Machine.INVITE_SERVER)

    @property
    def timers(self) -> dict[Timer, float]:
        """The running timers and the absolute time (``_at``) each fires at."""
        running: dict[Timer, float] = {}
        if self._rt is not None:
            running[self._rt] = self._rt_at
        if self._to is not None:
            running[self._to] = self._to_at
        return running

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key} {self.state.name}>"


class ClientTransaction(Transaction):
    """A client transaction; ``ack`` is the ACK it built for a non-2xx final."""

    __slots__ = ("ack",)

    def __init__(
        self,
        machine: Machine,
        key: TransactionKey,
        request: Request,
        reliable: bool,
        peer: object,
        now: float,
    ) -> None:
        super().__init__(machine, key, request, reliable, peer, now)
        self.ack: Request | None = None


class ServerTransaction(Transaction):
    """A server transaction; answer with :meth:`TransactionLayer.send_response`."""

    __slots__ = ("send_trying",)

    def __init__(
        self,
        machine: Machine,
        key: TransactionKey,
        request: Request,
        reliable: bool,
        peer: object,
        now: float,
        send_trying: bool = True,
    ) -> None:
        super().__init__(machine, key, request, reliable, peer, now)
        self.send_trying = send_trying


#: A live transaction of either side.
AnyTransaction: TypeAlias = "ClientTransaction | ServerTransaction"


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


@attrs.frozen
class Send:
    """Pass *message* to the transport for *transaction*.

    Requests (and ACKs) of a client transaction go to ``peer``; responses of
    a server transaction go back as §18.2.2 says (``peer`` is what the
    adapter attached to the request). ``retransmission`` is True for a copy
    sent again (timer A/E/G, retransmitted request, response retransmission).
    """

    message: Request | Response
    transaction: AnyTransaction
    retransmission: bool = False

    @property
    def key(self) -> TransactionKey:
        """The transaction's key (for :meth:`TransactionLayer.transport_error`)."""
        return self.transaction.key

    @property
    def peer(self) -> object:
        """The adapter data attached to the transaction."""
        return self.transaction.peer


@attrs.frozen
class DeliverRequest:
    """Pass *request* to the TU.

    A new request (with its new server transaction), an ACK that matched an
    Accepted INVITE server transaction, or, with ``transaction`` None, an ACK
    that matched no transaction (the ACK for a 2xx, §17.2.3: for the TU).
    """

    request: Request
    transaction: ServerTransaction | None


@attrs.frozen
class DeliverResponse:
    """Pass *response* to the TU of the client *transaction*."""

    response: Response
    transaction: ClientTransaction


@attrs.frozen
class TransactionTimeout:
    """Timer B, F or H fired: treat as 408 (§8.1.3.1) or as a missing ACK."""

    transaction: AnyTransaction
    timer: Timer


@attrs.frozen
class TransportError:
    """The transport failed for *transaction* (treat as 503, §8.1.3.1)."""

    transaction: AnyTransaction


@attrs.frozen
class Terminated:
    """*transaction* reached Terminated and left the table."""

    transaction: AnyTransaction


@attrs.frozen
class StrayResponse:
    """A response that matched no client transaction: discard it (RFC 6026 §7.2).

    Reported only so the adapter can count or log it.
    """

    response: Response


Output: TypeAlias = (
    "Send | DeliverRequest | DeliverResponse | TransactionTimeout | TransportError"
    " | Terminated | StrayResponse"
)


# ---------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------


def _response_event(status: int) -> Event:
    if status < 200:
        return Event.RESPONSE_1XX
    if status < 300:
        return Event.RESPONSE_2XX
    return Event.RESPONSE_300_699


def _tu_event(status: int) -> Event:
    if status < 200:
        return Event.TU_1XX
    if status < 300:
        return Event.TU_2XX
    return Event.TU_300_699


class TransactionLayer:
    """The table of live transactions, their matching and their timers.

    Every method that can change something takes ``now`` and returns the
    outputs, in order. Between calls the adapter keeps one timer armed for
    :meth:`next_deadline` and calls :meth:`advance` when it fires.
    """

    def __init__(self, settings: TimerSettings | None = None) -> None:
        self.settings = settings if settings is not None else TimerSettings()
        self._client: dict[TransactionKey, ClientTransaction] = {}
        self._server: dict[TransactionKey, ServerTransaction] = {}
        # RFC 2543 server transactions by (Call-ID, CSeq number)
        self._legacy: dict[tuple[str, int], list[ServerTransaction]] = {}
        # (at, is a retransmission timer, seq): plain numbers, which the
        # garbage collector stops tracking; ``_due`` maps the seq of every
        # running timer to its transaction (a stopped timer's entry stays in
        # the heap until its time and is skipped).
        self._heap: list[tuple[float, bool, int]] = []
        self._due: dict[int, AnyTransaction] = {}
        self._seq = itertools.count()

    # -- the table ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._client) + len(self._server)

    def __iter__(self) -> Iterator[AnyTransaction]:
        yield from list(self._client.values())
        yield from list(self._server.values())

    def __contains__(self, key: object) -> bool:
        return key in self._client or key in self._server

    def get(self, key: TransactionKey) -> AnyTransaction | None:
        """The live transaction with *key*, or None."""
        if key.server:
            return self._server.get(key)
        return self._client.get(key)

    def find_client(self, response: Response) -> ClientTransaction | None:
        """The client transaction *response* belongs to (§17.1.3), or None."""
        key = client_key(response)
        return None if key is None else self._client.get(key)

    def find_server(self, request: Request, scope: object = None) -> ServerTransaction | None:
        """The server transaction *request* (arrived in *scope*) belongs to (§17.2.3), or None.

        An ACK matches its INVITE's transaction. Without the magic cookie the
        RFC 2543 rules apply: Request-URI, To tag, From tag, Call-ID, CSeq and
        top Via; for an ACK, the CSeq number only and the To tag of the
        response the transaction sent. Only a transaction of the same scope
        matches (see :class:`TransactionKey`).
        """
        is_ack = request.method == "ACK"
        key = _server_key(request, "INVITE" if is_ack else request.method, scope)
        if key is not None:
            return self._server.get(key)
        return self._find_legacy(request, scope, ack=is_ack, cancel=False)

    def find_cancelled(self, cancel: Request, scope: object = None) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL names (§9.2), or None.

        The CANCEL's own transaction is a separate one (created by
        :meth:`receive_request`); this finds the transaction to cancel by the
        same rules as :meth:`find_server` with the method taken as INVITE,
        in the scope of the CANCEL's own transaction (``key.scope``).
        """
        key = _server_key(cancel, "INVITE", scope)
        if key is not None:
            return self._server.get(key)
        return self._find_legacy(cancel, scope, ack=False, cancel=True)

    def _find_legacy(
        self, request: Request, scope: object, *, ack: bool, cancel: bool
    ) -> ServerTransaction | None:
        cseq = request.cseq
        candidates = self._legacy.get((request.call_id, cseq.seq))
        if not candidates:
            return None
        from_tag = request.from_.tag
        to_tag = request.to.tag
        top_via = request.top_via
        for txn in candidates:
            if txn.key.scope != scope:
                continue
            orig = txn.request
            if ack or cancel:
                if orig.method != "INVITE":
                    continue
            elif orig.cseq.method != cseq.method:
                continue
            if ack:
                sent = txn.last_response
                if sent is None or sent.to.tag != to_tag:
                    continue
            elif orig.to.tag != to_tag:
                continue
            if (
                orig.from_.tag == from_tag
                and _same_via(orig.top_via, top_via)
                and _same_uri(orig, request)
            ):
                return txn
        return None

    # -- creating transactions ---------------------------------------------

    def client_request(
        self, request: Request, reliable: bool, now: float, peer: object = None
    ) -> tuple[ClientTransaction, list[Output]]:
        """Start a client transaction for *request* (INVITE or not; never ACK).

        The request's top Via must carry the branch that names the
        transaction. Returns the transaction and the outputs (the first
        :class:`Send`). Raises :class:`DuplicateTransactionError` when the key is
        taken and ValueError for an ACK or a request without a branch.
        """
        if request.method == "ACK":
            raise ValueError("an ACK is not sent in a client transaction (§17)")
        key = client_key(request)
        if key is None:
            raise ValueError("the top Via of a request sent needs a branch")
        if key in self._client:
            raise DuplicateTransactionError(key)
        machine = Machine.INVITE_CLIENT if request.method == "INVITE" else Machine.NON_INVITE_CLIENT
        txn = ClientTransaction(machine, key, request, reliable, peer, now)
        self._client[key] = txn
        return txn, self._start(txn, Event.REQUEST_FROM_TU, now, request)

    def server_request(
        self,
        request: Request,
        reliable: bool,
        now: float,
        peer: object = None,
        send_trying: bool = True,
        scope: object = None,
    ) -> tuple[ServerTransaction, list[Output]]:
        """Start a server transaction for a received *request* (never ACK).

        Outputs: :class:`DeliverRequest` for the TU and, for an INVITE with
        *send_trying* (pass False only when the TU answers within 200 ms),
        the :class:`Send` of a 100 Trying. Raises DuplicateTransactionError when a
        transaction already matches (use :meth:`receive_request`, which
        handles retransmissions). *scope* goes into the key (:class:`TransactionKey`).
        """
        if request.method == "ACK":
            raise ValueError("an ACK does not create a server transaction (§17.2.3)")
        method = request.method
        key = _server_key(request, method, scope)
        legacy = key is None
        if key is None:
            if self._find_legacy(request, scope, ack=False, cancel=False) is not None:
                raise DuplicateTransactionError(_legacy_key(request, scope))
            key = _legacy_key(request, scope)
        if key in self._server:
            raise DuplicateTransactionError(key)
        machine = Machine.INVITE_SERVER if method == "INVITE" else Machine.NON_INVITE_SERVER
        txn = ServerTransaction(machine, key, request, reliable, peer, now, send_trying)
        self._server[key] = txn
        if legacy:
            self._legacy.setdefault((request.call_id, request.cseq.seq), []).append(txn)
        return txn, self._start(txn, Event.REQUEST, now, request)

    # -- events from the network -------------------------------------------

    def receive_request(
        self,
        request: Request,
        reliable: bool,
        now: float,
        peer: object = None,
        send_trying: bool = True,
        scope: object = None,
    ) -> list[Output]:
        """Handle a request from the transport (§17.2.3, §18.2.1).

        A retransmission goes to its transaction (which resends its last
        response or absorbs it); an ACK goes to its INVITE's transaction
        (absorbed in Completed/Confirmed, passed to the TU in Accepted) or,
        when none matches, to the TU as ``DeliverRequest(ack, None)``; any
        other request creates a server transaction (see
        :meth:`server_request`). A CANCEL gets a transaction of its own; the
        TU finds the INVITE with :meth:`find_cancelled`. Matching is within
        *scope* (:class:`TransactionKey`). A retransmission that arrived from
        another *peer* (a new connection to the same listener) moves the
        transaction's answers there: §18.2.2, a response goes back where its
        request came from.
        """
        txn = self.find_server(request, scope)
        if txn is not None:
            if request.method == "ACK":
                return self._handle(txn, Event.ACK, now, request)
            if peer is not None:
                txn.peer = peer
            return self._handle(txn, Event.RETRANSMISSION, now, request)
        if request.method == "ACK":
            return [DeliverRequest(request, None)]
        return self.server_request(request, reliable, now, peer, send_trying, scope)[1]

    def receive_response(self, response: Response, now: float) -> list[Output]:
        """Handle a response from the transport (§17.1.3, §18.1.2).

        One that matches no client transaction gives :class:`StrayResponse`.
        """
        txn = self.find_client(response)
        if txn is None:
            return [StrayResponse(response)]
        return self._handle(txn, _response_event(response.status), now, response)

    def transport_error(self, key: TransactionKey, now: float) -> list[Output]:
        """The transport failed to send a message of the transaction *key*.

        §17.1.4 / §17.2.4 (and RFC 6026 for INVITE servers): the TU is
        informed and the transaction moves as its table says. A key no
        longer in the table (the transaction ended meanwhile) is ignored.
        """
        txn = self.get(key)
        if txn is None:
            return []
        return self._handle(txn, Event.TRANSPORT_ERROR, now, None)

    # -- events from the TU -------------------------------------------------

    def abandon(self, transaction: ClientTransaction, now: float) -> list[Output]:
        """Destroy an INVITE client *transaction* still waiting for its final response.

        RFC 3261 §9.1: with no final response 64*T1 after its CANCEL the
        UAC considers the INVITE cancelled and destroys the transaction.
        Later responses to it are strays. Nothing happens to a transaction
        that already has its final response or ended.
        """
        if not transaction._live or (transaction.machine, transaction.state) not in _ABANDONABLE:
            return []
        return self._handle(transaction, Event.TU_ABANDON, now, None)

    def send_response(
        self, transaction: ServerTransaction, response: Response, now: float
    ) -> list[Output]:
        """Send *response* (built by the TU) in the server *transaction*.

        Raises :class:`IllegalTransitionError` when the machine does not allow it
        (e.g. a second final response to an INVITE, or any response once the
        transaction ended).
        """
        event = _tu_event(response.status)
        if not transaction._live:
            raise IllegalTransitionError(transaction.machine, TransactionState.TERMINATED, event)
        return self._handle(transaction, event, now, response)

    # -- time ---------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`advance` must next be called (absolute ``_at`` time), or None."""
        heap = self._heap
        due = self._due
        while heap:
            entry = heap[0]
            if entry[2] in due:
                return entry[0]
            heapq.heappop(heap)
        return None

    def advance(self, now: float) -> list[Output]:
        """Fire every timer due at *now*, earliest first; return the outputs."""
        out: list[Output] = []
        heap = self._heap
        due = self._due
        while heap and heap[0][0] <= now:
            seq = heapq.heappop(heap)[2]
            txn = due.pop(seq, None)
            if txn is None:
                continue  # stopped or restarted since
            out += self._fire(txn, seq, now)
        return out

    # -- the machine --------------------------------------------------------

    def _start(
        self, txn: AnyTransaction, event: Event, now: float, request: Request
    ) -> list[Output]:
        txn._live = True
        tr = transition(txn.machine, None, event)
        return self._apply(txn, tr, event, now, request)

    def _handle(
        self, txn: AnyTransaction, event: Event, now: float, message: Request | Response | None
    ) -> list[Output]:
        tr = transition(txn.machine, txn.state, event)
        return self._apply(txn, tr, event, now, message)

    def _fire(self, txn: AnyTransaction, seq: int, now: float) -> list[Output]:
        """Run the timer ``seq`` of ``txn`` (already taken out of ``_due``)."""
        if txn._rt_seq == seq:
            timer = txn._rt
            txn._rt = txn._rt_seq = None
        else:
            timer = txn._to
            txn._to = txn._to_seq = None
        assert timer is not None
        return self._handle(txn, _TIMER_EVENT[timer], now, None)

    def _apply(
        self,
        txn: AnyTransaction,
        tr: Transition,
        event: Event,
        now: float,
        message: Request | Response | None,
    ) -> list[Output]:
        out: list[Output] = []
        for action in tr.actions:
            self._do(action, txn, event, now, message, out)
        state = tr.next_state
        txn.state = state
        if state is TransactionState.TERMINATED:
            self._remove(txn)
            out.append(Terminated(txn))
            return out
        if state in _LINGERING and txn.machine in _NON_INVITE:
            # Only retransmissions are handled from here on (for up to 64*T1),
            # and the TU is done with a non-INVITE: drop the typed header
            # values (re-parsed on demand if ever needed). The TU drops those
            # of an INVITE when its call ends.
            txn.request.headers.forget_parsed()
            if txn.last_response is not None:
                txn.last_response.headers.forget_parsed()
        live = STATE_TIMERS[txn.machine][state]
        due = self._due
        seq = txn._rt_seq
        if seq is not None and txn._rt not in live:
            del due[seq]
            txn._rt = txn._rt_seq = None
        seq = txn._to_seq
        if seq is not None:
            if txn._to not in live:
                del due[seq]
                txn._to = txn._to_seq = None
            elif txn._to_interval <= 0 and txn._live:
                # a wait of 0 (Timer D, I, J or K on a reliable transport) ends now
                del due[seq]
                out += self._fire(txn, seq, now)
        return out

    def _do(
        self,
        action: Action,
        txn: AnyTransaction,
        event: Event,
        now: float,
        message: Request | Response | None,
        out: list[Output],
    ) -> None:
        settings = self.settings
        if action is Action.SEND_REQUEST:
            out.append(Send(txn.request, txn, txn._sent))
            txn._sent = True
        elif action is Action.SEND_ACK:
            assert isinstance(txn, ClientTransaction) and isinstance(message, Response)
            again = txn.ack is not None
            if txn.ack is None:
                txn.ack = build_ack(txn.request, message)
            out.append(Send(txn.ack, txn, again))
        elif action is Action.SEND_RESPONSE:
            assert isinstance(message, Response)
            txn.last_response = message
            out.append(Send(message, txn))
        elif action is Action.RESEND_RESPONSE:
            if txn.last_response is not None:
                out.append(Send(txn.last_response, txn, True))
        elif action is Action.SEND_100:
            assert isinstance(txn, ServerTransaction)
            if txn.send_trying:
                trying = response_to(txn.request, 100)
                txn.last_response = trying
                out.append(Send(trying, txn))
        elif action is Action.REQUEST_TO_TU or action is Action.ACK_TO_TU:
            assert isinstance(txn, ServerTransaction) and isinstance(message, Request)
            out.append(DeliverRequest(message, txn))
        elif action is Action.RESPONSE_TO_TU:
            assert isinstance(txn, ClientTransaction) and isinstance(message, Response)
            txn.last_response = message
            out.append(DeliverResponse(message, txn))
        elif action is Action.TIMEOUT_TO_TU:
            out.append(TransactionTimeout(txn, _EVENT_TIMER[event]))
        elif action is Action.ERROR_TO_TU:
            out.append(TransportError(txn))
        elif action in _START:
            timer = _START[action]
            if timer in RETRANSMIT_TIMERS and txn.reliable:
                return  # §17.1.1.2, §17.1.2.2, §17.2.1: retransmit on unreliable only
            self._arm(txn, timer, now, settings.initial(timer, txn.reliable))
        elif action in _RESET:
            timer = _RESET[action]
            self._arm(txn, timer, now, settings.doubled(timer, txn._rt_interval))
        elif action is Action.RESET_E_T2:
            self._arm(txn, Timer.E, now, settings.t2)
        else:  # pragma: no cover - every action is handled above
            raise AssertionError(action)

    def _arm(self, txn: AnyTransaction, timer: Timer, now: float, interval: float) -> None:
        at = now + interval
        seq = next(self._seq)
        due = self._due
        if timer in RETRANSMIT_TIMERS:
            if txn._rt_seq is not None:
                due.pop(txn._rt_seq, None)
            txn._rt = timer
            txn._rt_seq = seq
            txn._rt_at = at
            txn._rt_interval = interval
            # at the same instant, timeouts fire before retransmissions
            heapq.heappush(self._heap, (at, True, seq))
        else:
            granularity = self.settings.linger_granularity
            if granularity and interval > 0 and timer in LINGER_TIMERS:
                at = math.ceil(at / granularity) * granularity
            if txn._to_seq is not None:
                due.pop(txn._to_seq, None)
            txn._to = timer
            txn._to_seq = seq
            txn._to_at = at
            txn._to_interval = interval
            heapq.heappush(self._heap, (at, False, seq))
        due[seq] = txn

    def _remove(self, txn: AnyTransaction) -> None:
        txn._live = False
        due = self._due
        if txn._rt_seq is not None:
            due.pop(txn._rt_seq, None)
        if txn._to_seq is not None:
            due.pop(txn._to_seq, None)
        txn._rt = txn._rt_seq = txn._to = txn._to_seq = None
        if isinstance(txn, ClientTransaction):
            self._client.pop(txn.key, None)
            return
        assert isinstance(txn, ServerTransaction)
        self._server.pop(txn.key, None)
        if txn.key.legacy is not None:
            slot = (txn.request.call_id, txn.request.cseq.seq)
            bucket = self._legacy.get(slot, [])
            if txn in bucket:
                bucket.remove(txn)
            if not bucket:
                self._legacy.pop(slot, None)
