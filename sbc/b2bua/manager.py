"""The B2BUA's tables: calls, dialogs, transactions in flight, timers and counters.

:class:`CallManager` is what :class:`~sbc.core.SbcCore` hands requests and
responses to once a request is admitted. It holds no global state: every
table is an attribute, and everything a call does goes through the
:class:`~sbc.sip.stack.SipStack` it is given. Time is an argument: the
manager's own timers (2xx retransmission and the ACK wait of RFC 3261
§13.3.1.4, and the timers of each outbound INVITE: Timer C of §16.6, the
``no-answer-timeout`` limit, and the wait after a CANCEL, see
:mod:`sbc.b2bua.outgoing`) run when :meth:`CallManager.advance` is called,
at :meth:`CallManager.next_deadline` at the latest.

Tables, all empty once every call is over (tests check it):

* ``calls``: call id -> :class:`~sbc.b2bua.call.Call`,
* ``dialogs``: (Call-ID, our tag) -> (call, leg), for in-dialog requests, ACKs
  and 2xx retransmissions,
* ``clients``: client transaction key -> the call (B-leg INVITE, OPTIONS...)
  or :class:`~sbc.b2bua.call.Relay` waiting for its responses,
* ``servers``: server transaction key -> the call or relay a CANCEL may name.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Union

import attrs

from sbc import security
from sbc.adjacencies import AdjacencyTable
from sbc.b2bua import calllog
from sbc.b2bua.call import (
    Call,
    CallState,
    Challenged,
    HuntPolicy,
    Leg,
    PendingAck,
    Relay,
    Target,
)
from sbc.b2bua.outgoing import DeadlineBuckets
from sbc.cluster.hop import ClusterCaller
from sbc.config import AdjacencyConfig
from sbc.counters import Counters
from sbc.errors import SipError
from sbc.routing import RouteKey, RoutingDecision
from sbc.sip.message import Request, Response, response_to
from sbc.sip.stack import Flow, SipStack, StackOutput
from sbc.sip.transaction import ClientTransaction, ServerTransaction, TransactionKey
from sbc.sip.uri import URI

__all__ = ["CallManager", "DeadlineBuckets", "Locator", "RouterFunction", "TimerHandle"]

#: The routing API (sbc.routing.Router.route has this signature).
RouterFunction = Callable[[RouteKey, AdjacencyTable, Callable[[str], int]], RoutingDecision]
#: Registered contacts for a URI (a local domain's AOR, or a relayed registration's
#: token), given the inbound adjacency's name; ``None``: routing decides.
Locator = Callable[[URI, str, float], "list[Target] | None"]

Handler = Union[Call, Relay]

#: The route path of a call to the registered contacts of an AOR in a local domain.
REGISTRAR_PATH = ("registered contacts",)

#: Timer C when nothing else is configured: the RFC 3261 §16.6 minimum, 3 minutes.
DEFAULT_NO_ANSWER_TIMEOUT = 180.0
#: Seconds a caller has to retry a challenged request on the same outbound dialog.
CHALLENGE_TTL = 32.0
#: Challenged dialogs remembered at most (expired ones go first, then all).
MAX_CHALLENGES = 10000


def _never(now: float) -> list[StackOutput]:
    return []


class TimerHandle:
    """A scheduled callback; :meth:`cancel` stops it."""

    __slots__ = ("at", "callback", "cancelled")

    def __init__(self, at: float, callback: Callable[[float], list[StackOutput]]) -> None:
        self.at = at
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run; drop the callback (and what it holds) at once.

        The handle itself stays in the heap until its time comes, so the
        callback's closure (a call, its legs, a response) must not wait
        there with it.
        """
        self.cancelled = True
        self.callback = _never


class CallManager:
    """The table of calls and the entry points the core calls; see the module docstring."""

    stack: SipStack

    def __init__(
        self,
        table: Callable[[], AdjacencyTable],
        router: RouterFunction,
        hunting: HuntPolicy | None = None,
        locate: Locator | None = None,
        counters: Counters | None = None,
        no_answer_timeout: Callable[[], float] | None = None,
    ) -> None:
        self.table = table
        #: Timer C in seconds (RFC 3261 §16.6): the ``no-answer-timeout`` limit.
        self.no_answer_timeout: Callable[[], float] = no_answer_timeout or (
            lambda: DEFAULT_NO_ANSWER_TIMEOUT
        )
        #: The deadline of each outbound INVITE in progress (Timer C, or the wait
        #: for the final response after a CANCEL): sbc.b2bua.outgoing.
        self.b_deadlines = DeadlineBuckets()
        self.router = router
        #: What this node says of a caller in the calls it hands to another node
        #: (sbc.cluster.routing.ClusterRouting.caller; docs/scaling.md).
        self.cluster_caller: Callable[[str, bool], ClusterCaller] | None = None
        self.hunting = hunting or HuntPolicy()
        self.locate = locate
        self.counters = counters if counters is not None else Counters()
        self.calls: dict[int, Call] = {}
        #: Live calls per adjacency (kept by :meth:`recount`; see :meth:`active_calls`).
        self._active: dict[str, int] = {}
        self.dialogs: dict[tuple[str, str], tuple[Call, Leg]] = {}
        self.clients: dict[TransactionKey, Handler] = {}
        self.servers: dict[TransactionKey, Handler] = {}
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._call_ids = itertools.count(1)
        #: Caps call.refused log events under a flood (calllog.RefusalLimiter).
        self.refusals = calllog.RefusalLimiter()
        #: (caller's Call-ID, From tag) -> the outbound dialog of its challenged request
        self.challenges: dict[tuple[str, str], Challenged] = {}

    # -- queries ----------------------------------------------------------------

    def active_calls(self, adjacency: str) -> int:
        """How many live calls use ``adjacency`` (either leg)."""
        return self._active.get(adjacency, 0)

    def recount(self, before: frozenset[str], after: frozenset[str]) -> None:
        """A listed call now uses ``after`` instead of ``before`` (``Call.recount``)."""
        active = self._active
        for name in before - after:
            left = active[name] - 1
            if left:
                active[name] = left
            else:
                del active[name]
        for name in after - before:
            active[name] = active.get(name, 0) + 1

    @property
    def idle(self) -> bool:
        """True when no call, dialog, transaction or timer is left."""
        return not (
            self.calls or self.dialogs or self.clients or self.servers or self.next_deadline()
        )

    def count(self, adjacency: str | None, name: str) -> None:
        """Count an outcome (``calls-answered``, ``hunt-skip:503``...) for ``adjacency``."""
        self.counters.increment(adjacency, name)

    def next_call_id(self) -> int:
        """A number naming a new call in ``calls``."""
        return next(self._call_ids)

    # -- entry points from the core ---------------------------------------------

    def new_request(
        self,
        request: Request,
        transaction: ServerTransaction,
        flow: Flow,
        inbound: AdjacencyConfig,
        now: float,
        caller: ClusterCaller | None = None,
        reply_flow: Flow | None = None,
    ) -> list[StackOutput]:
        """An admitted out-of-dialog request: route it and start hunting.

        Raises the routing's ``SipError`` (480...) before any state is kept;
        the refusal is logged (``call.refused``) and counted
        (``calls-refused:RULE``). ``caller``: a request from the cluster link,
        with what the node it entered said of its caller; ``reply_flow``:
        where the call's requests to the caller go, when not where it came from.
        """
        call = Call(self, request, transaction, flow, inbound, now, caller, reply_flow)
        try:
            targets = self.targets_for(call, request.uri, now)
        except SipError as error:
            calllog.log_refused(
                call.id, request, inbound, call.secure, error, self.refusals, now, call.trusted
            )
            self.count(inbound.name, calllog.refused_counter(error))
            raise
        self.calls[call.id] = call
        call.listed = True
        call.recount()
        self.count(inbound.name, "calls-started" if call.dialog else "requests-started")
        if call.dialog:
            self.bind_server(transaction, call)
            self.bind_dialog(call, call.a)
        return call.start(targets, now)

    def targets_for(self, call: Call, uri: URI, now: float) -> list[Target]:
        """The hunt candidates for ``uri`` (registered contacts, or routing).

        Records the matched routing path in ``call.route_path``.
        """
        if self.locate is not None:
            located = self.locate(uri, call.inbound.name, now)
            if located is not None:
                call.route_path = REGISTRAR_PATH
                table = self.table()
                allowed = []
                for target in located:
                    adjacency = table.get(target.adjacency)
                    if target.holder is not None:
                        # another node's phone: it checks the phone's adjacency itself
                        if adjacency is not None and security.may_cross_cluster(
                            adjacency, call.secure
                        ):
                            allowed.append(target)
                        continue
                    if adjacency is None or not security.may_send_out_of(
                        adjacency, call.secure, call.trusted
                    ):
                        continue
                    transport = target.flow.transport if target.flow is not None else ""
                    if not security.registered_contact_usable(
                        uri.scheme,
                        target.uri.scheme,
                        security.reached_over_tls(adjacency, transport),
                    ):
                        continue
                    allowed.append(target)
                if not allowed:
                    raise security.no_route(call.secure)
                return allowed
        key = RouteKey.from_uri(call.inbound.name, uri, call.trusted)
        if key.secure != call.secure:
            key = attrs.evolve(key, secure=call.secure)
        decision = self.router(key, self.table(), self.active_calls)
        call.route_path = decision.path
        scheme = security.outbound_scheme(uri.scheme)
        target_uri = uri if uri.scheme == scheme else uri.with_scheme(scheme)
        return [Target(d.adjacency, target_uri) for d in decision.destinations]

    def in_dialog(
        self, request: Request, transaction: ServerTransaction, flow: Flow, now: float
    ) -> list[StackOutput]:
        """A request with a To tag: relay it within its call, or 481."""
        found = self.dialogs.get((request.call_id, request.to.tag or ""))
        if found is None:
            raise SipError(481, "Call/Transaction Does Not Exist")
        call, leg = found
        return call.in_dialog(leg, request, transaction, now)

    def ack(self, request: Request, now: float) -> list[StackOutput]:
        """An ACK for a 2xx: it ends that 2xx's retransmissions and is relayed as an ACK."""
        found = self.dialogs.get((request.call_id, request.to.tag or ""))
        if found is None:
            return []
        call, leg = found
        return call.on_ack(leg, request, now)

    def cancel(
        self, request: Request, transaction: ServerTransaction, flow: Flow, now: float
    ) -> list[StackOutput]:
        """CANCEL: 200 by its own transaction, then 487 to the INVITE and CANCEL onward."""
        invite = self.stack.transactions.find_cancelled(request, transaction.key.scope)
        if invite is None:
            raise SipError(481, "Call/Transaction Does Not Exist")
        outputs = self.stack.respond(transaction, response_to(request, 200), now)
        handler = self.servers.get(invite.key)
        if handler is not None:
            outputs += handler.on_cancel(now)
        return outputs

    def response(
        self, response: Response, transaction: ClientTransaction, now: float
    ) -> list[StackOutput]:
        """A response to something a call sent."""
        handler = self.clients.get(transaction.key)
        if handler is not None:
            return handler.on_response(response, now)
        if 200 <= response.status < 300 and response.cseq.method == "INVITE":
            # a retransmitted 2xx: ACK it again (if its ACK was sent already)
            found = self.dialogs.get((response.call_id, response.from_.tag or ""))
            if found is not None:
                call, leg = found
                return call.resend_ack(leg, response)
        return []

    def failure(
        self, transaction: ClientTransaction | ServerTransaction, reason: str, now: float
    ) -> list[StackOutput]:
        """A client transaction timed out or hit a transport error."""
        handler = self.clients.pop(transaction.key, None)
        if handler is None:
            return []
        return handler.on_failure(reason, now)

    def release_adjacency(self, name: str, now: float) -> list[StackOutput]:
        """Release every live call with a leg on adjacency ``name`` (``no attach``).

        Answered calls get a BYE on both legs; calls being set up get a 503
        to the caller and a CANCEL on a B-leg that is proceeding, requests
        being relayed a 503 too (see :meth:`Call.terminate`). Each call is
        counted as ``calls-released:detach`` on ``name``. Messages on the leg
        of the detached adjacency are sent best effort (its listener is
        closing).
        """
        outputs: list[StackOutput] = []
        error = SipError(503, f"Service Unavailable - adjacency {name} detached")
        for call in list(self.calls.values()):
            if call.state is not CallState.ENDED and name in call.adjacencies:
                why = f"adjacency {name} detached"
                outputs += call.terminate(now, why, error, (name, "calls-released:detach"))
        return outputs

    # -- challenges relayed to the caller (authentication delegated) -------------

    def note_challenge(self, call: Call, leg: Leg, now: float) -> None:
        """``leg``'s request was answered 401/407: remember its dialog for the retry."""
        if len(self.challenges) >= MAX_CHALLENGES:
            self.challenges = {k: c for k, c in self.challenges.items() if c.until > now}
            if len(self.challenges) >= MAX_CHALLENGES:
                self.challenges.clear()
        key = (call.request.call_id, call.request.from_.tag or "")
        self.challenges[key] = Challenged(
            leg.call_id, leg.local_tag, leg.local_cseq, leg.adjacency, now + CHALLENGE_TTL
        )

    def challenge_for(self, request: Request, now: float) -> Challenged | None:
        """The challenged dialog a new request retries (same Call-ID and From tag), if any."""
        if not self.challenges:
            return None
        found = self.challenges.pop((request.call_id, request.from_.tag or ""), None)
        if found is None or found.until <= now:
            return None
        return found

    # -- tables -------------------------------------------------------------------

    def bind_client(self, transaction: ClientTransaction, handler: Handler) -> None:
        """Responses to ``transaction`` go to ``handler``."""
        self.clients[transaction.key] = handler

    def unbind_client(self, transaction: ClientTransaction) -> None:
        """Forget ``transaction`` (its final response arrived, or the call is over)."""
        self.clients.pop(transaction.key, None)

    def bind_server(self, transaction: ServerTransaction, handler: Handler) -> None:
        """A CANCEL naming ``transaction`` goes to ``handler``."""
        self.servers[transaction.key] = handler

    def unbind_server(self, transaction: ServerTransaction) -> None:
        """``transaction`` can no longer be cancelled through us."""
        self.servers.pop(transaction.key, None)

    def bind_dialog(self, call: Call, leg: Leg) -> None:
        """Requests with ``leg``'s Call-ID and our tag go to ``call``."""
        self.dialogs[leg.dialog_key] = (call, leg)

    def unbind_dialog(self, leg: Leg) -> None:
        """Forget ``leg``'s dialog."""
        found = self.dialogs.get(leg.dialog_key)
        if found is not None and found[1] is leg:
            del self.dialogs[leg.dialog_key]

    def dialog_ref(self, call_id: str, to_tag: str, from_tag: str) -> tuple[str, str, str] | None:
        """A dialog named from one side, as (Call-ID, to-tag, from-tag) of the other leg.

        ``to_tag`` / ``from_tag`` come from a Replaces header; whichever of
        them is the SBC's own tag on that leg, the mapped pair keeps the
        same orientation on the other leg (the SBC's tag where the SBC's
        was, the far party's where the near party's was). ``None`` when
        the SBC holds no such dialog.
        """
        for ours, theirs in ((to_tag, from_tag), (from_tag, to_tag)):
            found = self.dialogs.get((call_id, ours))
            if found is None:
                continue
            call, leg = found
            other = call.other(leg)
            if leg.remote_tag != theirs or other is None or other.remote_tag is None:
                return None
            far, near = other.remote_tag, other.local_tag
            return (other.call_id, far, near) if ours == to_tag else (other.call_id, near, far)
        return None

    def forget(self, call: Call) -> None:
        """Drop ``call`` from the call table (idempotent)."""
        if self.calls.pop(call.id, None) is not None:
            call.listed = False
            call.recount()

    # -- 2xx retransmission (RFC 3261 §13.3.1.4, RFC 6026) ------------------------

    def await_ack(
        self,
        call: Call,
        leg: Leg,
        response: Response,
        other_cseq: int | None,
        flow: Flow,
        now: float,
    ) -> list[StackOutput]:
        """Retransmit ``response`` (a 2xx we sent on ``leg``) until its ACK arrives."""
        settings = self.stack.transactions.settings
        pending = PendingAck(response, flow, settings.t1, now + 64 * settings.t1, other_cseq)
        wait = _AckWait(self, call, leg, pending, response.cseq.seq)
        pending.cancel_timers = wait.cancel_all
        leg.unacked[wait.cseq] = pending
        if not flow.reliable:
            wait.handles.append(self.schedule(now + settings.t1, wait.retransmit))
        wait.handles.append(self.schedule(pending.give_up_at, wait.give_up))
        return []

    # -- timers -------------------------------------------------------------------

    def schedule(self, at: float, callback: Callable[[float], list[StackOutput]]) -> TimerHandle:
        """Run ``callback(now)`` from :meth:`advance` once ``now >= at``."""
        handle = TimerHandle(at, callback)
        heapq.heappush(self._timers, (at, next(self._seq), handle))
        return handle

    def next_deadline(self) -> float | None:
        """When :meth:`advance` must next be called, or ``None``."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        first = timers[0][0] if timers else None
        second = self.b_deadlines.next_deadline()
        if second is None:
            return first
        return second if first is None or second < first else first

    def advance(self, now: float) -> list[StackOutput]:
        """Run every timer due at ``now``."""
        outputs: list[StackOutput] = []
        for waiting in self.b_deadlines.due(now):
            outputs += waiting.deadline_passed(now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, handle = heapq.heappop(timers)
            if not handle.cancelled:
                callback = handle.callback
                handle.cancel()
                outputs += callback(now)
        return outputs


def _no_timers() -> None:
    return None


class _AckWait:
    """The timers of one :class:`PendingAck`: retransmit the 2xx, give up at 64*T1.

    No closures: :meth:`cancel_all` (the ACK arrived, the call ended, or we
    gave up) drops every reference between the pending 2xx, this object and
    the timer handles, so a finished call leaves no reference cycle behind
    for the garbage collector.
    """

    __slots__ = ("call", "cseq", "handles", "leg", "manager", "pending")

    def __init__(
        self, manager: CallManager, call: Call, leg: Leg, pending: PendingAck, cseq: int
    ) -> None:
        self.manager = manager
        self.call = call
        self.leg = leg
        self.pending = pending
        self.cseq = cseq
        self.handles: list[TimerHandle] = []

    def cancel_all(self) -> None:
        for handle in self.handles:
            handle.cancel()
        self.handles.clear()
        self.pending.cancel_timers = _no_timers

    def retransmit(self, at: float) -> list[StackOutput]:
        pending = self.pending
        if self.leg.unacked.get(self.cseq) is not pending:
            return []
        settings = self.manager.stack.transactions.settings
        pending.interval = min(2 * pending.interval, settings.t2)
        next_at = at + pending.interval
        if next_at < pending.give_up_at:
            self.handles.append(self.manager.schedule(next_at, self.retransmit))
        return self.manager.stack.send_stateless(pending.response, pending.flow)

    def give_up(self, at: float) -> list[StackOutput]:
        if self.leg.unacked.pop(self.cseq, None) is not self.pending:
            return []
        self.cancel_all()
        return self.call.ack_timeout(self.leg, at, self.pending.other_cseq)
