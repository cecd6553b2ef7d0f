"""``crypto reload`` and SIGHUP against a real ``twistd -n sbc`` (docs/security-model.md).

New handshakes get the certificate now on disk, a connection made before the
reload keeps working, and a bad key file changes nothing.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from sbc.labpki import issue
from tests.interop.harness import (
    HOST,
    SBC_NAME,
    Pki,
    SbcProcess,
    StreamClient,
    connect_stream,
    get_reactor,
    make_pki,
    new_call_id,
    parse_response,
    sip_request,
    start_s_client,
    start_sbc,
    tls_client_options,
    within,
)
from tests.interop.test_cli import cli_socket
from tests.support.peers import ProcessResult, run

SBC_CLI = os.path.join(os.path.dirname(sys.executable), "sbc-cli")


class CryptoReloadInteropTests(TestCase):
    timeout = 90

    pki: Pki
    sbc: SbcProcess

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.pki = make_pki(self.mktemp())
        self.sbc = yield start_sbc(self, self.pki)

    def sbc_cli(self, *commands: str) -> defer.Deferred[ProcessResult]:
        args = [SBC_CLI, "--socket", cli_socket(self.sbc.child)]
        for command in commands:
            args += ["-c", command]
        return within(run(get_reactor(), args, timeout=30.0), 40.0, "sbc-cli")

    def replace_certificate(self, common_name: str) -> None:
        """A new leaf from the same CA (same names, another CN) over the daemon's files."""
        self.pki.issue("sbc", common_name, sip_uris=["sip:" + SBC_NAME], dns_names=[SBC_NAME])

    @defer.inlineCallbacks
    def served_subject(self) -> Any:
        """The subject CN of the certificate a new ``openssl s_client`` handshake gets."""
        tls_port = self.sbc.port("tls")
        child = start_s_client(
            self, tls_port, ca=self.pki.cert("ca"), cert=self.pki.cert("client"),
            key=self.pki.key("client"),
        )  # fmt: skip
        try:
            yield within(child.output_contains(b"Verification: OK"), 10.0, "the handshake")
        except Exception as error:
            self.fail(f"{error}\n{child.output()}\n{self.sbc.tail()}")
        match = re.search(r"Peer certificate: .*CN ?= ?([^,\s]+)", child.output())
        self.assertIsNotNone(match, child.output())
        assert match is not None
        child.process.closeStdin()
        yield within(child.ended, 10.0, "s_client to exit")
        return match.group(1)

    @defer.inlineCallbacks
    def options(self, client: StreamClient) -> Any:
        before = len(client.received)
        call_id = new_call_id()
        request = sip_request(
            uri=f"sip:{HOST}:{self.sbc.port('tls')}", via_transport="TLS",
            local_port=client.local_port(), call_id=call_id, from_uri="sip:alice@lab.test",
        )  # fmt: skip
        client.write(request)
        yield client.wait(lambda c: b"\r\n\r\n" in c.received[before:], 5.0, "an answer")
        response = parse_response(client.received[before:])
        assert response is not None
        self.assertEqual(response.header("Call-ID", "i"), [call_id])
        return response

    @defer.inlineCallbacks
    def test_crypto_reload_new_handshakes_old_connection_bad_key(self) -> Any:
        subject = yield self.served_subject()
        self.assertEqual(subject, SBC_NAME)
        tls = tls_client_options(
            self.pki.cert("ca"), self.pki.cert("client"), self.pki.key("client")
        )
        established = yield connect_stream(self, self.sbc.port("tls"), tls)
        yield established.wait_handshake(5.0)
        response = yield self.options(established)
        self.assertEqual(response.status, 200, response.raw)

        self.replace_certificate("sbc-reloaded.lab.test")
        result = yield self.sbc_cli("crypto reload")
        self.assertEqual(result.exit_code, 0, result.text())
        self.assertIn("TLS identity reloaded: CN=sbc-reloaded.lab.test", result.stdout.decode())
        subject = yield self.served_subject()
        self.assertEqual(subject, "sbc-reloaded.lab.test")
        # The connection made before the reload still works.
        response = yield self.options(established)
        self.assertEqual(response.status, 200, response.raw)

        # A key that does not match the certificate: refused, nothing changes.
        with open(self.pki.key("sbc"), "wb") as f:
            f.write(issue(self.pki.ca, "stray.lab.test").key_pem)
        result = yield self.sbc_cli("crypto reload")
        self.assertEqual(result.exit_code, 1, result.text())
        self.assertEqual(
            result.stdout.decode().strip(),
            f"% TLS identity not reloaded: {self.pki.key('sbc')}: private key does not "
            f"match the certificate {self.pki.cert('sbc')}",
        )
        subject = yield self.served_subject()
        self.assertEqual(subject, "sbc-reloaded.lab.test")
        response = yield self.options(established)
        self.assertEqual(response.status, 200, response.raw)

    @defer.inlineCallbacks
    def test_sighup_reloads(self) -> Any:
        self.replace_certificate("sbc-hup.lab.test")
        logged = self.sbc.child.output_contains(b"TLS identity reloaded: CN=sbc-hup.lab.test")
        self.sbc.child.process.signalProcess("HUP")
        yield within(logged, 10.0, "the SIGHUP reload log line")
        subject = yield self.served_subject()
        self.assertEqual(subject, "sbc-hup.lab.test")
        self.assertIn("SIGHUP: reloading the TLS identity", self.sbc.output())
