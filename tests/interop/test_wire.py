"""The SBC on real sockets: SIPp, stunnel4, openssl s_client and raw sockets on 127.0.0.1.

Each test starts its own ``twistd -n sbc`` (see :mod:`tests.interop.harness`)
with an untrusted UDP+TCP adjacency ``access`` and a trusted-encrypted
adjacency ``tls``, and a fresh PKI. Contract: docs behaviour §2, §3, §8.
"""

from __future__ import annotations

import random
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.interop.harness import (
    HOST,
    Response,
    StreamClient,
    UdpClient,
    call_id_of,
    client_hello,
    connect_stream,
    make_pki,
    new_call_id,
    open_udp,
    parse_response,
    pause,
    run_sipp,
    sip_request,
    start_s_client,
    start_sbc,
    start_stunnel,
    tls_client_options,
    udp_drops,
    within,
)
from tests.support.peers import ProcessResult, RunningProcess


def _has_complete_response(client: StreamClient) -> bool:
    start = client.received.find(b"SIP/2.0 ")
    return start >= 0 and b"\r\n\r\n" in client.received[start:]


class _SbcTestCase(TestCase):
    """Starts a fresh SBC (access: untrusted UDP+TCP; tls: trusted-encrypted) per test."""

    timeout = 60
    #: Extra lines for the ``sbe`` block of the SBC's configuration.
    sbe: tuple[str, ...] = ()

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        self.sbc = yield start_sbc(self, self.pki, sbe=self.sbe)
        self.access_port = self.sbc.port("access")
        self.tls_port = self.sbc.port("tls")

    def self_uri(self, port: int) -> str:
        """A Request-URI naming the SBC itself (no user part)."""
        return f"sip:{HOST}:{port}"

    def context(self, result: ProcessResult | None = None) -> str:
        """Tool output and the SBC's log tail, for failure messages."""
        text = ""
        if result is not None:
            text += f"--- tool (exit {result.exit_code}, signal {result.signal}):\n"
            text += result.text()[-4000:]
        return text + "\n--- sbc log tail:\n" + self.sbc.tail()

    @defer.inlineCallbacks
    def tcp_options(self, port: int) -> Any:
        """An OPTIONS to the SBC over a new plain TCP connection; fires with the Response."""
        client = yield connect_stream(self, port)
        call_id = new_call_id()
        client.write(
            sip_request(
                uri=self.self_uri(port),
                via_transport="TCP",
                local_port=client.local_port(),
                call_id=call_id,
            )
        )
        yield client.wait(_has_complete_response, 5.0, "a response over TCP")
        client.close()
        response = parse_response(client.received)
        assert response is not None
        self.assertEqual(response.header("Call-ID", "i"), [call_id])
        return response


class SippOptionsTests(_SbcTestCase):
    """1 and 2: SIPp sends OPTIONS to the SBC itself and gets 200 with Allow."""

    def keys(self, port: int, via: str) -> dict[str, str]:
        return {"sbc_host": HOST, "sbc_port": str(port), "via_transport": via}

    @defer.inlineCallbacks
    def test_options_over_udp(self) -> Any:
        result = yield run_sipp(
            self, "options_self.xml", self.access_port, transport="u1",
            keys=self.keys(self.access_port, "UDP"),
        )  # fmt: skip
        self.assertEqual(result.exit_code, 0, self.context(result))

    @defer.inlineCallbacks
    def test_options_over_tcp(self) -> Any:
        result = yield run_sipp(
            self, "options_self.xml", self.access_port, transport="t1",
            keys=self.keys(self.access_port, "TCP"),
        )  # fmt: skip
        self.assertEqual(result.exit_code, 0, self.context(result))

    @defer.inlineCallbacks
    def test_options_over_tls_through_stunnel(self) -> Any:
        """stunnel verifies the SBC (chain + sbc.lab.test) and presents the lab.test client."""
        accept_port, stunnel = yield start_stunnel(
            self,
            connect_port=self.tls_port,
            cert=self.pki.cert("client"),
            key=self.pki.key("client"),
            ca=self.pki.cert("ca"),
        )
        result = yield run_sipp(
            self, "options_self.xml", accept_port, transport="t1",
            keys=self.keys(self.tls_port, "TLS"),
        )  # fmt: skip
        log = stunnel.output()
        self.assertEqual(result.exit_code, 0, self.context(result) + "\n--- stunnel:\n" + log)
        self.assertIn("Certificate accepted at depth=0: CN=sbc.lab.test", log)
        self.assertRegex(log, r"TLSv1\.[23] ciphersuite")


class OpensslClientTests(_SbcTestCase):
    """3: openssl s_client against the TLS listener."""

    def options_request(self) -> tuple[bytes, str]:
        call_id = new_call_id()
        request = sip_request(
            uri=self.self_uri(self.tls_port), via_transport="TLS", local_port=5061, call_id=call_id
        )
        return request, call_id

    @defer.inlineCallbacks
    def handshake_and_options(self, extra: list[str], versions: str) -> Any:
        child = start_s_client(
            self, self.tls_port, ca=self.pki.cert("ca"), cert=self.pki.cert("client"),
            key=self.pki.key("client"), extra=extra,
        )  # fmt: skip
        try:
            yield within(child.output_contains(b"Verification: OK"), 10.0, "the handshake")
        except Exception as error:
            self.fail(f"{error}\n{child.output()}\n{self.context()}")
        self.assertIn("CONNECTION ESTABLISHED", child.output())
        self.assertRegex(child.output(), rf"Protocol version: TLSv1\.{versions}\b")
        request, call_id = self.options_request()
        child.process.write(request)
        try:
            yield within(child.output_contains(b"\r\n\r\n"), 10.0, "a response over TLS")
        except Exception as error:
            self.fail(f"{error}\n{child.output()}\n{self.context()}")
        stdout = child.capture.stdout
        response = parse_response(stdout[stdout.find(b"SIP/2.0 ") :])
        self.assertIsNotNone(response, child.output())
        assert response is not None
        self.assertEqual(response.status, 200, response.raw)
        self.assertEqual(response.header("Call-ID", "i"), [call_id])
        child.process.closeStdin()
        result = yield within(child.ended, 10.0, "s_client to exit")
        self.assertEqual(result.exit_code, 0, result.text())

    def test_handshake_and_options_default_version(self) -> Any:
        return self.handshake_and_options([], "[23]")

    def test_handshake_and_options_tls12(self) -> Any:
        return self.handshake_and_options(["-tls1_2"], "2")

    @defer.inlineCallbacks
    def test_aead_suites_accepted(self) -> Any:
        """docs/security-model.md: TLS 1.2 with ECDHE and AES-GCM or ChaCha20-Poly1305 (the
        lab key is ECDSA P-256)."""
        for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
            yield self.handshake_and_options(["-tls1_2", "-cipher", suite], "2")

    @defer.inlineCallbacks
    def test_cbc_suites_refused(self) -> Any:
        """A TLS 1.2 client offering only CBC suites (LUCKY13's ground) gets no handshake."""
        for suite in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-SHA"):
            result = yield self.refused(extra=["-tls1_2", "-cipher", suite])
            self.assertIn("handshake failure", result.text(), suite)
            self.assertNotIn("CONNECTION ESTABLISHED", result.text())

    @defer.inlineCallbacks
    def refused(self, *, cert: bool = True, ca: str | None = None, extra: list[str]) -> Any:
        """Run s_client with the request already written; it must end on its own, refused."""
        child: RunningProcess = start_s_client(
            self, self.tls_port, ca=ca or self.pki.cert("ca"),
            cert=self.pki.cert("client") if cert else None,
            key=self.pki.key("client") if cert else None, extra=extra,
        )  # fmt: skip
        request, _ = self.options_request()
        child.process.write(request)
        result = yield within(child.ended, 10.0, f"s_client {extra} to be refused")
        self.assertNotEqual(result.exit_code, 0, self.context(result))
        self.assertNotIn(b"SIP/2.0", result.stdout, self.context(result))
        return result

    @defer.inlineCallbacks
    def test_no_client_certificate_refused(self) -> Any:
        """TLS 1.3: the SBC's alert comes after the client's Finished; TLS 1.2: in the handshake."""
        for extra in ([], ["-tls1_2"]):
            result = yield self.refused(cert=False, extra=extra)
            self.assertRegex(
                result.text(), r"alert (certificate required|handshake failure)", extra
            )

    @defer.inlineCallbacks
    def test_server_verified_against_other_ca_fails(self) -> Any:
        result = yield self.refused(ca=self.pki.other_ca(), extra=[])
        self.assertIn("certificate verify failed", result.text())
        self.assertNotIn("CONNECTION ESTABLISHED", result.text())

    @defer.inlineCallbacks
    def test_tls11_and_tls10_refused(self) -> Any:
        """The client really offers the old version (security level 0); the SBC says no."""
        for version in ("-tls1_1", "-tls1"):
            result = yield self.refused(extra=[version, "-cipher", "DEFAULT@SECLEVEL=0"])
            self.assertIn("alert protocol version", result.text(), version)
            self.assertNotIn("CONNECTION ESTABLISHED", result.text())


class ConnectionGuardTests(_SbcTestCase):
    """4 and 5: the wrong protocol on a port is closed with no SIP answer."""

    @defer.inlineCallbacks
    def test_plain_sip_to_tls_port_closed_without_sip(self) -> Any:
        client = yield connect_stream(self, self.tls_port)
        client.write(
            sip_request(
                uri=self.self_uri(self.tls_port), via_transport="TCP",
                local_port=client.local_port(), call_id=new_call_id(),
            )
        )  # fmt: skip
        yield client.wait_closed(5.0)
        self.assertNotIn(b"SIP/2.0", client.received)

    @defer.inlineCallbacks
    def test_client_hello_to_plain_tcp_port_closed_silently(self) -> Any:
        client = yield connect_stream(self, self.access_port)
        client.write(client_hello())
        yield client.wait_closed(5.0)
        self.assertEqual(client.received, b"")
        # Only that connection was closed: the port still answers SIP.
        response = yield self.tcp_options(self.access_port)
        self.assertEqual(response.status, 200, response.raw)

    @defer.inlineCallbacks
    def test_crlf_keepalive_answered_on_tcp(self) -> Any:
        """RFC 5626 §4.4.1: a CRLFCRLF ping gets a CRLF pong; the connection stays usable."""
        client = yield connect_stream(self, self.access_port)
        client.write(b"\r\n\r\n")
        yield client.wait_for(b"\r\n", 5.0)
        self.assertEqual(client.received, b"\r\n")
        call_id = new_call_id()
        client.write(
            sip_request(
                uri=self.self_uri(self.access_port), via_transport="TCP",
                local_port=client.local_port(), call_id=call_id,
            )
        )  # fmt: skip
        yield client.wait(_has_complete_response, 5.0, "a response after the pong")
        response = parse_response(client.received[2:])
        assert response is not None
        self.assertEqual((response.status, response.header("Call-ID", "i")), (200, [call_id]))

    @defer.inlineCallbacks
    def test_openssl_to_plain_tcp_port_fails(self) -> Any:
        child = start_s_client(
            self, self.access_port, ca=self.pki.cert("ca"), cert=self.pki.cert("client"),
            key=self.pki.key("client"),
        )  # fmt: skip
        result = yield within(child.ended, 10.0, "s_client to fail on the plain port")
        self.assertNotEqual(result.exit_code, 0, result.text())
        self.assertNotIn("CONNECTION ESTABLISHED", result.text())
        self.assertNotIn(b"SIP/2.0", result.stdout)


class UdpRobustnessTests(_SbcTestCase):
    """6: junk on the UDP port does not stop the SBC answering.

    The junk comes fast from one untrusted source: the flood defence would
    ban it after 200 datagrams (docs/hardening.md), so that the parser
    would see only those. The limit is raised here so that every datagram
    reaches the parser, which is what these tests are about.
    """

    timeout = 90
    sbe = ("limits", " source-rate-limit 1000000 10")
    udp: UdpClient

    def setUp(self) -> Any:
        d = super().setUp()
        return d.addCallback(lambda _: setattr(self, "udp", open_udp(self, self.access_port)))

    def options(self, call_id: str) -> bytes:
        return sip_request(
            uri=self.self_uri(self.access_port), via_transport="UDP",
            local_port=self.udp.local_port, call_id=call_id,
        )  # fmt: skip

    @defer.inlineCallbacks
    def probe(self, call_id: str) -> Any:
        try:
            response = yield self.udp.transact(self.options(call_id), call_id, 10.0)
        except Exception as error:
            self.fail(f"no answer to the probe {call_id}: {error}\n{self.context()}")
        self.assertEqual(response.status, 200, response.raw)

    @defer.inlineCallbacks
    def test_ten_thousand_random_datagrams(self) -> Any:
        """100 batches of 100 random datagrams (0..1500 bytes), each followed by a probe.

        Batches of 100 stay well under the socket's receive buffer, so the
        SBC really reads every one; the probe after each batch must get 200
        and nothing else may ever come back.
        """
        rng = random.Random(3261)
        probes = set()
        for batch in range(100):
            for _ in range(100):
                self.udp.send(rng.randbytes(rng.randint(0, 1500)))
            call_id = f"probe-{batch}@interop.test"
            probes.add(call_id)
            yield self.probe(call_id)
        stray = [d[:80] for d in self.udp.datagrams if call_id_of(d) not in probes]
        self.assertEqual(stray, [], "the SBC answered random junk")
        yield self.probe("final@interop.test")
        # The kernel delivered every datagram: the SBC really read all 10,000.
        self.assertEqual(udp_drops(self.access_port), 0)

    @defer.inlineCallbacks
    def test_crafted_datagrams(self) -> Any:
        """Each crafted datagram, then a probe: what comes before the probe's 200 answers it.

        ``expected`` is the set of acceptable statuses for one answer; an
        empty set means no answer at all (contract §3, and "unparseable junk
        on UDP is dropped, never answered").
        """
        whole = self.options("crafted@interop.test")
        huge_length = whole.replace(b"Content-Length: 0", b"Content-Length: 4294967296000")
        nul_inside = whole.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\x000")
        cases: list[tuple[str, bytes, set[int]]] = [
            ("a TLS ClientHello", client_hello(), set()),
            ("a TLS record header", b"\x16\x03\x01\x00\x05hello", set()),
            ("an empty datagram", b"", set()),
            ("NUL bytes", b"\x00" * 512, set()),
            ("a CRLF keep-alive", b"\r\n\r\n", set()),
            ("half a request", whole[: len(whole) // 3], set()),
            ("a start line only", whole.split(b"\r\n", 1)[0] + b"\r\n", set()),
            ("a stray response", b"SIP/2.0 200 OK\r\n" + whole.split(b"\r\n", 1)[1], set()),
            # RFC 3261 §18.3: a UDP request shorter than its Content-Length: 400
            # (513 accepted: the length is over any size limit).
            ("a huge Content-Length", huge_length, {400, 513}),
            ("a NUL inside a header", nul_inside, {400}),
        ]
        for number, (name, datagram, expected) in enumerate(cases):
            before = len(self.udp.datagrams)
            self.udp.send(datagram)
            call_id = f"probe-{number}@interop.test"
            yield self.probe(call_id)
            answers = [d for d in self.udp.datagrams[before:] if call_id_of(d) != call_id]
            statuses = {r.status for r in map(parse_response, answers) if r is not None}
            self.assertEqual(len(statuses), len(answers), f"{name}: not responses: {answers!r}")
            if expected:
                self.assertEqual(len(answers), 1, f"{name}: answered {answers!r}")
                self.assertIn(statuses.pop(), expected, f"{name}: answered {answers!r}")
            else:
                self.assertEqual(answers, [], f"{name}: answered")


class PeerIdentityTests(_SbcTestCase):
    """7: the From domain must match the TLS peer's certificate (RFC 5922 §7)."""

    def request(self, client: StreamClient, from_uri: str) -> tuple[bytes, str]:
        call_id = new_call_id()
        request = sip_request(
            uri=self.self_uri(self.tls_port), via_transport="TLS",
            local_port=client.local_port(), call_id=call_id, from_uri=from_uri,
        )  # fmt: skip
        return request, call_id

    @defer.inlineCallbacks
    def answer(self, client: StreamClient, from_uri: str) -> Any:
        before = len(client.received)
        request, call_id = self.request(client, from_uri)
        client.write(request)

        def answered(c: StreamClient) -> bool:
            return b"\r\n\r\n" in c.received[before:]

        try:
            yield client.wait(answered, 5.0, f"an answer to From {from_uri}")
        except Exception as error:
            self.fail(f"{error}\n{self.context()}")
        response = parse_response(client.received[before:])
        assert response is not None
        self.assertEqual(response.header("Call-ID", "i"), [call_id])
        return response

    @defer.inlineCallbacks
    def test_from_domain_not_in_certificate_dropped(self) -> Any:
        cert, key = self.pki.issue("evil", "evil.test", sip_uris=["sip:evil.test"])
        options = tls_client_options(self.pki.cert("ca"), cert, key)
        client = yield connect_stream(self, self.tls_port, options)
        yield client.wait_handshake(5.0)
        request, _ = self.request(client, "sip:mallory@lab.test")
        client.write(request)
        yield pause(2.0)
        self.assertEqual(client.received, b"", "a request from lab.test by evil.test was answered")
        self.assertIsNone(client.lost, "the SBC closed the connection instead of dropping")
        # The same connection, with the domain its certificate names: answered.
        response = yield self.answer(client, "sip:mallory@evil.test")
        self.assertEqual(response.status, 200, response.raw)
        # Domains compare case-insensitively.
        response = yield self.answer(client, "sip:mallory@EVIL.Test")
        self.assertEqual(response.status, 200, response.raw)

    @defer.inlineCallbacks
    def test_lab_client_answered(self) -> Any:
        """Control: the lab.test client certificate with a lab.test From gets 200."""
        options = tls_client_options(
            self.pki.cert("ca"), self.pki.cert("client"), self.pki.key("client")
        )
        client = yield connect_stream(self, self.tls_port, options)
        yield client.wait_handshake(5.0)
        response = yield self.answer(client, "sip:alice@lab.test")
        self.assertEqual(response.status, 200, response.raw)


class GeneratedResponseTests(_SbcTestCase):
    """8: responses the SBC generates itself (§8 of the behaviour contract), over UDP."""

    client: UdpClient

    def setUp(self) -> Any:
        d = super().setUp()
        return d.addCallback(lambda _: setattr(self, "client", open_udp(self, self.access_port)))

    @defer.inlineCallbacks
    def send(self, **fields: Any) -> Any:
        call_id = new_call_id()
        fields.setdefault("uri", f"sip:{HOST}:{self.access_port}")
        request = sip_request(
            via_transport="UDP", local_port=self.client.local_port, call_id=call_id, **fields
        )
        try:
            response: Response = yield self.client.transact(request, call_id, 8.0)
        except Exception as error:
            self.fail(f"{error}\nsent:\n{request!r}\n{self.context()}")
        return response

    @defer.inlineCallbacks
    def test_cseq_method_mismatch_400_names_problem(self) -> Any:
        response = yield self.send(cseq="1 INVITE")
        self.assertEqual(response.status, 400, response.raw)
        self.assertIn("cseq", response.reason.lower(), response.raw)

    @defer.inlineCallbacks
    def test_unanswerable_requests_get_nothing(self) -> Any:
        """No Via (nowhere to send a response) and a garbage start line: dropped."""
        no_via = sip_request(
            uri=f"sip:{HOST}:{self.access_port}", via_transport="UDP",
            local_port=self.client.local_port, call_id=new_call_id(), via=False,
        )  # fmt: skip
        for datagram in (no_via, b"HELLO SBC\r\n\r\n"):
            before = len(self.client.datagrams)
            self.client.send(datagram)
            response = yield self.send()
            self.assertEqual(response.status, 200, response.raw)
            probe_id = response.header("Call-ID", "i")[0]
            answers = [d for d in self.client.datagrams[before:] if call_id_of(d) != probe_id]
            self.assertEqual(answers, [], f"answered {datagram!r}")

    @defer.inlineCallbacks
    def test_sip_3_0_gets_505(self) -> Any:
        response = yield self.send(version="SIP/3.0")
        self.assertEqual(response.status, 505, response.raw)

    @defer.inlineCallbacks
    def test_max_forwards_zero_to_other_target_gets_483(self) -> Any:
        response = yield self.send(
            uri="sip:bob@example.net", to_uri="sip:bob@example.net", max_forwards=0
        )
        self.assertEqual(response.status, 483, response.raw)
        self.assertTrue(re.match(r"SIP/2\.0 483 \S", response.raw.decode(errors="replace")))
