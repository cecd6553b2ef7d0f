"""The registrar for the ``local-domain`` domains (RFC 3261 §10.3, behaviour.md §7).

:class:`Registrar` turns one REGISTER into binding changes and the 200 that
lists the AOR's current bindings. Admission (an untrusted adjacency may not
register a SIPS AOR: 403 + Warning 380) is applied by the caller before
:meth:`Registrar.register`, like for every other secure request; the SIPS
AOR rule of RFC 5630 §5.2 is :func:`sbc.security.check_registration`.
Failures are raised as :class:`~sbc.errors.SipError`; the stack answers them.
"""

from __future__ import annotations

import attrs

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
        self, request: Request, flow: Flow, adjacency: str, now: float, *, trusted: bool = False
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
        error = security.check_registration(aor_uri.scheme, schemes)
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
            return self._ok(request, [], now)
        updated = list(current)
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
                updated.append(
                    Binding(
                        aor, uri, now + expires, adjacency, flow, call_id, cseq, contact.q, trusted
                    )
                )
        self.location.update(aor, kept + updated, now)
        return self._ok(request, updated, now)

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
