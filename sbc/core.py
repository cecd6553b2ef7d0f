"""The SBC's transaction user: what happens to a request once it is parsed.

:class:`SbcCore` is handed every request by the :class:`~sbc.sip.stack.SipStack`.
It applies, in order:

1. the TLS peer check (RFC 5922, behaviour.md §3): a request whose From
   domain the peer's certificate does not vouch for is dropped unanswered;
2. requests addressed to the SBC itself (Request-URI host is one of its
   signaling addresses, no user part): OPTIONS is answered 200;
3. Max-Forwards 0 on a request to forward: 483;
4. the seed's admission rule and the outbound security filter
   (:mod:`sbc.security`): 403 + Warning 380, or 480.

Relaying calls (the B2BUA) is not there yet: a request that passes every
check is answered ``501 Not Implemented``. That is the next piece of work.
"""

from __future__ import annotations

from collections.abc import Callable

from sbc import security
from sbc.adjacencies import AdjacencyTable, InboundContext
from sbc.config import AdjacencyConfig
from sbc.errors import SipError
from sbc.sip.message import Request, Response, response_to
from sbc.sip.stack import Flow, SipStack, StackOutput
from sbc.sip.transaction import ClientTransaction, ServerTransaction

ALLOW = (
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, PRACK, MESSAGE, REFER, NOTIFY, "
    "SUBSCRIBE"
)
SUPPORTED = "outbound"
ACCEPT = "application/sdp"


class SbcCore:
    """The transaction user behind the stack; see the module docstring.

    ``table`` is a callable returning the current :class:`AdjacencyTable`, so
    a commit can swap the table without rebuilding the core. Set
    :attr:`stack` before feeding the stack any message.
    """

    stack: SipStack

    def __init__(self, table: Callable[[], AdjacencyTable]) -> None:
        self._table = table

    # -- TransactionUser ------------------------------------------------------

    def screen(self, request: Request, flow: Flow, context: object) -> str | None:
        identities = context.peer_identities if isinstance(context, InboundContext) else None
        if not security.from_domain_matches(identities, request.from_.uri.host):
            return "tls-identity-mismatch"
        return None

    def request_received(
        self,
        request: Request,
        transaction: ServerTransaction | None,
        flow: Flow,
        context: object,
        now: float,
    ) -> list[StackOutput]:
        if transaction is None or request.method == "ACK":
            return []  # an ACK for a 2xx: the B2BUA will consume it
        if self._addressed_to_sbc(request):
            return self._answer_locally(request, transaction, flow, now)
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            raise SipError(483, "Too Many Hops")
        inbound = self._inbound_adjacency(context)
        table = self._table()
        candidates = [a for a in table.attached if a.name != inbound.name]
        security.secure_destinations(inbound, request.uri.scheme, candidates)
        raise SipError(501, "Not Implemented - call relaying is not available yet")

    def response_received(
        self, response: Response, transaction: ClientTransaction, now: float
    ) -> list[StackOutput]:
        return []

    def transaction_failed(
        self, transaction: ClientTransaction | ServerTransaction, reason: str, now: float
    ) -> list[StackOutput]:
        return []

    # -- helpers --------------------------------------------------------------

    def _inbound_adjacency(self, context: object) -> AdjacencyConfig:
        if isinstance(context, InboundContext):
            adjacency = self._table().get(context.adjacency)
            if adjacency is not None:
                return adjacency
        raise SipError(500, "Server Internal Error - unknown inbound adjacency")

    def _addressed_to_sbc(self, request: Request) -> bool:
        uri = request.uri
        if uri.user is not None or uri.scheme not in ("sip", "sips"):
            return False
        return uri.host.strip("[]") in self._table().addresses

    def _answer_locally(
        self, request: Request, transaction: ServerTransaction, flow: Flow, now: float
    ) -> list[StackOutput]:
        if request.method == "OPTIONS":
            response = response_to(request, 200)
            response.headers.add("Supported", SUPPORTED)
            response.headers.add("Accept", ACCEPT)
        else:
            response = response_to(request, 405)  # §21.4.6: 405 lists what is allowed
        response.headers.add("Allow", ALLOW)
        return self.stack.respond(transaction, response, now)
