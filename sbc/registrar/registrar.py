"""The registrar for the ``local-domain`` domains (RFC 3261 §10.3, docs/phones.md).

:class:`Registrar` turns one REGISTER into binding changes and the 200 that
lists the AOR's current bindings. Admission (an untrusted adjacency may not
register a SIPS AOR: 403 + Warning 380) is applied by the caller before
:meth:`Registrar.register`, like for every other secure request; the SIPS
AOR rule of RFC 5630 §5.2 is :func:`sbc.security.check_registration`.
Failures are raised as :class:`~sbc.errors.SipError`; the stack answers them.

Flows (RFC 5626 §5.3): a binding keeps the flow its REGISTER arrived on, the
source address and port for UDP (a phone behind NAT is reached there, not at
its Contact's host) and the connection for TCP/TLS (pinned: a call reaches it
over that connection only). When the connection closes its bindings go
(:meth:`Registrar.connection_closed`); expired bindings are removed by
:meth:`Registrar.expire`. Every binding added, refreshed, removed or expired
is a log event (docs/logging.md, ``registration.*``).
"""

from __future__ import annotations

import attrs
from twisted.logger import Logger

from sbc import security
from sbc.errors import SipError
from sbc.interfaces import ILocationService
from sbc.registrar.bindings import Binding, LocationService, aor_key
from sbc.sip.message import Request, Response, response_to
from sbc.sip.stack import Flow

__all__ = ["Registrar", "RegistrarSettings"]


@attrs.frozen
class RegistrarSettings:
    """Expiry policy: the default when the REGISTER names none, and the ceiling."""

    default_expires: int = 3600
    max_expires: int = 7200


_log = Logger(namespace="sbc.registrar")

_EVENT_TEXT = {
    "registration.added": "registered {contact} for {aor} from {adjacency} ({source}), {expires} s",
    "registration.refreshed": "refreshed {contact} for {aor} from {adjacency} ({source}), "
    "{expires} s",
    "registration.removed": "removed {contact} for {aor} on {adjacency} ({source}): {reason}",
    "registration.expired": "expired {contact} for {aor} on {adjacency} ({source})",
}


def log_binding(event: str, binding: Binding, now: float, reason: str | None = None) -> None:
    """One ``registration.*`` event (refreshes at debug level, the others at info)."""
    (_log.debug if event == "registration.refreshed" else _log.info)(
        _EVENT_TEXT[event],
        event=event,
        aor=binding.aor,
        contact=binding.contact.serialize(),
        adjacency=binding.adjacency,
        source=binding.flow.describe(),
        expires=binding.remaining(now),
        reason=reason,
    )


def _flow_of(flow: Flow) -> Flow:
    """The flow a binding keeps: a stream connection is pinned (never re-opened)."""
    if flow.connection_id is not None and not flow.pinned:
        return attrs.evolve(flow, pinned=True)
    return flow


class Registrar:
    """Apply REGISTER requests to a location service; ``now`` is always passed in."""

    def __init__(
        self,
        location: ILocationService | None = None,
        settings: RegistrarSettings | None = None,
    ) -> None:
        self.location: ILocationService = location if location is not None else LocationService()
        self.settings = settings or RegistrarSettings()

    def register(
        self,
        request: Request,
        flow: Flow,
        adjacency: str,
        now: float,
        *,
        trusted: bool = False,
        over_tls: bool = False,
    ) -> Response:
        """Process ``request`` (a REGISTER for a local domain); return the 200.

        Raises ``SipError(400)`` for a malformed wildcard or a SIPS AOR with a
        non-SIPS Contact (no binding then changes), ``SipError(500)`` for an
        out-of-order refresh (same Call-ID, CSeq not higher, §10.3 step 6).

        ``trusted``: the REGISTER came from a trusted adjacency. The
        ``sip:`` and ``sips:`` forms of an AOR share one set of bindings, so
        a REGISTER from an untrusted adjacency only sees (in its 200),
        refreshes and removes (``*`` included) the bindings registered from
        untrusted adjacencies: it can neither learn nor remove a contact
        registered over a trusted (e.g. TLS) adjacency.

        ``over_tls``: the REGISTER came over a ``sip-over-tls`` TLS
        connection, where a ``sips:`` AOR may register a ``sip:`` Contact
        (:func:`sbc.security.check_registration`).
        """
        aor_uri = request.to.uri
        if aor_uri.scheme not in ("sip", "sips"):
            raise SipError(400, "Bad Request - AOR must be a SIP or SIPS URI")
        aor = aor_key(aor_uri)
        contacts = request.contacts
        star = any(c.is_star for c in contacts)
        header_expires = request.expires
        if star and header_expires != 0:
            raise SipError(400, "Bad Request - Contact * needs Expires: 0")
        schemes = [c.uri.scheme for c in contacts if not c.is_star]
        error = security.check_registration(aor_uri.scheme, schemes, over_tls)
        if error is not None:
            raise error
        every = self.location.lookup(aor, now)
        # what this REGISTER may see and change; the rest is kept as it is
        current = every if trusted else [b for b in every if not b.trusted]
        kept = [] if trusted else [b for b in every if b.trusted]
        call_id = request.call_id
        cseq = request.cseq.seq
        if star:
            self._check_order(current, call_id, cseq)
            self.location.update(aor, kept, now)
            for binding in current:
                log_binding("registration.removed", binding, now, "unregistered (Contact *)")
            return self._ok(request, [], now)
        flow = _flow_of(flow)
        updated = list(current)
        events: list[tuple[str, Binding, str | None]] = []
        for contact in contacts:
            uri = contact.uri
            expires = contact.expires
            if expires is None:
                expires = header_expires
            if expires is None:
                expires = self.settings.default_expires
            expires = min(expires, self.settings.max_expires)
            existing = [b for b in updated if b.contact.rfc_equal(uri)]
            self._check_order(existing, call_id, cseq)
            updated = [b for b in updated if b not in existing]
            if expires > 0:
                binding = Binding(
                    aor, uri, now + expires, adjacency, flow, call_id, cseq, contact.q, trusted
                )
                updated.append(binding)
                event = "registration.refreshed" if existing else "registration.added"
                events.append((event, binding, None))
            else:
                events.extend(
                    ("registration.removed", old, "unregistered (expires 0)") for old in existing
                )
        self.location.update(aor, kept + updated, now)
        for event, binding, reason in events:
            log_binding(event, binding, now, reason)
        return self._ok(request, updated, now)

    def connection_closed(self, connection_id: int, now: float) -> list[Binding]:
        """Remove (and log) the bindings registered over a stream connection that closed."""
        gone = self.location.remove_connection(connection_id, now)
        for binding in gone:
            log_binding("registration.removed", binding, now, "connection closed")
        return gone

    def expire(self, now: float) -> list[Binding]:
        """Remove (and log) the bindings whose expiry has come."""
        gone = self.location.expire(now)
        for binding in gone:
            log_binding("registration.expired", binding, now)
        return gone

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has work."""
        return self.location.next_expiry()

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """The live bindings of ``aor`` (see :func:`aor_key`)."""
        return self.location.lookup(aor, now)

    @staticmethod
    def _check_order(bindings: list[Binding], call_id: str, cseq: int) -> None:
        for binding in bindings:
            if binding.call_id == call_id and cseq <= binding.cseq:
                raise SipError(500, "Server Internal Error - REGISTER out of order")

    @staticmethod
    def _ok(request: Request, bindings: list[Binding], now: float) -> Response:
        response = response_to(request, 200)
        for binding in bindings:
            response.headers.add(
                "Contact", f"<{binding.contact.serialize()}>;expires={binding.remaining(now)}"
            )
        return response
