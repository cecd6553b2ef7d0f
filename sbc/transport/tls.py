"""TLS for trusted-encrypted adjacencies: the only module that touches OpenSSL.

- :func:`load_tls_identity` reads the SBC's certificate chain, key and trust
  anchors, checks them and builds the OpenSSL contexts, all or nothing
  (``crypto reload`` swaps in the result only when it succeeded).
- :func:`server_context_factory` gives the connection creator for listeners:
  TLS 1.2 minimum, the SBC's certificate, a client certificate requested and
  required (or, per adjacency, optional or not requested), verified against
  the trust anchors.
- :func:`client_connection_creator` is the one way outbound TLS is made: TLS 1.2
  minimum, the SBC's certificate as client certificate, SNI, the chain verified
  against the trust anchors and the leaf checked against the expected name with
  the RFC 5922 rules of :mod:`sbc.identity`. There is no way to turn the checks
  off.
- :func:`extract_identities` turns a certificate into
  :class:`~sbc.identity.PeerIdentities` (service_identity's extraction, plus
  the CN fallback for certificates without subjectAltName).
- :func:`peer_identities` / :func:`verification_failure` tell the transport
  what a connection's handshake verified, or why it was refused.

A refused peer certificate ends the connection with a
:class:`PeerVerificationError` as the ``connectionLost`` reason, on both
sides; a client that sends no certificate at all ends with OpenSSL's own
``SSL.Error`` (OpenSSL refuses it before any callback runs).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, Union

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity.cryptography import extract_patterns
from service_identity.exceptions import CertificateError
from service_identity.hazmat import DNSPattern, IPAddressPattern, URIPattern
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from sbc.config import ClientCertificate
from sbc.errors import ConfigError, SbcError
from sbc.identity import PeerIdentities, identity_matches, ip_literal

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = [
    "IdentityExtractionError",
    "PeerVerificationError",
    "TlsConfigError",
    "TlsFilePaths",
    "TlsIdentity",
    "anonymous_peer",
    "client_connection_creator",
    "extract_identities",
    "load_tls_identity",
    "peer_identities",
    "server_context_factory",
    "verification_failure",
]

#: Private key types that OpenSSL can use for a TLS certificate.
_SIGNING_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)
_SigningKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
]

# OpenSSL X509_V_ERR_* codes, for the one-line reason of a refused chain.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate (not signed by a trust anchor)",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


class TlsFilePaths(Protocol):
    """The PEM paths of a TLS identity (:class:`sbc.service.TlsFiles` fits)."""

    @property
    def certificate(self) -> str: ...

    @property
    def private_key(self) -> str: ...

    @property
    def ca_certificates(self) -> str | None: ...


class TlsConfigError(ConfigError):
    """A TLS file that cannot be used: ``path`` names it, ``message`` says why in one line."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, 0, message)


class IdentityExtractionError(SbcError):
    """A certificate whose subjectAltName service_identity cannot parse."""


class PeerVerificationError(SbcError):
    """A peer certificate refused during the handshake.

    ``reason`` is one line (untrusted chain, expired, name mismatch...);
    ``expected_name`` is the name an outbound connection had to match (None
    for inbound connections). It is the ``connectionLost`` reason of the
    refused connection, so a transport can count verification failures.
    """

    def __init__(self, reason: str, expected_name: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expected_name = expected_name

    def __str__(self) -> str:
        return self.reason


@attrs.frozen(eq=False)
class TlsIdentity:
    """The SBC's loaded TLS identity and the OpenSSL contexts built from it.

    Build it with :func:`load_tls_identity`; hand it to
    :func:`server_context_factory` and :func:`client_connection_creator`.
    Connections keep the context they were made with, so replacing the
    identity (``crypto reload``) affects new handshakes only.
    """

    files: TlsFilePaths
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key: _SigningKey = attrs.field(repr=False)
    trust_anchors: tuple[x509.Certificate, ...]
    server_context: SSL.Context = attrs.field(repr=False)
    client_context: SSL.Context = attrs.field(repr=False)

    @property
    def identities(self) -> PeerIdentities:
        """The names of the SBC's own certificate."""
        return extract_identities(self.certificate)


# --- loading -------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsConfigError(path, f"cannot read {what}: {e.strerror or e}") from None


def _load_certificates(path: str, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TlsConfigError(path, f"no PEM certificate in {what}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(path, f"bad PEM certificate in {what}") from None


def _load_private_key(path: str) -> _SigningKey:
    data = _read(path, "private key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsConfigError(path, "private key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsConfigError(path, "not a PEM private key") from None
    if not isinstance(key, _SIGNING_KEY_TYPES):
        raise TlsConfigError(path, f"unsupported private key type {type(key).__name__}")
    return key


def _public_key_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_tls_identity(files: TlsFilePaths) -> TlsIdentity:
    """Read and check the SBC's certificate chain, key and trust anchors.

    Raise :class:`TlsConfigError` (a ``ConfigError``) naming the file and the
    problem in one line: missing or unreadable file, bad PEM, a key that does
    not match the certificate, no CA file configured. Nothing is changed
    anywhere: the caller swaps in the result only on success.
    """
    if files.ca_certificates is None:
        raise TlsConfigError(
            "--ca-certificates", "no trust anchors given: peers cannot be verified"
        )
    chain = _load_certificates(files.certificate, "certificate file")
    key = _load_private_key(files.private_key)
    anchors = _load_certificates(files.ca_certificates, "CA certificates file")
    certificate = chain[0]
    if _public_key_der(certificate.public_key()) != _public_key_der(key.public_key()):
        raise TlsConfigError(
            files.private_key, f"private key does not match the certificate {files.certificate}"
        )
    try:
        server_context = _make_context(certificate, chain[1:], key, anchors, server=True)
        client_context = _make_context(certificate, chain[1:], key, anchors, server=False)
    except SSL.Error as e:
        raise TlsConfigError(files.certificate, f"OpenSSL refused the TLS identity: {e}") from None
    return TlsIdentity(
        files=files,
        certificate=certificate,
        chain=tuple(chain[1:]),
        private_key=key,
        trust_anchors=tuple(anchors),
        server_context=server_context,
        client_context=client_context,
    )


AEAD_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
"""The TLS 1.2 cipher suites of every context (docs/security-model.md): forward secret
(ECDHE) and authenticated encryption (AES-GCM, ChaCha20-Poly1305) only, no CBC. TLS 1.3
keeps OpenSSL's suites, which are all AEAD."""


def _make_context(
    certificate: x509.Certificate,
    intermediates: list[x509.Certificate],
    key: _SigningKey,
    anchors: list[x509.Certificate],
    *,
    server: bool,
) -> SSL.Context:
    """A context with TLS >= 1.2, AEAD suites, our certificate and key, and the trust anchors."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_cipher_list(AEAD_CIPHERS.encode("ascii"))
    context.set_options(SSL.OP_NO_COMPRESSION)
    # An idle connection gives its read and write buffers back (about 34 KiB
    # each way otherwise): SIP connections are long-lived and mostly idle.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.use_certificate(certificate)
    for extra in intermediates:
        context.add_extra_chain_cert(extra)
    context.use_privatekey(key)
    context.check_privatekey()
    store = context.get_cert_store()
    assert store is not None
    for anchor in anchors:
        store.add_cert(X509.from_cryptography(anchor))
    # Verification is on in the context itself; each connection replaces the
    # callback with its own (see _HandshakeState) but never the mode.
    mode = SSL.VERIFY_PEER
    if server:
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE
        context.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_TICKET)
        # No resumption: every connection proves its certificate again, so the
        # verified identities always come from this handshake and the current
        # trust anchors.
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        context.set_session_id(b"sbc")
        for anchor in anchors:
            context.add_client_ca(anchor)
    context.set_verify(mode)
    context.set_info_callback(_connection_info)
    return context


# --- identities ----------------------------------------------------------------


def extract_identities(cert: X509 | x509.Certificate) -> PeerIdentities:
    """The RFC 5922 identities of ``cert`` (pyOpenSSL or cryptography certificate).

    SIP URIs, dNSName and iPAddress entries come from service_identity's
    ``extract_patterns``; URIs of another scheme or with a user part are
    ignored. The Subject CN is kept only when there is no subjectAltName.
    Raise :class:`IdentityExtractionError` when service_identity refuses the
    certificate's names (e.g. a URI with a port or an IP host).
    """
    if isinstance(cert, X509):
        cert = cert.to_cryptography()
    try:
        patterns = extract_patterns(cert)
        has_subject_alt_name = _has_subject_alt_name(cert)
    except (CertificateError, ValueError) as e:
        raise IdentityExtractionError(f"certificate names cannot be parsed: {e}") from None
    sip_domains: list[str] = []
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    for pattern in patterns:
        if isinstance(pattern, URIPattern):
            host = pattern.dns_pattern.pattern
            # RFC 5922 §7.1: only scheme "sip", and never a URI with a user part.
            if pattern.protocol_pattern != b"sip" or b"@" in host:
                continue
            host = host.split(b";", 1)[0].split(b"?", 1)[0]
            if host:
                sip_domains.append(host.decode("utf-8", "replace"))
        elif isinstance(pattern, DNSPattern):
            dns_names.append(pattern.pattern.decode("utf-8", "replace"))
        elif isinstance(pattern, IPAddressPattern):
            ip_addresses.append(str(pattern.pattern))
    common_name = None if has_subject_alt_name else _common_name(cert)
    return PeerIdentities(
        sip_domains=tuple(sip_domains),
        dns_names=tuple(dns_names),
        common_name=common_name,
        ip_addresses=tuple(ip_addresses),
    )


def _has_subject_alt_name(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return False
    return True


def _common_name(cert: x509.Certificate) -> str | None:
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[-1].value  # the most specific CN
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# --- per-connection verification ----------------------------------------------


@attrs.define(eq=False)
class _HandshakeState:
    """What one connection's handshake verified, or why it refused the peer."""

    expected_name: str | None
    protocol: Callable[[], TLSMemoryBIOProtocol | None]
    identities: PeerIdentities | None = None
    failure: str | None = None
    handshake_done: bool = False
    #: A client may complete the handshake without a certificate (client-certificate
    #: optional or none); one that offers a certificate must still verify.
    anonymous_allowed: bool = False

    def refuse(self, reason: str) -> bool:
        """Record the first refusal and end the connection with a typed reason."""
        if self.failure is None:
            self.failure = reason
            protocol = self.protocol()
            if protocol is not None:
                protocol.failVerification(
                    Failure(PeerVerificationError(reason, self.expected_name))
                )
        return False

    def verify(
        self, connection: SSL.Connection, cert: X509, errno: int, depth: int, ok: int
    ) -> bool:
        """OpenSSL verify callback: chain result first, then the leaf's identity."""
        try:
            if self.failure is not None:
                return False
            if not ok:
                problem = _VERIFY_ERRORS.get(errno, f"X.509 verification error {errno}")
                return self.refuse(f"peer certificate refused at depth {depth}: {problem}")
            if depth != 0:
                return True
            identities = extract_identities(cert)
            if self.expected_name is not None and not identity_matches(
                identities, self.expected_name
            ):
                return self.refuse(
                    f"peer certificate ({identities.describe()}) does not match "
                    f"{self.expected_name!r}"
                )
            self.identities = identities
            return True
        except Exception as e:  # never let an exception escape into OpenSSL
            return self.refuse(f"peer certificate refused: {e}")

    def info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        """OpenSSL info callback: note the end of the handshake."""
        if not where & SSL.SSL_CB_HANDSHAKE_DONE or self.handshake_done:
            return
        self.handshake_done = True
        if self.identities is None and self.failure is None and not self.anonymous_allowed:
            # Unreachable with resumption off; fail closed all the same.
            try:
                self.refuse("handshake finished without a verified peer certificate")
            except Exception:  # an exception must not escape into OpenSSL
                self.failure = self.failure or "handshake finished without a verified peer"


class _SbcConnection(SSL.Connection):
    """An OpenSSL connection that carries its :class:`_HandshakeState`."""

    sbc_state: _HandshakeState


def _new_connection(
    context: SSL.Context,
    protocol: TLSMemoryBIOProtocol,
    expected_name: str | None,
    mode: int,
    anonymous_allowed: bool = False,
) -> _SbcConnection:
    connection = _SbcConnection(context, None)
    state = _HandshakeState(
        expected_name, weakref.ref(protocol), anonymous_allowed=anonymous_allowed
    )
    connection.sbc_state = state
    connection.set_verify(mode, state.verify)
    return connection


def _connection_info(connection: SSL.Connection, where: int, ret: int) -> None:
    """The contexts' OpenSSL info callback: passes the event to the connection's state.

    Set on the context (pyOpenSSL before 25.2, all PyPy 3.9 has, cannot set
    one per connection); each connection made here carries its own state.
    """
    state = getattr(connection, "sbc_state", None)
    if state is not None:
        state.info(connection, where, ret)


#: OpenSSL verify mode of a server connection, by client-certificate setting.
_SERVER_VERIFY_MODES = {
    ClientCertificate.REQUIRED: (
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE
    ),
    # asked for; a certificate that is offered must verify, none at all is fine
    ClientCertificate.OPTIONAL: SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE,
    # not asked for (no CertificateRequest is sent)
    ClientCertificate.NONE: SSL.VERIFY_NONE,
}


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    """Connections for a listener, with the adjacency's client-certificate setting."""

    def __init__(
        self,
        identity: TlsIdentity,
        client_certificate: ClientCertificate,
        expected_name: str | None = None,
    ) -> None:
        self.identity = identity
        self.client_certificate = client_certificate
        self.expected_name = expected_name

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        mode = _SERVER_VERIFY_MODES[self.client_certificate]
        anonymous = self.client_certificate is not ClientCertificate.REQUIRED
        return _new_connection(
            self.identity.server_context, tlsProtocol, self.expected_name, mode, anonymous
        )


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """Outbound connections to ``expected_name``, verified by construction."""

    def __init__(self, identity: TlsIdentity, expected_name: str) -> None:
        self.identity = identity
        self.expected_name = expected_name
        self.server_name = _server_name_indication(expected_name)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = _new_connection(
            self.identity.client_context, tlsProtocol, self.expected_name, SSL.VERIFY_PEER
        )
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name)
        return connection


def _server_name_indication(expected_name: str) -> bytes | None:
    """The SNI bytes for a host name (RFC 6066 §3), None for an IP literal."""
    if ip_literal(expected_name) is not None:
        return None
    name = expected_name.strip().rstrip(".")
    try:
        return name.encode("ascii") if name.isascii() else name.encode("idna")
    except UnicodeError:
        raise ValueError(f"not a usable host name for TLS: {expected_name!r}") from None


def server_context_factory(
    identity: TlsIdentity,
    client_certificate: ClientCertificate = ClientCertificate.REQUIRED,
    expected_name: str | None = None,
) -> IOpenSSLServerConnectionCreator:
    """The connection creator for TLS listeners (``TLSMemoryBIOFactory(..., isClient=False)``).

    TLS 1.2 minimum; presents the SBC's certificate and chain. With
    ``client_certificate`` required (the default) a client certificate that
    chains to a trust anchor is requested and required, else the handshake
    fails; with optional it is requested, and one that is offered must
    verify, but a client may offer none; with none it is not requested. The
    peer's identities are then available through :func:`peer_identities`
    (None for a client without a certificate: :func:`anonymous_peer`).
    With ``expected_name`` (the identity of a cluster link, docs/scaling.md)
    the client's certificate must also match it, like a server's: a node
    whose certificate does not name the cluster fails the handshake.
    """
    return _ServerCreator(identity, client_certificate, expected_name)


def client_connection_creator(
    identity: TlsIdentity, expected_name: str
) -> IOpenSSLClientConnectionCreator:
    """The connection creator for an outbound TLS connection to ``expected_name``.

    ``expected_name`` is the domain the peer's certificate must match (RFC 5922
    §7.3: ``signaling-peer`` when it is an FQDN, else the host of the URI that
    was resolved), or an IP literal. TLS 1.2 minimum; presents the SBC's
    certificate; sends SNI for a host name; verifies the chain against the
    trust anchors and then the leaf with :func:`sbc.identity.identity_matches`.
    On failure the handshake is aborted and the connection is lost with a
    :class:`PeerVerificationError`. There is deliberately no way to skip a check.
    """
    if not expected_name.strip():
        raise ValueError("an outbound TLS connection needs the name to verify")
    return _ClientCreator(identity, expected_name)


# --- asking a connection what it verified -------------------------------------


def _state_of(tls_transport: object) -> _HandshakeState | None:
    handle = tls_transport
    if not isinstance(handle, SSL.Connection):
        get_handle = getattr(tls_transport, "getHandle", None)
        handle = get_handle() if callable(get_handle) else None
    if isinstance(handle, _SbcConnection):
        return handle.sbc_state
    return None


def peer_identities(tls_transport: object) -> PeerIdentities | None:
    """The verified identities of the peer of an established connection.

    ``tls_transport`` is the transport a protocol got from our creators
    (a ``TLSMemoryBIOProtocol`` or a reactor TLS transport; its ``getHandle()``
    is the OpenSSL connection). None before the handshake is done, after a
    refusal, or for a connection these creators did not make. Call it from
    ``IHandshakeListener.handshakeCompleted``.
    """
    state = _state_of(tls_transport)
    if state is None or not state.handshake_done or state.failure is not None:
        return None
    return state.identities


def anonymous_peer(tls_transport: object) -> bool:
    """True when the handshake is done and the client (allowed to) showed no certificate."""
    state = _state_of(tls_transport)
    return (
        state is not None
        and state.handshake_done
        and state.failure is None
        and state.identities is None
        and state.anonymous_allowed
    )


def verification_failure(tls_transport: object) -> str | None:
    """Why the peer's certificate was refused on this connection, or None.

    Only usable while the connection object lives; after ``connectionLost``
    the same reason is the :class:`PeerVerificationError` it was given.
    """
    state = _state_of(tls_transport)
    return None if state is None else state.failure
