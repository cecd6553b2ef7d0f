"""Registration relay: phones register through the SBC with a registrar behind it.

The access-SBC deployment (docs/phones.md, "Deployment 2: access SBC"): a
REGISTER for a domain that is not a ``local-domain`` is routed like a call to
the registrar behind an outbound adjacency. :class:`RegistrationRelay`

- sends it on with every Contact replaced by one of the SBC's own: the
  outbound adjacency's address and port, the scheme of the outbound leg and a
  user part that is an opaque token unique to that binding (``expires``,
  ``+sip.instance`` and ``reg-id`` are kept). The Request-URI, To, From and
  every end-to-end header (``Authorization`` included) are unchanged, so a
  registrar's digest stays valid; one outbound Call-ID per phone Call-ID,
  kept for every refresh, with an increasing CSeq (RFC 3261 §10.2);
- relays the registrar's answer: a 401/407 challenge unchanged (and a 423,
  whose retry, like a challenge's, leaves on the same outbound Call-ID), a 2xx as
  the phone's own Contacts with the expiries the registrar granted (and
  nothing else: other bindings of the AOR are not shown), any other failure
  as it is. Nothing is bound at the SBC before the registrar's 2xx;
- keeps token -> :class:`RelayedBinding` (phone Contact, flow, adjacencies,
  expiry). A request arriving on the outbound adjacency for a token is
  delivered to the phone over its flow (:meth:`RegistrationRelay.locate`);
  ``Expires: 0``, ``*``, expiry and the phone's connection closing end the
  mapping, and a request for an ended token gets 404;
- throttles refreshes (``register-refresh-min``): a phone's refresh over the
  same flow and Call-ID, for the same Contacts, is answered by the SBC itself
  while the registrar's binding has more than that many seconds left; the
  registrar is then asked for at least twice that (counted
  ``register-answered-locally`` / ``register-forwarded``).

Everything is pure: the stack, routing and tables are handed in, time is an
argument.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.logger import Logger

from sbc import security
from sbc.adjacencies import AdjacencyTable
from sbc.b2bua.call import contact_for, copy_end_to_end, new_call_id, new_tag
from sbc.b2bua.nexthop import Target, destination_flow, next_hop
from sbc.config import AdjacencyConfig
from sbc.errors import SipError
from sbc.registrar.bindings import aor_key
from sbc.sip.headers import CSeq, Headers, NameAddr, Via
from sbc.sip.locate import Resolution
from sbc.sip.message import Request, Response, response_to
from sbc.sip.stack import Flow, Resolve, SipStack, StackOutput
from sbc.sip.transaction import ClientTransaction, ServerTransaction, TransactionKey
from sbc.sip.uri import URI, host_text

__all__ = ["TOKEN_PREFIX", "RegistrationRelay", "RelayedBinding"]

#: Every token starts with this, so a request for an ended token can be told apart (404).
TOKEN_PREFIX = "sbcr-"
#: Contact parameters of the phone's Contact that the registrar sees unchanged.
KEPT_CONTACT_PARAMS = frozenset({"expires", "+sip.instance", "reg-id", "q"})
#: Expiry when neither the Contact nor the REGISTER names one (RFC 3261 §10.2.1.1).
DEFAULT_EXPIRES = 3600
#: Tried once on a REGISTER: how many candidate registrars at most.
MAX_CANDIDATES = 4
#: Seconds a session without a binding (a challenged REGISTER) waits for the retry.
SESSION_GRACE = 300.0
#: Seconds until a session whose forget time came while a REGISTER of it was
#: still on its way is looked at again.
SESSION_RETRY = 1.0
#: Relay sessions (phone Call-IDs) held at most; a new one over it gets 503.
MAX_SESSIONS = 200_000
RETRY_LATER = (("Retry-After", "60"),)
#: Refusals a phone answers with a new REGISTER on the same Call-ID: a challenge, or
#: 423 Interval Too Brief (RFC 3261 §10.2.8). The session, and with it the outbound
#: Call-ID and From tag a registrar may have tied its nonce to, waits for that retry.
RETRIED_REFUSALS = frozenset({401, 407, 423})

_log = Logger(namespace="sbc.registrar")

RouteFunction = Callable[[Request, AdjacencyConfig, float], "list[AdjacencyConfig]"]
"""``(request, inbound, now) -> outbound adjacencies``, in order (raises the routing SipError)."""


def new_token() -> str:
    """An unguessable user part naming one relayed binding."""
    return TOKEN_PREFIX + secrets.token_urlsafe(12)


@attrs.define(eq=False)
class RelayedBinding:
    """One phone Contact registered through the SBC: what its token stands for."""

    token: str
    aor: str
    phone_contact: URI
    flow: Flow
    inbound: str
    outbound: str
    #: when the registrar's binding ends (what it granted)
    expires_at: float
    #: when the phone's binding ends (what the phone was told; at most expires_at)
    phone_expires_at: float
    session: RelaySession

    def remaining(self, now: float) -> int:
        """Whole seconds the phone's binding has left."""
        return max(0, int(self.phone_expires_at - now + 0.5))


@attrs.define(eq=False)
class RelaySession:
    """One phone Call-ID's registrations, and the outbound 'dialog' they use."""

    key: tuple[str, str]  # (inbound adjacency, phone Call-ID)
    aor: str
    outbound: str
    call_id: str
    from_tag: str
    cseq: int
    #: the phone's Contacts (canonical text) -> their binding
    bindings: dict[str, RelayedBinding] = attrs.Factory(dict)
    #: with no binding (challenged, not answered yet): when to forget it
    forget_at: float | None = None
    #: tokens offered for Contacts not bound yet (a retry after a challenge reuses them)
    offered: dict[str, str] = attrs.Factory(dict)


@attrs.define(eq=False)
class PendingRegister:
    """A relayed REGISTER waiting for the registrar's final response."""

    session: RelaySession
    request: Request  # the phone's
    server: ServerTransaction
    flow: Flow
    inbound: AdjacencyConfig
    #: phone Contact (canonical) -> (its NameAddr, token, expires asked of the registrar)
    contacts: dict[str, tuple[NameAddr, str, int]]
    star: bool
    candidates: list[AdjacencyConfig]
    phone_expires: dict[str, int]
    client: ClientTransaction | None = None
    new_session: bool = False


def _canonical(uri: URI) -> str:
    return uri.serialize().lower()


class RelayStore(Protocol):
    """Where relayed bindings are also kept when nodes share a store (sbc.cluster.SharedStore)."""

    @property
    def available(self) -> bool:
        """False while a new binding cannot be written (the store is away)."""
        ...

    def refuse(self, aor: str, adjacency: str, now: float) -> None:
        """Count, log and raise the 503 of a REGISTER the store cannot take."""
        ...

    def relayed_bound(self, record: RelayedBinding, now: float) -> None:
        """A binding was added or refreshed (its flow or expiry changed)."""
        ...

    def relayed_ended(self, token: str) -> None:
        """A binding ended."""
        ...

    def relayed_held_elsewhere(self, token: str, now: float) -> object | None:
        """Another node's live binding for ``token`` (its record), or None."""
        ...


class RegistrationRelay:
    """REGISTER relay to registrars behind the SBC; see the module docstring.

    ``table`` gives the attached adjacencies, ``route`` the outbound
    adjacencies for a REGISTER, ``count(adjacency, name)`` counts,
    ``refresh_min`` returns ``register-refresh-min`` (0: off). Set
    :attr:`stack` before use. :attr:`store`, when set, is told of every
    binding added, refreshed and ended, refuses (503) a REGISTER that would
    add a binding while it is away, and knows the tokens other nodes hold.
    """

    stack: SipStack

    def __init__(
        self,
        table: Callable[[], AdjacencyTable],
        route: RouteFunction,
        count: Callable[[str, str], None],
        refresh_min: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._table = table
        self._route = route
        self._count = count
        self._refresh_min = refresh_min
        self.tokens: dict[str, RelayedBinding] = {}
        self.sessions: dict[tuple[str, str], RelaySession] = {}
        # (time, seq, binding or session) each time a phone expiry or a
        # session's forget time is set; an entry whose object has moved on
        # (refreshed, ended) is stale and dropped when it comes to the top
        self._deadlines: list[tuple[float, int, RelayedBinding | RelaySession]] = []
        #: connection id -> tokens of the bindings whose phone registered over it (in order)
        self._by_connection: dict[int, dict[str, None]] = {}
        self._deadline_seq = itertools.count()
        self.pending: dict[TransactionKey, PendingRegister] = {}
        self.store: RelayStore | None = None
        #: Called with the Request-URI, the record and the inbound adjacency of a request
        #: for a token another node holds: the targets that reach it through that node
        #: (the cluster link, docs/scaling.md), or none (the request then gets 480).
        self.on_held_elsewhere: Callable[[URI, object, str, float], list[Target]] | None = None

    # -- queries ---------------------------------------------------------------------

    def owns(self, transaction: ClientTransaction | ServerTransaction) -> bool:
        """True for a client transaction of a relayed REGISTER."""
        return transaction.key in self.pending

    def bindings(self) -> list[RelayedBinding]:
        """Every live relayed binding."""
        return list(self.tokens.values())

    def locate(self, uri: URI, inbound: str, now: float) -> list[Target] | None:
        """Where a request for ``uri`` (arriving on ``inbound``) goes: the phone of a token.

        None when ``uri`` names no token of the SBC (routing then decides);
        raises ``SipError(404)`` for a token that has ended, or that arrives
        on another adjacency than the one its registration was relayed to.
        A token another node holds goes through that node
        (:attr:`on_held_elsewhere`), else gets 480.
        """
        user = uri.user
        if user is None or not user.startswith(TOKEN_PREFIX):
            return None
        if uri.host.strip("[]") not in self._table().addresses:
            return None
        binding = self.tokens.get(user)
        if binding is None and self.store is not None:
            record = self.store.relayed_held_elsewhere(user, now)
            if record is not None and getattr(record, "outbound", inbound) == inbound:
                targets = []
                if self.on_held_elsewhere is not None:
                    targets = self.on_held_elsewhere(uri, record, inbound, now)
                if not targets:
                    raise SipError(480, "Temporarily Unavailable")
                return targets
        if binding is None or binding.outbound != inbound or binding.phone_expires_at <= now:
            raise SipError(404, "Not Found - registration ended")
        return [Target(binding.inbound, binding.phone_contact, binding.flow)]

    # -- REGISTER from a phone ---------------------------------------------------------

    def register(
        self,
        request: Request,
        server: ServerTransaction,
        flow: Flow,
        inbound: AdjacencyConfig,
        trusted: bool,
        now: float,
    ) -> list[StackOutput]:
        """Relay a phone's REGISTER (or answer a throttled refresh); raises the SipError."""
        aor_uri = request.to.uri
        if aor_uri.scheme not in ("sip", "sips") or aor_uri.user is None:
            raise SipError(400, "Bad Request - AOR must be a SIP or SIPS URI with a user")
        contacts = request.contacts
        star = any(c.is_star for c in contacts)
        header_expires = request.expires
        if star and (header_expires != 0 or len(contacts) != 1):
            raise SipError(400, "Bad Request - Contact * needs Expires: 0 and no other Contact")
        over_tls = security.reached_over_tls(inbound, flow.transport)
        error = security.check_registration(
            aor_uri.scheme, [c.uri.scheme for c in contacts if not c.is_star], over_tls
        )
        if error is not None:
            raise error
        key = (inbound.name, request.call_id)
        session = self.sessions.get(key)
        aor = aor_key(aor_uri)
        if session is not None and session.aor != aor:
            raise SipError(400, "Bad Request - one Call-ID registers one address-of-record")
        refresh_min = self._refresh_min()
        requested: dict[str, tuple[NameAddr, int]] = {}
        for contact in contacts:
            if contact.is_star:
                continue
            expires = contact.expires
            if expires is None:
                expires = header_expires if header_expires is not None else DEFAULT_EXPIRES
            requested[_canonical(contact.uri)] = (contact, expires)
        if session is not None and not star and refresh_min > 0:
            answered = self._answer_locally(request, server, flow, session, requested, now)
            if answered is not None:
                return answered
        store = self.store
        if store is not None and not star and not store.available:
            pinned = _pinned(flow)
            for canonical, (_, expires) in requested.items():
                bound = session.bindings.get(canonical) if session is not None else None
                if expires > 0 and (bound is None or bound.flow != pinned):
                    store.refuse(aor, inbound.name, now)
        new_session = session is None or not session.bindings
        if session is None:
            if len(self.sessions) >= MAX_SESSIONS:
                # a flood of new Call-IDs must not grow the table without end
                self.expire(now)
                if len(self.sessions) >= MAX_SESSIONS:
                    raise SipError(
                        503, "Service Unavailable - too many registrations", headers=RETRY_LATER
                    )
            candidates = self._candidates(request, inbound, now)
            session = RelaySession(
                key, aor, candidates[0].name, "", new_tag(), secrets.randbelow(2**16) + 1
            )
            session.forget_at = now + SESSION_GRACE
            self.sessions[key] = session
            self._due(session.forget_at, session)
        else:
            outbound = self._table().get(session.outbound)
            if outbound is None:
                raise SipError(503, "Service Unavailable - registrar adjacency detached")
            candidates = [outbound]
        pending_contacts: dict[str, tuple[NameAddr, str, int]] = {}
        for canonical, (contact, expires) in requested.items():
            bound = session.bindings.get(canonical)
            if bound is not None:
                token = bound.token
            else:
                token = session.offered.setdefault(canonical, new_token())
            asked = expires
            if expires > 0 and refresh_min > 0:
                asked = max(expires, int(2 * refresh_min))
            pending_contacts[canonical] = (contact, token, asked)
        pending = PendingRegister(
            session,
            request,
            server,
            flow,
            inbound,
            pending_contacts,
            star,
            candidates,
            {c: e for c, (_, e) in requested.items()},
            new_session=new_session,
        )
        return self._send(pending, now)

    def _candidates(
        self, request: Request, inbound: AdjacencyConfig, now: float
    ) -> list[AdjacencyConfig]:
        try:
            found = self._route(request, inbound, now)
            if not found:
                raise SipError(480, "Temporarily Unavailable")
        except SipError as error:
            _log.info(
                "REGISTER for {aor} from {adjacency}: no registrar to relay it to: "
                "{status} {reason}",
                event="registration.refused",
                aor=aor_key(request.to.uri),
                adjacency=inbound.name,
                status=error.status,
                reason=error.reason,
            )
            raise
        return found[:MAX_CANDIDATES]

    def _answer_locally(
        self,
        request: Request,
        server: ServerTransaction,
        flow: Flow,
        session: RelaySession,
        requested: dict[str, tuple[NameAddr, int]],
        now: float,
    ) -> list[StackOutput] | None:
        """A throttled refresh: answered from what the registrar granted, or None to forward."""
        if not requested or set(requested) != set(session.bindings):
            return None
        refresh_min = self._refresh_min()
        bindings = session.bindings
        for canonical, (_, expires) in requested.items():
            binding = bindings[canonical]
            if expires <= 0 or binding.flow != _pinned(flow):
                return None
            if binding.expires_at - now <= refresh_min:
                return None
        response = response_to(request, 200)
        for canonical, (contact, expires) in requested.items():
            binding = bindings[canonical]
            granted = min(float(expires), binding.expires_at - now)
            binding.phone_expires_at = now + granted
            self._due(binding.phone_expires_at, binding)
            if self.store is not None:
                self.store.relayed_bound(binding, now)
            response.headers.add("Contact", _phone_contact(contact, int(granted)))
        self._count(session.key[0], "register-answered-locally")
        return self.stack.respond(server, response, now)

    def _send(self, pending: PendingRegister, now: float) -> list[StackOutput]:
        table = self._table()
        while pending.candidates:
            outbound = pending.candidates.pop(0)
            if table.get(outbound.name) is None:
                continue
            hop = next_hop(outbound, pending.request.uri)
            if hop.numeric:
                destination = hop.default_destination
                local = table.local_address(outbound, destination.transport)
                flow = destination_flow(outbound, pending.request.uri, destination, local)
                return self._send_to(pending, outbound, flow, now)
            return [Resolve(hop, self._resolved_for(pending, outbound), outbound.name)]
        raise SipError(503, "Service Unavailable - no registrar reachable")

    def _resolved_for(
        self, pending: PendingRegister, outbound: AdjacencyConfig
    ) -> Callable[[Resolution, float], list[StackOutput]]:
        """What to do once DNS found the registrar (RFC 3263): send to the first destination."""

        def reply(resolution: Resolution, now: float) -> list[StackOutput]:
            if resolution.failed or not resolution.destinations:
                self._count(outbound.name, "hunt-skip:dns")
                return self._retry(pending, now)
            destination = resolution.destinations[0]
            local = self._table().local_address(outbound, destination.transport)
            flow = destination_flow(outbound, pending.request.uri, destination, local)
            return self._send_to(pending, outbound, flow, now)

        return reply

    def _send_to(
        self, pending: PendingRegister, outbound: AdjacencyConfig, flow: Flow, now: float
    ) -> list[StackOutput]:
        session = pending.session
        phone = pending.request
        if session.outbound != outbound.name or not session.call_id:
            session.outbound = outbound.name
            session.call_id = new_call_id(flow.local[0])
        session.cseq += 1
        secure = security.requires_secure_target(phone.uri.scheme)
        own = contact_for(flow, secure=secure).uri
        via_host, via_port = flow.advertised or flow.local
        headers = Headers()
        headers.add(
            "Via",
            Via(
                flow.transport,
                host_text(via_host),
                via_port,
                (
                    ("branch", self.stack.new_branch()),
                    ("rport", None),
                ),
            ),
        )
        max_forwards = phone.max_forwards
        headers.add("Max-Forwards", 70 if max_forwards is None else max(0, max_forwards - 1))
        headers.add("From", phone.from_.with_tag(session.from_tag))
        headers.add("To", phone.to)
        headers.add("Call-ID", session.call_id)
        headers.add("CSeq", CSeq(session.cseq, "REGISTER"))
        if pending.star:
            headers.add("Contact", "*")
        for contact, token, asked in pending.contacts.values():
            uri = own.replace(user=token)
            params = [(n, v) for n, v in contact.params if n.lower() in KEPT_CONTACT_PARAMS]
            params = [(n, v) for n, v in params if n.lower() != "expires"]
            params.append(("expires", str(asked)))
            headers.add("Contact", NameAddr(None, uri, params))
        copy_end_to_end(phone, headers)
        if phone.expires is not None and not pending.star:
            asked_all = [a for _, _, a in pending.contacts.values()]
            headers.set("Expires", max(asked_all) if asked_all else phone.expires)
        request = Request("REGISTER", phone.uri, headers)
        transaction, outputs = self.stack.send_request(request, flow, now)
        pending.client = transaction
        self.pending[transaction.key] = pending
        self._count(pending.inbound.name, "register-forwarded")
        return outputs

    # -- the registrar's answer ------------------------------------------------------

    def response(
        self, response: Response, transaction: ClientTransaction, now: float
    ) -> list[StackOutput]:
        """A response to a relayed REGISTER."""
        status = response.status
        if status < 200:
            return []
        pending = self.pending.pop(transaction.key, None)
        if pending is None:
            return []
        if status < 300:
            return self._registered(pending, response, now)
        if status in (408, 503) and pending.new_session and pending.candidates:
            return self._retry(pending, now)
        if status in RETRIED_REFUSALS:
            # a challenge or a 423 keeps the session: the retry goes on the same Call-ID
            self._await_retry(pending.session, now)
        else:
            self._forget_session(pending.session)
        reply = response_to(pending.request, status, response.reason)
        copy_end_to_end(response, reply.headers)
        return self.stack.respond(pending.server, reply, now)

    def failure(self, transaction: ClientTransaction, reason: str, now: float) -> list[StackOutput]:
        """The relayed REGISTER timed out or could not be sent."""
        pending = self.pending.pop(transaction.key, None)
        if pending is None:
            return []
        if pending.new_session and pending.candidates:
            return self._retry(pending, now)
        self._forget_session(pending.session)
        status = 408 if reason == "timeout" else 503
        error = SipError(status, "Request Timeout" if status == 408 else "Service Unavailable")
        return self.stack.respond(
            pending.server, self.stack.error_response(pending.request, error, pending.flow), now
        )

    def _retry(self, pending: PendingRegister, now: float) -> list[StackOutput]:
        try:
            return self._send(pending, now)
        except SipError as error:
            self._forget_session(pending.session)
            return self.stack.respond(
                pending.server, self.stack.error_response(pending.request, error, pending.flow), now
            )

    def _registered(
        self, pending: PendingRegister, response: Response, now: float
    ) -> list[StackOutput]:
        session = pending.session
        self.sessions[session.key] = session
        session.forget_at = None
        if pending.star:
            for binding in list(session.bindings.values()):
                self._end(binding, now, "unregistered (Contact *)")
            for binding in [b for b in self.tokens.values() if b.aor == session.aor]:
                self._end(binding, now, "unregistered (Contact *)")
        granted = self._granted(response)
        reply = response_to(pending.request, 200, response.reason)
        for canonical, (contact, token, _) in pending.contacts.items():
            seconds = granted.get(token)
            current = session.bindings.get(canonical)
            if not seconds:
                if current is not None:
                    reason = (
                        "unregistered (expires 0)"
                        if pending.phone_expires.get(canonical, 1) == 0
                        else "not kept by the registrar"
                    )
                    self._end(current, now, reason)
                continue
            phone_seconds = min(seconds, pending.phone_expires.get(canonical, seconds))
            if current is None:
                current = RelayedBinding(
                    token,
                    session.aor,
                    contact.uri,
                    _pinned(pending.flow),
                    pending.inbound.name,
                    session.outbound,
                    now + seconds,
                    now + phone_seconds,
                    session,
                )
                session.bindings[canonical] = current
                session.offered.pop(canonical, None)
                self.tokens[token] = current
                self._index(current)
                self._due(current.phone_expires_at, current)
                _log_binding("registration.added", current, now)
            else:
                self._unindex(current)
                current.flow = _pinned(pending.flow)
                self._index(current)
                current.expires_at = now + seconds
                current.phone_expires_at = now + phone_seconds
                self._due(current.phone_expires_at, current)
                _log_binding("registration.refreshed", current, now)
            if self.store is not None:
                self.store.relayed_bound(current, now)
            reply.headers.add("Contact", _phone_contact(contact, phone_seconds))
        if not session.bindings:
            self._forget_session(session)
        copy_end_to_end(response, reply.headers)
        reply.headers.remove("Expires")
        return self.stack.respond(pending.server, reply, now)

    @staticmethod
    def _granted(response: Response) -> dict[str, int]:
        """token -> seconds the registrar granted, from its 2xx's Contacts."""
        default = response.expires
        out: dict[str, int] = {}
        for contact in response.contacts:
            if contact.is_star:
                continue
            user = contact.uri.user
            if user is None or not user.startswith(TOKEN_PREFIX):
                continue
            seconds = contact.expires
            if seconds is None:
                seconds = default if default is not None else DEFAULT_EXPIRES
            out[user] = seconds
        return out

    # -- ending ----------------------------------------------------------------------

    def _end(self, binding: RelayedBinding, now: float, reason: str | None) -> None:
        if self.tokens.get(binding.token) is not binding:
            return
        del self.tokens[binding.token]
        self._unindex(binding)
        if self.store is not None:
            self.store.relayed_ended(binding.token)
        session = binding.session
        for canonical, bound in list(session.bindings.items()):
            if bound is binding:
                del session.bindings[canonical]
        if not session.bindings:
            self._forget_session(session)
        if reason is None:
            _log_binding("registration.expired", binding, now)
        else:
            _log_binding("registration.removed", binding, now, reason)

    def _forget_session(self, session: RelaySession) -> None:
        """Drop ``session`` when it holds no binding and no REGISTER of it is on its way.

        Called whenever one of its bindings or REGISTERs ends, so that a
        session left empty (its phone's connection closed while a refresh
        was with the registrar, say) does not stay for ever.
        """
        if self.sessions.get(session.key) is session and not session.bindings:
            if any(p.session is session for p in self.pending.values()):
                return  # a REGISTER of it is still on its way
            del self.sessions[session.key]

    def _await_retry(self, session: RelaySession, now: float) -> None:
        """A challenge or a 423 answered ``session``'s REGISTER: keep it for the phone's retry.

        A session with bindings is kept by them; an empty one waits
        :data:`SESSION_GRACE` seconds from now for the retry.
        """
        if self.sessions.get(session.key) is session and not session.bindings:
            session.forget_at = now + SESSION_GRACE
            self._due(session.forget_at, session)

    def connection_closed(self, connection_id: int, now: float) -> None:
        """End the bindings of phones that registered over that connection."""
        for token in list(self._by_connection.get(connection_id, ())):
            binding = self.tokens.get(token)
            if binding is not None and binding.flow.connection_id == connection_id:
                self._end(binding, now, "connection closed")
        self._by_connection.pop(connection_id, None)

    def _index(self, binding: RelayedBinding) -> None:
        connection_id = binding.flow.connection_id
        if connection_id is not None:
            self._by_connection.setdefault(connection_id, {})[binding.token] = None

    def _unindex(self, binding: RelayedBinding) -> None:
        connection_id = binding.flow.connection_id
        tokens = self._by_connection.get(connection_id) if connection_id is not None else None
        if tokens is not None:
            tokens.pop(binding.token, None)
            if not tokens:
                del self._by_connection[connection_id]  # type: ignore[arg-type]

    def expire(self, now: float) -> None:
        """End the bindings whose phone-facing expiry has come, and idle sessions."""
        # Only what is due is touched (this runs whenever any timer of the SBC
        # fires): the heap's entries in time order, stale ones skipped.
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            at, _, item = heapq.heappop(heap)
            if isinstance(item, RelayedBinding):
                if self.tokens.get(item.token) is item and item.phone_expires_at == at:
                    self._end(item, now, None)
            elif self.sessions.get(item.key) is item and item.forget_at == at:
                self._forget_session(item)
                if self.sessions.get(item.key) is item and item.forget_at == at:
                    if item.bindings:
                        item.forget_at = None  # registered meanwhile: kept as long as they are
                    else:
                        # a REGISTER of it is still on its way: look again later
                        item.forget_at = now + SESSION_RETRY
                        self._due(item.forget_at, item)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has work.

        The earliest phone expiry or session forget time, from a heap kept
        as they are set (this runs after every message; a scan of every
        binding would cost in proportion to the phones registered).
        """
        heap = self._deadlines
        while heap:
            at, _, item = heap[0]
            if isinstance(item, RelayedBinding):
                if self.tokens.get(item.token) is item and item.phone_expires_at == at:
                    return at
            elif self.sessions.get(item.key) is item and item.forget_at == at:
                return at
            heapq.heappop(heap)  # refreshed, ended or forgotten since
        return None

    def _due(self, at: float, item: RelayedBinding | RelaySession) -> None:
        heapq.heappush(self._deadlines, (at, next(self._deadline_seq), item))

    def release_adjacency(self, name: str, now: float) -> None:
        """``no attach``: the bindings relayed to or from ``name`` end."""
        for binding in [b for b in self.tokens.values() if name in (b.inbound, b.outbound)]:
            self._end(binding, now, f"adjacency {name} detached")


def _pinned(flow: Flow) -> Flow:
    if flow.connection_id is not None and not flow.pinned:
        return attrs.evolve(flow, pinned=True)
    return flow


def _phone_contact(contact: NameAddr, seconds: int) -> NameAddr:
    params = [(n, v) for n, v in contact.params if n.lower() != "expires"]
    params.append(("expires", str(int(seconds))))
    return NameAddr(contact.display_name, contact.uri, params)


def _log_binding(
    event: str, binding: RelayedBinding, now: float, reason: str | None = None
) -> None:
    (_log.debug if event == "registration.refreshed" else _log.info)(
        "{event_text} {contact} for {aor} from {adjacency} ({source}), relayed to {relayed_to}"
        + (": {reason}" if reason else ""),
        event=event,
        event_text=event.partition(".")[2],
        aor=binding.aor,
        contact=binding.phone_contact.serialize(),
        adjacency=binding.inbound,
        source=binding.flow.describe(),
        relayed_to=binding.outbound,
        token=binding.token,
        expires=binding.remaining(now),
        reason=reason,
    )
