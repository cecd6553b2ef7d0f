"""The SBC's transaction user: what happens to a request once it is parsed.

:class:`SbcCore` is handed every request by the :class:`~sbc.sip.stack.SipStack`.
It applies, in order:

1. the TLS peer check (RFC 5922, docs/security-model.md): a request whose From
   domain the peer's certificate does not vouch for is dropped unanswered;
   then ACK, CANCEL and in-dialog requests go to the B2BUA (7; in-dialog
   requests after the extension check of 6), and a new
   INVITE or REGISTER may be answered 503 + Retry-After by overload control
   (:mod:`sbc.overload`) before any of the work below;
2. requests addressed to the SBC itself (Request-URI host is one of its
   signaling addresses, no user part): OPTIONS is answered 200;
3. Max-Forwards 0 on a request to forward: 483;
4. the seed's admission rule (:mod:`sbc.security`): an untrusted request
   to a SIPS Request-URI, or a REGISTER for a SIPS AOR, gets 403 + Warning 380
   (refusals at 3, 4 and 5, and by routing at 7, are logged as ``call.refused``,
   docs/logging.md, and counted as ``calls-refused:RULE`` on the inbound
   adjacency, docs/metrics.md);
5. authentication (:func:`sbc.security.authentication_step`): a request from
   a peer whose certificate vouches for its From domain passes; with
   ``authentication digest`` the :class:`~sbc.interfaces.IAuthenticator`
   checks its credentials (401/407 challenges, 403, 400: counted as
   ``auth-challenges`` / ``auth-failures``, failures logged as
   ``auth.failed``) and the credentials it checked are removed before the
   request goes on; with ``authentication delegated`` it passes to the far
   side; on an adjacency whose TLS clients may lack a certificate, a request
   nothing can authenticate gets 403;
6. SIP extensions (:func:`check_extensions`): a request whose ``Require``
   or ``Proxy-Require`` names an option-tag the SBC does not support end to
   end gets 420 Bad Extension listing them in ``Unsupported`` (in-dialog
   requests and requests to the SBC itself are checked too; ACK and CANCEL
   never);
7. dispatch: ACK and CANCEL to the B2BUA; in-dialog requests (To tag
   present) to their call; REGISTER for a ``local-domain`` to the
   :class:`~sbc.registrar.Registrar`, for any other domain to the
   :class:`~sbc.registrar.relay.RegistrationRelay` (relayed to the registrar
   behind an outbound adjacency; requests for its tokens come back to the
   phones through the locator); every other request outside a dialog
   to the B2BUA (:class:`~sbc.b2bua.CallManager`), which routes it (to the
   registered contacts for an AOR in a local domain, else through the
   router) and relays it on a new outbound leg.

The B2BUA keeps timers of its own (2xx retransmission, RFC 3261 §13.3.1.4);
the stack folds them into its single deadline (:meth:`SipStack.next_deadline`
and :meth:`SipStack.advance` consult :meth:`SbcCore.next_deadline` and
:meth:`SbcCore.advance`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NoReturn

from sbc import security
from sbc.adjacencies import AdjacencyTable, InboundContext
from sbc.auth import AuthenticationError
from sbc.b2bua import CallManager, HuntPolicy, RouterFunction, Target, calllog
from sbc.cluster.codec import binding_key, holder_name, relay_key
from sbc.cluster.hop import CLUSTER_HEADER, ClusterCaller, not_reached
from sbc.cluster.routing import ClusterRouting
from sbc.config import AdjacencyConfig
from sbc.errors import SipError
from sbc.interfaces import IAuthenticator
from sbc.overload import OverloadControl
from sbc.registrar import Binding, Registrar, aor_key
from sbc.registrar.relay import RegistrationRelay
from sbc.routing import RouteKey, Router
from sbc.routing.policies import DefaultPolicy
from sbc.security import AuthenticationStep
from sbc.sip.message import Request, Response, response_to
from sbc.sip.stack import Flow, SipStack, StackOutput
from sbc.sip.transaction import ClientTransaction, ServerTransaction
from sbc.sip.uri import URI

ALLOW = (
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, PRACK, MESSAGE, REFER, NOTIFY, "
    "SUBSCRIBE"
)
#: The option-tags (RFC 3261 §19.2) the SBC supports end to end, as a B2BUA
#: (docs/security-model.md, "SIP extensions"): 100rel (PRACK relayed, RAck
#: mapped to the other leg), precondition (SDP and UPDATE/PRACK relayed
#: unchanged), timer (Session-Expires and refreshes relayed), replaces
#: (Replaces mapped to the other leg's dialog), outbound (flows of registered
#: phones). A request that requires anything else gets 420.
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {"100rel", "outbound", "precondition", "replaces", "timer"}
)
SUPPORTED = ", ".join(sorted(SUPPORTED_EXTENSIONS))
ACCEPT = "application/sdp"


def check_extensions(request: Request) -> None:
    """Raise 420 Bad Extension when ``request`` requires an option-tag the SBC lacks.

    RFC 3261 §8.2.2.3 (``Require``, at a UAS) and §16.3 step 5
    (``Proxy-Require``, at the proxy the caller sees as its next hop): the
    SBC is both for the caller. The ``Unsupported`` header lists every
    unknown tag of the two, in order (tokens: compared ignoring case).
    Not for ACK and CANCEL, which must ignore both headers (§20.32).
    """
    headers = request.headers
    if "Require" not in headers and "Proxy-Require" not in headers:
        return
    unknown: list[str] = []
    for name in ("Require", "Proxy-Require"):
        for tag in headers.values(name):
            tag = tag.strip()
            if tag and tag.lower() not in SUPPORTED_EXTENSIONS and tag not in unknown:
                unknown.append(tag)
    if unknown:
        raise SipError(420, "Bad Extension", headers=(("Unsupported", ", ".join(unknown)),))


class SbcCore:
    """The transaction user behind the stack; see the module docstring.

    ``table`` is a callable returning the current :class:`AdjacencyTable`, so
    a commit can swap the table without rebuilding the core. ``router`` is
    :meth:`sbc.routing.Router.route` (or anything with its signature); the
    default routes to every other attached adjacency with the default
    policy. ``local_domains`` (or a callable returning them) are the
    registrar's domains. ``no_answer_timeout`` returns Timer C in seconds
    (default 180). ``authenticator`` checks digest credentials on adjacencies
    with ``authentication digest``. Set :attr:`stack` before feeding the stack
    any message.
    """

    def __init__(
        self,
        table: Callable[[], AdjacencyTable],
        router: RouterFunction | None = None,
        local_domains: Iterable[str] | Callable[[], Iterable[str]] = (),
        hunting: HuntPolicy | None = None,
        registrar: Registrar | None = None,
        no_answer_timeout: Callable[[], float] | None = None,
        authenticator: IAuthenticator | None = None,
        register_refresh_min: Callable[[], float] | None = None,
    ) -> None:
        self._table = table
        self.authenticator = authenticator
        #: called with the source IP address and the adjacency of every failed digest
        #: attempt: the service counts them toward a ban (SourceGuard.note_auth_failure)
        self.on_auth_failure: Callable[[str, str, float], object] | None = None
        self._auth_log_limiter = calllog.RefusalLimiter(calllog.AUTH_FAILURES_PER_WINDOW)
        if router is None:
            router = Router(None, DefaultPolicy()).route
        self._local_domains = local_domains
        self._local_domains_cache: tuple[Iterable[str], frozenset[str]] | None = None
        self.registrar = registrar or Registrar()
        self.calls = CallManager(
            table, router, hunting, self._locate, no_answer_timeout=no_answer_timeout
        )
        self.relay = RegistrationRelay(
            table, self._registrars_for, self.calls.count, register_refresh_min or (lambda: 0.0)
        )
        self.relay.on_held_elsewhere = self._relayed_held_elsewhere
        #: The flow this process may use for a binding another process holds, or
        #: None: the worker processes of one node share their UDP listeners, so a
        #: sibling's UDP binding is reachable from here (docs/scaling.md).
        self.sibling_flow: Callable[[Binding], Flow | None] = _no_flow
        #: Calls for phones another SBC node holds go there through the cluster link
        #: (docs/scaling.md); None: no shared store, such contacts are skipped.
        self.cluster: ClusterRouting | None = None
        self._stack: SipStack | None = None
        #: Sheds new INVITEs and REGISTERs when the SBC is overloaded (sbc.overload).
        self.overload = OverloadControl(count=self.calls.count)

    @property
    def stack(self) -> SipStack:
        """The stack this core is the transaction user of."""
        assert self._stack is not None, "set SbcCore.stack first"
        return self._stack

    @stack.setter
    def stack(self, stack: SipStack) -> None:
        self._stack = stack
        self.calls.stack = stack
        self.relay.stack = stack

    @property
    def local_domains(self) -> frozenset[str]:
        """The registrar's domains, lower-cased."""
        domains = self._local_domains
        values = domains() if callable(domains) else domains
        cached = self._local_domains_cache
        if cached is not None and cached[0] is values:
            return cached[1]  # the same configuration value as last time (every request asks)
        lowered = frozenset(d.lower() for d in values)
        if isinstance(values, (tuple, frozenset)):  # immutable: the same object, the same set
            self._local_domains_cache = (values, lowered)
        return lowered

    # -- time -----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`advance` must next be called (B2BUA timers, binding expiry)."""
        times = [
            t
            for t in (
                self.calls.next_deadline(),
                self.registrar.next_deadline(),
                self.relay.next_deadline(),
            )
            if t is not None
        ]
        return min(times) if times else None

    def advance(self, now: float) -> list[StackOutput]:
        """Run the B2BUA timers due at ``now`` and remove expired bindings."""
        self.registrar.expire(now)
        self.relay.expire(now)
        return self.calls.advance(now)

    def connection_closed(self, connection_id: int, now: float) -> list[StackOutput]:
        """A stream connection closed: the bindings registered over it go (flows)."""
        self.registrar.connection_closed(connection_id, now)
        self.relay.connection_closed(connection_id, now)
        return []

    # -- TransactionUser ------------------------------------------------------

    def screen(self, request: Request, flow: Flow, context: object) -> str | None:
        if request.to.tag is not None:
            # In a dialog the From is the dialog's remote party (for a callee:
            # the original To, whatever peer serves it): only requests that
            # start something are held to the TLS peer's identities. An
            # in-dialog request must still match a dialog (else 481).
            return None
        identities = context.peer_identities if isinstance(context, InboundContext) else None
        if isinstance(context, InboundContext):
            link = self._table().get(context.adjacency)
            if link is not None and link.cluster_link:
                # another node: its certificate names the cluster, not the caller's domain
                if not security.cluster_peer_matches(link, identities):
                    return "tls-identity-mismatch"
                return None
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
        method = request.method
        if method == "ACK":
            return self.calls.ack(request, now)
        if transaction is None:
            return []
        if method == "CANCEL":
            return self.calls.cancel(request, transaction, flow, now)
        if request.to.tag is not None:
            check_extensions(request)
            return self.calls.in_dialog(request, transaction, flow, now)
        # Overload control (sbc.overload): a new INVITE or REGISTER may get 503 here.
        self.overload.admit(
            method, context.adjacency if isinstance(context, InboundContext) else None
        )
        local_register = method == "REGISTER" and self._is_local(request.to.uri)
        if not local_register and self._addressed_to_sbc(request):
            check_extensions(request)
            return self._answer_locally(request, transaction, flow, now)
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0 and not local_register:
            self._refuse(request, context, False, SipError(483, "Too Many Hops"), now)
        inbound = self._inbound_adjacency(context)
        secure = security.requires_secure_target(request.uri.scheme)
        if method == "REGISTER":
            secure = secure or security.requires_secure_target(request.to.uri.scheme)
        if inbound.cluster_link:
            return self._from_cluster(request, transaction, flow, inbound, context, secure, now)
        trusted = security.caller_is_trusted(inbound)
        try:
            security.admit(trusted, secure)
        except SipError as error:
            self._refuse(request, context, secure, error, now)
        certificate = isinstance(context, InboundContext) and context.peer_identities is not None
        anonymous_tls = not certificate and flow.transport == "TLS"
        step = security.authentication_step(inbound, certificate, local_register, anonymous_tls)
        if step is AuthenticationStep.REFUSE:
            self._refuse(request, context, secure, security.unauthenticated(), now)
        elif step is AuthenticationStep.DIGEST:
            self._authenticate(request, inbound, flow, local_register, now)
        check_extensions(request)
        if method == "REGISTER" and not local_register:
            # registration relay: never as a plain request (its Contacts would go)
            return self.relay.register(request, transaction, flow, inbound, trusted, now)
        if local_register:
            # the flow it arrived on: the source address and port (UDP, NAT) or
            # the connection (TCP/TLS) that calls to the contact will use
            response = self.registrar.register(
                request,
                flow,
                inbound.name,
                now,
                trusted=trusted,
                over_tls=security.reached_over_tls(inbound, flow.transport),
            )
            return self.stack.respond(transaction, response, now)
        return self.calls.new_request(request, transaction, flow, inbound, now)

    def response_received(
        self, response: Response, transaction: ClientTransaction, now: float
    ) -> list[StackOutput]:
        if self.relay.owns(transaction):
            return self.relay.response(response, transaction, now)
        return self.calls.response(response, transaction, now)

    def transaction_failed(
        self, transaction: ClientTransaction | ServerTransaction, reason: str, now: float
    ) -> list[StackOutput]:
        if isinstance(transaction, ClientTransaction) and self.relay.owns(transaction):
            return self.relay.failure(transaction, reason, now)
        return self.calls.failure(transaction, reason, now)

    # -- helpers --------------------------------------------------------------

    def _from_cluster(
        self,
        request: Request,
        transaction: ServerTransaction,
        flow: Flow,
        inbound: AdjacencyConfig,
        context: object,
        secure: bool,
        now: float,
    ) -> list[StackOutput]:
        """A request another node sent over the cluster link: for one of this node's phones.

        The caller's class is the one the node it entered carried across
        (``Sbc-Cluster``), never the link's; admission and, at routing, the
        rules of the phone's own adjacency apply again with it. Nothing here
        is routed: the Request-URI names a binding this node holds, else the
        request is refused, marked not reached so the other node hunts on.
        """
        if request.method == "REGISTER":
            raise SipError(403, "Forbidden - no registration over the cluster link")
        caller = ClusterCaller.parse(request.headers.get(CLUSTER_HEADER))
        trusted = security.cluster_caller_trusted(inbound, caller.trusted)
        try:
            security.admit(trusted, secure)
        except SipError as error:
            self._refuse(request, context, secure, not_reached(error), now)
        check_extensions(request)
        # the call's requests to the caller's side go back to that node (its cluster link)
        back = self.cluster.reply_flow(caller, flow) if self.cluster is not None else None
        try:
            return self.calls.new_request(request, transaction, flow, inbound, now, caller, back)
        except SipError as error:
            raise not_reached(error) from None

    def _authenticate(
        self,
        request: Request,
        inbound: AdjacencyConfig,
        flow: Flow,
        registrar: bool,
        now: float,
    ) -> None:
        """The digest check; raises the 401/407/403/400 to answer with."""
        authenticator = self.authenticator
        if authenticator is None:
            raise SipError(500, "Server Internal Error - no user database loaded")
        aor = request.to.uri if request.method == "REGISTER" else request.from_.uri
        realm = aor.host.lower()
        try:
            authenticator.authenticate(
                request,
                realm=realm,
                user=aor.user,
                registrar=registrar,
                now=now,
                algorithms=tuple(a.token for a in inbound.offered_algorithms),
            )
        except AuthenticationError as error:
            if error.is_challenge:
                self.calls.count(inbound.name, "auth-challenges")
            if error.failure is not None:
                self.calls.count(inbound.name, "auth-failures")
                calllog.log_auth_failure(
                    request,
                    inbound,
                    flow.describe(),
                    realm,
                    error.username,
                    error.failure,
                    error.status,
                    self._auth_log_limiter,
                    now,
                )
                if self.on_auth_failure is not None:
                    self.on_auth_failure(flow.remote[0], inbound.name, now)
            raise
        # what the SBC checked is not for whoever comes next
        authenticator.strip_credentials(request, (realm,))

    def _refuse(
        self, request: Request, context: object, secure: bool, error: SipError, now: float
    ) -> NoReturn:
        """Log a refusal (``call.refused``), count it (``calls-refused:RULE``), raise ``error``."""
        if isinstance(context, InboundContext):
            inbound = self._table().get(context.adjacency)
            if inbound is not None:
                calllog.log_refused(
                    self.calls.next_call_id(),
                    request,
                    inbound,
                    secure,
                    error,
                    self.calls.refusals,
                    now,
                )
                self.calls.count(inbound.name, calllog.refused_counter(error))
        raise error

    def _is_local(self, uri: URI) -> bool:
        return uri.scheme in ("sip", "sips") and uri.host.lower() in self.local_domains

    def _locate(self, uri: URI, inbound: str, now: float) -> list[Target] | None:
        """Registered contacts: of an AOR in a local domain, or of a relayed registration's
        token (404 once it ended); ``None`` for other URIs (routing decides).

        A contact whose flow another node holds is reached through that node
        (the cluster link, docs/scaling.md), or skipped when it cannot be. A
        request from the cluster link reaches only a binding this node holds.
        """
        cluster = self.cluster
        if cluster is not None:
            link = self._table().get(inbound)
            if link is not None and link.cluster_link:
                return cluster.own_targets(uri, now)
        relayed = self.relay.locate(uri, inbound, now)
        if relayed is not None:
            return relayed
        if uri.user is None or not self._is_local(uri):
            return None
        targets = []
        for binding in self.registrar.lookup(aor_key(uri), now):
            if binding.node is None:
                targets.append(Target(binding.adjacency, binding.contact, binding.flow))
                continue
            # another process's flow (a shared store, docs/scaling.md): a sibling
            # worker's UDP binding is reachable from here
            flow = self.sibling_flow(binding)
            if flow is not None:
                targets.append(Target(binding.adjacency, binding.contact, flow))
                continue
            # another node's: through the cluster link, if it can be reached
            found = self._through_holder(
                binding.node, binding.worker, binding_key(binding), uri.scheme
            )
            if isinstance(found, Target):
                targets.append(found)
            else:
                holder = holder_name(binding.node, binding.worker)
                self.held_elsewhere(binding.aor, holder, binding.adjacency, inbound, now, found)
        return targets

    def _through_holder(self, node: str, worker: int, key: str, scheme: str) -> Target | str:
        """The target reaching another process's binding through the cluster link, or why not."""
        if self.cluster is None:
            return "no shared store"
        return self.cluster.remote_target(node, worker, key, scheme)

    def _relayed_held_elsewhere(
        self, uri: URI, record: object, inbound: str, now: float
    ) -> list[Target]:
        """A request for a relayed registration's token that another node holds."""
        token = uri.user or ""
        node = str(getattr(record, "node", "?"))
        worker = int(getattr(record, "worker", 0) or 0)
        found = self._through_holder(node, worker, relay_key(token), uri.scheme)
        if isinstance(found, Target):
            return [found]
        self.held_elsewhere(
            str(getattr(record, "aor", token)),
            holder_name(node, worker),
            str(getattr(record, "inbound", inbound)),
            inbound,
            now,
            found,
        )
        return []

    def held_elsewhere(
        self,
        aor: str,
        node: str,
        adjacency: str,
        inbound: str,
        now: float,
        why: str = "no cluster-link",
    ) -> None:
        """A call's contact whose flow another node holds and that cannot go there: skipped.

        Counted as ``held-elsewhere`` on the contact's adjacency, logged as
        ``call.held-elsewhere`` with why (capped like refusals).
        """
        self.calls.count(adjacency, "held-elsewhere")
        suppressed = self.calls.refusals.admit((adjacency, "held-elsewhere"), now)
        if suppressed is not None:
            calllog.log.info(
                "call from {inbound} to {aor}: a contact on {adjacency} is held by node {node}, "
                "skipped ({why})",
                event="call.held-elsewhere",
                aor=aor,
                node=node,
                adjacency=adjacency,
                inbound=inbound,
                why=why,
                suppressed=suppressed,
            )

    def _registrars_for(
        self, request: Request, inbound: AdjacencyConfig, now: float
    ) -> list[AdjacencyConfig]:
        """Where a REGISTER for a foreign domain goes: routed like a call (docs/routing.md)."""
        key = RouteKey.from_uri(inbound.name, request.uri, security.caller_is_trusted(inbound))
        decision = self.calls.router(key, self._table(), self.calls.active_calls)
        table = self._table()
        found = [table.get(d.adjacency) for d in decision.destinations]
        return [a for a in found if a is not None]

    def _inbound_adjacency(self, context: object) -> AdjacencyConfig:
        if isinstance(context, InboundContext):
            adjacency = self._table().get(context.adjacency)
            if adjacency is not None:
                return adjacency
            # A connection of a detached adjacency, still draining.
            raise SipError(503, f"Service Unavailable - adjacency {context.adjacency} detached")
        raise SipError(500, "Server Internal Error - unknown inbound adjacency")

    def _addressed_to_sbc(self, request: Request) -> bool:
        uri = request.uri
        if uri.user is not None or uri.scheme not in ("sip", "sips"):
            return False
        return uri.host.strip("[]") in self._table().addresses

    def _answer_locally(
        self, request: Request, transaction: ServerTransaction, flow: Flow, now: float
    ) -> list[StackOutput]:
        if request.method != "OPTIONS":
            # §21.4.6: a 405 lists what is allowed.
            raise SipError(405, "Method Not Allowed", headers=(("Allow", ALLOW),))
        response = response_to(request, 200)
        response.headers.add("Supported", SUPPORTED)
        response.headers.add("Accept", ACCEPT)
        response.headers.add("Allow", ALLOW)
        return self.stack.respond(transaction, response, now)


def _no_flow(binding: Binding) -> Flow | None:
    """:attr:`SbcCore.sibling_flow` of a process that has no siblings."""
    return None
