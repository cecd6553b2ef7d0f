"""Calls through the SBC between real peers on 127.0.0.1: SIPp, stunnel4 and Kamailio.

Contract: docs behaviour §1 (B2BUA), §4-§8 (marking, UAC side, routing,
registrar, generated responses). Each test starts its own ``twistd -n sbc``
(:func:`tests.interop.calls_harness.start_routed_sbc`, log kept as
``sbc.log`` in the test's temporary directory) and its own peers, all
bounded in calls and seconds.

Topology of the plain tests (``ROUTED``)::

    SIPp UAC --UDP--> access (untrusted) ------\\
    SIPp UAC --UDP--> core (trusted-unencr.) ---+--> trunk (trusted-unencr., TCP) --> SIPp UAS
                                                 \\-> public (untrusted): nowhere.test only,
                                                     its signaling-peer a closed port

The trunk has no signaling-peer: a request out of it goes to the host and
port of its Request-URI, so a 3xx Contact naming another callee is reached
through the same adjacency.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.trial.unittest import TestCase

from sbc.labpki import issue
from tests.interop.calls_harness import (
    CallAdjacency,
    SippProcess,
    start_routed_sbc,
    start_sipp,
    start_sipp_uas,
)
from tests.interop.harness import (
    HOST,
    Response,
    get_reactor,
    make_pki,
    new_call_id,
    open_udp,
    pause,
    sip_request,
    start_stunnel,
    within,
)
from tests.interop.kamailio import KamailioProcess, start_kamailio
from tests.interop.test_cli import SBC_CLI, cli_socket
from tests.support.peers import free_port, run

#: The Warning of a secure call refused (RFC 5630 §9), any warn-agent.
SIPS_NOT_ALLOWED = re.compile(r'^380 \S+ "SIPS Not Allowed"$')

ROUTED = (
    CallAdjacency("access", "untrusted", "udp"),
    CallAdjacency("core", "trusted-unencrypted", "udp"),
    CallAdjacency("trunk", "trusted-unencrypted", "tcp"),
    CallAdjacency("public", "untrusted", "tcp"),
)
ROUTED_POLICY = (
    "call-policy-set 1",
    " first-call-routing-table by-source",
    " rtg-src-adjacency-table by-source",
    "  entry 1",
    "   match-adjacency access",
    "   dst-adjacency trunk",
    "   action complete",
    "  entry 2",
    "   match-adjacency core",
    "   action next-table by-domain",
    " rtg-dst-domain-table by-domain",
    "  entry 1",
    "   match-domain nowhere.test",
    "   dst-adjacency public",
    "   action complete",
    "  entry 2",
    f"   match-domain {HOST}",
    "   dst-adjacency trunk",
    "   action complete",
    "active-call-policy-set 1",
    "routing-policy default",
)


@defer.inlineCallbacks
def sbc_show(case: TestCase, sbc: Any, what: str) -> Any:
    """``sbc-cli -c "show services sbc calls sbe WHAT"`` against ``sbc``: its output."""
    result = yield within(
        run(
            get_reactor(),
            [
                SBC_CLI,
                "--socket",
                cli_socket(sbc.child),
                "-c",
                f"show services sbc calls sbe {what}",
            ],
            timeout=30.0,
        ),
        40.0,
        "sbc-cli",
    )
    case.assertEqual(result.exit_code, 0, result.text())
    return result.stdout.decode()


class Recorder(protocol.Protocol):
    """A TCP server protocol that keeps what it receives (a callee that must hear nothing)."""

    def __init__(self, received: list[bytes]) -> None:
        self.received = received

    def connectionMade(self) -> None:
        self.received.append(b"")

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class _CallsTestCase(TestCase):
    """A fresh SBC with the ``ROUTED`` topology per test."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        # public's next hop is a port where nothing listens: its calls fail fast (503)
        adjacencies = [
            attrs.evolve(a, signaling_peer=HOST, signaling_peer_port=free_port())
            if a.name == "public"
            else a
            for a in ROUTED
        ]
        self.sbc = yield start_routed_sbc(
            self, self.pki, adjacencies, ROUTED_POLICY, local_domains=["lab.test"]
        )

    def context(self, *peers: SippProcess) -> str:
        """The peers' output and the SBC's log tail, for failure messages."""
        text = "\n".join(p.describe(p._result) for p in peers)
        return text + "\n--- sbc log tail:\n" + self.sbc.tail(60)

    def keys(self, ruri: str, scheme: str = "sip", **extra: str) -> dict[str, str]:
        keys = {"ruri": ruri, "from_uri": "sip:alice@lab.test", "contact_scheme": scheme}
        keys.update(extra)
        return keys

    def callee(
        self, scenario: str, *, calls: int = 1, scheme: str = "sip", **keys: str
    ) -> defer.Deferred[SippProcess]:
        """A SIPp UAS on the trunk side (TCP), listening."""
        return start_sipp_uas(
            self, scenario, transport="t1", keys={"contact_scheme": scheme, **keys}, calls=calls
        )

    def caller(
        self,
        scenario: str,
        ruri: str,
        *,
        adjacency: str = "access",
        scheme: str = "sip",
        calls: int = 1,
        rate: int | None = None,
    ) -> SippProcess:
        """A SIPp UAC over UDP to ``adjacency``."""
        return start_sipp(
            self,
            scenario,
            remote_port=self.sbc.port(adjacency),
            transport="u1",
            keys=self.keys(ruri, scheme),
            calls=calls,
            rate=rate,
        )

    @defer.inlineCallbacks
    def both_succeed(self, caller: SippProcess, *callees: SippProcess) -> Any:
        """Every SIPp ends with exit code 0 (all its calls successful)."""
        results = [(yield caller.wait(40, "the caller"))]
        for callee in callees:
            results.append((yield callee.wait(40, "a callee")))
        self.assertEqual(
            [r.exit_code for r in results], [0] * len(results), self.context(caller, *callees)
        )


class CallFlowTests(_CallsTestCase):
    """SIPp UAC -> access (untrusted UDP) -> SBC -> trunk (trusted-unencrypted TCP) -> SIPp UAS."""

    @defer.inlineCallbacks
    def test_basic_call(self) -> Any:
        """INVITE/100/180/200/ACK/BYE/200 across both legs."""
        callee = yield self.callee("calls_uas.xml")
        caller = self.caller("calls_uac.xml", f"sip:bob@{HOST}:{callee.port}")
        yield self.both_succeed(caller, callee)

    @defer.inlineCallbacks
    def test_ten_calls(self) -> Any:
        """Ten calls at ten per second all complete."""
        callee = yield self.callee("calls_uas.xml", calls=10)
        caller = self.caller("calls_uac.xml", f"sip:bob@{HOST}:{callee.port}", calls=10, rate=10)
        yield self.both_succeed(caller, callee)

    @defer.inlineCallbacks
    def test_caller_cancels(self) -> Any:
        """CANCEL after 180: 200 to the CANCEL and 487 to the INVITE; the callee is cancelled."""
        callee = yield self.callee("calls_uas_cancel.xml")
        caller = self.caller("calls_uac_cancel.xml", f"sip:bob@{HOST}:{callee.port}")
        yield self.both_succeed(caller, callee)

    @defer.inlineCallbacks
    def test_callee_hangs_up(self) -> Any:
        """The callee's BYE reaches the caller, whose 200 goes back."""
        callee = yield self.callee("calls_uas_bye.xml")
        caller = self.caller("calls_uac_bye.xml", f"sip:bob@{HOST}:{callee.port}")
        yield self.both_succeed(caller, callee)

    @defer.inlineCallbacks
    def test_busy_relayed(self) -> Any:
        """486 Busy Here from the callee reaches the caller (hunting stops on 486)."""
        callee = yield self.callee("calls_uas_busy.xml")
        caller = self.caller("calls_uac_busy.xml", f"sip:bob@{HOST}:{callee.port}")
        yield self.both_succeed(caller, callee)

    @defer.inlineCallbacks
    def test_redirect_followed(self) -> Any:
        """302 to another callee on the same trunk: the SBC recurses, the call completes there.

        The caller never sees the 302 (its scenario accepts only 1xx then 200).
        """
        second = yield self.callee("calls_uas.xml")
        first = yield self.callee(
            "calls_uas_redirect.xml", redirect=f"sip:carol@{HOST}:{second.port};transport=tcp"
        )
        caller = self.caller("calls_uac.xml", f"sip:bob@{HOST}:{first.port}")
        yield self.both_succeed(caller, first, second)


class NoAnswerTests(_CallsTestCase):
    """Timer C: a callee that rings forever is CANCELled and the caller gets 408."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        limits = ("limits", " no-answer-timeout 2")
        self.sbc = yield start_routed_sbc(
            self, self.pki, ROUTED, (*ROUTED_POLICY, *limits), local_domains=["lab.test"]
        )

    @defer.inlineCallbacks
    def test_ringing_callee_cancelled_caller_gets_408(self) -> Any:
        callee = yield self.callee("calls_uas_cancel.xml")
        caller = self.caller("calls_uac_no_answer.xml", f"sip:bob@{HOST}:{callee.port}")
        yield self.both_succeed(caller, callee)
        shown = yield within(
            run(
                get_reactor(),
                [
                    SBC_CLI, "--socket", cli_socket(self.sbc.child),
                    "-c", "show services sbc calls sbe adjacencies trunk detail",
                ],
                timeout=30.0,
            ),
            40.0,
            "sbc-cli",
        )  # fmt: skip
        self.assertRegex(shown.text(), r"no-answer-timeouts\s+1\b")


class RedirectRefusedTests(_CallsTestCase):
    """§5/§8: a 3xx on a secure call with a SIP Contact is not followed: 480 + Warning 380."""

    @defer.inlineCallbacks
    def test_sips_call_redirected_to_sip(self) -> Any:
        received: list[bytes] = []
        factory = protocol.Factory.forProtocol(lambda: Recorder(received))
        listener = get_reactor().listenTCP(0, factory, interface=HOST)
        self.addCleanup(listener.stopListening)
        lure = f"sip:carol@{HOST}:{listener.getHost().port};transport=tcp"
        callee = yield self.callee("calls_uas_redirect.xml", scheme="sips", redirect=lure)
        caller = self.caller(
            "calls_uac_sips_refused.xml",
            f"sips:bob@{HOST}:{callee.port}",
            adjacency="core",
            scheme="sips",
        )
        yield self.both_succeed(caller, callee)
        yield pause(0.5)
        self.assertEqual(received, [], "the SBC followed the redirect to a sip: Contact")


class RejectedRequestTests(_CallsTestCase):
    """§4, §7, §8: requests the SBC answers itself, checked with a raw UDP client."""

    def invite(self, uri: str, port: int, call_id: str) -> bytes:
        return sip_request(
            method="INVITE",
            uri=uri,
            via_transport="UDP",
            local_port=port,
            call_id=call_id,
            from_uri="sip:alice@lab.test",
            extra=[f"Contact: <sip:alice@{HOST}:{port}>"],
        )

    @defer.inlineCallbacks
    def send(self, adjacency: str, build: Any) -> Any:
        """Send the request ``build(local_port, call_id)`` to ``adjacency``; its final Response."""
        client = open_udp(self, self.sbc.port(adjacency))
        call_id = new_call_id()
        request = build(client.local_port, call_id)
        response = yield client.transact(request, call_id)
        if response.status >= 300 and request.startswith(b"INVITE "):
            client.send(ack_for(request, response))
        return response

    def assert_response(self, response: Response, status: int, warning: bool) -> None:
        message = response.raw.decode(errors="replace") + "\n--- sbc:\n" + self.sbc.tail()
        self.assertEqual(response.status, status, message)
        warnings = response.header("Warning")
        if warning:
            self.assertEqual(len(warnings), 1, message)
            self.assertRegex(warnings[0], SIPS_NOT_ALLOWED, message)
        else:
            self.assertEqual(warnings, [], message)

    @defer.inlineCallbacks
    def test_sips_invite_from_untrusted(self) -> Any:
        """403 + Warning: 380 AGENT "SIPS Not Allowed" (the access adjacency is untrusted)."""
        response = yield self.send(
            "access", lambda port, cid: self.invite(f"sips:bob@{HOST}:5999", port, cid)
        )
        self.assert_response(response, 403, warning=True)

    @defer.inlineCallbacks
    def test_sips_invite_without_secure_route(self) -> Any:
        """Trusted caller, only an untrusted way out (nowhere.test -> public): 480 + 380."""
        response = yield self.send(
            "core", lambda port, cid: self.invite("sips:bob@nowhere.test", port, cid)
        )
        self.assert_response(response, 480, warning=True)

    @defer.inlineCallbacks
    def test_sip_invite_to_same_destination_is_routed(self) -> Any:
        """Control: the same destination over sip: leaves through public (whose peer is down).

        Every candidate failed with a transport error: 503, and no Warning 380.
        So the 480 above comes from the security filter, not from the tables.
        """
        response = yield self.send(
            "core", lambda port, cid: self.invite("sip:bob@nowhere.test", port, cid)
        )
        self.assert_response(response, 503, warning=False)

    def register(self, port: int, call_id: str, contact: str | None, cseq: int = 1) -> bytes:
        extra = [f"Contact: <{contact}>", "Expires: 300"] if contact else []
        return sip_request(
            method="REGISTER",
            uri="sips:lab.test",
            via_transport="UDP",
            local_port=port,
            call_id=call_id,
            from_uri="sips:alice@lab.test",
            to_uri="sips:alice@lab.test",
            cseq=f"{cseq} REGISTER",
            extra=extra,
        )

    @defer.inlineCallbacks
    def test_register_sips_aor_with_sip_contact(self) -> Any:
        """RFC 5630 §5.2: 400 and no binding; a SIPS Contact for the same AOR is accepted."""
        response = yield self.send(
            "core", lambda port, cid: self.register(port, cid, f"sip:alice@{HOST}:{port}")
        )
        self.assert_response(response, 400, warning=False)
        query = yield self.send("core", lambda port, cid: self.register(port, cid, None))
        self.assertEqual(query.status, 200, query.raw)
        self.assertEqual(query.header("Contact", "m"), [], "a binding was added")
        accepted = yield self.send(
            "core", lambda port, cid: self.register(port, cid, f"sips:alice@{HOST}:{port}")
        )
        self.assertEqual(accepted.status, 200, accepted.raw)
        self.assertEqual(len(accepted.header("Contact", "m")), 1, accepted.raw)
        self.assertIn("sips:alice@", accepted.header("Contact", "m")[0])


def ack_for(invite: bytes, response: Response) -> bytes:
    """The ACK for a non-2xx final response (§17.1.1.3): INVITE's Via, the response's To."""
    head = invite.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    uri = lines[0].split()[1]
    keep = [
        line
        for line in lines[1:]
        if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "max-forwards")
    ]
    to = response.header("To", "t")[0]
    seq = next(line for line in lines if line.lower().startswith("cseq:")).split()[1]
    out = [f"ACK {uri} SIP/2.0", *keep, f"To: {to}", f"CSeq: {seq} ACK", "Content-Length: 0"]
    return ("\r\n".join(out) + "\r\n\r\n").encode()


class SecureCallTests(TestCase):
    """§3, §5: a SIPS call end to end over TLS on both sides of the SBC.

    SIPp UAC --TCP--> stunnel --TLS (client cert lab.test)--> tls-in
    (trusted-encrypted) -> SBC -> kamailio adjacency (trusted-encrypted,
    signaling-peer 127.0.0.1, an IP address: the SBC checks Kamailio's
    certificate against far.test, the Request-URI's domain, RFC 5922 §7.3) --TLS
    (the SBC's certificate, verified by Kamailio)--> Kamailio --TCP--> SIPp UAS.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_sips_call_through_kamailio(self) -> Any:
        pki = make_pki(self.mktemp())
        kamailio_cert, kamailio_key = issue(
            pki.ca, "far.test", sip_uris=["sip:far.test"], ip_addresses=["127.0.0.1"]
        ).write(pki.directory, "kamailio")
        callee = yield start_sipp_uas(
            self, "calls_uas.xml", transport="t1", keys={"contact_scheme": "sips"}
        )
        kamailio: KamailioProcess = yield start_kamailio(
            self,
            cert=kamailio_cert,
            key=kamailio_key,
            ca=pki.cert("ca"),
            next_hop=f"sip:{HOST}:{callee.port};transport=tcp",
        )
        adjacencies = (
            CallAdjacency("tls-in", "trusted-encrypted"),
            CallAdjacency(
                "kamailio",
                "trusted-encrypted",
                signaling_peer=HOST,
                signaling_peer_port=kamailio.tls_port,
            ),
        )
        routing = (
            "call-policy-set 1",
            " first-call-routing-table by-source",
            " rtg-src-adjacency-table by-source",
            "  entry 1",
            "   match-adjacency tls-in",
            "   dst-adjacency kamailio",
            "   action complete",
            "active-call-policy-set 1",
        )
        sbc = yield start_routed_sbc(self, pki, adjacencies, routing)
        accept_port, stunnel = yield start_stunnel(
            self,
            connect_port=sbc.port("tls-in"),
            cert=pki.cert("client"),
            key=pki.key("client"),
            ca=pki.cert("ca"),
        )
        caller = start_sipp(
            self,
            "calls_uac.xml",
            remote_port=accept_port,
            transport="t1",
            keys={
                "ruri": "sips:bob@far.test",
                "from_uri": "sips:alice@lab.test",
                "contact_scheme": "sips",
            },
        )
        results = [(yield caller.wait(40, "the caller")), (yield callee.wait(40, "the callee"))]
        context = (
            "\n".join(p.describe(r) for p, r in zip((caller, callee), results))
            + "\n--- stunnel:\n"
            + stunnel.output()[-2000:]
            + "\n--- kamailio:\n"
            + kamailio.tail()
            + "\n--- sbc:\n"
            + sbc.tail(60)
        )
        self.assertEqual([r.exit_code for r in results], [0, 0], context)
        self.assertIn("kamailio-test: INVITE sips:bob@far.test", kamailio.output(), context)
        self.assertRegex(kamailio.output(), r"kamailio-test: INVITE \S+ from \S+ proto tls")


class TlsInPlainOutTests(TestCase):
    """behaviour.md §2: an adjacency with inbound trusted-encrypted and outbound untrusted.

    ``edge`` listens on TLS only (plus a UDP socket on the same port number,
    which takes answers and in-dialog requests only) and sends its own
    requests over UDP to its signaling-peer, a SIPp UAS::

        SIPp UAC --UDP--> access (untrusted) --> SBC --> edge --UDP--> SIPp UAS (hangs up)
        SIPp UAC --TCP--> stunnel --TLS--> edge --> SBC --> access --UDP--> SIPp UAS
    """

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        self.out_callee = yield start_sipp_uas(
            self, "calls_uas_bye.xml", transport="u1", keys={"contact_scheme": "sip"}
        )
        adjacencies = (
            CallAdjacency("access", "untrusted", "udp"),
            CallAdjacency(
                "edge",
                "trusted-encrypted",
                outbound="untrusted",
                signaling_peer=HOST,
                signaling_peer_port=self.out_callee.port,
            ),
        )
        routing = (
            "call-policy-set 1",
            " first-call-routing-table by-source",
            " rtg-src-adjacency-table by-source",
            "  entry 1",
            "   match-adjacency access",
            "   dst-adjacency edge",
            "   action complete",
            "  entry 2",
            "   match-adjacency edge",
            "   dst-adjacency access",
            "   action complete",
            "active-call-policy-set 1",
        )
        self.sbc = yield start_routed_sbc(self, self.pki, adjacencies, routing)

    def context(self, *peers: SippProcess) -> str:
        text = "\n".join(p.describe(p._result) for p in peers)
        return text + "\n--- sbc log tail:\n" + self.sbc.tail(60)

    @defer.inlineCallbacks
    def test_show_says_both_sides(self) -> Any:
        text = yield sbc_show(self, self.sbc, "adjacencies edge")
        self.assertIn("  Security: inbound Trusted-Encrypted, outbound Untrusted\n", text)
        self.assertIn("  Transport: TLS, sends UDP+TCP\n", text)

    @defer.inlineCallbacks
    def test_call_out_of_the_adjacency_over_udp_callee_hangs_up(self) -> Any:
        """The INVITE leaves edge over UDP; the callee's BYE comes back to edge's UDP socket."""
        caller = start_sipp(
            self,
            "calls_uac_bye.xml",
            remote_port=self.sbc.port("access"),
            transport="u1",
            keys={
                "ruri": f"sip:bob@{HOST}:{self.out_callee.port}",
                "from_uri": "sip:alice@lab.test",
                "contact_scheme": "sip",
            },
        )
        results = [
            (yield caller.wait(40, "the caller")),
            (yield self.out_callee.wait(40, "the callee")),
        ]
        self.assertEqual(
            [r.exit_code for r in results], [0, 0], self.context(caller, self.out_callee)
        )

    @defer.inlineCallbacks
    def test_call_in_over_tls_out_over_udp(self) -> Any:
        """The inbound side is TLS (stunnel presents the lab.test client certificate)."""
        callee = yield start_sipp_uas(
            self, "calls_uas.xml", transport="u1", keys={"contact_scheme": "sip"}
        )
        accept_port, stunnel = yield start_stunnel(
            self,
            connect_port=self.sbc.port("edge"),
            cert=self.pki.cert("client"),
            key=self.pki.key("client"),
            ca=self.pki.cert("ca"),
        )
        caller = start_sipp(
            self,
            "calls_uac.xml",
            remote_port=accept_port,
            transport="t1",
            keys={
                "ruri": f"sip:bob@{HOST}:{callee.port}",
                "from_uri": "sip:alice@lab.test",
                "contact_scheme": "sip",
            },
        )
        results = [(yield caller.wait(40, "the caller")), (yield callee.wait(40, "the callee"))]
        self.assertEqual(
            [r.exit_code for r in results],
            [0, 0],
            self.context(caller, callee) + "\n--- stunnel:\n" + stunnel.output()[-2000:],
        )

    @defer.inlineCallbacks
    def test_plain_request_to_the_udp_socket_is_not_taken(self) -> Any:
        """A new request over plain UDP to edge's port would be marked trusted: dropped."""
        client = open_udp(self, self.sbc.port("edge"))
        call_id = new_call_id()
        client.send(
            sip_request(
                uri=f"sip:bob@{HOST}", via_transport="UDP", local_port=client.local_port,
                call_id=call_id, method="INVITE",
            )
        )  # fmt: skip
        probe = open_udp(self, self.sbc.port("access"))
        probe_id = new_call_id()
        request = sip_request(
            uri=f"sip:{HOST}:{self.sbc.port('access')}", via_transport="UDP",
            local_port=probe.local_port, call_id=probe_id,
        )  # fmt: skip
        response: Response = yield probe.transact(request, probe_id)
        self.assertEqual(response.status, 200)
        self.assertEqual(client.datagrams, [], self.sbc.tail(20))
        self.assertIn("whose inbound side is TLS only; dropped", self.sbc.output())


class LeastCallsTests(TestCase):
    """``routing-policy least-calls`` with real calls: a new call goes where fewer are up.

    Two trusted UDP adjacencies, each with a SIPp callee, are the entries of a
    round-robin table (which alternates the first candidate on every call).
    A first call stays up (10 s hold); a second, short one goes to the other
    adjacency; the third must follow the second (fewer live calls there),
    where round-robin alone would send it back to the first one. This is the
    per-adjacency live-call count the B2BUA keeps, seen from outside.
    """

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.pki = make_pki(self.mktemp())
        self.callees = {}
        for name in ("left", "right"):
            self.callees[name] = yield start_sipp_uas(
                self, "calls_uas.xml", transport="u1", keys={"contact_scheme": "sip"}, calls=3,
                seconds=60,
            )  # fmt: skip
        adjacencies = [
            CallAdjacency("access", "untrusted", "udp"),
            *(
                CallAdjacency(
                    name,
                    "trusted-unencrypted",
                    "udp",
                    signaling_peer=HOST,
                    signaling_peer_port=callee.port,
                )
                for name, callee in self.callees.items()
            ),
        ]
        routing = (
            "call-policy-set 1",
            " first-call-routing-table spread",
            " rtg-round-robin-table spread",
            "  entry 1",
            "   dst-adjacency left",
            "   action complete",
            "  entry 2",
            "   dst-adjacency right",
            "   action complete",
            "active-call-policy-set 1",
            "routing-policy least-calls",
        )
        self.sbc = yield start_routed_sbc(self, self.pki, adjacencies, routing)

    @defer.inlineCallbacks
    def attempts(self) -> Any:
        """``attempts`` per outbound adjacency, from ``show ... statistics``."""
        text = yield sbc_show(self, self.sbc, "statistics")
        counts = {}
        for name in ("left", "right"):
            section = text.split(f"Adjacency: {name}", 1)[-1]
            section = section.split("Adjacency: ", 1)[0]
            found = re.search(r"attempts\s+(\d+)", section)
            counts[name] = int(found.group(1)) if found else 0
        return counts

    def caller(self, scenario: str) -> SippProcess:
        return start_sipp(
            self,
            scenario,
            remote_port=self.sbc.port("access"),
            keys={
                "ruri": f"sip:bob@{HOST}",
                "from_uri": "sip:alice@lab.test",
                "contact_scheme": "sip",
            },
            seconds=40,
        )

    @defer.inlineCallbacks
    def test_a_new_call_goes_where_fewer_calls_are_up(self) -> Any:
        held = self.caller("workers_uac_hold.xml")  # 10 s in the call
        counts = {"left": 0, "right": 0}
        for _ in range(100):
            counts = yield self.attempts()
            if sum(counts.values()):
                break
            yield pause(0.1)
        [busy] = [name for name, count in counts.items() if count]
        [idle] = [name for name in counts if name != busy]
        for n in (2, 3):
            short = self.caller("calls_uac.xml")
            result = yield short.wait(30, f"call {n}")
            self.assertEqual(result.exit_code, 0, short.describe(result) + self.sbc.tail(40))
        counts = yield self.attempts()
        self.assertEqual(counts, {busy: 1, idle: 2}, self.sbc.tail(60))
        result = yield held.wait(40, "the held call")
        self.assertEqual(result.exit_code, 0, held.describe(result) + self.sbc.tail(40))
