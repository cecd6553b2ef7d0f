"""The security rules of encrypted SIP signaling, all in one place.

A reviewer can read the SBC's whole admission and routing security policy in
this file. Each rule is a pure function; the call logic applies them in this
order:

1. :func:`caller_is_trusted` and :func:`requires_secure_target` mark the inbound
   request (UAS side, docs/security-model.md).
2. :func:`admit` rejects an untrusted caller asking for a SIPS target
   (403 + Warning 380) before any routing happens.
3. :func:`may_send_out_of` filters the routing candidates (docs/routing.md);
   it is applied again to whatever a routing policy returns, so a policy can
   reorder or narrow the candidates but never weaken the rules.
   :func:`no_route` is the response when nothing is left.
4. :func:`outbound_scheme` keeps the scheme of the Request-URI on the
   outbound leg (UAC side, §5).
5. :func:`check_redirect` and :func:`check_target_refresh` stop a 3xx or a
   target refresh from moving a call across the secure / insecure line.
6. :func:`check_registration` applies RFC 5630 §5.2 to REGISTER.
7. :func:`from_domain_matches` ties a TLS peer's certificate to the domain
   its requests claim to come from (RFC 5922); a mismatch is dropped silently.
8. :func:`authentication_step` says how a request that starts something is
   authenticated (after admission, before dispatch): not at all (the seed's
   peers, or a certificate that vouches for its From domain), by the SBC's
   digest check, by the far side (delegated), or not possible: 403.
9. The cluster link between SBC nodes (``cluster-link``, docs/scaling.md):
   :func:`may_cross_cluster` says whether a call for a phone another node
   holds may go to that node; :func:`cluster_peer_matches` replaces the From
   check there (the peer is a node, its certificate names the cluster);
   :func:`cluster_caller_trusted` is the caller's class on the holding node,
   carried across and never raised by the hop. The holding node then applies
   rules 2 to 5 to the phone's own adjacency as for any call of its own.

What the SBC does not detect (the seed says so): a trusted proxy that
redirects a secure call to an insecure target and sends it back through the
SBC. The two legs look like two different calls.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from sbc.config import AdjacencyConfig, Authentication, Security
from sbc.errors import SipError
from sbc.identity import PeerIdentities, identity_matches

SIPS_NOT_ALLOWED = (380, "SIPS Not Allowed")
"""RFC 5630 §9 warn-code: the request needed SIPS but SIPS cannot be used."""
SIPS_REQUIRED = (381, "SIPS Required")
"""RFC 5630 §9 warn-code: the request needs SIPS but a SIP target was given."""

_SECURE_CAPABLE = frozenset({Security.TRUSTED_ENCRYPTED, Security.TRUSTED_UNENCRYPTED})
_INSECURE_CAPABLE = frozenset({Security.UNTRUSTED, Security.TRUSTED_UNENCRYPTED})


def caller_is_trusted(inbound: AdjacencyConfig) -> bool:
    """Requests arriving over a trusted adjacency (either kind) are trusted."""
    return inbound.security_inbound is not Security.UNTRUSTED


def requires_secure_target(scheme: str) -> bool:
    """A request for a SIPS URI requires outbound security; a SIP (or tel) URI does not."""
    return scheme.lower() == "sips"


def admit(caller_trusted: bool, secure_target: bool) -> None:
    """UAS side: reject an untrusted caller asking for a secure target.

    Raises ``SipError(403)`` with Warning 380; every other combination is
    passed on to routing.
    """
    if secure_target and not caller_trusted:
        raise SipError(403, "Forbidden", warning=SIPS_NOT_ALLOWED)


def may_send_out_of(
    adjacency: AdjacencyConfig, secure_target: bool, caller_trusted: bool = True
) -> bool:
    """May a call with this target security leave through ``adjacency``?

    Only attached adjacencies are considered, and never the cluster link
    (:func:`may_cross_cluster` decides there). A secure call may use a
    trusted (encrypted or unencrypted) outbound side; an insecure call an
    untrusted or trusted-unencrypted one, or a trusted-encrypted one with
    ``sip-over-tls`` (it rides TLS, but stays an insecure-target call)
    unless the caller is untrusted: an untrusted caller never leaves
    through a trusted-encrypted adjacency (docs/security-model.md).
    """
    if not adjacency.attached or adjacency.cluster_link:
        # the cluster link is never a routing destination: see may_cross_cluster
        return False
    outbound = adjacency.security_outbound
    if secure_target:
        return outbound in _SECURE_CAPABLE
    if outbound in _INSECURE_CAPABLE:
        return True
    return adjacency.sip_over_tls and caller_trusted


def may_cross_cluster(link: AdjacencyConfig, secure_target: bool) -> bool:
    """May a call for a phone whose flow another node holds go there through ``link``?

    Only over the attached cluster link, and only when its outbound side is
    trusted: a secure (SIPS) call needs a side that may carry one (both
    trusted levels may, as for any adjacency); an insecure call may cross
    either, whoever the caller is, because the link only carries the call to
    the node that holds the phone, which then decides with the caller's class
    (:func:`cluster_caller_trusted`) whether the call may reach the phone's
    adjacency (:func:`may_send_out_of`), as it does for its own calls.
    """
    if not (link.attached and link.cluster_link):
        return False
    outbound = link.security_outbound
    if secure_target:
        return outbound in _SECURE_CAPABLE
    return outbound.trusted


def cluster_caller_trusted(link: AdjacencyConfig, caller_trusted: bool) -> bool:
    """The caller's class on the node that holds the phone, for a call from the cluster link.

    What the node the call entered said of its caller (carried in the
    request, docs/scaling.md), and only over a trusted cluster link: an
    untrusted caller never becomes trusted by crossing it.
    """
    return link.cluster_link and link.security_inbound.trusted and caller_trusted


def cluster_peer_matches(link: AdjacencyConfig, identities: PeerIdentities | None) -> bool:
    """On a trusted-encrypted cluster link, does the peer node's certificate name the cluster?

    Every node's certificate must vouch for the link's ``identity`` (the
    From domain of a relayed call is the caller's, not the node's, so the
    usual From check does not apply). A trusted-unencrypted link has no
    certificate to check.
    """
    if not link.security_inbound.encrypted:
        return True
    if identities is None or link.cluster_identity is None:
        return False
    return identity_matches(identities, link.cluster_identity)


def permitted_candidates(
    candidates: Iterable[AdjacencyConfig], secure_target: bool, caller_trusted: bool = True
) -> list[AdjacencyConfig]:
    """The candidates that :func:`may_send_out_of` allows, in their order."""
    return [a for a in candidates if may_send_out_of(a, secure_target, caller_trusted)]


def no_route(secure_target: bool) -> SipError:
    """The error when no candidate is left: 480, with Warning 380 for a secure call."""
    if secure_target:
        return SipError(480, "Temporarily Unavailable", warning=SIPS_NOT_ALLOWED)
    return SipError(480, "Temporarily Unavailable")


def secure_destinations(
    inbound: AdjacencyConfig, scheme: str, candidates: Iterable[AdjacencyConfig]
) -> list[AdjacencyConfig]:
    """Steps 1-3 together: mark, admit, filter.

    Returns the candidates a call may use, in order, or raises the
    ``SipError`` to answer with (403 + 380, or 480 with or without 380).
    """
    secure = requires_secure_target(scheme)
    trusted = caller_is_trusted(inbound)
    admit(trusted, secure)
    allowed = permitted_candidates(candidates, secure, trusted)
    if not allowed:
        raise no_route(secure)
    return allowed


def outbound_scheme(inbound_scheme: str) -> str:
    """The outbound Request-URI keeps the inbound scheme: sips stays sips, sip stays sip."""
    return inbound_scheme.lower()


def reached_over_tls(adjacency: AdjacencyConfig | None, transport: str) -> bool:
    """Is a ``sip:`` URI learnt over ``transport`` on ``adjacency`` reached over TLS?

    True only for a TLS connection of an adjacency with ``sip-over-tls``:
    there a phone's ``sip:...;transport=tls`` Contact is reached over the
    same TLS connection, so it is not a scheme downgrade for the rules
    below (docs/security-model.md). Everywhere else a ``sip:`` URI is insecure.
    """
    return adjacency is not None and adjacency.sip_over_tls and transport.upper() == "TLS"


def _secure_enough(scheme: str, over_tls: bool) -> bool:
    """A SIPS URI, or a SIP URI reached over a ``sip-over-tls`` TLS connection."""
    return scheme == "sips" or (over_tls and scheme == "sip")


def registered_contact_usable(call_scheme: str, contact_scheme: str, over_tls: bool) -> bool:
    """May a call to an AOR use a contact registered with ``contact_scheme``?

    The scheme is kept (a ``sip:`` call reaches ``sip:`` contacts, a
    ``sips:`` call ``sips:`` ones), except that a ``sips:`` call may reach a
    ``sip:`` contact that registered over a ``sip-over-tls`` TLS connection.
    """
    call, contact = call_scheme.lower(), contact_scheme.lower()
    if call == contact:
        return True
    return call == "sips" and _secure_enough(contact, over_tls)


def check_redirect(
    contact_schemes: Sequence[str], secure_target: bool, over_tls: bool = False
) -> SipError | None:
    """A 3xx's Contacts must not move the call across the secure line.

    Returns the error that brings the call down (the redirect is then not
    followed at all), or ``None`` when every Contact may be tried. The same
    rule applies to the Contact of a 2xx or reliable 1xx (the new remote
    target). ``over_tls``: the response came over a ``sip-over-tls`` TLS
    connection (see :func:`reached_over_tls`), where a ``sip:`` Contact
    still counts as secure.
    """
    schemes = [s.lower() for s in contact_schemes]
    if secure_target and not all(_secure_enough(s, over_tls) for s in schemes):
        return SipError(480, "Temporarily Unavailable", warning=SIPS_NOT_ALLOWED)
    # An untrusted caller's call is never secure (admit() refused it), so the
    # rule "no SIPS Contact for an untrusted caller" is covered here too.
    if not secure_target and "sips" in schemes:
        return SipError(480, "Temporarily Unavailable", warning=SIPS_REQUIRED)
    return None


def check_target_refresh(
    old_scheme: str, new_scheme: str, over_tls: bool = False
) -> SipError | None:
    """A target refresh may not change the remote target's scheme (400, then BYE both legs).

    ``over_tls``: the refresh came over a ``sip-over-tls`` TLS connection,
    where ``sip:`` and ``sips:`` targets are both reached over that TLS
    connection, so a change between them crosses no secure line.
    """
    old, new = old_scheme.lower(), new_scheme.lower()
    if old == new or (_secure_enough(old, over_tls) and _secure_enough(new, over_tls)):
        return None
    return SipError(400, "Bad Request - target refresh changes the URI scheme")


def check_registration(
    aor_scheme: str, contact_schemes: Sequence[str], over_tls: bool = False
) -> SipError | None:
    """RFC 5630 §5.2: a SIPS address-of-record registers only SIPS Contacts.

    ``contact_schemes`` excludes the ``*`` wildcard. Returns the 400 to send
    (and no binding changes) or ``None``. ``over_tls``: the REGISTER came
    over a ``sip-over-tls`` TLS connection, where a ``sip:`` Contact is
    reached over that connection and is accepted.
    """
    if aor_scheme.lower() == "sips" and not all(
        _secure_enough(s.lower(), over_tls) for s in contact_schemes
    ):
        return SipError(400, "Bad Request - SIPS AOR needs SIPS Contacts")
    return None


def from_domain_matches(identities: PeerIdentities | None, from_host: str) -> bool:
    """Does a TLS peer's certificate vouch for the domain in the request's From?

    ``identities`` is ``None`` on plain transports, where there is nothing to
    check. On TLS a mismatch means the request is dropped without a response.
    """
    if identities is None:
        return True
    return identity_matches(identities, from_host)


class AuthenticationStep(enum.Enum):
    """How a request that starts something is authenticated (docs/security-model.md)."""

    NONE = "none"
    """Nothing to check: the seed's adjacencies, or a certificate matching the From domain."""
    DIGEST = "digest"
    """The SBC challenges it (``authentication digest``)."""
    DELEGATED = "delegated"
    """The registrar or PBX it is relayed to challenges it (``authentication delegated``)."""
    REFUSE = "refuse"
    """Nobody can authenticate it: 403 (:func:`unauthenticated`)."""


def authentication_step(
    inbound: AdjacencyConfig,
    certificate_verified: bool,
    local_register: bool = False,
    anonymous_tls: bool = False,
) -> AuthenticationStep:
    """How to authenticate a request from ``inbound`` that starts something.

    ``certificate_verified``: the request came over TLS from a peer whose
    verified certificate vouches for its From domain (:func:`from_domain_matches`
    already held). Such a peer is never challenged. Otherwise the adjacency's
    ``authentication`` decides. On an adjacency whose TLS clients may come
    without a certificate (``client-certificate optional``/``none``) a request
    with no means of authentication is refused, so nothing unauthenticated is
    ever marked trusted; that includes a REGISTER for a ``local-domain`` on a
    delegated adjacency (the SBC is the registrar: there is no far side to
    authenticate it). ``anonymous_tls``: the request came over a TLS
    connection whose client showed no certificate; it is held to the same
    rule whatever ``client-certificate`` says now (a connection accepted
    under ``optional`` outlives a commit back to ``required``).
    """
    if certificate_verified or inbound.cluster_link:
        # a call from the cluster link was authenticated by the node it entered
        return AuthenticationStep.NONE
    if inbound.authentication is Authentication.DIGEST:
        return AuthenticationStep.DIGEST
    if inbound.authentication is Authentication.DELEGATED and not local_register:
        return AuthenticationStep.DELEGATED
    if inbound.certificate_optional or anonymous_tls:
        return AuthenticationStep.REFUSE
    if inbound.authentication is Authentication.DELEGATED:
        return AuthenticationStep.DELEGATED
    return AuthenticationStep.NONE


def unauthenticated() -> SipError:
    """403 for a request that nothing can authenticate (no certificate, no authentication)."""
    return SipError(403, "Forbidden - authentication required")
