"""Peer identity of a TLS certificate and its RFC 5922 §7 match (pure).

The transport (:mod:`sbc.transport.tls`) extracts a :class:`PeerIdentities`
from a verified peer certificate; everything above it decides with
:func:`identity_matches` whether that peer speaks for a domain. No OpenSSL
or Twisted import here: the rule is readable on its own.

RFC 5922 §7.1 (docs/security-model.md), in order:

1. ``subjectAltName`` URIs of scheme ``sip`` with no user part give SIP domains;
2. ``dNSName`` entries count only when no such URI is present;
3. the Subject CN counts only when the certificate has no subjectAltName at all.

Comparison (RFC 5922 §7.2) is case-insensitive and exact: no wildcard and no
suffix matching, so ``*.example.com`` matches only the literal string
``*.example.com``. An IP literal (``192.0.2.1``, ``2001:db8::1`` or
``[2001:db8::1]``) is compared with the ``iPAddress`` entries only.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

import attrs

__all__ = ["PeerIdentities", "identity_matches", "ip_literal"]


def _names(values: Iterable[str]) -> tuple[str, ...]:
    """Freeze a sequence of names; a bare ``str`` is refused (it would split into letters)."""
    if isinstance(values, str):
        raise TypeError(f"expected a sequence of names, got the string {values!r}")
    return tuple(values)


@attrs.frozen
class PeerIdentities:
    """The names a peer certificate asserts, sorted by kind.

    ``sip_domains``: hosts of the ``sip:`` URIs (without user part) in the
    subjectAltName. ``dns_names``: the ``dNSName`` entries, as written
    (a wildcard stays a literal string). ``common_name``: the Subject CN, given
    by the extractor only when the certificate has no subjectAltName at all.
    ``ip_addresses``: the ``iPAddress`` entries in :mod:`ipaddress` normal form.
    """

    sip_domains: tuple[str, ...] = attrs.field(default=(), converter=_names)
    dns_names: tuple[str, ...] = attrs.field(default=(), converter=_names)
    common_name: str | None = None
    ip_addresses: tuple[str, ...] = attrs.field(default=(), converter=_names)

    @property
    def domains(self) -> tuple[str, ...]:
        """The domain names that count under RFC 5922 §7.1, in that order of precedence."""
        if self.sip_domains:
            return self.sip_domains
        if self.dns_names:
            return self.dns_names
        # Any iPAddress entry means a subjectAltName exists: the CN is then ignored.
        if self.common_name is not None and not self.ip_addresses:
            return (self.common_name,)
        return ()

    def matches(self, domain: str) -> bool:
        """Shorthand for :func:`identity_matches` ``(self, domain)``."""
        return identity_matches(self, domain)

    def describe(self) -> str:
        """A short human-readable list for logs and ``show`` output."""
        parts = [f"sip:{d}" for d in self.sip_domains]
        parts += [f"DNS:{d}" for d in self.dns_names]
        parts += [f"IP:{a}" for a in self.ip_addresses]
        if self.common_name is not None:
            parts.append(f"CN={self.common_name}")
        return ", ".join(parts) or "(no identity)"


@functools.lru_cache(maxsize=1024)
def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if ``host`` is an IPv4 or IPv6 literal (brackets allowed), else None.

    Cached: the same few peer addresses come up on every message.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _canonical_domain(name: str) -> str | None:
    """Lower-case ASCII form of a domain name (U-labels become A-labels); None if unusable."""
    text = name.strip()
    if text.endswith(".") and len(text) > 1:
        text = text[:-1]
    if not text or "\0" in text:
        return None
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return text.lower()


def identity_matches(identities: PeerIdentities, domain: str) -> bool:
    """True when the certificate identities speak for ``domain`` (RFC 5922 §7.2).

    ``domain`` is a host name or an IP literal. Names compare exactly,
    ignoring case and one trailing dot; there is no wildcard or suffix
    matching. IP literals compare with the certificate's ``iPAddress`` entries
    only.
    """
    address = ip_literal(domain)
    if address is not None:
        return any(ip_literal(entry) == address for entry in identities.ip_addresses)
    wanted = _canonical_domain(domain)
    if wanted is None:
        return False
    return any(_canonical_domain(name) == wanted for name in identities.domains)
