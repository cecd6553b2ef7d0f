"""sbc.transport.tls: TLS identity loading and full in-memory handshakes.

Every case builds its own PKI with sbc.labpki and runs a real OpenSSL
handshake between TLSMemoryBIOProtocol pairs joined by twisted.test.iosim:
no sockets, no sleeps, keys only in trial's temporary directory.
"""

from __future__ import annotations

import datetime
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sbc.config import ClientCertificate
from sbc.errors import ConfigError
from sbc.identity import PeerIdentities
from sbc.labpki import Identity, issue, make_ca
from sbc.transport.tls import (
    IdentityExtractionError,
    PeerVerificationError,
    TlsConfigError,
    TlsIdentity,
    anonymous_peer,
    client_connection_creator,
    extract_identities,
    load_tls_identity,
    peer_identities,
    server_context_factory,
    verification_failure,
)

NOW = datetime.datetime.now(datetime.timezone.utc)


@attrs.frozen
class Files:
    """Stands in for sbc.service.TlsFiles (same three attributes)."""

    certificate: str
    private_key: str
    ca_certificates: str | None


def write_files(case: SynchronousTestCase, leaf: Identity, *anchors: Identity) -> Files:
    """Write ``leaf`` and the trust anchors into a fresh temporary directory."""
    directory = case.mktemp()
    os.makedirs(directory)
    cert_path, key_path = leaf.write(directory, "leaf")
    ca_path = os.path.join(directory, "ca.pem")
    with open(ca_path, "wb") as f:
        f.write(b"".join(anchor.certificate_pem for anchor in anchors))
    return Files(cert_path, key_path, ca_path)


def tls_identity(case: SynchronousTestCase, leaf: Identity, *anchors: Identity) -> TlsIdentity:
    return load_tls_identity(write_files(case, leaf, *anchors))


def intermediate_ca(root: Identity) -> Identity:
    """A CA certificate signed by ``root`` (labpki makes only self-signed CAs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return Identity(cert, key)


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """An application protocol that remembers what it saw."""

    def __init__(self) -> None:
        self.data = b""
        self.handshake_done = False
        self.identities: PeerIdentities | None = None
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.identities = peer_identities(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = reason


class OneProtocolFactory(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self.the_protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self.the_protocol


@attrs.define
class Loopback:
    server: Recorder
    client: Recorder
    server_tls: TLSMemoryBIOProtocol
    client_tls: TLSMemoryBIOProtocol
    server_handle: SSL.Connection
    client_handle: SSL.Connection
    pump: IOPump

    @property
    def both_closed(self) -> bool:
        return self.server.lost is not None and self.client.lost is not None


def loopback(
    server_creator: IOpenSSLServerConnectionCreator,
    client_creator: IOpenSSLClientConnectionCreator,
) -> Loopback:
    """Connect a TLS server and client in memory and run the handshake to its end."""
    clock = Clock()
    server, client = Recorder(), Recorder()
    server_factory = TLSMemoryBIOFactory(
        server_creator, False, OneProtocolFactory(server), clock=clock
    )
    client_factory = TLSMemoryBIOFactory(
        client_creator, True, OneProtocolFactory(client), clock=clock
    )
    client_tls, server_tls, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        greet=False,
        clock=clock,
    )
    # The OpenSSL connections, kept before connectionLost drops them.
    handles = server_tls.getHandle(), client_tls.getHandle()
    pump.flush()
    return Loopback(server, client, server_tls, client_tls, *handles, pump)


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """A test-only client built straight on OpenSSL, for peers sbc would never be."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IOpenSSLServerConnectionCreator)
class RawServer:
    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


def tls11_context() -> SSL.Context:
    """A context limited to TLS 1.1 (needs security level 0 on OpenSSL 3+)."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_1_VERSION)
    context.set_max_proto_version(SSL.TLS1_1_VERSION)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    return context


class PkiMixin:
    """A fresh CA, the SBC's certificate and a client (phone domain) certificate."""

    def setUp(self) -> None:
        self.ca = make_ca()
        self.sbc_leaf = issue(
            self.ca,
            "sbc.lab.test",
            sip_uris=["sip:sbc.lab.test"],
            dns_names=["sbc.lab.test"],
            ip_addresses=["127.0.0.1"],
        )
        self.client_leaf = issue(self.ca, "lab.test", sip_uris=["sip:lab.test"])


class HandshakeTests(PkiMixin, SynchronousTestCase):
    """Our server creator against our client creator."""

    def connect(self, server_leaf: Identity, expected_name: str) -> Loopback:
        server = server_context_factory(tls_identity(self, server_leaf, self.ca))
        client_identity = tls_identity(self, self.client_leaf, self.ca)
        return loopback(server, client_connection_creator(client_identity, expected_name))

    def verification_error(self, reason: Failure | None) -> PeerVerificationError:
        """The PeerVerificationError a connection was lost with (fails the test otherwise)."""
        assert reason is not None
        self.assertIsInstance(reason.value, PeerVerificationError)
        assert isinstance(reason.value, PeerVerificationError)
        return reason.value

    def assertRefusedByClient(self, link: Loopback, expected_name: str, why: str) -> None:
        """The client aborted the handshake: typed reason, nothing delivered."""
        self.assertTrue(link.both_closed)
        self.assertFalse(link.client.handshake_done)
        self.assertFalse(link.server.handshake_done)
        error = self.verification_error(link.client.lost)
        self.assertEqual(error.expected_name, expected_name)
        self.assertIn(why, error.reason)
        self.assertEqual(verification_failure(link.client_handle), error.reason)
        self.assertIsNone(peer_identities(link.client_handle))
        self.assertEqual(link.server.data, b"")

    def test_creators_provide_their_interfaces(self) -> None:
        identity = tls_identity(self, self.sbc_leaf, self.ca)
        self.assertTrue(
            verifyObject(IOpenSSLServerConnectionCreator, server_context_factory(identity))
        )
        self.assertTrue(
            verifyObject(
                IOpenSSLClientConnectionCreator, client_connection_creator(identity, "a.test")
            )
        )

    def test_good_identity(self) -> None:
        """Mutual authentication: data both ways, each side sees the other's identities."""
        link = self.connect(self.sbc_leaf, "sbc.lab.test")
        self.assertTrue(link.client.handshake_done)
        self.assertTrue(link.server.handshake_done)
        self.assertIsNone(link.client.lost)
        self.assertIsNone(link.server.lost)
        self.assertEqual(
            link.client.identities,
            PeerIdentities(
                sip_domains=("sbc.lab.test",),
                dns_names=("sbc.lab.test",),
                ip_addresses=("127.0.0.1",),
            ),
        )
        self.assertEqual(link.server.identities, PeerIdentities(sip_domains=("lab.test",)))
        # The same answer from the TLS transports and the OpenSSL handles.
        self.assertEqual(peer_identities(link.client_tls), link.client.identities)
        self.assertEqual(peer_identities(link.server_handle), link.server.identities)
        self.assertIsNone(verification_failure(link.client_tls))

        link.client_tls.write(b"OPTIONS sips:sbc.lab.test SIP/2.0\r\n\r\n")
        link.server_tls.write(b"SIP/2.0 200 OK\r\n\r\n")
        link.pump.flush()
        self.assertEqual(link.server.data, b"OPTIONS sips:sbc.lab.test SIP/2.0\r\n\r\n")
        self.assertEqual(link.client.data, b"SIP/2.0 200 OK\r\n\r\n")

        # SNI carried the expected name; at least TLS 1.2 was negotiated.
        self.assertEqual(link.server_handle.get_servername(), b"sbc.lab.test")
        self.assertIn(link.client_handle.get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))

        link.client_tls.loseConnection()
        link.pump.flush()
        self.assertTrue(link.both_closed)

    def test_peer_identities_none_before_handshake(self) -> None:
        server = server_context_factory(tls_identity(self, self.sbc_leaf, self.ca))
        client = client_connection_creator(
            tls_identity(self, self.client_leaf, self.ca), "sbc.lab.test"
        )
        clock = Clock()
        factory = TLSMemoryBIOFactory(client, True, OneProtocolFactory(Recorder()), clock=clock)
        server_factory = TLSMemoryBIOFactory(
            server, False, OneProtocolFactory(Recorder()), clock=clock
        )
        client_tls, _server_tls, _pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: factory.buildProtocol(None),
            greet=False,
            clock=clock,
        )
        self.assertIsNone(peer_identities(client_tls))
        self.assertIsNone(peer_identities(object()))
        self.assertIsNone(verification_failure(object()))

    def test_wrong_host(self) -> None:
        link = self.connect(self.sbc_leaf, "other.lab.test")
        self.assertRefusedByClient(link, "other.lab.test", "does not match 'other.lab.test'")

    def test_wildcard_certificate_does_not_match_a_name(self) -> None:
        wildcard = issue(self.ca, None, dns_names=["*.lab.test"])
        link = self.connect(wildcard, "a.lab.test")
        self.assertRefusedByClient(link, "a.lab.test", "does not match")

    def test_uri_san_takes_precedence_over_dns_name(self) -> None:
        both = issue(self.ca, None, sip_uris=["sip:a.test"], dns_names=["b.test"])
        refused = self.connect(both, "b.test")
        self.assertRefusedByClient(refused, "b.test", "does not match 'b.test'")
        accepted = self.connect(both, "a.test")
        self.assertTrue(accepted.client.handshake_done)
        self.assertIsNone(accepted.client.lost)
        self.assertEqual(accepted.client.identities, PeerIdentities(("a.test",), ("b.test",)))

    def test_common_name_only_certificate(self) -> None:
        cn_only = issue(self.ca, "cn.lab.test")
        link = self.connect(cn_only, "cn.lab.test")
        self.assertTrue(link.client.handshake_done)
        self.assertEqual(link.client.identities, PeerIdentities(common_name="cn.lab.test"))

    def test_ip_literal_checked_against_ip_entries_without_sni(self) -> None:
        link = self.connect(self.sbc_leaf, "127.0.0.1")
        self.assertTrue(link.client.handshake_done)
        self.assertIsNone(link.client.lost)
        self.assertIsNone(link.server_handle.get_servername())
        refused = self.connect(self.sbc_leaf, "127.0.0.2")
        self.assertRefusedByClient(refused, "127.0.0.2", "does not match")

    def test_untrusted_server_ca(self) -> None:
        stranger = issue(make_ca("stranger CA"), None, sip_uris=["sip:sbc.lab.test"])
        link = self.connect(stranger, "sbc.lab.test")
        self.assertRefusedByClient(link, "sbc.lab.test", "unable to get local issuer")

    def test_expired_server_certificate(self) -> None:
        expired = issue(
            self.ca,
            None,
            sip_uris=["sip:sbc.lab.test"],
            not_before=NOW - datetime.timedelta(days=10),
            not_after=NOW - datetime.timedelta(days=1),
        )
        link = self.connect(expired, "sbc.lab.test")
        self.assertRefusedByClient(link, "sbc.lab.test", "certificate has expired")

    def test_not_yet_valid_server_certificate(self) -> None:
        future = issue(
            self.ca,
            None,
            sip_uris=["sip:sbc.lab.test"],
            not_before=NOW + datetime.timedelta(days=1),
            not_after=NOW + datetime.timedelta(days=10),
        )
        link = self.connect(future, "sbc.lab.test")
        self.assertRefusedByClient(link, "sbc.lab.test", "not yet valid")

    def test_intermediate_chain_is_sent(self) -> None:
        """The certificate file's intermediates go on the wire; only the root is trusted."""
        middle = intermediate_ca(self.ca)
        leaf = issue(middle, None, sip_uris=["sip:sbc.lab.test"])
        files = write_files(self, leaf, self.ca)
        with open(files.certificate, "ab") as f:
            f.write(middle.certificate_pem)
        identity = load_tls_identity(files)
        self.assertEqual(identity.chain, (middle.certificate,))
        client = client_connection_creator(
            tls_identity(self, self.client_leaf, self.ca), "sbc.lab.test"
        )
        link = loopback(server_context_factory(identity), client)
        self.assertTrue(link.client.handshake_done)
        self.assertIsNone(link.client.lost)

    def test_client_without_certificate_is_refused(self) -> None:
        """A client that offers no certificate fails the handshake at the server."""
        server = server_context_factory(tls_identity(self, self.sbc_leaf, self.ca))
        anonymous = optionsForClientTLS(
            "sbc.lab.test", trustRoot=Certificate.loadPEM(self.ca.certificate_pem)
        )
        link = loopback(server, anonymous)
        # With TLS 1.3 the client may finish first; what it then sends is never read.
        if link.client.lost is None:
            link.client_tls.write(b"INVITE sips:bob@lab.test SIP/2.0\r\n\r\n")
            link.pump.flush()
        self.assertTrue(link.both_closed)
        self.assertFalse(link.server.handshake_done)
        self.assertEqual(link.server.data, b"")
        assert link.server.lost is not None
        self.assertTrue(link.server.lost.check(SSL.Error))
        self.assertIsNone(peer_identities(link.server_handle))

    def test_client_from_untrusted_ca_is_refused(self) -> None:
        server = server_context_factory(tls_identity(self, self.sbc_leaf, self.ca))
        stranger_ca = make_ca("stranger CA")
        stranger = issue(stranger_ca, None, sip_uris=["sip:lab.test"])
        # The stranger trusts our CA, so only the server's check can refuse.
        client = client_connection_creator(tls_identity(self, stranger, self.ca), "sbc.lab.test")
        link = loopback(server, client)
        if link.client.lost is None:
            link.client_tls.write(b"INVITE sips:bob@lab.test SIP/2.0\r\n\r\n")
            link.pump.flush()
        self.assertTrue(link.both_closed)
        self.assertFalse(link.server.handshake_done)
        self.assertEqual(link.server.data, b"")
        error = self.verification_error(link.server.lost)
        self.assertIsNone(error.expected_name)
        self.assertIn("unable to get local issuer", error.reason)
        self.assertEqual(verification_failure(link.server_handle), error.reason)

    def test_identities_only_once_the_handshake_is_done(self) -> None:
        """A client that verified the server but was then refused reports no identities."""
        server = server_context_factory(tls_identity(self, self.sbc_leaf, self.ca))
        stranger = issue(make_ca("stranger CA"), None, sip_uris=["sip:lab.test"])
        identity = tls_identity(self, stranger, self.ca)
        # TLS 1.2: the client's handshake ends only with the server's Finished.
        identity.client_context.set_max_proto_version(SSL.TLS1_2_VERSION)
        link = loopback(server, client_connection_creator(identity, "sbc.lab.test"))
        self.assertTrue(link.both_closed)
        self.assertFalse(link.client.handshake_done)
        self.assertIsNone(verification_failure(link.client_handle))  # the client had no objection
        self.assertIsNone(peer_identities(link.client_handle))
        self.verification_error(link.server.lost)

    def test_tls11_client_refused(self) -> None:
        """The server's minimum is TLS 1.2: a TLS 1.1-only client fails the handshake."""
        identity = tls_identity(self, self.sbc_leaf, self.ca)
        # OpenSSL's default security level alone would refuse TLS 1.1; lower it
        # so that only the explicit minimum version can do the refusing.
        identity.server_context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        server = server_context_factory(identity)
        link = loopback(server, RawClient(tls11_context()))
        self.assertTrue(link.both_closed)
        self.assertFalse(link.server.handshake_done)
        self.assertFalse(link.client.handshake_done)
        assert link.server.lost is not None
        self.assertTrue(link.server.lost.check(SSL.Error))
        self.assertIn("unsupported protocol", str(link.server.lost.value))

    def test_tls11_server_refused(self) -> None:
        """Our client never offers less than TLS 1.2: a TLS 1.1-only server finds no version."""
        context = tls11_context()
        context.use_certificate(self.sbc_leaf.certificate)
        context.use_privatekey(self.sbc_leaf.key)
        identity = tls_identity(self, self.client_leaf, self.ca)
        identity.client_context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")  # as above
        client = client_connection_creator(identity, "sbc.lab.test")
        link = loopback(RawServer(context), client)
        self.assertTrue(link.both_closed)
        self.assertFalse(link.client.handshake_done)
        self.assertFalse(link.server.handshake_done)
        assert link.client.lost is not None
        self.assertTrue(link.client.lost.check(SSL.Error))
        self.assertIn("protocol version", str(link.client.lost.value))

    def test_tls11_control_this_openssl_can_speak_tls11(self) -> None:
        """Control for the two tests above: TLS 1.1 works here when both sides allow it."""
        server_context = tls11_context()
        server_context.use_certificate(self.sbc_leaf.certificate)
        server_context.use_privatekey(self.sbc_leaf.key)
        link = loopback(RawServer(server_context), RawClient(tls11_context()))
        self.assertTrue(link.client.handshake_done)
        self.assertEqual(link.client_handle.get_protocol_version_name(), "TLSv1.1")

    def test_tls12_only_client_accepted(self) -> None:
        """TLS 1.2 is the minimum, not the only version."""
        server = server_context_factory(tls_identity(self, self.sbc_leaf, self.ca))
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.use_certificate(self.client_leaf.certificate)
        context.use_privatekey(self.client_leaf.key)
        link = loopback(server, RawClient(context))
        self.assertTrue(link.server.handshake_done)
        self.assertEqual(link.server_handle.get_protocol_version_name(), "TLSv1.2")
        self.assertEqual(link.server.identities, PeerIdentities(sip_domains=("lab.test",)))

    def tls12_client(self, ciphers: bytes) -> RawClient:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_cipher_list(ciphers)
        context.use_certificate(self.client_leaf.certificate)
        context.use_privatekey(self.client_leaf.key)
        return RawClient(context)

    def test_cbc_only_client_refused(self) -> None:
        """docs/security-model.md: AEAD suites only; a client offering only CBC finds none."""
        server = server_context_factory(tls_identity(self, self.sbc_leaf, self.ca))
        link = loopback(
            server, self.tls12_client(b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
        )
        self.assertTrue(link.both_closed)
        self.assertFalse(link.server.handshake_done)
        assert link.server.lost is not None
        self.assertTrue(link.server.lost.check(SSL.Error))
        self.assertIn("no shared cipher", str(link.server.lost.value))

    def test_aead_client_accepted(self) -> None:
        """The control: the same TLS 1.2 client offering AES-GCM or ChaCha20 gets through."""
        for suite in (b"ECDHE-ECDSA-AES128-GCM-SHA256", b"ECDHE-ECDSA-CHACHA20-POLY1305"):
            server = server_context_factory(tls_identity(self, self.sbc_leaf, self.ca))
            link = loopback(server, self.tls12_client(suite))
            self.assertTrue(link.server.handshake_done, suite)
            self.assertEqual(link.server_handle.get_cipher_name(), suite.decode())

    def test_our_client_refuses_a_cbc_only_server(self) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_cipher_list(b"ECDHE-ECDSA-AES128-SHA")
        context.use_certificate(self.sbc_leaf.certificate)
        context.use_privatekey(self.sbc_leaf.key)
        client = client_connection_creator(
            tls_identity(self, self.client_leaf, self.ca), "sbc.lab.test"
        )
        link = loopback(RawServer(context), client)
        self.assertTrue(link.both_closed)
        self.assertFalse(link.client.handshake_done)

    def test_default_handshake_uses_an_aead_suite(self) -> None:
        link = self.connect(self.sbc_leaf, "sbc.lab.test")
        self.assertTrue(link.client.handshake_done)
        name = link.server_handle.get_cipher_name() or ""
        self.assertTrue("GCM" in name or "CHACHA20" in name, name)

    def test_no_expected_name_refused(self) -> None:
        identity = tls_identity(self, self.client_leaf, self.ca)
        self.assertRaises(ValueError, client_connection_creator, identity, "")
        self.assertRaises(ValueError, client_connection_creator, identity, "  ")


class ClientCertificateModeTests(PkiMixin, SynchronousTestCase):
    """client-certificate optional / none: phones without a certificate."""

    def server(self, mode: ClientCertificate) -> IOpenSSLServerConnectionCreator:
        return server_context_factory(tls_identity(self, self.sbc_leaf, self.ca), mode)

    def anonymous_client(self) -> IOpenSSLClientConnectionCreator:
        return optionsForClientTLS(
            "sbc.lab.test", trustRoot=Certificate.loadPEM(self.ca.certificate_pem)
        )

    def exchange(self, link: Loopback) -> None:
        link.client_tls.write(b"OPTIONS sips:lab.test SIP/2.0\r\n\r\n")
        link.pump.flush()

    def test_optional_accepts_a_client_without_certificate(self) -> None:
        link = loopback(self.server(ClientCertificate.OPTIONAL), self.anonymous_client())
        self.exchange(link)
        self.assertTrue(link.server.handshake_done)
        self.assertIsNone(link.server.lost)
        self.assertEqual(link.server.data, b"OPTIONS sips:lab.test SIP/2.0\r\n\r\n")
        self.assertIsNone(peer_identities(link.server_handle))
        self.assertTrue(anonymous_peer(link.server_handle))

    def test_optional_still_verifies_an_offered_certificate(self) -> None:
        link = loopback(
            self.server(ClientCertificate.OPTIONAL),
            client_connection_creator(
                tls_identity(self, self.client_leaf, self.ca), "sbc.lab.test"
            ),
        )
        self.exchange(link)
        self.assertTrue(link.server.handshake_done)
        identities = peer_identities(link.server_handle)
        assert identities is not None
        self.assertEqual(identities.sip_domains, ("lab.test",))
        self.assertFalse(anonymous_peer(link.server_handle))

    def test_optional_refuses_a_certificate_that_does_not_verify(self) -> None:
        stranger = issue(make_ca("stranger CA"), None, sip_uris=["sip:lab.test"])
        client = client_connection_creator(tls_identity(self, stranger, self.ca), "sbc.lab.test")
        link = loopback(self.server(ClientCertificate.OPTIONAL), client)
        if link.client.lost is None:
            self.exchange(link)
        self.assertTrue(link.both_closed)
        self.assertFalse(link.server.handshake_done)
        self.assertEqual(link.server.data, b"")
        assert link.server.lost is not None
        self.assertIsInstance(link.server.lost.value, PeerVerificationError)
        self.assertFalse(anonymous_peer(link.server_handle))

    def test_none_does_not_ask_for_a_certificate(self) -> None:
        """A client holding a certificate is not asked for it: no identities."""
        link = loopback(
            self.server(ClientCertificate.NONE),
            client_connection_creator(
                tls_identity(self, self.client_leaf, self.ca), "sbc.lab.test"
            ),
        )
        self.exchange(link)
        self.assertTrue(link.server.handshake_done)
        self.assertIsNone(peer_identities(link.server_handle))
        self.assertTrue(anonymous_peer(link.server_handle))

    def test_required_stays_the_default(self) -> None:
        link = loopback(
            server_context_factory(tls_identity(self, self.sbc_leaf, self.ca)),
            self.anonymous_client(),
        )
        if link.client.lost is None:
            self.exchange(link)
        self.assertFalse(link.server.handshake_done)
        self.assertFalse(anonymous_peer(link.server_handle))


class ClusterLinkServerTests(PkiMixin, SynchronousTestCase):
    """A cluster link's listener: the client (another node) must carry the link's identity."""

    def link(self, client_leaf: Identity) -> Loopback:
        server = server_context_factory(
            tls_identity(self, self.sbc_leaf, self.ca), ClientCertificate.REQUIRED, "nodes.lab.test"
        )
        client = client_connection_creator(tls_identity(self, client_leaf, self.ca), "sbc.lab.test")
        link = loopback(server, client)
        if link.client.lost is None:
            link.client_tls.write(b"OPTIONS sips:sbc.lab.test SIP/2.0\r\n\r\n")
            link.pump.flush()
        return link

    def test_a_node_certificate_naming_the_cluster_is_accepted(self) -> None:
        node = issue(self.ca, "edge-b", sip_uris=["sip:nodes.lab.test"])
        link = self.link(node)
        self.assertTrue(link.server.handshake_done)
        self.assertEqual(link.server.data, b"OPTIONS sips:sbc.lab.test SIP/2.0\r\n\r\n")
        identities = peer_identities(link.server_handle)
        assert identities is not None
        self.assertEqual(identities.sip_domains, ("nodes.lab.test",))

    def test_any_other_certificate_is_refused_at_the_handshake(self) -> None:
        link = self.link(self.client_leaf)
        self.assertTrue(link.both_closed)
        self.assertEqual(link.server.data, b"")
        assert link.server.lost is not None
        error = link.server.lost.value
        assert isinstance(error, PeerVerificationError)
        self.assertEqual(error.expected_name, "nodes.lab.test")
        self.assertIn("does not match 'nodes.lab.test'", error.reason)


class ExtractIdentitiesTests(SynchronousTestCase):
    """Certificate names -> PeerIdentities, through service_identity."""

    def setUp(self) -> None:
        self.ca = make_ca()

    def test_sip_uri_user_part_and_other_schemes_ignored(self) -> None:
        leaf = issue(self.ca, "cn.test", sip_uris=["sip:alice@a.test", "sips:b.test", "SIP:C.test"])
        ids = extract_identities(leaf.certificate)
        self.assertEqual(ids.sip_domains, ("c.test",))
        self.assertIsNone(ids.common_name)

    def test_only_user_part_uris_leave_dns_names_in_force(self) -> None:
        leaf = issue(self.ca, None, sip_uris=["sip:alice@a.test"], dns_names=["b.test"])
        ids = extract_identities(leaf.certificate)
        self.assertEqual(ids.domains, ("b.test",))

    def test_uri_parameters_stripped(self) -> None:
        leaf = issue(self.ca, None, sip_uris=["sip:a.test;transport=tls"])
        self.assertEqual(extract_identities(leaf.certificate).sip_domains, ("a.test",))

    def test_common_name_only_without_subject_alt_name(self) -> None:
        cn_only = extract_identities(issue(self.ca, "cn.test").certificate)
        self.assertEqual(cn_only, PeerIdentities(common_name="cn.test"))
        with_ip = extract_identities(issue(self.ca, "cn.test", ip_addresses=["::1"]).certificate)
        self.assertEqual(with_ip, PeerIdentities(ip_addresses=("::1",)))

    def test_pyopenssl_certificate_accepted(self) -> None:
        leaf = issue(self.ca, None, sip_uris=["sip:a.test"], ip_addresses=["192.0.2.1"])
        ids = extract_identities(X509.from_cryptography(leaf.certificate))
        self.assertEqual(ids, PeerIdentities(("a.test",), ip_addresses=("192.0.2.1",)))

    def test_unparseable_names_raise(self) -> None:
        leaf = issue(self.ca, None, sip_uris=["sip:a.test:5061"])
        self.assertRaises(IdentityExtractionError, extract_identities, leaf.certificate)

    def test_own_identities(self) -> None:
        leaf = issue(self.ca, None, sip_uris=["sip:sbc.test"])
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = leaf.write(directory, "sbc")
        ca = os.path.join(directory, "ca.pem")
        with open(ca, "wb") as f:
            f.write(self.ca.certificate_pem)
        identity = load_tls_identity(Files(cert, key, ca))
        self.assertEqual(identity.identities, PeerIdentities(sip_domains=("sbc.test",)))


class LoadTlsIdentityTests(SynchronousTestCase):
    """load_tls_identity: all checks before anything is returned, one-line errors."""

    def setUp(self) -> None:
        self.ca = make_ca()
        self.leaf = issue(self.ca, None, sip_uris=["sip:sbc.test"])
        self.files = write_files(self, self.leaf, self.ca)

    def assertRefused(self, files: Files, path: str, message: str) -> TlsConfigError:
        error = self.assertRaises(TlsConfigError, load_tls_identity, files)
        self.assertIsInstance(error, ConfigError)
        self.assertEqual(error.path, path)
        self.assertIn(message, error.message)
        self.assertNotIn("\n", str(error))
        return error

    def overwrite(self, path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    def test_loads(self) -> None:
        identity = load_tls_identity(self.files)
        self.assertEqual(identity.certificate, self.leaf.certificate)
        self.assertEqual(identity.chain, ())
        self.assertEqual(identity.trust_anchors, (self.ca.certificate,))
        self.assertIs(identity.files, self.files)

    def test_missing_certificate(self) -> None:
        missing = self.files.certificate + ".missing"
        files = attrs.evolve(self.files, certificate=missing)
        error = self.assertRefused(files, missing, "cannot read certificate file")
        self.assertIn("No such file", error.message)

    def test_missing_key(self) -> None:
        missing = self.files.private_key + ".missing"
        self.assertRefused(
            attrs.evolve(self.files, private_key=missing), missing, "cannot read private key"
        )

    def test_missing_ca(self) -> None:
        missing = "/nonexistent/ca.pem"
        self.assertRefused(
            attrs.evolve(self.files, ca_certificates=missing), missing, "cannot read CA"
        )

    def test_no_ca_configured(self) -> None:
        self.assertRefused(
            attrs.evolve(self.files, ca_certificates=None), "--ca-certificates", "no trust anchors"
        )

    def test_key_mismatch(self) -> None:
        other = issue(self.ca, None, sip_uris=["sip:other.test"])
        self.overwrite(self.files.private_key, other.key_pem)
        error = self.assertRefused(self.files, self.files.private_key, "does not match")
        self.assertIn(self.files.certificate, error.message)

    def test_certificate_not_pem(self) -> None:
        self.overwrite(self.files.certificate, b"this is not a certificate\n")
        self.assertRefused(self.files, self.files.certificate, "no PEM certificate")

    def test_certificate_bad_pem(self) -> None:
        self.overwrite(
            self.files.certificate,
            b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n",
        )
        self.assertRefused(self.files, self.files.certificate, "bad PEM certificate")

    def test_key_bad_pem(self) -> None:
        self.overwrite(self.files.private_key, self.leaf.certificate_pem)
        self.assertRefused(self.files, self.files.private_key, "not a PEM private key")

    def test_key_encrypted(self) -> None:
        encrypted = self.leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.overwrite(self.files.private_key, encrypted)
        self.assertRefused(self.files, self.files.private_key, "encrypted")

    def test_ca_file_without_certificates(self) -> None:
        assert self.files.ca_certificates is not None
        self.overwrite(self.files.ca_certificates, b"")
        self.assertRefused(self.files, self.files.ca_certificates, "no PEM certificate")
