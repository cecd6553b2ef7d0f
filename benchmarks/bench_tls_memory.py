"""Where the memory of an idle TLS connection goes, measured in process.

Run from the repository root::

    .venv/bin/python benchmarks/bench_tls_memory.py [--connections N]

For each variant it makes N server-side OpenSSL connections with the SBC's
own server context (``sbc.transport.tls``: TLS >= 1.2, AEAD suites,
``MODE_RELEASE_BUFFERS``, no session cache, no tickets), completes a
TLS 1.3 handshake with a client, exchanges one 500-byte record each way,
frees the client and keeps the server side, as an idle SIP connection is
kept. Memory is glibc's ``mallinfo2`` in-use bytes (what OpenSSL and Python
have allocated and not freed), divided by N. The Python objects of the SBC's
own stream protocol (about 5 KiB per connection, see docs/performance.md)
are not included: this is the OpenSSL part.

Variants: with and without a client certificate (a trunk against a phone),
memory BIOs (what Twisted's ``TLSMemoryBIOProtocol`` uses) against a socket
BIO (OpenSSL reading the socket itself), and the key-exchange groups the
server accepts: OpenSSL's default list (which starts with the hybrid
post-quantum group X25519MLKEM768) against classical groups only.

This is a benchmark, not a test: it asserts nothing about memory.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from OpenSSL import SSL
from OpenSSL._util import lib as openssl_lib

from sbc.labpki import write_lab_pki
from sbc.transport.tls import TlsIdentity, load_tls_identity

CLASSICAL_GROUPS = b"X25519:P-256:P-384"


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def allocated() -> int:
    """Bytes in use in the C heap (Python's objects included), after a collection."""
    gc.collect()
    return int(_libc.mallinfo2().uordblks)


def identity(directory: str, stem: str) -> TlsIdentity:
    return load_tls_identity(
        SimpleNamespace(
            certificate=f"{directory}/{stem}.pem",
            private_key=f"{directory}/{stem}.key",
            ca_certificates=f"{directory}/ca.pem",
        )
    )


def _handshake(client: SSL.Connection, server: SSL.Connection, memory: bool) -> None:
    for _ in range(30):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except (SSL.WantReadError, SSL.WantWriteError):
                pass
        if memory:
            for source, sink in ((client, server), (server, client)):
                try:
                    data = source.bio_read(65536)
                except SSL.WantReadError:
                    data = b""
                if data:
                    sink.bio_write(data)
        if done == 2:
            return
    raise RuntimeError("handshake did not finish")


def _exchange(client: SSL.Connection, server: SSL.Connection, memory: bool) -> None:
    client.send(b"x" * 500)
    if memory:
        server.bio_write(client.bio_read(65536))
    server.recv(1000)
    server.send(b"y" * 500)
    if memory:
        client.bio_write(server.bio_read(65536))
    client.recv(1000)


def measure(
    pki: str, connections: int, *, certificate: bool, memory: bool, classical: bool
) -> float:
    """KiB per idle server connection for one variant (fresh contexts each time)."""
    server_identity = identity(pki, "sbc")
    client_identity = identity(pki, "client")
    server_context = server_identity.server_context
    if classical:
        openssl_lib.SSL_CTX_set1_curves_list(server_context._context, CLASSICAL_GROUPS)
    if certificate:
        client_context = client_identity.client_context
    else:
        client_context = SSL.Context(SSL.TLS_METHOD)
    verify = (SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE) if certificate else SSL.VERIFY_NONE
    kept: list[object] = []
    before = allocated()
    for _ in range(connections):
        pair = None if memory else socket.socketpair()
        if pair is not None:
            for end in pair:
                end.setblocking(False)
        server = SSL.Connection(server_context, None if pair is None else pair[1])
        server.set_verify(verify, lambda *_: True)
        server.set_accept_state()
        client = SSL.Connection(client_context, None if pair is None else pair[0])
        client.set_verify(SSL.VERIFY_NONE, lambda *_: True)
        client.set_connect_state()
        _handshake(client, server, memory)
        _exchange(client, server, memory)
        del client
        if pair is not None:
            pair[0].close()
        kept.append((server, pair and pair[1]))
    per_connection = (allocated() - before) / connections / 1024
    del kept
    return per_connection


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args(argv)
    print(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(), f"{args.connections} connections")
    print(f"{'client certificate':<20}{'BIO':<8}{'groups':<12}{'KiB per connection':>20}")
    with tempfile.TemporaryDirectory(prefix="sbc-bench-tlsmem-") as pki:
        write_lab_pki(pki)
        for certificate in (True, False):
            for memory in (True, False):
                for classical in (False, True):
                    kib = measure(
                        pki,
                        args.connections,
                        certificate=certificate,
                        memory=memory,
                        classical=classical,
                    )
                    print(
                        f"{'yes' if certificate else 'no':<20}"
                        f"{'memory' if memory else 'socket':<8}"
                        f"{'classical' if classical else 'default':<12}{kib:>20.1f}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
