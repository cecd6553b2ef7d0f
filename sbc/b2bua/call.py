"""One call through the B2BUA: an A-leg, the B-legs tried in turn, a hunt list.

The inbound leg (the *A-leg*) ends at the SBC, which is its UAS; each
outbound attempt is a *B-leg* the SBC originates as a UAC with its own
Call-ID, From tag, CSeq, Via and Contact (docs/security-model.md). The two legs
share nothing that reveals topology: only the Request-URI / From / To
addresses, the end-to-end headers and the body (SDP, unchanged) cross.

Legs are symmetric once the call is set up: an in-dialog request received on
one leg is relayed on the other (:class:`Relay`), with the other leg's
Call-ID, tags, CSeq, remote target and route set. Which side is which only
matters while the call is being set up (hunting, 3xx recursion, CANCEL).

Choices made here (documented in behaviour terms):

* **ACK for 2xx**: each leg ACKs its own 2xx. The SBC relays a 2xx to the
  other side at once and sends the ACK on the leg that answered when the
  ACK arrives from the side it relayed the 2xx to, with that ACK's body
  (so a late offer/answer in the ACK crosses). A 2xx retransmitted by the
  answering peer after that gets the same ACK again.
* **2xx retransmission** (RFC 3261 §13.3.1.4, RFC 6026): the 2xx the SBC
  sends as UAS is retransmitted on UDP every T1, doubling to T2, until its
  ACK arrives; with no ACK after 64*T1 the call is brought down with a BYE
  on both legs (reliable transports: no retransmission, same timeout).
* **Hunting**: a candidate that fails with a transport error, a TLS
  failure, a timeout, or a final response whose code is in
  :attr:`HuntPolicy.continue_on` (default 408 and 503) is skipped for the
  next one. Any other final response (every other 4xx, 5xx, 6xx) ends
  hunting and is relayed to the caller. 3xx responses are recursed on
  (:mod:`sbc.security` decides whether a redirect may be followed). When
  every candidate failed the caller gets the best failure received
  (RFC 3261 §16.7 step 6: a 6xx, else the lowest class, so a 408 before a
  503), or 503 when none was.
* **Next hops found by DNS** (RFC 3263, :mod:`sbc.sip.locate`): a candidate
  whose next hop is a host name is first resolved: the call hands a
  :class:`~sbc.sip.stack.Resolve` to the edge and goes on when its reply
  comes (:meth:`Call._resolved`). Each destination found (every address of
  every SRV target, in priority and weight order) becomes a hunt entry of
  its own, so a dead one fails over to the next like any failed candidate.
  Nothing found counts as a 503 from that candidate (``hunt-skip:dns``).
* **No answer (Timer C, RFC 3261 §16.6 step 11 and §16.8)**: a B-leg
  INVITE with no final response ``no-answer-timeout`` seconds (default
  180) after it was sent, or after its latest provisional response above
  100, is CANCELled and its end counts as a 408 Request Timeout: hunting
  goes on to the next candidate (408 is in the default continue-on set),
  else the caller gets 408. With no provisional response yet, the CANCEL
  waits for the first one (§9.1) and Timer B ends the INVITE 64*T1 after
  it was sent; a 2xx that arrives first still connects the call. A
  relayed re-INVITE gets the same timer: 408 to its sender and CANCEL. A
  CANCELled INVITE (for any reason) whose final response has not come
  64*T1 after the CANCEL is given up (§9.1), so a peer that never answers
  cannot keep a call in the tables. A 2xx that arrives after that is a
  stray: not ACKed nor BYEd (the peer's own timers end its dialog).
  The lifecycle that a B-leg INVITE and a relayed re-INVITE share (sent,
  provisional seen, CANCEL held or sent, Timer C, given up) is ONE
  transition table, :mod:`sbc.b2bua.outgoing`; this module says what its
  events mean for the call.
* **Ending a call**: :meth:`Call.terminate` is the one verb. Whatever the
  call's state, every request still waiting for its final response gets
  one (the caller's INVITE, relayed in-dialog requests: 480, or 503 when an
  adjacency is detached), a B-leg INVITE in progress is CANCELled and every
  confirmed dialog gets a BYE. The SBC calls it when a 2xx is never ACKed,
  when an in-dialog request gets no answer or 408/481, when a target refresh
  tries to change the URI scheme, and for ``no attach`` of an adjacency.
  The other ends are the peers' doing and handled as events: a final
  response to the caller, its CANCEL (:meth:`Call.on_cancel`), a BYE from
  either side. All of them finish with ``_leave_tables`` (bookkeeping only).
* **In-dialog destination**: requests on a leg go to the flow its peer
  talks from (the A-leg's request source, the B-leg's destination),
  symmetric signaling as SBCs do behind NAT; the Request-URI is the
  remote target and Route the leg's route set.
* **Call log**: the routing decision, each hunting step and the caller's
  final response (for an answered call: its end) are logged through
  :mod:`sbc.b2bua.calllog` (docs/logging.md).
"""

from __future__ import annotations

import contextlib
import enum
import re
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Protocol

import attrs

from sbc import security
from sbc.adjacencies import AdjacencyTable
from sbc.b2bua import calllog
from sbc.b2bua.nexthop import Target, destination_flow, next_hop
from sbc.b2bua.outgoing import OutgoingHost, OutgoingInvite
from sbc.cluster.hop import CLUSTER_HEADER, NOT_REACHED, ClusterCaller, not_reached
from sbc.config import AdjacencyConfig
from sbc.errors import SipError
from sbc.sip.headers import CSeq, Headers, NameAddr, Via
from sbc.sip.ids import random_below, random_hex
from sbc.sip.locate import NextHop, Resolution
from sbc.sip.message import Request, Response, response_to
from sbc.sip.stack import Flow, Resolve, StackOutput
from sbc.sip.transaction import ClientTransaction, IllegalTransitionError, ServerTransaction
from sbc.sip.uri import URI, host_text

__all__ = [
    "DEFAULT_CONTINUE_ON",
    "RELEASED",
    "Call",
    "CallHost",
    "CallState",
    "HuntPolicy",
    "Leg",
    "Relay",
    "Target",
    "contact_for",
    "outbound_flow",
]

#: Final response codes that make hunting go on to the next candidate.
DEFAULT_CONTINUE_ON: frozenset[int] = frozenset({408, 503})

#: Headers never copied from one leg to the other: they describe one hop or
#: one dialog (topology hiding, docs/security-model.md), or are rebuilt per leg.
HOP_HEADERS: frozenset[str] = frozenset(
    h.lower()
    for h in (
        "Via",
        "Route",
        "Record-Route",
        "Contact",
        "Call-ID",
        "From",
        "To",
        "CSeq",
        "Max-Forwards",
        "Content-Length",
        "Path",
        "Service-Route",
        "RAck",
        "Warning",
        # between SBC nodes only (sbc/cluster/hop.py): a caller cannot bring one along
        CLUSTER_HEADER,
    )
)

#: Methods whose Contact sets or refreshes the remote target (§12, RFC 3311).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})
#: Methods (and their 2xx) that carry a Contact of ours.
WITH_CONTACT = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
#: Final responses to an in-dialog request that end the dialog (RFC 3261 §12.2.1.2).
DIALOG_ENDING = frozenset({408, 481})
#: Redirect recursion depth: more 3xx than this in one call end hunting.
MAX_REDIRECTS = 5
#: Why a call ended when a target refresh tried to change the URI scheme (call log).
REFRESH_REFUSED = "target refresh changed the URI scheme"
#: What a request still waiting for its final response gets when the SBC ends its call.
RELEASED = SipError(480, "Temporarily Unavailable")


def new_tag() -> str:
    """A fresh, unguessable tag (RFC 3261 §19.3)."""
    return random_hex(6)


def new_call_id(host: str) -> str:
    """A fresh, globally unique Call-ID naming only the SBC's own address."""
    return f"{random_hex(12)}@{host.strip('[]')}"


def outbound_flow(
    adjacency: AdjacencyConfig, uri: URI, local: tuple[str, int] | None = None
) -> Flow:
    """Where a request out of ``adjacency`` to ``uri`` goes before any DNS (docs/routing.md).

    TLS when the adjacency's outbound security is trusted-encrypted, else its
    transport (UDP first for ``udp-tcp``, or the Request-URI's
    ``;transport=``). The next hop is the ``signaling-peer`` when configured,
    else the Request-URI's host and port (see :mod:`sbc.b2bua.nexthop`). For
    TLS, :attr:`Flow.server_name` is the name the certificate must match (and
    the SNI): the signaling peer when it is a host name, else the
    Request-URI's host, the domain the request is for (RFC 5922 §7.3); an IP
    address only when that is what the URI names. A host name next hop is
    resolved by the hunt first (:meth:`Call._resolve`); this flow is the one
    used for an IP address.
    """
    hop = next_hop(adjacency, uri).default_destination
    return destination_flow(adjacency, uri, hop, local)


def contact_for(flow: Flow, user: str | None = None, *, secure: bool = True) -> NameAddr:
    """Our Contact on a leg that uses ``flow``; it follows the dialog's scheme on TLS.

    On TLS: ``sips:...;transport=tls`` in a ``sips:`` dialog (``secure``),
    ``sip:...;transport=tls`` in a ``sip:`` one (a ``sip:`` UA cannot send
    to a ``sips:`` Contact, RFC 5630 §3.1.2). On TCP ``transport=tcp``.
    The address is the flow's :attr:`~sbc.sip.stack.Flow.advertised` one when
    it has one (a worker process's own port), else its local one.
    """
    host, port = flow.advertised or flow.local
    if flow.transport == "TLS":
        params: tuple[tuple[str, str | None], ...] = (("transport", "tls"),)
        scheme = "sips" if secure else "sip"
    elif flow.transport == "TCP":
        params, scheme = (("transport", "tcp"),), "sip"
    else:
        params, scheme = (), "sip"
    return NameAddr(None, URI(scheme, user, None, host_text(host), port, params))


def _via(flow: Flow, branch: str) -> Via:
    host, port = flow.advertised or flow.local
    return Via(flow.transport, host_text(host), port, (("branch", branch), ("rport", None)))


#: Headers naming a dialog by Call-ID and tags (RFC 3891 Replaces, RFC 3515
#: Refer-To with an embedded Replaces): rewritten to the other leg's dialog.
DIALOG_REF_HEADERS: frozenset[str] = frozenset({"replaces", "refer-to"})

_EMBEDDED_REPLACES = re.compile(r"(?i)(\?|&)(replaces=)([^&>\s]*)")


def copy_end_to_end(source: Request | Response, headers: Headers) -> bool:
    """Copy the headers of ``source`` that are not per-hop or per-dialog.

    Returns True when one of them may name a dialog (:data:`DIALOG_REF_HEADERS`):
    the caller then maps it with :func:`rewrite_dialog_refs`.
    """
    return not DIALOG_REF_HEADERS.isdisjoint(headers.copy_lines(source.headers, HOP_HEADERS))


DialogMap = Callable[[str, str, str], "tuple[str, str, str] | None"]


def map_replaces(value: str, lookup: DialogMap) -> str:
    """A Replaces value (``CALL-ID;to-tag=X;from-tag=Y[;...]``) for the other leg.

    ``lookup(call_id, to_tag, from_tag)`` gives the other leg's (Call-ID,
    to-tag, from-tag) when the SBC holds that dialog; otherwise the value is
    returned unchanged (the dialog does not go through the SBC).
    """
    parts = [p.strip() for p in value.split(";")]
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, _, val = part.partition("=")
        params[key.strip().lower()] = val.strip()
    to_tag, from_tag = params.get("to-tag"), params.get("from-tag")
    if not parts[0] or to_tag is None or from_tag is None:
        return value
    mapped = lookup(parts[0], to_tag, from_tag)
    if mapped is None:
        return value
    call_id, new_to, new_from = mapped
    out = [call_id]
    for part in parts[1:]:
        key = part.partition("=")[0].strip().lower()
        if key == "to-tag":
            out.append(f"to-tag={new_to}")
        elif key == "from-tag":
            out.append(f"from-tag={new_from}")
        else:
            out.append(part)
    return ";".join(out)


def rewrite_dialog_refs(headers: Headers, lookup: DialogMap) -> None:
    """Map Replaces (and a Replaces embedded in Refer-To) onto the other legs' dialogs.

    Topology hiding (docs/security-model.md) for attended transfer and call pickup:
    the Call-ID and tags of one side never reach the other, and the far UA
    gets the identifiers of *its* dialog with the SBC, which it can match.
    """
    replaces = headers.get("Replaces")
    if replaces is not None:
        headers.set("Replaces", map_replaces(replaces, lookup))
    refer_to = headers.get("Refer-To")
    if refer_to is not None and "replaces=" in refer_to.lower():

        def embedded(match: re.Match[str]) -> str:
            mapped = map_replaces(urllib.parse.unquote(match.group(3)), lookup)
            return match.group(1) + match.group(2) + urllib.parse.quote(mapped, safe="")

        headers.set("Refer-To", _EMBEDDED_REPLACES.sub(embedded, refer_to))


@attrs.frozen
class HuntPolicy:
    """Which final responses make hunting try the next candidate."""

    continue_on: frozenset[int] = DEFAULT_CONTINUE_ON

    def continues(self, status: int) -> bool:
        """True when ``status`` from one candidate means: try the next."""
        return status in self.continue_on


def _hunt_key(target: Target) -> tuple[object, ...]:
    """What makes two hunt entries the same attempt: adjacency, URI and destination."""
    flow = target.flow
    where = None if flow is None else (flow.transport, flow.remote, flow.connection_id)
    return (target.adjacency, target.uri.serialize(), where)


def _failure_rank(status: int) -> tuple[int, int]:
    """Lower is better for the caller's final response: 6xx first, then the lowest class."""
    return (0, 0) if status >= 600 else (1, status // 100)


class CallState(enum.Enum):
    """Where a call is: being routed/hunted, answered (ACK awaited), up, over."""

    __hash__ = object.__hash__  # identity: C speed (Enum hashes the name in Python)

    PROCEEDING = "proceeding"
    ANSWERED = "answered"
    CONFIRMED = "confirmed"
    ENDED = "ended"


class Leg:
    """One side of a call: a dialog (early or confirmed) with one peer.

    ``local`` is our address (with our tag), ``remote`` the peer's (its tag
    in ``remote_tag`` once known). ``flow`` is where requests to the peer go.
    ``secure``: the dialog's Request-URI is ``sips:`` (our Contact follows it).
    """

    def __init__(
        self,
        name: str,
        call_id: str,
        local: NameAddr,
        remote: NameAddr,
        flow: Flow,
        adjacency: str,
        local_cseq: int,
        secure: bool = True,
    ) -> None:
        self.name = name
        self.call_id = call_id
        self.local = local
        self.remote = remote
        self.remote_tag: str | None = remote.tag
        self.flow = flow
        self.adjacency = adjacency
        self.contact = contact_for(flow, secure=secure)
        self.local_cseq = local_cseq
        self.remote_cseq: int | None = None
        self.invite_cseq = local_cseq
        self.remote_target: URI | None = None
        self.route_set: list[NameAddr] = []
        self.confirmed = False
        # ACKs this leg's UAC side sent for a 2xx, by CSeq number (resent on 2xx retransmissions)
        self.acks: dict[int, Request] = {}
        # 2xx this leg's UAS side sent and not yet ACKed, by CSeq number
        self.unacked: dict[int, PendingAck] = {}

    @property
    def local_tag(self) -> str:
        """Our tag on this leg."""
        tag = self.local.tag
        assert tag is not None
        return tag

    @property
    def dialog_key(self) -> tuple[str, str]:
        """How a request from the peer finds this leg: (Call-ID, our tag)."""
        return (self.call_id, self.local_tag)

    def next_cseq(self) -> int:
        """The CSeq number of the next request we send on this leg."""
        self.local_cseq += 1
        return self.local_cseq

    def request(self, method: str, cseq: int, branch: str, max_forwards: int = 70) -> Request:
        """A request in this leg's dialog (§12.2.1.1), without body."""
        assert self.remote_target is not None
        remote = self.remote if self.remote_tag is None else self.remote.with_tag(self.remote_tag)
        headers = Headers()
        headers.add("Via", _via(self.flow, branch))
        headers.add("Max-Forwards", max_forwards)
        for route in self.route_set:
            headers.add("Route", route)
        headers.add("From", self.local)
        headers.add("To", remote)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", CSeq(cseq, method))
        if method in WITH_CONTACT:
            headers.add("Contact", self.contact)
        return Request(method, self.remote_target, headers)

    def learn_target(self, message: Request | Response) -> None:
        """Take the remote target from the message's Contact, when it has one."""
        contacts = [c for c in message.contacts if not c.is_star]
        if contacts:
            self.remote_target = contacts[0].uri


@attrs.frozen
class Challenged:
    """An outbound request answered 401/407: its retry goes out on the same dialog.

    RFC 3261 §22.2: a UAC retries with the same Call-ID and From tag and the
    next CSeq; a registrar or PBX that binds its nonces to the dialog needs
    the SBC's outbound request to do the same (``authentication delegated``).
    """

    call_id: str
    from_tag: str
    cseq: int
    adjacency: str
    until: float


@attrs.define
class PendingAck:
    """A 2xx sent as UAS on a leg, retransmitted until its ACK (§13.3.1.4)."""

    response: Response
    flow: Flow
    interval: float
    give_up_at: float
    other_cseq: int | None
    cancel_timers: Callable[[], None] = lambda: None


@attrs.define(eq=False)
class Relay:
    """A request received on ``source`` (server transaction) and sent on ``target``.

    ``answered``: a final response went to the source. ``invite``: the
    lifecycle of a relayed re-INVITE (Timer C, CANCEL; :mod:`sbc.b2bua.outgoing`).
    """

    call: Call
    source: Leg
    target: Leg
    server: ServerTransaction
    client: ClientTransaction | None = None
    answered: bool = False
    ends_call: bool = False
    invite: OutgoingInvite | None = None

    def on_response(self, response: Response, now: float) -> list[StackOutput]:
        """Relay a response of the other leg back to the source."""
        return self.call.relay_response(self, response, now)

    def on_failure(self, reason: str, now: float) -> list[StackOutput]:
        """The other leg did not answer: 408 (or, for a BYE, 200: the call is over)."""
        return self.call.relay_failed(self, reason, now)

    def on_cancel(self, now: float) -> list[StackOutput]:
        """The source CANCELled the request: 487 to it, CANCEL on the other leg."""
        return self.call.cancel_relay(self, now)

    def on_no_answer(self, invite: OutgoingInvite, now: float) -> list[StackOutput]:
        """Timer C of the relayed re-INVITE: 408 to the source (the table CANCELs it)."""
        return self.call.relay_no_answer(self, now)

    def on_given_up(self, invite: OutgoingInvite, now: float) -> list[StackOutput]:
        """No final response 64*T1 after the CANCEL: forget the relay."""
        self.call.forget_relay(self)
        return []


#: What a call that is not in the table, or has ended, counts on.
_NO_ADJACENCIES: frozenset[str] = frozenset()


class CallHost(OutgoingHost, Protocol):
    """What a call uses of the B2BUA's tables: the :class:`~sbc.b2bua.manager.CallManager`.

    Calls never import the manager (which imports them): this protocol is the
    seam between the two, checked by mypy where the manager makes a call.
    """

    hunting: HuntPolicy
    table: Callable[[], AdjacencyTable]
    #: What this node tells another about a caller it hands a call to (the cluster
    #: link, docs/scaling.md): ``(inbound adjacency, trusted) -> ClusterCaller``.
    cluster_caller: Callable[[str, bool], ClusterCaller] | None

    def next_call_id(self) -> int:
        """A number naming a new call."""
        ...

    def targets_for(self, call: Call, uri: URI, now: float) -> list[Target]:
        """The hunt candidates for ``uri`` (registered contacts, or routing)."""
        ...

    def challenge_for(self, request: Request, now: float) -> Challenged | None:
        """The challenged dialog a new request retries, if any."""
        ...

    def note_challenge(self, call: Call, leg: Leg, now: float) -> None:
        """``leg``'s request was answered 401/407: remember its dialog for the retry."""
        ...

    def bind_client(self, transaction: ClientTransaction, handler: Call | Relay) -> None:
        """Responses to ``transaction`` go to ``handler``."""
        ...

    def unbind_client(self, transaction: ClientTransaction) -> None:
        """Forget ``transaction``."""
        ...

    def bind_server(self, transaction: ServerTransaction, handler: Call | Relay) -> None:
        """A CANCEL naming ``transaction`` goes to ``handler``."""
        ...

    def unbind_server(self, transaction: ServerTransaction) -> None:
        """``transaction`` can no longer be cancelled through us."""
        ...

    def bind_dialog(self, call: Call, leg: Leg) -> None:
        """Requests in ``leg``'s dialog go to ``call``."""
        ...

    def unbind_dialog(self, leg: Leg) -> None:
        """Forget ``leg``'s dialog."""
        ...

    def dialog_ref(self, call_id: str, to_tag: str, from_tag: str) -> tuple[str, str, str] | None:
        """A dialog named from one side, as (Call-ID, to-tag, from-tag) of the other leg."""
        ...

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
        ...

    def forget(self, call: Call) -> None:
        """Drop ``call`` from the call table."""
        ...

    def recount(self, before: frozenset[str], after: frozenset[str]) -> None:
        """A call in the table now uses the adjacencies ``after`` instead of ``before``."""
        ...


class Call:
    """A-leg + B-legs + hunt list; see the module docstring for the behaviour.

    ``manager`` is the :class:`~sbc.b2bua.manager.CallManager` (stack,
    routing, tables, timers), as a :class:`CallHost`. ``inbound`` is the
    A-leg's adjacency and ``secure`` whether the call requires outbound
    security (SIPS). ``caller``: for a call that came over the cluster link,
    what the node it entered said of the caller (docs/scaling.md); the
    caller's class is then that one, never the link's. ``reply_flow``: where
    requests on the A-leg go when not where the request came from (that
    node's cluster link).
    """

    def __init__(
        self,
        manager: CallHost,
        request: Request,
        transaction: ServerTransaction,
        flow: Flow,
        inbound: AdjacencyConfig,
        now: float,
        caller: ClusterCaller | None = None,
        reply_flow: Flow | None = None,
    ) -> None:
        self.manager = manager
        self.id = manager.next_call_id()
        #: The adjacencies this call is counted on in the manager's active calls
        #: (empty while it is not in the call table or once it ended).
        self.counted: frozenset[str] = frozenset()
        #: True while the call is in the manager's call table.
        self.listed = False
        self.method = request.method
        self.request = request
        self.transaction = transaction
        self.inbound = inbound
        self.secure = security.requires_secure_target(request.uri.scheme)
        self.trusted = security.caller_is_trusted(inbound)
        #: what the node this call entered said of the caller (a call from the cluster link)
        self.caller = caller
        if caller is not None:
            self.trusted = security.cluster_caller_trusted(inbound, caller.trusted)
        #: the node holding the phone the current B-leg goes to through the cluster link
        self.b_holder: str | None = None
        self.started_at = now
        self.state = CallState.PROCEEDING
        a_flow = transaction.peer if isinstance(transaction.peer, Flow) else flow
        if reply_flow is not None:
            a_flow = reply_flow
        self.a = Leg(
            "A",
            request.call_id,
            request.to.with_tag(new_tag()),
            request.from_,
            a_flow,
            inbound.name,
            random_below(2**16) + 1,
            self.secure,
        )
        self.a.remote_cseq = request.cseq.seq
        self.a.invite_cseq = request.cseq.seq
        self.a.learn_target(request)
        self.a.route_set = request.record_routes
        self.b: Leg | None = None
        self.b_transaction: ClientTransaction | None = None
        self.hunt: deque[Target] = deque()
        self.tried: set[tuple[object, ...]] = set()
        self.redirects = 0
        #: A final response went to the A-leg: the set-up is over (a B-leg INVITE
        #: still in progress is being CANCELled, and hunting stops).
        self.answered = False
        #: The current B-leg INVITE's lifecycle: Timer C, CANCEL (sbc.b2bua.outgoing).
        #: It is kept after it ended, until the next B-leg or the call's end.
        self.b_invite: OutgoingInvite | None = None
        #: The best failure of the candidates tried (RFC 3261 §16.7 step 6), for the caller.
        self.last_failure: Response | SipError | None = None
        self.relays: set[Relay] = set()
        #: The relayed re-INVITE in progress, if any (another one gets 491).
        self.reinvite: Relay | None = None
        #: the outbound dialog of this request's challenged first try, if any
        #: (CallManager.note_challenge): the retry reuses it
        self.challenged: Challenged | None = manager.challenge_for(request, now)
        max_forwards = request.max_forwards
        self.max_forwards = 70 if max_forwards is None else max(0, max_forwards - 1)
        # for the call log (sbc.b2bua.calllog)
        self.route_path: tuple[str, ...] = ()  # set by CallManager.targets_for
        self.candidates: tuple[Target, ...] = ()
        self.last_outbound: str | None = None  # the adjacency of the latest B-leg
        self.hunt_why: str | None = None  # why the latest candidate failed
        self.resolving: str | None = None  # the adjacency whose next hop DNS is looking up
        self.outcome_hint: str | None = None  # cancelled, failed, released
        self.answered_at: float | None = None  # when a 2xx to the INVITE went to the caller
        self.answer: tuple[int, str] = (0, "")  # that 2xx's status and reason
        self.end_why = "ended"

    # -- set-up: routing and hunting ------------------------------------------

    @property
    def dialog(self) -> bool:
        """True for an INVITE call (two dialogs); False for a relayed OPTIONS/MESSAGE..."""
        return self.method == "INVITE"

    @property
    def adjacencies(self) -> set[str]:
        """The adjacencies this call uses (for ``active_calls``)."""
        names = {self.a.adjacency}
        if self.b is not None:
            names.add(self.b.adjacency)
        if self.resolving is not None:
            names.add(self.resolving)
        return names

    def recount(self) -> None:
        """Tell the manager when the adjacencies this call counts on changed (``active_calls``)."""
        if self.listed and self.state is not CallState.ENDED:
            using: AbstractSet[str] = self.adjacencies
        else:
            using = _NO_ADJACENCIES
        if using != self.counted:  # (a set equals a frozenset of the same names)
            after = frozenset(using)
            self.manager.recount(self.counted, after)
            self.counted = after

    def start(self, targets: Iterable[Target], now: float) -> list[StackOutput]:
        """Hunt through ``targets`` in order."""
        self.candidates = tuple(targets)
        self.hunt.extend(self.candidates)
        return self._try_next(now)

    def _try_next(self, now: float) -> list[StackOutput]:
        manager = self.manager
        while self.hunt:
            target = self.hunt.popleft()
            adjacency = manager.table().get(target.adjacency)
            # the routing policy's choice is re-checked against the security rules
            if adjacency is None or not self._permitted(target, adjacency):
                manager.count(target.adjacency, "hunt-refused")
                why = "not attached" if adjacency is None else "refused by the security rules"
                calllog.log_hunt(self, None, why, target.adjacency, target.uri, skipped=True)
                continue
            key = _hunt_key(target)
            if key in self.tried:
                continue
            if self.tried:
                why = self.hunt_why or "failed"
                calllog.log_hunt(self, self.last_outbound, why, target.adjacency, target.uri)
            else:
                calllog.log_routed(self, self.candidates, target.adjacency)
            self.tried.add(key)
            if target.flow is None:
                hop = next_hop(adjacency, target.uri)
                if not hop.numeric:
                    return self._resolve(target, adjacency, hop)
                destination = hop.default_destination
                local = manager.table().local_address(adjacency, destination.transport)
                flow = destination_flow(adjacency, target.uri, destination, local)
                target = Target(target.adjacency, target.uri, flow)
            return self._send_b(target, adjacency, now)
        if not self.tried:
            calllog.log_routed(self, self.candidates, None)
        return self._exhausted(now)

    # -- set-up: next hops found by DNS (RFC 3263) -------------------------------

    def _permitted(self, target: Target, adjacency: AdjacencyConfig) -> bool:
        """May the call go out of ``adjacency`` to ``target`` (the security rules)?

        A target held by another node crosses the cluster link
        (:func:`~sbc.security.may_cross_cluster`); that node checks the
        phone's own adjacency with the caller's class.
        """
        if target.holder is not None:
            return security.may_cross_cluster(adjacency, self.secure)
        return security.may_send_out_of(adjacency, self.secure, self.trusted)

    def _resolve(
        self, target: Target, adjacency: AdjacencyConfig, hop: NextHop
    ) -> list[StackOutput]:
        """Ask the edge where ``hop`` (``target``'s, a host name) is; :meth:`_resolved` goes on."""
        self.last_outbound = self.resolving = adjacency.name
        self.recount()

        def reply(resolution: Resolution, now: float) -> list[StackOutput]:
            return self._resolved(target, resolution, now)

        return [Resolve(hop, reply, adjacency.name)]

    def _resolved(self, target: Target, resolution: Resolution, now: float) -> list[StackOutput]:
        """DNS answered for ``target``: each destination found is a hunt entry, tried in order.

        Nothing found (the edge counted and logged why): the target fails as
        a 503 would, and hunting goes on.
        """
        self.resolving = None
        self.recount()
        if self.state is CallState.ENDED or self.answered:
            return []
        adjacency = self.manager.table().get(target.adjacency)
        if adjacency is None or resolution.failed:
            self._note_failure(SipError(503, "Service Unavailable"))
            self.manager.count(target.adjacency, "hunt-skip:dns")
            self.hunt_why = f"DNS: {resolution.error}" if resolution.failed else "not attached"
            return self._try_next(now)
        table = self.manager.table()
        found = [
            attrs.evolve(
                target,
                flow=destination_flow(
                    adjacency,
                    target.uri,
                    destination,
                    table.local_address(adjacency, destination.transport),
                ),
            )
            for destination in resolution.destinations
        ]
        self.hunt.extendleft(reversed(found[1:]))
        self.tried.add(_hunt_key(found[0]))
        return self._send_b(found[0], adjacency, now)

    def _send_b(self, target: Target, adjacency: AdjacencyConfig, now: float) -> list[StackOutput]:
        manager = self.manager
        self._drop_b()
        flow = target.flow
        if flow is None:
            transport = next_hop(adjacency, target.uri).default_destination.transport
            local = manager.table().local_address(adjacency, transport)
            flow = outbound_flow(adjacency, target.uri, local)
        original = self.request
        challenged, self.challenged = self.challenged, None
        if challenged is not None and challenged.adjacency == adjacency.name:
            # the retry of a challenged request: same outbound dialog, next CSeq
            call_id, from_tag, cseq = challenged.call_id, challenged.from_tag, challenged.cseq + 1
        else:
            call_id, from_tag = new_call_id(flow.local[0]), new_tag()
            cseq = random_below(2**16) + 1
        leg = Leg(
            "B",
            call_id,
            NameAddr(original.from_.display_name, original.from_.uri, {"tag": from_tag}),
            NameAddr(original.to.display_name, original.to.uri),
            flow,
            adjacency.name,
            cseq,
            security.requires_secure_target(target.uri.scheme),
        )
        leg.remote_target = target.uri
        leg.invite_cseq = leg.local_cseq
        request = leg.request(self.method, leg.local_cseq, manager.stack.new_branch())
        request.headers.set("Max-Forwards", self.max_forwards)
        if copy_end_to_end(original, request.headers):
            rewrite_dialog_refs(request.headers, manager.dialog_ref)
        request.body = original.body
        self.b_holder = target.holder
        if target.holder is not None:
            # the caller's class crosses with the call (docs/scaling.md)
            describe = manager.cluster_caller
            caller = (
                describe(self.inbound.name, self.trusted)
                if describe is not None
                else ClusterCaller("-", self.inbound.name, self.trusted)
            )
            request.headers.add(CLUSTER_HEADER, caller.header_value())
        self.b = leg
        self.recount()
        self.last_outbound = adjacency.name
        transaction, outputs = manager.stack.send_request(request, flow, now)
        self.b_transaction = transaction
        manager.bind_client(transaction, self)
        if self.dialog:
            manager.bind_dialog(self, leg)
            self.b_invite = OutgoingInvite.sent(
                manager, self, transaction, flow, leg.adjacency, now
            )
        manager.count(adjacency.name, "attempts")
        return outputs

    def _over_tls(self, leg: Leg) -> bool:
        """Does ``leg`` talk over a ``sip-over-tls`` TLS connection (see security)?"""
        adjacency = self.manager.table().get(leg.adjacency)
        return security.reached_over_tls(adjacency, leg.flow.transport)

    def _drop_b(self) -> None:
        invite = self.b_invite
        if invite is not None:
            invite.drop()
            self.b_invite = None
        if self.b is not None:
            self.manager.unbind_dialog(self.b)
        if self.b_transaction is not None:
            self.manager.unbind_client(self.b_transaction)
        self.b = None
        self.recount()
        self.b_transaction = None

    def _note_failure(self, failure: Response | SipError) -> None:
        """Keep the better of ``failure`` and the one kept (§16.7 step 6).

        A 6xx beats everything; otherwise the lowest class wins (4xx before
        5xx); within a class the newer one is kept.
        """
        kept = self.last_failure
        if kept is None or _failure_rank(failure.status) <= _failure_rank(kept.status):
            self.last_failure = failure

    def _exhausted(self, now: float) -> list[StackOutput]:
        self._drop_b()
        self.outcome_hint = "failed"
        failure = self.last_failure
        if isinstance(failure, Response):
            outputs = self._answer_a(failure, now)
        elif failure is not None:
            outputs = self._reject_a(failure, now)
        else:
            outputs = self._reject_a(SipError(503, "Service Unavailable"), now)
        self.manager.count(self.a.adjacency, "calls-failed")
        return outputs + self._leave_tables(now)

    # -- responses on the B INVITE --------------------------------------------

    def on_response(self, response: Response, now: float) -> list[StackOutput]:
        """A response to the current B-leg request (INVITE, or OPTIONS/MESSAGE...)."""
        status = response.status
        leg = self.b
        invite = self.b_invite
        if status < 200:
            if invite is not None:
                cancelled = invite.cancelled
                outputs = invite.provisional(status, now)  # the held CANCEL goes now
                if cancelled or self.state is CallState.ENDED:
                    return outputs  # the attempt is over: nothing to relay
            if self.state is CallState.ENDED or leg is None:
                return []
            return self._on_provisional(leg, response, now)
        outputs = []
        if self.b_transaction is not None:
            # 2xx retransmissions reach the call through its dialog (CallManager)
            self.manager.unbind_client(self.b_transaction)
            self.b_transaction = None
            if invite is not None:
                outputs = invite.final(now)
        if self.state is CallState.ENDED or leg is None:
            return outputs + self._late_final(response, now)
        if status < 300:
            return outputs + self._on_success(leg, response, now)
        if self.answered:  # the caller left (or was answered) meanwhile
            return outputs + self._leave_tables(now)
        if invite is not None and invite.timed_out:  # the answer to Timer C's CANCEL
            return outputs + self._no_answer(now)
        outputs += self._on_failure_response(leg, response, now)
        return outputs

    def _on_failure_response(self, leg: Leg, response: Response, now: float) -> list[StackOutput]:
        """A 3xx-6xx from the current B-leg: redirect, hunt on, or relay it to the caller."""
        status = response.status
        if status < 400:
            return self._on_redirect(response, now)
        if self.b_holder is not None and response.headers.get(CLUSTER_HEADER) == NOT_REACHED:
            # the holding node did not reach the phone (its binding is gone, or the
            # rules refused it there): a contact not reached, as at this node
            self._note_failure(security.no_route(self.secure))
            self.manager.count(leg.adjacency, "hunt-skip:not-reached")
            self.hunt_why = f"node {self.b_holder} did not reach it: {status} {response.reason}"
            return self._try_next(now)
        if self.manager.hunting.continues(status):
            self._note_failure(response)
            self.manager.count(leg.adjacency, f"hunt-skip:{status}")
            self.hunt_why = f"{status} {response.reason}"
            return self._try_next(now)
        self.manager.count(leg.adjacency, f"calls-rejected:{status}")
        if status in (401, 407):
            # the far side authenticates (authentication delegated): the
            # caller's retry goes out on this same outbound Call-ID and From tag
            self.manager.note_challenge(self, leg, now)
        return self._answer_a(response, now) + self._leave_tables(now)

    def on_failure(self, reason: str, now: float) -> list[StackOutput]:
        """The B-leg request timed out or could not be sent: hunt on."""
        leg = self.b
        invite = self.b_invite
        self.b_transaction = None
        outputs = invite.failed(now) if invite is not None else []
        if self.state is CallState.ENDED or leg is None:
            self._drop_b()
            self.maybe_forget()
            return outputs
        if self.answered:
            self.manager.count(leg.adjacency, f"hunt-skip:{reason}")
            return outputs + self._leave_tables(now)
        if invite is not None and invite.timed_out:  # Timer C had run out: Timer B ends it
            return outputs + self._no_answer(now)
        self.manager.count(leg.adjacency, f"hunt-skip:{reason}")
        self.hunt_why = reason
        if leg.flow.pinned or self.b_holder is not None:
            # a registered contact whose connection is gone (or the node holding it
            # cannot be reached): unavailable, not a failure of the SBC (480 when no
            # other contact answers); marked for the node that sent the call here
            unavailable = SipError(480, "Temporarily Unavailable")
            self._note_failure(unavailable if self.caller is None else not_reached(unavailable))
        return outputs + self._try_next(now)

    def _on_provisional(self, leg: Leg, response: Response, now: float) -> list[StackOutput]:
        """A 1xx on the B-leg of a call being set up: relay it (an early dialog)."""
        outputs: list[StackOutput] = []
        if not self.dialog or response.status == 100 or self.answered:
            return outputs
        contacts = [c for c in response.contacts if not c.is_star]
        if contacts and response.to.tag is not None:
            # an early dialog's remote target may not cross the secure line
            # either (docs/security-model.md: a reliable 1xx is a target refresh)
            error = security.check_redirect(
                [contacts[0].uri.scheme], self.secure, self._over_tls(leg)
            )
            if error is not None:
                self.manager.count(leg.adjacency, "target-refresh-refused")
                self.outcome_hint = "rejected"
                outputs = self._reject_a(error, now)
                self.hunt.clear()
                return outputs + self._cancel_b(now) + self._leave_tables(now, keep_b=True)
        if response.to.tag is not None:
            leg.remote_tag = response.to.tag
            leg.learn_target(response)
            leg.route_set = list(reversed(response.record_routes))
        return self._answer_a(response, now)

    def _on_success(self, leg: Leg, response: Response, now: float) -> list[StackOutput]:
        manager = self.manager
        if not self.dialog:
            manager.count(leg.adjacency, "requests-relayed")
            return self._answer_a(response, now) + self._leave_tables(now)
        leg.remote_tag = response.to.tag
        leg.route_set = list(reversed(response.record_routes))
        contacts = [c for c in response.contacts if not c.is_star]
        leg.confirmed = True
        if self.answered or not contacts:
            # the caller gave up meanwhile (or the 2xx is unusable): ACK it, then BYE
            if contacts:
                leg.learn_target(response)
            else:
                leg.remote_target = leg.remote_target or self.request.uri
            return (
                self._ack(leg, leg.invite_cseq, b"", None)
                + self._bye(leg, now)
                + self._leave_tables(now)
            )
        new_scheme = contacts[0].uri.scheme
        error = security.check_redirect([new_scheme], self.secure, self._over_tls(leg))
        leg.learn_target(response)
        if error is not None:
            manager.count(leg.adjacency, "target-refresh-refused")
            outputs = self._ack(leg, leg.invite_cseq, b"", None) + self._bye(leg, now)
            return outputs + self._reject_a(error, now) + self._leave_tables(now)
        manager.count(leg.adjacency, "calls-answered")
        return self._answer_a(response, now)

    def _on_redirect(self, response: Response, now: float) -> list[StackOutput]:
        leg = self.b
        assert leg is not None
        contacts = [c for c in response.contacts if not c.is_star]
        error = security.check_redirect(
            [c.uri.scheme for c in contacts], self.secure, self._over_tls(leg)
        )
        if error is not None:
            self.manager.count(leg.adjacency, "redirects-refused")
            self._drop_b()
            return self._reject_a(error, now) + self._leave_tables(now)
        self.redirects += 1
        if self.redirects > MAX_REDIRECTS or not contacts:
            self.hunt_why = f"{response.status} {response.reason}, not followed"
            return self._try_next(now)
        ordered = sorted(
            enumerate(contacts), key=lambda ic: (-(ic[1].q if ic[1].q is not None else 1.0), ic[0])
        )
        new_targets: list[Target] = []
        for _, contact in ordered:
            uri = contact.uri.replace(headers=())
            try:
                new_targets.extend(self.manager.targets_for(self, uri, now))
            except SipError:
                continue  # no route for this Contact: try the others
        self.manager.count(leg.adjacency, "redirects-followed")
        self.hunt_why = f"{response.status} {response.reason}, redirected"
        self.hunt.extendleft(reversed(new_targets))
        return self._try_next(now)

    def _late_final(self, response: Response, now: float) -> list[StackOutput]:
        """A final response on the B-leg of a call already over: ACK and BYE a 2xx."""
        leg = self.b
        self._drop_b()
        self.maybe_forget()
        if leg is None or not self.dialog or response.status >= 300:
            return []
        leg.remote_tag = response.to.tag
        leg.route_set = list(reversed(response.record_routes))
        leg.learn_target(response)
        return self._ack(leg, leg.invite_cseq, b"", None) + self._bye(leg, now)

    # -- answering the A-leg --------------------------------------------------

    def _answer_a(self, source: Response, now: float) -> list[StackOutput]:
        """Relay ``source`` (from the B-leg) to the A-leg's INVITE transaction."""
        if self.answered:
            return []
        response = self.translate(source, self.request, self.a)
        return self._respond_a(response, now)

    def _reject_a(self, error: SipError, now: float) -> list[StackOutput]:
        if self.answered:
            return []
        stack = self.manager.stack
        response = stack.error_response(self.request, error, self.a.flow)
        return self._respond_a(response, now, calllog.warning_text(error))

    def _respond_a(
        self, response: Response, now: float, warning: str | None = None
    ) -> list[StackOutput]:
        status = response.status
        if status >= 200:
            self.answered = True
            if status < 300 and self.dialog:
                # logged when the call ends (call.ended): two events per basic call
                self.answered_at = now
                self.answer = (status, response.reason)
            else:
                outcome = self.outcome_hint or ("answered" if status < 300 else "rejected")
                calllog.log_outcome(
                    self,
                    outcome,
                    status,
                    response.reason,
                    self.last_outbound,
                    warning,
                    now - self.started_at,
                )
        outputs = self.manager.stack.respond(self.transaction, response, now)
        if 200 <= status < 300 and self.dialog:
            self.state = CallState.ANSWERED
            self.a.confirmed = True
            b_cseq = self.b.invite_cseq if self.b is not None else None
            flow = self.transaction.peer if isinstance(self.transaction.peer, Flow) else self.a.flow
            outputs += self.manager.await_ack(self, self.a, response, b_cseq, flow, now)
        return outputs

    def translate(self, source: Response, request: Request, leg: Leg) -> Response:
        """``source`` (a response from one leg) as a response to ``request`` on ``leg``."""
        response = response_to(request, source.status, source.reason, to_tag=leg.local_tag)
        copy_end_to_end(source, response.headers)
        method = request.method
        if method in WITH_CONTACT and source.status < 300 and source.status > 100:
            if method == "INVITE" and request.to.tag is None:
                for record_route in leg.route_set:
                    response.headers.add("Record-Route", record_route)
            response.headers.add("Contact", leg.contact)
        response.body = source.body
        return response

    # -- CANCEL ----------------------------------------------------------------

    def on_cancel(self, now: float) -> list[StackOutput]:
        """The caller cancelled: 487 to its INVITE, CANCEL on the B-leg."""
        if self.answered:
            return []
        self.outcome_hint = "cancelled"
        outputs = self._reject_a(SipError(487, "Request Terminated"), now)
        self.manager.count(self.a.adjacency, "calls-cancelled")
        self.hunt.clear()
        if self.b_transaction is None:
            return outputs + self._leave_tables(now)
        return outputs + self._cancel_b(now)

    def _cancel_b(self, now: float) -> list[StackOutput]:
        """CANCEL the B-leg INVITE: now, or on its first provisional response (the table)."""
        invite = self.b_invite
        if invite is None or not invite.live:
            return []
        return invite.cancel(now)

    # -- the B-leg INVITE's timers (sbc.b2bua.outgoing calls back) ----------------

    def on_no_answer(self, invite: OutgoingInvite, now: float) -> list[StackOutput]:
        """Timer C fired on the B-leg INVITE: the table CANCELs it, now or on its
        first provisional response (Timer B ends a silent one), and its end counts
        as 408 (``invite.timed_out``; :meth:`_no_answer`)."""
        return []

    def on_given_up(self, invite: OutgoingInvite, now: float) -> list[StackOutput]:
        """The CANCELled B-leg INVITE never got its final response: abandoned (§9.1).

        Later responses to it are strays. The attempt counts as 408 (hunting
        goes on) unless the set-up was over already.
        """
        self.manager.unbind_client(invite.client)
        self.b_transaction = None
        if self.state is CallState.ENDED or self.answered:
            self._drop_b()
            if self.state is not CallState.ENDED:
                return self._leave_tables(now)
            self.maybe_forget()
            return []
        return self._no_answer(now)

    def _no_answer(self, now: float) -> list[StackOutput]:
        """The current B-leg gave no final answer in time: a 408, for hunting too."""
        adjacency = self.last_outbound
        error = SipError(408, "Request Timeout")
        self._note_failure(error)
        self.hunt_why = "no answer within no-answer-timeout (Timer C)"
        if self.manager.hunting.continues(408):
            self.manager.count(adjacency, "hunt-skip:no-answer")
            return self._try_next(now)
        self.manager.count(adjacency, "calls-rejected:408")
        self._drop_b()
        return self._reject_a(error, now) + self._leave_tables(now)

    # -- ACK --------------------------------------------------------------------

    def on_ack(self, leg: Leg, ack: Request, now: float) -> list[StackOutput]:
        """The peer on ``leg`` ACKed a 2xx we sent: ACK the other leg's 2xx."""
        pending = leg.unacked.pop(ack.cseq.seq, None)
        if pending is None:
            return []
        pending.cancel_timers()
        if self.state is CallState.ANSWERED and leg is self.a:
            self.state = CallState.CONFIRMED
        other = self.other(leg)
        if other is None or pending.other_cseq is None or self.state is CallState.ENDED:
            return []
        return self._ack(other, pending.other_cseq, ack.body, ack.content_type)

    def _ack(self, leg: Leg, cseq: int, body: bytes, content_type: str | None) -> list[StackOutput]:
        ack = leg.request("ACK", cseq, self.manager.stack.new_branch())
        if content_type is not None and body:
            ack.headers.add("Content-Type", content_type)
        ack.body = body
        leg.acks[cseq] = ack
        return self.manager.stack.send_stateless(ack, leg.flow)

    def resend_ack(self, leg: Leg, response: Response) -> list[StackOutput]:
        ack = leg.acks.get(response.cseq.seq)
        if ack is None:
            return []
        return self.manager.stack.send_stateless(ack, leg.flow)

    def ack_timeout(self, leg: Leg, now: float, other_cseq: int | None = None) -> list[StackOutput]:
        """No ACK for our 2xx after 64*T1: bring the call down (BYE both legs).

        The other leg's 2xx (``other_cseq``), which waited for that ACK, is
        ACKed first: every 2xx gets its ACK (RFC 3261 §13.2.2.4), even one
        whose dialog the BYE right after ends.
        """
        self.manager.count(leg.adjacency, "ack-timeouts")
        outputs: list[StackOutput] = []
        other = self.other(leg)
        if other is not None and other_cseq is not None and other_cseq not in other.acks:
            outputs += self._ack(other, other_cseq, b"", None)
        return outputs + self.terminate(now, "no ACK for the 2xx")

    # -- in-dialog requests --------------------------------------------------

    def other(self, leg: Leg) -> Leg | None:
        """The leg facing ``leg``."""
        return self.b if leg is self.a else self.a

    def in_dialog(
        self, leg: Leg, request: Request, transaction: ServerTransaction, now: float
    ) -> list[StackOutput]:
        """Relay an in-dialog request received on ``leg`` to the other leg."""
        stack = self.manager.stack
        method = request.method
        other = self.other(leg)
        if other is None or other.remote_target is None or other.remote_tag is None:
            raise SipError(481, "Call/Transaction Does Not Exist")
        seq = request.cseq.seq
        if leg.remote_cseq is not None and seq < leg.remote_cseq:
            raise SipError(500, "Server Internal Error - CSeq out of order")
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            raise SipError(483, "Too Many Hops")  # it cannot be relayed one more hop
        leg.remote_cseq = seq
        if method == "INVITE" and self.reinvite is not None:
            raise SipError(491, "Request Pending")
        if method in TARGET_REFRESH:
            contacts = [c for c in request.contacts if not c.is_star]
            if contacts:
                old = leg.remote_target.scheme if leg.remote_target else self.request.uri.scheme
                error = security.check_target_refresh(
                    old, contacts[0].uri.scheme, self._over_tls(leg)
                )
                if error is not None:
                    self.manager.count(leg.adjacency, "target-refresh-refused")
                    outputs = stack.reject(transaction, error, leg.flow, now)
                    return outputs + self.terminate(now, REFRESH_REFUSED)
                leg.remote_target = contacts[0].uri
        cseq = other.next_cseq()
        if method == "INVITE":
            other.invite_cseq = cseq
        relayed = other.request(method, cseq, stack.new_branch(), self._max_forwards(request))
        if copy_end_to_end(request, relayed.headers):
            rewrite_dialog_refs(relayed.headers, self.manager.dialog_ref)
        rack = request.headers.get("RAck")
        if rack is not None and method == "PRACK":
            parts = rack.split()
            if len(parts) == 3:
                relayed.headers.add("RAck", f"{parts[0]} {other.invite_cseq} {parts[2]}")
        relayed.body = request.body
        relay = Relay(self, leg, other, transaction, ends_call=method == "BYE")
        client, outputs = stack.send_request(relayed, other.flow, now)
        relay.client = client
        self.relays.add(relay)
        self.manager.bind_client(client, relay)
        self.manager.bind_server(transaction, relay)
        if method == "INVITE":
            self.reinvite = relay
            relay.invite = OutgoingInvite.sent(
                self.manager, relay, client, other.flow, other.adjacency, now
            )
        if method == "BYE":
            self.manager.count(leg.adjacency, "calls-ended")
            self.end_why = "BYE from the caller" if leg is self.a else "BYE from the callee"
            outputs += self._leave_tables(now, keep_relays=True)
        return outputs

    @staticmethod
    def _max_forwards(request: Request) -> int:
        value = request.max_forwards
        return 70 if value is None else max(0, value - 1)

    def relay_response(self, relay: Relay, response: Response, now: float) -> list[StackOutput]:
        """A response on the other leg to a relayed request: relay it back."""
        status = response.status
        stack = self.manager.stack
        target = relay.target
        invite = relay.invite
        if status >= 200:
            if invite is not None:
                invite.final(now)
            self.forget_relay(relay)  # 2xx retransmissions come back through the dialog
        elif invite is not None:
            cancelled = invite.cancelled
            sent = invite.provisional(status, now)  # the held CANCEL goes now
            if cancelled:
                return sent  # the source has its final response already
        if relay.answered:
            return []
        if status == 100:
            return []
        method = relay.server.request.method
        if 200 <= status < 300 and method in TARGET_REFRESH:
            contacts = [c for c in response.contacts if not c.is_star]
            if contacts and target.remote_target is not None:
                error = security.check_target_refresh(
                    target.remote_target.scheme, contacts[0].uri.scheme, self._over_tls(target)
                )
                if error is not None:
                    self.manager.count(target.adjacency, "target-refresh-refused")
                    relay.answered = True
                    outputs: list[StackOutput] = []
                    if method == "INVITE":
                        outputs += self._ack(target, response.cseq.seq, b"", None)
                    outputs += stack.reject(relay.server, error, relay.source.flow, now)
                    return outputs + self.terminate(now, REFRESH_REFUSED)
                target.remote_target = contacts[0].uri
        translated = self.translate(response, relay.server.request, relay.source)
        if status >= 200:
            relay.answered = True
        try:
            outputs = stack.respond(relay.server, translated, now)
        except IllegalTransitionError:  # the source transaction is over (e.g. it timed out)
            outputs = []
        if 200 <= status < 300 and method == "INVITE" and self.state is not CallState.ENDED:
            flow = relay.server.peer if isinstance(relay.server.peer, Flow) else relay.source.flow
            outputs += self.manager.await_ack(
                self, relay.source, translated, response.cseq.seq, flow, now
            )
        if status in DIALOG_ENDING and method != "BYE" and self.dialog:
            # RFC 3261 §12.2.1.2: the far side's dialog is gone; so is the call
            outputs += self.terminate(now, f"{status} {response.reason} to an in-dialog {method}")
        return outputs

    def relay_failed(self, relay: Relay, reason: str, now: float) -> list[StackOutput]:
        """The relayed request got no answer: 408 to the source (200 for a BYE).

        RFC 3261 §12.2.1.2: a UAC whose in-dialog request gets no answer at
        all terminates the dialog; the far leg is unreachable, so the call is
        brought down (BYE to the source's side).
        """
        if relay.invite is not None:
            relay.invite.failed(now)
        self.forget_relay(relay)
        if relay.answered:
            return []
        relay.answered = True
        stack = self.manager.stack
        request = relay.server.request
        if request.method == "BYE":
            response = response_to(request, 200, to_tag=relay.source.local_tag)
            return stack.respond(relay.server, response, now)
        error = SipError(408, "Request Timeout")
        outputs = stack.reject(relay.server, error, relay.source.flow, now)
        if self.dialog:
            outputs += self.terminate(now, f"no answer to an in-dialog {request.method}")
        return outputs

    def forget_relay(self, relay: Relay) -> None:
        """``relay`` is over (or its call is): out of the tables; a live re-INVITE is dropped."""
        if relay.invite is not None:
            relay.invite.drop()
        self.relays.discard(relay)
        if relay.client is not None:
            self.manager.unbind_client(relay.client)
        self.manager.unbind_server(relay.server)
        if self.reinvite is relay:
            self.reinvite = None
        self.maybe_forget()

    def maybe_forget(self) -> None:
        """Leave the call table once the call is over and nothing refers to it."""
        if self.state is CallState.ENDED and not self.relays and self.b_transaction is None:
            self.manager.forget(self)

    def cancel_relay(self, relay: Relay, now: float) -> list[StackOutput]:
        """A CANCEL for a relayed request: 487 to it; a re-INVITE is CANCELled on the other leg
        (now, or on its first provisional response: :mod:`sbc.b2bua.outgoing`)."""
        if relay.answered or relay.client is None:
            return []
        relay.answered = True
        stack = self.manager.stack
        outputs = stack.reject(
            relay.server, SipError(487, "Request Terminated"), relay.source.flow, now
        )
        if relay.invite is not None:
            outputs += relay.invite.cancel(now)
        return outputs

    def relay_no_answer(self, relay: Relay, now: float) -> list[StackOutput]:
        """Timer C of a relayed re-INVITE: the source gets 408 at once.

        The table CANCELs the re-INVITE (once it had a provisional response;
        else Timer B ends it) and gives it up 64*T1 after that CANCEL if no
        final response came (RFC 3261 §9.1; :meth:`Relay.on_given_up`).
        """
        if relay.answered:
            return []
        relay.answered = True
        error = SipError(408, "Request Timeout")
        return self.manager.stack.reject(relay.server, error, relay.source.flow, now)

    # -- the end ----------------------------------------------------------------

    def _bye(self, leg: Leg, now: float) -> list[StackOutput]:
        if leg.remote_target is None or leg.remote_tag is None:
            return []
        bye = leg.request("BYE", leg.next_cseq(), self.manager.stack.new_branch())
        _, outputs = self.manager.stack.send_request(bye, leg.flow, now)
        return outputs

    def terminate(
        self,
        now: float,
        why: str = "released",
        error: SipError = RELEASED,
        counted_as: tuple[str, str] | None = None,
    ) -> list[StackOutput]:
        """End the call, whatever its state: THE verb for ending a call (module docstring).

        Every request of the call still waiting for its final response gets
        ``error`` (default 480 Temporarily Unavailable): the caller's INVITE
        while the call is being set up (its B-leg INVITE is then CANCELled,
        now or on its first provisional response), and the in-dialog
        requests being relayed. Each leg whose dialog is confirmed gets a
        BYE. Counted as ``counted_as`` (adjacency, counter name), by default
        ``calls-released`` on the A-leg's adjacency; ``why`` is for the call
        log. Nothing happens to a call that is over already.

        ``no attach`` of an adjacency (:meth:`CallManager.release_adjacency`)
        passes ``503 Service Unavailable - adjacency NAME detached`` and
        ``calls-released:detach``: 503 rather than 487, because the SBC, not
        the caller, ends the set-up and an upstream proxy may try elsewhere.
        """
        if self.state is CallState.ENDED:
            return []
        adjacency, counter = counted_as or (self.a.adjacency, "calls-released")
        self.manager.count(adjacency, counter)
        self.outcome_hint = "released"
        self.end_why = why
        stack = self.manager.stack
        outputs: list[StackOutput] = []
        for relay in list(self.relays):
            if relay.answered:
                continue
            relay.answered = True
            with contextlib.suppress(IllegalTransitionError):  # its transaction is over
                outputs += stack.reject(relay.server, error, relay.source.flow, now)
        if not self.answered:
            outputs += self._reject_a(error, now)
        elif self.a.confirmed:
            outputs += self._bye(self.a, now)
        b = self.b
        if b is not None and b.confirmed:
            outputs += self._bye(b, now)
        elif self.b_transaction is not None:
            outputs += self._cancel_b(now)
            return outputs + self._leave_tables(now, keep_b=True)
        return outputs + self._leave_tables(now)

    def _leave_tables(
        self, now: float, keep_relays: bool = False, keep_b: bool = False
    ) -> list[StackOutput]:
        """The call is over (state ENDED): leave every table.

        Bookkeeping only, nothing is sent: callers answer or BYE first. A B-leg
        INVITE being CANCELled (``keep_b``) or relays still waiting for their
        responses (``keep_relays``) keep the call findable until they end
        (:meth:`maybe_forget`).
        """
        if self.state is CallState.ENDED:
            return []
        self.state = CallState.ENDED
        self.recount()
        if self.answered_at is not None:
            calllog.log_ended(self, self.answered_at, now)
        self.hunt.clear()
        for leg in (self.a, self.b):
            if leg is not None:
                for pending in leg.unacked.values():
                    pending.cancel_timers()
                leg.unacked.clear()
                self.manager.unbind_dialog(leg)
        if not keep_b and self.b_transaction is not None:
            if self.b_invite is not None:
                self.b_invite.drop()
            self.manager.unbind_client(self.b_transaction)
            # The INVITE transactions linger up to 64*T1 for retransmissions
            # only: their messages need no typed header values any more.
            for txn in (self.transaction, self.b_transaction):
                for message in (txn.request, txn.last_response):
                    if message is not None:
                        message.headers.forget_parsed()
            self.b_transaction = None
        if not keep_relays:
            for relay in list(self.relays):
                self.forget_relay(relay)
        self.manager.unbind_server(self.transaction)
        self.maybe_forget()
        return []
