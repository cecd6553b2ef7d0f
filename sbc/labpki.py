"""A throwaway lab PKI: a CA plus leaf certificates for trying sbc out.

``sbc-lab-pki DIR`` (or ``python -m sbc.labpki DIR``) writes, once:

- ``ca.pem`` / ``ca.key``: the lab CA (the trust anchor for ``--ca-certificates``)
- ``sbc.pem`` / ``sbc.key``: the SBC (``sip:sbc.lab.test``, DNS ``sbc.lab.test``, IP 127.0.0.1)
- ``peer.pem`` / ``peer.key``: a far-side proxy (``sip:sbc-peer.lab.test``)
- ``client.pem`` / ``client.key``: phones of the domain ``lab.test`` (``sip:lab.test``)

LAB USE ONLY: the keys are unencrypted and the CA signs whatever this tool
asks. In production the certificates come from your own PKI (the seed's
"CEPKI infrastructure"); sbc never generates or stores them itself.

The same functions build per-run test PKIs (:func:`make_ca`, :func:`issue`).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

WARNING = (
    "WARNING: lab PKI for testing only. Its keys are unencrypted and its CA is not a real one;\n"
    "never use these files to protect real SIP traffic."
)


@attrs.frozen
class Identity:
    """A certificate and its private key, with PEM encodings."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: str, stem: str) -> tuple[str, str]:
        """Write ``stem.pem`` and ``stem.key`` (mode 0600) into ``directory``."""
        cert_path = os.path.join(directory, stem + ".pem")
        key_path = os.path.join(directory, stem + ".key")
        with open(cert_path, "wb") as f:
            f.write(self.certificate_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem)
        return cert_path, key_path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(common_name: str = "sbc lab CA (testing only)", days: int = 825) -> Identity:
    """A self-signed CA certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Identity(cert, key)


def issue(
    ca: Identity,
    common_name: str | None = None,
    *,
    dns_names: Sequence[str] = (),
    sip_uris: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Identity:
    """A leaf certificate signed by ``ca`` with exactly the names given.

    ``sip_uris`` are full URIs (``"sip:example.com"``). With no names at all
    the certificate has no subjectAltName extension (CN only).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    attributes = []
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + datetime.timedelta(days=398))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    general_names: list[x509.GeneralName] = [
        *(x509.UniformResourceIdentifier(uri) for uri in sip_uris),
        *(x509.DNSName(name) for name in dns_names),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses),
    ]
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    return Identity(builder.sign(ca.key, hashes.SHA256()), key)


def write_lab_pki(directory: str) -> list[str]:
    """Create the lab PKI in ``directory`` unless ``ca.pem`` is already there.

    Returns the paths written (empty when the PKI already existed).
    """
    if os.path.exists(os.path.join(directory, "ca.pem")):
        return []
    os.makedirs(directory, exist_ok=True)
    ca = make_ca()
    written = list(ca.write(directory, "ca"))
    leaves = {
        "sbc": issue(
            ca,
            "sbc.lab.test",
            sip_uris=["sip:sbc.lab.test"],
            dns_names=["sbc.lab.test"],
            ip_addresses=["127.0.0.1"],
        ),
        "peer": issue(
            ca,
            "sbc-peer.lab.test",
            sip_uris=["sip:sbc-peer.lab.test"],
            dns_names=["sbc-peer.lab.test"],
        ),
        "client": issue(ca, "lab.test", sip_uris=["sip:lab.test"], dns_names=["lab.test"]),
    }
    for stem, identity in leaves.items():
        written.extend(identity.write(directory, stem))
    with open(os.path.join(directory, "README.txt"), "w") as f:
        f.write(WARNING + "\n")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``sbc-lab-pki [DIR]``: write a lab PKI (default ``examples/lab-pki``)."""
    parser = argparse.ArgumentParser(
        prog="sbc-lab-pki",
        description="Write a throwaway lab PKI (CA, SBC, peer and client certificates) "
        "for trying sbc out. " + WARNING.replace("\n", " "),
    )
    parser.add_argument(
        "directory",
        nargs="?",
        default=os.path.join("examples", "lab-pki"),
        help="where to write it (created if missing; an existing PKI is left as it is); "
        "default: examples/lab-pki",
    )
    directory = parser.parse_args(list(sys.argv[1:] if argv is None else argv)).directory
    written = write_lab_pki(directory)
    if written:
        print(WARNING, file=sys.stderr)
        names = " ".join(os.path.basename(path) for path in written)
        print(f"sbc-lab-pki: wrote {len(written)} files to {directory}: {names}", file=sys.stderr)
    else:
        print(f"sbc-lab-pki: {directory} already holds a PKI; left unchanged", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
