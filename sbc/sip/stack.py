"""The sans-I/O SIP stack: bytes in, bytes out, time as an argument.

:class:`SipStack` sits between the transport (which frames bytes and knows
connections) and the transaction user (the SBC's call logic). It parses each
message once, applies the transport rules of RFC 3261 §18 and RFC 3581
(``received`` / ``rport``), runs the transaction layer, and turns every
:class:`~sbc.errors.SipError` into a response: this module is the ONE place
where an error becomes a SIP response.

The edge feeds it with :meth:`SipStack.receive`, keeps one timer armed for
:meth:`SipStack.next_deadline` and calls :meth:`SipStack.advance` when it
fires; it carries out the returned :class:`Transmit` outputs, counts the
:class:`Dropped` ones, and answers each :class:`Resolve` (a next hop to find
in DNS, RFC 3263) by calling its ``reply`` with the :class:`~sbc.sip.locate.Resolution`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Protocol

import attrs
from typing_extensions import TypeAlias

from sbc.sip.errors import ParseError, SipError
from sbc.sip.locate import NextHop, Resolution
from sbc.sip.message import Request, Response, parse_message, response_to
from sbc.sip.timers import TimerSettings
from sbc.sip.transaction import (
    ClientTransaction,
    DeliverRequest,
    DeliverResponse,
    IllegalTransitionError,
    Send,
    ServerTransaction,
    StrayResponse,
    Terminated,
    TransactionKey,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
)
from sbc.sip.transaction import Output as TransactionOutput
from sbc.sip.uri import host_text

MAGIC_COOKIE = "z9hG4bK"


@attrs.frozen
class Flow:
    """Where a message came from, or goes to.

    ``local`` is our address and port (the listener's, or the outbound
    socket's), ``remote`` the peer's: an IP address, or a host name the
    edge resolves without blocking. ``connection_id`` names the stream
    connection (TCP/TLS); it is ``None`` for UDP and for a destination that
    has no connection yet. ``server_name`` is, for outbound TLS, the name the
    peer's certificate must match and the SNI to send (the ``signaling-peer``
    or the Request-URI host, RFC 5922 §7.3); ``None`` means ``remote``'s host.
    ``pinned``: the flow of a registered contact (RFC 5626 §5.3): only its
    own connection may carry a message; when it is gone the send fails, it
    never opens a new connection to ``remote`` (a phone behind NAT cannot
    accept one).
    ``adjacency`` names the adjacency the flow belongs to when the sender
    knows it (an outbound leg): the edge counts and logs by it. It is a label,
    not part of where the flow goes (no part of equality).
    ``advertised`` is the address our Via and Contact name on this flow when
    it is not ``local``: a worker process's own UDP port, for a flow that came
    in on a port all the workers share (docs/scaling.md). A label too.
    """

    transport: str
    local: tuple[str, int]
    remote: tuple[str, int]
    connection_id: int | None = None
    server_name: str | None = None
    pinned: bool = False
    adjacency: str | None = attrs.field(default=None, eq=False)
    advertised: tuple[str, int] | None = attrs.field(default=None, eq=False)

    @property
    def reliable(self) -> bool:
        """True for stream transports (no retransmissions, §17)."""
        return self.transport != "UDP"

    def describe(self) -> str:
        """The transport and the peer, for logs and show commands: ``TLS 192.0.2.50:40123``."""
        host, port = self.remote
        return f"{self.transport} {host_text(host)}:{port}"


@attrs.frozen
class Transmit:
    """Send ``data`` on ``flow``; report a failure with :meth:`SipStack.transport_error`."""

    flow: Flow
    data: bytes
    transaction_key: TransactionKey | None = None


@attrs.frozen
class Dropped:
    """A message was dropped; the edge counts it by adjacency and ``reason``."""

    flow: Flow
    reason: str
    context: object = None


@attrs.frozen(eq=False)
class Resolve:
    """Find where ``hop`` is (RFC 3263, :mod:`sbc.sip.locate`), then call ``reply``.

    The edge looks the next hop up without blocking and calls
    ``reply(resolution, now)`` exactly once, with the destinations found (or
    why there are none); the outputs ``reply`` returns are carried out like
    any others. ``adjacency`` is the outbound adjacency the lookup is for
    (counters and logs).
    """

    hop: NextHop
    reply: Callable[[Resolution, float], list[StackOutput]]
    adjacency: str | None = None


StackOutput: TypeAlias = "Transmit | Dropped | Resolve"


class TransactionUser(Protocol):
    """What the stack hands messages to: the SBC's call logic.

    Every method returns the stack outputs it produced (through
    :meth:`SipStack.respond` and :meth:`SipStack.send_request`). Raising a
    :class:`~sbc.errors.SipError` from :meth:`request_received` answers the
    request with that error's response.
    """

    def screen(self, request: Request, flow: Flow, context: object) -> str | None:
        """Before any transaction exists: a drop reason, or ``None`` to go on."""

    def request_received(
        self,
        request: Request,
        transaction: ServerTransaction | None,
        flow: Flow,
        context: object,
        now: float,
    ) -> list[StackOutput]:
        """A new request (``transaction`` is ``None`` for an ACK to a 2xx)."""

    def response_received(
        self, response: Response, transaction: ClientTransaction, now: float
    ) -> list[StackOutput]:
        """A response to a request the TU sent."""

    def transaction_failed(
        self, transaction: ClientTransaction | ServerTransaction, reason: str, now: float
    ) -> list[StackOutput]:
        """``reason`` is ``"timeout"`` or ``"transport"``."""

    def next_deadline(self) -> float | None:
        """When the TU's own timers (2xx retransmission, ...) next need :meth:`advance`."""

    def advance(self, now: float) -> list[StackOutput]:
        """Run the TU's timers due at ``now``."""

    def connection_closed(self, connection_id: int, now: float) -> list[StackOutput]:
        """The stream connection ``connection_id`` is gone (its flows with it)."""


def response_flow(request: Request, flow: Flow) -> Flow:
    """Where the response to ``request`` (received on ``flow``) goes: §18.2.2, RFC 3581.

    Stream transports answer on the same connection, whatever transport the
    Via names; should the connection be gone, the edge connects to
    ``remote`` (the source address and the sent-by port). On UDP the answer
    goes to the source address, and to the source port when the client
    asked for ``rport``, else to the sent-by port. A missing sent-by port
    means the default port of the transport the request arrived on. A top
    Via too broken to read (a request answered 400 for it) sends the answer
    back to the source address and port.
    """
    try:
        via = request.top_via
    except ParseError:
        return flow
    if via.has_param("rport") and not flow.reliable:
        return flow
    port = via.port or (5061 if flow.transport == "TLS" else 5060)
    if port == flow.remote[1]:
        return flow
    return Flow(
        flow.transport, flow.local, (flow.remote[0], port), flow.connection_id,
        adjacency=flow.adjacency, advertised=flow.advertised,
    )  # fmt: skip


def note_source(request: Request, flow: Flow) -> None:
    """§18.2.1 and RFC 3581: record the real source in the top Via when it differs."""
    via = request.top_via
    source_host, source_port = flow.remote
    wants_rport = via.has_param("rport")
    if not wants_rport and via.host.strip("[]") == source_host:
        return
    updated = via.with_param("received", source_host)
    if wants_rport:
        updated = updated.with_param("rport", str(source_port))
    vias = request.vias
    vias[0] = updated
    request.headers.set("Via", ", ".join(v.serialize() for v in vias))


def _scope(context: object) -> object:
    """What server transactions are scoped by: the inbound context, when it can be a key.

    A request only matches (as a retransmission, an ACK or a CANCEL) a
    transaction whose request arrived in an equal context: on the same
    listener, for the same adjacency, from the same TLS identity. The same
    bytes arriving over another transport or adjacency are a new request.
    """
    try:
        hash(context)
    except TypeError:
        return None
    return context


def check_addresses(request: Request) -> None:
    """Parse every address a request carries; ParseError (answerable) for the first bad one.

    The parser keeps URIs as text until asked; the transaction user asks for
    them in the middle of its work (building the outbound leg, a binding),
    where a failure would leave half-made state behind. So the Request-URI,
    every Via, and the URIs of From, To, Contact, Route and Record-Route are
    checked before anything else sees the request: 416 for a Request-URI of
    an unsupported scheme, 400 naming the problem otherwise.
    """
    try:
        _ = request.uri
        _ = request.vias
        _ = request.from_.uri
        _ = request.to.uri
        for name_addr in (*request.contacts, *request.routes, *request.record_routes):
            if not name_addr.is_star:
                _ = name_addr.uri
    except ParseError as error:
        if error.request is None:
            error.request = request
        raise


def _usable_for_dialog(response: Response) -> bool:
    """False for an answer to INVITE (1xx-3xx) whose Contact or Record-Route URIs do not parse.

    Such a response is dropped before its transaction sees it, as if lost:
    the transaction's timers then end the attempt cleanly (408 to the
    caller), where taking it would leave a call half set up.
    """
    if response.status == 100 or response.status >= 400 or response.cseq.method != "INVITE":
        return True
    try:
        for contact in response.contacts:
            if not contact.is_star:
                _ = contact.uri
        for route in response.record_routes:
            _ = route.uri
    except ParseError:
        return False
    return True


def _local_host(flow: Flow) -> str:
    """The flow's local address as the warn-agent host."""
    return host_text(flow.local[0])


def error_response(request: Request, error: SipError, warn_agent: str) -> Response:
    """The response for ``error``: status, reason, Warning (RFC 5630 §9) and its headers.

    Every response the SBC generates for a failure is built here, whether the
    stack answers it or a transport answers a framing error on the spot
    (:func:`error_answer`).
    """
    response = response_to(request, error.status, error.reason)
    if error.warning is not None:
        code, text = error.warning
        response.headers.add("Warning", f'{code} {warn_agent} "{text}"')
    for name, value in error.headers:
        response.headers.add(name, value)
    return response


def error_answer(error: ParseError) -> bytes | None:
    """The bytes answering a framing or parse error on the spot, when it can be answered.

    Used by the transports for what never reaches the stack (a stream's
    framing error, a datagram over the size limit): the answer goes back on
    the connection or to the source it came from.
    """
    request = error.request
    if request is None:
        return None
    try:
        return error_response(request, error, "").serialize()
    except ParseError:
        return None


class SipStack:
    """Parse, match to transactions, hand to the TU, and answer errors.

    ``agent`` names the SBC in Warning headers (RFC 3261 §20.43 warn-agent)
    when the flow's local address is not what should be shown.
    """

    def __init__(
        self,
        tu: TransactionUser,
        timers: TimerSettings | None = None,
        agent: Callable[[Flow], str] | None = None,
    ) -> None:
        self.tu = tu
        self.transactions = TransactionLayer(timers)
        self._agent = agent or _local_host
        self._branch_prefix = MAGIC_COOKIE + os.urandom(6).hex()
        self._branch_counter = itertools.count(1)

    # -- from the transport ---------------------------------------------------

    def receive(
        self, data: bytes, flow: Flow, now: float, context: object = None
    ) -> list[StackOutput]:
        """One complete message from ``flow`` (a datagram or one framed stream message)."""
        try:
            message = parse_message(data)
        except ParseError as error:
            return self._answer_parse_error(error, flow, context)
        try:
            if isinstance(message, Response):
                return self._receive_response(message, flow, now, context)
            return self._receive_request(message, flow, now, context)
        except ParseError as error:
            # A header the parser kept as text (a later Via, a From URI...)
            # turned out malformed before any transaction took the request.
            if isinstance(message, Response):
                return [Dropped(flow, "malformed-response", context)]
            if error.request is None:
                error.request = message
            return self._answer_parse_error(error, flow, context)

    def advance(self, now: float) -> list[StackOutput]:
        """Fire the timers (transactions' and the TU's) that are due at ``now``."""
        outputs = self._run(self.transactions.advance(now), now)
        deadline = self.tu.next_deadline()
        if deadline is not None and deadline <= now:
            outputs.extend(self.tu.advance(now))
        return outputs

    def next_deadline(self) -> float | None:
        """Absolute time at which :meth:`advance` must next be called, or ``None``."""
        ours = self.transactions.next_deadline()
        theirs = self.tu.next_deadline()
        if ours is None:
            return theirs
        if theirs is None:
            return ours
        return min(ours, theirs)

    def transactions_by_state(self) -> dict[str, int]:
        """Live transactions counted by machine and state, e.g. ``"INVITE_SERVER PROCEEDING"``."""
        counts: dict[str, int] = {}
        for transaction in self.transactions:
            name = f"{transaction.machine.name} {transaction.state.name}"
            counts[name] = counts.get(name, 0) + 1
        return counts

    def transport_error(self, key: TransactionKey, now: float) -> list[StackOutput]:
        """The edge could not send a message of transaction ``key``."""
        return self._run(self.transactions.transport_error(key, now), now)

    def connection_closed(self, connection_id: int, now: float) -> list[StackOutput]:
        """The edge lost stream connection ``connection_id``: the TU forgets its flows."""
        return self.tu.connection_closed(connection_id, now)

    # -- from the TU ----------------------------------------------------------

    def abandon(self, transaction: ClientTransaction, now: float) -> list[StackOutput]:
        """Destroy an INVITE client transaction that never got its final response (§9.1)."""
        return self._run(self.transactions.abandon(transaction, now), now)

    def respond(
        self, transaction: ServerTransaction, response: Response, now: float
    ) -> list[StackOutput]:
        """Send ``response`` in ``transaction`` (its flow was chosen when it arrived)."""
        return self._run(self.transactions.send_response(transaction, response, now), now)

    def reject(
        self, transaction: ServerTransaction, error: SipError, flow: Flow, now: float
    ) -> list[StackOutput]:
        """Answer ``transaction`` with the response for ``error``."""
        return self.respond(transaction, self.error_response(transaction.request, error, flow), now)

    def send_request(
        self, request: Request, flow: Flow, now: float
    ) -> tuple[ClientTransaction, list[StackOutput]]:
        """Start a client transaction sending ``request`` to ``flow``."""
        transaction, outputs = self.transactions.client_request(
            request, flow.reliable, now, peer=flow
        )
        return transaction, self._run(outputs, now)

    def send_stateless(self, message: Request | Response, flow: Flow) -> list[StackOutput]:
        """Send outside any transaction (an ACK for a 2xx, a 2xx retransmission)."""
        return [Transmit(flow, message.serialize())]

    def new_branch(self) -> str:
        """A fresh RFC 3261 branch parameter (magic cookie + unique part)."""
        return f"{self._branch_prefix}.{next(self._branch_counter)}"

    def error_response(self, request: Request, error: SipError, flow: Flow) -> Response:
        """The response for ``error``, with this stack's warn-agent (see :func:`error_response`)."""
        return error_response(request, error, self._agent(flow))

    # -- internals ------------------------------------------------------------

    def _receive_request(
        self, request: Request, flow: Flow, now: float, context: object
    ) -> list[StackOutput]:
        check_addresses(request)
        reason = self.tu.screen(request, flow, context)
        if reason is not None:
            return [Dropped(flow, reason, context)]
        note_source(request, flow)
        outputs = self.transactions.receive_request(
            request, flow.reliable, now, peer=response_flow(request, flow), scope=_scope(context)
        )
        # A 100 Trying leaves before the TU runs, so it never follows a final answer.
        outputs.sort(key=lambda output: not isinstance(output, Send))
        return self._run(outputs, now, flow, context)

    def _receive_response(
        self, response: Response, flow: Flow, now: float, context: object
    ) -> list[StackOutput]:
        if not _usable_for_dialog(response):
            return [Dropped(flow, "malformed-response", context)]
        outputs = self.transactions.receive_response(response, now)
        return self._run(outputs, now, flow, context)

    def _answer_parse_error(
        self, error: ParseError, flow: Flow, context: object
    ) -> list[StackOutput]:
        request = error.request
        if request is None:
            return [Dropped(flow, "unparseable", context)]
        if request.method == "ACK":  # never answered (§17.1.1.3)
            return [Dropped(flow, "malformed", context)]
        try:
            response = self.error_response(request, error, flow)
        except ParseError:
            return [Dropped(flow, "unparseable", context)]
        destination = response_flow(request, flow)
        return [Transmit(destination, response.serialize()), Dropped(flow, "malformed", context)]

    def _run(
        self,
        outputs: list[TransactionOutput],
        now: float,
        flow: Flow | None = None,
        context: object = None,
    ) -> list[StackOutput]:
        """Turn transaction-layer outputs into stack outputs, calling the TU as needed."""
        result: list[StackOutput] = []
        for output in outputs:
            if isinstance(output, Send):
                peer = output.transaction.peer
                assert isinstance(peer, Flow)
                result.append(Transmit(peer, output.message.serialize(), output.transaction.key))
            elif isinstance(output, DeliverRequest):
                result.extend(self._deliver(output, flow, now, context))
            elif isinstance(output, DeliverResponse):
                result.extend(self.tu.response_received(output.response, output.transaction, now))
            elif isinstance(output, TransactionTimeout):
                result.extend(self.tu.transaction_failed(output.transaction, "timeout", now))
            elif isinstance(output, TransportError):
                result.extend(self.tu.transaction_failed(output.transaction, "transport", now))
            elif isinstance(output, StrayResponse):
                if flow is not None:
                    result.append(Dropped(flow, "stray-response", context))
            elif isinstance(output, Terminated):
                pass
        return result

    def _deliver(
        self, output: DeliverRequest, flow: Flow | None, now: float, context: object
    ) -> list[StackOutput]:
        transaction = output.transaction
        assert flow is not None
        try:
            return self.tu.request_received(output.request, transaction, flow, context, now)
        except SipError as error:
            if transaction is None:  # an ACK: never answered
                return [Dropped(flow, "bad-ack", context)]
            try:
                return self.reject(transaction, error, flow, now)
            except IllegalTransitionError:
                return []
